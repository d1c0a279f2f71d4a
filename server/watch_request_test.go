package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
	"github.com/comfygate/comfygate/state"
)

// watchAll reads a WatchRequest stream to its end and returns what it carried.
func watchAll(ctx context.Context, t *testing.T, g *gateway, rid string, afterSeq int64) ([]*comfygatev1.RequestState, error) {
	t.Helper()
	stream, err := g.client.WatchRequest(ctx, &comfygatev1.WatchRequestRequest{DeploymentId: "dep-1", RequestId: rid, AfterSeq: afterSeq})
	if err != nil {
		return nil, err
	}
	var got []*comfygatev1.RequestState
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return got, nil
		}
		if err != nil {
			return got, err
		}
		got = append(got, msg.GetRequest())
	}
}

// checkOrdered asserts strictly increasing seqs without gaps, from first, ending
// with a terminal state that carries outputs when it succeeded.
func checkOrdered(t *testing.T, got []*comfygatev1.RequestState, first int64) {
	t.Helper()
	if len(got) == 0 {
		t.Fatal("no events")
	}
	for i, r := range got {
		if want := first + int64(i); r.GetSeq() != want {
			t.Fatalf("event %d has seq %d, want %d (all: %v)", i, r.GetSeq(), want, seqs(got))
		}
	}
	last := got[len(got)-1]
	switch last.GetStatus() {
	case comfygatev1.Status_STATUS_SUCCEEDED:
		if len(last.GetOutputUrls()) == 0 || last.GetOutputs() == nil {
			t.Errorf("terminal success without outputs: %v", last)
		}
	case comfygatev1.Status_STATUS_FAILED, comfygatev1.Status_STATUS_CANCELLED:
	default:
		t.Errorf("stream ended on %v, not a terminal state", last.GetStatus())
	}
}

func seqs(rs []*comfygatev1.RequestState) []int64 {
	out := make([]int64, len(rs))
	for i, r := range rs {
		out[i] = r.GetSeq()
	}
	return out
}

func statuses(rs []*comfygatev1.RequestState) []comfygatev1.Status {
	out := make([]comfygatev1.Status, len(rs))
	for i, r := range rs {
		out[i] = r.GetStatus()
	}
	return out
}

