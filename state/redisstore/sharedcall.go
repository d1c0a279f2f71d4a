package redisstore

import (
	"context"
	"sync/atomic"

	"golang.org/x/sync/singleflight"
)

// sharedCall lets concurrent callers of one check share a single run of it
// (singleflight). A caller that arrives while a run is in flight waits for
// that run's answer instead of starting its own: the answer comes after the
// caller asked, so it says as much about the server now as a run of the
// caller's own would. A caller that arrives after a run ended starts the
// next one; nothing is cached past the run.
//
// The run is not the leader's alone: it goes on under a context that the
// leader's cancellation does not end (its bound is the check's own, the
// call timeout), so that a leader that gives up fails no one else. Each
// caller waits under its own ctx.
type sharedCall struct {
	g singleflight.Group
	// waiting counts the callers waiting on a run, which tests watch.
	waiting atomic.Int32
}

// do returns the error of a run of fn that ended after do was called, or
// ctx's error if ctx ends first.
func (s *sharedCall) do(ctx context.Context, fn func(context.Context) error) error {
	run := context.WithoutCancel(ctx)
	ch := s.g.DoChan("", func() (any, error) { return nil, fn(run) })
	s.waiting.Add(1)
	defer s.waiting.Add(-1)
	select {
	case r := <-ch:
		return r.Err
	case <-ctx.Done():
		return ctx.Err()
	}
}
