package server_test

import (
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// hostileIDs are ids that must never reach an upstream URL.
var hostileIDs = map[string]string{
	"empty":          "",
	"traversal":      "../../v2/deployments",
	"slash":          "a/b",
	"query":          "a?webhook=https://evil.example",
	"fragment":       "a#b",
	"nul":            "a\x00b",
	"newline":        "a\nb",
	"space":          "a b",
	"percent":        "a%2Fb",
	"colon verb":     "a:cancel",
	"unicode":        "dép",
	"too long":       strings.Repeat("a", 129),
	"dot dot":        "..",
	"backslash":      `a\b`,
	"encoded nul":    "%00",
	"plus and equal": "a+b=c",
}

func TestHostileIDsNeverReachUpstreamGRPC(t *testing.T) {
	g := startGateway(t)
	ctx := ctxT(t)
	for name, id := range hostileIDs {
		calls := map[string]func() error{
			"Submit": func() error {
				_, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: id, InputJson: `{}`})
				return err
			},
			"GetStatus/deployment": func() error {
				_, err := g.client.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: id, RequestId: "r1"})
				return err
			},
			"GetStatus/request": func() error {
				_, err := g.client.GetStatus(ctx, &comfygatev1.GetStatusRequest{DeploymentId: "d1", RequestId: id})
				return err
			},
			"GetResult": func() error {
				_, err := g.client.GetResult(ctx, &comfygatev1.GetResultRequest{DeploymentId: "d1", RequestId: id})
				return err
			},
			"Cancel": func() error {
				_, err := g.client.Cancel(ctx, &comfygatev1.CancelRequest{DeploymentId: "d1", RequestId: id})
				return err
			},
			"WatchRequest": func() error {
				s, err := g.client.WatchRequest(ctx, &comfygatev1.WatchRequestRequest{DeploymentId: "d1", RequestId: id})
				if err != nil {
					return err
				}
				_, err = s.Recv()
				return err
			},
		}
		for rpc, call := range calls {
			t.Run(name+"/"+rpc, func(t *testing.T) {
				err := call()
				if got, want := status.Code(err), codes.InvalidArgument; got != want {
					t.Fatalf("code = %v (%v), want %v", got, err, want)
				}
				if !strings.Contains(status.Convert(err).Message(), "_id") {
					t.Errorf("message %q does not name the field", status.Convert(err).Message())
				}
			})
		}
	}
	if got := g.sim.TotalCalls(); got != 0 {
		t.Errorf("upstream saw %d calls, want 0", got)
	}
}

