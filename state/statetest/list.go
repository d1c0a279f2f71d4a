package statetest

// This file holds the cases of the Lister contract: a tenant's requests,
// newest first, filtered, in pages, kept with each save.

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
)

// ListBackend is a store that lists.
type ListBackend interface {
	Backend
	state.Lister
}

// RunList runs the Lister cases, each on a fresh backend.
func RunList(t *testing.T, newBackend func(t *testing.T) ListBackend) {
	t.Helper()
	runParallel(t, newBackend, []namedCase[ListBackend]{
		{"Filters", testListFilters},
		{"StateChangesMoveRecords", testListStateChanges},
		{"OwnerChangeMovesRecord", testListOwnerChange},
		{"PagesWhileRequestsArrive", testListPagesWhileArriving},
		{"TiesInOneMillisecond", testListTies},
		{"ExpiredRecordsLeave", testListExpiry},
		{"BoundsToTheNanosecond", testListBounds},
	})
}

// namedCase is a subtest of a suite on a backend of kind B.
type namedCase[B any] struct {
	name string
	run  func(t *testing.T, b B)
}

// runParallel runs each case as a parallel subtest on a fresh backend.
func runParallel[B any](t *testing.T, newBackend func(t *testing.T) B, cases []namedCase[B]) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.run(t, newBackend(t))
		})
	}
}

// listBase is the creation time of the suite's first record.
var listBase = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

// listRecord is a new record (seq 1).
func listRecord(id, owner, dep string, st runcomfy.State, created time.Time) *state.Record {
	return &state.Record{RequestID: id, DeploymentID: dep, Owner: owner, State: st, CreatedAt: created, UpdatedAt: created, Seq: 1, Epoch: 7}
}

// listAll reads every page of q with q.Limit per page and returns the ids in
// order; it fails on a page over the limit or a listing that does not end.
func listAll(t *testing.T, b ListBackend, q state.ListQuery) []string {
	t.Helper()
	var ids []string
	for range 1000 {
		page, err := b.List(testContext(t), q)
		if err != nil {
			t.Fatalf("List(%+v): %v", q, err)
		}
		if len(page.Records) > q.Limit {
			t.Fatalf("List(%+v): %d records, limit %d", q, len(page.Records), q.Limit)
		}
		for _, r := range page.Records {
			ids = append(ids, r.RequestID)
		}
		if page.Next.IsZero() {
			return ids
		}
		if len(page.Records) < q.Limit {
			t.Fatalf("List(%+v): a page of %d with more to come", q, len(page.Records))
		}
		q.After = page.Next
	}
	t.Fatalf("List(%+v) did not end", q)
	return nil
}

// expectList is the model: the ids of recs that q matches, newest first.
func expectList(recs []*state.Record, q state.ListQuery) []string {
	var match []*state.Record
	for _, r := range recs {
		if q.Matches(r) {
			match = append(match, r)
		}
	}
	state.SortNewestFirst(match)
	ids := []string{}
	for _, r := range match {
		ids = append(ids, r.RequestID)
	}
	return ids
}

func equalIDs(got, want []string) bool {
	return slices.Equal(got, want) || len(got) == 0 && len(want) == 0
}

