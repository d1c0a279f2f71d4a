package statetest

import (
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/state"
)

// idempotencyCase is one subtest of RunIdempotency.
type idempotencyCase struct {
	name string
	run  func(t *testing.T, b state.Idempotency)
}

// RunIdempotency runs the conformance suite of state.Idempotency. newBackend
// returns a fresh, isolated backend for each subtest, as for Run; subtests
// run in parallel. Expiry runs in real time, because Redis expires keys by
// its own clock.
func RunIdempotency(t *testing.T, newBackend func(t *testing.T) state.Idempotency) {
	t.Helper()
	cases := []idempotencyCase{
		{"ClaimFreeKey", testClaimFreeKey},
		{"ClaimTakenKey", testClaimTakenKey},
		{"CompleteReplaces", testCompleteReplaces},
		{"DropFrees", testDropFrees},
		{"ClaimExpires", testClaimExpires},
		{"ConcurrentClaims", testConcurrentClaims},
		{"KeysAreSeparate", testKeysAreSeparate},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.run(t, newBackend(t))
		})
	}
}

func mustClaim(t *testing.T, b state.Idempotency, key string, e state.IdempotencyEntry, ttl time.Duration) (state.IdempotencyEntry, bool) {
	t.Helper()
	got, claimed, err := b.Claim(testContext(t), key, e, ttl)
	if err != nil {
		t.Fatalf("Claim(%s): %v", key, err)
	}
	return got, claimed
}

func testClaimFreeKey(t *testing.T, b state.Idempotency) {
	if _, claimed := mustClaim(t, b, "k-free", state.IdempotencyEntry{BodyHash: "h1"}, longTTL); !claimed {
		t.Fatal("a free key was not claimed")
	}
}

func testClaimTakenKey(t *testing.T, b state.Idempotency) {
	first := state.IdempotencyEntry{BodyHash: "h1"}
	mustClaim(t, b, "k-taken", first, longTTL)
	got, claimed := mustClaim(t, b, "k-taken", state.IdempotencyEntry{BodyHash: "h2"}, longTTL)
	if claimed || got != first {
		t.Fatalf("second Claim = %+v, %v; want the first entry %+v, not claimed", got, claimed, first)
	}
}

// testCompleteReplaces: Complete stores the whole entry (a request id, or the
// mark of a submit that got no answer), which later claims read back.
func testCompleteReplaces(t *testing.T, b state.Idempotency) {
	tests := []struct {
		name string
		done state.IdempotencyEntry
	}{
		{"with a request id", state.IdempotencyEntry{BodyHash: "h1", RequestID: "req-1"}},
		{"unanswered", state.IdempotencyEntry{BodyHash: "h1", Unanswered: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := "k-complete-" + tt.name
			mustClaim(t, b, key, state.IdempotencyEntry{BodyHash: "h1"}, time.Minute)
			if err := b.Complete(testContext(t), key, tt.done, longTTL); err != nil {
				t.Fatalf("Complete: %v", err)
			}
			got, claimed := mustClaim(t, b, key, state.IdempotencyEntry{BodyHash: "h1"}, longTTL)
			if claimed || got != tt.done {
				t.Fatalf("Claim after Complete = %+v, %v; want %+v, not claimed", got, claimed, tt.done)
			}
		})
	}
}

func testDropFrees(t *testing.T, b state.Idempotency) {
	mustClaim(t, b, "k-drop", state.IdempotencyEntry{BodyHash: "h1"}, longTTL)
	if err := b.Drop(testContext(t), "k-drop"); err != nil {
		t.Fatalf("Drop: %v", err)
	}
	if _, claimed := mustClaim(t, b, "k-drop", state.IdempotencyEntry{BodyHash: "h2"}, longTTL); !claimed {
		t.Fatal("a dropped key was not free")
	}
	if err := b.Drop(testContext(t), "k-never-claimed"); err != nil {
		t.Errorf("Drop of a free key: %v, want nil", err)
	}
}

// testClaimExpires: a claim whose submit never completed frees its key after
// its TTL, so a retry is not blocked for good by a replica that died.
func testClaimExpires(t *testing.T, b state.Idempotency) {
	mustClaim(t, b, "k-expire", state.IdempotencyEntry{BodyHash: "h1"}, shortTTL)
	deadline := time.Now().Add(expiryDeadline)
	for {
		if _, claimed := mustClaim(t, b, "k-expire", state.IdempotencyEntry{BodyHash: "h2"}, longTTL); claimed {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the claim did not expire within %v of its %v TTL", expiryDeadline, shortTTL)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// testConcurrentClaims: of many claims of one key at once (retries arriving
// at several replicas together), exactly one wins, and every other one sees
// the winner's entry.
func testConcurrentClaims(t *testing.T, b state.Idempotency) {
	const n = 32
	ctx := testContext(t)
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		winners []state.IdempotencyEntry
		seen    []state.IdempotencyEntry
	)
	for i := range n {
		wg.Go(func() {
			e := state.IdempotencyEntry{BodyHash: string(rune('a' + i%26))}
			got, claimed, err := b.Claim(ctx, "k-race", e, longTTL)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				t.Errorf("Claim: %v", err)
			case claimed:
				winners = append(winners, e)
			default:
				seen = append(seen, got)
			}
		})
	}
	wg.Wait()
	if len(winners) != 1 {
		t.Fatalf("%d claims won, want exactly one", len(winners))
	}
	for _, e := range seen {
		if e != winners[0] {
			t.Errorf("a losing claim saw %+v, want the winner's %+v", e, winners[0])
		}
	}
}

func testKeysAreSeparate(t *testing.T, b state.Idempotency) {
	mustClaim(t, b, "k-one", state.IdempotencyEntry{BodyHash: "h1"}, longTTL)
	if _, claimed := mustClaim(t, b, "k-two", state.IdempotencyEntry{BodyHash: "h1"}, longTTL); !claimed {
		t.Fatal("claiming one key took another")
	}
}
