package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
	"github.com/comfygate/comfygate/state"
)

// epochState is what the epoch tests read of a state, whatever its transport.
type epochState struct {
	Status string `json:"status"`
	Seq    int64  `json:"seq,string"`
	Epoch  int64  `json:"epoch,string"`
}

// epochStream reads one watch transport's states.
type epochStream interface {
	next(t *testing.T) (epochState, bool) // false: the stream ended OK
}

// restOf reads s until it ends OK.
func restOf(t *testing.T, s epochStream) []epochState {
	t.Helper()
	var got []epochState
	for {
		st, ok := s.next(t)
		if !ok {
			return got
		}
		got = append(got, st)
	}
}

type grpcEpochStream struct {
	s comfygatev1.GatewayService_WatchRequestClient
}

func (g grpcEpochStream) next(t *testing.T) (epochState, bool) {
	t.Helper()
	msg, err := g.s.Recv()
	if err == io.EOF {
		return epochState{}, false
	}
	if err != nil {
		t.Fatalf("gRPC watch: %v", err)
	}
	st := msg.GetRequest()
	return epochState{Status: st.GetStatus().String(), Seq: st.GetSeq(), Epoch: st.GetEpoch()}, true
}

type ndjsonEpochStream struct{ sc *bufio.Scanner }

func (n ndjsonEpochStream) next(t *testing.T) (epochState, bool) {
	t.Helper()
	if !n.sc.Scan() {
		if err := n.sc.Err(); err != nil {
			t.Fatalf("NDJSON watch: %v", err)
		}
		return epochState{}, false
	}
	var line struct {
		Result struct {
			Request epochState `json:"request"`
		} `json:"result"`
		Error json.RawMessage `json:"error"`
	}
	if err := json.Unmarshal(n.sc.Bytes(), &line); err != nil || line.Error != nil {
		t.Fatalf("NDJSON line %q: %v", n.sc.Text(), err)
	}
	return line.Result.Request, true
}

type sseEpochStream struct{ r *sseReader }

func (s sseEpochStream) next(t *testing.T) (epochState, bool) {
	t.Helper()
	ev, err := s.r.next()
	if err != nil {
		t.Fatalf("SSE watch: %v", err)
	}
	if ev.typ == "end" {
		return epochState{}, false
	}
	if ev.typ != "state" {
		t.Fatalf("SSE event %+v, want a state", ev)
	}
	var st epochState
	if err := json.Unmarshal([]byte(ev.data), &st); err != nil {
		t.Fatalf("SSE data %q: %v", ev.data, err)
	}
	if want := sseID(st.Epoch, st.Seq, st.Status); ev.id != want {
		t.Errorf("SSE id %q, want %q (epoch-seq-status)", ev.id, want)
	}
	return st, true
}

