package runcomfy_test

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/comfygate/comfygate/runcomfy"
)

// testToken is distinctive so a leak into an error string cannot be a coincidence.
const testToken = "rc-test-token-7f3a9c2e51d84b06"

// answer is one canned upstream reply. reset makes the server drop the connection
// with a TCP RST instead of answering, which is what a crashed upstream looks like.
type answer struct {
	status int
	header map[string]string
	body   string
	reset  bool
}

// sent is what the upstream saw of one request.
type sent struct {
	Method     string
	RequestURI string
	Path       string // r.URL.EscapedPath(), as on the wire
	RawQuery   string
	Header     http.Header
	Body       []byte
}

// upstream is a real HTTP server on a random port that answers from a script and
// records every request. The script is a function of the 1-based call number, so
// retry tests can fail the first attempts and succeed later.
type upstream struct {
	*httptest.Server
	calls atomic.Int64
	mu    sync.Mutex
	seen  []sent
}

func newUpstream(t *testing.T, script func(n int) answer) *upstream {
	t.Helper()
	u := &upstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := int(u.calls.Add(1))
		body, _ := io.ReadAll(r.Body)
		u.mu.Lock()
		u.seen = append(u.seen, sent{
			Method:     r.Method,
			RequestURI: r.RequestURI,
			Path:       r.URL.EscapedPath(),
			RawQuery:   r.URL.RawQuery,
			Header:     r.Header.Clone(),
			Body:       body,
		})
		u.mu.Unlock()
		a := script(n)
		if a.reset {
			resetConn(t, w)
			return
		}
		for k, v := range a.header {
			w.Header().Set(k, v)
		}
		if a.body != "" && w.Header().Get("Content-Type") == "" {
			w.Header().Set("Content-Type", "application/json")
		}
		status := a.status
		if status == 0 {
			status = http.StatusOK
		}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, a.body)
	}))
	t.Cleanup(u.Close)
	return u
}

// always answers every call the same way.
func always(a answer) func(int) answer { return func(int) answer { return a } }

// sequence answers call n with as[n-1], and repeats the last one after that.
func sequence(as ...answer) func(int) answer {
	return func(n int) answer { return as[min(n, len(as))-1] }
}

func (u *upstream) requests() []sent {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]sent(nil), u.seen...)
}

// resetConn closes the connection under the handler with SO_LINGER 0, so the client
// reads a connection reset after its request was fully sent.
func resetConn(t *testing.T, w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		t.Errorf("response writer cannot be hijacked")
		return
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		t.Errorf("hijack: %v", err)
		return
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// newClient builds a client against base with fast retries; mod adjusts the config.
func newClient(t *testing.T, base string, mod func(*runcomfy.Config)) *runcomfy.Client {
	t.Helper()
	cfg := runcomfy.Config{
		BaseURL:     base,
		Token:       testToken,
		Timeout:     5 * time.Second,
		BackoffBase: time.Millisecond,
		BackoffMax:  5 * time.Millisecond,
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := runcomfy.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

func noRetries(c *runcomfy.Config) { c.MaxRetries = -1 }

func fixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "webhooks", name))
	if err != nil {
		t.Fatalf("reading fixture: %v", err)
	}
	return b
}

// Success bodies per operation, used where a case only needs "some valid answer".
const (
	submitOK = `{"request_id":"req-1","status_url":"https://api.runcomfy.net/prod/v1/deployments/dep-1/requests/req-1/status","result_url":"https://api.runcomfy.net/prod/v1/deployments/dep-1/requests/req-1/result","cancel_url":"https://api.runcomfy.net/prod/v1/deployments/dep-1/requests/req-1/cancel"}`
	statusOK = `{"request_id":"req-1","status":"in_queue","queue_position":2}`
	resultOK = `{"request_id":"req-1","status":"succeeded","outputs":{"9":{"images":[{"url":"https://cdn.example/a.png"}]}}}`
	cancelOK = `{"request_id":"req-1","outcome":"cancelled"}`
)

var okBody = map[string]string{"submit": submitOK, "status": statusOK, "result": resultOK, "cancel": cancelOK}

var allOps = []string{"submit", "status", "result", "cancel"}

// call runs op against c with fixed ids and returns only its error.
func call(ctx context.Context, c *runcomfy.Client, op string) error {
	var err error
	switch op {
	case "submit":
		_, err = c.Submit(ctx, "dep-1", json.RawMessage(`{"prompt":"a cat"}`), runcomfy.SubmitOptions{})
	case "status":
		_, err = c.Status(ctx, "dep-1", "req-1")
	case "result":
		_, err = c.Result(ctx, "dep-1", "req-1")
	case "cancel":
		_, err = c.Cancel(ctx, "dep-1", "req-1")
	default:
		panic("unknown op " + op)
	}
	return err
}

func TestNew(t *testing.T) {
	tests := []struct {
		name    string
		cfg     runcomfy.Config
		wantErr bool
	}{
		{name: "defaults with token", cfg: runcomfy.Config{Token: "t"}},
		{name: "v1", cfg: runcomfy.Config{Token: "t", APIVersion: "v1"}},
		{name: "v2", cfg: runcomfy.Config{Token: "t", APIVersion: "v2"}},
		{name: "http base", cfg: runcomfy.Config{Token: "t", BaseURL: "http://127.0.0.1:8080"}},
		{name: "base with path prefix", cfg: runcomfy.Config{Token: "t", BaseURL: "https://proxy.example/runcomfy/"}},
		{name: "missing token", cfg: runcomfy.Config{}, wantErr: true},
		{name: "missing token with everything else", cfg: runcomfy.Config{BaseURL: "https://api.runcomfy.net", APIVersion: "v1"}, wantErr: true},
		{name: "base without scheme", cfg: runcomfy.Config{Token: "t", BaseURL: "api.runcomfy.net"}, wantErr: true},
		{name: "base with ftp scheme", cfg: runcomfy.Config{Token: "t", BaseURL: "ftp://api.runcomfy.net"}, wantErr: true},
		{name: "base without host", cfg: runcomfy.Config{Token: "t", BaseURL: "https://"}, wantErr: true},
		{name: "base unparsable", cfg: runcomfy.Config{Token: "t", BaseURL: "://nope"}, wantErr: true},
		{name: "base with control char", cfg: runcomfy.Config{Token: "t", BaseURL: "https://api.runcomfy.net/\x7f"}, wantErr: true},
		{name: "version v3", cfg: runcomfy.Config{Token: "t", APIVersion: "v3"}, wantErr: true},
		{name: "version upper case", cfg: runcomfy.Config{Token: "t", APIVersion: "V1"}, wantErr: true},
		{name: "version with slash", cfg: runcomfy.Config{Token: "t", APIVersion: "v1/../v2"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := runcomfy.New(tt.cfg)
			if gotErr := err != nil; gotErr != tt.wantErr {
				t.Fatalf("New() error = %v, want error %v", err, tt.wantErr)
			}
			if (c == nil) != tt.wantErr {
				t.Errorf("New() client = %v, want nil %v", c, tt.wantErr)
			}
		})
	}
}

