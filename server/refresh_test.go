package server_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
	"github.com/comfygate/comfygate/state"
)

// The freshness settings of the gateways these tests start. refreshFreshFor
// is long, so that only the test's clock makes a record stale; refreshBound
// is short, so that a hanging upstream costs the test little.
const (
	refreshFreshFor = time.Minute
	refreshBound    = 300 * time.Millisecond
)

// testClock is real time plus an offset the test moves forward, shared by the
// tracker (which stamps synced_at) and the service (which judges freshness).
type testClock struct{ offset atomic.Int64 }

func (c *testClock) now() time.Time { return time.Now().Add(time.Duration(c.offset.Load())) }

func (c *testClock) advance(d time.Duration) { c.offset.Add(int64(d)) }

// refreshGateway is a gateway on real listeners, in front of a simulator
// whose calls the tests count, with a clock they move.
type refreshGateway struct {
	*gateway
	clock *testClock
}

// startRefreshGateway starts a gateway with FreshFor, RefreshTimeout and the
// clock set. Jobs in the simulator move only on Advance and Finish.
func startRefreshGateway(t *testing.T) *refreshGateway {
	t.Helper()
	clock := &testClock{}
	g := startGateway(t, func(o *gatewayOptions) {
		o.freshFor, o.refreshTimeout, o.now = refreshFreshFor, refreshBound, clock.now
	})
	return &refreshGateway{gateway: g, clock: clock}
}

// reads counts the simulator's status and result calls: the calls a read may
// make.
func (g *refreshGateway) reads() int {
	return g.sim.Calls(runcomfysim.EndpointStatus) + g.sim.Calls(runcomfysim.EndpointResult)
}

// record returns the gateway's stored record of rid.
func (g *refreshGateway) record(t *testing.T, rid string) *state.Record {
	t.Helper()
	rec, err := g.tracker.Get(ctxT(t), rid)
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// readAnswer is one read's answer, from either RPC over either transport.
type readAnswer struct {
	status   string
	seq      int64
	syncedAt time.Time
	// refresh is the refresh_error; nil when there is none.
	refresh *comfygatev1.RefreshError
}

// read is one way of reading a request: an RPC over one transport.
type read struct {
	name string
	do   func(ctx context.Context, t *testing.T, g *refreshGateway, rid string) readAnswer
}

// readWays are every way to read a request's state: GetStatus and GetResult,
// over gRPC and over REST.
var readWays = []read{
	{"GetStatus gRPC", func(ctx context.Context, t *testing.T, g *refreshGateway, rid string) readAnswer {
		resp, err := g.client.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: rid})
		if err != nil {
			t.Fatalf("GetStatus: %v", err)
		}
		return protoAnswer(resp.GetRequest(), resp.GetRefreshError())
	}},
	{"GetResult gRPC", func(ctx context.Context, t *testing.T, g *refreshGateway, rid string) readAnswer {
		resp, err := g.client.GetResult(ctx, &comfygatev1.GetResultRequest{DeploymentId: "dep-1", RequestId: rid})
		if err != nil {
			t.Fatalf("GetResult: %v", err)
		}
		return protoAnswer(resp.GetRequest(), resp.GetRefreshError())
	}},
	{"GetStatus REST", func(ctx context.Context, t *testing.T, g *refreshGateway, rid string) readAnswer {
		return restAnswer(ctx, t, g.httpBase+"/v1/deployments/dep-1/requests/"+rid)
	}},
	{"GetResult REST", func(ctx context.Context, t *testing.T, g *refreshGateway, rid string) readAnswer {
		return restAnswer(ctx, t, g.httpBase+"/v1/deployments/dep-1/requests/"+rid+"/result")
	}},
}

func protoAnswer(r *comfygatev1.RequestState, re *comfygatev1.RefreshError) readAnswer {
	a := readAnswer{status: r.GetStatus().String(), seq: r.GetSeq(), refresh: re}
	if r.GetSyncedAt() != nil {
		a.syncedAt = r.GetSyncedAt().AsTime()
	}
	return a
}

