package runcomfysim_test

import (
	"bytes"
	"context"
	"errors"
	"image/png"
	"net/http"
	"net/url"
	"regexp"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
)

var (
	uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	timeRE = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$`)
)

func TestBearer(t *testing.T) {
	tests := []struct {
		name string
		auth string
		want int
	}{
		{"missing", "", http.StatusUnauthorized},
		{"basic scheme", "Basic c2ltLXRva2Vu", http.StatusUnauthorized},
		{"empty bearer", "Bearer ", http.StatusUnauthorized},
		{"wrong token", "Bearer nope", http.StatusUnauthorized},
		{"right token", "Bearer " + testToken, http.StatusOK},
		{"scheme is case-insensitive", "bearer " + testToken, http.StatusOK},
	}
	h := newHarness(t, manual())
	id := h.submit(t, "v1", "dep", "", `{}`)
	paths := map[string]struct{ method, path, body string }{
		runcomfysim.EndpointSubmit: {http.MethodPost, "/prod/v1/deployments/dep/inference", `{}`},
		runcomfysim.EndpointStatus: {http.MethodGet, reqPath("v1", "dep", id, "status"), ""},
		runcomfysim.EndpointResult: {http.MethodGet, reqPath("v1", "dep", id, "result"), ""},
		runcomfysim.EndpointCancel: {http.MethodPost, reqPath("v1", "dep", "00000000-0000-4000-8000-000000000000", "cancel"), ""},
	}
	for _, tt := range tests {
		for ep, p := range paths {
			t.Run(tt.name+"/"+ep, func(t *testing.T) {
				r := h.doAuth(t, p.method, p.path, p.body, tt.auth)
				if tt.want == http.StatusUnauthorized {
					if r.status != tt.want {
						t.Fatalf("status: got %d, want %d", r.status, tt.want)
					}
					if got := r.body["error_code"]; got != float64(401001) {
						t.Errorf("error_code: got %v, want 401001", got)
					}
					return
				}
				// The cancel of an unknown id passed the bearer check if it got 404.
				if r.status == http.StatusUnauthorized {
					t.Fatalf("status: got 401 with a valid token")
				}
			})
		}
	}
	t.Run("rejected calls are counted", func(t *testing.T) {
		if got, want := h.sim.Calls(runcomfysim.EndpointSubmit), len(tests)+1; got != want {
			t.Errorf("submit calls: got %d, want %d", got, want)
		}
		if got, want := h.sim.TotalCalls(), 4*len(tests)+1; got != want {
			t.Errorf("total calls: got %d, want %d", got, want)
		}
	})
}

func TestAnyBearerWhenNoToken(t *testing.T) {
	h := newHarness(t, runcomfysim.Options{Manual: true})
	tests := []struct {
		auth string
		want int
	}{
		{"Bearer whatever", http.StatusOK},
		{"Bearer ", http.StatusUnauthorized},
		{"", http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.auth, func(t *testing.T) {
			r := h.doAuth(t, http.MethodPost, "/prod/v1/deployments/d/inference", `{}`, tt.auth)
			if r.status != tt.want {
				t.Errorf("status: got %d, want %d", r.status, tt.want)
			}
		})
	}
}

func TestLifecycleManual(t *testing.T) {
	for _, version := range []string{"v1", "v2"} {
		t.Run(version, func(t *testing.T) {
			h := newHarness(t, manual())
			const dep = "dep-1"
			body := `{"overrides":{"6":{"inputs":{"text":"hi","seed":42}}},"extra":1.50}`
			r := h.do(t, http.MethodPost, "/prod/"+version+"/deployments/"+dep+"/inference", body)
			if r.status != http.StatusOK {
				t.Fatalf("submit: got %d %s", r.status, r.raw)
			}
			if got, want := keys(r.body), sorted("request_id", "status_url", "result_url", "cancel_url"); !slices.Equal(got, want) {
				t.Fatalf("submit keys: got %v, want %v", got, want)
			}
			id := r.body["request_id"].(string)
			if !uuidRE.MatchString(id) {
				t.Errorf("request_id: got %q, want a UUID", id)
			}
			for _, kind := range []string{"status", "result", "cancel"} {
				if got, want := r.body[kind+"_url"], h.srv.URL+reqPath(version, dep, id, kind); got != want {
					t.Errorf("%s_url: got %v, want %v", kind, got, want)
				}
			}

			st := h.do(t, http.MethodGet, reqPath(version, dep, id, "status"), "").body
			if st["status"] != "in_queue" || st["queue_position"] != float64(0) {
				t.Errorf("queued status: got %v", st)
			}
			if _, ok := st["instance_id"]; ok {
				t.Errorf("queued status has instance_id: %v", st)
			}
			res := h.do(t, http.MethodGet, reqPath(version, dep, id, "result"), "").body
			if res["status"] != "in_queue" || res["outputs"] != nil {
				t.Errorf("queued result: got %v", res)
			}
			if !timeRE.MatchString(res["created_at"].(string)) {
				t.Errorf("created_at: got %v", res["created_at"])
			}

			advance(t, h.sim, id, 1)
			st = h.do(t, http.MethodGet, reqPath(version, dep, id, "status"), "").body
			if st["status"] != "in_progress" || st["instance_id"] == "" || st["instance_id"] == nil {
				t.Errorf("running status: got %v", st)
			}
			if _, ok := st["queue_position"]; ok {
				t.Errorf("running status has queue_position: %v", st)
			}

			advance(t, h.sim, id, 1)
			res = h.do(t, http.MethodGet, reqPath(version, dep, id, "result"), "").body
			if res["status"] != "succeeded" {
				t.Fatalf("result status: got %v", res["status"])
			}
			for _, k := range []string{"created_at", "started_at", "finished_at"} {
				if s, _ := res[k].(string); !timeRE.MatchString(s) {
					t.Errorf("%s: got %q", k, s)
				}
			}
			outputs := res["outputs"].(map[string]any)
			img := outputs["9"].(map[string]any)["images"].([]any)[0].(map[string]any)
			wantImg := map[string]any{
				"filename":  "ComfyUI_00001_.png",
				"subfolder": "",
				"type":      "output",
				"url":       h.srv.URL + "/media/" + id + "/ComfyUI_00001_.png",
			}
			for k, want := range wantImg {
				if img[k] != want {
					t.Errorf("image %s: got %v, want %v", k, img[k], want)
				}
			}
			text := outputs["38:42"].(map[string]any)["text"].([]any)[0].([]any)[0]
			if text != "a caption" {
				t.Errorf("text output: got %v", text)
			}

			media := h.doAuth(t, http.MethodGet, img["url"].(string), "", "")
			if media.status != http.StatusOK || media.header.Get("Content-Type") != "image/png" {
				t.Fatalf("media: got %d %q", media.status, media.header.Get("Content-Type"))
			}
			if _, err := png.Decode(bytes.NewReader(media.raw)); err != nil {
				t.Errorf("media is not a PNG: %v", err)
			}
			if got := h.sim.Calls(runcomfysim.EndpointMedia); got != 1 {
				t.Errorf("media calls: got %d, want 1", got)
			}

			if err := h.sim.Advance(id); !errors.Is(err, runcomfysim.ErrTerminal) {
				t.Errorf("advance terminal: got %v, want ErrTerminal", err)
			}
			if err := h.sim.Advance("nope"); !errors.Is(err, runcomfysim.ErrUnknownRequest) {
				t.Errorf("advance unknown: got %v, want ErrUnknownRequest", err)
			}
			rec, ok := h.sim.LastSubmit()
			if !ok || string(rec.Body) != body || rec.APIVersion != version || rec.DeploymentID != dep ||
				rec.RequestID != id || rec.HTTPStatus != http.StatusOK {
				t.Errorf("last submit: got %+v", rec)
			}
		})
	}
}

func TestQueuePosition(t *testing.T) {
	h := newHarness(t, manual())
	a := h.submit(t, "v1", "dep-a", "", `{}`)
	b := h.submit(t, "v1", "dep-a", "", `{}`)
	other := h.submit(t, "v1", "dep-b", "", `{}`)
	c := h.submit(t, "v2", "dep-a", "", `{}`)

	check := func(t *testing.T, want map[string]float64) {
		t.Helper()
		for id, pos := range want {
			dep := "dep-a"
			if id == other {
				dep = "dep-b"
			}
			if got := h.status(t, dep, id)["queue_position"]; got != pos {
				t.Errorf("queue_position of %s: got %v, want %v", id, got, pos)
			}
		}
	}
	t.Run("in submit order per deployment", func(t *testing.T) {
		check(t, map[string]float64{a: 0, b: 1, c: 2, other: 0})
	})
	t.Run("moves up when a job ahead starts", func(t *testing.T) {
		advance(t, h.sim, a, 1)
		check(t, map[string]float64{b: 0, c: 1, other: 0})
	})
	t.Run("moves up when a job ahead is cancelled", func(t *testing.T) {
		if r := h.do(t, http.MethodPost, reqPath("v1", "dep-a", b, "cancel"), ""); r.status != http.StatusOK {
			t.Fatalf("cancel: got %d", r.status)
		}
		check(t, map[string]float64{c: 0})
	})
}

func TestDeploymentStates(t *testing.T) {
	tests := []struct {
		state                  runcomfysim.DeploymentState
		submitHTTP, submitCode int
		statusHTTP, statusCode int // for a request submitted before the change
	}{
		{runcomfysim.DeploymentActive, 200, 0, 200, 0},
		{runcomfysim.DeploymentDisabled, 403, 10002, 200, 0},
		{runcomfysim.DeploymentNoFunds, 402, 10001, 200, 0},
		{runcomfysim.DeploymentDeleted, 404, 10003, 404, 10003},
		{runcomfysim.DeploymentUnknown, 404, 404001, 404, 404001},
	}
	for _, tt := range tests {
		t.Run(tt.state.String(), func(t *testing.T) {
			h := newHarness(t, manual())
			id := h.submit(t, "v1", "dep", "", `{}`)
			h.sim.SetDeployment("dep", tt.state)

			r := h.do(t, http.MethodPost, "/prod/v1/deployments/dep/inference", `{}`)
			if r.status != tt.submitHTTP {
				t.Errorf("submit status: got %d, want %d", r.status, tt.submitHTTP)
			}
			if tt.submitCode != 0 && r.body["error_code"] != float64(tt.submitCode) {
				t.Errorf("submit error_code: got %v, want %d", r.body["error_code"], tt.submitCode)
			}
			for _, kind := range []string{"status", "result", "cancel"} {
				method := http.MethodGet
				if kind == "cancel" {
					method = http.MethodPost
				}
				r = h.do(t, method, reqPath("v1", "dep", id, kind), "")
				if r.status != tt.statusHTTP {
					t.Errorf("%s status: got %d, want %d", kind, r.status, tt.statusHTTP)
				}
				if tt.statusCode != 0 && r.body["error_code"] != float64(tt.statusCode) {
					t.Errorf("%s error_code: got %v, want %d", kind, r.body["error_code"], tt.statusCode)
				}
			}
			h.sim.SetDeployment("dep", runcomfysim.DeploymentActive)
			h.submit(t, "v1", "dep", "", `{}`)
		})
	}
}

func TestSubmitValidation(t *testing.T) {
	tests := []struct {
		name, query, body string
	}{
		{"empty body", "", ""},
		{"array", "", `[1,2]`},
		{"null", "", `null`},
		{"string", "", `"x"`},
		{"malformed", "", `{"a":`},
		{"trailing garbage", "", `{} {}`},
		{"overrides not an object", "", `{"overrides":[1]}`},
		{"webhook not a URL", "webhook=" + url.QueryEscape("not a url"), `{}`},
		{"webhook not http", "webhook=" + url.QueryEscape("ftp://example.com/x"), `{}`},
		{"legacy webhook not a string", "", `{"webhook":5}`},
	}
	h := newHarness(t, manual())
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := h.do(t, http.MethodPost, "/prod/v1/deployments/d/inference?"+tt.query, tt.body)
			if r.status != http.StatusUnprocessableEntity {
				t.Fatalf("status: got %d (%s), want 422", r.status, r.raw)
			}
			if r.body["error_code"] != float64(422001) {
				t.Errorf("error_code: got %v, want 422001", r.body["error_code"])
			}
			if d, ok := r.body["detail"].([]any); !ok || len(d) == 0 {
				t.Errorf("detail: got %v, want a non-empty array", r.body["detail"])
			}
			rec, _ := h.sim.LastSubmit()
			if rec.HTTPStatus != http.StatusUnprocessableEntity || rec.RequestID != "" || string(rec.Body) != tt.body {
				t.Errorf("record: got %+v", rec)
			}
		})
	}
}

func TestNotFound(t *testing.T) {
	h := newHarness(t, manual())
	id := h.submit(t, "v1", "dep", "", `{}`)
	tests := []struct {
		name, method, path string
	}{
		{"unknown request", http.MethodGet, reqPath("v1", "dep", "00000000-0000-4000-8000-000000000000", "status")},
		{"request of another deployment", http.MethodGet, reqPath("v1", "other", id, "status")},
		{"result of another deployment", http.MethodGet, reqPath("v1", "other", id, "result")},
		{"cancel of another deployment", http.MethodPost, reqPath("v1", "other", id, "cancel")},
		{"unknown api version", http.MethodGet, reqPath("v3", "dep", id, "status")},
		{"unknown route", http.MethodGet, "/prod/v1/nothing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := h.do(t, tt.method, tt.path, "")
			if r.status != http.StatusNotFound || r.body["error_code"] != float64(404001) {
				t.Errorf("got %d %s, want 404 with 404001", r.status, r.raw)
			}
		})
	}
	if got, _ := h.sim.JobState(id); got != "in_queue" {
		t.Errorf("cancel through another deployment changed the job: %q", got)
	}
}

func TestFaultErrors(t *testing.T) {
	tests := []struct {
		name       string
		endpoint   string
		fault      runcomfysim.FaultError
		wantHTTP   int
		wantKeys   []string
		wantCode   any
		wantHeader string // Retry-After
		wantCType  string
	}{
		{
			name:     "HTTP 200 with error_code on submit",
			endpoint: runcomfysim.EndpointSubmit,
			fault:    runcomfysim.FaultError{HTTPStatus: 200, ErrorCode: 500001, Message: "internal"},
			wantHTTP: 200, wantKeys: sorted("error_code", "error_message"), wantCode: float64(500001),
			wantCType: "application/json",
		},
		{
			name:     "429 with Retry-After on status",
			endpoint: runcomfysim.EndpointStatus,
			fault:    runcomfysim.FaultError{HTTPStatus: 429, RetryAfter: "3"},
			wantHTTP: 429, wantKeys: sorted("error_message"), wantHeader: "3", wantCType: "application/json",
		},
		{
			name:     "message key and detail on result",
			endpoint: runcomfysim.EndpointResult,
			fault: runcomfysim.FaultError{HTTPStatus: 400, ErrorCode: 422001, UseMessageKey: true,
				Detail: []any{map[string]any{"loc": []string{"body"}, "msg": "bad"}}},
			wantHTTP: 400, wantKeys: sorted("error_code", "message", "detail"), wantCode: float64(422001),
			wantCType: "application/json",
		},
		{
			name:     "default status is 500",
			endpoint: runcomfysim.EndpointCancel,
			fault:    runcomfysim.FaultError{ErrorCode: 500001},
			wantHTTP: 500, wantKeys: sorted("error_code", "error_message"), wantCode: float64(500001),
			wantCType: "application/json",
		},
		{
			name:     "proxy error page",
			endpoint: runcomfysim.EndpointStatus,
			fault:    runcomfysim.FaultError{HTTPStatus: 502, RawBody: "<html>Bad Gateway</html>"},
			wantHTTP: 502, wantCType: "text/html; charset=utf-8",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, manual())
			id := h.submit(t, "v1", "dep", "", `{}`)
			h.sim.SetFaults(runcomfysim.Faults{Errors: map[string]runcomfysim.FaultError{tt.endpoint: tt.fault}})
			method, path := http.MethodGet, reqPath("v1", "dep", id, tt.endpoint)
			switch tt.endpoint {
			case runcomfysim.EndpointSubmit:
				method, path = http.MethodPost, "/prod/v1/deployments/dep/inference"
			case runcomfysim.EndpointCancel:
				method = http.MethodPost
			}
			r := h.do(t, method, path, `{}`)
			if r.status != tt.wantHTTP {
				t.Errorf("status: got %d, want %d", r.status, tt.wantHTTP)
			}
			if got := r.header.Get("Content-Type"); got != tt.wantCType {
				t.Errorf("content type: got %q, want %q", got, tt.wantCType)
			}
			if tt.wantKeys != nil {
				if got := keys(r.body); !slices.Equal(got, tt.wantKeys) {
					t.Errorf("keys: got %v, want %v", got, tt.wantKeys)
				}
			}
			if tt.wantCode != nil && r.body["error_code"] != tt.wantCode {
				t.Errorf("error_code: got %v, want %v", r.body["error_code"], tt.wantCode)
			}
			if got := r.header.Get("Retry-After"); got != tt.wantHeader {
				t.Errorf("Retry-After: got %q, want %q", got, tt.wantHeader)
			}
			if tt.endpoint == runcomfysim.EndpointCancel {
				if got, _ := h.sim.JobState(id); got != "in_queue" {
					t.Errorf("a faulted cancel changed the job: %q", got)
				}
			}
		})
	}
}

func TestFaultTimes(t *testing.T) {
	h := newHarness(t, manual())
	fault := runcomfysim.Faults{Errors: map[string]runcomfysim.FaultError{
		runcomfysim.EndpointSubmit: {HTTPStatus: 503, ErrorCode: 500001, Times: 2},
	}}
	h.sim.SetFaults(fault)
	var got []int
	for range 4 {
		got = append(got, h.do(t, http.MethodPost, "/prod/v1/deployments/d/inference", `{}`).status)
	}
	if want := []int{503, 503, 200, 200}; !slices.Equal(got, want) {
		t.Errorf("statuses: got %v, want %v", got, want)
	}
	h.sim.SetFaults(fault) // counters restart
	if r := h.do(t, http.MethodPost, "/prod/v1/deployments/d/inference", `{}`); r.status != 503 {
		t.Errorf("after SetFaults: got %d, want 503", r.status)
	}
	if got := len(h.sim.Submits()); got != 5 {
		t.Errorf("submit records: got %d, want 5", got)
	}
}

func TestLatency(t *testing.T) {
	t.Run("slow answer", func(t *testing.T) {
		h := newHarness(t, manual())
		h.sim.SetFaults(runcomfysim.Faults{Latency: 60 * time.Millisecond})
		start := time.Now()
		h.submit(t, "v1", "d", "", `{}`)
		if got := time.Since(start); got < 60*time.Millisecond {
			t.Errorf("elapsed: got %v, want at least 60ms", got)
		}
	})
	t.Run("honours the caller's context", func(t *testing.T) {
		sim := runcomfysim.New(manual())
		defer sim.Close()
		srv := newServer(sim)
		sim.SetFaults(runcomfysim.Faults{Latency: time.Minute})
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+reqPath("v1", "d", "x", "status"), nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		tr := &http.Transport{}
		defer tr.CloseIdleConnections()
		if _, err := (&http.Client{Transport: tr}).Do(req); err == nil {
			t.Fatal("call: got no error, want a timeout")
		}
		// Close waits for every handler: it returns quickly only if the handler
		// stopped sleeping when the caller gave up.
		start := time.Now()
		srv.Close()
		if got := time.Since(start); got > 5*time.Second {
			t.Errorf("server close took %v: the handler kept sleeping", got)
		}
		if got := sim.Calls(runcomfysim.EndpointStatus); got != 1 {
			t.Errorf("status calls: got %d, want 1", got)
		}
	})
}

func TestCallbacks(t *testing.T) {
	inQueueKeys := sorted("request_id", "status_url", "result_url", "cancel_url")
	progressKeys := sorted("request_id", "deployment_id", "status", "status_url", "result_url", "cancel_url",
		"instance_id", "created_at", "started_at")
	doneKeys := func(extra ...string) []string {
		return sorted(append([]string{"request_id", "deployment_id", "status", "instance_id",
			"created_at", "started_at", "finished_at"}, extra...)...)
	}
	tests := []struct {
		name      string
		query     func(hook string) string
		body      func(hook string) string
		faults    runcomfysim.Faults
		outcome   runcomfysim.Outcome
		wantKeys  [][]string
		wantState []string
		outputKey string
	}{
		{
			name:      "final only by default",
			query:     func(hook string) string { return "webhook=" + url.QueryEscape(hook) },
			wantKeys:  [][]string{doneKeys("output")},
			wantState: []string{"succeeded"},
			outputKey: "output",
		},
		{
			name: "intermediate when asked",
			query: func(hook string) string {
				return "webhook=" + url.QueryEscape(hook) + "&webhook_intermediate_status=true"
			},
			wantKeys:  [][]string{inQueueKeys, progressKeys, doneKeys("output")},
			wantState: []string{"", "in_progress", "succeeded"},
			outputKey: "output",
		},
		{
			name: "intermediate false",
			query: func(hook string) string {
				return "webhook=" + url.QueryEscape(hook) + "&webhook_intermediate_status=false"
			},
			wantKeys:  [][]string{doneKeys("output")},
			wantState: []string{"succeeded"},
			outputKey: "output",
		},
		{
			name: "legacy body keys",
			body: func(hook string) string {
				return `{"webhook":"` + hook + `","webhook_intermediate_status":true,"prompt":"x"}`
			},
			wantKeys:  [][]string{inQueueKeys, progressKeys, doneKeys("output")},
			wantState: []string{"", "in_progress", "succeeded"},
			outputKey: "output",
		},
		{
			name:      "failed",
			query:     func(hook string) string { return "webhook=" + url.QueryEscape(hook) },
			outcome:   runcomfysim.Outcome{State: runcomfysim.OutcomeFailed},
			wantKeys:  [][]string{doneKeys("error")},
			wantState: []string{"failed"},
		},
		{
			name:      "outputs key",
			query:     func(hook string) string { return "webhook=" + url.QueryEscape(hook) },
			faults:    runcomfysim.Faults{CallbackOutputKey: runcomfysim.CallbackOutputPlural},
			wantKeys:  [][]string{doneKeys("outputs")},
			wantState: []string{"succeeded"},
			outputKey: "outputs",
		},
		{
			name:      "outputs omitted",
			query:     func(hook string) string { return "webhook=" + url.QueryEscape(hook) },
			faults:    runcomfysim.Faults{CallbackOmitOutputs: true},
			wantKeys:  [][]string{doneKeys()},
			wantState: []string{"succeeded"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, manual())
			rc := newReceiver(t)
			h.sim.SetFaults(tt.faults)
			h.sim.SetOutcome(func(string, []byte) runcomfysim.Outcome { return tt.outcome })
			query, body := "", `{}`
			if tt.query != nil {
				query = tt.query(rc.url())
			}
			if tt.body != nil {
				body = tt.body(rc.url())
			}
			id := h.submit(t, "v1", "dep", query, body)
			advance(t, h.sim, id, 2)

			got := rc.waitFor(t, len(tt.wantKeys))
			if len(got) != len(tt.wantKeys) {
				t.Fatalf("callbacks: got %d, want %d: %v", len(got), len(tt.wantKeys), got)
			}
			for i, cb := range got {
				if k := keys(cb); !slices.Equal(k, tt.wantKeys[i]) {
					t.Errorf("callback %d keys: got %v, want %v", i, k, tt.wantKeys[i])
				}
				if s := callbackStatus(cb); s != tt.wantState[i] {
					t.Errorf("callback %d status: got %q, want %q", i, s, tt.wantState[i])
				}
				if cb["request_id"] != id {
					t.Errorf("callback %d request_id: got %v, want %s", i, cb["request_id"], id)
				}
				if rc.ctypes[i] != "application/json" {
					t.Errorf("callback %d content type: got %q", i, rc.ctypes[i])
				}
			}
			last := got[len(got)-1]
			if tt.outputKey != "" {
				// The callback's outputs have /result's per-node schema.
				want := h.result(t, "dep", id)["outputs"]
				if !jsonEqual(t, last[tt.outputKey], want) {
					t.Errorf("callback outputs: got %v, want %v", last[tt.outputKey], want)
				}
			}
			if e, ok := last["error"].(map[string]any); ok {
				if got := keys(e); !slices.Equal(got, sorted("error", "details", "debugInfo", "errorCode")) {
					t.Errorf("error keys: got %v", got)
				}
			}
			if got := h.sim.CallbackStats().Delivered; got != int64(len(tt.wantKeys)) {
				t.Errorf("delivered: got %d, want %d", got, len(tt.wantKeys))
			}
		})
	}
}

func TestCallbackFaults(t *testing.T) {
	intermediate := func(hook string) string {
		return "webhook=" + url.QueryEscape(hook) + "&webhook_intermediate_status=true"
	}
	final := func(hook string) string { return "webhook=" + url.QueryEscape(hook) }
	tests := []struct {
		name      string
		query     func(string) string
		faults    runcomfysim.Faults
		wantState []string
		stats     runcomfysim.CallbackStats
	}{
		{
			name: "duplicated", query: final,
			faults:    runcomfysim.Faults{DuplicateCallbacks: 2},
			wantState: []string{"succeeded", "succeeded", "succeeded"},
			stats:     runcomfysim.CallbackStats{Attempts: 3, Delivered: 3},
		},
		{
			name: "dropped", query: intermediate,
			faults: runcomfysim.Faults{DropCallbacks: true},
			stats:  runcomfysim.CallbackStats{Dropped: 3},
		},
		{
			name: "reordered", query: intermediate,
			faults:    runcomfysim.Faults{ReorderCallbacks: true},
			wantState: []string{"succeeded", "in_progress", ""},
			stats:     runcomfysim.CallbackStats{Attempts: 3, Delivered: 3},
		},
		{
			name: "reordered and duplicated", query: intermediate,
			faults:    runcomfysim.Faults{ReorderCallbacks: true, DuplicateCallbacks: 1},
			wantState: []string{"succeeded", "succeeded", "in_progress", "in_progress", "", ""},
			stats:     runcomfysim.CallbackStats{Attempts: 6, Delivered: 6},
		},
		{
			name: "delayed", query: final,
			faults:    runcomfysim.Faults{CallbackDelay: 30 * time.Millisecond},
			wantState: []string{"succeeded"},
			stats:     runcomfysim.CallbackStats{Attempts: 1, Delivered: 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, manual())
			rc := newReceiver(t)
			h.sim.SetFaults(tt.faults)
			id := h.submit(t, "v1", "dep", tt.query(rc.url()), `{}`)
			advance(t, h.sim, id, 2)
			var got []string
			for _, cb := range rc.waitFor(t, len(tt.wantState)) {
				got = append(got, callbackStatus(cb))
			}
			if !slices.Equal(got, tt.wantState) {
				t.Errorf("callback states: got %q, want %q", got, tt.wantState)
			}
			if got := h.sim.CallbackStats(); got != tt.stats {
				t.Errorf("stats: got %+v, want %+v", got, tt.stats)
			}
		})
	}
}

func TestCallbackBeforeSubmitResponse(t *testing.T) {
	tests := []struct {
		name string
		opts runcomfysim.Options
		want []string // callbacks present when the submit answer arrives
	}{
		{"manual: in_queue first", manual(), []string{""}},
		{"instant: every callback first", runcomfysim.Options{Token: testToken}, []string{"", "in_progress", "succeeded"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.opts)
			rc := newReceiver(t)
			h.sim.SetFaults(runcomfysim.Faults{CallbackBeforeSubmitResponse: true})
			h.submit(t, "v1", "dep", "webhook="+url.QueryEscape(rc.url())+"&webhook_intermediate_status=1", `{}`)
			var got []string
			for _, cb := range rc.snapshot() { // no waiting: they must be there already
				got = append(got, callbackStatus(cb))
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("callbacks before the answer: got %q, want %q", got, tt.want)
			}
		})
	}
	t.Run("later callbacks still flow", func(t *testing.T) {
		h := newHarness(t, manual())
		rc := newReceiver(t)
		h.sim.SetFaults(runcomfysim.Faults{CallbackBeforeSubmitResponse: true})
		id := h.submit(t, "v1", "dep", "webhook="+url.QueryEscape(rc.url())+"&webhook_intermediate_status=true", `{}`)
		advance(t, h.sim, id, 2)
		if got := rc.waitFor(t, 3); len(got) != 3 {
			t.Errorf("callbacks: got %d, want 3", len(got))
		}
	})
}

func TestCallbackRetries(t *testing.T) {
	tests := []struct {
		name     string
		retries  int
		failNext int
		want     runcomfysim.CallbackStats
		received int
	}{
		{"delivered after two failures", 0, 2, runcomfysim.CallbackStats{Attempts: 3, Delivered: 1}, 1},
		{"given up after the retries", 1, -1, runcomfysim.CallbackStats{Attempts: 2, Failed: 1}, 0},
		{"no retry when negative", -1, -1, runcomfysim.CallbackStats{Attempts: 1, Failed: 1}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := manual()
			opts.CallbackRetries = tt.retries
			opts.CallbackBackoff = 5 * time.Millisecond
			h := newHarness(t, opts)
			rc := newReceiver(t)
			rc.failNext = tt.failNext
			id := h.submit(t, "v1", "dep", "webhook="+url.QueryEscape(rc.url()), `{}`)
			advance(t, h.sim, id, 2)
			deadline := time.Now().Add(5 * time.Second)
			for {
				st := h.sim.CallbackStats()
				if st.Delivered+st.Failed > 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no delivery outcome: %+v", st)
				}
				time.Sleep(5 * time.Millisecond)
			}
			if got := h.sim.CallbackStats(); got != tt.want {
				t.Errorf("stats: got %+v, want %+v", got, tt.want)
			}
			if got := len(rc.snapshot()); got != tt.received {
				t.Errorf("received: got %d, want %d", got, tt.received)
			}
		})
	}
}

func TestCancel(t *testing.T) {
	type state int
	const (
		queued state = iota
		running
		terminal
	)
	tests := []struct {
		name      string
		shape     string
		from      state
		wantBody  map[string]any // besides request_id
		wantAfter string         // job state right after the call
	}{
		{"outcome/queued", "", queued, map[string]any{"outcome": "cancelled"}, "cancelled"},
		{"outcome/running", runcomfysim.CancelShapeOutcome, running, map[string]any{"outcome": "cancelled"}, "in_progress"},
		{"outcome/terminal", "", terminal, map[string]any{"outcome": "not_cancellable"}, "succeeded"},
		{"status/queued", runcomfysim.CancelShapeStatus, queued, map[string]any{"status": "cancellation_requested"}, "cancelled"},
		{"status/running", runcomfysim.CancelShapeStatus, running, map[string]any{"status": "cancellation_requested"}, "in_progress"},
		{"status/terminal", runcomfysim.CancelShapeStatus, terminal, map[string]any{"status": "not_cancellable"}, "succeeded"},
		{"both/queued", runcomfysim.CancelShapeBoth, queued,
			map[string]any{"status": "cancellation_requested", "outcome": "cancelled"}, "cancelled"},
		{"both/terminal", runcomfysim.CancelShapeBoth, terminal,
			map[string]any{"status": "not_cancellable", "outcome": "not_cancellable"}, "succeeded"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, manual())
			h.sim.SetFaults(runcomfysim.Faults{CancelShape: tt.shape})
			id := h.submit(t, "v1", "dep", "", `{}`)
			advance(t, h.sim, id, int(tt.from)) // each state is one Advance further
			r := h.do(t, http.MethodPost, reqPath("v1", "dep", id, "cancel"), "")
			if r.status != http.StatusOK {
				t.Fatalf("cancel: got %d %s", r.status, r.raw)
			}
			want := map[string]any{"request_id": id}
			for k, v := range tt.wantBody {
				want[k] = v
			}
			if !jsonEqual(t, r.body, want) {
				t.Errorf("body: got %v, want %v", r.body, want)
			}
			if got, _ := h.sim.JobState(id); got != tt.wantAfter {
				t.Errorf("state after cancel: got %q, want %q", got, tt.wantAfter)
			}
			if tt.from == running {
				// The cancel of a running job completes asynchronously, and wins over
				// the job's own outcome.
				advance(t, h.sim, id, 1)
				if got := h.status(t, "dep", id)["status"]; got != "cancelled" {
					t.Errorf("status after the cancel took effect: got %v", got)
				}
			}
		})
	}
}

func TestCancelAsyncTimed(t *testing.T) {
	h := newHarness(t, runcomfysim.Options{Token: testToken, RunTime: time.Hour, CancelDelay: 50 * time.Millisecond})
	rc := newReceiver(t)
	id := h.submit(t, "v1", "dep", "webhook="+url.QueryEscape(rc.url()), `{}`)
	if got := h.status(t, "dep", id)["status"]; got != "in_progress" {
		t.Fatalf("status with zero QueueTime: got %v, want in_progress", got)
	}
	r := h.do(t, http.MethodPost, reqPath("v1", "dep", id, "cancel"), "")
	if r.body["outcome"] != "cancelled" {
		t.Fatalf("cancel: got %s", r.raw)
	}
	if got := h.status(t, "dep", id)["status"]; got != "in_progress" {
		t.Errorf("status right after cancel: got %v, want in_progress", got)
	}
	waitState(t, h.sim, id, "cancelled")
	cb := rc.waitFor(t, 1)
	if len(cb) != 1 || cb[0]["status"] != "cancelled" || cb[0]["finished_at"] == nil {
		t.Errorf("callback: got %v", cb)
	}
	if res := h.result(t, "dep", id); res["status"] != "cancelled" || res["outputs"] != nil {
		t.Errorf("result: got %v", res)
	}
}

func TestSpellingVariants(t *testing.T) {
	tests := []struct {
		name                             string
		faults                           runcomfysim.Faults
		cancel                           bool
		wantStatus, wantResult, wantHook string
	}{
		{"canonical success", runcomfysim.Faults{}, false, "succeeded", "succeeded", "succeeded"},
		{"completed on status", runcomfysim.Faults{CompletedOnStatus: true}, false, "completed", "succeeded", "succeeded"},
		{"canonical cancel", runcomfysim.Faults{}, true, "cancelled", "cancelled", "cancelled"},
		{"american cancel", runcomfysim.Faults{CanceledSpelling: true}, true, "canceled", "canceled", "canceled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, manual())
			rc := newReceiver(t)
			h.sim.SetFaults(tt.faults)
			id := h.submit(t, "v1", "dep", "webhook="+url.QueryEscape(rc.url()), `{}`)
			if tt.cancel {
				r := h.do(t, http.MethodPost, reqPath("v1", "dep", id, "cancel"), "")
				if r.body["outcome"] != "cancelled" {
					t.Errorf("cancel outcome: got %v, want cancelled", r.body["outcome"])
				}
			} else {
				advance(t, h.sim, id, 2)
			}
			if got := h.status(t, "dep", id)["status"]; got != tt.wantStatus {
				t.Errorf("status: got %v, want %s", got, tt.wantStatus)
			}
			if got := h.result(t, "dep", id)["status"]; got != tt.wantResult {
				t.Errorf("result: got %v, want %s", got, tt.wantResult)
			}
			if got := rc.waitFor(t, 1)[0]["status"]; got != tt.wantHook {
				t.Errorf("callback: got %v, want %s", got, tt.wantHook)
			}
		})
	}
}

func TestErrorShapes(t *testing.T) {
	failure := &runcomfysim.Failure{Type: "OOM", Message: "out of memory", DebugInfo: "trace", Code: 7}
	seed := map[string]any{"error": "OOM", "details": "out of memory", "debugInfo": "trace", "errorCode": 7}
	typed := map[string]any{"type": "OOM", "message": "out of memory"}
	tests := []struct {
		name   string
		faults runcomfysim.Faults
		want   any
	}{
		{"seed object", runcomfysim.Faults{}, seed},
		{"type and message", runcomfysim.Faults{ErrorStyle: runcomfysim.ErrorStyleTypeMessage}, typed},
		{"seed array", runcomfysim.Faults{ErrorArray: true}, []any{seed}},
		{"typed array", runcomfysim.Faults{ErrorArray: true, ErrorStyle: runcomfysim.ErrorStyleTypeMessage}, []any{typed}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, manual())
			h.sim.SetFaults(tt.faults)
			id := h.submit(t, "v1", "dep", "", `{}`)
			if err := h.sim.Finish(id, runcomfysim.Outcome{State: runcomfysim.OutcomeFailed, Error: failure}); err != nil {
				t.Fatalf("finish: %v", err)
			}
			res := h.result(t, "dep", id)
			if res["status"] != "failed" || res["outputs"] != nil {
				t.Errorf("result: got %v", res)
			}
			if !jsonEqual(t, res["error"], tt.want) {
				t.Errorf("error: got %v, want %v", res["error"], tt.want)
			}
		})
	}
}

func TestOutcomeFunction(t *testing.T) {
	h := newHarness(t, manual())
	var mu sync.Mutex
	var seen []string
	h.sim.SetOutcome(func(dep string, input []byte) runcomfysim.Outcome {
		mu.Lock()
		seen = append(seen, dep+" "+string(input))
		mu.Unlock()
		if dep == "bad" {
			return runcomfysim.Outcome{State: runcomfysim.OutcomeFailed}
		}
		return runcomfysim.Outcome{Images: 3, Caption: "three"}
	})
	good := h.submit(t, "v1", "good", "", `{"a":1}`)
	bad := h.submit(t, "v1", "bad", "", `{"b":2}`)
	advance(t, h.sim, good, 2)
	advance(t, h.sim, bad, 2)

	images := h.result(t, "good", good)["outputs"].(map[string]any)["9"].(map[string]any)["images"].([]any)
	if len(images) != 3 {
		t.Fatalf("images: got %d, want 3", len(images))
	}
	for _, img := range images {
		u := img.(map[string]any)["url"].(string)
		if r := h.doAuth(t, http.MethodGet, u, "", ""); r.status != http.StatusOK {
			t.Errorf("GET %s: got %d", u, r.status)
		}
	}
	if r := h.doAuth(t, http.MethodGet, "/media/"+good+"/ComfyUI_00004_.png", "", ""); r.status != http.StatusNotFound {
		t.Errorf("missing image: got %d, want 404", r.status)
	}
	if r := h.doAuth(t, http.MethodGet, "/media/"+bad+"/ComfyUI_00001_.png", "", ""); r.status != http.StatusNotFound {
		t.Errorf("image of a failed job: got %d, want 404", r.status)
	}
	if got := h.result(t, "bad", bad)["status"]; got != "failed" {
		t.Errorf("bad deployment: got %v, want failed", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{`good {"a":1}`, `bad {"b":2}`}; !slices.Equal(seen, want) {
		t.Errorf("outcome inputs: got %q, want %q", seen, want)
	}
}

func TestTimedLifecycle(t *testing.T) {
	h := newHarness(t, runcomfysim.Options{Token: testToken, QueueTime: 20 * time.Millisecond, RunTime: 20 * time.Millisecond})
	rc := newReceiver(t)
	const n = 5
	ids := make([]string, n)
	for i := range ids {
		ids[i] = h.submit(t, "v1", "dep", "webhook="+url.QueryEscape(rc.url())+"&webhook_intermediate_status=true", `{}`)
	}
	for _, id := range ids {
		waitState(t, h.sim, id, "succeeded")
	}
	got := map[string][]string{}
	for _, cb := range rc.waitFor(t, 3*n) {
		id := cb["request_id"].(string)
		got[id] = append(got[id], callbackStatus(cb))
	}
	for _, id := range ids {
		if want := []string{"", "in_progress", "succeeded"}; !slices.Equal(got[id], want) {
			t.Errorf("callbacks of %s: got %q, want %q", id, got[id], want)
		}
	}
}

func TestInstantByDefault(t *testing.T) {
	h := newHarness(t, runcomfysim.Options{})
	r := h.doAuth(t, http.MethodPost, "/prod/v1/deployments/d/inference", `{}`, "Bearer any")
	id := r.body["request_id"].(string)
	if got, _ := h.sim.JobState(id); got != "succeeded" {
		t.Errorf("state right after submit: got %q, want succeeded", got)
	}
}

func TestPublicURL(t *testing.T) {
	h := newHarness(t, runcomfysim.Options{Token: testToken, PublicURL: "https://api.example.test/"})
	id := h.submit(t, "v2", "d", "", `{}`)
	res := h.result(t, "d", id)
	img := res["outputs"].(map[string]any)["9"].(map[string]any)["images"].([]any)[0].(map[string]any)
	if got, want := img["url"], "https://api.example.test/media/"+id+"/ComfyUI_00001_.png"; got != want {
		t.Errorf("image url: got %v, want %v", got, want)
	}
	if got, want := h.status(t, "d", id)["status_url"], "https://api.example.test"+reqPath("v2", "d", id, "status"); got != want {
		t.Errorf("status_url: got %v, want %v", got, want)
	}
}

func TestSubmitRecords(t *testing.T) {
	opts := manual()
	opts.SubmitHistory = 2
	h := newHarness(t, opts)
	h.submit(t, "v1", "d", "", `{"n":1}`)
	h.submit(t, "v1", "d", "webhook="+url.QueryEscape("https://hook.example/x")+"&webhook_intermediate_status=true", `{"n":2}`)
	h.do(t, http.MethodPost, "/prod/v2/deployments/d/inference", `[3]`)
	recs := h.sim.Submits()
	if len(recs) != 2 {
		t.Fatalf("records: got %d, want 2", len(recs))
	}
	if got := string(recs[0].Body); got != `{"n":2}` {
		t.Errorf("oldest kept body: got %s", got)
	}
	if recs[0].Webhook != "https://hook.example/x" || !recs[0].WebhookIntermediateStatus ||
		recs[0].Query.Get("webhook_intermediate_status") != "true" {
		t.Errorf("webhook record: got %+v", recs[0])
	}
	if recs[1].APIVersion != "v2" || recs[1].HTTPStatus != 422 || recs[1].RequestID != "" {
		t.Errorf("rejected record: got %+v", recs[1])
	}
}

func TestClose(t *testing.T) {
	h := newHarness(t, runcomfysim.Options{Token: testToken, QueueTime: time.Hour})
	id := h.submit(t, "v1", "d", "", `{}`)
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(h.sim.Close)
	}
	wg.Wait()
	h.sim.Close()
	if err := h.sim.Advance(id); !errors.Is(err, runcomfysim.ErrClosed) {
		t.Errorf("advance after close: got %v, want ErrClosed", err)
	}
	if r := h.do(t, http.MethodGet, reqPath("v1", "d", id, "status"), ""); r.status != http.StatusServiceUnavailable {
		t.Errorf("status after close: got %d, want 503", r.status)
	}
}

// TestCloseLeavesNoGoroutines stands in for goleak until it is in go.mod: pending
// timers, callbacks waiting on retries and a slow receiver must all be gone.
func TestCloseLeavesNoGoroutines(t *testing.T) {
	before := settledGoroutines()

	func() {
		sim := runcomfysim.New(runcomfysim.Options{
			Token: testToken, QueueTime: 10 * time.Millisecond, RunTime: time.Hour,
			CallbackBackoff: time.Hour, CallbackRetries: 3,
		})
		srv := newServer(sim)
		hook := newFailingHook()
		tr := &http.Transport{}
		client := &http.Client{Transport: tr}
		for i := range 10 {
			q := "webhook=" + url.QueryEscape(hook.URL) + "&webhook_intermediate_status=true"
			req, _ := http.NewRequest(http.MethodPost, srv.URL+"/prod/v1/deployments/d/inference?"+q, bytes.NewReader([]byte(`{}`)))
			req.Header.Set("Authorization", "Bearer "+testToken)
			resp, err := client.Do(req)
			if err != nil {
				t.Fatalf("submit %d: %v", i, err)
			}
			resp.Body.Close()
		}
		time.Sleep(50 * time.Millisecond) // jobs start; callbacks fail and wait to retry
		sim.Close()
		srv.Close()
		hook.Close()
		tr.CloseIdleConnections()
	}()

	deadline := time.Now().Add(5 * time.Second)
	for {
		after := runtime.NumGoroutine()
		if after <= before {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("goroutines: got %d after Close, want at most %d\n%s", after, before, buf[:n])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func settledGoroutines() int {
	n := runtime.NumGoroutine()
	for range 50 {
		time.Sleep(10 * time.Millisecond)
		m := runtime.NumGoroutine()
		if m == n {
			return n
		}
		n = m
	}
	return n
}
