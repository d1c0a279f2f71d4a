package server_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// TestWrongMethodIs405WithAllow: every API path answers a method it does not
// take with 405 and the method it takes in Allow, whatever the caller's key;
// a path that is no API path stays 404.
func TestWrongMethodIs405WithAllow(t *testing.T) {
	g := startGateway(t, withKeys(t))
	const req = "/v1/deployments/dep-1/requests/req-1"
	tests := []struct {
		method, path, allow string
	}{
		{http.MethodPut, "/v1/deployments/dep-1/requests", "GET, POST"},
		{http.MethodDelete, "/v1/deployments/dep-1/requests", "GET, POST"},
		{http.MethodPost, "/v1/requests", "GET"},
		{http.MethodDelete, "/v1/usage", "GET"},
		{http.MethodGet, "/v1/uploads", "POST"},
		{http.MethodDelete, req, "GET"},
		{http.MethodPost, req, "GET"},
		{http.MethodPatch, req, "GET"},
		{http.MethodHead, req, "GET"},
		{http.MethodGet, req + ":cancel", "POST"},
		{http.MethodDelete, req + ":cancel", "POST"},
		{http.MethodPost, req + ":watch", "GET"},
		{http.MethodPost, req + "/result", "GET"},
		{http.MethodPost, req + "/events", "GET"},
		{http.MethodOptions, req, "GET"},
		{http.MethodPost, "/openapi.json", "GET, HEAD"},
		{http.MethodPost, "/healthz", "GET, HEAD"},
		{http.MethodDelete, "/readyz", "GET, HEAD"},
	}
	for _, tt := range tests {
		for _, key := range []string{"", keyA} {
			t.Run(tt.method+" "+tt.path+" key="+key, func(t *testing.T) {
				r, err := http.NewRequestWithContext(t.Context(), tt.method, g.httpBase+tt.path, nil)
				if err != nil {
					t.Fatal(err)
				}
				if key != "" {
					r.Header.Set("Authorization", "Bearer "+key)
				}
				resp, err := g.httpc.Do(r)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != tt.allow {
					t.Fatalf("HTTP %d, Allow %q; want 405 with Allow %q\n%s", resp.StatusCode, resp.Header.Get("Allow"), tt.allow, body)
				}
				if strings.HasPrefix(tt.path, "/v1/") && tt.method != http.MethodHead {
					var st struct {
						Code    int    `json:"code"`
						Message string `json:"message"`
					}
					if err := json.Unmarshal(body, &st); err != nil || st.Code != 12 || !strings.Contains(st.Message, tt.method) {
						t.Errorf("body %s: want a google.rpc.Status UNIMPLEMENTED naming %s", body, tt.method)
					}
				}
			})
		}
	}
	for _, path := range []string{"/v1/deployments/dep-1", "/v1/other", "/v1/deployments/dep-1/requests/req-1/result/more"} {
		r, err := http.NewRequestWithContext(t.Context(), http.MethodPost, g.httpBase+path, strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		r.Header.Set("Authorization", "Bearer "+keyA)
		resp, err := g.httpc.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("POST %s: HTTP %d, want 404", path, resp.StatusCode)
		}
	}
	if n := len(g.sim.Submits()); n != 0 {
		t.Errorf("%d submits reached RunComfy", n)
	}
}

