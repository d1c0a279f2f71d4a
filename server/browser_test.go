//go:build linux

package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// chromiumPath is where Debian's chromium package puts the browser; CI
// installs it (apt-get install chromium).
const chromiumPath = "/usr/bin/chromium"

// eventSourcePage opens an EventSource on the events route, with the key as
// access_token since EventSource cannot send headers, and reports every event
// to the test by POSTing it to /report, in the order the events came.
const eventSourcePage = `<!doctype html>
<title>EventSource</title>
<script>
// One report at a time, in order: concurrent fetches may arrive out of order.
let reported = Promise.resolve();
const report = (r) => {
  reported = reported.then(() => fetch('/report', {method: 'POST', body: JSON.stringify(r)})).catch(() => {});
};
const es = new EventSource(%q);
es.onopen = () => report({type: 'open'});
es.addEventListener('state', (e) => {
  const s = JSON.parse(e.data);
  report({type: 'state', id: e.lastEventId, seq: s.seq, epoch: s.epoch, status: s.status, request_id: s.request_id});
});
es.addEventListener('end', (e) => {
  es.close(); // the request has ended: do not reconnect
  report({type: 'end', id: e.lastEventId, data: e.data});
});
es.addEventListener('error', (e) => report({type: 'error', readyState: es.readyState, data: e.data || ''}));
</script>`

// pageReport is one report of the page.
type pageReport struct {
	Type       string `json:"type"`
	ID         string `json:"id"`
	Seq        string `json:"seq"`
	Epoch      string `json:"epoch"`
	Status     string `json:"status"`
	RequestID  string `json:"request_id"`
	Data       string `json:"data"`
	ReadyState int    `json:"readyState"`
}

// sameOrigin serves the test page and forwards /v1/ to the gateway, so the
// page and the events route share an origin, as when the gateway sits behind
// the site's own reverse proxy: the gateway needs no CORS. It records the
// Last-Event-ID of every events call and can cut the first one, as a network
// failure would.
type sameOrigin struct {
	page    string
	reports chan pageReport
	proxy   *httputil.ReverseProxy

	mu          sync.Mutex
	lastEventID []string
	cutFirst    context.CancelFunc
}

func (s *sameOrigin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/":
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = io.WriteString(w, s.page)
	case r.URL.Path == "/report" && r.Method == http.MethodPost:
		var rep pageReport
		if err := json.NewDecoder(r.Body).Decode(&rep); err == nil {
			s.reports <- rep
		}
		w.WriteHeader(http.StatusNoContent)
	case strings.HasSuffix(r.URL.Path, "/events"):
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		s.mu.Lock()
		s.lastEventID = append(s.lastEventID, r.Header.Get("Last-Event-ID"))
		if len(s.lastEventID) == 1 {
			s.cutFirst = cancel
		}
		s.mu.Unlock()
		s.proxy.ServeHTTP(w, r.WithContext(ctx))
	case strings.HasPrefix(r.URL.Path, "/v1/"):
		s.proxy.ServeHTTP(w, r)
	default:
		http.NotFound(w, r)
	}
}

func (s *sameOrigin) cut() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cutFirst != nil {
		s.cutFirst()
	}
}

func (s *sameOrigin) calls() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.lastEventID...)
}

