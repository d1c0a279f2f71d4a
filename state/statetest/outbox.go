package statetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
)

// OutboxBackend is a backend with a webhook outbox.
type OutboxBackend interface {
	state.Store
	state.Outbox
}

type outboxCase struct {
	name string
	run  func(t *testing.T, b OutboxBackend)
}

// RunOutbox runs the conformance suite of state.Outbox: events queued only by
// saves that succeed, jobs handed to one consumer and taken over when idle,
// leases, retries and deliveries. newBackend returns a fresh, isolated backend
// for each subtest, as for Run; subtests run in parallel.
func RunOutbox(t *testing.T, newBackend func(t *testing.T) OutboxBackend) {
	t.Helper()
	cases := []outboxCase{
		{"EventQueuedWithSave", testEventQueuedWithSave},
		{"RefusedSaveQueuesNothing", testRefusedSaveQueuesNothing},
		{"JobsGoToOneConsumer", testJobsGoToOneConsumer},
		{"IdleJobsAreReclaimed", testIdleJobsAreReclaimed},
		{"StoppingConsumerHandsJobsBack", testStoppingConsumerHandsJobsBack},
		{"LeaseIsExclusive", testOutboxLease},
		{"RetriesWakeWhenDue", testRetriesWakeWhenDue},
		{"DeliveriesRoundTrip", testDeliveriesRoundTrip},
		{"TrackerQueuesMatchingEvents", testTrackerQueuesMatchingEvents},
		{"StorageReportsMoveForward", testStorageReportsMoveForward},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.run(t, newBackend(t))
		})
	}
}

func hookedRecord(id string, seq int64, st runcomfy.State) *state.Record {
	return &state.Record{
		RequestID: id, DeploymentID: deployment, Owner: "team-a", State: st, Seq: seq, Epoch: 7,
		UpdatedAt: time.Now().UTC().Truncate(time.Millisecond),
		Webhooks:  []state.WebhookTarget{{URL: "https://hooks.example/a", Kinds: state.KindQueued | state.KindRunning | state.KindTerminal}},
	}
}

func saveEvent(t *testing.T, b OutboxBackend, prev, rec *state.Record) (*state.Event, error) {
	t.Helper()
	ev := state.EventFor(prev, rec)
	if ev == nil {
		t.Fatalf("no event for %v -> %v", prev, rec.State)
	}
	return ev, b.SaveWithEvent(context.Background(), rec, longTTL, time.Time{}, false, ev)
}

// takeAll takes jobs until n have come (or fails after waitTimeout).
func takeAll(t *testing.T, b OutboxBackend, consumer string, n int) []state.Job {
	t.Helper()
	var jobs []state.Job
	deadline := time.Now().Add(waitTimeout)
	for len(jobs) < n {
		if time.Now().After(deadline) {
			t.Fatalf("took %d jobs, want %d", len(jobs), n)
		}
		got, err := b.Take(context.Background(), consumer, n-len(jobs), 200*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		jobs = append(jobs, got...)
	}
	return jobs
}

// noJob asserts that no job is waiting for consumer (after a blocking wait).
func noJob(t *testing.T, b OutboxBackend, consumer string) {
	t.Helper()
	got, err := b.Take(context.Background(), consumer, 10, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 0 {
		t.Fatalf("Take = %v, want no job", got)
	}
}

func testEventQueuedWithSave(t *testing.T, b OutboxBackend) {
	ctx := context.Background()
	r1 := hookedRecord("req-ev", 1, runcomfy.StateQueued)
	ev1, err := saveEvent(t, b, nil, r1)
	if err != nil {
		t.Fatal(err)
	}
	r2 := r1.Clone()
	r2.Seq, r2.State = 2, runcomfy.StateRunning
	ev2, err := saveEvent(t, b, r1, r2)
	if err != nil {
		t.Fatal(err)
	}
	evs, err := b.Events(ctx, "req-ev")
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 2 || evs[0].ID != ev1.ID || evs[1].ID != ev2.ID {
		t.Fatalf("Events = %v, want [%s %s] in order", eventIDs(evs), ev1.ID, ev2.ID)
	}
	if evs[1].Type != "request.running" || evs[1].Seq != 2 || evs[1].Owner != "team-a" ||
		evs[1].Record == nil || evs[1].Record.State != runcomfy.StateRunning || !slices.Equal(evs[1].Targets, []string{"https://hooks.example/a"}) {
		t.Errorf("event = %+v", evs[1])
	}
	jobs := takeAll(t, b, "c1", 2)
	for _, j := range jobs {
		if j.RequestID != "req-ev" || j.ID == "" {
			t.Errorf("job = %+v", j)
		}
	}
	if got, err := b.Get(ctx, "req-ev"); err != nil || got.Seq != 2 {
		t.Fatalf("Get = %+v, %v", got, err)
	}
}

func eventIDs(evs []*state.Event) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.ID)
	}
	return out
}

