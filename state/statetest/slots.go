package statetest

// This file holds the cases of the Slots contract: caps counted over
// reservations and unfinished requests, a slot given back however a request
// ends (its final save, its record's expiry, no request at all).

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
)

// SlotsBackend is a store that counts concurrency slots.
type SlotsBackend interface {
	Backend
	state.Slots
}

// RunSlots runs the Slots cases, each on a fresh backend.
func RunSlots(t *testing.T, newBackend func(t *testing.T) SlotsBackend) {
	t.Helper()
	runParallel(t, newBackend, []namedCase[SlotsBackend]{
		{"DeploymentCap", testSlotsDeploymentCap},
		{"TenantCap", testSlotsTenantCap},
		{"FinalSaveReleases", testSlotsFinalSave},
		{"BindOfEndedFrees", testSlotsBindEnded},
		{"ExpiryReleases", testSlotsExpiry},
		{"LostRecordReleases", testSlotsLost},
		{"ConcurrentReserves", testSlotsConcurrent},
	})
}

const slotHold = time.Minute

func reserve(t *testing.T, b SlotsBackend, tenant string, caps state.Caps) string {
	t.Helper()
	token, err := b.Reserve(testContext(t), deployment, tenant, caps, slotHold)
	if err != nil {
		t.Fatalf("Reserve(%s, %+v): %v", tenant, caps, err)
	}
	return token
}

// refused checks that a reservation is refused by the cap named.
func refused(t *testing.T, b SlotsBackend, tenant string, caps state.Caps, perTenant bool) {
	t.Helper()
	_, err := b.Reserve(testContext(t), deployment, tenant, caps, slotHold)
	var ce *state.CapError
	if !errors.As(err, &ce) {
		t.Fatalf("Reserve(%s, %+v) = %v, want a *state.CapError", tenant, caps, err)
	}
	want := caps.Deployment
	if perTenant {
		want = caps.PerTenant
	}
	if ce.PerTenant != perTenant || ce.Limit != want || ce.DeploymentID != deployment {
		t.Fatalf("Reserve(%s, %+v) = %+v, want per tenant %v, limit %d", tenant, caps, ce, perTenant, want)
	}
}

// bound submits a request: a reservation, its record saved queued with
// ttl, then bound to it. It returns the record.
func bound(t *testing.T, b SlotsBackend, id, tenant string, caps state.Caps, ttl time.Duration) *state.Record {
	t.Helper()
	token := reserve(t, b, tenant, caps)
	rec := &state.Record{RequestID: id, DeploymentID: deployment, Owner: tenant, State: runcomfy.StateQueued,
		CreatedAt: time.Now(), Seq: 1, Epoch: 1}
	mustSave(t, b, rec.Clone(), ttl)
	if err := b.Bind(testContext(t), token, deployment, tenant, id); err != nil {
		t.Fatalf("Bind(%s): %v", id, err)
	}
	return rec
}

func testSlotsDeploymentCap(t *testing.T, b SlotsBackend) {
	caps := state.Caps{Deployment: 2}
	first := reserve(t, b, "a", caps)
	reserve(t, b, "b", caps)
	refused(t, b, "c", caps, false)
	refused(t, b, "a", caps, false)
	if err := b.Free(testContext(t), first, deployment, "a"); err != nil {
		t.Fatal(err)
	}
	reserve(t, b, "c", caps)
	refused(t, b, "c", caps, false)
	// Another deployment counts apart.
	if _, err := b.Reserve(testContext(t), "dep-other", "c", caps, slotHold); err != nil {
		t.Fatalf("another deployment: %v", err)
	}
}

func testSlotsTenantCap(t *testing.T, b SlotsBackend) {
	caps := state.Caps{Deployment: 3, PerTenant: 1}
	reserve(t, b, "a", caps)
	refused(t, b, "a", caps, true)
	reserve(t, b, "b", caps)
	reserve(t, b, "c", caps)
	refused(t, b, "d", caps, false)
	// A tenant cap alone.
	only := state.Caps{PerTenant: 1}
	refused(t, b, "b", only, true)
	reserve(t, b, "d", only)
}