// TestWatchWithCallbacks submits with callbacks on and watches each request live
// to its end, while the simulator misbehaves as RunComfy may.
func TestWatchWithCallbacks(t *testing.T) {
	tests := []struct {
		name   string
		faults runcomfysim.Faults
	}{
		{"in order", runcomfysim.Faults{}},
		{"each callback ten more times", runcomfysim.Faults{DuplicateCallbacks: 10}},
		{"reversed order", runcomfysim.Faults{ReorderCallbacks: true}},
		{"success without outputs", runcomfysim.Faults{CallbackOmitOutputs: true}},
		{"older outputs key", runcomfysim.Faults{CallbackOutputKey: runcomfysim.CallbackOutputPlural}},
		{"callback before the submit answer", runcomfysim.Faults{CallbackBeforeSubmitResponse: true}},
		{"delayed callbacks", runcomfysim.Faults{CallbackDelay: 20 * time.Millisecond}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := startGateway(t, withCallbacks, func(o *gatewayOptions) {
				o.sim.QueueTime, o.sim.RunTime = 50*time.Millisecond, 50*time.Millisecond
			})
			g.sim.SetFaults(tt.faults)
			ctx := ctxT(t)
			sub, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{"prompt":"x"}`})
			if err != nil {
				t.Fatal(err)
			}
			got, err := watchAll(ctx, t, g, sub.GetRequest().GetRequestId(), 0)
			if err != nil {
				t.Fatalf("watch: %v (got %v)", err, statuses(got))
			}
			checkOrdered(t, got, got[0].GetSeq())
			if got[len(got)-1].GetStatus() != comfygatev1.Status_STATUS_SUCCEEDED {
				t.Errorf("statuses %v, want to end with success", statuses(got))
			}
			// Never backwards.
			for i := 1; i < len(got); i++ {
				if got[i].GetStatus() < got[i-1].GetStatus() {
					t.Errorf("state went backwards: %v", statuses(got))
				}
			}
			if rec, _ := g.sim.LastSubmit(); rec.Webhook == "" || !rec.WebhookIntermediateStatus {
				t.Errorf("submit asked for webhook %q, intermediate %v", rec.Webhook, rec.WebhookIntermediateStatus)
			}
		})
	}
}

func TestWatchAlreadyFinishedSendsOneMessage(t *testing.T) {
	g := startGateway(t)
	ctx := ctxT(t)
	sub, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
	if err != nil {
		t.Fatal(err)
	}
	rid := sub.GetRequest().GetRequestId()
	if err := g.sim.Finish(rid, runcomfysim.Outcome{}); err != nil {
		t.Fatal(err)
	}
	// A result read records the success (no callbacks in this gateway).
	if _, err := g.client.GetResult(ctx, &comfygatev1.GetResultRequest{DeploymentId: "dep-1", RequestId: rid}); err != nil {
		t.Fatal(err)
	}
	got, err := watchAll(ctx, t, g, rid, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].GetStatus() != comfygatev1.Status_STATUS_SUCCEEDED {
		t.Fatalf("got %v, want one succeeded message", statuses(got))
	}
	// Resuming after the terminal seq: nothing to send, the stream just ends OK.
	got, err = watchAll(ctx, t, g, rid, got[0].GetSeq())
	if err != nil || len(got) != 0 {
		t.Fatalf("resume after terminal: %v, %v", statuses(got), err)
	}
}

// TestWatchResumesAfterSeq drives the request by hand through the tracker's
// sources and checks that a reconnect with after_seq continues without a gap or a
// repeat.
func TestWatchResumesAfterSeq(t *testing.T) {
	g := startGateway(t)
	ctx := ctxT(t)
	sub, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
	if err != nil {
		t.Fatal(err)
	}
	rid := sub.GetRequest().GetRequestId()
	ref := &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: rid}

	// First connection: read the current state and the running one, then drop.
	streamCtx, cancel := context.WithCancel(ctx)
	stream, err := g.client.WatchRequest(streamCtx, &comfygatev1.WatchRequestRequest{DeploymentId: "dep-1", RequestId: rid})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if err := g.sim.Advance(rid); err != nil {
		t.Fatal(err)
	}
	if _, err := g.client.GetStatus(ctx, ref); err != nil { // records "running"
		t.Fatal(err)
	}
	second, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if second.GetRequest().GetSeq() != first.GetRequest().GetSeq()+1 || second.GetRequest().GetStatus() != comfygatev1.Status_STATUS_RUNNING {
		t.Fatalf("first connection got %v then %v", first.GetRequest(), second.GetRequest())
	}

	// While disconnected the request finishes.
	if err := g.sim.Advance(rid); err != nil {
		t.Fatal(err)
	}
	if _, err := g.client.GetStatus(ctx, ref); err != nil {
		t.Fatal(err)
	}
	got, err := watchAll(ctx, t, g, rid, second.GetRequest().GetSeq())
	if err != nil {
		t.Fatal(err)
	}
	checkOrdered(t, got, second.GetRequest().GetSeq()+1)
}

func TestWatchUnknownRequestIsNotFound(t *testing.T) {
	g := startGateway(t)
	ctx := ctxT(t)
	_, err := watchAll(ctx, t, g, "never-submitted", 0)
	if got, want := status.Code(err), codes.NotFound; got != want {
		t.Fatalf("code = %v (%v), want %v", got, err, want)
	}
	// A request of another deployment is not found under this one.
	sub, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-2", InputJson: `{}`})
	if err != nil {
		t.Fatal(err)
	}
	_, err = watchAll(ctx, t, g, sub.GetRequest().GetRequestId(), 0)
	if got, want := status.Code(err), codes.NotFound; got != want {
		t.Fatalf("other deployment: code = %v, want %v", got, want)
	}
	resp, err := http.Get(g.httpBase + "/v1/deployments/dep-1/requests/never-submitted:watch")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var line struct {
		Error struct {
			Code int `json:"code"`
		} `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&line); err != nil || line.Error.Code != int(codes.NotFound) {
		t.Errorf("REST watch of unknown request: HTTP %d, %+v, %v", resp.StatusCode, line, err)
	}
}

func TestWatchOverRESTStreamsNDJSON(t *testing.T) {
	g := startGateway(t, withCallbacks, func(o *gatewayOptions) {
		o.sim.QueueTime, o.sim.RunTime = 100*time.Millisecond, 100*time.Millisecond
	})
	ctx := ctxT(t)
	sub, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		g.httpBase+"/v1/deployments/dep-1/requests/"+sub.GetRequest().GetRequestId()+":watch", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if got, want := resp.Header.Get("Content-Type"), "application/x-ndjson"; got != want {
		t.Errorf("Content-Type = %q, want %q", got, want)
	}
	var got []string
	var lastSeq int64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var line struct {
			Result struct {
				Request struct {
					Status string `json:"status"`
					Seq    int64  `json:"seq,string"`
				} `json:"request"`
			} `json:"result"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if line.Result.Request.Seq <= lastSeq {
			t.Errorf("seq %d after %d", line.Result.Request.Seq, lastSeq)
		}
		lastSeq = line.Result.Request.Seq
		got = append(got, line.Result.Request.Status)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	want := []string{"STATUS_QUEUED", "STATUS_RUNNING", "STATUS_SUCCEEDED"}
	if len(got) != len(want) {
		t.Fatalf("lines %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("lines %v, want %v", got, want)
			break
		}
	}
}

// TestThousandWatchersSeeTheSameEvents opens 1,000 streams on one request over
// one connection, drives the request to its end, and checks every stream carried
// the same ordered events.
func TestThousandWatchersSeeTheSameEvents(t *testing.T) {
	const watchers = 1000
	g := startGateway(t)
	// A bound against hangs, generous for a loaded two-core machine: 1,000
	// streams on one connection take about a second when it is idle.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sub, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
	if err != nil {
		t.Fatal(err)
	}
	rid := sub.GetRequest().GetRequestId()

	type result struct {
		got []*comfygatev1.RequestState
		err error
	}
	results := make(chan result, watchers)
	var started sync.WaitGroup
	for range watchers {
		started.Add(1)
		go func() {
			stream, err := g.client.WatchRequest(ctx, &comfygatev1.WatchRequestRequest{DeploymentId: "dep-1", RequestId: rid})
			if err != nil {
				started.Done()
				results <- result{err: err}
				return
			}
			first, err := stream.Recv() // the snapshot: the watcher is subscribed
			started.Done()
			if err != nil {
				results <- result{err: err}
				return
			}
			got := []*comfygatev1.RequestState{first.GetRequest()}
			for {
				msg, err := stream.Recv()
				if errors.Is(err, io.EOF) {
					results <- result{got: got}
					return
				}
				if err != nil {
					results <- result{got: got, err: err}
					return
				}
				got = append(got, msg.GetRequest())
			}
		}()
	}
	started.Wait()
	ref := &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: rid}
	for range 2 {
		if err := g.sim.Advance(rid); err != nil {
			t.Fatal(err)
		}
		if _, err := g.client.GetStatus(ctx, ref); err != nil {
			t.Fatal(err)
		}
	}
	var want []int64
	for range watchers {
		r := <-results
		if r.err != nil {
			t.Fatalf("watcher: %v", r.err)
		}
		checkOrdered(t, r.got, 1)
		if want == nil {
			want = seqs(r.got)
		}
		if got := seqs(r.got); len(got) != len(want) {
			t.Fatalf("watcher saw %v, another %v", got, want)
		}
	}
	if len(want) != 3 {
		t.Errorf("events %v, want queued, running, succeeded", want)
	}
}

// TestCancelledWatchFreesItsSubscription ends a watch from the client side and
// checks the hub forgets the request (goroutines are checked by goleak in
// TestMain).
func TestCancelledWatchFreesItsSubscription(t *testing.T) {
	g := startGateway(t)
	ctx := ctxT(t)
	sub, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
	if err != nil {
		t.Fatal(err)
	}
	streamCtx, cancel := context.WithCancel(ctx)
	stream, err := g.client.WatchRequest(streamCtx, &comfygatev1.WatchRequestRequest{DeploymentId: "dep-1", RequestId: sub.GetRequest().GetRequestId()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	if got := len(g.hub.Watching()); got != 1 {
		t.Fatalf("hub watches %d requests, want 1", got)
	}
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for len(g.hub.Watching()) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("hub still watches %v after the client left", g.hub.Watching())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// failingStore fails the first n Saves, as a Redis outage would.
type failingStore struct {
	state.Store
	mu sync.Mutex
	n  int
}

func (f *failingStore) Save(ctx context.Context, rec *state.Record, ttl time.Duration) error {
	f.mu.Lock()
	fail := f.n > 0
	if fail {
		f.n--
	}
	f.mu.Unlock()
	if fail {
		return state.ErrUnavailable
	}
	return f.Store.Save(ctx, rec, ttl)
}

// TestCallbackRetriedAfterStoreFailure: the gateway answers 5xx while it cannot
// record a callback, the simulator retries as RunComfy does, and the watcher
// still sees the request to its end.
func TestCallbackRetriedAfterStoreFailure(t *testing.T) {
	fs := &failingStore{}
	g := startGateway(t, withCallbacks, func(o *gatewayOptions) {
		o.sim.QueueTime, o.sim.RunTime = 50*time.Millisecond, 50*time.Millisecond
		o.sim.CallbackBackoff = 10 * time.Millisecond
		o.store = func(s state.Store) state.Store { fs.Store = s; return fs }
	})
	ctx := ctxT(t)
	sub, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
	if err != nil {
		t.Fatal(err)
	}
	fs.mu.Lock()
	fs.n = 2 // the next two writes (callbacks) fail
	fs.mu.Unlock()
	got, err := watchAll(ctx, t, g, sub.GetRequest().GetRequestId(), 0)
	if err != nil {
		t.Fatal(err)
	}
	checkOrdered(t, got, 1)
	if st := g.webhook.Stats(); st.Rejected["store"] < 1 {
		t.Errorf("no callback was refused for the store failure: %+v", st)
	}
	if st := g.sim.CallbackStats(); st.Attempts <= st.Delivered || st.Failed != 0 {
		t.Errorf("want refused deliveries retried until delivered: %+v", st)
	}
}

// TestCallbackBeforeSubmitAnswerIsKept: RunComfy calls back before it answers
// the submit; the callback creates the record and the submit's own update finds
// it there (a duplicate), so nothing is lost and nothing is applied twice.
func TestCallbackBeforeSubmitAnswerIsKept(t *testing.T) {
	g := startGateway(t, withCallbacks, func(o *gatewayOptions) { o.sim.Manual = true })
	g.sim.SetFaults(runcomfysim.Faults{CallbackBeforeSubmitResponse: true})
	ctx := ctxT(t)
	sub, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
	if err != nil {
		t.Fatal(err)
	}
	if got := g.webhook.Stats().Outcomes["applied"]; got != 1 {
		t.Errorf("callbacks applied before the answer = %d, want 1", got)
	}
	if got := g.tracker.Stats(); got.Applied != 1 || got.Duplicate != 1 {
		t.Errorf("tracker %+v, want the callback applied and the submit a duplicate", got)
	}
	if got, want := sub.GetRequest().GetSeq(), int64(1); got != want {
		t.Errorf("submit answered seq %d, want %d", got, want)
	}
}

// epochReads is a store that hands over every record of one epoch it reads:
// a watcher reads the store when it meets a new epoch, so a test knows when
// the watcher has dealt with the new epoch's first record, sent or not.
type epochReads struct {
	state.Store
	epoch atomic.Int64
	read  chan *state.Record
}

func (s *epochReads) Get(ctx context.Context, requestID string) (*state.Record, error) {
	rec, err := s.Store.Get(ctx, requestID)
	if err == nil && rec.Epoch == s.epoch.Load() {
		select {
		case s.read <- rec:
		default:
		}
	}
	return rec, err
}

// startRunning starts a gateway whose store hands over up to reads reads of
// one epoch's records at a time (epochReads), and runs a request to running
// (seq 2), as it returns it.
func startRunning(t *testing.T, reads int) (*gateway, context.Context, *epochReads, *state.Record) {
	t.Helper()
	er := &epochReads{read: make(chan *state.Record, reads)}
	g := startGateway(t, func(o *gatewayOptions) {
		o.store = func(s state.Store) state.Store { er.Store = s; return er }
	})
	ctx := ctxT(t)
	rid := g.submit(ctx, t, "dep-1")
	g.step(ctx, t, "dep-1", rid)
	was, err := g.tracker.Get(ctx, rid)
	if err != nil {
		t.Fatal(err)
	}
	if was.State != runcomfy.StateRunning || was.Seq != 2 {
		t.Fatalf("request %s %s at seq %d, want running at 2", rid, was.State, was.Seq)
	}
	return g, ctx, er, was
}

// saveRemade stores was's record as made again after a loss: at epoch, seq
// and st (a success with an output), as another replica would write it.
func saveRemade(ctx context.Context, t *testing.T, g *gateway, was *state.Record, epoch, seq int64, st runcomfy.State) {
	t.Helper()
	rec := was.Clone()
	rec.Epoch, rec.Seq, rec.State, rec.UpdatedAt = epoch, seq, st, time.Now()
	if st == runcomfy.StateSucceeded {
		rec.Outputs, rec.OutputURLs = json.RawMessage(`{"9":{"images":[{"url":"https://x/a.png"}]}}`), []string{"https://x/a.png"}
	}
	if err := g.memory.Save(ctx, rec, time.Hour); err != nil {
		t.Fatal(err)
	}
}

// TestWatchNeverGoesBackAcrossAnEpoch: a record lost under an open watch
// that saw it running and made again at an older state (a replica that
// remembered it queued put it back first) is held back: the watch never goes
// back, and goes on with the new epoch's next states, the same rank as the
// last one sent included, to its end.
func TestWatchNeverGoesBackAcrossAnEpoch(t *testing.T) {
	tests := []struct {
		name  string
		again []runcomfy.State // the states of the record made again, from seq 1
		want  []epochState     // what the watch gets after the loss (Epoch: the new one's)
	}{
		{"made again queued", []runcomfy.State{runcomfy.StateQueued, runcomfy.StateRunning, runcomfy.StateSucceeded},
			[]epochState{{"STATUS_RUNNING", 2, 0}, {"STATUS_SUCCEEDED", 3, 0}}},
		{"made again running", []runcomfy.State{runcomfy.StateRunning, runcomfy.StateSucceeded},
			[]epochState{{"STATUS_RUNNING", 1, 0}, {"STATUS_SUCCEEDED", 2, 0}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, ctx, reads, was := startRunning(t, 1)
			rid := was.RequestID
			gs, err := g.client.WatchRequest(ctx, &comfygatev1.WatchRequestRequest{DeploymentId: "dep-1", RequestId: rid})
			if err != nil {
				t.Fatal(err)
			}
			s := grpcEpochStream{gs}
			if st, ok := s.next(t); !ok || st.Status != "STATUS_RUNNING" || st.Epoch != was.Epoch || st.Seq != 2 {
				t.Fatalf("first state %+v (open %v), want running at %d/2", st, ok, was.Epoch)
			}

			if err := g.memory.Delete(ctx, rid); err != nil {
				t.Fatal(err)
			}
			epoch := was.Epoch + 1000
			reads.epoch.Store(epoch)
			for i, st := range tt.again {
				saveRemade(ctx, t, g, was, epoch, int64(i+1), st)
				if i == 0 {
					// The watcher meets the new epoch and reads the store
					// before the record moves on.
					select {
					case <-reads.read:
					case <-ctx.Done():
						t.Fatal("the watcher did not read the new epoch's record")
					}
				}
			}
			got := restOf(t, s)
			want := make([]epochState, len(tt.want))
			for i, w := range tt.want {
				w.Epoch = epoch
				want[i] = w
			}
			if !slices.Equal(got, want) {
				t.Errorf("after the loss the watch got %+v, want %+v", got, want)
			}
		})
	}
}

// refusingStore refuses every Save with err, keeping the records it was
// given.
type refusingStore struct {
	state.Store
	err   error
	mu    sync.Mutex
	given []*state.Record
}

func (r *refusingStore) Save(_ context.Context, rec *state.Record, _ time.Duration) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.given = append(r.given, rec.Clone())
	return r.err
}

// TestSubmitNotRecordedAnswersWhenRunComfyAnswered: a submit whose job
// could not be recorded still answers its id, created when RunComfy
// answered (the time the record is made with once it can be), not when the
// gateway gave up recording it. The clock moves a second at each reading.
func TestSubmitNotRecordedAnswersWhenRunComfyAnswered(t *testing.T) {
	var mu sync.Mutex
	at := time.Date(2026, 11, 18, 10, 0, 0, 0, time.UTC)
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		at = at.Add(time.Second)
		return at
	}
	rs := &refusingStore{err: errors.New("refused on purpose")}
	g := startGateway(t, func(o *gatewayOptions) {
		o.now = clock
		o.store = func(s state.Store) state.Store { rs.Store = s; return rs }
	})
	resp, err := g.client.Submit(ctxT(t), &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
	if err != nil {
		t.Fatal(err)
	}
	st := resp.GetRequest()
	if st.GetRequestId() == "" || st.GetSeq() != 0 {
		t.Fatalf("answered %v, want the job's id, not recorded (seq 0)", st)
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if len(rs.given) == 0 {
		t.Fatal("the job was never given to the store")
	}
	if got, want := st.GetCreatedAt().AsTime(), rs.given[0].CreatedAt; !got.Equal(want) {
		t.Errorf("answered created at %v, want %v, when RunComfy answered", got, want)
	}
}
