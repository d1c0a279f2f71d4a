package statetest

// This file holds the cases of the Hub's: fan-out to watchers, buffers and subscriptions.

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
)

func hubCases() []testCase {
	return []testCase{
		{"SnapshotThenStream", testSnapshotThenStream},
		{"ThousandWatchers", testThousandWatchers},
		{"SlowWatcherDoesNotDelayOthers", testSlowWatcher},
		{"RefCounting", testRefCounting},
		{"WatchCloseChurn", testChurn},
		{"ConcurrentFirstWatch", testConcurrentFirstWatch},
		{"CloseIsIdempotent", testCloseIdempotent},
		{"NextReturnsContextError", testNextCanceled},
		{"FailedSubscribe", testFailedSubscribe},
		{"Redeliver", testRedeliver},
		{"DrainEndsWatchers", testDrain},
	}
}

// testDrain: Drain ends every watcher, of every request, including one that
// arrives afterwards; each first gets what it had buffered, then ErrDraining.
func testDrain(t *testing.T, b Backend) {
	ctx := testContext(t)
	tr := newTracker(t, b, &fakeResults{})
	hub := newHub(t, b, 0)
	a1, a2, other := watch(t, hub, "req-drain-a"), watch(t, hub, "req-drain-a"), watch(t, hub, "req-drain-b")
	mustApply(t, tr, queued("req-drain-a", 2))
	// The record reaches both watchers of req-drain-a before the drain.
	for _, w := range []*state.Watcher{a1, a2} {
		waitBuffered(t, w)
	}
	hub.Drain()
	late := watch(t, hub, "req-drain-a")
	for name, w := range map[string]*state.Watcher{"first": a1, "second": a2} {
		recs, err := w.Next(ctx)
		if err != nil || len(recs) != 1 || recs[0].Seq != 1 {
			t.Errorf("%s watcher: Next = %d records, %v; want its buffered seq 1 first", name, len(recs), err)
		}
	}
	for name, w := range map[string]*state.Watcher{"first": a1, "second": a2, "other request": other, "arriving after": late} {
		if recs, err := w.Next(ctx); !errors.Is(err, state.ErrDraining) {
			t.Errorf("%s watcher: Next after Drain = %d records, %v; want ErrDraining", name, len(recs), err)
		}
	}
}

// waitBuffered waits until w has something for Next, without taking it.
// nextErr calls w.Next(ctx) on a goroutine of its own and sends its error.
func nextErr(ctx context.Context, w *state.Watcher) <-chan error {
	errc := make(chan error, 1)
	go func() {
		_, err := w.Next(ctx)
		errc <- err
	}()
	return errc
}

// receive returns the error that comes on errc, failing the test if none
// comes within waitTimeout: what names the call that was to return it.
func receive(t *testing.T, errc <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-errc:
		return err
	case <-time.After(waitTimeout):
		t.Fatalf("%s did not return within %s", what, waitTimeout)
		return nil
	}
}

func waitBuffered(t *testing.T, w *state.Watcher) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for w.Buffered() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the record never reached the watcher")
		}
		time.Sleep(time.Millisecond)
	}
}