func testSlotsFinalSave(t *testing.T, b SlotsBackend) {
	caps := state.Caps{Deployment: 1}
	rec := bound(t, b, "req-slot-final", "a", caps, longTTL)
	refused(t, b, "b", caps, false)
	// Running keeps the slot.
	rec.State, rec.StartedAt, rec.Seq = runcomfy.StateRunning, time.Now(), 2
	mustSave(t, b, rec.Clone(), longTTL)
	refused(t, b, "b", caps, false)
	rec.State, rec.FinishedAt, rec.Seq = runcomfy.StateCancelled, time.Now(), 3
	mustSave(t, b, rec.Clone(), longTTL)
	reserve(t, b, "b", caps)
}

func testSlotsBindEnded(t *testing.T, b SlotsBackend) {
	caps := state.Caps{Deployment: 1}
	// The request ended before its submit's answer was recorded.
	token := reserve(t, b, "a", caps)
	mustSave(t, b, &state.Record{RequestID: "req-slot-ended", DeploymentID: deployment, Owner: "a",
		State: runcomfy.StateSucceeded, CreatedAt: time.Now(), FinishedAt: time.Now(), Seq: 1, Epoch: 1}, longTTL)
	if err := b.Bind(testContext(t), token, deployment, "a", "req-slot-ended"); err != nil {
		t.Fatal(err)
	}
	token = reserve(t, b, "a", caps)
	// No record at all (it could not be saved): the slot is not kept.
	if err := b.Bind(testContext(t), token, deployment, "a", "req-slot-none"); err != nil {
		t.Fatal(err)
	}
	reserve(t, b, "a", caps)
}

func testSlotsExpiry(t *testing.T, b SlotsBackend) {
	caps := state.Caps{Deployment: 1}
	bound(t, b, "req-slot-expiring", "a", caps, shortTTL)
	untilReserved(t, b, caps)
	// A reservation that is never bound nor freed expires too.
	if _, err := b.Reserve(testContext(t), deployment, "a", caps, 0); err != nil {
		t.Fatal(err)
	}
	untilReserved(t, b, caps)
}

// untilReserved reserves until it succeeds: the slot held is let go by an
// expiry, on the backend's own clock.
func untilReserved(t *testing.T, b SlotsBackend, caps state.Caps) {
	t.Helper()
	deadline := time.Now().Add(expiryDeadline)
	for {
		token, err := b.Reserve(testContext(t), deployment, "b", caps, slotHold)
		if err == nil {
			if err := b.Free(testContext(t), token, deployment, "b"); err != nil {
				t.Fatal(err)
			}
			return
		}
		var ce *state.CapError
		if !errors.As(err, &ce) {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the slot was still held %s after its expiry", expiryDeadline)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// testSlotsLost: a request whose record is lost and made again (which does
// not know it holds a slot) ends without giving its slot back by its final
// save; a reservation at the cap finds it ended.
func testSlotsLost(t *testing.T, b SlotsBackend) {
	caps := state.Caps{Deployment: 1}
	rec := bound(t, b, "req-slot-lost", "a", caps, longTTL)
	refused(t, b, "b", caps, false)
	mustLose(t, b, rec.RequestID)
	mustSave(t, b, &state.Record{RequestID: rec.RequestID, DeploymentID: deployment, Owner: "a", State: runcomfy.StateCancelled,
		CreatedAt: rec.CreatedAt, FinishedAt: time.Now(), Seq: 1, Epoch: 2}, longTTL)
	reserve(t, b, "b", caps)
}

func testSlotsConcurrent(t *testing.T, b SlotsBackend) {
	caps := state.Caps{Deployment: 5, PerTenant: 3}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		got  = map[string]int{}
		errs []error
	)
	for i := range 40 {
		tenant := fmt.Sprintf("t%d", i%2)
		wg.Go(func() {
			_, err := b.Reserve(testContext(t), deployment, tenant, caps, slotHold)
			mu.Lock()
			defer mu.Unlock()
			var ce *state.CapError
			switch {
			case err == nil:
				got[tenant]++
			case !errors.As(err, &ce):
				errs = append(errs, err)
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	if got["t0"]+got["t1"] != 5 || got["t0"] > 3 || got["t1"] > 3 {
		t.Fatalf("reserved %v of 40 tries, want 5 in all and at most 3 per tenant", got)
	}
}
