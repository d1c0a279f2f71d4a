package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/state"
)

// scriptedIdem is an Idempotency whose Claim answers, in turn, the entries
// of claims (the last one again once they run out), and which records the
// TTLs of the claims and the entries completed.
type scriptedIdem struct {
	mu        sync.Mutex
	claims    []state.IdempotencyEntry
	claimTTLs []time.Duration
	completed []state.IdempotencyEntry
}

func (s *scriptedIdem) Claim(_ context.Context, _ string, e state.IdempotencyEntry, ttl time.Duration) (state.IdempotencyEntry, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.claimTTLs = append(s.claimTTLs, ttl)
	if len(s.claims) == 0 {
		return e, true, nil
	}
	got := s.claims[0]
	if len(s.claims) > 1 {
		s.claims = s.claims[1:]
	}
	return got, false, nil
}

func (s *scriptedIdem) Complete(_ context.Context, _ string, e state.IdempotencyEntry, _ time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.completed = append(s.completed, e)
	return nil
}

func (s *scriptedIdem) Drop(context.Context, string) error { return nil }

func (s *scriptedIdem) marks() []state.IdempotencyEntry {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]state.IdempotencyEntry(nil), s.completed...)
}

// notFoundTracker answers every Lookup with ErrNotFound: a key's request id
// is then answered as it is.
type notFoundTracker struct{ Tracker }

func (notFoundTracker) Lookup(context.Context, string) (*state.Record, error) {
	return nil, state.ErrNotFound
}

func leaseService(idem state.Idempotency) *Service {
	return &Service{idem: idem, tracker: notFoundTracker{}, now: time.Now, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

// TestClaimsAreLeased: a key is claimed for claimLease, not for a submit's
// whole timeout, so a claimant that died, or whose claim landed after it
// gave up on the store, holds retries back that long at most. A claim whose
// submit was sent is waited for while its sender says it is alive, and
// refused once it stopped saying so (a job may exist); a live one's answer
// is the retry's.
func TestClaimsAreLeased(t *testing.T) {
	hash := bodyHash("dep", `{"a":1}`, "")
	now := time.Now()
	tests := []struct {
		name    string
		claims  []state.IdempotencyEntry
		wantErr error
		wantID  string
	}{
		{name: "free", wantID: ""},
		{name: "sent by a sender gone quiet", claims: []state.IdempotencyEntry{
			{BodyHash: hash, Sent: true, Until: now.Add(-claimLeaseSkew - time.Second)},
		}, wantErr: errIdempotencyUnanswered},
		{name: "sent by a live sender, then answered", claims: []state.IdempotencyEntry{
			{BodyHash: hash, Sent: true, Until: now.Add(claimLease)},
			{BodyHash: hash, Sent: true, Until: now.Add(claimLease)},
			{BodyHash: hash, RequestID: "req-1"},
		}, wantID: "req-1"},
		{name: "within the clocks' skew", claims: []state.IdempotencyEntry{
			{BodyHash: hash, Sent: true, Until: now.Add(-claimLeaseSkew / 2)},
			{BodyHash: hash, RequestID: "req-2"},
		}, wantID: "req-2"},
		{name: "claimed, not sent yet, then answered", claims: []state.IdempotencyEntry{
			{BodyHash: hash},
			{BodyHash: hash, RequestID: "req-3"},
		}, wantID: "req-3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			idem := &scriptedIdem{claims: tt.claims}
			scope, done, err := leaseService(idem).claimIdempotency(context.Background(), "key-1", "dep", `{"a":1}`, "")
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr != nil {
				return
			}
			if got := done.GetRequest().GetRequestId(); got != tt.wantID {
				t.Errorf("answered request %q, want %q", got, tt.wantID)
			}
			if tt.wantID == "" && scope == "" {
				t.Error("a free key was not claimed")
			}
			for _, ttl := range idem.claimTTLs {
				if ttl != claimLease {
					t.Errorf("claimed for %v, want the lease %v", ttl, claimLease)
				}
			}
		})
	}
}

// TestSendingKeySaysItsSenderIsAlive: before a submit is sent its key is
// marked sent, with the sender's lease; the mark is renewed while the
// submit waits for RunComfy, and stops, for good, when stop returns.
func TestSendingKeySaysItsSenderIsAlive(t *testing.T) {
	idem := &scriptedIdem{}
	s := leaseService(idem)
	start := time.Now()
	stop, err := s.sendingKey(context.Background(), "scope", "hash")
	if err != nil {
		t.Fatal(err)
	}
	first := idem.marks()
	if len(first) != 1 || !first[0].Sent || first[0].BodyHash != "hash" || first[0].RequestID != "" ||
		first[0].Until.Before(start.Add(claimLease)) || first[0].Until.After(time.Now().Add(claimLease)) {
		t.Fatalf("marks before sending = %+v, want one sent entry alive for %v", first, claimLease)
	}
	for deadline := time.Now().Add(2 * claimLease); len(idem.marks()) < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the mark was not renewed while the submit waited")
		}
	}
	stop()
	after := len(idem.marks())
	if last := idem.marks()[after-1]; !last.Sent || !last.Until.After(first[0].Until) {
		t.Errorf("renewed mark %+v, want sent, alive later than the first", last)
	}
	time.Sleep(claimLease/3 + 500*time.Millisecond) // one renewal period: a stopped sender must stay quiet
	if n := len(idem.marks()); n != after {
		t.Errorf("%d marks after stop, want none", n-after)
	}
}
