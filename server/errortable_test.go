package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/comfygate/comfygate/auth"
	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/server"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/state/memory"
)

// The error table of README.md ("The API", **Errors**), row by row, against
// the real gateway (both listeners, the generated gRPC client and the REST
// routes) in front of a stand-in for RunComfy that answers each case.

// tableToken is the gateway's own RunComfy token here: no answer, detail or
// log line may show it, even when RunComfy echoes it back.
const tableToken = "rc-token-of-the-gateway-0123456789"

// tableUpstreamTimeout is --upstream-timeout here: short, so that the rows in
// which RunComfy never answers end soon, and still far longer than a healthy
// answer from a local listener takes.
const tableUpstreamTimeout = 400 * time.Millisecond

// The API keys of the table's gateway.
const (
	tableKeyAttach = "table-key-of-tenant-a-0123456789" // tenant-a, may attach
	tableKeyPlain  = "table-key-of-tenant-b-0123456789" // tenant-b, may not
)

// answer is how the stand-in answers one call; quit is closed when the test
// ends, for answers that would otherwise wait for the client to leave.
type answer func(w http.ResponseWriter, r *http.Request, quit <-chan struct{})

// fakeRunComfy is RunComfy's API on a real listener: each operation answers
// as its answer says, or as a healthy RunComfy would.
type fakeRunComfy struct {
	url     string
	answers map[string]answer // by operation: submit, status, result, cancel

	mu    sync.Mutex
	calls int
}

func startFakeRunComfy(t *testing.T, answers map[string]answer) *fakeRunComfy {
	t.Helper()
	f := &fakeRunComfy{answers: answers}
	quit := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		op, rid := fakeOperation(r)
		if op == "" {
			http.NotFound(w, r)
			return
		}
		f.mu.Lock()
		f.calls++
		f.mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer "+tableToken {
			// The table's own mistake: every case assumes the token is sent.
			answerJSON(http.StatusBadRequest, `{"error_code":1,"error_message":"the test sent no token"}`)(w, r, quit)
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		if a := f.answers[op]; a != nil {
			a(w, r, quit)
			return
		}
		switch op {
		case "submit":
			answerJSON(http.StatusOK, `{"request_id":"rq-submitted","status_url":"http://x/s","result_url":"http://x/r","cancel_url":"http://x/c"}`)(w, r, quit)
		case "status":
			answerJSON(http.StatusOK, `{"request_id":"`+rid+`","status":"in_queue","queue_position":1}`)(w, r, quit)
		case "result":
			answerJSON(http.StatusOK, `{"request_id":"`+rid+`","status":"in_queue"}`)(w, r, quit)
		case "cancel":
			answerJSON(http.StatusOK, `{"request_id":"`+rid+`","outcome":"cancelled"}`)(w, r, quit)
		}
	}))
	t.Cleanup(func() {
		close(quit)
		srv.Close()
	})
	f.url = srv.URL
	return f
}

// upstreamCalls is how many calls reached the stand-in.
func (f *fakeRunComfy) upstreamCalls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// fakeOperation names the call r makes (and its request id), or "" for a
// path RunComfy does not serve.
func fakeOperation(r *http.Request) (op, rid string) {
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/"), "/")
	switch {
	case len(parts) == 5 && parts[4] == "inference" && r.Method == http.MethodPost:
		return "submit", ""
	case len(parts) == 7 && parts[4] == "requests":
		return parts[6], parts[5]
	}
	return "", ""
}

// answerJSON answers with code and body, and header as name, value pairs.
func answerJSON(code int, body string, header ...string) answer {
	return func(w http.ResponseWriter, _ *http.Request, _ <-chan struct{}) {
		for i := 0; i+1 < len(header); i += 2 {
			w.Header().Set(header[i], header[i+1])
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_, _ = io.WriteString(w, body)
	}
}

// answerNever takes the call and never answers: the gateway gives up
// (--upstream-timeout or the caller's deadline) and leaves.
func answerNever(_ http.ResponseWriter, r *http.Request, quit <-chan struct{}) {
	select {
	case <-r.Context().Done():
	case <-quit:
	}
}

// answerBreak takes the call, then the connection breaks before any answer.
func answerBreak(http.ResponseWriter, *http.Request, <-chan struct{}) {
	panic(http.ErrAbortHandler)
}

// answerCut starts a 200 answer, then the connection breaks mid-body.
func answerCut(w http.ResponseWriter, _ *http.Request, _ <-chan struct{}) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", "200")
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, `{"request_id":"rq-`)
	_ = http.NewResponseController(w).Flush()
	panic(http.ErrAbortHandler)
}

// unreachableURL is the address of a listener that was closed: nothing
// answers there, and connections are refused.
func unreachableURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr
}

// tableGateway is a gateway on real listeners in front of one upstream.
type tableGateway struct {
	client   comfygatev1.GatewayServiceClient
	httpBase string
	logs     *syncBuffer
}

// tableSetup varies the gateway of one row.
type tableSetup struct {
	limits server.LimitsConfig
	// maxBody is --max-body-bytes, and --max-inflight-body-bytes as well
	// (the least it may be), when set.
	maxBody int64
}