// testSnapshotThenStream is invariant 3 as WatchRequest does it: Watch, read
// the snapshot, then forward only greater seqs. With updates racing the
// watcher, what it forwards must continue the snapshot with no gap and no
// duplicate up to the terminal record.
func testSnapshotThenStream(t *testing.T, b Backend) {
	const n = 50
	tests := []struct {
		name   string
		before int // updates applied before the watcher arrives; the rest race it
	}{
		{"watch before the first update", 0},
		{"watch mid-way", 10},
		{"watch after the terminal update", n},
	}
	ctx := testContext(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := fmt.Sprintf("req-snapshot-%d", tt.before)
			tr := newTracker(t, b, &fakeResults{})
			// A buffer larger than the whole run: this watcher cannot fall
			// behind, so any seq jump is a real gap.
			hub := newHub(t, b, n+1)
			ups := progression(id, n)
			for _, u := range ups[:tt.before] {
				mustApply(t, tr, u)
			}
			start := make(chan struct{})
			var wg sync.WaitGroup
			defer wg.Wait()
			wg.Go(func() {
				<-start
				for _, u := range ups[tt.before:] {
					if _, outcome, err := tr.Apply(ctx, u); err != nil || outcome != state.Applied {
						t.Errorf("Apply(%v) = %v, %v; want Applied", u.State, outcome, err)
						return
					}
				}
			})
			close(start)

			w := watch(t, hub, id)
			sent := int64(0)
			snap, err := b.Get(ctx, id)
			switch {
			case err == nil:
				sent = snap.Seq
			case !errors.Is(err, state.ErrNotFound):
				t.Fatalf("Get snapshot: %v", err)
			}
			var last *state.Record = snap
			for last == nil || !last.Terminal() {
				recs, err := w.Next(ctx)
				if err != nil {
					t.Fatalf("Next after seq %d: %v", sent, err)
				}
				for _, r := range recs {
					if r.Seq <= sent {
						continue // already in the snapshot
					}
					if r.Seq != sent+1 {
						t.Fatalf("watcher went from seq %d to %d, want %d", sent, r.Seq, sent+1)
					}
					sent, last = r.Seq, r
				}
			}
			if sent != n {
				t.Errorf("last seq = %d, want %d", sent, n)
			}
			if c := w.Coalesced(); c != 0 {
				t.Errorf("Coalesced = %d, want 0 for a watcher with room for every record", c)
			}
			wg.Wait()
			if d := diffRecord(last, mustGet(t, b, id)); d != "" {
				t.Errorf("terminal record seen by the watcher differs from the stored one:\n%s", d)
			}
		})
	}
}

func testThousandWatchers(t *testing.T, b Backend) {
	const id, watchers = "req-thousand", 1000
	// Fewer updates than a watcher's buffer, so even a watcher that the
	// scheduler starves receives each one: every watcher sees the same sequence.
	const n = state.DefaultWatcherBuffer - 2
	ctx, cancel := context.WithCancel(testContext(t))
	tr := newTracker(t, b, &fakeResults{})
	hub := newHub(t, b, 0)

	got := make([][]int64, watchers)
	var terminal [watchers]*state.Record
	var ready, done sync.WaitGroup
	// On a failure below, cancel releases the watchers before the wait.
	defer done.Wait()
	defer cancel()
	ready.Add(watchers)
	for i := range watchers {
		done.Go(func() {
			w, err := hub.Watch(ctx, id)
			ready.Done()
			if err != nil {
				t.Errorf("watcher %d: Watch: %v", i, err)
				return
			}
			defer w.Close()
			recs, err := readUntilTerminal(ctx, w)
			if err != nil {
				t.Errorf("watcher %d: after %v: %v", i, seqs(recs), err)
				return
			}
			got[i] = seqs(recs)
			terminal[i] = recs[len(recs)-1]
		})
	}
	ready.Wait()
	for _, u := range progression(id, n) {
		mustApply(t, tr, u)
	}
	done.Wait()

	want := seqRange(1, n)
	stored := mustGet(t, b, id)
	for i := range watchers {
		if !slices.Equal(got[i], want) {
			t.Errorf("watcher %d got seqs %v, want %v", i, got[i], want)
			continue
		}
		if d := diffRecord(terminal[i], stored); d != "" {
			t.Errorf("watcher %d: terminal record differs from the stored one:\n%s", i, d)
		}
	}
}

func testSlowWatcher(t *testing.T, b Backend) {
	const id, n = "req-slow", 500
	ctx := testContext(t)
	tr := newTracker(t, b, &fakeResults{})
	hub := newHub(t, b, 0)
	reader := watch(t, hub, id)
	idle := watch(t, hub, id) // never reads until the end

	var got []int64
	for i, u := range progression(id, n) {
		mustApply(t, tr, u)
		// Lockstep: the reader keeps up, so it must see every record; that
		// Apply returned at all shows the idle watcher did not hold it up.
		for len(got) == 0 || got[len(got)-1] < int64(i+1) {
			recs, err := reader.Next(ctx)
			if err != nil {
				t.Fatalf("reader: Next after %d records: %v", len(got), err)
			}
			got = append(got, seqs(recs)...)
		}
	}
	if want := seqRange(1, n); !slices.Equal(got, want) {
		t.Errorf("reader got %d records %v, want every seq 1..%d in order", len(got), got, n)
	}
	if c := reader.Coalesced(); c != 0 {
		t.Errorf("reader Coalesced = %d, want 0", c)
	}

	// The hub may still be pushing the last record to the idle watcher after
	// the reader saw it, so read until the terminal record arrives: each batch
	// fits the buffer, and together they account for every record.
	var held []int64
	for {
		recs, err := idle.Next(ctx)
		if err != nil {
			t.Fatalf("idle watcher: Next after %v: %v", held, err)
		}
		if len(recs) > state.DefaultWatcherBuffer {
			t.Fatalf("idle watcher returned %d records in one batch, want at most %d", len(recs), state.DefaultWatcherBuffer)
		}
		held = append(held, seqs(recs)...)
		if last := recs[len(recs)-1]; last.Terminal() {
			if last.Seq != n {
				t.Errorf("idle watcher's terminal record has seq %d, want %d", last.Seq, n)
			}
			break
		}
	}
	if !strictlyIncreasing(held) {
		t.Errorf("idle watcher seqs %v, want strictly increasing", held)
	}
	c := idle.Coalesced()
	if c <= 0 {
		t.Errorf("idle watcher Coalesced = %d, want > 0", c)
	}
	if len(held)+c != n {
		t.Errorf("idle watcher holds %d and coalesced %d, want them to account for all %d records", len(held), c, n)
	}
}

