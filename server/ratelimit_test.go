package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/server"
)

// TestSubmitRateIsPerTenant: a tenant past its burst gets RESOURCE_EXHAUSTED
// with a RetryInfo (REST 429) and RunComfy is not called; another tenant is not
// affected.
func TestSubmitRateIsPerTenant(t *testing.T) {
	g := startGateway(t, withKeys(t), func(o *gatewayOptions) {
		o.limits = server.LimitsConfig{SubmitRate: 0.5, SubmitBurst: 2}
	})
	ctx := ctxT(t)
	submit := func(key string) error {
		_, err := g.client.Submit(as(ctx, key), &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
		return err
	}
	for i := range 2 {
		if err := submit(keyA); err != nil {
			t.Fatalf("submit %d within the burst: %v", i+1, err)
		}
	}
	err := submit(keyA)
	st := status.Convert(err)
	if got, want := st.Code(), codes.ResourceExhausted; got != want {
		t.Fatalf("third submit: %v, want %v", got, want)
	}
	if !strings.Contains(st.Message(), "submit rate limit reached") {
		t.Errorf("message %q does not name the submit limit", st.Message())
	}
	if retryOf(st) <= 0 {
		t.Errorf("no positive RetryInfo: %v", st.Details())
	}
	if got := g.restAs(t, keyA, http.MethodPost, "/v1/deployments/dep-1/requests", `{}`); got != http.StatusTooManyRequests {
		t.Errorf("REST over the limit: %d, want 429", got)
	}
	if got := g.sim.Calls("submit"); got != 2 {
		t.Errorf("RunComfy saw %d submits, want 2", got)
	}
	if err := submit(keyB); err != nil {
		t.Errorf("tenant-b limited by tenant-a's submits: %v", err)
	}
}

// TestReadRateIsPerTenant: every read (GetStatus, GetResult, Cancel and the
// opening of a watch) spends one of the tenant's reads; past the burst the
// read is RESOURCE_EXHAUSTED with a RetryInfo over gRPC and 429 with the same
// status over REST, and RunComfy is not called; another tenant is not
// affected.
func TestReadRateIsPerTenant(t *testing.T) {
	const burst = 2
	tests := []struct {
		name string
		// call makes the read over gRPC.
		call func(ctx context.Context, g *gateway, rid string) error
		// method and path make it over REST (%s is the request id).
		method, path string
	}{
		{
			name: "GetStatus",
			call: func(ctx context.Context, g *gateway, rid string) error {
				_, err := g.client.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: rid})
				return err
			},
			method: http.MethodGet, path: "/v1/deployments/dep-1/requests/%s",
		},
		{
			name: "GetResult",
			call: func(ctx context.Context, g *gateway, rid string) error {
				_, err := g.client.GetResult(ctx, &comfygatev1.GetResultRequest{DeploymentId: "dep-1", RequestId: rid})
				return err
			},
			method: http.MethodGet, path: "/v1/deployments/dep-1/requests/%s/result",
		},
		{
			name: "Cancel",
			call: func(ctx context.Context, g *gateway, rid string) error {
				_, err := g.client.Cancel(ctx, &comfygatev1.CancelRequest{DeploymentId: "dep-1", RequestId: rid})
				return err
			},
			method: http.MethodPost, path: "/v1/deployments/dep-1/requests/%s:cancel",
		},
		{
			name: "WatchRequest",
			call: func(ctx context.Context, g *gateway, rid string) error {
				ctx, cancel := context.WithCancel(ctx)
				defer cancel() // the watch has served its purpose once open
				stream, err := g.client.WatchRequest(ctx, &comfygatev1.WatchRequestRequest{DeploymentId: "dep-1", RequestId: rid})
				if err != nil {
					return err
				}
				_, err = stream.Recv()
				return err
			},
			method: http.MethodGet, path: "/v1/deployments/dep-1/requests/%s:watch",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A rate so low that no read comes back while the test runs.
			g := startGateway(t, withKeys(t), func(o *gatewayOptions) {
				o.limits = server.LimitsConfig{ReadRate: 0.001, ReadBurst: burst}
			})
			ctx := ctxT(t)
			ridA, ridB := g.submitAs(ctx, t, keyA), g.submitAs(ctx, t, keyB)
			for i := range burst {
				if err := tt.call(as(ctx, keyA), g, ridA); err != nil {
					t.Fatalf("read %d within the burst: %v", i+1, err)
				}
			}
			upstream := g.sim.TotalCalls()

			st := status.Convert(tt.call(as(ctx, keyA), g, ridA))
			if got, want := st.Code(), codes.ResourceExhausted; got != want {
				t.Fatalf("read past the burst: %v (%s), want %v", got, st.Message(), want)
			}
			if !strings.Contains(st.Message(), "read rate limit reached") {
				t.Errorf("message %q does not name the read limit", st.Message())
			}
			if got := retryOf(st); got <= 0 {
				t.Errorf("RetryInfo %v, want a positive delay (details %v)", got, st.Details())
			}

			code, body, header := g.restCallHeader(ctx, t, keyA, tt.method, fmt.Sprintf(tt.path, ridA))
			if code != http.StatusTooManyRequests {
				t.Errorf("REST past the burst: HTTP %d (%+v), want 429", code, body)
			}
			if got, want := header.Get("Retry-After"), retryAfterHeader(body.retry()); got != want {
				t.Errorf("REST past the burst: Retry-After %q, want %q (the RetryInfo, in whole seconds)", got, want)
			}
			if got, want := codes.Code(body.Code), codes.ResourceExhausted; got != want {
				t.Errorf("REST body code %v, want %v", got, want)
			}
			if body.retry() <= 0 {
				t.Errorf("REST body carries no RetryInfo: %+v", body)
			}
			if got := g.sim.TotalCalls(); got != upstream {
				t.Errorf("refused reads reached RunComfy: %d calls, want %d", got, upstream)
			}

			if err := tt.call(as(ctx, keyB), g, ridB); err != nil {
				t.Errorf("tenant-b limited by tenant-a's reads: %v", err)
			}
		})
	}
}