// testListFilters: every combination of owner, deployment, states and a
// creation range lists exactly the model's records, in order, across pages
// of every size.
func testListFilters(t *testing.T, b ListBackend) {
	states := []runcomfy.State{runcomfy.StateQueued, runcomfy.StateRunning, runcomfy.StateSucceeded, runcomfy.StateFailed, runcomfy.StateCancelled}
	var recs []*state.Record
	for i := range 40 {
		owner := []string{"tenant-a", "tenant-b", ""}[i%3]
		dep := []string{"dep-1", "dep-2"}[i/3%2]
		r := listRecord(fmt.Sprintf("req-%02d", i), owner, dep, states[i%len(states)], listBase.Add(time.Duration(i*7%40)*time.Second))
		recs = append(recs, r)
		mustSave(t, b, r.Clone(), longTTL)
	}
	for _, owner := range []string{"tenant-a", "tenant-b", "", "tenant-none"} {
		for _, dep := range []string{"", "dep-1", "dep-2", "dep-none"} {
			for _, sts := range [][]runcomfy.State{nil, {runcomfy.StateQueued}, {runcomfy.StateSucceeded, runcomfy.StateFailed, runcomfy.StateCancelled}} {
				for _, rng := range [][2]time.Time{{}, {listBase.Add(10 * time.Second), listBase.Add(30 * time.Second)}, {listBase.Add(20 * time.Second), time.Time{}}} {
					for _, limit := range []int{1, 3, 50} {
						q := state.ListQuery{Owner: owner, DeploymentID: dep, States: sts, From: rng[0], To: rng[1], Limit: limit}
						if got, want := listAll(t, b, q), expectList(recs, q); !equalIDs(got, want) {
							t.Errorf("List(owner %q, deployment %q, states %v, %v..%v, limit %d) = %v, want %v",
								owner, dep, sts, rng[0], rng[1], limit, got, want)
						}
					}
				}
			}
		}
	}
}

// testListStateChanges: a record whose state changes leaves its old state's
// listing and joins the new one's; without a state filter it is listed once.
func testListStateChanges(t *testing.T, b ListBackend) {
	r := listRecord("req-moves", "tenant-a", "dep-1", runcomfy.StateQueued, listBase)
	mustSave(t, b, r.Clone(), longTTL)
	for seq, st := range []runcomfy.State{runcomfy.StateRunning, runcomfy.StateSucceeded} {
		r.State, r.Seq = st, int64(seq+2)
		mustSave(t, b, r.Clone(), longTTL)
	}
	for _, tc := range []struct {
		states []runcomfy.State
		want   []string
	}{
		{nil, []string{"req-moves"}},
		{[]runcomfy.State{runcomfy.StateQueued, runcomfy.StateRunning}, nil},
		{[]runcomfy.State{runcomfy.StateSucceeded}, []string{"req-moves"}},
	} {
		for _, dep := range []string{"", "dep-1"} {
			q := state.ListQuery{Owner: "tenant-a", DeploymentID: dep, States: tc.states, Limit: 10}
			if got := listAll(t, b, q); !equalIDs(got, tc.want) {
				t.Errorf("List(deployment %q, states %v) = %v, want %v", dep, tc.states, got, tc.want)
			}
		}
	}
}

// testListOwnerChange: a record recorded without an owner and then claimed
// is listed for its new owner only.
func testListOwnerChange(t *testing.T, b ListBackend) {
	r := listRecord("req-claimed", "", "dep-1", runcomfy.StateQueued, listBase)
	mustSave(t, b, r.Clone(), longTTL)
	r.Owner, r.Seq = "tenant-a", 2
	mustSave(t, b, r.Clone(), longTTL)
	for owner, want := range map[string][]string{"": nil, "tenant-a": {"req-claimed"}} {
		for _, dep := range []string{"", "dep-1"} {
			if got := listAll(t, b, state.ListQuery{Owner: owner, DeploymentID: dep, Limit: 10}); !equalIDs(got, want) {
				t.Errorf("List(owner %q, deployment %q) = %v, want %v", owner, dep, got, want)
			}
		}
	}
}