// startTableGateway runs the gateway as cmd/comfygate builds it, with API
// keys, the memory backend and --upstream-timeout tableUpstreamTimeout,
// calling RunComfy at upstreamURL. Reads are retried once rather than three
// times, so that the rows where RunComfy never answers end sooner.
func startTableGateway(t *testing.T, upstreamURL string, setup tableSetup) *tableGateway {
	t.Helper()
	up, err := runcomfy.New(runcomfy.Config{
		BaseURL: upstreamURL, Token: tableToken, Timeout: tableUpstreamTimeout,
		MaxRetries: 1, BackoffBase: time.Millisecond, BackoffMax: 2 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, nil))
	backend := memory.New(nil)
	tracker, err := state.NewTracker(state.TrackerConfig{Store: backend, Results: up})
	if err != nil {
		t.Fatal(err)
	}
	hub, err := state.NewHub(backend, 4)
	if err != nil {
		t.Fatal(err)
	}
	limits, err := server.NewTenantLimits(setup.limits)
	if err != nil {
		t.Fatal(err)
	}
	keysFile := filepath.Join(t.TempDir(), "keys")
	keysText := "tenant-a " + tableKeyAttach + " attach\ntenant-b " + tableKeyPlain + "\n"
	if err := os.WriteFile(keysFile, []byte(keysText), 0o600); err != nil {
		t.Fatal(err)
	}
	keys, err := auth.Load(keysFile)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := server.NewService(server.ServiceConfig{
		Upstream: up, Tracker: tracker, Watches: hub, Logger: log, Idempotency: backend, Limits: limits,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{
		GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Logger: log, ShutdownTimeout: 5 * time.Second,
		Auth: keys, Limits: limits, Drain: svc.Drain,
		MaxBodyBytes: setup.maxBody, MaxInflightBodyBytes: setup.maxBody,
	}, svc)
	if err != nil {
		t.Fatal(err)
	}
	// The listeners are open already: calls made before Run serves wait in
	// the kernel's queue, so there is nothing to wait for.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	conn, err := grpc.NewClient(srv.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		http.DefaultClient.CloseIdleConnections()
	})
	return &tableGateway{client: comfygatev1.NewGatewayServiceClient(conn), httpBase: "http://" + srv.HTTPAddr(), logs: logs}
}

// tableCall is one call of a row: an RPC and what it carries.
type tableCall struct {
	rpc   string // submit, status, result, cancel or watch
	key   string // API key; "" sends none
	id    string // request id
	input string // submit input
	// deadline, when set, is the caller's deadline.
	deadline time.Duration
}

// shownError is a refused call as one transport showed it to the client.
type shownError struct {
	code     codes.Code
	httpCode int // REST only
	msg      string
	info     *errdetails.ErrorInfo
	retry    time.Duration // RetryInfo's delay; 0 without one
	details  int           // how many details it carries
	// retryAfter is the Retry-After header (REST only).
	retryAfter string
	// seen is everything the client received, to look for the token in.
	seen string
}

// overGRPC makes c with the generated client and returns what the client saw.
func (g *tableGateway) overGRPC(t *testing.T, c tableCall) shownError {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if c.deadline > 0 {
		ctx, cancel = context.WithTimeout(ctx, c.deadline)
		defer cancel()
	}
	if c.key != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.key)
	}
	var err error
	switch c.rpc {
	case "submit":
		_, err = g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: c.input})
	case "status":
		_, err = g.client.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: c.id})
	case "result":
		_, err = g.client.GetResult(ctx, &comfygatev1.GetResultRequest{DeploymentId: "dep-1", RequestId: c.id})
	case "cancel":
		_, err = g.client.Cancel(ctx, &comfygatev1.CancelRequest{DeploymentId: "dep-1", RequestId: c.id})
	case "watch":
		var stream grpc.ServerStreamingClient[comfygatev1.WatchRequestResponse]
		stream, err = g.client.WatchRequest(ctx, &comfygatev1.WatchRequestRequest{DeploymentId: "dep-1", RequestId: c.id})
		if err == nil {
			_, err = stream.Recv()
		}
	default:
		t.Fatalf("no RPC %q", c.rpc)
	}
	st := status.Convert(err)
	r := shownError{code: st.Code(), msg: st.Message(), details: len(st.Details()), seen: st.Message()}
	for _, d := range st.Details() {
		r.seen += fmt.Sprint(d)
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			r.info = d
		case *errdetails.RetryInfo:
			r.retry = d.GetRetryDelay().AsDuration()
		}
	}
	return r
}

// restRoute is c's REST method, path and body.
func restRoute(c tableCall) (method, path string, body io.Reader) {
	base := "/v1/deployments/dep-1/requests"
	switch c.rpc {
	case "submit":
		return http.MethodPost, base, strings.NewReader(c.input)
	case "status":
		return http.MethodGet, base + "/" + c.id, nil
	case "result":
		return http.MethodGet, base + "/" + c.id + "/result", nil
	case "cancel":
		return http.MethodPost, base + "/" + c.id + ":cancel", nil
	default:
		return http.MethodGet, base + "/" + c.id + ":watch", nil
	}
}