func testRefCounting(t *testing.T, b Backend) {
	const id = "req-refs"
	ctx := testContext(t)
	bus := newCountingBus(t, b)
	hub := newHub(t, bus, 0)
	tr := newTracker(t, b, &fakeResults{})

	w1 := watch(t, hub, id)
	w2 := watch(t, hub, id)
	w3 := watch(t, hub, id)
	if s, u := bus.counts(); s != 1 || u != 0 {
		t.Fatalf("after 3 Watches: %d Subscribes, %d Unsubscribes; want 1, 0", s, u)
	}
	if got := hub.Watching(); !slices.Equal(got, []string{id}) {
		t.Errorf("Watching = %v, want [%s]", got, id)
	}
	mustApply(t, tr, queued(id, 3))
	for i, w := range []*state.Watcher{w1, w2, w3} {
		if got := seqs(nextRecords(t, w)); !slices.Equal(got, []int64{1}) {
			t.Errorf("watcher %d got %v, want [1]", i+1, got)
		}
	}

	w1.Close()
	w2.Close()
	if s, u := bus.counts(); s != 1 || u != 0 {
		t.Fatalf("with one watcher left: %d Subscribes, %d Unsubscribes; want 1, 0", s, u)
	}
	mustApply(t, tr, queued(id, 2))
	if got := seqs(nextRecords(t, w3)); !slices.Equal(got, []int64{2}) {
		t.Errorf("remaining watcher got %v, want [2]", got)
	}

	w3.Close()
	if s, u := bus.counts(); s != 1 || u != 1 {
		t.Fatalf("after the last Close: %d Subscribes, %d Unsubscribes; want 1, 1", s, u)
	}
	if got := hub.Watching(); len(got) != 0 {
		t.Errorf("Watching after the last Close = %v, want none", got)
	}

	// Observe through delivery that the hub's subscription is gone: seq 3 is
	// saved with nobody subscribed, then a probe subscribes directly on the bus
	// and seq 4 reaches it; by then anything still routed to the hub would
	// have arrived too.
	delivered := bus.delivered.Load()
	mustApply(t, tr, queued(id, 1))
	probe := subscribe(t, b, id)
	mustApply(t, tr, running(id, ""))
	if got := seqs(probe.waitLen(t, 1)); !slices.Equal(got, []int64{4}) {
		t.Errorf("probe got %v, want [4]", got)
	}
	if got := bus.delivered.Load(); got != delivered {
		t.Errorf("bus delivered %d records to the hub after its last watcher left, want 0", got-delivered)
	}
	for i, w := range []*state.Watcher{w1, w2, w3} {
		if recs := pending(w); len(recs) != 0 {
			t.Errorf("closed watcher %d received %v", i+1, seqs(recs))
		}
	}
	if err := b.Unsubscribe(ctx, id); err != nil {
		t.Fatalf("Unsubscribe probe: %v", err)
	}

	// A new watcher subscribes again and receives.
	w4 := watch(t, hub, id)
	if s, u := bus.counts(); s != 2 || u != 1 {
		t.Fatalf("after a new Watch: %d Subscribes, %d Unsubscribes; want 2, 1", s, u)
	}
	mustApply(t, tr, succeeded(id))
	if got := seqs(nextRecords(t, w4)); !slices.Equal(got, []int64{5}) {
		t.Errorf("new watcher got %v, want [5]", got)
	}
	w4.Close()
	if s, u := bus.counts(); s != 2 || u != 2 {
		t.Errorf("at the end: %d Subscribes, %d Unsubscribes; want 2, 2", s, u)
	}
}