// TestOversizeBodyIs413OnEveryRoute: a body over --max-body-bytes is 413 on
// every route, with its length declared or not (chunked), and reaches no
// upstream.
func TestOversizeBodyIs413OnEveryRoute(t *testing.T) {
	const limit = 4096
	g := startGateway(t, withKeys(t), func(o *gatewayOptions) { o.maxBody = limit })
	const req = "/v1/deployments/dep-1/requests/req-1"
	big := bytes.Repeat([]byte(" "), 3*limit)
	big[0] = '{'
	big[len(big)-1] = '}'
	routes := []struct{ method, path string }{
		{http.MethodPost, "/v1/deployments/dep-1/requests"},
		{http.MethodPost, req + ":cancel"},
		{http.MethodGet, req},
		{http.MethodGet, req + "/result"},
		{http.MethodGet, req + ":watch"},
		{http.MethodGet, req + "/events"},
		{http.MethodGet, "/openapi.json"},
		{http.MethodGet, "/healthz"},
		{http.MethodGet, "/readyz"},
	}
	for _, rt := range routes {
		for _, chunked := range []bool{false, true} {
			name := rt.method + " " + rt.path
			if chunked {
				name += " chunked"
			}
			t.Run(name, func(t *testing.T) {
				var body io.Reader = bytes.NewReader(big)
				if chunked {
					body = io.MultiReader(bytes.NewReader(big)) // no length: sent chunked
				}
				r, err := http.NewRequestWithContext(t.Context(), rt.method, g.httpBase+rt.path, body)
				if err != nil {
					t.Fatal(err)
				}
				r.Header.Set("Authorization", "Bearer "+keyA)
				r.Header.Set("Content-Type", "application/json")
				resp, err := g.httpc.Do(r)
				if err != nil {
					t.Fatal(err)
				}
				got, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusRequestEntityTooLarge {
					t.Fatalf("HTTP %d, want 413\n%s", resp.StatusCode, got)
				}
				if strings.HasPrefix(rt.path, "/v1/") && !bytes.Contains(got, []byte(`"BODY_TOO_LARGE"`)) {
					t.Errorf("body %s: want the ErrorInfo reason BODY_TOO_LARGE", got)
				}
			})
		}
	}
	if n := len(g.sim.Submits()); n != 0 {
		t.Errorf("%d submits reached RunComfy", n)
	}
}

// TestOversizeBodyIsRefusedBeforeItArrives: a REST call that declares a body
// over --max-body-bytes is answered 413 at once, while the rest of its body
// has not come (it never does here): the answer does not wait for the read
// timeout, on any route that takes a body or not.
func TestOversizeBodyIsRefusedBeforeItArrives(t *testing.T) {
	const limit = 4096
	g := startGateway(t, withKeys(t), func(o *gatewayOptions) { o.maxBody = limit })
	for _, tt := range []struct{ name, lengthOf string }{
		{"past the limit", strconv.Itoa(limit + 1)},
		{"past what is drained", strconv.Itoa(3 * limit)},
		{"far past it", "999999999"},
	} {
		for _, path := range []string{"/v1/deployments/dep-1/requests", "/v1/deployments/dep-1/requests/req-1:cancel"} {
			t.Run(tt.name+" "+path, func(t *testing.T) {
				ctx := ctxT(t)
				conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", strings.TrimPrefix(g.httpBase, "http://"))
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				if dl, ok := ctx.Deadline(); ok {
					_ = conn.SetDeadline(dl) // the test's bound: the read timeout is 30 s
				}
				_, err = fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %s\r\n\r\n{}", path, keyA, tt.lengthOf)
				if err != nil {
					t.Fatal(err)
				}
				// The status alone: the answer's body ends with the
				// connection, which the gateway keeps while it reads what
				// comes of the refused body.
				resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
				if err != nil {
					t.Fatalf("no answer while the body is still to come: %v", err)
				}
				if resp.StatusCode != http.StatusRequestEntityTooLarge {
					t.Errorf("HTTP %d, want 413", resp.StatusCode)
				}
			})
		}
	}
}

// TestCORSPreflight: with CORS origins set, a browser's preflight from one of
// them is answered with the API's methods and headers, and the real call
// carries Access-Control-Allow-Origin; another origin gets neither. Without
// the option, no CORS header is sent.
func TestCORSPreflight(t *testing.T) {
	const origin = "https://app.example.com"
	g := startGateway(t, withKeys(t), func(o *gatewayOptions) { o.corsOrigins = []string{origin} })
	plain := startGateway(t, withKeys(t))
	preflight := func(base, from string) *http.Response {
		t.Helper()
		r, err := http.NewRequestWithContext(t.Context(), http.MethodOptions, base+"/v1/deployments/dep-1/requests", nil)
		if err != nil {
			t.Fatal(err)
		}
		r.Header.Set("Origin", from)
		r.Header.Set("Access-Control-Request-Method", "POST")
		// As browsers send it: lower case, sorted (rs/cors reads no other form).
		r.Header.Set("Access-Control-Request-Headers", "authorization,comfygate-max-queue-duration,comfygate-max-run-duration,comfygate-webhook,comfygate-webhook-events,content-type,idempotency-key")
		resp, err := g.httpc.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	resp := preflight(g.httpBase, origin)
	if resp.StatusCode/100 != 2 || resp.Header.Get("Access-Control-Allow-Origin") != origin ||
		!strings.Contains(resp.Header.Get("Access-Control-Allow-Methods"), "POST") ||
		!strings.Contains(strings.ToLower(resp.Header.Get("Access-Control-Allow-Headers")), "comfygate-max-run-duration") {
		t.Errorf("preflight from %s: HTTP %d, headers %v", origin, resp.StatusCode, resp.Header)
	}
	if resp := preflight(g.httpBase, "https://evil.example.com"); resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("preflight from another origin allowed: %v", resp.Header)
	}
	if resp := preflight(plain.httpBase, origin); resp.Header.Get("Access-Control-Allow-Origin") != "" || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("without CORS origins: HTTP %d, headers %v; want 405 and no CORS header", resp.StatusCode, resp.Header)
	}

	// The call itself: a submit from the allowed origin, which the page may
	// read (Allow-Origin) including Retry-After (exposed).
	r, err := http.NewRequestWithContext(t.Context(), http.MethodPost, g.httpBase+"/v1/deployments/dep-1/requests", strings.NewReader(`{"overrides": {}}`))
	if err != nil {
		t.Fatal(err)
	}
	r.Header.Set("Origin", origin)
	r.Header.Set("Authorization", "Bearer "+keyA)
	r.Header.Set("Content-Type", "application/json")
	resp, err = g.httpc.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Access-Control-Allow-Origin") != origin ||
		!strings.Contains(resp.Header.Get("Access-Control-Expose-Headers"), "Retry-After") {
		t.Errorf("submit from %s: HTTP %d, headers %v", origin, resp.StatusCode, resp.Header)
	}
}

