package server

import (
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
)

// TestPreferredWait: the wait a Prefer header asks for (RFC 7240), at most
// five minutes; none for what is not a positive number of seconds.
func TestPreferredWait(t *testing.T) {
	for _, tc := range []struct {
		prefer []string
		want   time.Duration
	}{
		{nil, 0},
		{[]string{"wait=30"}, 30 * time.Second},
		{[]string{"respond-async, wait=10"}, 10 * time.Second},
		{[]string{"wait=2;x=y"}, 2 * time.Second},
		{[]string{`wait="5"`}, 5 * time.Second},
		{[]string{"WAIT = 7"}, 7 * time.Second},
		{[]string{"wait=301"}, 300 * time.Second},
		{[]string{"wait=99999999999999999999"}, 300 * time.Second},
		{[]string{"wait=0"}, 0},
		{[]string{"wait=-1"}, 0},
		{[]string{"wait=-99999999999999999999"}, 0},
		{[]string{"wait=abc"}, 0},
		{[]string{"wait=1.5"}, 0},
		{[]string{"return=minimal"}, 0},
		{[]string{"wait=3", "wait=9"}, 3 * time.Second},
	} {
		ctx := metadata.NewIncomingContext(t.Context(), metadata.MD{"prefer": tc.prefer})
		if got := preferredWait(ctx); got != tc.want {
			t.Errorf("Prefer %q: %v, want %v", tc.prefer, got, tc.want)
		}
	}
}

// TestSupersedes: the wait answers the latest state it saw, and a record made
// again after a loss at an earlier state does not replace a later one.
func TestSupersedes(t *testing.T) {
	rec := func(epoch, seq int64, st runcomfy.State) *state.Record {
		return &state.Record{Epoch: epoch, Seq: seq, State: st}
	}
	for _, tc := range []struct {
		name    string
		last, r *state.Record
		want    bool
	}{
		{"a later seq", rec(1, 2, runcomfy.StateQueued), rec(1, 3, runcomfy.StateRunning), true},
		{"the same seq", rec(1, 2, runcomfy.StateRunning), rec(1, 2, runcomfy.StateRunning), false},
		{"an earlier seq", rec(1, 3, runcomfy.StateRunning), rec(1, 2, runcomfy.StateQueued), false},
		{"another epoch, a later state", rec(1, 3, runcomfy.StateRunning), rec(2, 1, runcomfy.StateSucceeded), true},
		{"another epoch, the same state", rec(1, 3, runcomfy.StateRunning), rec(2, 1, runcomfy.StateRunning), true},
		{"another epoch, an earlier state", rec(1, 3, runcomfy.StateRunning), rec(2, 1, runcomfy.StateQueued), false},
	} {
		if got := supersedes(tc.last, tc.r); got != tc.want {
			t.Errorf("%s: supersedes = %v, want %v", tc.name, got, tc.want)
		}
	}
}
