package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// watcher is a client's WatchRequest stream, read in the background.
type watcher struct {
	name string
	done chan struct{} // closed when the stream ended

	mu      sync.Mutex
	changed chan struct{} // closed and replaced when an event arrives
	events  []*comfygatev1.RequestState
	err     error // why the stream ended; nil for OK
}

// watch opens a WatchRequest stream on g, resuming after afterSeq.
func watch(ctx context.Context, t *testing.T, name string, g *gateway, requestID string, afterSeq int64) *watcher {
	t.Helper()
	return watchOn(ctx, t, name, g, deployment, requestID, afterSeq)
}

// watchOn is watch of a request of another deployment.
func watchOn(ctx context.Context, t *testing.T, name string, g *gateway, dep, requestID string, afterSeq int64) *watcher {
	t.Helper()
	stream, err := g.api.WatchRequest(ctx, &comfygatev1.WatchRequestRequest{
		DeploymentId: dep, RequestId: requestID, AfterSeq: afterSeq,
	})
	if err != nil {
		t.Fatalf("%s: WatchRequest on %s: %v", name, g.name, err)
	}
	w := &watcher{name: name, done: make(chan struct{}), changed: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			msg, err := stream.Recv()
			w.mu.Lock()
			if err != nil {
				if !errors.Is(err, io.EOF) {
					w.err = err
				}
				w.mu.Unlock()
				return
			}
			w.events = append(w.events, msg.GetRequest())
			close(w.changed)
			w.changed = make(chan struct{})
			w.mu.Unlock()
		}
	}()
	return w
}

// received returns the events so far.
func (w *watcher) received() []*comfygatev1.RequestState {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]*comfygatev1.RequestState(nil), w.events...)
}

// lastSeq is the seq of the latest event, 0 before the first.
func (w *watcher) lastSeq() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.events) == 0 {
		return 0
	}
	return w.events[len(w.events)-1].GetSeq()
}

func (w *watcher) ended() bool {
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}

// waitSeq waits until the watcher has received an event with at least seq.
func (w *watcher) waitSeq(ctx context.Context, t *testing.T, seq int64) {
	t.Helper()
	for {
		w.mu.Lock()
		n := len(w.events)
		ok := n > 0 && w.events[n-1].GetSeq() >= seq
		ch, err := w.changed, w.err
		w.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: timed out waiting for seq %d; got %s", w.name, seq, pairs(w.received()))
		case <-w.done:
			if w.lastSeq() >= seq {
				return
			}
			t.Fatalf("%s: stream ended (%v) before seq %d; got %s", w.name, err, seq, pairs(w.received()))
		case <-ch:
		}
	}
}

// wait waits for the stream to end and returns why (nil: OK).
func (w *watcher) wait(ctx context.Context, t *testing.T) error {
	t.Helper()
	select {
	case <-w.done:
	case <-ctx.Done():
		t.Fatalf("%s: stream still open at the deadline; got %s", w.name, pairs(w.received()))
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// waitOK waits for the stream to end, which must be with OK after a success.
func (w *watcher) waitOK(ctx context.Context, t *testing.T) []*comfygatev1.RequestState {
	t.Helper()
	if err := w.wait(ctx, t); err != nil {
		t.Fatalf("%s: stream ended with %v, want OK; got %s", w.name, err, pairs(w.received()))
	}
	evs := w.received()
	checkProgress(t, w.name, evs)
	checkSucceeded(t, w.name, evs)
	return evs
}

// pairs renders events as "seq:STATUS" for comparison and messages.
func pairs(evs []*comfygatev1.RequestState) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = fmt.Sprintf("%d:%s", e.GetSeq(), strings.TrimPrefix(e.GetStatus().String(), "STATUS_"))
	}
	return out
}

// seqs returns the events' seqs.
func seqs(evs []*comfygatev1.RequestState) []int64 {
	out := make([]int64, len(evs))
	for i, e := range evs {
		out[i] = e.GetSeq()
	}
	return out
}

// rank orders statuses as the state machine does: queued < running < final.
func rank(s comfygatev1.Status) int {
	switch s {
	case comfygatev1.Status_STATUS_QUEUED:
		return 1
	case comfygatev1.Status_STATUS_RUNNING:
		return 2
	case comfygatev1.Status_STATUS_SUCCEEDED, comfygatev1.Status_STATUS_FAILED, comfygatev1.Status_STATUS_CANCELLED:
		return 3
	default:
		return 0
	}
}

// checkProgress: seqs strictly increase (never repeated, never backwards)
// and the status never moves back.
func checkProgress(t *testing.T, name string, evs []*comfygatev1.RequestState) {
	t.Helper()
	for i := 1; i < len(evs); i++ {
		if evs[i].GetSeq() <= evs[i-1].GetSeq() {
			t.Errorf("%s: seq %d after seq %d: a repeat or a step back; got %s", name, evs[i].GetSeq(), evs[i-1].GetSeq(), pairs(evs))
		}
		if rank(evs[i].GetStatus()) < rank(evs[i-1].GetStatus()) {
			t.Errorf("%s: status went back from %v to %v; got %s", name, evs[i-1].GetStatus(), evs[i].GetStatus(), pairs(evs))
		}
	}
}

// checkSucceeded: the last event is the success, with its outputs.
func checkSucceeded(t *testing.T, name string, evs []*comfygatev1.RequestState) {
	t.Helper()
	if len(evs) == 0 {
		t.Errorf("%s: no events", name)
		return
	}
	last := evs[len(evs)-1]
	if last.GetStatus() != comfygatev1.Status_STATUS_SUCCEEDED {
		t.Errorf("%s: last event %v, want STATUS_SUCCEEDED; got %s", name, last.GetStatus(), pairs(evs))
	}
	if len(last.GetOutputUrls()) == 0 || len(last.GetOutputs().GetFields()) == 0 {
		t.Errorf("%s: the success carries no outputs: %v", name, last)
	}
}