// TestCrossOriginWritesRefused: a browser page cannot submit or cancel
// through a gateway (one without API keys, as on a developer's machine) with
// a "simple" request, which browsers send without a preflight: it is refused
// with 403 and reaches no upstream. An origin --cors-origins allows, callers
// that send no Origin, and reads are served.
func TestCrossOriginWritesRefused(t *testing.T) {
	const allowed = "https://app.example.com"
	g := startGateway(t, func(o *gatewayOptions) { o.corsOrigins = []string{allowed} })
	post := func(path, origin string) (int, string) {
		t.Helper()
		r, err := http.NewRequestWithContext(t.Context(), http.MethodPost, g.httpBase+path, strings.NewReader(`{"overrides": {}}`))
		if err != nil {
			t.Fatal(err)
		}
		r.Header.Set("Content-Type", "text/plain")
		if origin != "" {
			r.Header.Set("Origin", origin)
		}
		resp, err := g.httpc.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	const submit = "/v1/deployments/dep-1/requests"
	// The gateway serves no page: even its own origin is not one of its
	// pages, and a rebound DNS name looks just like it.
	for _, origin := range []string{"https://evil.example.com", "null", g.httpBase + ".evil.example", g.httpBase} {
		for _, path := range []string{submit, "/v1/deployments/dep-1/requests/req-1:cancel"} {
			code, body := post(path, origin)
			if code != http.StatusForbidden || !strings.Contains(body, "--cors-origins") {
				t.Errorf("POST %s from %s: HTTP %d %s, want 403 naming --cors-origins", path, origin, code, body)
			}
		}
	}
	if n := len(g.sim.Submits()); n != 0 {
		t.Fatalf("%d refused submits reached RunComfy", n)
	}
	for _, origin := range []string{"", allowed} {
		if code, body := post(submit, origin); code != http.StatusOK {
			t.Errorf("POST from origin %q: HTTP %d %s, want 200", origin, code, body)
		}
	}
	r, err := http.NewRequestWithContext(t.Context(), http.MethodGet, g.httpBase+"/healthz", nil)
	if err != nil {
		t.Fatal(err)
	}
	r.Header.Set("Origin", "https://evil.example.com")
	resp, err := g.httpc.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET from another origin: HTTP %d, want 200 (a read the browser cannot see without CORS)", resp.StatusCode)
	}
}