// restAnswer GETs url and reads the answer from its JSON, by the proto field
// names REST clients see.
func restAnswer(ctx context.Context, t *testing.T, url string) readAnswer {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: HTTP %d: %s", url, resp.StatusCode, data)
	}
	var body struct {
		Request struct {
			Status   string     `json:"status"`
			Seq      int64      `json:"seq,string"`
			SyncedAt *time.Time `json:"synced_at"`
		} `json:"request"`
		RefreshError *struct {
			Code         string `json:"code"`
			Message      string `json:"message"`
			UpstreamCode string `json:"upstream_code"`
		} `json:"refresh_error"`
	}
	if err := json.Unmarshal(data, &body); err != nil {
		t.Fatalf("GET %s: %v: %s", url, err, data)
	}
	a := readAnswer{status: body.Request.Status, seq: body.Request.Seq}
	if body.Request.SyncedAt != nil {
		a.syncedAt = *body.Request.SyncedAt
	}
	if re := body.RefreshError; re != nil {
		a.refresh = &comfygatev1.RefreshError{Code: re.Code, Message: re.Message, UpstreamCode: re.UpstreamCode}
	}
	return a
}

// TestFreshOrFinalRecordIsReadWithoutUpstream: a record RunComfy confirmed
// within the poll interval, or a final one however old, is answered by every
// read with no call to RunComfy.
func TestFreshOrFinalRecordIsReadWithoutUpstream(t *testing.T) {
	tests := []struct {
		name string
		// prepare brings rid's record into the state under test.
		prepare    func(t *testing.T, g *refreshGateway, rid string)
		wantStatus string
	}{
		{"fresh from the submit", func(*testing.T, *refreshGateway, string) {}, "STATUS_QUEUED"},
		{"fresh, confirmed just before the poll interval ends", func(_ *testing.T, g *refreshGateway, _ string) {
			g.clock.advance(refreshFreshFor - time.Second)
		}, "STATUS_QUEUED"},
		{"final, long after", func(t *testing.T, g *refreshGateway, rid string) {
			if err := g.sim.Finish(rid, runcomfysim.Outcome{}); err != nil {
				t.Fatal(err)
			}
			// Stale: the next read goes through and records the success.
			g.clock.advance(refreshFreshFor)
			resp, err := g.client.GetResult(ctxT(t), &comfygatev1.GetResultRequest{DeploymentId: "dep-1", RequestId: rid})
			if err != nil {
				t.Fatal(err)
			}
			if got, want := resp.GetRequest().GetStatus(), comfygatev1.Status_STATUS_SUCCEEDED; got != want {
				t.Fatalf("status after the read-through = %v, want %v", got, want)
			}
			g.clock.advance(24 * time.Hour)
		}, "STATUS_SUCCEEDED"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := startRefreshGateway(t)
			rid := g.submit(ctxT(t), t, "dep-1")
			tt.prepare(t, g, rid)
			rec := g.record(t, rid)
			before := g.reads()
			for _, r := range readWays {
				got := r.do(ctxT(t), t, g, rid)
				if got.status != tt.wantStatus || got.seq != rec.Seq {
					t.Errorf("%s: status %s seq %d, want %s seq %d", r.name, got.status, got.seq, tt.wantStatus, rec.Seq)
				}
				if got.refresh != nil {
					t.Errorf("%s: refresh_error %v on a record that needs no refresh", r.name, got.refresh)
				}
				if !got.syncedAt.Equal(rec.SyncedAt) {
					t.Errorf("%s: synced_at %v, want the record's %v", r.name, got.syncedAt, rec.SyncedAt)
				}
			}
			if got := g.reads() - before; got != 0 {
				t.Errorf("upstream status and result calls = %d, want 0", got)
			}
		})
	}
}

