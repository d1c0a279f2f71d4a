package memory_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/state/memory"
	"github.com/comfygate/comfygate/state/statetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestConformance(t *testing.T) {
	statetest.Run(t, func(t *testing.T) statetest.Backend { return memory.New(nil) })
}

func TestUsageConformance(t *testing.T) {
	statetest.RunUsage(t, func(t *testing.T) statetest.UsageBackend { return memory.New(nil) })
}

func TestListConformance(t *testing.T) {
	statetest.RunList(t, func(t *testing.T) statetest.ListBackend { return memory.New(nil) })
}

// clock is a settable clock for expiry.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

// TestSweepRemovesExpired checks that writes sweep expired records out of
// memory, not merely hide them. Get hides an expired record by comparing with
// the clock, so the test turns the clock back after the sweep: a record that
// was only hidden would be visible again, a swept one stays gone.
func TestSweepRemovesExpired(t *testing.T) {
	const (
		expiring = 1000 // saved first, expire before the second batch
		lasting  = 10   // saved first with a long TTL: a sweep must keep them
		later    = 1000 // saved after expiry; together well past one sweep interval (1024 writes)
		ttl      = time.Minute
	)
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	clk := &clock{now: t0}
	b := memory.New(clk.Now)
	ctx := t.Context()
	save := func(id string, ttl time.Duration) {
		t.Helper()
		rec := &state.Record{RequestID: id, State: runcomfy.StateQueued, Seq: 1}
		if err := b.Save(ctx, rec, ttl); err != nil {
			t.Fatalf("Save(%s): %v", id, err)
		}
	}
	for i := range expiring {
		save(fmt.Sprintf("old-%d", i), ttl)
	}
	for i := range lasting {
		save(fmt.Sprintf("lasting-%d", i), time.Hour)
	}
	clk.Set(t0.Add(2 * ttl))
	for i := range later {
		save(fmt.Sprintf("new-%d", i), ttl)
	}

	// Back to a time when the old records had not expired yet.
	clk.Set(t0.Add(ttl / 2))
	tests := []struct {
		prefix  string
		n       int
		present bool
	}{
		{"old", expiring, false},
		{"lasting", lasting, true},
		{"new", later, true},
	}
	for _, tt := range tests {
		t.Run(tt.prefix, func(t *testing.T) {
			var wrong []string
			for i := range tt.n {
				id := fmt.Sprintf("%s-%d", tt.prefix, i)
				_, err := b.Get(ctx, id)
				switch {
				case tt.present && err != nil:
					wrong = append(wrong, fmt.Sprintf("%s: %v", id, err))
				case !tt.present && !errors.Is(err, state.ErrNotFound):
					wrong = append(wrong, fmt.Sprintf("%s: %v", id, err))
				}
			}
			if len(wrong) > 0 {
				t.Errorf("%d of %d records in the wrong state (present want %v), first: %s", len(wrong), tt.n, tt.present, wrong[0])
			}
		})
	}
}

// TestExpiryByClock checks expiry against the injected clock: the record is
// there until its TTL has passed, gone from that instant, and its seq goes
// with it.
func TestExpiryByClock(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	const ttl = time.Minute
	tests := []struct {
		name    string
		at      time.Time
		present bool
	}{
		{"just saved", t0, true},
		{"just before the TTL", t0.Add(ttl - time.Nanosecond), true},
		{"at the TTL", t0.Add(ttl), false},
		{"after the TTL", t0.Add(2 * ttl), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := &clock{now: t0}
			b := memory.New(clk.Now)
			rec := &state.Record{RequestID: "req-1", State: runcomfy.StateQueued, Seq: 1}
			if err := b.Save(t.Context(), rec, ttl); err != nil {
				t.Fatalf("Save: %v", err)
			}
			clk.Set(tt.at)
			_, err := b.Get(t.Context(), "req-1")
			if got := err == nil; got != tt.present {
				t.Errorf("Get at %v: err %v, present %v, want %v", tt.at.Sub(t0), err, got, tt.present)
			}
			// The next write is accepted as seq 2 while the record lives and
			// as seq 1 once it has expired.
			next := rec.Clone()
			if !tt.present {
				next.Seq = 1
			} else {
				next.Seq = 2
			}
			if err := b.Save(t.Context(), next, ttl); err != nil {
				t.Errorf("Save(seq %d) at %v = %v, want nil", next.Seq, tt.at.Sub(t0), err)
			}
		})
	}
}

func TestIdempotencyConformance(t *testing.T) {
	statetest.RunIdempotency(t, func(t *testing.T) state.Idempotency { return memory.New(nil) })
}

func TestOutboxConformance(t *testing.T) {
	statetest.RunOutbox(t, func(t *testing.T) statetest.OutboxBackend { return memory.New(nil) })
}

func TestSlotsConformance(t *testing.T) {
	statetest.RunSlots(t, func(t *testing.T) statetest.SlotsBackend { return memory.New(nil) })
}
