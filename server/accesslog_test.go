package server_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// syncBuffer is a bytes.Buffer the gateway's goroutines may write at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestOneLogLinePerCall: every RPC (REST included, the stream too) and every
// callback leaves one line with its request id, tenant, code and duration; no
// key and no callback token is ever in the log.
func TestOneLogLinePerCall(t *testing.T) {
	logs := &syncBuffer{}
	g := startGateway(t, withKeys(t), withCallbacks, func(o *gatewayOptions) { o.logs = logs })
	ctx := ctxT(t)
	sub, err := g.client.Submit(as(ctx, keyA), &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{"prompt":"a secret prompt"}`})
	if err != nil {
		t.Fatal(err)
	}
	rid := sub.GetRequest().GetRequestId()
	if _, err := watchAll(as(ctx, keyA), t, g, rid, 0); err != nil {
		t.Fatal(err)
	}
	if got := g.restAs(t, keyB, http.MethodGet, "/v1/deployments/dep-1/requests/"+rid, ""); got != http.StatusNotFound {
		t.Fatalf("tenant-b: %d", got)
	}
	if got := g.restAs(t, "", http.MethodGet, "/v1/deployments/dep-1/requests/"+rid, ""); got != http.StatusUnauthorized {
		t.Fatalf("no key: %d", got)
	}

	type line struct {
		Msg       string `json:"msg"`
		Method    string `json:"method"`
		RequestID string `json:"request_id"`
		Tenant    string `json:"tenant"`
		Code      string `json:"code"`
		Duration  *int64 `json:"duration"`
		Outcome   string `json:"outcome"`
	}
	var rpcs []line
	callbacks := 0
	for _, raw := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var l line
		if err := json.Unmarshal([]byte(raw), &l); err != nil {
			t.Fatalf("log line %q: %v", raw, err)
		}
		switch l.Msg {
		case "rpc":
			rpcs = append(rpcs, l)
		case "callback":
			if l.RequestID == rid && l.Outcome != "" && l.Duration != nil {
				callbacks++
			}
		}
	}
	want := []line{
		{Method: "/comfygate.v1.GatewayService/Submit", RequestID: rid, Tenant: "tenant-a", Code: "OK"},
		{Method: "/comfygate.v1.GatewayService/WatchRequest", RequestID: rid, Tenant: "tenant-a", Code: "OK"},
		{Method: "/comfygate.v1.GatewayService/GetStatus", RequestID: rid, Tenant: "tenant-b", Code: "NotFound"},
		// Refused before the gateway reads anything: the line names the route.
		{Method: "HTTP GET /v1/deployments/dep-1/requests/" + rid, Tenant: "", Code: "Unauthenticated"},
	}
	if len(rpcs) != len(want) {
		t.Fatalf("rpc lines %+v, want %d", rpcs, len(want))
	}
	for i, w := range want {
		got := rpcs[i]
		if got.Method != w.Method || got.RequestID != w.RequestID || got.Tenant != w.Tenant || got.Code != w.Code || got.Duration == nil {
			t.Errorf("rpc line %d = %+v, want %+v with a duration", i, got, w)
		}
	}
	if callbacks < 2 {
		t.Errorf("callback lines for %s: %d, want one per callback", rid, callbacks)
	}
	for _, secret := range []string{keyA, keyB, "test-webhook-secret-0123456789", g.urls.CallbackURL("dep-1", ""), "a secret prompt", simToken} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("the log contains %q", secret)
		}
	}
}