// TestStaleRecordIsReadThrough: once the poll interval has passed without
// RunComfy confirming the record, a read asks RunComfy, answers what it says,
// and records it, so the next read within the interval asks nothing.
func TestStaleRecordIsReadThrough(t *testing.T) {
	for _, r := range readWays {
		t.Run(r.name, func(t *testing.T) {
			g := startRefreshGateway(t)
			rid := g.submit(ctxT(t), t, "dep-1")
			if err := g.sim.Advance(rid); err != nil {
				t.Fatal(err)
			}
			g.clock.advance(refreshFreshFor)
			before := g.reads()
			got := r.do(ctxT(t), t, g, rid)
			if got.status != "STATUS_RUNNING" || got.refresh != nil {
				t.Fatalf("stale read: status %s, refresh_error %v; want STATUS_RUNNING and none", got.status, got.refresh)
			}
			if g.reads() == before {
				t.Error("a stale read made no upstream call")
			}
			if want := g.record(t, rid).SyncedAt; !got.syncedAt.Equal(want) {
				t.Errorf("synced_at %v, want the new record's %v", got.syncedAt, want)
			}
			before = g.reads()
			if again := r.do(ctxT(t), t, g, rid); again.status != "STATUS_RUNNING" || again.seq != got.seq {
				t.Errorf("second read: status %s seq %d, want STATUS_RUNNING seq %d", again.status, again.seq, got.seq)
			}
			if got := g.reads() - before; got != 0 {
				t.Errorf("a read just after a read-through made %d upstream calls, want 0", got)
			}
		})
	}
}

// TestStaleRecordWithUpstreamFailingIsAnsweredWithRefreshError: a stale
// record whose read-through fails is answered as stored, within the refresh
// bound even when RunComfy hangs, with a refresh_error that says what the same
// failure says as the error of a read that has no record to fall back on.
func TestStaleRecordWithUpstreamFailingIsAnsweredWithRefreshError(t *testing.T) {
	tests := []struct {
		name         string
		faults       runcomfysim.Faults
		wantCode     string
		wantUpstream string
	}{
		{"upstream hangs", runcomfysim.Faults{Latency: time.Hour}, "DEADLINE_EXCEEDED", ""},
		{"upstream answers 500", runcomfysim.Faults{Errors: map[string]runcomfysim.FaultError{
			runcomfysim.EndpointStatus: {HTTPStatus: 500, ErrorCode: 500001, Message: "boom"},
			runcomfysim.EndpointResult: {HTTPStatus: 500, ErrorCode: 500001, Message: "boom"},
		}}, "UNAVAILABLE", "500001"},
		{"upstream answers 503 without a code", runcomfysim.Faults{Errors: map[string]runcomfysim.FaultError{
			runcomfysim.EndpointStatus: {HTTPStatus: 503},
			runcomfysim.EndpointResult: {HTTPStatus: 503},
		}}, "UNAVAILABLE", ""},
		// Its Retry-After outlasts the refresh bound: said at once, not
		// waited out into a deadline.
		{"upstream rate limits", runcomfysim.Faults{Errors: map[string]runcomfysim.FaultError{
			runcomfysim.EndpointStatus: {HTTPStatus: 429, RetryAfter: "5"},
			runcomfysim.EndpointResult: {HTTPStatus: 429, RetryAfter: "5"},
		}}, "RESOURCE_EXHAUSTED", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := startRefreshGateway(t)
			rid := g.submit(ctxT(t), t, "dep-1")
			rec := g.record(t, rid)
			g.sim.SetFaults(tt.faults)
			g.clock.advance(refreshFreshFor)
			for _, r := range readWays {
				before := g.reads()
				start := time.Now()
				got := r.do(ctxT(t), t, g, rid)
				if elapsed := time.Since(start); elapsed > refreshBound+time.Second {
					t.Errorf("%s took %v, want at most the refresh bound %v plus 1s", r.name, elapsed, refreshBound)
				}
				if g.reads() == before {
					t.Errorf("%s: a stale read made no upstream call", r.name)
				}
				if got.status != "STATUS_QUEUED" || got.seq != rec.Seq {
					t.Errorf("%s: status %s seq %d, want the record's STATUS_QUEUED seq %d", r.name, got.status, got.seq, rec.Seq)
				}
				if got.syncedAt.IsZero() || !got.syncedAt.Equal(rec.SyncedAt) {
					t.Errorf("%s: synced_at %v, want the record's %v", r.name, got.syncedAt, rec.SyncedAt)
				}
				re := got.refresh
				switch {
				case re == nil:
					t.Errorf("%s: no refresh_error", r.name)
				case re.GetCode() != tt.wantCode || re.GetUpstreamCode() != tt.wantUpstream || re.GetMessage() == "":
					t.Errorf("%s: refresh_error %v, want code %s, upstream_code %q and a message", r.name, re, tt.wantCode, tt.wantUpstream)
				}
			}
			// The same failure, with no record to answer: the error a read
			// gets says what the refresh_error said. A hang is cut by the
			// caller's deadline here, whose message is the client's own, so
			// only its code is compared.
			ctx, cancel := context.WithTimeout(ctxT(t), refreshBound)
			defer cancel()
			_, err := g.client.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: "untracked-request"})
			st := status.Convert(err)
			if got := code.Code(st.Code()).String(); got != tt.wantCode {
				t.Fatalf("untracked read: code %s (%q), want %s", got, st.Message(), tt.wantCode)
			}
			if tt.faults.Latency > 0 {
				return
			}
			resp, err := g.client.GetStatus(ctxT(t), &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: rid})
			if err != nil {
				t.Fatal(err)
			}
			if got, want := resp.GetRefreshError().GetMessage(), st.Message(); got != want {
				t.Errorf("refresh_error message %q, the error's %q", got, want)
			}
			if got, want := resp.GetRefreshError().GetUpstreamCode(), upstreamCodeOf(st); got != want {
				t.Errorf("refresh_error upstream_code %q, the error's %q", got, want)
			}
		})
	}
}