func TestHostileIDsNeverReachUpstreamREST(t *testing.T) {
	g := startGateway(t)
	for name, id := range hostileIDs {
		if id == "" || strings.ContainsAny(id, "/?#") || id == ".." {
			// These change the route itself; they are covered escaped below.
			id = url.PathEscape(id)
		}
		esc := strings.NewReplacer("\x00", "%00", "\n", "%0A", " ", "%20", `\`, "%5C").Replace(id)
		routes := []struct{ method, path string }{
			{http.MethodPost, "/v1/deployments/" + esc + "/requests"},
			{http.MethodGet, "/v1/deployments/d1/requests/" + esc},
			{http.MethodGet, "/v1/deployments/" + esc + "/requests/r1/result"},
			{http.MethodPost, "/v1/deployments/d1/requests/" + esc + ":cancel"},
		}
		for _, r := range routes {
			t.Run(name+"/"+r.method+" "+r.path, func(t *testing.T) {
				var body []byte
				if r.method == http.MethodPost {
					body = []byte(`{}`)
				}
				code, resp := g.rest(t, r.method, r.path, body)
				// An empty id changes the route itself (no route matches);
				// every other id, ".." too, is refused by validation with
				// 400. None reaches upstream (checked below).
				// An id ending in ":cancel" on GET names the cancel route, which
				// takes POST only: 405.
				routeChanging := hostileIDs[name] == ""
				cancelVerb := r.method == http.MethodGet && strings.HasSuffix(r.path, ":cancel")
				switch {
				case cancelVerb && code != http.StatusMethodNotAllowed:
					t.Errorf("HTTP %d, want 405 (the cancel route takes POST): %v", code, resp)
				case cancelVerb:
				case routeChanging && code < 400:
					t.Errorf("HTTP %d, want an error: %v", code, resp)
				case !routeChanging && code != http.StatusBadRequest:
					t.Errorf("HTTP %d, want 400: %v", code, resp)
				}
			})
		}
	}
	if got := g.sim.TotalCalls(); got != 0 {
		t.Errorf("upstream saw %d calls, want 0", got)
	}
}

// TestUncleanPathsAreRefusedNotRedirected pins that a path with an empty,
// "." or ".." segment is refused (400, naming the id where it is one), not
// redirected to the path it cleans into: a client that followed would call
// another route, or act on another request, than the one it named.
func TestUncleanPathsAreRefusedNotRedirected(t *testing.T) {
	g := startGateway(t)
	noFollow := *g.httpc
	noFollow.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	tests := []struct {
		method, path, field string
	}{
		{http.MethodGet, "/v1/deployments/d1/requests/../r2", "request_id"},
		{http.MethodGet, "/v1/deployments/d1/requests/./r1", "request_id"},
		{http.MethodGet, "/v1/deployments/d1/requests/..", "request_id"},
		{http.MethodGet, "/v1/deployments/d1/requests/%2E%2E", "request_id"},
		{http.MethodGet, "/v1/deployments/../requests/r1", "deployment_id"},
		{http.MethodGet, "/v1/deployments/d1/requests/r1/../../d2/requests/r1", "path"},
		{http.MethodPost, "/v1/deployments/d1/requests/r1/../r2:cancel", "path"},
		{http.MethodPost, "/v1/deployments//requests", "deployment_id"},
		{http.MethodGet, "/v1/deployments/d1//requests/r1", "path"},
		{http.MethodGet, "/healthz/.", "path"},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			req, err := http.NewRequestWithContext(t.Context(), tc.method, g.httpBase+tc.path, strings.NewReader(`{}`))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := noFollow.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Location") != "" {
				t.Fatalf("HTTP %d (Location %q) %s, want 400 and no redirect", resp.StatusCode, resp.Header.Get("Location"), body)
			}
			if !strings.Contains(string(body), tc.field) {
				t.Errorf("answer %s does not name %s", body, tc.field)
			}
		})
	}
	if got := g.sim.TotalCalls(); got != 0 {
		t.Errorf("upstream saw %d calls, want 0", got)
	}
}

func TestBadInputNeverReachesUpstream(t *testing.T) {
	g := startGateway(t)
	ctx := ctxT(t)
	bodies := map[string]string{
		"empty":         "",
		"blank":         "  \n",
		"not json":      "prompt=a cat",
		"array":         `[{"prompt":"a cat"}]`,
		"string":        `"a cat"`,
		"number":        `42`,
		"null":          `null`,
		"truncated":     `{"prompt":"a cat"`,
		"trailing data": `{"prompt":"a"} {"prompt":"b"}`,
		"invalid utf-8": "{\"prompt\":\"\xff\xfe\"}",
	}
	for name, body := range bodies {
		t.Run("grpc/"+name, func(t *testing.T) {
			_, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "d1", InputJson: body})
			if name == "invalid utf-8" {
				// The Go client itself refuses to marshal a non-UTF-8 string; any
				// other client reaches the server's check.
				if err == nil {
					t.Fatal("accepted")
				}
				return
			}
			if got, want := status.Code(err), codes.InvalidArgument; got != want {
				t.Fatalf("code = %v (%v), want %v", got, err, want)
			}
		})
		t.Run("rest/"+name, func(t *testing.T) {
			code, resp := g.rest(t, http.MethodPost, "/v1/deployments/d1/requests", []byte(body))
			if code != http.StatusBadRequest {
				t.Fatalf("HTTP %d, want 400: %v", code, resp)
			}
			if msg, _ := resp["message"].(string); msg == "" {
				t.Errorf("no message: %v", resp)
			}
		})
	}
	t.Run("rest/too large", func(t *testing.T) {
		big := `{"image":"data:image/png;base64,` + strings.Repeat("A", 11<<20) + `"}`
		code, resp := g.rest(t, http.MethodPost, "/v1/deployments/d1/requests", []byte(big))
		if code != http.StatusRequestEntityTooLarge || !strings.Contains(resp["message"].(string), "larger than") {
			t.Fatalf("HTTP %d, want 413 naming the limit: %v", code, resp["message"])
		}
	})
	t.Run("grpc/too large", func(t *testing.T) {
		big := `{"image":"data:image/png;base64,` + strings.Repeat("A", 11<<20) + `"}`
		_, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "d1", InputJson: big})
		if got, want := status.Code(err), codes.ResourceExhausted; got != want {
			t.Fatalf("code = %v, want %v", got, want)
		}
	})
	if got := g.sim.TotalCalls(); got != 0 {
		t.Errorf("upstream saw %d calls, want 0", got)
	}
}