// TestWatchSlotsPerTenant: a tenant may hold MaxWatches watch streams open at
// once, whatever their transports (gRPC, NDJSON and SSE count together); the
// next is RESOURCE_EXHAUSTED (429 over REST) on every transport, while another
// tenant can still open one. A slot comes back when a stream ends, whether
// the client leaves or the request finishes.
func TestWatchSlotsPerTenant(t *testing.T) {
	tests := []struct {
		name string
		open []transport // the watches that fill the tenant's slots
	}{
		{"gRPC", []transport{overGRPC, overGRPC}},
		{"NDJSON", []transport{overNDJSON, overNDJSON}},
		{"SSE", []transport{overSSE, overSSE}},
		{"mixed", []transport{overGRPC, overNDJSON, overSSE}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			limit := len(tt.open)
			g := startGateway(t, withKeys(t), func(o *gatewayOptions) {
				o.limits = server.LimitsConfig{MaxWatches: limit}
			})
			ctx := ctxT(t)
			ridA, ridB := g.submitAs(ctx, t, keyA), g.submitAs(ctx, t, keyB)
			watches := make([]*watchResult, limit)
			for i, tr := range tt.open {
				watches[i] = g.openWatch(ctx, t, tr, keyA, ridA)
				if watches[i].code != codes.OK {
					t.Fatalf("watch %d over %v within the limit: %v %s", i+1, tr, watches[i].code, watches[i].msg)
				}
			}

			wantMsg := fmt.Sprintf("too many open watch streams for this tenant (%d)", limit)
			for _, tr := range []transport{overGRPC, overNDJSON, overSSE} {
				r := g.openWatch(ctx, t, tr, keyA, ridA)
				if r.code != codes.ResourceExhausted {
					t.Fatalf("watch %d over %v: %v (%s), want %v", limit+1, tr, r.code, r.msg, codes.ResourceExhausted)
				}
				if tr != overGRPC && r.http != http.StatusTooManyRequests {
					t.Errorf("watch %d over %v: HTTP %d, want 429", limit+1, tr, r.http)
				}
				if want := retryAfterHeader(r.retry); tr != overGRPC && r.retryAfter != want {
					t.Errorf("watch %d over %v: Retry-After %q, want %q", limit+1, tr, r.retryAfter, want)
				}
				if !strings.Contains(r.msg, wantMsg) {
					t.Errorf("over %v: message %q, want it to say %q", tr, r.msg, wantMsg)
				}
				if r.retry <= 0 {
					t.Errorf("over %v: no positive RetryInfo", tr)
				}
			}

			if r := g.openWatch(ctx, t, tt.open[0], keyB, ridB); r.code != codes.OK {
				t.Errorf("tenant-b refused a watch while tenant-a is at its limit: %v %s", r.code, r.msg)
			} else {
				r.stop()
			}

			// The client leaves: the server notices on its own time, so poll.
			watches[0].stop()
			watches[0] = g.untilWatchOpens(ctx, t, tt.open[0], keyA, ridA)

			// The request finishes: every stream ends with its terminal event,
			// and each slot is free by the time its client sees the end.
			for range 2 {
				g.stepAs(ctx, t, keyA, ridA)
			}
			for i, w := range watches {
				if err := w.drain(); err != nil {
					t.Fatalf("watch %d over %v did not end cleanly: %v", i+1, tt.open[i], err)
				}
			}
			ridA2 := g.submitAs(ctx, t, keyA)
			for i, tr := range tt.open {
				r := g.openWatch(ctx, t, tr, keyA, ridA2)
				if r.code != codes.OK {
					t.Fatalf("watch %d over %v after the others ended: %v %s", i+1, tr, r.code, r.msg)
				}
			}
		})
	}
}

