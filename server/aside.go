package server

import (
	"fmt"
	"runtime/debug"
)

// runAside runs f on a goroutine of its own and waits for it. A watch
// stream's goroutine waits for minutes once the watch has started, and a
// goroutine's stack, once grown, keeps its size while it waits: what the start
// runs (receiving and decoding the request message, a tenant's rate limit in
// Redis, reading the record, the first send) goes through deep call chains
// that would grow the stack of every idle watch stream to 8 KiB where 4 KiB
// serve. So each of those runs aside (here, or on WatchRequest's start
// goroutine), and what stays on the stream's goroutine is shallow.
//
// A panic in f is raised again on the caller's goroutine, where the recovery
// interceptor turns it into Internal as it would have without the hand-off;
// the value raised (asidePanic) carries the stack where f panicked.
func runAside(f func() error) error {
	done := make(chan asideOutcome, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- asideOutcome{panicked: &asidePanic{value: p, stack: debug.Stack()}}
			}
		}()
		done <- asideOutcome{err: f()}
	}()
	r := <-done
	if r.panicked != nil {
		panic(r.panicked)
	}
	return r.err
}

// asideOutcome is what f did on the aside goroutine: its error, or the value
// it panicked with.
type asideOutcome struct {
	err      error
	panicked any
}

// asidePanic is a panic of a function run aside, raised again where it was
// waited for: the log of it then has the stack where it happened.
type asidePanic struct {
	value any
	stack []byte
}

func (p *asidePanic) String() string {
	return fmt.Sprintf("%v\n\n(raised aside) %s", p.value, p.stack)
}