// TestOversizeHeadersAre431: a request line or headers too large to travel on
// as gRPC metadata is 431 on every route, never a failed call (500); an
// over-long id short of that bound is a malformed id (400).
func TestOversizeHeadersAre431(t *testing.T) {
	g := startGateway(t, withKeys(t))
	const submit = "/v1/deployments/dep-1/requests"
	long := strings.Repeat("a", 70<<10)
	tests := []struct {
		name, path, header string
		want               int
	}{
		{"over-long request id", submit + "/" + long, "", http.StatusRequestHeaderFieldsTooLarge},
		{"long request id under the bound", submit + "/" + long[:20<<10], "", http.StatusBadRequest},
		{"over-long webhook header", submit, "Comfygate-Webhook", http.StatusRequestHeaderFieldsTooLarge},
		{"over-long Grpc-Metadata header", submit, "Grpc-Metadata-X", http.StatusRequestHeaderFieldsTooLarge},
		{"over-long header on /healthz", "/healthz", "X-Padding", http.StatusRequestHeaderFieldsTooLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			method := http.MethodGet
			if tc.path == submit {
				method = http.MethodPost
			}
			r, err := http.NewRequestWithContext(t.Context(), method, g.httpBase+tc.path, strings.NewReader(`{"overrides": {}}`))
			if err != nil {
				t.Fatal(err)
			}
			r.Header.Set("Authorization", "Bearer "+keyA)
			if tc.header != "" {
				r.Header.Set(tc.header, long)
			}
			resp, err := g.httpc.Do(r)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("HTTP %d %.200s, want %d", resp.StatusCode, body, tc.want)
			}
		})
	}
	if n := len(g.sim.Submits()); n != 0 {
		t.Errorf("%d submits reached RunComfy", n)
	}
}

// TestLocalHostsOnly: a gateway without keys on loopback answers only
// requests whose Host is a loopback name or an IP address, so a page whose
// DNS name was rebound to 127.0.0.1 (and which sends its own name as Host
// and Origin) reaches nothing, reads included.
func TestLocalHostsOnly(t *testing.T) {
	g := startGateway(t, func(o *gatewayOptions) { o.localHostsOnly = true })
	_, port, err := net.SplitHostPort(strings.TrimPrefix(g.httpBase, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	call := func(method, path, host string) (int, string) {
		t.Helper()
		var body io.Reader
		if method == http.MethodPost {
			body = strings.NewReader(`{"overrides": {}}`)
		}
		r, err := http.NewRequestWithContext(t.Context(), method, g.httpBase+path, body)
		if err != nil {
			t.Fatal(err)
		}
		r.Host = host
		resp, err := g.httpc.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	const submit = "/v1/deployments/dep-1/requests"
	for _, host := range []string{"attacker.example:" + port, "attacker.example", "localhost.attacker.example:" + port, "127.0.0.1.nip.io:" + port} {
		for _, c := range []struct{ method, path string }{{http.MethodPost, submit}, {http.MethodGet, "/openapi.json"}, {http.MethodGet, submit + "/req-1"}} {
			if code, body := call(c.method, c.path, host); code != http.StatusForbidden || !strings.Contains(body, "not this gateway's") {
				t.Errorf("%s %s with Host %s: HTTP %d %.200s, want 403", c.method, c.path, host, code, body)
			}
		}
	}
	if n := len(g.sim.Submits()); n != 0 {
		t.Fatalf("%d refused submits reached RunComfy", n)
	}
	for _, host := range []string{"localhost:" + port, "LOCALHOST.:" + port, "app.localhost:" + port, "127.0.0.1:" + port, "[::1]:" + port, "10.1.2.3"} {
		if code, body := call(http.MethodPost, submit, host); code != http.StatusOK {
			t.Errorf("POST with Host %s: HTTP %d %.200s, want 200", host, code, body)
		}
	}
	// A callback comes by the public URL's name (a tunnel's): its token
	// proves it, whatever the Host.
	rid := g.submit(t.Context(), t, "dep-1")
	cb := strings.NewReader(`{"request_id": "` + rid + `", "status": "in_progress"}`)
	r, err := http.NewRequestWithContext(t.Context(), http.MethodPost, g.callbackURL("dep-1"), cb)
	if err != nil {
		t.Fatal(err)
	}
	r.Host = "my-tunnel.example"
	r.Header.Set("Content-Type", "application/json")
	resp, err := g.httpc.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("callback by the tunnel's name: HTTP %d, want 200", resp.StatusCode)
	}
	open := startGateway(t)
	if code, _ := call(http.MethodGet, "/healthz", "attacker.example"); code != http.StatusForbidden {
		t.Errorf("/healthz by another name: HTTP %d, want 403", code)
	}
	r, err = http.NewRequestWithContext(t.Context(), http.MethodGet, open.httpBase+"/healthz", nil)
	if err != nil {
		t.Fatal(err)
	}
	r.Host = "gateway.example"
	resp, err = open.httpc.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("without the option, another name: HTTP %d, want 200", resp.StatusCode)
	}
}