// openEpochStreams opens a watch of rid on every transport, resuming after
// after (none when zero).
func openEpochStreams(ctx context.Context, t *testing.T, g *gateway, rid string, after state.Position) map[string]epochStream {
	t.Helper()
	gs, err := g.client.WatchRequest(ctx, &comfygatev1.WatchRequestRequest{DeploymentId: "dep-1", RequestId: rid, AfterSeq: after.Seq, AfterEpoch: after.Epoch})
	if err != nil {
		t.Fatal(err)
	}
	url := g.httpBase + "/v1/deployments/dep-1/requests/" + rid + ":watch"
	if after != (state.Position{}) {
		url += "?after_epoch=" + strconv.FormatInt(after.Epoch, 10) + "&after_seq=" + strconv.FormatInt(after.Seq, 10)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := g.httpc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("NDJSON watch: HTTP %d", resp.StatusCode)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	sr := sseRequest{dep: "dep-1", rid: rid}
	if after != (state.Position{}) {
		sr.lastEventID = fmt.Sprintf("%d-%d", after.Epoch, after.Seq)
	}
	events := g.openEvents(ctx, t, sr)
	if events.StatusCode != http.StatusOK {
		t.Fatalf("SSE watch: HTTP %d", events.StatusCode)
	}
	return map[string]epochStream{
		"gRPC":   grpcEpochStream{gs},
		"NDJSON": ndjsonEpochStream{sc},
		"SSE":    sseEpochStream{newSSEReader(events.Body)},
	}
}

// loseAndFinish loses rid's record, finishes the job on the simulator and
// has the gateway record it again (a read of a request it has no record of,
// by a caller that may attach it): the record comes back in a new epoch.
func loseAndFinish(ctx context.Context, t *testing.T, g *gateway, rid string) *state.Record {
	t.Helper()
	if err := g.memory.Delete(ctx, rid); err != nil {
		t.Fatal(err)
	}
	if err := g.sim.Finish(rid, runcomfysim.Outcome{}); err != nil {
		t.Fatal(err)
	}
	if _, err := g.client.GetResult(ctx, &comfygatev1.GetResultRequest{DeploymentId: "dep-1", RequestId: rid}); err != nil {
		t.Fatal(err)
	}
	rec, err := g.tracker.Get(ctx, rid)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// TestWatchFollowsANewEpochOnEveryTransport: a record lost and made again
// under open watches (gRPC, NDJSON, SSE) reaches each as the new epoch's
// state, although its seq repeats one already sent, and each stream ends OK
// after it.
func TestWatchFollowsANewEpochOnEveryTransport(t *testing.T) {
	g := startGateway(t)
	ctx := ctxT(t)
	rid := g.submit(ctx, t, "dep-1")
	first, err := g.tracker.Get(ctx, rid)
	if err != nil {
		t.Fatal(err)
	}
	streams := openEpochStreams(ctx, t, g, rid, state.Position{})
	for name, s := range streams {
		st, ok := s.next(t)
		if !ok || st.Epoch != first.Epoch || st.Seq != 1 || st.Status != "STATUS_QUEUED" {
			t.Fatalf("%s: first state %+v (open %v), want queued at %d/1", name, st, ok, first.Epoch)
		}
	}
	again := loseAndFinish(ctx, t, g, rid)
	if again.Epoch == first.Epoch || again.Seq != 1 {
		t.Fatalf("record made again at %d/%d, want seq 1 of a new epoch", again.Epoch, again.Seq)
	}
	for name, s := range streams {
		st, ok := s.next(t)
		if !ok || st.Epoch != again.Epoch || st.Seq != 1 || st.Status != "STATUS_SUCCEEDED" {
			t.Errorf("%s: after the loss %+v (open %v), want the success at %d/1", name, st, ok, again.Epoch)
			continue
		}
		if st, ok := s.next(t); ok {
			t.Errorf("%s: %+v after the success, want the end", name, st)
		}
	}
}

// TestWatchResumesFromAStaleEpoch: a watch resumed from (epoch, seq) of a
// record since lost and made again gets the current state first on every
// transport, whatever the seqs; one resumed from the current state gets
// nothing more and ends.
func TestWatchResumesFromAStaleEpoch(t *testing.T) {
	g := startGateway(t)
	ctx := ctxT(t)
	rid := g.submit(ctx, t, "dep-1")
	g.step(ctx, t, "dep-1", rid) // running, seq 2
	old, err := g.tracker.Get(ctx, rid)
	if err != nil {
		t.Fatal(err)
	}
	again := loseAndFinish(ctx, t, g, rid)
	for name, s := range openEpochStreams(ctx, t, g, rid, old.Position()) {
		st, ok := s.next(t)
		if !ok || st.Epoch != again.Epoch || st.Seq != 1 || st.Status != "STATUS_SUCCEEDED" {
			t.Errorf("%s: resumed from %d/%d: %+v (open %v), want the success at %d/1", name, old.Epoch, old.Seq, st, ok, again.Epoch)
			continue
		}
		if st, ok := s.next(t); ok {
			t.Errorf("%s: %+v after the success, want the end", name, st)
		}
	}

	// From the current state: nothing to send, the request has ended. gRPC
	// and NDJSON end at once; SSE answers 204, which stops EventSource.
	gs, err := g.client.WatchRequest(ctx, &comfygatev1.WatchRequestRequest{DeploymentId: "dep-1", RequestId: rid, AfterSeq: again.Seq, AfterEpoch: again.Epoch})
	if err != nil {
		t.Fatal(err)
	}
	if msg, err := gs.Recv(); err != io.EOF {
		t.Errorf("gRPC resumed at the end: %v, %v; want the end", msg, err)
	}
	resp := g.openEvents(ctx, t, sseRequest{dep: "dep-1", rid: rid, lastEventID: fmt.Sprintf("%d-%d", again.Epoch, again.Seq)})
	if resp.StatusCode != http.StatusNoContent {
		t.Errorf("SSE resumed at the end: HTTP %d, want 204", resp.StatusCode)
	}
}

// TestEventsResumePointsAreChecked: Last-Event-ID takes "<epoch>-<seq>" and
// the bare "<seq>" of earlier ids besides "<epoch>-<seq>-<status>" (the
// status: TestWatchAfterStatusIsChecked); anything else is refused before
// the watch starts.
func TestEventsResumePointsAreChecked(t *testing.T) {
	g := startGateway(t)
	ctx := ctxT(t)
	rid := g.submit(ctx, t, "dep-1")
	tests := []struct {
		id   string
		want int
	}{
		{"0", http.StatusOK},
		{"1-0", http.StatusOK},
		{"-1", http.StatusBadRequest},
		{"1-", http.StatusBadRequest},
		{"1--2", http.StatusBadRequest},
		{"+1-2", http.StatusBadRequest},
		{"1-+2", http.StatusBadRequest},
		{"a-1", http.StatusBadRequest},
		{"1-2-3", http.StatusBadRequest},
		{"99999999999999999999-1", http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			resp := g.openEvents(ctx, t, sseRequest{dep: "dep-1", rid: rid, lastEventID: tt.id})
			if resp.StatusCode != tt.want {
				t.Errorf("Last-Event-ID %q: HTTP %d, want %d", tt.id, resp.StatusCode, tt.want)
			}
		})
	}
}

// TestRecordMadeAgainKeepsRunComfysTimes: a running request whose record was
// lost is recorded again (an attach, as a rebuild does) with the creation and
// start times RunComfy reports, not the time it was recorded again.
func TestRecordMadeAgainKeepsRunComfysTimes(t *testing.T) {
	g := startGateway(t)
	ctx := ctxT(t)
	rid := g.submit(ctx, t, "dep-1")
	g.step(ctx, t, "dep-1", rid) // running
	if err := g.memory.Delete(ctx, rid); err != nil {
		t.Fatal(err)
	}
	want, err := g.upstream.Result(ctx, "dep-1", rid)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := g.client.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: rid})
	if err != nil {
		t.Fatal(err)
	}
	st := resp.GetRequest()
	if st.GetStatus() != comfygatev1.Status_STATUS_RUNNING {
		t.Fatalf("status %v, want running", st.GetStatus())
	}
	if got := st.GetCreatedAt().AsTime(); !got.Equal(want.CreatedAt) {
		t.Errorf("created_at %v, want RunComfy's %v", got, want.CreatedAt)
	}
	if got := st.GetStartedAt().AsTime(); want.StartedAt.IsZero() || !got.Equal(want.StartedAt) {
		t.Errorf("started_at %v, want RunComfy's %v", got, want.StartedAt)
	}
}

