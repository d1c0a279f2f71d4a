package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/grpc/codes"

	"github.com/comfygate/comfygate"
	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
)

// sseEvent is one dispatched Server-Sent Event.
type sseEvent struct {
	id, typ, data string
}

// sseReader parses text/event-stream as EventSource does (the subset the
// gateway writes): fields up to a blank line make an event, ":" lines are
// comments.
type sseReader struct {
	sc       *bufio.Scanner
	comments []string
}

func newSSEReader(r io.Reader) *sseReader {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	return &sseReader{sc: sc}
}

// next returns the next event, or io.EOF when the stream ended cleanly.
func (s *sseReader) next() (sseEvent, error) {
	var ev sseEvent
	var data []string
	seen := false
	for s.sc.Scan() {
		line := s.sc.Text()
		if line == "" {
			if !seen {
				continue
			}
			ev.data = strings.Join(data, "\n")
			return ev, nil
		}
		if strings.HasPrefix(line, ":") {
			s.comments = append(s.comments, strings.TrimSpace(line[1:]))
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		seen = true
		switch field {
		case "id":
			ev.id = value
		case "event":
			ev.typ = value
		case "data":
			data = append(data, value)
		}
	}
	if err := s.sc.Err(); err != nil {
		return ev, err
	}
	if seen {
		return ev, errors.New("stream ended inside an event")
	}
	return ev, io.EOF
}

// rest returns the remaining events up to the end of the stream.
func (s *sseReader) rest(t *testing.T) []sseEvent {
	t.Helper()
	out, err := s.events()
	if err != nil {
		t.Fatalf("reading events after %v: %v", out, err)
	}
	return out
}

// all is rest for goroutines: the events read until the stream ended, cleanly
// or not.
func (s *sseReader) all() []sseEvent {
	out, _ := s.events()
	return out
}

func (s *sseReader) events() ([]sseEvent, error) {
	var out []sseEvent
	for {
		ev, err := s.next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, ev)
	}
}

// sseState is the part of a state event's data the tests check.
type sseState struct {
	RequestID string `json:"request_id"`
	Status    string `json:"status"`
	Seq       int64  `json:"seq,string"`
	Epoch     int64  `json:"epoch,string"`
}

// sseID is the id of the SSE event of a state: its epoch, seq and status
// (as the JSON names it, STATUS_RUNNING) as a word.
func sseID(epoch, seq int64, status string) string {
	return fmt.Sprintf("%d-%d-%s", epoch, seq, strings.ToLower(strings.TrimPrefix(status, "STATUS_")))
}

func decodeState(t *testing.T, ev sseEvent) sseState {
	t.Helper()
	if ev.typ != "state" {
		t.Fatalf("event %+v, want a state event", ev)
	}
	var st sseState
	if err := json.Unmarshal([]byte(ev.data), &st); err != nil {
		t.Fatalf("state data %q: %v", ev.data, err)
	}
	if st.Epoch == 0 {
		t.Errorf("state %+v has no epoch", st)
	}
	if got, want := ev.id, sseID(st.Epoch, st.Seq, st.Status); got != want {
		t.Errorf("event id %q, want epoch-seq-status %q", got, want)
	}
	return st
}

// sseRequest describes one events call.
type sseRequest struct {
	dep, rid    string
	header      string // Authorization value, none when empty
	lastEventID string // the Last-Event-ID header, none when empty
	query       url.Values
}

func (g *gateway) eventsPath(dep, rid string) string {
	return "/v1/deployments/" + dep + "/requests/" + rid + "/events"
}

// eventsRequest builds an events call.
func (g *gateway) eventsRequest(ctx context.Context, r sseRequest) (*http.Request, error) {
	u := g.httpBase + g.eventsPath(r.dep, r.rid)
	if len(r.query) > 0 {
		u += "?" + r.query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	if r.header != "" {
		req.Header.Set("Authorization", r.header)
	}
	if r.lastEventID != "" {
		req.Header.Set("Last-Event-ID", r.lastEventID)
	}
	return req, nil
}

// openEvents starts an events call and returns the response once its headers
// arrive; the body is closed when the test ends.
func (g *gateway) openEvents(ctx context.Context, t *testing.T, r sseRequest) *http.Response {
	t.Helper()
	req, err := g.eventsRequest(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := g.httpc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// step drives a request of the manual simulator one step and has the
// gateway record it (GetStatus reads upstream and applies what it finds).
func (g *gateway) step(ctx context.Context, t *testing.T, dep, rid string) {
	t.Helper()
	if err := g.sim.Advance(rid); err != nil {
		t.Fatal(err)
	}
	if _, err := g.client.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: dep, RequestId: rid}); err != nil {
		t.Fatal(err)
	}
}

func (g *gateway) submit(ctx context.Context, t *testing.T, dep string) string {
	t.Helper()
	sub, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: dep, InputJson: `{}`})
	if err != nil {
		t.Fatal(err)
	}
	return sub.GetRequest().GetRequestId()
}