// testChurn opens and closes watchers of one request from many goroutines, so
// that the last watcher leaving races new ones arriving. A watcher must never
// be open without the bus subscription, and the bus must never hold two.
func testChurn(t *testing.T, b Backend) {
	const churnFor = 200 * time.Millisecond
	tests := []struct {
		name       string
		goroutines int
	}{
		// Fifty goroutines contend on the hub; two make the refcount touch zero
		// often, which is where subscribe and unsubscribe race.
		{"50 goroutines", 50},
		{"2 goroutines", 2},
	}
	ctx := testContext(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := fmt.Sprintf("req-churn-%d", tt.goroutines)
			bus := newCountingBus(t, b)
			hub := newHub(t, bus, 0)
			tr := newTracker(t, b, &fakeResults{})

			kept := make([]*state.Watcher, tt.goroutines)
			deadline := time.Now().Add(churnFor)
			var wg sync.WaitGroup
			for g := range tt.goroutines {
				wg.Go(func() {
					for time.Now().Before(deadline) {
						w, err := hub.Watch(ctx, id)
						if err != nil {
							t.Errorf("Watch: %v", err)
							return
						}
						// Check again after yielding: a release that wrongly
						// unsubscribes under this watcher runs right after it
						// returns from Watch.
						for range 3 {
							if !bus.active(id) {
								t.Errorf("a watcher is open without a bus subscription")
								break
							}
							runtime.Gosched()
						}
						w.Close()
					}
					if g%2 == 0 {
						w, err := hub.Watch(ctx, id)
						if err != nil {
							t.Errorf("Watch: %v", err)
							return
						}
						kept[g] = w
					}
				})
			}
			wg.Wait()
			subs, _ := bus.counts()
			t.Logf("%d subscriptions over the churn", subs)

			mustApply(t, tr, queued(id, 1))
			for g, w := range kept {
				if w == nil {
					continue
				}
				if got := seqs(nextRecords(t, w)); !slices.Equal(got, []int64{1}) {
					t.Errorf("watcher kept by goroutine %d got %v, want [1]", g, got)
				}
				w.Close()
			}
			if s, u := bus.counts(); s != u || bus.active(id) {
				t.Errorf("after every Close: %d Subscribes, %d Unsubscribes, active %v; want equal and inactive", s, u, bus.active(id))
			}
			if got := hub.Watching(); len(got) != 0 {
				t.Errorf("Watching after every Close = %v, want none", got)
			}
		})
	}
}

// testConcurrentFirstWatch: watchers of a request nobody watches yet, arriving
// together, share one subscription, and every one of them receives.
func testConcurrentFirstWatch(t *testing.T, b Backend) {
	const rounds, watchers = 20, 20
	ctx := testContext(t)
	bus := newCountingBus(t, b)
	hub := newHub(t, bus, 0)
	tr := newTracker(t, b, &fakeResults{})
	for round := range rounds {
		id := fmt.Sprintf("req-first-%d", round)
		ws := make([]*state.Watcher, watchers)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i := range watchers {
			wg.Go(func() {
				<-start
				w, err := hub.Watch(ctx, id)
				if err != nil {
					t.Errorf("Watch: %v", err)
					return
				}
				ws[i] = w
			})
		}
		subsBefore, _ := bus.counts()
		close(start)
		wg.Wait()
		if subs, _ := bus.counts(); subs != subsBefore+1 {
			t.Errorf("round %d: %d watchers arriving together made %d subscriptions, want 1", round, watchers, subs-subsBefore)
		}
		mustApply(t, tr, queued(id, 1))
		for i, w := range ws {
			if w == nil {
				continue
			}
			if got := seqs(nextRecords(t, w)); !slices.Equal(got, []int64{1}) {
				t.Errorf("round %d: watcher %d got %v, want [1]", round, i, got)
			}
			w.Close()
		}
	}
	if s, u := bus.counts(); s != rounds || u != rounds {
		t.Errorf("%d Subscribes and %d Unsubscribes over %d rounds, want %d each", s, u, rounds, rounds)
	}
}