// TestWatchResumedAheadOfTheRecordEnds: a watch resumed from a point ahead of
// the record (its store went back, or the point is made up) gets the
// request's next states and ends with its final one instead of waiting
// forever. Over gRPC, whose stream is open before anything is sent (the REST
// forms pass the same resume point to the same call).
func TestWatchResumedAheadOfTheRecordEnds(t *testing.T) {
	for _, legacy := range []bool{false, true} {
		t.Run(fmt.Sprintf("without epoch=%v", legacy), func(t *testing.T) {
			g := startGateway(t)
			ctx := ctxT(t)
			rid := g.submit(ctx, t, "dep-1")
			rec, err := g.tracker.Get(ctx, rid)
			if err != nil {
				t.Fatal(err)
			}
			after := state.Position{Epoch: rec.Epoch, Seq: 999}
			if legacy {
				after.Epoch = 0
			}
			gs, err := g.client.WatchRequest(ctx, &comfygatev1.WatchRequestRequest{DeploymentId: "dep-1", RequestId: rid, AfterSeq: after.Seq, AfterEpoch: after.Epoch})
			if err != nil {
				t.Fatal(err)
			}
			s := grpcEpochStream{gs}
			g.step(ctx, t, "dep-1", rid) // running
			g.step(ctx, t, "dep-1", rid) // succeeded
			got := restOf(t, s)
			if len(got) == 0 || got[len(got)-1].Status != "STATUS_SUCCEEDED" {
				t.Errorf("resumed at %+v: %+v, want the success last", after, got)
			}
		})
	}
}