// checkErrorBody decodes a REST error body and checks its gRPC code.
func checkErrorBody(t *testing.T, body []byte, want codes.Code) map[string]any {
	t.Helper()
	var st map[string]any
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatalf("error body %q is not JSON: %v", body, err)
	}
	if got, _ := st["code"].(float64); codes.Code(got) != want {
		t.Errorf("error body %s: code %v, want %d (%v)", body, st["code"], want, want)
	}
	return st
}

// TestEventsStreamEveryStateThenEnd: one state event per change, id = seq, data
// = the REST JSON of the state, then "end", then the stream closes.
func TestEventsStreamEveryStateThenEnd(t *testing.T) {
	g := startGateway(t)
	ctx := ctxT(t)
	rid := g.submit(ctx, t, "dep-1")
	resp := g.openEvents(ctx, t, sseRequest{dep: "dep-1", rid: rid})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("HTTP %d, want 200", resp.StatusCode)
	}
	for h, want := range map[string]string{
		"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
	} {
		if got := resp.Header.Get(h); got != want {
			t.Errorf("%s = %q, want %q", h, got, want)
		}
	}
	events := newSSEReader(resp.Body)
	var got []sseState
	var last sseEvent
	for _, advance := range []bool{false, true, true} {
		if advance {
			g.step(ctx, t, "dep-1", rid)
		}
		ev, err := events.next()
		if err != nil {
			t.Fatalf("after %v: %v", got, err)
		}
		got, last = append(got, decodeState(t, ev)), ev
	}
	for i, want := range []string{"STATUS_QUEUED", "STATUS_RUNNING", "STATUS_SUCCEEDED"} {
		if got[i].Seq != int64(i+1) || got[i].Status != want || got[i].RequestID != rid {
			t.Errorf("event %d = %+v, want seq %d %s of %s", i, got[i], i+1, want, rid)
		}
	}
	tail := events.rest(t)
	if wantEnd := fmt.Sprintf(`{"last_seq":"3","last_epoch":"%d"}`, got[2].Epoch); len(tail) != 1 || tail[0].typ != "end" || tail[0].data != wantEnd {
		t.Errorf("after the terminal state: %+v, want one end event naming seq 3", tail)
	}

	// The data is exactly what REST answers for the request.
	code, status := g.rest(t, http.MethodGet, "/v1/deployments/dep-1/requests/"+rid, nil)
	if code != http.StatusOK {
		t.Fatalf("REST status: HTTP %d", code)
	}
	var data map[string]any
	if err := json.Unmarshal([]byte(last.data), &data); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(data, status["request"]) {
		t.Errorf("terminal event data\n%v\nREST answers\n%v", data, status["request"])
	}
}