func testRefusedSaveQueuesNothing(t *testing.T, b OutboxBackend) {
	ctx := context.Background()
	r1 := hookedRecord("req-refused", 1, runcomfy.StateQueued)
	if _, err := saveEvent(t, b, nil, r1); err != nil {
		t.Fatal(err)
	}
	takeAll(t, b, "c1", 1)
	stale := r1.Clone()
	stale.Seq, stale.State = 3, runcomfy.StateRunning // not at seq 2: refused
	if _, err := saveEvent(t, b, r1, stale); !errors.Is(err, state.ErrConflict) {
		t.Fatalf("save over a gap = %v, want ErrConflict", err)
	}
	evs, err := b.Events(ctx, "req-refused")
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 {
		t.Fatalf("events after a refused save = %v, want the first alone", eventIDs(evs))
	}
	noJob(t, b, "c1")
}

func testJobsGoToOneConsumer(t *testing.T, b OutboxBackend) {
	ctx := context.Background()
	for _, id := range []string{"req-j1", "req-j2", "req-j3"} {
		if err := b.Wake(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	a := takeAll(t, b, "a", 2)
	c := takeAll(t, b, "c", 1)
	seen := map[string]int{}
	for _, j := range append(slices.Clone(a), c...) {
		seen[j.RequestID]++
	}
	if len(seen) != 3 || seen["req-j1"] != 1 || seen["req-j2"] != 1 || seen["req-j3"] != 1 {
		t.Fatalf("jobs handed out %v, want each once", seen)
	}
	noJob(t, b, "a")
	if jobs, _, err := b.Depth(ctx); err != nil || jobs != 3 {
		t.Fatalf("Depth = %d, %v; want 3 taken and not done", jobs, err)
	}
	if err := b.Done(ctx, append(a, c...)...); err != nil {
		t.Fatal(err)
	}
	if jobs, _, err := b.Depth(ctx); err != nil || jobs != 0 {
		t.Fatalf("Depth after Done = %d, %v; want 0", jobs, err)
	}
}

func testIdleJobsAreReclaimed(t *testing.T, b OutboxBackend) {
	ctx := context.Background()
	if err := b.Wake(ctx, "req-idle"); err != nil {
		t.Fatal(err)
	}
	taken := takeAll(t, b, "dead", 1)
	// Not idle long enough: nobody else gets it.
	if got, err := b.Reclaim(ctx, "alive", time.Hour, 10); err != nil || len(got) != 0 {
		t.Fatalf("Reclaim before the idle time = %v, %v; want none", got, err)
	}
	var got []state.Job
	deadline := time.Now().Add(waitTimeout)
	for len(got) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the idle job was never reclaimed")
		}
		var err error
		if got, err = b.Reclaim(ctx, "alive", 50*time.Millisecond, 10); err != nil {
			t.Fatal(err)
		}
	}
	if len(got) != 1 || got[0].ID != taken[0].ID || got[0].RequestID != "req-idle" {
		t.Fatalf("Reclaim = %v, want %v", got, taken)
	}
	if err := b.Done(ctx, got...); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Reclaim(ctx, "alive", 0, 10); err != nil || len(got) != 0 {
		t.Fatalf("Reclaim after Done = %v, %v; want none", got, err)
	}
}