// TestRateBackendDownFailsClosed: when the shared rate backend (Redis) cannot
// be asked, submits, reads and watches are refused UNAVAILABLE, as for any
// state backend outage, and RunComfy is not called: an unbounded tenant is
// what the limits exist to prevent.
func TestRateBackendDownFailsClosed(t *testing.T) {
	down := downRedis(t)
	g := startGateway(t, func(o *gatewayOptions) {
		o.limits = server.LimitsConfig{SubmitRate: 1, SubmitBurst: 1, ReadRate: 1, ReadBurst: 1, MaxWatches: 1, Rates: down.RateLimiter()}
	})
	ctx := ctxT(t)
	calls := map[string]func() error{
		"Submit": func() error {
			_, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
			return err
		},
		"GetStatus": func() error {
			_, err := g.client.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: "r-1"})
			return err
		},
		"WatchRequest": func() error {
			stream, err := g.client.WatchRequest(ctx, &comfygatev1.WatchRequestRequest{DeploymentId: "dep-1", RequestId: "r-1"})
			if err == nil {
				_, err = stream.Recv()
			}
			return err
		},
	}
	for name, call := range calls {
		// Twice: a watch refused for its read must give its slot back.
		for range 2 {
			if got, want := status.Code(call()), codes.Unavailable; got != want {
				t.Errorf("%s with the rate backend down: %v, want %v", name, got, want)
			}
		}
	}
	if got := g.sim.TotalCalls(); got != 0 {
		t.Errorf("RunComfy saw %d calls, want 0", got)
	}
}

func TestNewTenantLimitsRefusesBadSettings(t *testing.T) {
	tests := []struct {
		name string
		cfg  server.LimitsConfig
		ok   bool
	}{
		{"zero limits nothing", server.LimitsConfig{}, true},
		{"all set", server.LimitsConfig{SubmitRate: 1, SubmitBurst: 1, ReadRate: 20, ReadBurst: 40, MaxWatches: 1000}, true},
		{"negative submit rate", server.LimitsConfig{SubmitRate: -1, SubmitBurst: 1}, false},
		{"submit rate without burst", server.LimitsConfig{SubmitRate: 1}, false},
		{"negative read rate", server.LimitsConfig{ReadRate: -1, ReadBurst: 1}, false},
		{"read rate without burst", server.LimitsConfig{ReadRate: 1}, false},
		{"negative max watches", server.LimitsConfig{MaxWatches: -1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := server.NewTenantLimits(tt.cfg)
			if got := err == nil; got != tt.ok {
				t.Errorf("NewTenantLimits(%+v) = %v, want ok %v", tt.cfg, err, tt.ok)
			}
		})
	}
}