func testCloseIdempotent(t *testing.T, b Backend) {
	const id = "req-close-twice"
	bus := newCountingBus(t, b)
	hub := newHub(t, bus, 0)
	tr := newTracker(t, b, &fakeResults{})

	a, other := watch(t, hub, id), watch(t, hub, id)
	a.Close()
	a.Close() // must not release other's share
	if _, u := bus.counts(); u != 0 {
		t.Fatalf("closing one of two watchers twice unsubscribed %d times, want 0", u)
	}
	mustApply(t, tr, queued(id, 1))
	if got := seqs(nextRecords(t, other)); !slices.Equal(got, []int64{1}) {
		t.Errorf("remaining watcher got %v, want [1]", got)
	}
	other.Close()
	other.Close()
	if s, u := bus.counts(); s != 1 || u != 1 {
		t.Errorf("after closing both twice: %d Subscribes, %d Unsubscribes; want 1, 1", s, u)
	}
}

func testNextCanceled(t *testing.T, b Backend) {
	hub := newHub(t, b, 0)
	w := watch(t, hub, "req-next-cancel")

	t.Run("already canceled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(testContext(t))
		cancel()
		if recs, err := w.Next(ctx); !errors.Is(err, context.Canceled) {
			t.Errorf("Next = %v, %v; want context.Canceled", seqs(recs), err)
		}
	})
	t.Run("canceled while waiting", func(t *testing.T) {
		ctx, cancel := context.WithCancel(testContext(t))
		errc := nextErr(ctx, w)
		cancel()
		if err := receive(t, errc, "Next after its context was canceled"); !errors.Is(err, context.Canceled) {
			t.Errorf("Next = %v, want context.Canceled", err)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		ctx, cancel := context.WithDeadline(testContext(t), time.Now().Add(-time.Second))
		defer cancel()
		if _, err := w.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Next = %v, want context.DeadlineExceeded", err)
		}
	})
	// Watch notes the end of its own ctx at once (Next under it registers
	// nothing more): a watch whose ctx ends before its first Next, or while
	// it waits, ends; Next under another ctx still works.
	t.Run("the ctx given to Watch", func(t *testing.T) {
		for _, tc := range []struct {
			name         string
			endFirst     bool // ends before Next is called
			otherCtxWins bool // Next under another ctx gets the record
		}{
			{name: "ends before Next", endFirst: true},
			{name: "ends while Next waits"},
			{name: "another ctx", otherCtxWins: true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				id := "req-watch-ctx-" + strings.ReplaceAll(tc.name, " ", "-")
				tr := newTracker(t, b, &fakeResults{})
				ctx, end := context.WithCancel(testContext(t))
				defer end()
				w, err := hub.Watch(ctx, id)
				if err != nil {
					t.Fatal(err)
				}
				defer w.Close()
				if tc.otherCtxWins {
					end()
					got := make(chan error, 1)
					go func() {
						recs, err := w.Next(testContext(t))
						if err == nil && len(recs) != 1 {
							err = fmt.Errorf("%d records, want 1", len(recs))
						}
						got <- err
					}()
					mustApply(t, tr, queued(id, 1))
					if err := receive(t, got, "Next under another ctx"); err != nil {
						t.Fatalf("Next under another ctx after Watch's ended: %v", err)
					}
					return
				}
				if tc.endFirst {
					end()
				}
				ended := nextErr(ctx, w)
				end()
				if err := receive(t, ended, "Next after Watch's ctx ended"); !errors.Is(err, context.Canceled) {
					t.Errorf("Next = %v, want context.Canceled", err)
				}
			})
		}
	})
	// A watcher notes the end of the ctx it waits under: the end of one it
	// waited under before must not end a wait under another, nor leave it
	// deaf to its own.
	t.Run("an earlier ctx ends during a later wait", func(t *testing.T) {
		tr := newTracker(t, b, &fakeResults{})
		w := watch(t, hub, "req-next-switch")
		first, endFirst := context.WithCancel(testContext(t))
		mustApply(t, tr, queued("req-next-switch", 2))
		waitBuffered(t, w)
		if recs, err := w.Next(first); err != nil || len(recs) != 1 {
			t.Fatalf("Next = %d records, %v; want the buffered one", len(recs), err)
		}
		// The first ends as the second wait starts: its end may be noted
		// before the switch or after it.
		endFirst()
		second, endSecond := context.WithCancel(testContext(t))
		got := make(chan error, 1)
		go func() {
			recs, err := w.Next(second)
			if err == nil && len(recs) == 0 {
				err = errors.New("no records and no error")
			}
			got <- err
		}()
		mustApply(t, tr, queued("req-next-switch", 1))
		if err := receive(t, got, "Next under the second ctx"); err != nil {
			t.Fatalf("Next under the second ctx: %v, want the next record", err)
		}
		ended := nextErr(second, w)
		endSecond()
		if err := receive(t, ended, "Next after its ctx ended"); !errors.Is(err, context.Canceled) {
			t.Errorf("Next = %v after its ctx ended, want context.Canceled", err)
		}
	})
}