// TestEventsResume: Last-Event-ID (what EventSource sends on reconnect) or
// ?last_event_id= makes the stream start after that seq; the header wins.
func TestEventsResume(t *testing.T) {
	g := startGateway(t)
	ctx := ctxT(t)
	rid := g.submit(ctx, t, "dep-1")
	g.step(ctx, t, "dep-1", rid) // seq 2: running

	tests := []struct {
		name        string
		lastEventID string
		query       string
		want        []int64
	}{
		{"no resume point", "", "", []int64{2, 3}},
		{"Last-Event-ID", "1", "", []int64{2, 3}},
		{"at the latest seq", "2", "", []int64{3}},
		{"query parameter", "", "2", []int64{3}},
		{"header wins over query", "2", "1", []int64{3}},
	}
	// A call with a state after its resume point has headers (and its first
	// event) at once: open it before the change, so it surely sees seq 2. A
	// call resumed at seq 2 has nothing to send until the change, and gets
	// headers only then: read it in the background.
	results := map[string]chan []sseEvent{}
	for _, tt := range tests {
		ch := make(chan []sseEvent, 1)
		results[tt.name] = ch
		q := url.Values{}
		if tt.query != "" {
			q.Set("last_event_id", tt.query)
		}
		call := sseRequest{dep: "dep-1", rid: rid, lastEventID: tt.lastEventID, query: q}
		if tt.want[0] == 2 {
			r := newSSEReader(g.openEvents(ctx, t, call).Body)
			go func() { ch <- r.all() }()
			continue
		}
		req, err := g.eventsRequest(ctx, call)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				ch <- nil
				return
			}
			defer resp.Body.Close()
			ch <- newSSEReader(resp.Body).all()
		}()
	}
	g.step(ctx, t, "dep-1", rid) // seq 3: succeeded

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			evs := <-results[tt.name]
			if len(evs) == 0 || evs[len(evs)-1].typ != "end" {
				t.Fatalf("events %+v, want states then end", evs)
			}
			var got []int64
			for _, ev := range evs[:len(evs)-1] {
				got = append(got, decodeState(t, ev).Seq)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("seqs %v, want %v", got, tt.want)
			}
		})
	}

	// Reconnecting after the end: 204, which stops EventSource for good.
	// Malformed resume points are refused like any bad field.
	fin, err := g.tracker.Get(ctx, rid)
	if err != nil {
		t.Fatal(err)
	}
	endID := fmt.Sprintf("%d-%d", fin.Epoch, fin.Seq)
	refusals := []struct {
		name        string
		lastEventID string
		query       string
		want        int
	}{
		{"after the terminal seq", "3", "", http.StatusNoContent},
		// Beyond the record's seq, without an epoch: only a record made
		// again can be behind such a resume point, so its final state is
		// sent rather than withheld.
		{"past the terminal seq, no epoch", "9", "", http.StatusOK},
		{"at the terminal state, with its epoch", endID, "", http.StatusNoContent},
		{"not a number", "abc", "", http.StatusBadRequest},
		{"negative query", "", "-1", http.StatusBadRequest},
		{"fraction", "1.5", "", http.StatusBadRequest},
	}
	for _, tt := range refusals {
		t.Run(tt.name, func(t *testing.T) {
			q := url.Values{}
			if tt.query != "" {
				q.Set("last_event_id", tt.query)
			}
			resp := g.openEvents(ctx, t, sseRequest{dep: "dep-1", rid: rid, lastEventID: tt.lastEventID, query: q})
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.want {
				t.Fatalf("HTTP %d (%s), want %d", resp.StatusCode, body, tt.want)
			}
			if tt.want == http.StatusBadRequest {
				st := checkErrorBody(t, body, codes.InvalidArgument)
				if msg, _ := st["message"].(string); !strings.Contains(strings.ToLower(msg), "last") {
					t.Errorf("message %q does not name the resume point", msg)
				}
			}
		})
	}
}

