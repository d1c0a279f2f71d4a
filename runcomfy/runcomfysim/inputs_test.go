package runcomfysim_test

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
)

// mediaServer serves input files by path and records every request it gets, so
// tests see what the simulator fetched.
type mediaServer struct {
	srv   *httptest.Server
	files map[string]mediaFile

	mu   sync.Mutex
	seen []string
}

type mediaFile struct {
	contentType string
	body        []byte
}

func newMediaServer(t *testing.T, files map[string]mediaFile) *mediaServer {
	t.Helper()
	m := &mediaServer{files: files}
	m.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.mu.Lock()
		m.seen = append(m.seen, r.Method+" "+r.URL.Path)
		m.mu.Unlock()
		f, ok := m.files[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", f.contentType)
		_, _ = w.Write(f.body)
	}))
	t.Cleanup(m.srv.Close)
	return m
}

func (m *mediaServer) requests() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.seen)
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// jsonString quotes s as a JSON string.
func jsonString(t *testing.T, s string) string {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func fetching() runcomfysim.Options {
	opts := manual()
	opts.FetchInputs = true
	return opts
}

// TestFetchInputs: with FetchInputs, every http(s) URL and base64 data: URI among
// the body's values, at any depth, is read and recorded in document order, and the
// submit is accepted; keys, plain text and other schemes are left alone.
func TestFetchInputs(t *testing.T) {
	png := []byte("\x89PNG\r\n\x1a\n fake image bytes")
	video := []byte(strings.Repeat("frame ", 5000))
	inline := []byte("inline bytes \x00\xff")
	media := newMediaServer(t, map[string]mediaFile{
		"/cat.png":   {"image/png", png},
		"/clip.mp4":  {"video/mp4", video},
		"/empty.txt": {"text/plain", nil},
	})
	b64 := base64.StdEncoding.EncodeToString(inline)

	tests := []struct {
		name string
		body string
		want []runcomfysim.FetchedInput
		// fetched is what the media server must have seen.
		fetched []string
	}{
		{
			name:    "url input",
			body:    `{"overrides":{"12":{"inputs":{"image":` + jsonString(t, media.srv.URL+"/cat.png") + `}}}}`,
			want:    []runcomfysim.FetchedInput{{Path: "/overrides/12/inputs/image", URL: media.srv.URL + "/cat.png", ContentType: "image/png", Size: int64(len(png)), SHA256: sum(png)}},
			fetched: []string{"GET /cat.png"},
		},
		{
			name: "data uri input",
			body: `{"overrides":{"12":{"inputs":{"image":"data:image/png;base64,` + b64 + `"}}}}`,
			want: []runcomfysim.FetchedInput{{Path: "/overrides/12/inputs/image", URL: "data:image/png", ContentType: "image/png", Size: int64(len(inline)), SHA256: sum(inline)}},
		},
		{
			name: "data uri without media type",
			body: `{"img":"data:;base64,` + b64 + `"}`,
			want: []runcomfysim.FetchedInput{{Path: "/img", URL: "data:", Size: int64(len(inline)), SHA256: sum(inline)}},
		},
		{
			name: "nested values in document order, keys ignored",
			body: `{
				"prompt": "a cat, see http is not a url",
				` + jsonString(t, media.srv.URL+"/not-fetched.png") + `: "key, not a value",
				"overrides": {
					"3": {"inputs": {"frames": [` + jsonString(t, media.srv.URL+"/clip.mp4") + `, 42, {"x": ` + jsonString(t, media.srv.URL+"/cat.png") + `}]}},
					"a/b~c": {"inputs": {"mask": "data:image/png;base64,` + b64 + `"}}
				},
				"extra_data": {"list": [[` + jsonString(t, media.srv.URL+"/empty.txt") + `]]},
				"others": ["ftp://example.com/x.png", "/relative.png", "data:text/plain,hello", "mailto:a@b", true, null, 1.5],
				"webhook": ` + jsonString(t, media.srv.URL+"/hook") + `
			}`,
			want: []runcomfysim.FetchedInput{
				{Path: "/overrides/3/inputs/frames/0", URL: media.srv.URL + "/clip.mp4", ContentType: "video/mp4", Size: int64(len(video)), SHA256: sum(video)},
				{Path: "/overrides/3/inputs/frames/2/x", URL: media.srv.URL + "/cat.png", ContentType: "image/png", Size: int64(len(png)), SHA256: sum(png)},
				{Path: "/overrides/a~1b~0c/inputs/mask", URL: "data:image/png", ContentType: "image/png", Size: int64(len(inline)), SHA256: sum(inline)},
				{Path: "/extra_data/list/0/0", URL: media.srv.URL + "/empty.txt", ContentType: "text/plain", Size: 0, SHA256: sum(nil)},
			},
			fetched: []string{"GET /clip.mp4", "GET /cat.png", "GET /empty.txt"},
		},
		{
			name: "no inputs",
			body: `{"overrides":{"12":{"inputs":{"text":"hello","seed":42}}}}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, fetching())
			before := len(media.requests())
			id := h.submit(t, "v1", "dep", "", tt.body)
			rec, ok := h.sim.LastSubmit()
			if !ok {
				t.Fatal("no submit recorded")
			}
			if rec.RequestID != id {
				t.Errorf("record request id: got %q, want %q", rec.RequestID, id)
			}
			if !slices.Equal(rec.Inputs, tt.want) {
				t.Errorf("inputs:\ngot  %+v\nwant %+v", rec.Inputs, tt.want)
			}
			if got := media.requests()[before:]; !slices.Equal(got, tt.fetched) {
				t.Errorf("media server requests: got %q, want %q", got, tt.fetched)
			}
			if st, _ := h.sim.JobState(id); st != "in_queue" {
				t.Errorf("job state: got %q, want in_queue", st)
			}
		})
	}
}

// TestFetchInputsRefused: an input that cannot be read refuses the submit with the
// validation error, pointing at the value and naming it (never a data: URI's
// content), and no job is created.
func TestFetchInputsRefused(t *testing.T) {
	media := newMediaServer(t, map[string]mediaFile{"/ok.png": {"image/png", []byte("ok")}})
	gone := httptest.NewServer(http.NotFoundHandler())
	goneURL := gone.URL + "/x.png"
	gone.Close() // nothing listens there any more
	long := media.srv.URL + "/missing.png?sig=" + strings.Repeat("s", 500)
	const badPayload = "bm90*YmFzZTY0"

	tests := []struct {
		name    string
		body    string
		loc     []any
		typ     string
		inMsg   []string
		notInMs []string
		// fetched is what the media server must have seen.
		fetched []string
	}{
		{
			name:    "404",
			body:    `{"overrides":{"12":{"inputs":{"image":` + jsonString(t, media.srv.URL+"/missing.png") + `}}}}`,
			loc:     []any{"body", "overrides", "12", "inputs", "image"},
			typ:     "url_parsing",
			inMsg:   []string{media.srv.URL + "/missing.png", "404"},
			fetched: []string{"GET /missing.png"},
		},
		{
			name:  "connection refused",
			body:  `{"img":` + jsonString(t, goneURL) + `}`,
			loc:   []any{"body", "img"},
			typ:   "url_parsing",
			inMsg: []string{goneURL},
		},
		{
			name:    "long url is truncated",
			body:    `{"list":[` + jsonString(t, long) + `]}`,
			loc:     []any{"body", "list", "0"},
			typ:     "url_parsing",
			inMsg:   []string{long[:150], "404"},
			notInMs: []string{long},
			fetched: []string{"GET /missing.png"},
		},
		{
			name:    "bad base64",
			body:    `{"overrides":{"7":{"inputs":{"mask":"data:image/png;base64,` + badPayload + `"}}}}`,
			loc:     []any{"body", "overrides", "7", "inputs", "mask"},
			typ:     "base64_decode",
			inMsg:   []string{"data:image/png"},
			notInMs: []string{badPayload},
		},
		{
			name:    "missing padding",
			body:    `{"mask":"data:image/png;base64,YWJjZA"}`,
			loc:     []any{"body", "mask"},
			typ:     "base64_decode",
			notInMs: []string{"YWJjZA"},
		},
		{
			name:    "first failure stops, later inputs are not read",
			body:    `{"a":` + jsonString(t, media.srv.URL+"/ok.png") + `,"b":` + jsonString(t, media.srv.URL+"/missing.png") + `,"c":` + jsonString(t, media.srv.URL+"/ok.png?again") + `}`,
			loc:     []any{"body", "b"},
			typ:     "url_parsing",
			fetched: []string{"GET /ok.png", "GET /missing.png"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, fetching())
			var outcomes atomic.Int64
			h.sim.SetOutcome(func(string, []byte) runcomfysim.Outcome {
				outcomes.Add(1)
				return runcomfysim.Outcome{}
			})
			before := len(media.requests())
			r := h.do(t, http.MethodPost, "/prod/v1/deployments/dep/inference", tt.body)
			if r.status != http.StatusUnprocessableEntity {
				t.Fatalf("status: got %d (%s), want 422", r.status, r.raw)
			}
			if got := r.body["error_code"]; got != float64(422001) {
				t.Errorf("error_code: got %v, want 422001", got)
			}
			if _, ok := r.body["request_id"]; ok {
				t.Errorf("refused submit carries a request_id: %s", r.raw)
			}
			detail, _ := r.body["detail"].([]any)
			if len(detail) != 1 {
				t.Fatalf("detail: got %s, want one entry", r.raw)
			}
			d, _ := detail[0].(map[string]any)
			if !jsonEqual(t, d["loc"], tt.loc) {
				t.Errorf("loc: got %v, want %v", d["loc"], tt.loc)
			}
			if d["type"] != tt.typ {
				t.Errorf("type: got %v, want %s", d["type"], tt.typ)
			}
			msg, _ := d["msg"].(string)
			for _, s := range tt.inMsg {
				if !strings.Contains(msg, s) {
					t.Errorf("msg %q does not contain %q", msg, s)
				}
			}
			for _, s := range tt.notInMs {
				if strings.Contains(msg, s) {
					t.Errorf("msg %q contains %q", msg, s)
				}
			}
			if len(msg) > 600 {
				t.Errorf("msg is %d bytes long: %q", len(msg), msg)
			}
			if got := media.requests()[before:]; !slices.Equal(got, tt.fetched) {
				t.Errorf("media server requests: got %q, want %q", got, tt.fetched)
			}

			if got := h.sim.Calls(runcomfysim.EndpointSubmit); got != 1 {
				t.Errorf("submit calls: got %d, want 1", got)
			}
			subs := h.sim.Submits()
			if len(subs) != 1 {
				t.Fatalf("submits: got %d, want 1", len(subs))
			}
			if subs[0].RequestID != "" || subs[0].HTTPStatus != http.StatusUnprocessableEntity {
				t.Errorf("record: request id %q, status %d; want none and 422", subs[0].RequestID, subs[0].HTTPStatus)
			}
			if n := outcomes.Load(); n != 0 {
				t.Errorf("outcome function called %d times: a job was being created", n)
			}
		})
	}
}

// TestFetchInputsOff: without FetchInputs (the default) and on a submit refused
// before inputs are looked at, nothing is fetched and nothing recorded.
func TestFetchInputsOff(t *testing.T) {
	media := newMediaServer(t, map[string]mediaFile{"/cat.png": {"image/png", []byte("png")}})
	body := `{"overrides":{"12":{"inputs":{"image":` + jsonString(t, media.srv.URL+"/cat.png") +
		`,"mask":"data:image/png;base64,###"}}}}`

	t.Run("option off", func(t *testing.T) {
		h := newHarness(t, manual())
		h.submit(t, "v1", "dep", "", body)
		if rec, _ := h.sim.LastSubmit(); rec.Inputs != nil {
			t.Errorf("inputs: got %+v, want none", rec.Inputs)
		}
	})
	t.Run("refused before", func(t *testing.T) {
		h := newHarness(t, fetching())
		h.sim.SetDeployment("dep", runcomfysim.DeploymentDisabled)
		if r := h.do(t, http.MethodPost, "/prod/v1/deployments/dep/inference", body); r.status != http.StatusForbidden {
			t.Fatalf("status: got %d (%s), want 403", r.status, r.raw)
		}
		if rec, _ := h.sim.LastSubmit(); rec.Inputs != nil {
			t.Errorf("inputs: got %+v, want none", rec.Inputs)
		}
	})
	if got := media.requests(); len(got) != 0 {
		t.Errorf("media server requests: got %q, want none", got)
	}
}