// ---- helpers ----

// retryOf is the delay of st's RetryInfo, or 0 when it has none.
func retryOf(st *status.Status) time.Duration {
	for _, d := range st.Details() {
		if r, ok := d.(*errdetails.RetryInfo); ok {
			return r.GetRetryDelay().AsDuration()
		}
	}
	return 0
}

// submitAs submits as the tenant of key and returns the request id.
func (g *gateway) submitAs(ctx context.Context, t *testing.T, key string) string {
	t.Helper()
	sub, err := g.client.Submit(as(ctx, key), &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
	if err != nil {
		t.Fatal(err)
	}
	return sub.GetRequest().GetRequestId()
}

// stepAs is step for a gateway with keys: one simulator step, recorded
// through a GetStatus of the request's owner.
func (g *gateway) stepAs(ctx context.Context, t *testing.T, key, rid string) {
	t.Helper()
	if err := g.sim.Advance(rid); err != nil {
		t.Fatal(err)
	}
	if _, err := g.client.GetStatus(as(ctx, key), &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: rid}); err != nil {
		t.Fatal(err)
	}
}

// statusBody is a google.rpc.Status as REST carries it.
type statusBody struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Details []struct {
		Type       string `json:"@type"`
		RetryDelay string `json:"retry_delay"`
	} `json:"details"`
}

// retry is the delay of the body's RetryInfo, or 0 when it has none.
func (b *statusBody) retry() time.Duration {
	for _, d := range b.Details {
		if strings.HasSuffix(d.Type, "/google.rpc.RetryInfo") {
			v, err := time.ParseDuration(d.RetryDelay)
			if err == nil {
				return v
			}
		}
	}
	return 0
}

// decodeStatus reads an error body: a unary call's status, or a REST
// stream's {"error": status} line.
func decodeStatus(data []byte) (statusBody, error) {
	var line struct {
		Error *statusBody `json:"error"`
	}
	if err := json.Unmarshal(data, &line); err == nil && line.Error != nil {
		return *line.Error, nil
	}
	var st statusBody
	if err := json.Unmarshal(data, &st); err != nil {
		return st, fmt.Errorf("error body %q: %w", data, err)
	}
	return st, nil
}

// restCallHeader sends a REST call as key, one that is expected to be
// refused, and returns its HTTP status, error body and header.
func (g *gateway) restCallHeader(ctx context.Context, t *testing.T, key, method, path string) (int, statusBody, http.Header) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, g.httpBase+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := g.httpc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	st, err := decodeStatus(data)
	if err != nil {
		t.Fatalf("%s %s: HTTP %d: %v", method, path, resp.StatusCode, err)
	}
	return resp.StatusCode, st, resp.Header
}

// transport is one way to watch a request.
type transport int

const (
	overGRPC transport = iota
	overNDJSON
	overSSE
)

func (tr transport) String() string {
	return [...]string{"gRPC", "NDJSON", "SSE"}[tr]
}

// watchResult is how opening a watch went: open, with stop to leave and
// drain to read it to its end, or refused with a status.
type watchResult struct {
	code codes.Code // OK when open
	http int        // the HTTP status, for the REST transports
	// retryAfter is the Retry-After header, for the REST transports.
	retryAfter string
	msg        string
	retry      time.Duration
	stop       func()
	// drain reads the open stream to its end: nil when it ended cleanly
	// after its terminal event.
	drain func() error
}