// overREST makes c on its REST route and returns what the client saw.
func (g *tableGateway) overREST(t *testing.T, c tableCall) shownError {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	method, path, body := restRoute(c)
	req, err := http.NewRequestWithContext(ctx, method, g.httpBase+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.key != "" {
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
	if c.deadline > 0 {
		// How an HTTP caller gives the gateway its deadline.
		req.Header.Set("Grpc-Timeout", strconv.FormatInt(c.deadline.Milliseconds(), 10)+"m")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the answer: %v", method, path, err)
	}
	return restRefusal(t, resp, data)
}

// restRefusal reads a REST error answer: a google.rpc.Status, or for a
// stream a line {"error": status}.
func restRefusal(t *testing.T, resp *http.Response, data []byte) shownError {
	t.Helper()
	type restStatus struct {
		Code    codes.Code        `json:"code"`
		Message string            `json:"message"`
		Details []json.RawMessage `json:"details"`
	}
	var st restStatus
	var line struct {
		Error *restStatus `json:"error"`
	}
	if err := json.Unmarshal(data, &line); err == nil && line.Error != nil {
		st = *line.Error
	} else if err := json.Unmarshal(data, &st); err != nil {
		t.Fatalf("HTTP %d: the answer is not a status: %v: %s", resp.StatusCode, err, data)
	}
	var headers strings.Builder
	_ = resp.Header.Write(&headers)
	r := shownError{
		code: st.Code, httpCode: resp.StatusCode, msg: st.Message, details: len(st.Details),
		retryAfter: resp.Header.Get("Retry-After"), seen: headers.String() + string(data),
	}
	for _, raw := range st.Details {
		var d struct {
			Type       string            `json:"@type"`
			Reason     string            `json:"reason"`
			Domain     string            `json:"domain"`
			Metadata   map[string]string `json:"metadata"`
			RetryDelay string            `json:"retry_delay"`
		}
		if err := json.Unmarshal(raw, &d); err != nil {
			t.Fatalf("detail %s: %v", raw, err)
		}
		switch {
		case strings.HasSuffix(d.Type, "/google.rpc.ErrorInfo"):
			r.info = &errdetails.ErrorInfo{Reason: d.Reason, Domain: d.Domain, Metadata: d.Metadata}
		case strings.HasSuffix(d.Type, "/google.rpc.RetryInfo"):
			v, err := time.ParseDuration(d.RetryDelay)
			if err != nil {
				t.Fatalf("RetryInfo %s: %v", raw, err)
			}
			r.retry = v
		}
	}
	return r
}

// wantInfo is the ErrorInfo a row expects: domain runcomfy.net always.
type wantInfo struct {
	reason string
	// upstreamCode is metadata upstream_code; "" when it must be absent.
	upstreamCode string
	// httpStatus is metadata http_status ("0": no answer came).
	httpStatus string
	// jobMayExist is metadata job_may_exist "true"; absent otherwise.
	jobMayExist bool
}

// errorRow is one case of the table.
type errorRow struct {
	name string
	call tableCall
	// upstream answers the row's calls; unreachable instead points the
	// gateway at an address where nothing listens.
	upstream    map[string]answer
	unreachable bool
	setup       tableSetup
	// before runs first (spending a limit, filling the bytes in flight).
	before func(t *testing.T, g *tableGateway)
	// restOnly: the row has no gRPC counterpart.
	restOnly bool

	wantCode codes.Code
	wantHTTP int
	wantMsg  string // a part of the message
	// wantInfo is the ErrorInfo; nil when there must be none.
	wantInfo *wantInfo
	// wantRetry is the RetryInfo delay; -1 for any positive one; 0 for none.
	wantRetry time.Duration
	// retryAfter is REST's Retry-After when there is no RetryInfo (which
	// sets it, in whole seconds rounded up).
	retryAfter string
	// noDetails: the answer carries no detail at all.
	noDetails bool
	// noUpstream: RunComfy is never called.
	noUpstream bool
}

// Calls every row starts from.
var (
	submitCall = tableCall{rpc: "submit", key: tableKeyAttach, input: `{"prompt":"a cat","seed":42}`}
	statusCall = tableCall{rpc: "status", key: tableKeyAttach, id: "rq-unknown"}
	resultCall = tableCall{rpc: "result", key: tableKeyAttach, id: "rq-unknown"}
	cancelCall = tableCall{rpc: "cancel", key: tableKeyAttach, id: "rq-unknown"}
	watchCall  = tableCall{rpc: "watch", key: tableKeyAttach, id: "rq-unknown"}
)

// with returns c changed by f.
func (c tableCall) with(f func(*tableCall)) tableCall {
	f(&c)
	return c
}

// upstreamInfo is the ErrorInfo of an answer with RunComfy's error code.
func upstreamInfo(code string, httpStatus int) *wantInfo {
	return &wantInfo{reason: "UPSTREAM_" + code, upstreamCode: code, httpStatus: strconv.Itoa(httpStatus)}
}

// httpInfo is the ErrorInfo of an error answer without an error code.
func httpInfo(httpStatus int) *wantInfo {
	s := strconv.Itoa(httpStatus)
	return &wantInfo{reason: "UPSTREAM_HTTP_" + s, httpStatus: s}
}

// noAnswerInfo is the ErrorInfo of a submit that may have started a job.
func noAnswerInfo(httpStatus int) *wantInfo {
	return &wantInfo{reason: "UPSTREAM_NO_ANSWER", httpStatus: strconv.Itoa(httpStatus), jobMayExist: true}
}

// errorTable is README's error table, in its order: each group of rows pins
// one row of it, with every RunComfy answer that row names.
func errorTable() []errorRow {
	notFound := func(name string, call tableCall, upstream map[string]answer) errorRow {
		return errorRow{name: name, call: call, upstream: upstream,
			wantCode: codes.NotFound, wantHTTP: http.StatusNotFound, wantMsg: "no such request", noDetails: true}
	}
	const (
		validation = `{"error_code":422001,"error_message":"Invalid overrides","detail":[{"loc":["overrides","99"],"msg":"unknown node","input":"Bearer ` + tableToken + `"}]}`
		notFound4  = `{"error_code":404001,"error_message":"Request not found"}`
		notOwned   = `{"error_code":403003,"error_message":"Forbidden"}`
		internal   = `{"error_code":500001,"error_message":"Internal error"}`
		badToken   = `{"error_code":401001,"error_message":"Invalid token: Bearer ` + tableToken + `","detail":"` + tableToken + `"}`
	)
	return []errorRow{
		// Malformed id or input, or RunComfy rejected the input.
		{name: "malformed request id", call: statusCall.with(func(c *tableCall) { c.id = "bad.id" }),
			wantCode: codes.InvalidArgument, wantHTTP: 400, wantMsg: "request_id", noUpstream: true},
		{name: "malformed input", call: submitCall.with(func(c *tableCall) { c.input = `[1,2]` }),
			wantCode: codes.InvalidArgument, wantHTTP: 400, wantMsg: "must be a JSON object", noUpstream: true},
		{name: "RunComfy rejects the input (422001)", call: submitCall,
			upstream: map[string]answer{"submit": answerJSON(422, validation)},
			wantCode: codes.InvalidArgument, wantHTTP: 400, wantMsg: "unknown node", wantInfo: upstreamInfo("422001", 422)},
		{name: "RunComfy rejects the input (HTTP 400, no code)", call: submitCall,
			upstream: map[string]answer{"submit": answerJSON(400, `{"message":"bad seed"}`)},
			wantCode: codes.InvalidArgument, wantHTTP: 400, wantMsg: "bad seed", wantInfo: httpInfo(400)},
		{name: "RunComfy rejects the input (HTTP 422, no code)", call: submitCall,
			upstream: map[string]answer{"submit": answerJSON(422, `{"detail":[{"msg":"not an int"}]}`)},
			wantCode: codes.InvalidArgument, wantHTTP: 400, wantMsg: "not an int", wantInfo: httpInfo(422)},
		{name: "an error code the gateway does not know goes by the HTTP status", call: submitCall,
			upstream: map[string]answer{"submit": answerJSON(400, `{"error_code":499999,"error_message":"new rule"}`)},
			wantCode: codes.InvalidArgument, wantHTTP: 400, wantMsg: "new rule", wantInfo: upstreamInfo("499999", 400)},

		// A request nobody may see, or RunComfy does not know: one answer.
		notFound("unknown request, key without attach", statusCall.with(func(c *tableCall) { c.key = tableKeyPlain }), nil),
		notFound("status: RunComfy does not know the request (404001)", statusCall,
			map[string]answer{"status": answerJSON(404, notFound4)}),
		notFound("status: not the account's request (403003)", statusCall,
			map[string]answer{"status": answerJSON(403, notOwned)}),
		notFound("status: HTTP 200 with error_code 404001", statusCall,
			map[string]answer{"status": answerJSON(200, notFound4)}),
		notFound("result: RunComfy does not know the request (404001)", resultCall,
			map[string]answer{"result": answerJSON(404, notFound4)}),
		notFound("cancel: RunComfy does not know the request (404001)", cancelCall,
			map[string]answer{"cancel": answerJSON(404, notFound4)}),
		notFound("watch: RunComfy does not know the request (404001)", watchCall,
			map[string]answer{"status": answerJSON(404, notFound4)}),

		// Submit to a deployment RunComfy does not know, or not the account's.
		{name: "submit: unknown deployment (404001)", call: submitCall,
			upstream: map[string]answer{"submit": answerJSON(404, `{"error_code":404001,"message":"Deployment not found"}`)},
			wantCode: codes.NotFound, wantHTTP: 404, wantMsg: "Deployment not found", wantInfo: upstreamInfo("404001", 404)},
		{name: "submit: deployment not the account's (403003)", call: submitCall,
			upstream: map[string]answer{"submit": answerJSON(403, `{"error_code":403003,"error_message":"Deployment not owned"}`)},
			wantCode: codes.NotFound, wantHTTP: 404, wantMsg: "Deployment not owned", wantInfo: upstreamInfo("403003", 403)},

		// No API key, or an unknown one.
		{name: "no API key", call: statusCall.with(func(c *tableCall) { c.key = "" }),
			wantCode: codes.Unauthenticated, wantHTTP: 401, noUpstream: true},
		{name: "unknown API key", call: submitCall.with(func(c *tableCall) { c.key = "not-a-key-of-this-gateway-0123" }),
			wantCode: codes.Unauthenticated, wantHTTP: 401, noUpstream: true},

		// The rows between (bodies and messages too large, a message that
		// does not decode, a path that is not clean, a cross-origin write,
		// a method a route does not take) are not calls a tableCall makes:
		// their own tests pin them (TestOversizeBodyIs413OnEveryRoute,
		// TestUndecodableMessagesAreInvalidArgument,
		// TestUncleanPathsAreRefusedNotRedirected, TestCrossOriginWritesRefused,
		// TestWrongMethodIs405WithAllow, and TestGRPCSubmitsWaitForRoom in e2e).

		// A per-tenant limit.
		{name: "per-tenant submit rate", call: submitCall,
			setup:    tableSetup{limits: server.LimitsConfig{SubmitRate: 0.01, SubmitBurst: 1}},
			before:   func(t *testing.T, g *tableGateway) { g.mustSucceed(t, submitCall) },
			wantCode: codes.ResourceExhausted, wantHTTP: 429, wantMsg: "submit", wantRetry: -1},
		{name: "per-tenant read rate", call: statusCall,
			setup:    tableSetup{limits: server.LimitsConfig{ReadRate: 0.01, ReadBurst: 1}},
			before:   func(t *testing.T, g *tableGateway) { g.mustSucceed(t, statusCall) },
			wantCode: codes.ResourceExhausted, wantHTTP: 429, wantMsg: "read", wantRetry: -1},

		// The replica's REST bodies in flight.
		{name: "REST bodies in flight at the limit", call: submitCall, restOnly: true,
			setup: tableSetup{maxBody: 1024}, before: func(t *testing.T, g *tableGateway) { g.holdInflight(t) },
			wantCode: codes.Unavailable, wantHTTP: 503, wantMsg: "in flight", retryAfter: "1"},

		// The deployment cannot run jobs.
		{name: "insufficient funds (10001, HTTP 402)", call: submitCall,
			upstream: map[string]answer{"submit": answerJSON(402, `{"error_code":10001,"error_message":"Insufficient balance"}`)},
			wantCode: codes.FailedPrecondition, wantHTTP: 400, wantMsg: "insufficient funds", wantInfo: upstreamInfo("10001", 402)},
		{name: "HTTP 402 without a code", call: submitCall,
			upstream: map[string]answer{"submit": answerJSON(402, `{}`)},
			wantCode: codes.FailedPrecondition, wantHTTP: 400, wantMsg: "insufficient funds", wantInfo: httpInfo(402)},
		{name: "deployment disabled (10002)", call: submitCall,
			upstream: map[string]answer{"submit": answerJSON(403, `{"error_code":10002,"error_message":"Deployment is disabled"}`)},
			wantCode: codes.FailedPrecondition, wantHTTP: 400, wantMsg: "disabled", wantInfo: upstreamInfo("10002", 403)},
		{name: "deployment deleted (10003)", call: submitCall,
			upstream: map[string]answer{"submit": answerJSON(404, `{"error_code":10003,"error_message":"Deployment has been deleted"}`)},
			wantCode: codes.FailedPrecondition, wantHTTP: 400, wantMsg: "deleted", wantInfo: upstreamInfo("10003", 404)},
		{name: "status of a deleted deployment's request (10003)", call: statusCall,
			upstream: map[string]answer{"status": answerJSON(404, `{"error_code":10003,"error_message":"Deployment has been deleted"}`)},
			wantCode: codes.FailedPrecondition, wantHTTP: 400, wantMsg: "deleted", wantInfo: upstreamInfo("10003", 404)},

		// RunComfy rate limits.
		{name: "RunComfy rate limits a submit (HTTP 429, Retry-After)", call: submitCall,
			upstream: map[string]answer{"submit": answerJSON(429, `{"message":"Too many requests"}`, "Retry-After", "7")},
			wantCode: codes.ResourceExhausted, wantHTTP: 429, wantMsg: "rate limiting", wantInfo: httpInfo(429), wantRetry: 7 * time.Second},
		{name: "RunComfy rate limits a submit (HTTP 429, no Retry-After)", call: submitCall,
			upstream: map[string]answer{"submit": answerJSON(429, `{}`)},
			wantCode: codes.ResourceExhausted, wantHTTP: 429, wantMsg: "rate limiting", wantInfo: httpInfo(429), wantRetry: time.Second},
		{name: "RunComfy rate limits a read past what the gateway waits", call: resultCall,
			upstream: map[string]answer{"result": answerJSON(429, `{}`, "Retry-After", "30")},
			wantCode: codes.ResourceExhausted, wantHTTP: 429, wantMsg: "rate limiting", wantInfo: httpInfo(429), wantRetry: 30 * time.Second},

		// RunComfy fails, cannot be reached, or the connection breaks.
		{name: "status: RunComfy internal error (500001)", call: statusCall,
			upstream: map[string]answer{"status": answerJSON(500, internal)},
			wantCode: codes.Unavailable, wantHTTP: 503, wantInfo: upstreamInfo("500001", 500)},
		{name: "submit: RunComfy internal error (500001)", call: submitCall,
			upstream: map[string]answer{"submit": answerJSON(500, internal)},
			wantCode: codes.Unavailable, wantHTTP: 503, wantInfo: upstreamInfo("500001", 500)},
		{name: "submit: HTTP 503 without a code", call: submitCall,
			upstream: map[string]answer{"submit": answerJSON(503, `<html>down</html>`)},
			wantCode: codes.Unavailable, wantHTTP: 503, wantInfo: httpInfo(503)},
		{name: "result: HTTP 502 from a proxy", call: resultCall,
			upstream: map[string]answer{"result": answerJSON(502, `<html>bad gateway</html>`)},
			wantCode: codes.Unavailable, wantHTTP: 503, wantInfo: httpInfo(502)},
		{name: "status: an answer that is not JSON", call: statusCall,
			upstream: map[string]answer{"status": answerJSON(200, `<html>maintenance</html>`)},
			wantCode: codes.Unavailable, wantHTTP: 503, wantInfo: httpInfo(200)},
		{name: "watch: RunComfy internal error (500001)", call: watchCall,
			upstream: map[string]answer{"status": answerJSON(500, internal)},
			wantCode: codes.Unavailable, wantHTTP: 503, wantInfo: upstreamInfo("500001", 500)},
		{name: "status: RunComfy unreachable", call: statusCall, unreachable: true,
			wantCode: codes.Unavailable, wantHTTP: 503, wantMsg: "could not be reached",
			wantInfo: &wantInfo{reason: "UPSTREAM_UNAVAILABLE", httpStatus: "0"}},
		{name: "submit: RunComfy unreachable (nothing was sent)", call: submitCall, unreachable: true,
			wantCode: codes.Unavailable, wantHTTP: 503, wantMsg: "could not be reached",
			wantInfo: &wantInfo{reason: "UPSTREAM_UNAVAILABLE", httpStatus: "0"}},
		{name: "status: the connection breaks", call: statusCall,
			upstream: map[string]answer{"status": answerBreak},
			wantCode: codes.Unavailable, wantHTTP: 503, wantMsg: "broke",
			wantInfo: &wantInfo{reason: "UPSTREAM_UNAVAILABLE", httpStatus: "0"}},

		// RunComfy does not answer in time.
		{name: "status: no answer within --upstream-timeout", call: statusCall,
			upstream: map[string]answer{"status": answerNever},
			wantCode: codes.DeadlineExceeded, wantHTTP: 504, wantMsg: "in time",
			wantInfo: &wantInfo{reason: "UPSTREAM_TIMEOUT", httpStatus: "0"}},
		{name: "cancel: no answer within --upstream-timeout", call: cancelCall,
			upstream: map[string]answer{"cancel": answerNever},
			wantCode: codes.DeadlineExceeded, wantHTTP: 504, wantMsg: "in time",
			wantInfo: &wantInfo{reason: "UPSTREAM_TIMEOUT", httpStatus: "0"}},
		{name: "status: no answer within the caller's deadline", call: statusCall.with(func(c *tableCall) { c.deadline = 150 * time.Millisecond }),
			upstream: map[string]answer{"status": answerNever},
			wantCode: codes.DeadlineExceeded, wantHTTP: 504, noDetails: true},

		// A submit RunComfy received but did not answer: a job may exist.
		{name: "submit: no answer within --upstream-timeout", call: submitCall,
			upstream: map[string]answer{"submit": answerNever},
			wantCode: codes.DeadlineExceeded, wantHTTP: 504, wantMsg: "may have started", wantInfo: noAnswerInfo(0)},
		{name: "submit: the connection breaks before the answer", call: submitCall,
			upstream: map[string]answer{"submit": answerBreak},
			wantCode: codes.Unavailable, wantHTTP: 503, wantMsg: "may have started", wantInfo: noAnswerInfo(0)},
		{name: "submit: the connection breaks mid-answer", call: submitCall,
			upstream: map[string]answer{"submit": answerCut},
			wantCode: codes.Unavailable, wantHTTP: 503, wantMsg: "may have started", wantInfo: noAnswerInfo(200)},
		{name: "submit: HTTP 200 without a request id", call: submitCall,
			upstream: map[string]answer{"submit": answerJSON(200, `{"status":"ok"}`)},
			wantCode: codes.Unavailable, wantHTTP: 503, wantMsg: "may have started", wantInfo: noAnswerInfo(200)},
		{name: "submit: HTTP 504 from a proxy", call: submitCall,
			upstream: map[string]answer{"submit": answerJSON(504, `<html>gateway timeout</html>`)},
			wantCode: codes.DeadlineExceeded, wantHTTP: 504, wantMsg: "may have started", wantInfo: noAnswerInfo(504)},
		{name: "submit: HTTP 502 from a proxy", call: submitCall,
			upstream: map[string]answer{"submit": answerJSON(502, `<html>bad gateway</html>`)},
			wantCode: codes.Unavailable, wantHTTP: 503, wantMsg: "may have started", wantInfo: noAnswerInfo(502)},

		// The gateway's own RunComfy token is rejected.
		{name: "submit: the gateway's token is rejected (401001)", call: submitCall,
			upstream: map[string]answer{"submit": answerJSON(401, badToken)},
			wantCode: codes.Internal, wantHTTP: 500, wantMsg: "misconfigured", wantInfo: upstreamInfo("401001", 401)},
		{name: "status: the gateway's token is rejected (401001)", call: statusCall,
			upstream: map[string]answer{"status": answerJSON(401, badToken)},
			wantCode: codes.Internal, wantHTTP: 500, wantMsg: "misconfigured", wantInfo: upstreamInfo("401001", 401)},
		{name: "submit: HTTP 401 without a code", call: submitCall,
			upstream: map[string]answer{"submit": answerJSON(401, `{"message":"Unauthorized"}`)},
			wantCode: codes.Internal, wantHTTP: 500, wantMsg: "misconfigured", wantInfo: httpInfo(401)},
	}
}

// TestErrorTable: every row of README's error table, and every error
// RunComfy documents, reaches the client as the table says, over gRPC and
// REST alike: the code and HTTP status, the message, the ErrorInfo
// (domain runcomfy.net, the upstream code and HTTP status) or its absence,
// RetryInfo, and never the gateway's RunComfy token, in an answer or a log
// line.
func TestErrorTable(t *testing.T) {
	for _, row := range errorTable() {
		t.Run(row.name, func(t *testing.T) {
			upstream := unreachableURL(t)
			var fake *fakeRunComfy
			if !row.unreachable {
				fake = startFakeRunComfy(t, row.upstream)
				upstream = fake.url
			}
			g := startTableGateway(t, upstream, row.setup)
			if row.before != nil {
				row.before(t, g)
			}
			var callsBefore int
			if fake != nil {
				callsBefore = fake.upstreamCalls()
			}

			if !row.restOnly {
				checkRefusal(t, "gRPC", row, g.overGRPC(t, row.call))
			}
			checkRefusal(t, "REST", row, g.overREST(t, row.call))
			if row.noUpstream && fake != nil {
				if n := fake.upstreamCalls() - callsBefore; n != 0 {
					t.Errorf("RunComfy was called %d times, want never", n)
				}
			}
			if logs := g.logs.String(); strings.Contains(logs, tableToken) {
				t.Errorf("the gateway's log shows its RunComfy token:\n%s", logs)
			}
		})
	}
}

// checkRefusal compares what one transport showed with the row.
func checkRefusal(t *testing.T, over string, row errorRow, r shownError) {
	t.Helper()
	if r.code != row.wantCode {
		t.Errorf("%s: code %v (%q), want %v", over, r.code, r.msg, row.wantCode)
	}
	if over == "REST" && r.httpCode != row.wantHTTP {
		t.Errorf("REST: HTTP %d (%v %q), want %d", r.httpCode, r.code, r.msg, row.wantHTTP)
	}
	if !strings.Contains(r.msg, row.wantMsg) {
		t.Errorf("%s: message %q does not say %q", over, r.msg, row.wantMsg)
	}
	if strings.Contains(r.seen, tableToken) {
		t.Errorf("%s: the answer shows the gateway's RunComfy token: %s", over, r.seen)
	}
	switch w := row.wantInfo; {
	case w == nil && r.info != nil:
		t.Errorf("%s: ErrorInfo %v, want none", over, r.info)
	case w != nil && r.info == nil:
		t.Errorf("%s: no ErrorInfo (%v %q), want reason %s", over, r.code, r.msg, w.reason)
	case w != nil:
		md := r.info.GetMetadata()
		if r.info.GetDomain() != "runcomfy.net" || r.info.GetReason() != w.reason {
			t.Errorf("%s: ErrorInfo %s/%s, want runcomfy.net/%s", over, r.info.GetDomain(), r.info.GetReason(), w.reason)
		}
		if got, ok := md["upstream_code"]; got != w.upstreamCode || ok != (w.upstreamCode != "") {
			t.Errorf("%s: upstream_code %q (present %v), want %q", over, got, ok, w.upstreamCode)
		}
		if got := md["http_status"]; got != w.httpStatus {
			t.Errorf("%s: http_status %q, want %q", over, got, w.httpStatus)
		}
		if got, ok := md["job_may_exist"]; ok != w.jobMayExist || (ok && got != "true") {
			t.Errorf("%s: job_may_exist %q (present %v), want present %v", over, got, ok, w.jobMayExist)
		}
	}
	switch {
	case row.wantRetry < 0 && r.retry <= 0:
		t.Errorf("%s: RetryInfo %v, want a positive one", over, r.retry)
	case row.wantRetry >= 0 && r.retry != row.wantRetry:
		t.Errorf("%s: RetryInfo %v, want %v", over, r.retry, row.wantRetry)
	}
	if over == "REST" {
		wantAfter := row.retryAfter
		if r.retry > 0 {
			wantAfter = strconv.FormatInt(max(1, int64((r.retry+time.Second-1)/time.Second)), 10)
		}
		if r.retryAfter != wantAfter {
			t.Errorf("REST: Retry-After %q, want %q", r.retryAfter, wantAfter)
		}
	}
	if row.noDetails && r.details != 0 {
		t.Errorf("%s: %d details, want none", over, r.details)
	}
}

// mustSucceed makes c over gRPC and fails the test unless it succeeds.
func (g *tableGateway) mustSucceed(t *testing.T, c tableCall) {
	t.Helper()
	if r := g.overGRPC(t, c); r.code != codes.OK {
		t.Fatalf("%s before the row: %v %q", c.rpc, r.code, r.msg)
	}
}

// holdInflight sends a REST submit whose body (of unknown length, so the
// whole --max-body-bytes is reserved for it) stays unfinished until the test
// ends, and returns once the gateway reads it: the bytes in flight are then
// full. The event is the interim 100 Continue, which the gateway's HTTP
// server sends when the handler first reads the body, after the reservation.
func (g *tableGateway) holdInflight(t *testing.T) {
	t.Helper()
	pr, pw := io.Pipe()
	reading := make(chan struct{})
	var once sync.Once
	trace := &httptrace.ClientTrace{Got100Continue: func() { once.Do(func() { close(reading) }) }}
	ctx, cancel := context.WithCancel(httptrace.WithClientTrace(context.Background(), trace))
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, g.httpBase+"/v1/deployments/dep-1/requests", pr)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+tableKeyAttach)
	req.Header.Set("Expect", "100-continue")
	client := &http.Client{Transport: &http.Transport{ExpectContinueTimeout: time.Minute}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
		}
	}()
	go func() { _, _ = pw.Write([]byte(`{"prompt":`)) }() // the body starts, and never ends
	t.Cleanup(func() {
		cancel()
		pw.CloseWithError(io.ErrUnexpectedEOF)
		<-done
		client.CloseIdleConnections()
	})
	select {
	case <-reading:
	case <-done:
		t.Fatal("the held submit ended before the gateway read its body")
	case <-time.After(10 * time.Second):
		t.Fatal("the gateway never read the held submit's body")
	}
}