// TestWatchResumedNeverGoesBack: a watch resumed from a state the client saw
// running, of a record since lost and made again queued (a replica that
// remembered it queued put it back first), is not sent the queued state, on
// any transport, when the resume names the status it saw (after_status, or
// the status in the SSE id): it goes on with the new epoch's running state
// and ends after its success. The watches read the record made again while it
// is still queued before it moves on.
func TestWatchResumedNeverGoesBack(t *testing.T) {
	g, ctx, reads, was := startRunning(t, 3)
	rid := was.RequestID
	if err := g.memory.Delete(ctx, rid); err != nil {
		t.Fatal(err)
	}
	epoch := was.Epoch + 1000
	reads.epoch.Store(epoch)
	saveRemade(ctx, t, g, was, epoch, 1, runcomfy.StateQueued)

	gs, err := g.client.WatchRequest(ctx, &comfygatev1.WatchRequestRequest{DeploymentId: "dep-1", RequestId: rid,
		AfterEpoch: was.Epoch, AfterSeq: was.Seq, AfterStatus: comfygatev1.Status_STATUS_RUNNING})
	if err != nil {
		t.Fatal(err)
	}
	// The HTTP transports answer their headers with the first event: they
	// are opened aside, and read once the record has moved on.
	type opened struct {
		resp *http.Response
		err  error
	}
	open := func(req *http.Request, err error) <-chan opened {
		out := make(chan opened, 1)
		if err != nil {
			out <- opened{err: err}
			return out
		}
		go func() {
			resp, err := g.httpc.Do(req)
			out <- opened{resp, err}
		}()
		return out
	}
	ndjson := open(http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/v1/deployments/dep-1/requests/%s:watch?after_epoch=%d&after_seq=%d&after_status=STATUS_RUNNING",
		g.httpBase, rid, was.Epoch, was.Seq), nil))
	sse := open(g.eventsRequest(ctx, sseRequest{dep: "dep-1", rid: rid, lastEventID: sseID(was.Epoch, was.Seq, "STATUS_RUNNING")}))
	for range 3 {
		select {
		case <-reads.read:
		case <-ctx.Done():
			t.Fatal("the watches did not read the record made again")
		}
	}
	saveRemade(ctx, t, g, was, epoch, 2, runcomfy.StateRunning)
	saveRemade(ctx, t, g, was, epoch, 3, runcomfy.StateSucceeded)

	streams := map[string]epochStream{"gRPC": grpcEpochStream{gs}}
	for name, ch := range map[string]<-chan opened{"NDJSON": ndjson, "SSE": sse} {
		o := <-ch
		if o.err != nil {
			t.Fatal(o.err)
		}
		t.Cleanup(func() { o.resp.Body.Close() })
		if o.resp.StatusCode != http.StatusOK {
			t.Fatalf("%s watch: HTTP %d", name, o.resp.StatusCode)
		}
		if name == "SSE" {
			streams[name] = sseEpochStream{newSSEReader(o.resp.Body)}
			continue
		}
		sc := bufio.NewScanner(o.resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		streams[name] = ndjsonEpochStream{sc}
	}
	want := []epochState{{"STATUS_RUNNING", 2, epoch}, {"STATUS_SUCCEEDED", 3, epoch}}
	for name, s := range streams {
		if got := restOf(t, s); !slices.Equal(got, want) {
			t.Errorf("%s: resumed from running at %d/%d, got %+v, want %+v", name, was.Epoch, was.Seq, got, want)
		}
	}
}

// TestWatchAfterStatusIsChecked: a resume's status must be one of the
// statuses, on every transport; unset is the form before it existed. The
// request has ended, so a watch that may go on answers its final state.
func TestWatchAfterStatusIsChecked(t *testing.T) {
	g := startGateway(t)
	ctx := ctxT(t)
	rid := g.submit(ctx, t, "dep-1")
	g.step(ctx, t, "dep-1", rid)
	g.step(ctx, t, "dep-1", rid)
	if rec, err := g.tracker.Get(ctx, rid); err != nil || rec.State != runcomfy.StateSucceeded {
		t.Fatalf("request %s: %+v, %v; want it succeeded", rid, rec, err)
	}
	gs, err := g.client.WatchRequest(ctx, &comfygatev1.WatchRequestRequest{DeploymentId: "dep-1", RequestId: rid, AfterStatus: comfygatev1.Status(99)})
	if err == nil {
		_, err = gs.Recv()
	}
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "after_status") {
		t.Errorf("gRPC after_status 99: %v, want INVALID_ARGUMENT naming after_status", err)
	}
	tests := []struct {
		name, query, lastEventID string
		want                     int
	}{
		{"REST, a status", "after_status=STATUS_RUNNING", "", http.StatusOK},
		{"REST, unset", "after_status=STATUS_UNSPECIFIED", "", http.StatusOK},
		{"REST, no such status", "after_status=STATUS_DONE", "", http.StatusBadRequest},
		{"REST, no such number", "after_status=99", "", http.StatusBadRequest},
		{"SSE, a status", "", "1-1-queued", http.StatusOK},
		{"SSE, unknown", "", "1-1-unknown", http.StatusOK},
		{"SSE, no such status", "", "1-1-done", http.StatusBadRequest},
		{"SSE, the enum's name", "", "1-1-STATUS_QUEUED", http.StatusBadRequest},
		{"SSE, empty status", "", "1-1-", http.StatusBadRequest},
		{"SSE, a status without an epoch", "", "1-queued", http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			var resp *http.Response
			if tt.lastEventID != "" {
				resp = g.openEvents(ctx, t, sseRequest{dep: "dep-1", rid: rid, lastEventID: tt.lastEventID})
			} else {
				req, err := http.NewRequestWithContext(ctx, http.MethodGet, g.httpBase+"/v1/deployments/dep-1/requests/"+rid+":watch?"+tt.query, nil)
				if err != nil {
					t.Fatal(err)
				}
				if resp, err = g.httpc.Do(req); err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
			}
			if resp.StatusCode != tt.want {
				body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
				t.Errorf("HTTP %d (%s), want %d", resp.StatusCode, body, tt.want)
			}
		})
	}
}
