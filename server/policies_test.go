package server_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/comfygate/comfygate/deployments"
	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
)

// policyMap is a deployments file in memory.
type policyMap map[string]deployments.Policy

func (m policyMap) For(dep string) deployments.Policy { return m[dep] }

func withPolicies(p policyMap) func(*gatewayOptions) {
	return func(o *gatewayOptions) { o.policies = p }
}

// TestSubmitDeadlines: a submit's deadlines come from its fields (gRPC),
// its headers (REST) or else its deployment's defaults, and the request
// carries them; a malformed or out-of-range one is INVALID_ARGUMENT (400)
// and reaches no upstream.
func TestSubmitDeadlines(t *testing.T) {
	g := startGateway(t, withPolicies(policyMap{"dep-defaults": {MaxQueueDuration: 5 * time.Minute, MaxRunDuration: 10 * time.Minute}}))
	check := func(t *testing.T, st *comfygatev1.RequestState, queue, run time.Duration) {
		t.Helper()
		if got := st.GetMaxQueueDuration().AsDuration(); got != queue {
			t.Errorf("max_queue_duration = %s, want %s", got, queue)
		}
		if got := st.GetMaxRunDuration().AsDuration(); got != run {
			t.Errorf("max_run_duration = %s, want %s", got, run)
		}
		if queue > 0 {
			if got, want := st.GetDeadline().AsTime(), st.GetCreatedAt().AsTime().Add(queue); !got.Equal(want) {
				t.Errorf("deadline = %v, want created_at + %s = %v", got, queue, want)
			}
		} else if st.GetDeadline() != nil {
			t.Errorf("deadline %v without a queue deadline", st.GetDeadline().AsTime())
		}
		// What a read answers is what the record keeps.
		got, err := g.client.GetStatus(ctxT(t), &comfygatev1.GetStatusRequest{DeploymentId: st.GetDeploymentId(), RequestId: st.GetRequestId()})
		if err != nil {
			t.Fatal(err)
		}
		if got.GetRequest().GetMaxQueueDuration().AsDuration() != queue || got.GetRequest().GetMaxRunDuration().AsDuration() != run {
			t.Errorf("GetStatus answers %v / %v", got.GetRequest().GetMaxQueueDuration(), got.GetRequest().GetMaxRunDuration())
		}
	}
	for _, tc := range []struct {
		name         string
		dep          string
		queue, run   *durationpb.Duration
		wantQ, wantR time.Duration
	}{
		{"fields", "dep-1", durationpb.New(90 * time.Second), durationpb.New(time.Hour), 90 * time.Second, time.Hour},
		{"none", "dep-1", nil, nil, 0, 0},
		{"defaults", "dep-defaults", nil, nil, 5 * time.Minute, 10 * time.Minute},
		{"field over default", "dep-defaults", durationpb.New(time.Second), nil, time.Second, 10 * time.Minute},
		{"bounds", "dep-1", durationpb.New(time.Second), durationpb.New(168 * time.Hour), time.Second, 168 * time.Hour},
		{"zero is none, over a default", "dep-defaults", durationpb.New(0), nil, 0, 10 * time.Minute},
	} {
		t.Run("grpc/"+tc.name, func(t *testing.T) {
			resp, err := g.client.Submit(ctxT(t), &comfygatev1.SubmitRequest{DeploymentId: tc.dep, InputJson: `{}`,
				MaxQueueDuration: tc.queue, MaxRunDuration: tc.run})
			if err != nil {
				t.Fatal(err)
			}
			check(t, resp.GetRequest(), tc.wantQ, tc.wantR)
		})
	}
	t.Run("grpc/large", func(t *testing.T) {
		// A large submit is decoded apart (submitwire.go): its deadlines too.
		input := `{"image":"` + strings.Repeat("A", 100<<10) + `"}`
		resp, err := g.client.Submit(ctxT(t), &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: input,
			MaxQueueDuration: durationpb.New(time.Minute), MaxRunDuration: durationpb.New(2 * time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		check(t, resp.GetRequest(), time.Minute, 2*time.Minute)
	})
	for _, tc := range []struct {
		name         string
		dep          string
		headers      map[string]string
		wantQ, wantR time.Duration
	}{
		{"headers", "dep-1", map[string]string{"Comfygate-Max-Queue-Duration": "2m", "comfygate-max-run-duration": " 1h30m "}, 2 * time.Minute, 90 * time.Minute},
		{"defaults", "dep-defaults", nil, 5 * time.Minute, 10 * time.Minute},
		{"header over default", "dep-defaults", map[string]string{"Comfygate-Max-Run-Duration": "45s"}, 5 * time.Minute, 45 * time.Second},
		{"zero is none, over a default", "dep-defaults", map[string]string{"Comfygate-Max-Queue-Duration": "0", "Comfygate-Max-Run-Duration": "0s"}, 0, 0},
	} {
		t.Run("rest/"+tc.name, func(t *testing.T) {
			code, body := g.restWith(t, http.MethodPost, "/v1/deployments/"+tc.dep+"/requests", []byte(`{}`), tc.headers)
			if code != http.StatusOK {
				t.Fatalf("HTTP %d: %s", code, body)
			}
			var resp comfygatev1.SubmitResponse
			unmarshalJSON(t, body, &resp)
			check(t, resp.GetRequest(), tc.wantQ, tc.wantR)
		})
	}

	before := len(g.sim.Submits())
	for _, tc := range []struct {
		name       string
		queue, run *durationpb.Duration
		want       string
	}{
		{"too short", durationpb.New(999 * time.Millisecond), nil, "max_queue_duration: 999ms is out of range"},
		{"too long", nil, durationpb.New(169 * time.Hour), "max_run_duration: 169h0m0s is out of range"},
		{"negative", durationpb.New(-time.Minute), nil, "max_queue_duration: -1m0s is out of range"},
		{"invalid", &durationpb.Duration{Seconds: 1, Nanos: -5}, nil, "max_queue_duration: is not a valid duration"},
	} {
		t.Run("grpc/refused/"+tc.name, func(t *testing.T) {
			_, err := g.client.Submit(ctxT(t), &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`, MaxQueueDuration: tc.queue, MaxRunDuration: tc.run})
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tc.want) {
				t.Fatalf("Submit = %v, want INVALID_ARGUMENT with %q", err, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		name    string
		headers map[string]string
		want    string
	}{
		{"not a duration", map[string]string{"Comfygate-Max-Queue-Duration": "ten minutes"}, `Comfygate-Max-Queue-Duration: "ten minutes" is not a duration`},
		{"bare number", map[string]string{"Comfygate-Max-Run-Duration": "300"}, `Comfygate-Max-Run-Duration: "300" is not a duration`},
		{"too long", map[string]string{"Comfygate-Max-Run-Duration": "8760h"}, "Comfygate-Max-Run-Duration: 8760h0m0s is out of range"},
		// Values grpc-gateway would drop on their way to the service.
		{"micro sign", map[string]string{"Comfygate-Max-Run-Duration": "5µs"}, "Comfygate-Max-Run-Duration: may contain only printable ASCII"},
		{"other digits", map[string]string{"Comfygate-Max-Queue-Duration": "١s"}, "Comfygate-Max-Queue-Duration: may contain only printable ASCII"},
		{"metadata alias", map[string]string{"Grpc-Metadata-Comfygate-Max-Queue-Duration": "1m"}, "Grpc-Metadata-Comfygate-Max-Queue-Duration: is not read"},
	} {
		t.Run("rest/refused/"+tc.name, func(t *testing.T) {
			code, body := g.restWith(t, http.MethodPost, "/v1/deployments/dep-1/requests", []byte(`{}`), tc.headers)
			st, err := decodeStatus(body)
			if err != nil {
				t.Fatal(err)
			}
			if code != http.StatusBadRequest || !strings.Contains(st.Message, tc.want) {
				t.Fatalf("HTTP %d %s, want 400 with %q", code, body, tc.want)
			}
		})
	}
	if n := len(g.sim.Submits()); n != before {
		t.Fatalf("%d refused submits reached RunComfy", n-before)
	}
	t.Run("idempotency key with other deadlines", func(t *testing.T) {
		submit := func(queue time.Duration) error {
			_, err := g.client.Submit(ctxT(t), &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{"k":1}`,
				IdempotencyKey: "deadlines-key", MaxQueueDuration: durationpb.New(queue)})
			return err
		}
		if err := submit(time.Hour); err != nil {
			t.Fatal(err)
		}
		if err := submit(time.Hour); err != nil {
			t.Fatalf("a replay: %v", err)
		}
		if err := submit(time.Minute); status.Code(err) != codes.AlreadyExists {
			t.Fatalf("the key with another deadline = %v, want ALREADY_EXISTS", err)
		}
	})
	before = len(g.sim.Submits())
	t.Run("rest/refused/twice", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodPost, g.httpBase+"/v1/deployments/dep-1/requests", strings.NewReader(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Add("Comfygate-Max-Queue-Duration", "1m")
		req.Header.Add("Comfygate-Max-Queue-Duration", "2m")
		resp, err := g.httpc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("HTTP %d, want 400", resp.StatusCode)
		}
	})
	if n := len(g.sim.Submits()); n != before {
		t.Fatalf("%d refused submits reached RunComfy", n-before)
	}
}

