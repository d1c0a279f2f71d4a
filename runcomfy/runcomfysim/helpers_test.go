package runcomfysim_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
)

const testToken = "sim-token"

// harness is a Sim served over real TCP, with a client whose idle connections are
// closed at cleanup so goroutine counts stay meaningful.
type harness struct {
	sim    *runcomfysim.Sim
	srv    *httptest.Server
	client *http.Client
}

func newHarness(t *testing.T, opts runcomfysim.Options) *harness {
	t.Helper()
	sim := runcomfysim.New(opts)
	srv := httptest.NewServer(sim.Handler())
	tr := &http.Transport{}
	h := &harness{sim: sim, srv: srv, client: &http.Client{Transport: tr, Timeout: 10 * time.Second}}
	t.Cleanup(func() {
		srv.Close()
		sim.Close()
		tr.CloseIdleConnections()
	})
	return h
}

// manual is the usual test configuration: deterministic, token required.
func manual() runcomfysim.Options {
	return runcomfysim.Options{Token: testToken, Manual: true}
}

type reply struct {
	status int
	header http.Header
	raw    []byte
	body   map[string]any
}

func (h *harness) do(t *testing.T, method, path, body string) reply {
	t.Helper()
	return h.doAuth(t, method, path, body, "Bearer "+testToken)
}

func (h *harness) doAuth(t *testing.T, method, path, body, auth string) reply {
	t.Helper()
	return h.doCtx(t, context.Background(), method, path, body, auth)
}

func (h *harness) doCtx(t *testing.T, ctx context.Context, method, path, body, auth string) reply {
	t.Helper()
	target := path
	if !strings.HasPrefix(path, "http") {
		target = h.srv.URL + path
	}
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, rd)
	if err != nil {
		t.Fatalf("new request: %v", err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := h.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	r := reply{status: resp.StatusCode, header: resp.Header, raw: raw}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(raw, &r.body); err != nil {
			t.Fatalf("decode %s: %v", raw, err)
		}
	}
	return r
}

func reqPath(version, dep, id, kind string) string {
	return "/prod/" + version + "/deployments/" + dep + "/requests/" + id + "/" + kind
}

// submit submits body and returns the request id, failing the test on any error.
func (h *harness) submit(t *testing.T, version, dep, query, body string) string {
	t.Helper()
	path := "/prod/" + version + "/deployments/" + dep + "/inference"
	if query != "" {
		path += "?" + query
	}
	r := h.do(t, http.MethodPost, path, body)
	if r.status != http.StatusOK {
		t.Fatalf("submit: got status %d (%s), want 200", r.status, r.raw)
	}
	id, _ := r.body["request_id"].(string)
	if id == "" {
		t.Fatalf("submit: no request_id in %s", r.raw)
	}
	return id
}

func (h *harness) status(t *testing.T, dep, id string) map[string]any {
	t.Helper()
	r := h.do(t, http.MethodGet, reqPath("v1", dep, id, "status"), "")
	if r.status != http.StatusOK {
		t.Fatalf("status: got %d (%s), want 200", r.status, r.raw)
	}
	return r.body
}

func (h *harness) result(t *testing.T, dep, id string) map[string]any {
	t.Helper()
	r := h.do(t, http.MethodGet, reqPath("v1", dep, id, "result"), "")
	if r.status != http.StatusOK {
		t.Fatalf("result: got %d (%s), want 200", r.status, r.raw)
	}
	return r.body
}

func advance(t *testing.T, sim *runcomfysim.Sim, id string, times int) {
	t.Helper()
	for range times {
		if err := sim.Advance(id); err != nil {
			t.Fatalf("advance: %v", err)
		}
	}
}

func keys(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func sorted(s ...string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// receiver is a webhook endpoint that records every callback.
type receiver struct {
	srv *httptest.Server

	mu       sync.Mutex
	got      []map[string]any
	ctypes   []string
	failNext int // answer 500 to this many next deliveries; negative: always
}

func newReceiver(t *testing.T) *receiver {
	t.Helper()
	rc := &receiver{}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		defer rc.mu.Unlock()
		if rc.failNext != 0 {
			if rc.failNext > 0 {
				rc.failNext--
			}
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			m = map[string]any{"_undecodable": string(raw)}
		}
		rc.got = append(rc.got, m)
		rc.ctypes = append(rc.ctypes, r.Header.Get("Content-Type"))
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) url() string { return rc.srv.URL + "/hook/secret" }

func (rc *receiver) snapshot() []map[string]any {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return slices.Clone(rc.got)
}

// waitFor waits until at least n callbacks arrived, then a little longer to catch
// any extra one, and returns them all.
func (rc *receiver) waitFor(t *testing.T, n int) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(rc.snapshot()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("callbacks: got %d, want %d: %v", len(rc.snapshot()), n, rc.snapshot())
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	return rc.snapshot()
}

// callbackStatus is a callback's status, "" when it has none (the in_queue shape).
func callbackStatus(m map[string]any) string {
	s, _ := m["status"].(string)
	return s
}

func waitState(t *testing.T, sim *runcomfysim.Sim, id, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, _ := sim.JobState(id)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("job state: got %q, want %q", got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// newServer serves sim on a real TCP port; the caller closes it.
func newServer(sim *runcomfysim.Sim) *httptest.Server {
	return httptest.NewServer(sim.Handler())
}

// newFailingHook is a webhook endpoint that always answers 500, so deliveries wait
// to retry.
func newFailingHook() *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
	}))
}

// jsonEqual compares two values by their JSON encoding, so typed test fixtures can
// be compared with decoded bodies.
func jsonEqual(t *testing.T, got, want any) bool {
	t.Helper()
	g, err := json.Marshal(got)
	if err != nil {
		t.Fatalf("encode got: %v", err)
	}
	w, err := json.Marshal(want)
	if err != nil {
		t.Fatalf("encode want: %v", err)
	}
	var gv, wv any
	_ = json.Unmarshal(g, &gv)
	_ = json.Unmarshal(w, &wv)
	g, _ = json.Marshal(gv)
	w, _ = json.Marshal(wv)
	return string(g) == string(w)
}