// TestSubmitWithoutAnswerKeepsItsKey pins what the advice of a submit
// without an answer (README's error table, and the error's message) rests
// on: the gateway keeps the idempotency key of a submit that reached RunComfy
// and got no answer, so a retry with the same key is refused (a job may
// exist) and never reaches RunComfy, while a submit that failed with an
// answer saying no job started frees its key for a retry.
func TestSubmitWithoutAnswerKeepsItsKey(t *testing.T) {
	var mu sync.Mutex
	submits := 0
	fake := startFakeRunComfy(t, map[string]answer{"submit": func(w http.ResponseWriter, r *http.Request, quit <-chan struct{}) {
		mu.Lock()
		submits++
		n := submits
		mu.Unlock()
		switch n {
		case 1:
			answerBreak(w, r, quit)
		case 2:
			answerJSON(http.StatusInternalServerError, `{"error_code":500001,"message":"Internal server error"}`)(w, r, quit)
		default:
			answerJSON(http.StatusOK, `{"request_id":"rq-third"}`)(w, r, quit)
		}
	}})
	g := startTableGateway(t, fake.url, tableSetup{})
	ctx := metadata.AppendToOutgoingContext(ctxT(t), "authorization", "Bearer "+tableKeyAttach)
	req := &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{"prompt":"a cat"}`, IdempotencyKey: "order-1"}

	_, err := g.client.Submit(ctx, req)
	st := status.Convert(err)
	if st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "never sent twice") {
		t.Fatalf("first submit: %v %q, want UNAVAILABLE saying a retry with the key is never sent twice", st.Code(), st.Message())
	}
	for i := range 2 {
		_, err = g.client.Submit(ctx, req)
		st = status.Convert(err)
		info := errorInfoOf(st)
		if st.Code() != codes.FailedPrecondition || info == nil || info.GetReason() != "UPSTREAM_NO_ANSWER" || info.GetMetadata()["job_may_exist"] != "true" {
			t.Fatalf("retry %d with the same key: %v %q (%v), want FAILED_PRECONDITION, UPSTREAM_NO_ANSWER, job_may_exist", i+1, st.Code(), st.Message(), info)
		}
	}
	if got, want := fake.upstreamCalls(), 1; got != want {
		t.Fatalf("RunComfy saw %d submits, want %d: a retry with the key of an unanswered submit reached it", got, want)
	}

	// An answer that says no job started frees the key.
	req.IdempotencyKey = "order-2"
	if _, err := g.client.Submit(ctx, req); status.Code(err) != codes.Unavailable {
		t.Fatalf("submit answered 500001: %v, want UNAVAILABLE", err)
	}
	again, err := g.client.Submit(ctx, req)
	if err != nil {
		t.Fatalf("retry after an answered failure: %v", err)
	}
	if got, want := again.GetRequest().GetRequestId(), "rq-third"; got != want {
		t.Errorf("retry answered %q, want %q", got, want)
	}
}

// errorInfoOf returns the status's ErrorInfo detail, nil when it has none.
func errorInfoOf(st *status.Status) *errdetails.ErrorInfo {
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info
		}
	}
	return nil
}

// TestGRPCSubmitWithTheBudgetAtOneBody: with --max-inflight-body-bytes at its
// least (one body), a gRPC submit, which reserves room for its largest
// message before reading it, still finds room and goes through.
func TestGRPCSubmitWithTheBudgetAtOneBody(t *testing.T) {
	fake := startFakeRunComfy(t, nil)
	g := startTableGateway(t, fake.url, tableSetup{maxBody: 1024})
	ctx := metadata.AppendToOutgoingContext(ctxT(t), "authorization", "Bearer "+tableKeyAttach)
	for i := range 3 {
		resp, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{"prompt":"a cat"}`})
		if err != nil {
			t.Fatalf("submit %d: %v", i+1, err)
		}
		if resp.GetRequest().GetRequestId() == "" {
			t.Fatalf("submit %d answered %v", i+1, resp)
		}
	}
}