// openWatch opens a watch of rid as key over tr and, when it is accepted,
// waits for its first event: the stream then holds its slot. It is stopped
// when the test ends.
func (g *gateway) openWatch(ctx context.Context, t *testing.T, tr transport, key, rid string) *watchResult {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	r := &watchResult{stop: cancel}
	t.Cleanup(func() { r.stop() })
	if tr == overGRPC {
		stream, err := g.client.WatchRequest(as(ctx, key), &comfygatev1.WatchRequestRequest{DeploymentId: "dep-1", RequestId: rid})
		if err == nil {
			_, err = stream.Recv()
		}
		if err != nil {
			cancel()
			st := status.Convert(err)
			r.code, r.msg, r.retry = st.Code(), st.Message(), retryOf(st)
			return r
		}
		r.drain = func() error {
			for {
				_, err := stream.Recv()
				if errors.Is(err, io.EOF) {
					return nil
				}
				if err != nil {
					return err
				}
			}
		}
		return r
	}

	var req *http.Request
	var err error
	if tr == overSSE {
		req, err = g.eventsRequest(ctx, sseRequest{dep: "dep-1", rid: rid, header: "Bearer " + key})
	} else {
		req, err = http.NewRequestWithContext(ctx, http.MethodGet, g.httpBase+"/v1/deployments/dep-1/requests/"+rid+":watch", nil)
		if err == nil {
			req.Header.Set("Authorization", "Bearer "+key)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	resp, err := g.httpc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r.stop = func() {
		cancel()
		resp.Body.Close()
	}
	r.http, r.retryAfter = resp.StatusCode, resp.Header.Get("Retry-After")
	if resp.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(resp.Body)
		r.stop()
		st, err := decodeStatus(data)
		if err != nil {
			t.Fatalf("watch over %v: HTTP %d: %v", tr, resp.StatusCode, err)
		}
		r.code, r.msg, r.retry = codes.Code(st.Code), st.Message, st.retry()
		if r.code == codes.OK {
			t.Fatalf("watch over %v: HTTP %d with an OK status", tr, resp.StatusCode)
		}
		return r
	}
	if tr == overSSE {
		events := newSSEReader(resp.Body)
		if ev, err := events.next(); err != nil || ev.typ != "state" {
			t.Fatalf("first event over SSE: %+v, %v", ev, err)
		}
		r.drain = func() error {
			rest, err := events.events()
			if err != nil {
				return err
			}
			if len(rest) == 0 || rest[len(rest)-1].typ != "end" {
				return fmt.Errorf("events %+v do not close with end", rest)
			}
			return nil
		}
		return r
	}
	lines := bufio.NewReader(resp.Body)
	first, err := lines.ReadBytes('\n')
	if err != nil || !strings.Contains(string(first), `"result"`) {
		t.Fatalf("first NDJSON line %q: %v", first, err)
	}
	r.drain = func() error {
		for {
			line, err := lines.ReadBytes('\n')
			if errors.Is(err, io.EOF) && len(line) == 0 {
				return nil
			}
			if err != nil {
				return err
			}
			var msg struct {
				Error *statusBody `json:"error"`
			}
			if err := json.Unmarshal(line, &msg); err != nil {
				return fmt.Errorf("line %q: %w", line, err)
			}
			if msg.Error != nil {
				return fmt.Errorf("stream ended with an error: %+v", *msg.Error)
			}
		}
	}
	return r
}

// untilWatchOpens opens a watch until one is accepted, while the tenant's
// slots are still taken by streams whose clients have left.
func (g *gateway) untilWatchOpens(ctx context.Context, t *testing.T, tr transport, key, rid string) *watchResult {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		r := g.openWatch(ctx, t, tr, key, rid)
		switch r.code {
		case codes.OK:
			return r
		case codes.ResourceExhausted:
		default:
			t.Fatalf("watch over %v: %v %s", tr, r.code, r.msg)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no watch slot came back after a client left: %s", r.msg)
		case <-tick.C:
		}
	}
}

// retryAfterHeader is the Retry-After a REST refusal with RetryInfo d carries:
// whole seconds, rounded up, at least 1.
func retryAfterHeader(d time.Duration) string {
	return strconv.FormatInt(max(1, int64((d+time.Second-1)/time.Second)), 10)
}
