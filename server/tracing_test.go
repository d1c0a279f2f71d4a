package server_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// TestTraceContextCrossesRESTIntoGRPC: a REST call carrying a W3C traceparent
// yields the HTTP span, the gateway's gRPC client span and the gRPC server
// span, all in the caller's trace.
func TestTraceContextCrossesRESTIntoGRPC(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })
	g := startGateway(t, func(o *gatewayOptions) { o.tracer = tp })

	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	req, err := http.NewRequest(http.MethodGet, g.httpBase+"/v1/deployments/dep-1/requests/never-seen", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	// HTTP server + gRPC server spans, and the gateway's gRPC client span. The
	// HTTP server span ends after the handler returns, which can be just after
	// the client has read the answer: wait for it.
	var kinds map[trace.SpanKind]int
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		kinds = map[trace.SpanKind]int{}
		for _, s := range rec.Ended() {
			if s.SpanContext().TraceID().String() == traceID {
				kinds[s.SpanKind()]++
			}
		}
		if kinds[trace.SpanKindServer] >= 2 && kinds[trace.SpanKindClient] >= 1 || time.Now().After(deadline) {
			break
		}
	}
	if kinds[trace.SpanKindServer] < 2 || kinds[trace.SpanKindClient] < 1 {
		var names []string
		for _, s := range rec.Ended() {
			names = append(names, s.Name()+" "+s.SpanContext().TraceID().String())
		}
		t.Errorf("spans in the caller's trace by kind: %v; all spans: %v", kinds, names)
	}
}

// TestCallbacksAndRunComfyCallsAreTraced: callbacks and calls to RunComfy get
// spans of their own, and no span carries the callback token.
func TestCallbacksAndRunComfyCallsAreTraced(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })
	g := startGateway(t, withCallbacks, func(o *gatewayOptions) { o.tracer = tp })
	ctx := ctxT(t)
	sub, err := g.client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watchAll(ctx, t, g, sub.GetRequest().GetRequestId(), 0); err != nil {
		t.Fatal(err)
	}
	names := map[string]int{}
	token := g.urls.CallbackURL("dep-1", "")
	token = token[strings.LastIndex(token, "/")+1:]
	for _, s := range rec.Ended() {
		names[s.Name()]++
		for _, a := range s.Attributes() {
			if strings.Contains(a.Value.String(), token) {
				t.Errorf("span %s attribute %s carries the callback token", s.Name(), a.Key)
			}
		}
	}
	if names["runcomfy submit"] != 1 || names["callback"] < 2 {
		t.Errorf("spans %v, want one runcomfy submit and one per callback", names)
	}
}