// roundTripFunc lets TestNewDefaults see the URL a default client would call without
// reaching the real RunComfy, which these machines cannot.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestNewDefaults(t *testing.T) {
	t.Run("base URL and version", func(t *testing.T) {
		var got string
		c, err := runcomfy.New(runcomfy.Config{
			Token: testToken,
			Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
				got = r.URL.String()
				return &http.Response{
					StatusCode: http.StatusOK,
					Header:     http.Header{"Content-Type": {"application/json"}},
					Body:       io.NopCloser(strings.NewReader(statusOK)),
					Request:    r,
				}, nil
			}),
		})
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		if _, err := c.Status(context.Background(), "dep-1", "req-1"); err != nil {
			t.Fatalf("Status: %v", err)
		}
		if want := "https://api.runcomfy.net/prod/v1/deployments/dep-1/requests/req-1/status"; got != want {
			t.Errorf("URL = %q, want %q", got, want)
		}
	})

	t.Run("three retries by default", func(t *testing.T) {
		u := newUpstream(t, always(answer{status: http.StatusServiceUnavailable}))
		c := newClient(t, u.URL, func(c *runcomfy.Config) { c.MaxRetries = 0 })
		err := call(context.Background(), c, "status")
		if !errors.Is(err, runcomfy.ErrUnavailable) {
			t.Fatalf("Status error = %v, want ErrUnavailable", err)
		}
		if got, want := u.calls.Load(), int64(4); got != want {
			t.Errorf("calls = %d, want %d", got, want)
		}
	})

	t.Run("trailing slash and path prefix of base URL", func(t *testing.T) {
		u := newUpstream(t, always(answer{body: statusOK}))
		c := newClient(t, u.URL+"/gw/runcomfy/", nil)
		if err := call(context.Background(), c, "status"); err != nil {
			t.Fatalf("Status: %v", err)
		}
		if got, want := u.requests()[0].Path, "/gw/runcomfy/prod/v1/deployments/dep-1/requests/req-1/status"; got != want {
			t.Errorf("path = %q, want %q", got, want)
		}
	})
}

func TestRequestsSent(t *testing.T) {
	tests := []struct {
		op         string
		version    string
		wantMethod string
		wantPath   string
	}{
		{"submit", "", http.MethodPost, "/prod/v1/deployments/dep-1/inference"},
		{"status", "", http.MethodGet, "/prod/v1/deployments/dep-1/requests/req-1/status"},
		{"result", "", http.MethodGet, "/prod/v1/deployments/dep-1/requests/req-1/result"},
		{"cancel", "", http.MethodPost, "/prod/v1/deployments/dep-1/requests/req-1/cancel"},
		{"submit", "v1", http.MethodPost, "/prod/v1/deployments/dep-1/inference"},
		{"status", "v1", http.MethodGet, "/prod/v1/deployments/dep-1/requests/req-1/status"},
		{"result", "v1", http.MethodGet, "/prod/v1/deployments/dep-1/requests/req-1/result"},
		{"cancel", "v1", http.MethodPost, "/prod/v1/deployments/dep-1/requests/req-1/cancel"},
		{"submit", "v2", http.MethodPost, "/prod/v2/deployments/dep-1/inference"},
		{"status", "v2", http.MethodGet, "/prod/v2/deployments/dep-1/requests/req-1/status"},
		{"result", "v2", http.MethodGet, "/prod/v2/deployments/dep-1/requests/req-1/result"},
		{"cancel", "v2", http.MethodPost, "/prod/v2/deployments/dep-1/requests/req-1/cancel"},
	}
	for _, tt := range tests {
		t.Run(tt.op+"/"+cmp.Or(tt.version, "default"), func(t *testing.T) {
			u := newUpstream(t, always(answer{body: okBody[tt.op]}))
			c := newClient(t, u.URL, func(c *runcomfy.Config) { c.APIVersion = tt.version })
			if err := call(context.Background(), c, tt.op); err != nil {
				t.Fatalf("%s: %v", tt.op, err)
			}
			reqs := u.requests()
			if got, want := len(reqs), 1; got != want {
				t.Fatalf("requests = %d, want %d", got, want)
			}
			r := reqs[0]
			if got, want := r.Method, tt.wantMethod; got != want {
				t.Errorf("method = %q, want %q", got, want)
			}
			if got, want := r.RequestURI, tt.wantPath; got != want {
				t.Errorf("request URI = %q, want %q", got, want)
			}
			if got, want := r.Header.Get("Authorization"), "Bearer "+testToken; got != want {
				t.Errorf("Authorization = %q, want %q", got, want)
			}
			if got, want := r.Header.Values("Authorization"), 1; len(got) != want {
				t.Errorf("Authorization headers = %q, want %d", got, want)
			}
			if tt.wantMethod == http.MethodPost {
				if got, want := r.Header.Get("Content-Type"), "application/json"; got != want {
					t.Errorf("Content-Type = %q, want %q", got, want)
				}
			}
		})
	}
}