// testFailedSubscribe: a Watch whose subscription fails leaves nothing behind,
// and the next Watch subscribes afresh.
func testFailedSubscribe(t *testing.T, b Backend) {
	const id = "req-sub-fails"
	ctx := testContext(t)
	bus := newCountingBus(t, b)
	errDown := errors.New("bus down")
	bus.failNextSubscribe(errDown)
	hub := newHub(t, bus, 0)
	tr := newTracker(t, b, &fakeResults{})

	if w, err := hub.Watch(ctx, id); !errors.Is(err, errDown) {
		t.Fatalf("Watch with a failing bus = %v, %v; want an error wrapping %v", w, err, errDown)
	}
	if got := hub.Watching(); len(got) != 0 {
		t.Errorf("Watching after a failed Watch = %v, want none", got)
	}
	w := watch(t, hub, id)
	mustApply(t, tr, queued(id, 1))
	if got := seqs(nextRecords(t, w)); !slices.Equal(got, []int64{1}) {
		t.Errorf("watcher got %v, want [1]", got)
	}
}

// testRedeliver: after a bus reconnect the hub re-reads snapshots and hands
// them to watchers with Redeliver. A snapshot read before the last publish can
// arrive after it; it must never displace a newer record, least of all the
// terminal one in a full buffer.
func testRedeliver(t *testing.T, b Backend) {
	ctx := testContext(t)

	t.Run("older snapshot into a full buffer", func(t *testing.T) {
		const id, n = "req-redeliver-old", state.DefaultWatcherBuffer + 4
		hub := newHub(t, b, 0)
		tr := newTracker(t, b, &fakeResults{})
		reader, full := watch(t, hub, id), watch(t, hub, id)
		var applied []*state.Record
		for _, u := range progression(id, n) {
			applied = append(applied, mustApply(t, tr, u))
		}
		// Once the reader has the terminal record, the hub has pushed it to
		// every watcher: full now ends with it.
		if _, err := readUntilTerminal(ctx, reader); err != nil {
			t.Fatalf("reader: %v", err)
		}
		hub.Redeliver(applied[n/2])
		recs := nextRecords(t, full)
		s := seqs(recs)
		if !strictlyIncreasing(s) {
			t.Errorf("watcher seqs %v, want strictly increasing", s)
		}
		if last := recs[len(recs)-1]; last.Seq != n || !last.Terminal() {
			t.Errorf("watcher's last record is %v seq %d, want the terminal seq %d (seqs %v)", last.State, last.Seq, n, s)
		}
	})

	t.Run("record the bus lost", func(t *testing.T) {
		const id = "req-redeliver-lost"
		hub := newHub(t, b, 0)
		tr := newTracker(t, b, &fakeResults{})
		w := watch(t, hub, id)
		first := mustApply(t, tr, queued(id, 2))
		if got := seqs(nextRecords(t, w)); !slices.Equal(got, []int64{1}) {
			t.Fatalf("watcher got %v, want [1]", got)
		}
		// Stand-in for a record published while the bus was disconnected.
		lost := first.Clone()
		lost.Seq = 2
		lost.State = runcomfy.StateRunning
		hub.Redeliver(lost)
		if got := seqs(nextRecords(t, w)); !slices.Equal(got, []int64{2}) {
			t.Errorf("watcher got %v after Redeliver, want [2]", got)
		}
		hub.Redeliver(&state.Record{RequestID: "req-nobody-watches", Seq: 1}) // must not panic
	})
}