// TestEventsAuthAndTenants: the events route authenticates and isolates
// tenants as every other call does, and also takes the key as access_token.
func TestEventsAuthAndTenants(t *testing.T) {
	g := startGateway(t, withKeys(t))
	ctx := ctxT(t)
	sub, err := g.client.Submit(as(ctx, keyA), &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
	if err != nil {
		t.Fatal(err)
	}
	rid := sub.GetRequest().GetRequestId()
	token := func(k string) url.Values { return url.Values{"access_token": {k}} }
	tests := []struct {
		name   string
		header string
		query  url.Values
		want   int
	}{
		{"no key", "", nil, http.StatusUnauthorized},
		{"unknown key", "Bearer key-of-nobody-0123456789", nil, http.StatusUnauthorized},
		{"not bearer", "Basic " + keyA, nil, http.StatusUnauthorized},
		{"key not ASCII", "Bearer clé", nil, http.StatusUnauthorized},
		{"owner's key", "Bearer " + keyA, nil, http.StatusOK},
		{"another tenant's key", "Bearer " + keyB, nil, http.StatusNotFound},
		{"owner's access_token", "", token(keyA), http.StatusOK},
		{"another tenant's access_token", "", token(keyB), http.StatusNotFound},
		{"unknown access_token", "", token("key-of-nobody-0123456789"), http.StatusUnauthorized},
		{"empty access_token", "", token(""), http.StatusUnauthorized},
		{"header wins over access_token", "Bearer " + keyB, token(keyA), http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			resp := g.openEvents(ctx, t, sseRequest{dep: "dep-1", rid: rid, header: tt.header, query: tt.query})
			if resp.StatusCode != tt.want {
				body, _ := io.ReadAll(resp.Body)
				t.Fatalf("HTTP %d (%s), want %d", resp.StatusCode, body, tt.want)
			}
			switch tt.want {
			case http.StatusOK:
				ev, err := newSSEReader(resp.Body).next()
				if err != nil {
					t.Fatal(err)
				}
				if st := decodeState(t, ev); st.RequestID != rid || st.Seq != 1 {
					t.Errorf("first event %+v, want seq 1 of %s", st, rid)
				}
			case http.StatusUnauthorized:
				body, _ := io.ReadAll(resp.Body)
				checkErrorBody(t, body, codes.Unauthenticated)
				if got := resp.Header.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer") {
					t.Errorf("WWW-Authenticate = %q, want a Bearer challenge", got)
				}
			case http.StatusNotFound:
				body, _ := io.ReadAll(resp.Body)
				checkErrorBody(t, body, codes.NotFound)
			}
		})
	}
	// access_token is honoured on the events route only.
	if got := g.restAs(t, "", http.MethodGet, "/v1/deployments/dep-1/requests/"+rid+"?access_token="+keyA, ""); got != http.StatusUnauthorized {
		t.Errorf("REST status with access_token: HTTP %d, want 401", got)
	}
}

// TestEventsRefuseBadIDs: ids are validated as on every route (400 naming the
// field), before anything reaches RunComfy; an unknown request is 404.
func TestEventsRefuseBadIDs(t *testing.T) {
	g := startGateway(t)
	ctx := ctxT(t)
	bad := map[string]string{
		"space":       "a%20b",
		"unicode":     "d%C3%A9p",
		"not UTF-8":   "a%FFb",
		"slash":       "a%2Fb",
		"traversal":   "..%2F..%2Fv2",
		"colon verb":  "a:cancel",
		"too long":    strings.Repeat("a", 129),
		"plus, equal": "a+b=c",
		"encoded nul": "%00",
	}
	for name, id := range bad {
		for _, pos := range []string{"deployment_id", "request_id"} {
			t.Run(name+"/"+pos, func(t *testing.T) {
				dep, rid := "dep-1", "r-1"
				if pos == "deployment_id" {
					dep = id
				} else {
					rid = id
				}
				resp := g.openEvents(ctx, t, sseRequest{dep: dep, rid: rid})
				body, _ := io.ReadAll(resp.Body)
				if resp.StatusCode != http.StatusBadRequest {
					t.Fatalf("HTTP %d (%s), want 400", resp.StatusCode, body)
				}
				st := checkErrorBody(t, body, codes.InvalidArgument)
				if msg, _ := st["message"].(string); !strings.Contains(msg, pos) {
					t.Errorf("message %q does not name %s", msg, pos)
				}
			})
		}
	}
	if got := g.sim.TotalCalls(); got != 0 {
		t.Errorf("upstream saw %d calls, want 0", got)
	}
	resp := g.openEvents(ctx, t, sseRequest{dep: "dep-1", rid: "never-submitted"})
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("unknown request: HTTP %d (%s), want 404", resp.StatusCode, body)
	}
	checkErrorBody(t, body, codes.NotFound)
}

// lastSeqOf reads last_seq from the DRAINING ErrorInfo of an error event.
func lastSeqOf(t *testing.T, ev sseEvent) string {
	t.Helper()
	if ev.typ != "error" {
		t.Fatalf("event %+v, want an error event", ev)
	}
	var st struct {
		Code    int `json:"code"`
		Details []struct {
			Reason   string            `json:"reason"`
			Metadata map[string]string `json:"metadata"`
		} `json:"details"`
	}
	if err := json.Unmarshal([]byte(ev.data), &st); err != nil {
		t.Fatalf("error data %q: %v", ev.data, err)
	}
	if st.Code != int(codes.Unavailable) {
		t.Errorf("error event code %d, want %d (UNAVAILABLE): %s", st.Code, codes.Unavailable, ev.data)
	}
	for _, d := range st.Details {
		if d.Reason == "DRAINING" {
			return d.Metadata["last_seq"]
		}
	}
	t.Errorf("error event without a DRAINING ErrorInfo: %s", ev.data)
	return ""
}

