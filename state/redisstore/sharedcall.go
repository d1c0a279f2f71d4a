package redisstore

import (
	"context"
	"sync"
)

// sharedCall lets concurrent callers of one check share a single run of it.
// A caller that arrives while a run is in flight waits for that run's answer
// instead of starting its own: the answer comes after the caller asked, so it
// says as much about the server now as a run of the caller's own would. A
// caller that arrives after a run ended starts the next one; nothing is
// cached past the run.
//
// The run is not the leader's alone: it goes on under a context that the
// leader's cancellation does not end (its bound is the check's own, the
// call timeout), so that a leader that gives up fails no one else. Each
// caller waits under its own ctx.
type sharedCall struct {
	mu  sync.Mutex
	cur *callRun
}

// callRun is one run in flight; err is set before done is closed.
type callRun struct {
	done   chan struct{}
	err    error
	joined int // callers that came while it ran, guarded by sharedCall.mu
}

// do returns the error of a run of fn that ended after do was called, or
// ctx's error if ctx ends first.
func (s *sharedCall) do(ctx context.Context, fn func(context.Context) error) error {
	s.mu.Lock()
	r := s.cur
	if r == nil {
		r = &callRun{done: make(chan struct{})}
		s.cur = r
		s.mu.Unlock()
		go func() {
			// Owned by the run: it ends when fn does, bounded by fn's own
			// timeout, whoever still waits.
			r.err = fn(context.WithoutCancel(ctx))
			s.mu.Lock()
			s.cur = nil
			s.mu.Unlock()
			close(r.done)
		}()
	} else {
		r.joined++
		s.mu.Unlock()
	}
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}