// upstreamCodeOf returns the upstream_code of st's RunComfy ErrorInfo.
func upstreamCodeOf(st *status.Status) string {
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == "runcomfy.net" {
			return info.GetMetadata()["upstream_code"]
		}
	}
	return ""
}

// TestStaleRecordWithAnUnknownUpstreamStatusStands: a read-through whose
// answer names no status the gateway knows (none, null, an empty object, a
// new word) answers the record as stored (GetStatus with a refresh_error that
// says so), instead of an unrecorded STATUS_UNKNOWN that would seem to put the request
// back to nothing.
func TestStaleRecordWithAnUnknownUpstreamStatusStands(t *testing.T) {
	for _, body := range []string{`null`, `{}`, `{"status":null}`, `{"status":"weird_state"}`} {
		t.Run(body, func(t *testing.T) {
			g := startRefreshGateway(t)
			rid := g.submit(ctxT(t), t, "dep-1")
			rec := g.record(t, rid)
			odd := runcomfysim.FaultError{HTTPStatus: 200, RawBody: body}
			g.sim.SetFaults(runcomfysim.Faults{Errors: map[string]runcomfysim.FaultError{
				runcomfysim.EndpointStatus: odd, runcomfysim.EndpointResult: odd,
			}})
			g.clock.advance(refreshFreshFor)
			for _, r := range readWays {
				before := g.reads()
				got := r.do(ctxT(t), t, g, rid)
				if g.reads() == before {
					t.Errorf("%s: a stale read made no upstream call", r.name)
				}
				if got.status != "STATUS_QUEUED" || got.seq != rec.Seq {
					t.Errorf("%s: status %s seq %d, want the record's STATUS_QUEUED seq %d", r.name, got.status, got.seq, rec.Seq)
				}
				// GetStatus says why it answers the record; GetResult may
				// answer it as the record the answer leaves unchanged.
				if re := got.refresh; strings.HasPrefix(r.name, "GetStatus") && (re == nil || !strings.Contains(re.GetMessage(), "no status this gateway knows")) {
					t.Errorf("%s: refresh_error %v, want one that says the answer named no known status", r.name, re)
				}
			}
			if got := g.record(t, rid); got.Seq != rec.Seq || got.State != rec.State {
				t.Errorf("record moved to %v seq %d", got.State, got.Seq)
			}
		})
	}
}