// startChromium runs headless Chromium on url in a process group of its own,
// and kills the group when the test ends. The flags keep it off the network
// (no background requests, updates or sync) and from needing a GPU or sandbox.
func startChromium(t *testing.T, url string) *syncBuffer {
	t.Helper()
	profile, err := os.MkdirTemp("", "chromium-profile-")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(chromiumPath,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+profile, url)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(profile)
		t.Fatalf("start Chromium: %v", err)
	}
	pgid := cmd.Process.Pid
	t.Cleanup(func() {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		_ = cmd.Wait()
		// The browser's helpers are in the group too; the profile can go once
		// they are gone (a removal racing one still exiting is retried).
		for range 50 {
			if err := os.RemoveAll(profile); err == nil {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("could not remove Chromium's profile %s", profile)
	})
	return out
}

// TestEventSourceInChromium runs a real browser's EventSource against the
// events route: it authenticates with access_token, receives each state with
// its seq as the event id, reconnects by itself when the connection breaks,
// resuming with Last-Event-ID, and stops on the end event.
func TestEventSourceInChromium(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Chromium; skipped with -short")
	}
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Skipf("no browser: %s is missing (apt-get install chromium): %v", chromiumPath, err)
	}
	g := startGateway(t, withKeys(t))
	// A run takes about 6 s: Chromium starts in 1-4 s and waits its default
	// 3 s before reconnecting. The bound only stops a hang, generously, since
	// a browser's first start on a loaded machine can be much slower.
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	sub, err := g.client.Submit(as(ctx, keyA), &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
	if err != nil {
		t.Fatal(err)
	}
	rid := sub.GetRequest().GetRequestId()

	target, err := url.Parse(g.httpBase)
	if err != nil {
		t.Fatal(err)
	}
	transport := &http.Transport{}
	t.Cleanup(transport.CloseIdleConnections)
	site := &sameOrigin{
		page:    fmt.Sprintf(eventSourcePage, g.eventsPath("dep-1", rid)+"?access_token="+url.QueryEscape(keyA)),
		reports: make(chan pageReport, 64),
		proxy: &httputil.ReverseProxy{
			Rewrite:   func(pr *httputil.ProxyRequest) { pr.SetURL(target) },
			Transport: transport,
		},
	}
	srv := httptest.NewServer(site)
	t.Cleanup(srv.Close)
	started := time.Now()
	browser := startChromium(t, srv.URL+"/")

	var reports []pageReport
	// await collects reports until one satisfies done.
	await := func(what string, done func(pageReport) bool) {
		t.Helper()
		for {
			select {
			case r := <-site.reports:
				t.Logf("%5.2fs after Chromium started: %+v", time.Since(started).Seconds(), r)
				reports = append(reports, r)
				if done(r) {
					return
				}
			case <-ctx.Done():
				t.Fatalf("waiting for %s: %v; reports %+v; Chromium said:\n%s", what, ctx.Err(), reports, browser)
			}
		}
	}
	stateSeq := func(seq string) func(pageReport) bool {
		return func(r pageReport) bool { return r.Type == "state" && r.Seq == seq }
	}
	step := func() {
		t.Helper()
		if err := g.sim.Advance(rid); err != nil {
			t.Fatal(err)
		}
		if _, err := g.client.GetStatus(as(ctx, keyA), &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: rid}); err != nil {
			t.Fatal(err)
		}
	}

	await("the first state", stateSeq("1"))
	step()
	await("the running state", stateSeq("2"))
	// The connection breaks; while EventSource waits to reconnect, the
	// request finishes.
	site.cut()
	await("EventSource noticing the cut", func(r pageReport) bool { return r.Type == "error" })
	step()
	await("the end event", func(r pageReport) bool { return r.Type == "end" })

	var states []string
	var epoch string
	opens := 0
	for _, r := range reports {
		switch r.Type {
		case "state":
			if r.RequestID != rid {
				t.Errorf("state of request %q, want %q", r.RequestID, rid)
			}
			if r.Epoch == "" || r.ID != r.Epoch+"-"+r.Seq+"-"+strings.ToLower(strings.TrimPrefix(r.Status, "STATUS_")) {
				t.Errorf("lastEventId %q for epoch %q seq %q status %q: the event id must be epoch-seq-status", r.ID, r.Epoch, r.Seq, r.Status)
			}
			epoch = r.Epoch
			states = append(states, r.Seq+" "+r.Status)
		case "open":
			opens++
		case "error":
			if r.Data != "" {
				t.Errorf("a server error event: %s", r.Data)
			}
			if r.ReadyState != 0 {
				t.Errorf("after the cut EventSource is in state %d, want 0 (reconnecting)", r.ReadyState)
			}
		case "end":
			if r.ID != epoch+"-3-succeeded" || r.Data != `{"last_seq":"3","last_epoch":"`+epoch+`"}` {
				t.Errorf("end event: lastEventId %q, data %q; want %s-3-succeeded", r.ID, r.Data, epoch)
			}
		}
	}
	want := []string{"1 STATUS_QUEUED", "2 STATUS_RUNNING", "3 STATUS_SUCCEEDED"}
	if strings.Join(states, ", ") != strings.Join(want, ", ") {
		t.Errorf("states %v, want %v", states, want)
	}
	if opens != 2 {
		t.Errorf("EventSource opened %d times, want 2 (the first stream and the reconnect)", opens)
	}
	if got := site.calls(); len(got) != 2 || got[0] != "" || got[1] != epoch+"-2-running" {
		t.Errorf("events calls with Last-Event-ID %q, want none then \"%s-2-running\"", got, epoch)
	}
}