func testStoppingConsumerHandsJobsBack(t *testing.T, b OutboxBackend) {
	ctx := context.Background()
	ids := []string{"req-h1", "req-h2", "req-h3"}
	for _, id := range ids {
		if err := b.Wake(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	stopping := takeAll(t, b, "stopping", 2)
	other := takeAll(t, b, "other", 1)
	if n, err := b.HandBack(ctx, "stopping"); err != nil || n != 2 {
		t.Fatalf("HandBack = %d, %v; want the 2 jobs taken", n, err)
	}
	// Queued again as new jobs: taken at once, not after an idle time.
	again := takeAll(t, b, "next", 2)
	var want, got []string
	for _, j := range stopping {
		want = append(want, j.RequestID)
	}
	for _, j := range again {
		got = append(got, j.RequestID)
		if slices.ContainsFunc(stopping, func(o state.Job) bool { return o.ID == j.ID }) {
			t.Errorf("job %s handed back under its old id", j.ID)
		}
	}
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("jobs after the hand back = %v, want %v", got, want)
	}
	noJob(t, b, "next")
	// Nothing is left to be taken over, and the other consumer's job stays
	// its own.
	if got, err := b.Reclaim(ctx, "next", 0, 10); err != nil || len(got) != 3 {
		t.Fatalf("Reclaim of every job not done = %v, %v; want the 2 handed back and the other's", got, err)
	}
	if n, err := b.HandBack(ctx, "stopping"); err != nil || n != 0 {
		t.Fatalf("HandBack again = %d, %v; want none", n, err)
	}
	if n, err := b.HandBack(ctx, "never-took"); err != nil || n != 0 {
		t.Fatalf("HandBack of a consumer that took nothing = %d, %v; want none", n, err)
	}
	if err := b.Done(ctx, append(again, other...)...); err != nil {
		t.Fatal(err)
	}
	if jobs, _, err := b.Depth(ctx); err != nil || jobs != 0 {
		t.Fatalf("Depth after Done = %d, %v; want 0 (the old entries gone)", jobs, err)
	}
}

func testOutboxLease(t *testing.T, b OutboxBackend) {
	ctx := context.Background()
	ok, err := b.LeaseOutbox(ctx, "req-lease", "a", time.Minute)
	if err != nil || !ok {
		t.Fatalf("first lease = %v, %v", ok, err)
	}
	if ok, err := b.LeaseOutbox(ctx, "req-lease", "b", time.Minute); err != nil || ok {
		t.Fatalf("lease held by another = %v, %v; want false", ok, err)
	}
	if ok, err := b.LeaseOutbox(ctx, "req-lease", "a", time.Minute); err != nil || !ok {
		t.Fatalf("owner extends = %v, %v; want true", ok, err)
	}
	if err := b.ReleaseOutbox(ctx, "req-lease", "b"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := b.LeaseOutbox(ctx, "req-lease", "b", time.Minute); ok {
		t.Fatal("a release by a non-owner freed the lease")
	}
	if err := b.ReleaseOutbox(ctx, "req-lease", "a"); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.LeaseOutbox(ctx, "req-lease", "b", shortTTL); err != nil || !ok {
		t.Fatalf("lease after release = %v, %v", ok, err)
	}
	deadline := time.Now().Add(expiryDeadline)
	for {
		ok, err := b.LeaseOutbox(ctx, "req-lease", "c", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("an expired lease was never freed")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func testRetriesWakeWhenDue(t *testing.T, b OutboxBackend) {
	ctx := context.Background()
	now := time.Now()
	if err := b.RetryAt(ctx, "req-later", now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := b.RetryAt(ctx, "req-soon", now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	// An earlier time wins; a later one does not postpone.
	if err := b.RetryAt(ctx, "req-soon", now.Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := b.RetryAt(ctx, "req-soon", now.Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, retries, err := b.Depth(ctx); err != nil || retries != 2 {
		t.Fatalf("Depth retries = %d, %v; want 2", retries, err)
	}
	n, err := b.WakeDue(ctx, now, 10)
	if err != nil || n != 1 {
		t.Fatalf("WakeDue = %d, %v; want 1", n, err)
	}
	jobs := takeAll(t, b, "c", 1)
	if jobs[0].RequestID != "req-soon" {
		t.Fatalf("job = %+v, want req-soon", jobs[0])
	}
	if n, err := b.WakeDue(ctx, now, 10); err != nil || n != 0 {
		t.Fatalf("second WakeDue = %d, %v; want 0", n, err)
	}
	if n, err := b.WakeDue(ctx, now.Add(3*time.Hour), 10); err != nil || n != 1 {
		t.Fatalf("WakeDue later = %d, %v; want 1", n, err)
	}
}

func testDeliveriesRoundTrip(t *testing.T, b OutboxBackend) {
	ctx := context.Background()
	at := time.Now().UTC().Truncate(time.Millisecond)
	d := &state.Delivery{EventID: "msg_a", Type: "request.running", Epoch: 7, Seq: 2, Endpoint: "https://hooks.example/a", State: state.DeliveryPending, CreatedAt: at}
	d.Record(state.Attempt{At: at, HTTPStatus: 503, Error: "HTTP 503", Duration: time.Second})
	d.NextAt = at.Add(time.Minute)
	if err := b.PutDelivery(ctx, "req-del", d, longTTL); err != nil {
		t.Fatal(err)
	}
	d2 := *d
	d2.Endpoint = "https://hooks.example/b"
	d2.Attempts = nil
	d2.AttemptCount = 0
	if err := b.PutDelivery(ctx, "req-del", &d2, longTTL); err != nil {
		t.Fatal(err)
	}
	// Replacing one keeps the other.
	d.State = state.DeliveryDelivered
	d.Record(state.Attempt{At: at.Add(time.Minute), HTTPStatus: 200})
	if err := b.PutDelivery(ctx, "req-del", d, longTTL); err != nil {
		t.Fatal(err)
	}
	got, err := b.Deliveries(ctx, "req-del")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("Deliveries = %d, want 2", len(got))
	}
	for _, g := range got {
		if g.Endpoint == d.Endpoint {
			if g.State != state.DeliveryDelivered || g.AttemptCount != 2 || len(g.Attempts) != 2 || g.Attempts[0].HTTPStatus != 503 ||
				!g.Attempts[0].At.Equal(at) || g.Attempts[0].Duration != time.Second || !g.NextAt.Equal(d.NextAt) {
				t.Errorf("delivery = %+v", g)
			}
		}
	}
	if got, err := b.Deliveries(ctx, "req-none"); err != nil || len(got) != 0 {
		t.Fatalf("Deliveries of an unknown request = %v, %v", got, err)
	}
}

// testTrackerQueuesMatchingEvents: through the Tracker, every applied
// change whose kinds a target asked for is queued once, in seq order, and
// changes nobody asked for (a queue position) queue nothing.
func testTrackerQueuesMatchingEvents(t *testing.T, b OutboxBackend) {
	ctx := context.Background()
	tr, err := state.NewTracker(state.TrackerConfig{Store: b, Results: &fakeResults{}, Retention: longTTL})
	if err != nil {
		t.Fatal(err)
	}
	pos := func(n int64) *int64 { return &n }
	hooks := []state.WebhookTarget{{URL: "https://hooks.example/all", Kinds: state.KindQueued | state.KindRunning | state.KindOutput | state.KindTerminal}, {URL: "https://hooks.example/end", Kinds: state.KindTerminal}}
	updates := []state.Update{
		{RequestID: "req-tr", DeploymentID: deployment, Source: state.SourceSubmit, State: runcomfy.StateQueued, Owner: "team-a", Webhooks: hooks},
		{RequestID: "req-tr", Source: state.SourceCallback, State: runcomfy.StateQueued, QueuePosition: pos(3)},
		{RequestID: "req-tr", Source: state.SourceCallback, State: runcomfy.StateRunning},
		{RequestID: "req-tr", Source: state.SourceCallback, State: runcomfy.StateRunning}, // duplicate
		{RequestID: "req-tr", Source: state.SourceCallback, State: runcomfy.StateSucceeded, Outputs: []byte(`{"9":{"images":[{"url":"https://x/y.png"}]}}`), OutputURLs: []string{"https://x/y.png"}},
	}
	for _, u := range updates {
		if _, _, err := tr.Apply(ctx, u); err != nil {
			t.Fatal(err)
		}
	}
	evs, err := b.Events(ctx, "req-tr")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range evs {
		got = append(got, fmt.Sprintf("%s %s %d", e.Type, strings.Join(e.Targets, ","), e.Seq))
	}
	want := []string{
		"request.queued https://hooks.example/all 1",
		"request.running https://hooks.example/all 3",
		"request.succeeded https://hooks.example/all,https://hooks.example/end 4",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("events:\n got %q\nwant %q", got, want)
	}
	if k := evs[2].Kinds; k != state.KindOutput|state.KindTerminal {
		t.Errorf("success kinds = %v, want output and terminal", k.Names())
	}
	takeAll(t, b, "c", 3)
	noJob(t, b, "c")
}

// testStorageReportsMoveForward: the copier's reports on a succeeded
// request are recorded forward only (a pending copy takes later attempts and
// its end; an ended copy stays; a request that did not succeed takes none),
// they do not count as RunComfy's word (SyncedAt stays), and the copy's end
// is an event for endpoints that follow outputs or the request's end.
func testStorageReportsMoveForward(t *testing.T, b OutboxBackend) {
	ctx := context.Background()
	tr, err := state.NewTracker(state.TrackerConfig{Store: b, Results: &fakeResults{}, Retention: longTTL})
	if err != nil {
		t.Fatal(err)
	}
	hooks := []state.WebhookTarget{{URL: "https://hooks.example/end", Kinds: state.KindTerminal}, {URL: "https://hooks.example/queued", Kinds: state.KindQueued}}
	apply := func(u state.Update, want state.Outcome) *state.Record {
		t.Helper()
		rec, outcome, err := tr.Apply(ctx, u)
		if err != nil {
			t.Fatal(err)
		}
		if outcome != want {
			t.Fatalf("%s %v: outcome %v, want %v", u.Source, u.Storage, outcome, want)
		}
		return rec
	}
	report := func(id string, st state.StorageState, attempts int) state.Update {
		s := &state.Storage{State: st, Attempts: attempts}
		switch st {
		case state.StorageStored:
			s.Objects = []state.StoredObject{{Node: "9", File: "a.png", Key: "p/t/d/" + id + "/9/a.png", Size: 3, ContentType: "image/png", SHA256: "abc"}}
		default:
			s.Error = fmt.Sprintf("attempt %d failed", attempts)
		}
		return state.Update{RequestID: id, Source: state.SourceStorage, State: runcomfy.StateSucceeded, Storage: s}
	}
	apply(state.Update{RequestID: "req-st", DeploymentID: deployment, Source: state.SourceSubmit, State: runcomfy.StateQueued, Owner: "team-a", Webhooks: hooks}, state.Applied)
	done := apply(state.Update{RequestID: "req-st", Source: state.SourceCallback, State: runcomfy.StateSucceeded,
		Outputs: []byte(`{"9":{"images":[{"url":"https://x/a.png"}]}}`), OutputURLs: []string{"https://x/a.png"}}, state.Applied)

	apply(report("req-st", state.StoragePending, 1), state.Applied)
	apply(report("req-st", state.StoragePending, 1), state.Duplicate) // the same attempt again
	rec := apply(report("req-st", state.StoragePending, 2), state.Applied)
	if rec.Storage.Error != "attempt 2 failed" || !rec.SyncedAt.Equal(done.SyncedAt) {
		t.Errorf("after attempt 2: storage %+v, synced %v (was %v)", rec.Storage, rec.SyncedAt, done.SyncedAt)
	}
	rec = apply(report("req-st", state.StorageStored, 3), state.Applied)
	if rec.Storage.State != state.StorageStored || len(rec.Storage.Objects) != 1 || rec.Seq != done.Seq+3 {
		t.Errorf("stored: %+v at seq %d", rec.Storage, rec.Seq)
	}
	apply(report("req-st", state.StoragePending, 4), state.Duplicate)
	apply(report("req-st", state.StorageFailed, 4), state.Duplicate)
	if got := mustGetOutbox(t, b, "req-st"); got.Storage.State != state.StorageStored || got.Storage.Objects[0].SHA256 != "abc" {
		t.Errorf("stored record's storage: %+v", got.Storage)
	}

	// A request that did not succeed has nothing to store.
	apply(state.Update{RequestID: "req-st-failed", DeploymentID: deployment, Source: state.SourceSubmit, State: runcomfy.StateQueued, Owner: "team-a"}, state.Applied)
	apply(state.Update{RequestID: "req-st-failed", Source: state.SourceCallback, State: runcomfy.StateFailed}, state.Applied)
	apply(report("req-st-failed", state.StoragePending, 1), state.Stale)

	evs, err := b.Events(ctx, "req-st")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range evs {
		got = append(got, fmt.Sprintf("%s %s", e.Type, strings.Join(e.Targets, ",")))
	}
	want := []string{"request.queued https://hooks.example/queued", "request.succeeded https://hooks.example/end", "request.outputs_stored https://hooks.example/end"}
	if !slices.Equal(got, want) {
		t.Fatalf("events:\n got %q\nwant %q", got, want)
	}
	if last := evs[len(evs)-1]; last.Record.Storage == nil || last.Record.Storage.Objects[0].Key != "p/t/d/req-st/9/a.png" {
		t.Errorf("the stored event carries storage %+v", last.Record.Storage)
	}
}

func mustGetOutbox(t *testing.T, b OutboxBackend, id string) *state.Record {
	t.Helper()
	rec, err := b.Get(context.Background(), id)
	if err != nil {
		t.Fatalf("Get %s: %v", id, err)
	}
	return rec
}
