package redisstore

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// gatedCheck is a check whose runs each wait for a value on release and
// return it; runs counts them and started says when one began.
type gatedCheck struct {
	runs    atomic.Int32
	started chan struct{}
	release chan error
}

func newGatedCheck() *gatedCheck {
	return &gatedCheck{started: make(chan struct{}, 16), release: make(chan error)}
}

func (g *gatedCheck) fn(ctx context.Context) error {
	g.runs.Add(1)
	g.started <- struct{}{}
	select {
	case err := <-g.release:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestSharedCall pins the edges of sharing one check among concurrent
// callers: callers that arrive during a run get its answer (success or
// error alike) and start none of their own; a caller that arrives after a
// run ended starts the next; a caller whose ctx ends stops waiting with its
// ctx's error while the run goes on for the others; and a leader that gives
// up does not end the run it started.
func TestSharedCall(t *testing.T) {
	errDown := errors.New("redis down")
	tests := []struct {
		name   string
		answer error
	}{
		{"a success reaches every waiter", nil},
		{"an error reaches every waiter", errDown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s sharedCall
			g := newGatedCheck()
			const callers = 8
			results := make(chan error, callers)
			leaderCtx, leaderGivesUp := context.WithCancel(context.Background())
			go func() { results <- s.do(leaderCtx, g.fn) }()
			<-g.started
			var joined sync.WaitGroup
			for range callers - 1 {
				joined.Go(func() { results <- s.do(context.Background(), g.fn) })
			}
			// A waiter that gives up returns at once with its own error.
			quitter, quit := context.WithCancel(context.Background())
			quitterDone := make(chan error, 1)
			go func() { quitterDone <- s.do(quitter, g.fn) }()
			// The leader, the joiners and the quitter all wait.
			waitJoined(t, &s, callers+1)
			quit()
			if err := <-quitterDone; !errors.Is(err, context.Canceled) {
				t.Fatalf("a waiter whose ctx ended got %v, want context.Canceled", err)
			}
			// The leader gives up too: the run must go on for the rest.
			leaderGivesUp()
			if err := <-results; !errors.Is(err, context.Canceled) {
				t.Fatalf("the leader that gave up got %v, want context.Canceled", err)
			}
			// Every joiner waits on the run (none started its own).
			g.release <- tt.answer
			joined.Wait()
			for range callers - 1 {
				if err := <-results; err != tt.answer {
					t.Fatalf("a waiter got %v, want %v", err, tt.answer)
				}
			}
			if n := g.runs.Load(); n != 1 {
				t.Fatalf("%d runs for %d concurrent callers, want 1", n, callers+1)
			}

			// After the run ended, the next caller starts a new one: no
			// answer outlives its run.
			next := make(chan error, 1)
			go func() { next <- s.do(context.Background(), g.fn) }()
			select {
			case <-g.started:
			case <-time.After(10 * time.Second):
				t.Fatal("a caller after the run did not start a new one")
			}
			g.release <- nil
			if err := <-next; err != nil {
				t.Fatalf("the next run: %v", err)
			}
			if n := g.runs.Load(); n != 2 {
				t.Fatalf("%d runs, want 2", n)
			}
		})
	}
}

// waitJoined waits until n callers wait on the run in flight.
func waitJoined(t *testing.T, s *sharedCall, n int32) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.waiting.Load() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d callers wait on the run, want %d", s.waiting.Load(), n)
		}
		time.Sleep(time.Millisecond)
	}
}