func TestSubmitQuery(t *testing.T) {
	const hook = "https://gw.example/callbacks/s3cr3t-path?tenant=a&b=c d#frag"
	tests := []struct {
		name         string
		opts         runcomfy.SubmitOptions
		wantRawQuery string
	}{
		{name: "no webhook", opts: runcomfy.SubmitOptions{}, wantRawQuery: ""},
		{
			name:         "webhook only",
			opts:         runcomfy.SubmitOptions{WebhookURL: "https://gw.example/cb"},
			wantRawQuery: "webhook=https%3A%2F%2Fgw.example%2Fcb",
		},
		{
			name:         "webhook with intermediate status",
			opts:         runcomfy.SubmitOptions{WebhookURL: hook, IntermediateStatus: true},
			wantRawQuery: "webhook=" + url.QueryEscape(hook) + "&webhook_intermediate_status=true",
		},
		{
			// Intermediate status means nothing without a webhook to send it to.
			name:         "intermediate status without webhook",
			opts:         runcomfy.SubmitOptions{IntermediateStatus: true},
			wantRawQuery: "",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newUpstream(t, always(answer{body: submitOK}))
			c := newClient(t, u.URL, nil)
			if _, err := c.Submit(context.Background(), "dep-1", json.RawMessage(`{}`), tt.opts); err != nil {
				t.Fatalf("Submit: %v", err)
			}
			r := u.requests()[0]
			if got, want := r.RawQuery, tt.wantRawQuery; got != want {
				t.Errorf("raw query = %q, want %q", got, want)
			}
			if got, want := r.Path, "/prod/v1/deployments/dep-1/inference"; got != want {
				t.Errorf("path = %q, want %q", got, want)
			}
			q, err := url.ParseQuery(r.RawQuery)
			if err != nil {
				t.Fatalf("query does not parse: %v", err)
			}
			if got, want := q.Get("webhook"), tt.opts.WebhookURL; got != want {
				t.Errorf("webhook = %q, want %q", got, want)
			}
		})
	}
}