// TestEventsEndWithErrorOnDrain: a draining replica ends its event streams with
// an error event naming the last seq, also a stream that had nothing to send
// yet (a 503 would stop EventSource for good; an open stream lets it resume
// elsewhere), and the drain does not wait for them.
func TestEventsEndWithErrorOnDrain(t *testing.T) {
	g := startGateway(t)
	ctx := ctxT(t)
	live, idle := g.submit(ctx, t, "dep-1"), g.submit(ctx, t, "dep-1")

	resp := g.openEvents(ctx, t, sseRequest{dep: "dep-1", rid: live})
	events := newSSEReader(resp.Body)
	if _, err := events.next(); err != nil {
		t.Fatal(err)
	}
	// Resumed at its latest seq: nothing to send, so no headers yet.
	idleResp := make(chan *http.Response, 1)
	req, err := g.eventsRequest(ctx, sseRequest{dep: "dep-1", rid: idle, lastEventID: "1"})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			idleResp <- nil
			return
		}
		idleResp <- resp
	}()
	deadline := time.Now().Add(5 * time.Second)
	for !slices.Contains(g.hub.Watching(), idle) {
		if time.Now().After(deadline) {
			t.Fatal("the resumed watch never started")
		}
		time.Sleep(5 * time.Millisecond)
	}

	start := time.Now()
	if err := g.stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
	if took := time.Since(start); took > 4*time.Second {
		t.Errorf("drain took %v: it waited for the open streams", took)
	}
	tail := events.rest(t)
	if len(tail) != 1 {
		t.Fatalf("after drain: %+v, want one error event", tail)
	}
	if got := lastSeqOf(t, tail[0]); got != "1" {
		t.Errorf("last_seq %q, want 1", got)
	}

	r := <-idleResp
	if r == nil {
		t.Fatal("the resumed call failed")
	}
	defer r.Body.Close()
	if r.StatusCode != http.StatusOK {
		t.Fatalf("resumed call during drain: HTTP %d, want 200 with an error event", r.StatusCode)
	}
	tail = newSSEReader(r.Body).rest(t)
	if len(tail) != 1 {
		t.Fatalf("resumed call: %+v, want one error event", tail)
	}
	if got := lastSeqOf(t, tail[0]); got != "1" {
		t.Errorf("resumed call: last_seq %q, want 1", got)
	}
}

// TestEventsAccessTokenIsNeverRecorded: a key sent as access_token appears in
// no log line and no span, while the call is logged and traced as a watch.
func TestEventsAccessTokenIsNeverRecorded(t *testing.T) {
	logs := &syncBuffer{}
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })
	g := startGateway(t, withKeys(t), func(o *gatewayOptions) {
		o.logs = logs
		o.tracer = tp
	})
	ctx := ctxT(t)
	sub, err := g.client.Submit(as(ctx, keyA), &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
	if err != nil {
		t.Fatal(err)
	}
	rid := sub.GetRequest().GetRequestId()
	if err := g.sim.Finish(rid, runcomfysim.Outcome{}); err != nil {
		t.Fatal(err)
	}
	if _, err := g.client.GetResult(as(ctx, keyA), &comfygatev1.GetResultRequest{DeploymentId: "dep-1", RequestId: rid}); err != nil {
		t.Fatal(err)
	}
	resp := g.openEvents(ctx, t, sseRequest{dep: "dep-1", rid: rid, query: url.Values{"access_token": {keyA}, "x": {"1"}}})
	evs := newSSEReader(resp.Body).rest(t)
	if len(evs) != 2 || evs[1].typ != "end" {
		t.Fatalf("events %+v, want the terminal state and end", evs)
	}
	// The gRPC side logs the call when the stream ends, just after the HTTP
	// response does.
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "WatchRequest") && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if err := g.stop(); err != nil {
		t.Errorf("Run: %v", err)
	}
	if strings.Contains(logs.String(), keyA) {
		t.Errorf("the log carries the key:\n%s", logs)
	}
	var watchLine bool
	for line := range strings.Lines(logs.String()) {
		if strings.Contains(line, "/WatchRequest") && strings.Contains(line, `"tenant":"tenant-a"`) && strings.Contains(line, `"code":"OK"`) {
			watchLine = true
		}
	}
	if !watchLine {
		t.Errorf("no access log line for the watch as tenant-a:\n%s", logs)
	}
	var httpSpan bool
	for _, s := range rec.Ended() {
		if strings.Contains(s.Name(), keyA) {
			t.Errorf("span name %q carries the key", s.Name())
		}
		for _, a := range s.Attributes() {
			if strings.Contains(a.Value.String(), keyA) {
				t.Errorf("span %s attribute %s carries the key", s.Name(), a.Key)
			}
			if a.Value.String() == g.eventsPath("dep-1", rid) {
				httpSpan = true
			}
		}
	}
	if !httpSpan {
		t.Error("no span recorded the events call")
	}
}