// TestConcurrencyCaps: a submit past a deployment's cap, or past a
// tenant's cap on it, is RESOURCE_EXHAUSTED (REST 429) with the reason
// CONCURRENCY_CAP before RunComfy is called; the slot comes back when a
// request ends, however it ends.
func TestConcurrencyCaps(t *testing.T) {
	g := startGateway(t, withKeys(t), withPolicies(policyMap{"dep-capped": {MaxConcurrency: 3, MaxConcurrencyPerTenant: 2}}))
	submit := func(key string) (string, error) {
		resp, err := g.client.Submit(as(ctxT(t), key), &comfygatev1.SubmitRequest{DeploymentId: "dep-capped", InputJson: `{}`})
		return resp.GetRequest().GetRequestId(), err
	}
	refused := func(key, scope string) {
		t.Helper()
		before := len(g.sim.Submits())
		_, err := submit(key)
		st := status.Convert(err)
		if st.Code() != codes.ResourceExhausted {
			t.Fatalf("submit past the cap = %v, want RESOURCE_EXHAUSTED", err)
		}
		var info *errdetails.ErrorInfo
		for _, d := range st.Details() {
			if i, ok := d.(*errdetails.ErrorInfo); ok {
				info = i
			}
		}
		if info == nil || info.GetReason() != "CONCURRENCY_CAP" || info.GetMetadata()["scope"] != scope || info.GetMetadata()["deployment_id"] != "dep-capped" {
			t.Fatalf("details %v, want ErrorInfo CONCURRENCY_CAP of scope %s", st.Details(), scope)
		}
		if n := len(g.sim.Submits()); n != before {
			t.Fatal("a submit past the cap reached RunComfy")
		}
	}
	a1, err := submit(keyA)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := submit(keyA); err != nil {
		t.Fatal(err)
	}
	refused(keyA, "tenant")
	b1, err := submit(keyB)
	if err != nil {
		t.Fatal(err)
	}
	refused(keyB, "deployment")
	// Another deployment is not capped.
	if _, err := g.client.Submit(as(ctxT(t), keyB), &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{}`}); err != nil {
		t.Fatal(err)
	}
	// REST: 429 with the same status.
	if code := g.restAs(t, keyB, http.MethodPost, "/v1/deployments/dep-capped/requests", `{}`); code != http.StatusTooManyRequests {
		t.Fatalf("REST submit past the cap: HTTP %d, want 429", code)
	}

	// A success (read back from RunComfy) frees its slot.
	if err := g.sim.Finish(a1, runcomfysim.Outcome{Images: 1}); err != nil {
		t.Fatal(err)
	}
	if st, err := g.client.GetStatus(as(ctxT(t), keyA), &comfygatev1.GetStatusRequest{DeploymentId: "dep-capped", RequestId: a1}); err != nil || st.GetRequest().GetStatus() != comfygatev1.Status_STATUS_SUCCEEDED {
		t.Fatalf("GetStatus = %v, %v", st, err)
	}
	if _, err := submit(keyA); err != nil {
		t.Fatalf("submit after a request ended: %v", err)
	}
	refused(keyB, "deployment")
	// A cancel frees one too.
	if _, err := g.client.Cancel(as(ctxT(t), keyB), &comfygatev1.CancelRequest{DeploymentId: "dep-capped", RequestId: b1}); err != nil {
		t.Fatal(err)
	}
	if _, err := submit(keyB); err != nil {
		t.Fatalf("submit after a cancel: %v", err)
	}
}

// TestConcurrencyCapKeepsUnansweredSubmits: a submit RunComfy may have
// taken without an answer keeps its place until its reservation expires, so
// a job that may be running is counted; one refused outright gives it back.
func TestConcurrencyCapKeepsUnansweredSubmits(t *testing.T) {
	g := startGateway(t, withPolicies(policyMap{"dep-capped": {MaxConcurrency: 1}}), func(o *gatewayOptions) { o.metrics = prometheus.NewRegistry() })
	submit := func() error {
		_, err := g.client.Submit(ctxT(t), &comfygatev1.SubmitRequest{DeploymentId: "dep-capped", InputJson: `{}`})
		return err
	}
	g.sim.SetFaults(runcomfysim.Faults{Errors: map[string]runcomfysim.FaultError{"submit": {HTTPStatus: 500, ErrorCode: 500001}}})
	if err := submit(); status.Code(err) != codes.Unavailable {
		t.Fatalf("submit answered 500 = %v, want UNAVAILABLE", err)
	}
	g.sim.SetFaults(runcomfysim.Faults{Errors: map[string]runcomfysim.FaultError{"submit": {HTTPStatus: 504}}})
	if err := submit(); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("submit answered a proxy's 504 = %v, want DEADLINE_EXCEEDED (no answer)", err)
	}
	g.sim.SetFaults(runcomfysim.Faults{})
	if err := submit(); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("submit after an unanswered one = %v, want RESOURCE_EXHAUSTED: its job may run", err)
	}
	if n := scrape(t, g, `comfygate_limit_refusals_total{limit="concurrency_cap"}`); n != 1 {
		t.Fatalf("refusals counted: %v, want 1", n)
	}
}

func unmarshalJSON(t *testing.T, data []byte, m proto.Message) {
	t.Helper()
	if err := protojson.Unmarshal(data, m); err != nil {
		t.Fatalf("%s: %v", data, err)
	}
}