// testListPagesWhileArriving: pages read while new requests arrive (newer,
// so before the cursor) and older ones change state list every request
// that existed at the start exactly once, in order.
func testListPagesWhileArriving(t *testing.T, b ListBackend) {
	var before []*state.Record
	for i := range 30 {
		r := listRecord(fmt.Sprintf("req-old-%02d", i), "tenant-a", "dep-1", runcomfy.StateQueued, listBase.Add(time.Duration(i)*time.Second))
		before = append(before, r)
		mustSave(t, b, r.Clone(), longTTL)
	}
	want := expectList(before, state.ListQuery{Owner: "tenant-a", Limit: 1})
	q := state.ListQuery{Owner: "tenant-a", Limit: 4}
	var got []string
	for page := 0; ; page++ {
		p, err := b.List(testContext(t), q)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range p.Records {
			got = append(got, r.RequestID)
		}
		// Between pages: a newer request arrives, and one of the old ones
		// (not yet listed, or listed) moves on.
		mustSave(t, b, listRecord(fmt.Sprintf("req-new-%02d", page), "tenant-a", "dep-1", runcomfy.StateQueued, listBase.Add(time.Hour+time.Duration(page)*time.Second)), longTTL)
		moved := before[page%len(before)]
		moved.State, moved.Seq = runcomfy.StateRunning, moved.Seq+1
		mustSave(t, b, moved.Clone(), longTTL)
		if p.Next.IsZero() {
			break
		}
		q.After = p.Next
	}
	if !slices.Equal(got, want) {
		t.Errorf("listed %v\nwant      %v", got, want)
	}
}

// testListTies: requests created in the same millisecond are ordered by id
// and each listed once across pages that end between them.
func testListTies(t *testing.T, b ListBackend) {
	var recs []*state.Record
	for i := range 9 {
		r := listRecord(fmt.Sprintf("req-tie-%d", i), "tenant-a", "dep-1", []runcomfy.State{runcomfy.StateQueued, runcomfy.StateRunning}[i%2], listBase.Add(time.Duration(i/3)*time.Millisecond))
		recs = append(recs, r)
		mustSave(t, b, r.Clone(), longTTL)
	}
	for limit := 1; limit <= 4; limit++ {
		q := state.ListQuery{Owner: "tenant-a", Limit: limit}
		if got, want := listAll(t, b, q), expectList(recs, q); !slices.Equal(got, want) {
			t.Errorf("limit %d: %v, want %v", limit, got, want)
		}
	}
}

// testListExpiry: an expired record is no longer listed; the others are.
func testListExpiry(t *testing.T, b ListBackend) {
	mustSave(t, b, listRecord("req-short", "tenant-a", "dep-1", runcomfy.StateQueued, listBase.Add(time.Second)), shortTTL)
	mustSave(t, b, listRecord("req-long", "tenant-a", "dep-1", runcomfy.StateQueued, listBase), longTTL)
	waitNotFound(t, b, "req-short")
	for _, limit := range []int{1, 10} {
		for _, dep := range []string{"", "dep-1"} {
			q := state.ListQuery{Owner: "tenant-a", DeploymentID: dep, Limit: limit}
			if got := listAll(t, b, q); !slices.Equal(got, []string{"req-long"}) {
				t.Errorf("List(deployment %q, limit %d) = %v, want [req-long]", dep, limit, got)
			}
		}
	}
}

// testListBounds: the creation range is exact to the nanosecond, though
// the order is by millisecond: created_after includes its instant,
// created_before excludes its own.
func testListBounds(t *testing.T, b ListBackend) {
	created := listBase.Add(999114770 * time.Nanosecond)
	mustSave(t, b, listRecord("req-bound", "tenant-a", "dep-1", runcomfy.StateQueued, created), longTTL)
	mustSave(t, b, listRecord("req-same-ms-before", "tenant-a", "dep-1", runcomfy.StateQueued, created.Add(-1000)), longTTL)
	for _, tc := range []struct {
		name     string
		from, to time.Time
		want     []string
	}{
		{"from its instant", created, time.Time{}, []string{"req-bound"}},
		{"from a nanosecond later", created.Add(1), time.Time{}, nil},
		{"before a nanosecond later", time.Time{}, created.Add(1), []string{"req-bound", "req-same-ms-before"}},
		{"before its instant", time.Time{}, created, []string{"req-same-ms-before"}},
	} {
		for _, dep := range []string{"", "dep-1"} {
			q := state.ListQuery{Owner: "tenant-a", DeploymentID: dep, From: tc.from, To: tc.to, Limit: 10}
			got := listAll(t, b, q)
			slices.Sort(got)
			if !equalIDs(got, tc.want) {
				t.Errorf("%s (deployment %q): %v, want %v", tc.name, dep, got, tc.want)
			}
		}
	}
}
