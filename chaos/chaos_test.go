package main

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/hooks"
)

// TestScheduleIsTheSeeds: a seed, mode and duration give one schedule, the
// same on every call; another seed gives another. Every fault of the mode
// comes at least once in a minute, at least three times in five minutes,
// within the run, in time order.
func TestScheduleIsTheSeeds(t *testing.T) {
	render := func(fs []*fault) string {
		var b strings.Builder
		for _, f := range fs {
			fmt.Fprintf(&b, "%v %s %v %d\n", f.at, f.kind, f.lasts, f.replica)
		}
		return b.String()
	}
	for _, tt := range []struct {
		mode    string
		d       time.Duration
		atLeast int
	}{
		{modeRedis, time.Minute, 1},
		{modeRedis, 5 * time.Minute, 3},
		{modeCluster, time.Minute, 1},
		{modeCluster, 5 * time.Minute, 3},
	} {
		t.Run(fmt.Sprintf("%s %v", tt.mode, tt.d), func(t *testing.T) {
			a, b := schedule(42, tt.mode, tt.d), schedule(42, tt.mode, tt.d)
			if render(a) != render(b) {
				t.Errorf("seed 42 gave two schedules:\n%s\n%s", render(a), render(b))
			}
			if render(a) == render(schedule(43, tt.mode, tt.d)) {
				t.Error("seeds 42 and 43 gave the same schedule")
			}
			times := map[string]int{}
			var last time.Duration
			for _, f := range a {
				times[f.kind]++
				if f.at < last || f.at < faultLeadIn || f.at+f.lasts > tt.d {
					t.Errorf("fault %s at %v for %v: out of order or outside the run", f.kind, f.at, f.lasts)
				}
				last = f.at
			}
			for _, k := range faultKinds(tt.mode) {
				if times[k] < tt.atLeast {
					t.Errorf("%s comes %d times, want at least %d", k, times[k], tt.atLeast)
				}
			}
		})
	}
}

// TestWatcherCounts: a watcher counts an event sent twice and one sent out
// of order within an epoch, takes a new epoch as a new start but counts an
// earlier state than it had been sent, and ends on a final state.
func TestWatcherCounts(t *testing.T) {
	st := func(epoch, seq int64, s comfygatev1.Status) *comfygatev1.RequestState {
		return &comfygatev1.RequestState{Epoch: epoch, Seq: seq, Status: s}
	}
	q, r, ok := comfygatev1.Status_STATUS_QUEUED, comfygatev1.Status_STATUS_RUNNING, comfygatev1.Status_STATUS_SUCCEEDED
	tests := []struct {
		name                   string
		events                 []*comfygatev1.RequestState
		dups, backward, epochs int
		regressed              int
		final                  comfygatev1.Status
	}{
		{"in order", []*comfygatev1.RequestState{st(5, 1, q), st(5, 2, r), st(5, 3, ok)}, 0, 0, 0, 0, ok},
		{"a repeat", []*comfygatev1.RequestState{st(5, 1, q), st(5, 2, r), st(5, 2, r)}, 1, 0, 0, 0, 0},
		{"backwards", []*comfygatev1.RequestState{st(5, 1, q), st(5, 3, r), st(5, 2, r)}, 0, 1, 0, 0, 0},
		{"a new epoch starts again", []*comfygatev1.RequestState{st(5, 1, q), st(5, 2, r), st(9, 1, r), st(9, 2, ok)}, 0, 0, 1, 0, ok},
		{"a new epoch at an earlier state", []*comfygatev1.RequestState{st(5, 1, q), st(5, 2, r), st(9, 1, q), st(9, 2, r), st(9, 3, ok)}, 0, 0, 1, 1, ok},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := &watcher{}
			for _, ev := range tt.events {
				w.record(ev)
			}
			if w.dups != tt.dups || w.backward != tt.backward || w.epochs != tt.epochs || w.regressed != tt.regressed || w.final != tt.final {
				t.Errorf("dups %d, backward %d, epochs %d, regressed %d, final %v; want %d, %d, %d, %d, %v",
					w.dups, w.backward, w.epochs, w.regressed, w.final, tt.dups, tt.backward, tt.epochs, tt.regressed, tt.final)
			}
		})
	}
}

// TestGoroutinesLeaveIdleConnectionsOut: the count of a replica's goroutines
// leaves out the two each idle pooled HTTP client connection holds.
func TestGoroutinesLeaveIdleConnectionsOut(t *testing.T) {
	dump := `goroutine profile: total 17

4 @ 0x1 0x2
#	0x1	net/http.(*persistConn).readLoop+0x171		net/http/transport.go:2330

4 @ 0x1 0x3
#	0x1	net/http.(*persistConn).writeLoop+0xe5	net/http/transport.go:2652

8 @ 0x1 0x4
#	0x1	github.com/comfygate/comfygate/hooks.(*Deliverer).Run.func1+0xc4

1 @ 0x1 0x5
#	0x1	main.main+0x1
`
	n, idle := goroutines([]byte(dump))
	if n != 9 || idle != 4 {
		t.Errorf("goroutines = %d, idle connections = %d; want 9 and 4", n, idle)
	}
}

// TestHookReceiverCountsStepsBack pins the receiver's count of deliveries
// of an earlier state than one it had received for the request, across
// epochs; events that announce no state (an output, a stored copy) and
// repeats of a state are not steps back.
func TestHookReceiverCountsStepsBack(t *testing.T) {
	secret, err := hooks.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	h, err := newHookReceiver()
	if err != nil {
		t.Fatal(err)
	}
	defer h.close()
	h.secrets = map[string]string{"team": secret.String()}
	deliver := func(i int, rid, typ string) {
		t.Helper()
		body := fmt.Appendf(nil, `{"type":%q,"data":{"request_id":%q}}`, typ, rid)
		// The receiver refuses one delivery in twenty: sent again, as a
		// deliverer would.
		for attempt := 0; ; attempt++ {
			req, err := http.NewRequest(http.MethodPost, h.url()+"/team", bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			hooks.SetHeaders(req.Header, []hooks.Secret{secret}, fmt.Sprintf("msg_%d_%d", i, attempt), time.Now(), body)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			if resp.StatusCode != http.StatusServiceUnavailable || attempt > 100 {
				t.Fatalf("delivery of %s: %s", typ, resp.Status)
			}
		}
	}
	for i, d := range []struct{ rid, typ string }{
		{"req-1", "request.queued"}, {"req-1", "request.running"}, {"req-1", "request.output"},
		{"req-1", "request.running"}, // again, under a new epoch: not back
		{"req-1", "request.queued"},  // back
		{"req-1", "request.succeeded"}, {"req-1", "request.outputs_stored"},
		{"req-1", "request.running"}, // back
		{"req-2", "request.running"}, {"req-2", "request.failed"},
	} {
		deliver(i, d.rid, d.typ)
	}
	_, bad, _, regressed := h.counts()
	if bad != 0 || len(regressed) != 2 {
		t.Errorf("bad %d, steps back %q; want none bad, req-1's queued and running after later states", bad, regressed)
	}
}