// TestOpenAPIDocument: /openapi.json is the generated document, every path of
// it as generated, plus the events route whose references resolve.
func TestOpenAPIDocument(t *testing.T) {
	g := startGateway(t, withKeys(t)) // served without a key all the same
	resp, err := http.Get(g.httpBase + "/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("HTTP %d, Content-Type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	type document struct {
		Swagger     string                     `json:"swagger"`
		Paths       map[string]json.RawMessage `json:"paths"`
		Definitions map[string]json.RawMessage `json:"definitions"`
	}
	var served, generated document
	if err := json.NewDecoder(resp.Body).Decode(&served); err != nil {
		t.Fatalf("not JSON: %v", err)
	}
	if err := json.Unmarshal(comfygate.OpenAPI(), &generated); err != nil {
		t.Fatal(err)
	}
	if served.Swagger != "2.0" {
		t.Errorf("swagger = %q", served.Swagger)
	}
	for _, p := range []string{
		"/v1/deployments/{deployment_id}/requests",
		"/v1/deployments/{deployment_id}/requests/{request_id}",
		"/v1/deployments/{deployment_id}/requests/{request_id}/result",
		"/v1/deployments/{deployment_id}/requests/{request_id}:cancel",
		"/v1/deployments/{deployment_id}/requests/{request_id}:watch",
	} {
		if _, ok := generated.Paths[p]; !ok {
			t.Errorf("the generated document lacks %s", p)
		}
	}
	for p, op := range generated.Paths {
		if !jsonEqual(t, served.Paths[p], op) {
			t.Errorf("served %s differs from the generated one", p)
		}
	}
	const events = "/v1/deployments/{deployment_id}/requests/{request_id}/events"
	var op struct {
		Get struct {
			Produces   []string `json:"produces"`
			Parameters []struct {
				Name string `json:"name"`
				In   string `json:"in"`
			} `json:"parameters"`
		} `json:"get"`
	}
	if err := json.Unmarshal(served.Paths[events], &op); err != nil {
		t.Fatalf("%s: %v", events, err)
	}
	if len(op.Get.Produces) == 0 || op.Get.Produces[0] != "text/event-stream" {
		t.Errorf("%s produces %v", events, op.Get.Produces)
	}
	params := map[string]string{}
	for _, p := range op.Get.Parameters {
		params[p.Name] = p.In
	}
	want := map[string]string{"deployment_id": "path", "request_id": "path", "Last-Event-ID": "header", "last_event_id": "query", "access_token": "query"}
	if !reflect.DeepEqual(params, want) {
		t.Errorf("%s parameters %v, want %v", events, params, want)
	}
	for _, ref := range refsIn(served.Paths[events]) {
		name, ok := strings.CutPrefix(ref, "#/definitions/")
		if _, found := served.Definitions[name]; !ok || !found {
			t.Errorf("%s refers to %s, which the document does not define", events, ref)
		}
	}
}

func jsonEqual(t *testing.T, a, b json.RawMessage) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		return false
	}
	if err := json.Unmarshal(b, &y); err != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

// refsIn lists every "$ref" in a JSON value.
func refsIn(raw json.RawMessage) []string {
	var v any
	if json.Unmarshal(raw, &v) != nil {
		return nil
	}
	var refs []string
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if s, ok := x.(string); ok && k == "$ref" {
					refs = append(refs, s)
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(v)
	return refs
}
