package statetest

// This file holds the cases of the Bus contract: records delivered in order, per request.

import (
	"fmt"
	"slices"
	"testing"

	"github.com/comfygate/comfygate/state"
)

func busCases() []testCase {
	return []testCase{
		{"DeliversEveryRecordInOrderOnce", testDeliversInOrder},
		{"NothingSavedBeforeSubscribe", testNothingBeforeSubscribe},
		{"Unsubscribe", testUnsubscribe},
		{"PerRequest", testPerRequest},
	}
}

func testDeliversInOrder(t *testing.T, b Backend) {
	const id, n = "req-order", 20
	rec := subscribe(t, b, id)
	var saved []*state.Record
	for seq := int64(1); seq <= n; seq++ {
		r := fullRecord(id, seq)
		r.InstanceID = fmt.Sprintf("inst-%d", seq)
		mustSave(t, b, r.Clone(), longTTL)
		saved = append(saved, r)
	}
	got := expectPublished(t, b, rec, id, seqRange(1, n)...)
	for i := range min(len(got), len(saved)) {
		if d := diffRecord(got[i], saved[i]); d != "" {
			t.Errorf("delivered record %d differs from the saved one:\n%s", i, d)
		}
	}
}

func testNothingBeforeSubscribe(t *testing.T, b Backend) {
	const id = "req-late-subscriber"
	for seq := int64(1); seq <= 3; seq++ {
		mustSave(t, b, fullRecord(id, seq), longTTL)
	}
	rec := subscribe(t, b, id)
	mustSave(t, b, fullRecord(id, 4), longTTL)
	if got := seqs(rec.waitLen(t, 1)); !slices.Equal(got, []int64{4}) {
		t.Errorf("delivered seqs = %v, want [4]: records saved before Subscribe must not be delivered", got)
	}
}

func testUnsubscribe(t *testing.T, b Backend) {
	ctx := testContext(t)
	const id = "req-unsubscribe"
	first := subscribe(t, b, id)
	mustSave(t, b, fullRecord(id, 1), longTTL)
	first.waitLen(t, 1)
	if err := b.Unsubscribe(ctx, id); err != nil {
		t.Fatalf("Unsubscribe: %v", err)
	}
	mustSave(t, b, fullRecord(id, 2), longTTL)

	// A new subscription is the barrier: seq 3 reaches it after anything the
	// old one could still have received.
	second := subscribe(t, b, id)
	mustSave(t, b, fullRecord(id, 3), longTTL)
	if got := seqs(second.waitLen(t, 1)); !slices.Equal(got, []int64{3}) {
		t.Errorf("new subscription got seqs %v, want [3]", got)
	}
	if got := seqs(first.all()); !slices.Equal(got, []int64{1}) {
		t.Errorf("unsubscribed deliver got seqs %v, want only [1] from before Unsubscribe", got)
	}
}

func testPerRequest(t *testing.T, b Backend) {
	const a, bID, c = "req-a", "req-b", "req-c"
	recA, recB := subscribe(t, b, a), subscribe(t, b, bID)
	mustSave(t, b, fullRecord(bID, 1), longTTL)
	mustSave(t, b, fullRecord(bID, 2), longTTL)
	mustSave(t, b, fullRecord(c, 1), longTTL) // nobody subscribes to c
	mustSave(t, b, fullRecord(a, 1), longTTL)

	if got := ids(recA.waitLen(t, 1)); !slices.Equal(got, []string{a + "#1"}) {
		t.Errorf("subscriber of %s got %v, want only [%s#1]", a, got, a)
	}
	if got := ids(recB.waitLen(t, 2)); !slices.Equal(got, []string{bID + "#1", bID + "#2"}) {
		t.Errorf("subscriber of %s got %v, want [%s#1 %s#2]", bID, got, bID, bID)
	}
}