// TestGRPCInputOverTheBodyLimit: a gRPC submit whose input_json is larger
// than --max-body-bytes is refused as a REST body of that size is
// (INVALID_ARGUMENT, ErrorInfo BODY_TOO_LARGE with the limit), though its
// message is within grpc-go's limit (the body limit plus 64 KiB for the
// fields around an input); one of exactly the limit goes through. Nothing
// reaches RunComfy for the refused one.
func TestGRPCInputOverTheBodyLimit(t *testing.T) {
	fake := startFakeRunComfy(t, nil)
	g := startTableGateway(t, fake.url, tableSetup{maxBody: 1024})
	ctx := metadata.AppendToOutgoingContext(ctxT(t), "authorization", "Bearer "+tableKeyAttach)
	input := func(n int) string { return `{"p":"` + strings.Repeat("x", n-len(`{"p":""}`)) + `"}` }
	_, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: input(1025)})
	st := status.Convert(err)
	info := errorInfoOf(st)
	if st.Code() != codes.InvalidArgument || info.GetReason() != "BODY_TOO_LARGE" || info.GetMetadata()["limit"] != "1024" || !strings.Contains(st.Message(), "input_json") {
		t.Errorf("input of 1025 bytes: %v (%v), want INVALID_ARGUMENT, BODY_TOO_LARGE with limit 1024, naming input_json", err, info)
	}
	if calls := fake.upstreamCalls(); calls != 0 {
		t.Errorf("RunComfy was called %d times for a refused submit", calls)
	}
	if _, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: input(1024)}); err != nil {
		t.Errorf("input of 1024 bytes: %v, want it submitted", err)
	}
	_, err = g.client.SubmitAndWait(ctx, &comfygatev1.SubmitAndWaitRequest{Submit: &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: input(1025)}})
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || errorInfoOf(st).GetReason() != "BODY_TOO_LARGE" {
		t.Errorf("SubmitAndWait with an input of 1025 bytes: %v, want INVALID_ARGUMENT, BODY_TOO_LARGE", err)
	}
	if calls := fake.upstreamCalls(); calls != 1 {
		t.Errorf("RunComfy was called %d times, want once (the submit that went through)", calls)
	}
}