func TestSubmitBodyVerbatim(t *testing.T) {
	tests := []struct {
		name string
		body string
	}{
		{name: "big integers and float spelling", body: `{"seed": 18446744073709551615, "n": 42, "f": 1.0}`},
		{name: "comfy overrides keyed by node id", body: `{"overrides":{"6":{"inputs":{"text":"a cat","seed":42}},"38:42":{"inputs":{"image":"data:image/png;base64,iVBORw0KGgo="}}}}`},
		{name: "workflow inline with extra_data", body: `{"workflow_api_json":{"3":{"class_type":"KSampler","inputs":{"cfg":7.50,"steps":20}}},"overrides":{},"extra_data":{"z":1,"a":2}}`},
		{name: "lora flat fields, odd order and whitespace", body: "{\n  \"width\":1024 ,\"prompt\":\"\\u00e9t\\u00e9\",\"guidance_scale\":3.5e0,\"neg\":null,\"seed\":-1\n}\n"},
		{name: "duplicate keys kept", body: `{"a":1,"a":2}`},
		{name: "empty object", body: `{}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newUpstream(t, always(answer{body: submitOK}))
			c := newClient(t, u.URL, nil)
			got, err := c.Submit(context.Background(), "dep-1", json.RawMessage(tt.body), runcomfy.SubmitOptions{})
			if err != nil {
				t.Fatalf("Submit: %v", err)
			}
			if gotBody, want := string(u.requests()[0].Body), tt.body; gotBody != want {
				t.Errorf("body sent = %q, want %q", gotBody, want)
			}
			want := &runcomfy.SubmitResponse{
				RequestID: "req-1",
				StatusURL: "https://api.runcomfy.net/prod/v1/deployments/dep-1/requests/req-1/status",
				ResultURL: "https://api.runcomfy.net/prod/v1/deployments/dep-1/requests/req-1/result",
				CancelURL: "https://api.runcomfy.net/prod/v1/deployments/dep-1/requests/req-1/cancel",
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Submit() = %+v, want %+v", got, want)
			}
		})
	}
}

func TestSubmitAnswerWithoutRequestID(t *testing.T) {
	u := newUpstream(t, always(answer{body: `{"status_url":"x"}`}))
	c := newClient(t, u.URL, nil)
	err := call(context.Background(), c, "submit")
	if !errors.Is(err, runcomfy.ErrUnavailable) {
		t.Errorf("Submit error = %v, want ErrUnavailable", err)
	}
}

// TestIDEscaping pins that an id is always exactly one path segment: whatever it
// contains, it cannot add a segment, a query or a fragment, nor climb the path.
func TestIDEscaping(t *testing.T) {
	ids := []string{
		"a/b",
		"../../v2/deployments/other",
		"a?b=c&d=e",
		"a#frag",
		"..%2F..",
		"%2e%2e",
		"a b+c",
		"100%",
		"a;b,c",
		"été",
		"...",
		"a\\b",
		"./x",
	}
	// A base URL with a path prefix that itself needs escaping must not undo the
	// escaping of the ids.
	prefixes := []struct{ raw, decoded []string }{
		{raw: nil, decoded: nil},
		{raw: []string{"gw%20v1"}, decoded: []string{"gw v1"}},
	}
	for _, prefix := range prefixes {
		for _, id := range ids {
			t.Run(strings.Join(prefix.raw, "/")+"/"+id, func(t *testing.T) {
				// The status answer names no request (it is about the one
				// asked for); the submit's names the new one.
				u := newUpstream(t, sequence(answer{body: `{"status":"in_queue"}`}, answer{body: `{"request_id":"x","status":"in_queue"}`}))
				base := u.URL
				for _, p := range prefix.raw {
					base += "/" + p
				}
				c := newClient(t, base, nil)
				ctx := context.Background()
				if _, err := c.Status(ctx, id, id); err != nil {
					t.Fatalf("Status: %v", err)
				}
				if _, err := c.Submit(ctx, id, json.RawMessage(`{}`), runcomfy.SubmitOptions{}); err != nil {
					t.Fatalf("Submit: %v", err)
				}
				head := append([]string{""}, prefix.decoded...)
				wantSegs := [][]string{
					append(append([]string(nil), head...), "prod", "v1", "deployments", id, "requests", id, "status"),
					append(append([]string(nil), head...), "prod", "v1", "deployments", id, "inference"),
				}
				for i, r := range u.requests() {
					if r.RawQuery != "" {
						t.Errorf("request %d: raw query = %q, want none", i, r.RawQuery)
					}
					if strings.ContainsAny(r.RequestURI, "?#") {
						t.Errorf("request %d: request URI %q carries a query or fragment", i, r.RequestURI)
					}
					var got []string
					for _, s := range strings.Split(r.RequestURI, "/") {
						if s == "." || s == ".." {
							t.Errorf("request %d: dot segment in %q", i, r.RequestURI)
						}
						d, err := url.PathUnescape(s)
						if err != nil {
							t.Fatalf("request %d: segment %q does not unescape: %v", i, s, err)
						}
						got = append(got, d)
					}
					if !reflect.DeepEqual(got, wantSegs[i]) {
						t.Errorf("request %d: segments of %q = %q, want %q", i, r.RequestURI, got, wantSegs[i])
					}
				}
			})
		}
	}
}

// TestUnsafeIDsRefused: an empty id or a dot segment cannot be escaped into a safe
// path segment (any proxy that normalises paths would merge or resolve it), so the
// client refuses it without calling upstream.
func TestUnsafeIDsRefused(t *testing.T) {
	for _, id := range []string{"", ".", ".."} {
		for _, op := range allOps {
			t.Run(op+"/"+strconv.Quote(id), func(t *testing.T) {
				u := newUpstream(t, always(answer{body: okBody[op]}))
				c := newClient(t, u.URL, nil)
				ctx := context.Background()
				var err error
				switch op {
				case "submit":
					_, err = c.Submit(ctx, id, json.RawMessage(`{}`), runcomfy.SubmitOptions{})
				case "status":
					_, err = c.Status(ctx, "dep-1", id)
				case "result":
					_, err = c.Result(ctx, id, "req-1")
				case "cancel":
					_, err = c.Cancel(ctx, "dep-1", id)
				}
				if !errors.Is(err, runcomfy.ErrInvalidInput) {
					t.Errorf("%s(%q) error = %v, want ErrInvalidInput", op, id, err)
				}
				if got := u.calls.Load(); got != 0 {
					t.Errorf("calls = %d, want 0 (%q)", got, u.requests()[0].RequestURI)
				}
			})
		}
	}
}

func ptr[T any](v T) *T { return &v }

func TestStatusParsing(t *testing.T) {
	tests := []struct {
		name string
		body string
		want runcomfy.StatusResponse
	}{
		{
			name: "in_queue with position",
			body: `{"request_id":"req-1","status":"in_queue","queue_position":3,"status_url":"https://s","result_url":"https://r"}`,
			want: runcomfy.StatusResponse{RequestID: "req-1", Status: "in_queue", State: runcomfy.StateQueued, QueuePosition: ptr[int64](3), StatusURL: "https://s", ResultURL: "https://r"},
		},
		{
			name: "position zero is present",
			body: `{"request_id":"req-1","status":"in_queue","queue_position":0}`,
			want: runcomfy.StatusResponse{RequestID: "req-1", Status: "in_queue", State: runcomfy.StateQueued, QueuePosition: ptr[int64](0)},
		},
		{
			name: "position absent",
			body: `{"request_id":"req-1","status":"in_queue"}`,
			want: runcomfy.StatusResponse{RequestID: "req-1", Status: "in_queue", State: runcomfy.StateQueued},
		},
		{
			name: "position null",
			body: `{"request_id":"req-1","status":"in_queue","queue_position":null}`,
			want: runcomfy.StatusResponse{RequestID: "req-1", Status: "in_queue", State: runcomfy.StateQueued},
		},
		{
			name: "position as string",
			body: `{"request_id":"req-1","status":"in_queue","queue_position":"4"}`,
			want: runcomfy.StatusResponse{RequestID: "req-1", Status: "in_queue", State: runcomfy.StateQueued, QueuePosition: ptr[int64](4)},
		},
		{
			name: "position as float",
			body: `{"request_id":"req-1","status":"in_queue","queue_position":5.0}`,
			want: runcomfy.StatusResponse{RequestID: "req-1", Status: "in_queue", State: runcomfy.StateQueued, QueuePosition: ptr[int64](5)},
		},
		{
			name: "position as non-numeric string",
			body: `{"request_id":"req-1","status":"in_queue","queue_position":"n/a"}`,
			want: runcomfy.StatusResponse{RequestID: "req-1", Status: "in_queue", State: runcomfy.StateQueued},
		},
		{
			name: "in_progress with instance",
			body: `{"request_id":"req-1","status":"in_progress","instance_id":"inst-9"}`,
			want: runcomfy.StatusResponse{RequestID: "req-1", Status: "in_progress", State: runcomfy.StateRunning, InstanceID: "inst-9"},
		},
		{
			name: "completed is success",
			body: `{"request_id":"req-1","status":"completed","instance_id":"inst-9"}`,
			want: runcomfy.StatusResponse{RequestID: "req-1", Status: "completed", State: runcomfy.StateSucceeded, InstanceID: "inst-9"},
		},
		{
			name: "succeeded",
			body: `{"request_id":"req-1","status":"succeeded"}`,
			want: runcomfy.StatusResponse{RequestID: "req-1", Status: "succeeded", State: runcomfy.StateSucceeded},
		},
		{
			name: "failed",
			body: `{"request_id":"req-1","status":"failed"}`,
			want: runcomfy.StatusResponse{RequestID: "req-1", Status: "failed", State: runcomfy.StateFailed},
		},
		{
			name: "cancelled",
			body: `{"request_id":"req-1","status":"cancelled"}`,
			want: runcomfy.StatusResponse{RequestID: "req-1", Status: "cancelled", State: runcomfy.StateCancelled},
		},
		{
			name: "canceled",
			body: `{"request_id":"req-1","status":"canceled"}`,
			want: runcomfy.StatusResponse{RequestID: "req-1", Status: "canceled", State: runcomfy.StateCancelled},
		},
		{
			name: "upper case kept raw",
			body: `{"request_id":"req-1","status":"SUCCEEDED"}`,
			want: runcomfy.StatusResponse{RequestID: "req-1", Status: "SUCCEEDED", State: runcomfy.StateSucceeded},
		},
		{
			name: "mixed case and spaces",
			body: `{"request_id":"req-1","status":" In_Progress "}`,
			want: runcomfy.StatusResponse{RequestID: "req-1", Status: " In_Progress ", State: runcomfy.StateRunning},
		},
		{
			name: "unknown kept raw",
			body: `{"request_id":"req-1","status":"warming_up"}`,
			want: runcomfy.StatusResponse{RequestID: "req-1", Status: "warming_up", State: runcomfy.StateUnknown},
		},
		{
			name: "no request_id: the asked one",
			body: `{"status":"in_queue","queue_position":1}`,
			want: runcomfy.StatusResponse{RequestID: "req-1", Status: "in_queue", State: runcomfy.StateQueued, QueuePosition: ptr[int64](1)},
		},
		{
			name: "unknown fields ignored",
			body: `{"request_id":"req-1","status":"in_queue","eta_seconds":12,"extra":{"a":[1]}}`,
			want: runcomfy.StatusResponse{RequestID: "req-1", Status: "in_queue", State: runcomfy.StateQueued},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newUpstream(t, always(answer{body: tt.body}))
			c := newClient(t, u.URL, nil)
			got, err := c.Status(context.Background(), "dep-1", "req-1")
			if err != nil {
				t.Fatalf("Status: %v", err)
			}
			if !reflect.DeepEqual(*got, tt.want) {
				t.Errorf("Status() = %s, want %s", fmtStatus(*got), fmtStatus(tt.want))
			}
		})
	}
}

func fmtStatus(s runcomfy.StatusResponse) string {
	qp := "nil"
	if s.QueuePosition != nil {
		qp = strconv.FormatInt(*s.QueuePosition, 10)
	}
	type plain runcomfy.StatusResponse
	p := plain(s)
	p.QueuePosition = nil
	b, _ := json.Marshal(p)
	return string(b) + " queue_position=" + qp
}

func TestCancelParsing(t *testing.T) {
	tests := []struct {
		name string
		body string
		want runcomfy.CancelResponse
	}{
		{"outcome cancelled", `{"request_id":"req-1","outcome":"cancelled"}`, runcomfy.CancelResponse{RequestID: "req-1", Raw: "cancelled", Outcome: runcomfy.CancelDone}},
		{"outcome canceled", `{"request_id":"req-1","outcome":"canceled"}`, runcomfy.CancelResponse{RequestID: "req-1", Raw: "canceled", Outcome: runcomfy.CancelDone}},
		{"outcome not_cancellable", `{"request_id":"req-1","outcome":"not_cancellable"}`, runcomfy.CancelResponse{RequestID: "req-1", Raw: "not_cancellable", Outcome: runcomfy.CancelNotCancellable}},
		{"outcome not_cancelable", `{"request_id":"req-1","outcome":"not_cancelable"}`, runcomfy.CancelResponse{RequestID: "req-1", Raw: "not_cancelable", Outcome: runcomfy.CancelNotCancellable}},
		{"status cancellation_requested", `{"request_id":"req-1","status":"cancellation_requested"}`, runcomfy.CancelResponse{RequestID: "req-1", Raw: "cancellation_requested", Outcome: runcomfy.CancelRequested}},
		{"status cancelation_requested", `{"request_id":"req-1","status":"cancelation_requested"}`, runcomfy.CancelResponse{RequestID: "req-1", Raw: "cancelation_requested", Outcome: runcomfy.CancelRequested}},
		{"status not_cancellable", `{"request_id":"req-1","status":"not_cancellable"}`, runcomfy.CancelResponse{RequestID: "req-1", Raw: "not_cancellable", Outcome: runcomfy.CancelNotCancellable}},
		{"status cancelled", `{"request_id":"req-1","status":"cancelled"}`, runcomfy.CancelResponse{RequestID: "req-1", Raw: "cancelled", Outcome: runcomfy.CancelDone}},
		{"both: outcome wins", `{"request_id":"req-1","status":"cancellation_requested","outcome":"cancelled"}`, runcomfy.CancelResponse{RequestID: "req-1", Raw: "cancelled", Outcome: runcomfy.CancelDone}},
		{"both: outcome wins, other spelling", `{"request_id":"req-1","outcome":"canceled","status":"cancellation_requested"}`, runcomfy.CancelResponse{RequestID: "req-1", Raw: "canceled", Outcome: runcomfy.CancelDone}},
		{"both: not cancellable", `{"request_id":"req-1","status":"not_cancellable","outcome":"not_cancellable"}`, runcomfy.CancelResponse{RequestID: "req-1", Raw: "not_cancellable", Outcome: runcomfy.CancelNotCancellable}},
		{"upper case", `{"request_id":"req-1","outcome":"CANCELLED"}`, runcomfy.CancelResponse{RequestID: "req-1", Raw: "CANCELLED", Outcome: runcomfy.CancelDone}},
		{"unknown kept raw", `{"request_id":"req-1","outcome":"frobnicated"}`, runcomfy.CancelResponse{RequestID: "req-1", Raw: "frobnicated", Outcome: runcomfy.CancelUnknown}},
		{"empty: the asked id", `{}`, runcomfy.CancelResponse{RequestID: "req-1", Outcome: runcomfy.CancelUnknown}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newUpstream(t, always(answer{body: tt.body}))
			c := newClient(t, u.URL, nil)
			got, err := c.Cancel(context.Background(), "dep-1", "req-1")
			if err != nil {
				t.Fatalf("Cancel: %v", err)
			}
			if *got != tt.want {
				t.Errorf("Cancel() = %+v, want %+v", *got, tt.want)
			}
		})
	}
}

func TestRetries(t *testing.T) {
	const (
		unavailable = `{"error_code":500001,"error_message":"internal"}`
	)
	type want struct {
		calls int64
		err   error // a sentinel, nil for success
	}
	tests := []struct {
		name       string
		maxRetries int
		script     func(op string) func(int) answer
		want       want
	}{
		{
			name:   "503 then success",
			script: func(op string) func(int) answer { return sequence(answer{status: 503}, answer{body: okBody[op]}) },
			want:   want{calls: 2},
		},
		{
			name: "500001 twice then success",
			script: func(op string) func(int) answer {
				return sequence(answer{status: 500, body: unavailable}, answer{status: 500, body: unavailable}, answer{body: okBody[op]})
			},
			want: want{calls: 3},
		},
		{
			name: "HTTP 200 carrying 500001 then success",
			script: func(op string) func(int) answer {
				return sequence(answer{body: unavailable}, answer{body: okBody[op]})
			},
			want: want{calls: 2},
		},
		{
			name: "502 and 504 without body then success",
			script: func(op string) func(int) answer {
				return sequence(answer{status: 502}, answer{status: 504}, answer{body: okBody[op]})
			},
			want: want{calls: 3},
		},
		{
			name: "429 then success",
			script: func(op string) func(int) answer {
				return sequence(answer{status: 429, header: map[string]string{"Retry-After": "0"}}, answer{body: okBody[op]})
			},
			want: want{calls: 2},
		},
		{
			name: "connection reset then success",
			script: func(op string) func(int) answer {
				return sequence(answer{reset: true}, answer{reset: true}, answer{body: okBody[op]})
			},
			want: want{calls: 3},
		},
		{
			name:       "503 forever: MaxRetries+1 attempts",
			maxRetries: 2,
			script:     func(string) func(int) answer { return always(answer{status: 503}) },
			want:       want{calls: 3, err: runcomfy.ErrUnavailable},
		},
		{
			name:       "reset forever",
			maxRetries: 2,
			script:     func(string) func(int) answer { return always(answer{reset: true}) },
			want:       want{calls: 3, err: runcomfy.ErrUnavailable},
		},
		{
			name:       "429 forever",
			maxRetries: 1,
			script:     func(string) func(int) answer { return always(answer{status: 429}) },
			want:       want{calls: 2, err: runcomfy.ErrRateLimited},
		},
		{
			name:       "retries disabled",
			maxRetries: -1,
			script:     func(string) func(int) answer { return always(answer{status: 503}) },
			want:       want{calls: 1, err: runcomfy.ErrUnavailable},
		},
		{
			name: "404 not retried",
			script: func(string) func(int) answer {
				return always(answer{status: 404, body: `{"error_code":404001,"error_message":"no such request"}`})
			},
			want: want{calls: 1, err: runcomfy.ErrNotFound},
		},
		{
			name:   "401 not retried",
			script: func(string) func(int) answer { return always(answer{status: 401, body: `{"error_code":401001}`}) },
			want:   want{calls: 1, err: runcomfy.ErrUnauthorized},
		},
		{
			name:   "422 not retried",
			script: func(string) func(int) answer { return always(answer{status: 422, body: `{"error_code":422001}`}) },
			want:   want{calls: 1, err: runcomfy.ErrInvalidInput},
		},
		{
			name:   "400 without body not retried",
			script: func(string) func(int) answer { return always(answer{status: 400}) },
			want:   want{calls: 1, err: runcomfy.ErrInvalidInput},
		},
		{
			name:   "402 not retried",
			script: func(string) func(int) answer { return always(answer{status: 402}) },
			want:   want{calls: 1, err: runcomfy.ErrInsufficientFunds},
		},
		{
			name: "HTTP 200 with 10002 not retried",
			script: func(string) func(int) answer {
				return always(answer{body: `{"error_code":10002,"error_message":"disabled"}`})
			},
			want: want{calls: 1, err: runcomfy.ErrDeploymentDisabled},
		},
		{
			name:   "HTTP 500 with a 4xx code not retried",
			script: func(string) func(int) answer { return always(answer{status: 500, body: `{"error_code":10003}`}) },
			want:   want{calls: 1, err: runcomfy.ErrDeploymentDeleted},
		},
	}
	for _, tt := range tests {
		for _, op := range []string{"status", "result", "cancel"} {
			t.Run(tt.name+"/"+op, func(t *testing.T) {
				t.Parallel()
				u := newUpstream(t, tt.script(op))
				c := newClient(t, u.URL, func(c *runcomfy.Config) { c.MaxRetries = cmp.Or(tt.maxRetries, 3) })
				err := call(context.Background(), c, op)
				if tt.want.err == nil && err != nil {
					t.Errorf("%s error = %v, want success", op, err)
				}
				if tt.want.err != nil && !errors.Is(err, tt.want.err) {
					t.Errorf("%s error = %v, want %v", op, err, tt.want.err)
				}
				if got := u.calls.Load(); got != tt.want.calls {
					t.Errorf("calls = %d, want %d", got, tt.want.calls)
				}
			})
		}
	}
}

func TestRetriesReturnLastError(t *testing.T) {
	u := newUpstream(t, func(n int) answer {
		return answer{status: 503, body: `{"error_message":"attempt ` + strconv.Itoa(n) + `"}`}
	})
	c := newClient(t, u.URL, func(c *runcomfy.Config) { c.MaxRetries = 2 })
	err := call(context.Background(), c, "status")
	var ae *runcomfy.APIError
	if !errors.As(err, &ae) {
		t.Fatalf("error = %v (%T), want *APIError", err, err)
	}
	if got, want := ae.Message, "attempt 3"; got != want {
		t.Errorf("message = %q, want %q", got, want)
	}
	if got, want := ae.HTTPStatus, 503; got != want {
		t.Errorf("HTTP status = %d, want %d", got, want)
	}
}

// TestRetryAfterHonoured: the wait before a retry is at least what upstream asked
// for, even when the configured backoff is far shorter.
func TestRetryAfterHonoured(t *testing.T) {
	tests := []struct {
		name   string
		status int
		header string
		want   time.Duration
	}{
		{name: "429 seconds", status: 429, header: "1", want: time.Second},
		{name: "503 fractional seconds", status: 503, header: "0.3", want: 300 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			u := newUpstream(t, sequence(
				answer{status: tt.status, header: map[string]string{"Retry-After": tt.header}},
				answer{body: statusOK},
			))
			c := newClient(t, u.URL, nil)
			start := time.Now()
			if err := call(context.Background(), c, "status"); err != nil {
				t.Fatalf("Status: %v", err)
			}
			if got := time.Since(start); got < tt.want {
				t.Errorf("elapsed = %v, want >= %v", got, tt.want)
			}
			if got, want := u.calls.Load(), int64(2); got != want {
				t.Errorf("calls = %d, want %d", got, want)
			}
		})
	}
}

// TestSubmitNeverRetried: a retried submit can start a second paid job, so one
// attempt is all Submit makes, whatever failed and however many retries are set.
func TestSubmitNeverRetried(t *testing.T) {
	tests := []struct {
		name string
		a    answer
		want error
	}{
		{"500 without body", answer{status: 500}, runcomfy.ErrUnavailable},
		{"500001", answer{status: 500, body: `{"error_code":500001,"error_message":"internal"}`}, runcomfy.ErrUnavailable},
		{"HTTP 200 with 500001", answer{body: `{"error_code":500001}`}, runcomfy.ErrUnavailable},
		{"503 with Retry-After", answer{status: 503, header: map[string]string{"Retry-After": "0"}}, runcomfy.ErrUnavailable},
		{"429", answer{status: 429, header: map[string]string{"Retry-After": "0"}}, runcomfy.ErrRateLimited},
		{"connection reset", answer{reset: true}, runcomfy.ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newUpstream(t, sequence(tt.a, answer{body: submitOK}))
			c := newClient(t, u.URL, func(c *runcomfy.Config) { c.MaxRetries = 5 })
			err := call(context.Background(), c, "submit")
			if !errors.Is(err, tt.want) {
				t.Errorf("Submit error = %v, want %v", err, tt.want)
			}
			if got, want := u.calls.Load(), int64(1); got != want {
				t.Errorf("calls = %d, want %d", got, want)
			}
		})
	}
}

// TestAttemptTimeoutRetried: Config.Timeout bounds one attempt; an attempt that
// times out is a transport failure and is retried within the caller's context.
func TestAttemptTimeoutRetried(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	var calls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			select {
			case <-r.Context().Done():
			case <-release:
			}
			return
		}
		_, _ = io.WriteString(w, statusOK)
	}))
	t.Cleanup(srv.Close)
	c := newClient(t, srv.URL, func(c *runcomfy.Config) { c.Timeout = 100 * time.Millisecond })
	if err := call(context.Background(), c, "status"); err != nil {
		t.Fatalf("Status: %v", err)
	}
	if got, want := calls.Load(), int64(2); got != want {
		t.Errorf("calls = %d, want %d", got, want)
	}
}

func TestContext(t *testing.T) {
	// The upstream hangs until the client goes away. It reads the body first: Go's
	// server only notices a client hanging up once the body is consumed.
	hang := func(t *testing.T) *httptest.Server {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
		}))
		t.Cleanup(srv.Close)
		return srv
	}
	for _, op := range allOps {
		t.Run("deadline/"+op, func(t *testing.T) {
			t.Parallel()
			srv := hang(t)
			c := newClient(t, srv.URL, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			start := time.Now()
			err := call(ctx, c, op)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("%s error = %v, want context.DeadlineExceeded", op, err)
			}
			if got, limit := time.Since(start), 2*time.Second; got > limit {
				t.Errorf("%s returned after %v, want < %v", op, got, limit)
			}
			if err != nil && strings.Contains(err.Error(), testToken) {
				t.Errorf("error %q carries the token", err)
			}
		})
		t.Run("cancel/"+op, func(t *testing.T) {
			t.Parallel()
			srv := hang(t)
			c := newClient(t, srv.URL, nil)
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(100*time.Millisecond, cancel)
			start := time.Now()
			err := call(ctx, c, op)
			if !errors.Is(err, context.Canceled) {
				t.Errorf("%s error = %v, want context.Canceled", op, err)
			}
			if got, limit := time.Since(start), 2*time.Second; got > limit {
				t.Errorf("%s returned after %v, want < %v", op, got, limit)
			}
		})
		t.Run("already cancelled/"+op, func(t *testing.T) {
			u := newUpstream(t, always(answer{body: okBody[op]}))
			c := newClient(t, u.URL, nil)
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			if err := call(ctx, c, op); !errors.Is(err, context.Canceled) {
				t.Errorf("%s error = %v, want context.Canceled", op, err)
			}
		})
	}

	// A deadline that falls inside the wait before a retry: the wait is not
	// begun, and the call ends with the failure that asked for it (here the
	// 429 and its Retry-After, which the caller can act on), not with a
	// deadline. (Retry-After stays under the longest wait the client sleeps
	// on itself.)
	t.Run("deadline during backoff", func(t *testing.T) {
		t.Parallel()
		u := newUpstream(t, always(answer{status: 429, header: map[string]string{"Retry-After": "5"}}))
		c := newClient(t, u.URL, nil)
		ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
		defer cancel()
		start := time.Now()
		err := call(ctx, c, "status")
		var apiErr *runcomfy.APIError
		if !errors.As(err, &apiErr) || apiErr.HTTPStatus != 429 || apiErr.RetryAfter != 5*time.Second {
			t.Errorf("Status error = %v, want the 429 with its Retry-After of 5s", err)
		}
		if got, limit := time.Since(start), 5*time.Second; got > limit {
			t.Errorf("elapsed = %v, want < %v", got, limit)
		}
		if got, want := u.calls.Load(), int64(1); got != want {
			t.Errorf("calls = %d, want %d", got, want)
		}
	})
}

// TestNoRedirect: the bearer token must not follow a redirect anywhere, and the API
// never redirects, so a 3xx is an error and nothing else is called.
func TestNoRedirect(t *testing.T) {
	var elsewhere atomic.Int64
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhere.Add(1)
		_, _ = io.WriteString(w, statusOK)
	}))
	t.Cleanup(other.Close)
	u := newUpstream(t, always(answer{status: http.StatusFound, header: map[string]string{"Location": other.URL + "/steal"}}))
	c := newClient(t, u.URL, noRetries)
	err := call(context.Background(), c, "status")
	if !errors.Is(err, runcomfy.ErrUnavailable) {
		t.Errorf("Status error = %v, want ErrUnavailable", err)
	}
	if got := elsewhere.Load(); got != 0 {
		t.Errorf("redirect target calls = %d, want 0", got)
	}
}

// TestResponseSizeLimit: an answer beyond the limit is refused rather than read
// whole into memory.
func TestResponseSizeLimit(t *testing.T) {
	big := `{"request_id":"req-1","status":"in_queue","pad":"` + strings.Repeat("x", 9<<20) + `"}`
	u := newUpstream(t, always(answer{body: big}))
	c := newClient(t, u.URL, noRetries)
	err := call(context.Background(), c, "status")
	if !errors.Is(err, runcomfy.ErrUnavailable) {
		t.Errorf("Status error = %v, want ErrUnavailable", err)
	}
}

// TestConcurrentUse: one client serves many goroutines (run with -race).
func TestConcurrentUse(t *testing.T) {
	u := newUpstream(t, func(n int) answer {
		if n%3 == 0 {
			return answer{status: 503}
		}
		return answer{body: statusOK}
	})
	c := newClient(t, u.URL, func(c *runcomfy.Config) { c.MaxRetries = 5 })
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for range 32 {
		wg.Go(func() {
			if err := call(context.Background(), c, "status"); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("Status: %v", err)
	}
}

// jsonEqual compares two JSON documents by value, ignoring layout and key order.
func jsonEqual(t *testing.T, got, want []byte) bool {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("got is not JSON: %v: %s", err, got)
	}
	if err := json.Unmarshal(want, &w); err != nil {
		t.Fatalf("want is not JSON: %v: %s", err, want)
	}
	return reflect.DeepEqual(g, w)
}

// TestAnswerAboutAnotherRequest: an answer that names another request than
// the one asked for is refused, never read as the asked one's (nor handed on
// to move the other); a submit answer whose id breaks the id rule is refused
// as one that names no request.
func TestAnswerAboutAnotherRequest(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		body string
		call func(c *runcomfy.Client) error
	}{
		{"status", `{"request_id":"req-other","status":"succeeded"}`, func(c *runcomfy.Client) error {
			_, err := c.Status(ctx, "dep-1", "req-1")
			return err
		}},
		{"result", `{"request_id":"req-other","status":"succeeded","outputs":{"1":{"images":[{"url":"https://evil/x"}]}}}`, func(c *runcomfy.Client) error {
			_, err := c.Result(ctx, "dep-1", "req-1")
			return err
		}},
		{"cancel", `{"request_id":"req-other","outcome":"cancelled"}`, func(c *runcomfy.Client) error {
			_, err := c.Cancel(ctx, "dep-1", "req-1")
			return err
		}},
		{"submit with a path for an id", `{"request_id":"../../etc/passwd"}`, func(c *runcomfy.Client) error {
			_, err := c.Submit(ctx, "dep-1", json.RawMessage(`{}`), runcomfy.SubmitOptions{})
			return err
		}},
		{"submit with a space in the id", `{"request_id":"a b"}`, func(c *runcomfy.Client) error {
			_, err := c.Submit(ctx, "dep-1", json.RawMessage(`{}`), runcomfy.SubmitOptions{})
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newUpstream(t, always(answer{body: tt.body}))
			err := tt.call(newClient(t, u.URL, nil))
			var apiErr *runcomfy.APIError
			if !errors.As(err, &apiErr) || apiErr.HTTPStatus != http.StatusOK || apiErr.Err != nil {
				t.Fatalf("error = %v, want an APIError for a 200 answer that cannot be used", err)
			}
		})
	}
	// The same answers about the request asked for are read.
	u := newUpstream(t, always(answer{body: `{"request_id":"req-1","status":"in_progress"}`}))
	if st, err := newClient(t, u.URL, nil).Status(ctx, "dep-1", "req-1"); err != nil || st.RequestID != "req-1" || st.State != runcomfy.StateRunning {
		t.Fatalf("Status = %+v, %v", st, err)
	}
}

// TestTokenEchoedInAJobErrorIsRedacted: RunComfy's token, echoed in a failed
// job's error (as in an error answer), never reaches what the client returns.
func TestTokenEchoedInAJobErrorIsRedacted(t *testing.T) {
	body := `{"request_id":"req-1","status":"failed","error":{"error":"Auth ` + testToken + `","details":"Authorization: Bearer ` + testToken + `","errorCode":"` + testToken + `"}}`
	u := newUpstream(t, always(answer{body: body}))
	res, err := newClient(t, u.URL, nil).Result(context.Background(), "dep-1", "req-1")
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprintf("%+v", res.Error); strings.Contains(got, testToken) {
		t.Fatalf("the token is in the job's error: %s", got)
	}
	if !strings.Contains(res.Error.Message, "Bearer [redacted]") {
		t.Errorf("error message %q, want the token's place marked", res.Error.Message)
	}
}

// TestAnswerOfTheWrongShapeIsDescribedInJSONTerms: a member of the wrong type
// is named by its JSON name, not by the Go type it was to fill.
func TestAnswerOfTheWrongShapeIsDescribedInJSONTerms(t *testing.T) {
	u := newUpstream(t, always(answer{body: `{"request_id":true}`}))
	_, err := newClient(t, u.URL, nil).Submit(context.Background(), "dep-1", json.RawMessage(`{}`), runcomfy.SubmitOptions{})
	var apiErr *runcomfy.APIError
	if !errors.As(err, &apiErr) {
		t.Fatalf("error = %v, want an APIError", err)
	}
	if msg := apiErr.Message; !strings.Contains(msg, `"request_id" is a JSON bool`) || strings.Contains(msg, "Go value") || strings.Contains(msg, "struct") {
		t.Errorf("message %q, want the member and its JSON type only", msg)
	}
}

// TestErrorCodeInASuccessWithoutAMessage: an HTTP 200 that carries an
// error_code and no message is described by its code, not by "OK".
func TestErrorCodeInASuccessWithoutAMessage(t *testing.T) {
	u := newUpstream(t, always(answer{body: `{"error_code":10002}`}))
	_, err := newClient(t, u.URL, nil).Submit(context.Background(), "dep-1", json.RawMessage(`{}`), runcomfy.SubmitOptions{})
	var apiErr *runcomfy.APIError
	if !errors.As(err, &apiErr) || apiErr.Code != 10002 {
		t.Fatalf("error = %v, want an APIError with code 10002", err)
	}
	if apiErr.Message != "error_code 10002" {
		t.Errorf("message %q, want %q", apiErr.Message, "error_code 10002")
	}
}
