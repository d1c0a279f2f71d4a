package e2e

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/internal/redistest"
	"github.com/comfygate/comfygate/webhook"
)

// TestHungRedisAnswersWithinTheTimeout: while Redis hangs (SIGSTOP: its port
// takes connections, nothing answers), a callback, a submit and a status
// read are each answered 503 within --redis-timeout plus a second, and the
// gateway serves again once Redis does.
func TestHungRedisAnswersWithinTheTimeout(t *testing.T) {
	ctx, up := attackSetup(t)
	srv, err := redistest.StartPrivate()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = srv.Resume()
		srv.Stop()
	})
	const secret = "hung-redis-webhook-secret-0123456789"
	secretFile := filepath.Join(t.TempDir(), "webhook-secret")
	if err := os.WriteFile(secretFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const redisTimeout = time.Second
	g := keyedGateway(ctx, t, up.srv.URL, "--redis-url", srv.URL, "--redis-timeout", redisTimeout.String(),
		"--public-url", "http://127.0.0.1:1", "--webhook-secret-file", secretFile)
	signer, err := webhook.NewSigner([]string{secret})
	if err != nil {
		t.Fatal(err)
	}
	urls, err := webhook.NewURLs("http://"+g.httpAddr, signer)
	if err != nil {
		t.Fatal(err)
	}
	call := func(method, url, body string) (int, time.Duration) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+securityKey)
		req.Header.Set("Content-Type", "application/json")
		start := time.Now()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, time.Since(start)
	}
	base := "http://" + g.httpAddr + "/v1/deployments/d/requests"
	if code, _ := call(http.MethodPost, base, `{"overrides":{}}`); code != http.StatusOK {
		t.Fatalf("submit before the hang: HTTP %d", code)
	}

	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	callback := `{"request_id":"req-hung","deployment_id":"d","status":"in_progress","instance_id":"i-1"}`
	for _, c := range []struct{ name, method, url, body string }{
		{"callback", http.MethodPost, urls.CallbackURL("d", ""), callback},
		{"submit", http.MethodPost, base, `{"overrides":{}}`},
		{"status", http.MethodGet, base + "/req-hung", ""},
	} {
		code, took := call(c.method, c.url, c.body)
		t.Logf("%s while Redis hangs: HTTP %d after %v", c.name, code, took.Round(time.Millisecond))
		if code != http.StatusServiceUnavailable {
			t.Errorf("%s while Redis hangs: HTTP %d, want 503", c.name, code)
		}
		if took > redisTimeout+time.Second {
			t.Errorf("%s while Redis hangs took %v, want at most %v", c.name, took, redisTimeout+time.Second)
		}
	}
	if n := up.submits.Load(); n != 1 {
		t.Errorf("RunComfy saw %d submits, want only the one before the hang", n)
	}

	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	eventually(ctx, t, "a callback recorded once Redis answers", func() bool {
		code, _ := call(http.MethodPost, urls.CallbackURL("d", ""), callback)
		return code == http.StatusOK
	})
	if code, _ := call(http.MethodPost, base, `{"overrides":{}}`); code != http.StatusOK {
		t.Errorf("submit after the hang: HTTP %d", code)
	}
}
