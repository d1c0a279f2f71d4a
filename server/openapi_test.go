package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/hooks"
	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
	"github.com/comfygate/comfygate/server"
	"github.com/comfygate/comfygate/state"
)

// openAPIDoc is what the tests read of the served OpenAPI (Swagger 2.0)
// document.
type openAPIDoc struct {
	Swagger string `json:"swagger"`
	Info    struct {
		Title       string `json:"title"`
		Description string `json:"description"`
		Version     string `json:"version"`
	} `json:"info"`
	Paths               map[string]map[string]json.RawMessage `json:"paths"`
	Definitions         map[string]openAPISchema              `json:"definitions"`
	SecurityDefinitions map[string]struct {
		Type string `json:"type"`
		Name string `json:"name"`
		In   string `json:"in"`
	} `json:"securityDefinitions"`
	Security []map[string][]string `json:"security"`
}

type openAPISchema struct {
	Ref        string                   `json:"$ref"`
	Type       string                   `json:"type"`
	Properties map[string]openAPISchema `json:"properties"`
	// AdditionalProperties is true, false or a schema.
	AdditionalProperties json.RawMessage `json:"additionalProperties"`
	Example              json.RawMessage `json:"example"`
}

type openAPIOperation struct {
	OperationID string `json:"operationId"`
	Parameters  []struct {
		Name     string         `json:"name"`
		In       string         `json:"in"`
		Required bool           `json:"required"`
		Schema   *openAPISchema `json:"schema"`
	} `json:"parameters"`
	Responses map[string]struct {
		Schema  *openAPISchema             `json:"schema"`
		Headers map[string]json.RawMessage `json:"headers"`
	} `json:"responses"`
}

// documentedRoute is one operation of the document.
type documentedRoute struct {
	method, path string
	op           openAPIOperation
}

func (r documentedRoute) String() string { return r.method + " " + r.path }

// param returns the documented parameter named name, if any.
func (r documentedRoute) param(name string) (in string, required, ok bool) {
	for _, p := range r.op.Parameters {
		if p.Name == name {
			return p.In, p.Required, true
		}
	}
	return "", false, false
}

// documents reports whether the operation lists HTTP status code.
func (r documentedRoute) documents(code int) bool {
	_, ok := r.op.Responses[strconv.Itoa(code)]
	return ok
}

// routes lists the document's operations, in path and method order.
func (d *openAPIDoc) routes(t *testing.T) []documentedRoute {
	t.Helper()
	var out []documentedRoute
	for _, path := range slices.Sorted(maps.Keys(d.Paths)) {
		for _, method := range slices.Sorted(maps.Keys(d.Paths[path])) {
			var op openAPIOperation
			if err := json.Unmarshal(d.Paths[path][method], &op); err != nil {
				t.Fatalf("%s %s: %v", method, path, err)
			}
			out = append(out, documentedRoute{method: strings.ToUpper(method), path: path, op: op})
		}
	}
	return out
}

// resolve follows a schema's reference into the document's definitions.
func (d *openAPIDoc) resolve(t *testing.T, s *openAPISchema) openAPISchema {
	t.Helper()
	if s == nil {
		t.Fatal("no schema")
	}
	if s.Ref == "" {
		return *s
	}
	name, ok := strings.CutPrefix(s.Ref, "#/definitions/")
	def, found := d.Definitions[name]
	if !ok || !found {
		t.Fatalf("reference %s resolves to no definition", s.Ref)
	}
	return def
}

// fetchOpenAPI gets /openapi.json from base, without a key, and decodes it.
func fetchOpenAPI(t *testing.T, httpc *http.Client, base string) openAPIDoc {
	t.Helper()
	var doc openAPIDoc
	if err := json.Unmarshal(fetchOpenAPIJSON(t, httpc, base), &doc); err != nil {
		t.Fatalf("/openapi.json is not a document: %v", err)
	}
	return doc
}

// fetchOpenAPIJSON gets /openapi.json from base, without a key.
func fetchOpenAPIJSON(t *testing.T, httpc *http.Client, base string) []byte {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, base+"/openapi.json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := httpc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /openapi.json: HTTP %d, Content-Type %q: %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	return body
}

// documentedErrors are the error statuses each route documents: those it can
// answer (the README's error table, server/errors.go), and no others.
var documentedErrors = map[string][]int{
	"POST /v1/deployments/{deployment_id}/requests":                                              {400, 401, 404, 409, 413, 429, 500, 503, 504},
	"GET /v1/deployments/{deployment_id}/requests/{request_id}":                                  {400, 401, 404, 413, 429, 500, 503, 504},
	"GET /v1/deployments/{deployment_id}/requests/{request_id}/result":                           {400, 401, 404, 413, 429, 500, 503, 504},
	"POST /v1/deployments/{deployment_id}/requests/{request_id}:cancel":                          {400, 401, 404, 413, 429, 500, 503, 504},
	"GET /v1/deployments/{deployment_id}/requests/{request_id}:watch":                            {400, 401, 404, 413, 429, 500, 503, 504},
	"GET /v1/deployments/{deployment_id}/requests/{request_id}/events":                           {400, 401, 404, 413, 429, 500, 503, 504},
	"GET /v1/deployments/{deployment_id}/requests/{request_id}/deliveries":                       {400, 401, 404, 413, 429, 500, 503},
	"POST /v1/deployments/{deployment_id}/requests/{request_id}/deliveries/{event_id}:redeliver": {400, 401, 404, 413, 429, 500, 503},
	"POST /v1/uploads": {400, 401, 403, 413, 415, 429, 503},
	"GET /v1/requests": {400, 401, 413, 429, 500, 503},
	"GET /v1/usage":    {400, 401, 413, 429, 500, 503},
	"GET /v1/deployments/{deployment_id}/requests": {400, 401, 413, 429, 500, 503},
}

// TestOpenAPIDescribesTheRESTAPI: the served document names the gateway,
// describes Submit's body as RunComfy's own submit body and its
// Idempotency-Key header, the API key, and for every route the error
// statuses it can answer, each a google.rpc.Status.
func TestOpenAPIDescribesTheRESTAPI(t *testing.T) {
	g := startGateway(t, withKeys(t)) // served without a key all the same
	doc := fetchOpenAPI(t, g.httpc, g.httpBase)

	if doc.Swagger != "2.0" {
		t.Errorf("swagger = %q, want 2.0", doc.Swagger)
	}
	if doc.Info.Title != "comfygate" || len(doc.Info.Description) < 100 || doc.Info.Version == "" {
		t.Errorf("info: title %q, description %q, version %q: want comfygate, a description and a version",
			doc.Info.Title, doc.Info.Description, doc.Info.Version)
	}
	if key := doc.SecurityDefinitions["ApiKey"]; key.Type != "apiKey" || key.In != "header" || key.Name != "Authorization" {
		t.Errorf("security definition ApiKey = %+v, want an apiKey in the Authorization header", key)
	}
	if want := []map[string][]string{{"ApiKey": {}}, {}}; !reflect.DeepEqual(doc.Security, want) {
		t.Errorf("security = %v, want %v (the key, or none on a gateway without keys)", doc.Security, want)
	}

	routes := doc.routes(t)
	var names []string
	for _, r := range routes {
		names = append(names, r.String())
	}
	if want := slices.Sorted(maps.Keys(documentedErrors)); !slices.Equal(slices.Sorted(slices.Values(names)), want) {
		t.Fatalf("documented routes %v, want %v", names, want)
	}
	for _, r := range routes {
		var errs []int
		for code, resp := range r.op.Responses {
			n, err := strconv.Atoi(code)
			if err != nil || n < 400 {
				continue // "default", and the answers of success
			}
			errs = append(errs, n)
			if resp.Schema == nil || resp.Schema.Ref != "#/definitions/googleRpcStatus" {
				t.Errorf("%s: %d is not a google.rpc.Status: %+v", r, n, resp.Schema)
			}
		}
		slices.Sort(errs)
		if want := documentedErrors[r.String()]; !slices.Equal(errs, want) {
			t.Errorf("%s documents the errors %v, want %v", r, errs, want)
		}
	}
	if _, ok := doc.Definitions["googleRpcStatus"].Properties["code"]; !ok {
		t.Error("googleRpcStatus has no code")
	}

	submit := routes[slices.IndexFunc(routes, func(r documentedRoute) bool {
		return r.String() == "POST /v1/deployments/{deployment_id}/requests"
	})]
	if in, required, ok := submit.param("Idempotency-Key"); !ok || in != "header" || required {
		t.Errorf("Submit's Idempotency-Key: documented %v, in %q, required %v; want an optional header", ok, in, required)
	}
	var body openAPISchema
	for _, p := range submit.op.Parameters {
		if p.In == "body" {
			body = doc.resolve(t, p.Schema)
		}
	}
	if body.Type != "object" || string(body.AdditionalProperties) != "true" {
		t.Errorf("Submit's body: type %q, additionalProperties %s; want an object that takes any field", body.Type, body.AdditionalProperties)
	}
	for _, field := range []string{"input_json", "idempotency_key"} {
		if _, ok := body.Properties[field]; ok {
			t.Errorf("Submit's body documents %s, which REST takes from elsewhere", field)
		}
	}
	overrides := body.Properties["overrides"]
	var perNode openAPISchema
	if err := json.Unmarshal(overrides.AdditionalProperties, &perNode); err != nil || overrides.Type != "object" ||
		perNode.Properties["inputs"].Type != "object" {
		t.Errorf("Submit's overrides: %+v; want an object of node id -> {inputs: {...}}", overrides)
	}
	var example map[string]json.RawMessage
	if err := json.Unmarshal(body.Example, &example); err != nil || example["overrides"] == nil {
		t.Errorf("Submit's body example %s: want one with overrides", body.Example)
	}
}

// TestOpenAPIVersionIsTheBuilds: info.version is the version the server is
// given, whatever the generated document says.
func TestOpenAPIVersionIsTheBuilds(t *testing.T) {
	const version = "v9.8.7-test"
	srv, err := server.New(server.Config{
		GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Version: version,
		Logger: slog.New(slog.DiscardHandler),
	}, comfygatev1.UnimplementedGatewayServiceServer{})
	if err != nil {
		t.Fatal(err)
	}
	runServer(t, srv)
	// New opened the listener: the request waits for Run to accept it.
	if got := fetchOpenAPI(t, http.DefaultClient, "http://"+srv.HTTPAddr()).Info.Version; got != version {
		t.Errorf("info.version = %q, want %q", got, version)
	}
}

// runServer runs srv until the test ends, and checks that it stopped
// cleanly.
func runServer(t *testing.T, srv *server.Server) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// routeCall is one request to a documented route.
type routeCall struct {
	// key is the API key: the Authorization header, or access_token where
	// that is among params. None when empty.
	key string
	// params are the values of documented parameters, by name: path, query
	// and header alike.
	params map[string]string
	body   []byte
}

// routeAnswer is what a route answered.
type routeAnswer struct {
	code   int
	header http.Header
	body   []byte
}

// callRoute sends c to r, with the parameters r documents.
func (g *gateway) callRoute(ctx context.Context, t *testing.T, r documentedRoute, c routeCall) routeAnswer {
	t.Helper()
	path := r.path
	query := url.Values{}
	header := http.Header{}
	for _, p := range r.op.Parameters {
		v, ok := c.params[p.Name]
		switch {
		case p.In == "body":
			continue
		case !ok && p.Required:
			t.Fatalf("%s: no value for the required parameter %s", r, p.Name)
		case !ok:
			continue
		}
		switch p.In {
		case "path":
			path = strings.ReplaceAll(path, "{"+p.Name+"}", url.PathEscape(v))
		case "query":
			query.Set(p.Name, v)
		case "header":
			header.Set(p.Name, v)
		default:
			t.Fatalf("%s: parameter %s is in %q", r, p.Name, p.In)
		}
	}
	for name := range c.params {
		if _, _, ok := r.param(name); !ok && name != "deployment_id" && name != "request_id" {
			t.Fatalf("%s: the test sets %s, which is not documented", r, name)
		}
	}
	if c.key != "" && query.Has("access_token") {
		query.Set("access_token", c.key)
	} else if c.key != "" {
		header.Set("Authorization", "Bearer "+c.key)
	}
	u := g.httpBase + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var body io.Reader
	if c.body != nil {
		body = bytes.NewReader(c.body)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	maps.Copy(req.Header, header)
	if c.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := g.httpc.Do(req)
	if err != nil {
		t.Fatalf("%s: %v", r, err)
	}
	defer resp.Body.Close()
	// Streams of finished requests end by themselves: the whole answer.
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s: reading the answer: %v", r, err)
	}
	return routeAnswer{code: resp.StatusCode, header: resp.Header, body: got}
}

// errorStatus is the google.rpc.Status of an error answer: the body itself,
// or (wrapped) inside the {"error": ...} line a watch stream refuses with.
func errorStatus(body []byte) (code int, message string, wrapped, ok bool) {
	var st struct {
		Code    *int            `json:"code"`
		Message string          `json:"message"`
		Error   json.RawMessage `json:"error"`
	}
	if json.Unmarshal(body, &st) != nil {
		return 0, "", false, false
	}
	if st.Error != nil && st.Code == nil {
		code, message, _, ok := errorStatus(st.Error)
		return code, message, true, ok
	}
	if st.Code == nil {
		return 0, "", false, false
	}
	return *st.Code, st.Message, false, true
}

// routeCase is one call to a route and the status it must answer.
type routeCase struct {
	name string
	call routeCall
	want int
	// message, when set, is the google.rpc.Status message of the answer.
	message string
}

// TestOpenAPIRoutesAnswerAsDocumented calls every route of the served
// document as it documents it, and checks that each reaches a real handler
// (not the 404 of an unknown route, nor a 405) and answers a status the
// document lists for it: success, no key, malformed and unknown ids, a body
// over the limit, a reused Idempotency-Key, RunComfy's failures, the tenant's
// limits.
func TestOpenAPIRoutesAnswerAsDocumented(t *testing.T) {
	const maxBody = 4096
	// tenant-c may attach: an id the gateway has no record of is read from
	// RunComfy, so its failures reach the reads too.
	// tenant-a's requests send every event to a receiver, so that its
	// requests have deliveries to list and events to redeliver.
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	t.Cleanup(receiver.Close)
	secret, err := hooks.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	all := state.KindQueued | state.KindRunning | state.KindOutput | state.KindTerminal
	g := startGateway(t, withKeysFile(t, "tenant-a "+keyA+"\ntenant-c "+keyC+" attach\n"),
		func(o *gatewayOptions) {
			o.maxBody = maxBody
			o.hooks = &hooksOptions{secrets: []hooks.Secret{secret},
				defaults: map[string][]state.WebhookTarget{"tenant-a": {{URL: receiver.URL + "/hooks", Kinds: all}}}}
		})
	ctx := ctxT(t)
	doc := fetchOpenAPI(t, g.httpc, g.httpBase)
	routes := doc.routes(t)

	// A finished request of tenant-a's, which every read finds.
	rid := g.submitAs(ctx, t, keyA)
	g.stepAs(ctx, t, keyA, rid)
	g.stepAs(ctx, t, keyA, rid)
	final, err := g.client.GetStatus(as(ctx, keyA), &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: rid})
	if err != nil {
		t.Fatal(err)
	}
	if final.GetRequest().GetStatus() != comfygatev1.Status_STATUS_SUCCEEDED {
		t.Fatalf("request %s is %v, want it finished", rid, final.GetRequest().GetStatus())
	}
	finalID := fmt.Sprintf("%d-%d-succeeded", final.GetRequest().GetEpoch(), final.GetRequest().GetSeq())
	eventID := state.EventID(rid, final.GetRequest().GetEpoch(), final.GetRequest().GetSeq())

	// A documented parameter the test has no value for fails it: the
	// document grew, and so must this test.
	nextKey := 0
	optional := func(t *testing.T, name string) string {
		t.Helper()
		switch name {
		case "after_seq", "after_epoch", "Last-Event-ID", "last_event_id":
			return "0"
		case "after_status":
			return "STATUS_UNSPECIFIED"
		case "access_token":
			return "" // the key (routeCall.key)
		case "Comfygate-Webhook":
			return receiver.URL + "/named"
		case "Comfygate-Webhook-Events":
			return "running,terminal"
		case "Comfygate-Max-Queue-Duration", "Comfygate-Max-Run-Duration":
			return "1h"
		case "Idempotency-Key":
			nextKey++
			return "openapi-test-" + strconv.Itoa(nextKey)
		case "start":
			return time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
		case "end":
			return time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
		case "Prefer":
			return "wait=0" // no wait: the answer stays 200
		case "statuses":
			return "STATUS_SUCCEEDED"
		case "created_after":
			return "2020-01-01T00:00:00Z"
		case "created_before":
			return "2100-01-01T00:00:00Z"
		case "page_size":
			return "10"
		case "page_token":
			return ""
		case "deployment_id": // ListRequests on /v1/requests: a query parameter
			return "dep-1"
		}
		t.Fatalf("no test value for the documented parameter %s", name)
		return ""
	}
	// faults are RunComfy's failures, on every endpoint, and the status each
	// maps to on every route.
	faults := []struct {
		name  string
		fault runcomfysim.FaultError
		want  int
	}{
		// A Retry-After beyond the client's own waits: answered at once.
		{"RunComfy rate limits", runcomfysim.FaultError{HTTPStatus: 429, RetryAfter: "60"}, 429},
		{"RunComfy fails", runcomfysim.FaultError{HTTPStatus: 500, ErrorCode: 500001}, 503},
		{"RunComfy rejects the gateway's token", runcomfysim.FaultError{HTTPStatus: 401, ErrorCode: 401001}, 500},
		{"RunComfy account without funds", runcomfysim.FaultError{HTTPStatus: 402}, 400},
		{"RunComfy refuses the input", runcomfysim.FaultError{HTTPStatus: 422, ErrorCode: 422001}, 400},
		{"RunComfy knows no such thing", runcomfysim.FaultError{HTTPStatus: 404, ErrorCode: 404001}, 404},
	}

	// The uploads route needs object storage, which these gateways lack:
	// internal/app's TestUploadsRefused checks its answers against the
	// document, on a gateway with an S3 server.
	routes = slices.DeleteFunc(routes, func(r documentedRoute) bool { return r.path == "/v1/uploads" })
	for _, r := range routes {
		t.Run(r.String(), func(t *testing.T) {
			// Path parameters a route does not document are not sent.
			required := map[string]string{"deployment_id": "dep-1", "request_id": rid}
			if _, _, ok := r.param("event_id"); ok {
				required["event_id"] = eventID
			}
			every := maps.Clone(required)
			var body []byte
			for _, p := range r.op.Parameters {
				switch {
				case p.In == "body":
					// The document's own example of the body.
					body = doc.resolve(t, p.Schema).Example
					if body == nil {
						t.Fatalf("%s: the body has no example to send", r)
					}
				case !p.Required:
					every[p.Name] = optional(t, p.Name)
				}
			}
			with := func(params map[string]string, name, value string) map[string]string {
				out := maps.Clone(params)
				out[name] = value
				return out
			}
			cases := []routeCase{
				{name: "required parameters", call: routeCall{key: keyA, params: required, body: body}, want: http.StatusOK},
				{name: "every documented parameter", call: routeCall{key: keyA, params: every, body: body}, want: http.StatusOK},
				{name: "no API key", call: routeCall{params: required, body: body}, want: http.StatusUnauthorized},
				{name: "malformed deployment_id", call: routeCall{key: keyA, params: with(required, "deployment_id", "dep.1"), body: body},
					want: http.StatusBadRequest},
				{name: "body over the limit", call: routeCall{key: keyA, params: required, body: bytes.Repeat([]byte(" "), maxBody+1)},
					want: http.StatusRequestEntityTooLarge},
			}
			if _, _, ok := r.param("request_id"); ok {
				cases = append(cases, routeCase{name: "unknown request", call: routeCall{key: keyA, params: with(required, "request_id", "no-such-request")},
					want: http.StatusNotFound, message: "no such request"})
			}
			if _, _, ok := r.param("Last-Event-ID"); ok {
				cases = append(cases, routeCase{name: "resumed after the final state", call: routeCall{key: keyA, params: with(required, "Last-Event-ID", finalID)},
					want: http.StatusNoContent})
			}
			if _, _, ok := r.param("Idempotency-Key"); ok {
				reused := with(required, "Idempotency-Key", optional(t, "Idempotency-Key"))
				cases = append(cases,
					routeCase{name: "Idempotency-Key first used", call: routeCall{key: keyA, params: reused, body: body}, want: http.StatusOK},
					routeCase{name: "Idempotency-Key again, same body", call: routeCall{key: keyA, params: reused, body: body}, want: http.StatusOK},
					routeCase{name: "Idempotency-Key again, another body", call: routeCall{key: keyA, params: reused, body: []byte(`{"overrides": {}}`)},
						want: http.StatusConflict},
					routeCase{name: "malformed Idempotency-Key", call: routeCall{key: keyA, params: with(required, "Idempotency-Key", strings.Repeat("k", 256)), body: body},
						want: http.StatusBadRequest})
			}
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					checkAnswer(t, r, g.callRoute(ctx, t, r, tc.call), tc)
				})
			}
			// RunComfy's failures, met by tenant-c reading a request the
			// gateway has no record of (or submitting). Deliveries are the
			// gateway's own: their routes never ask RunComfy.
			unrecorded := with(required, "request_id", "not-recorded")
			if strings.HasSuffix(r.path, "/requests") && r.method == http.MethodGet || r.path == "/v1/usage" {
				return // ListRequests and GetUsage read the gateway's indexes only
			}
			if strings.Contains(r.path, "/deliveries") {
				t.Run("a request the gateway has no record of", func(t *testing.T) {
					checkAnswer(t, r, g.callRoute(ctx, t, r, routeCall{key: keyC, params: unrecorded, body: body}),
						routeCase{want: http.StatusNotFound, message: "no such request"})
				})
				return
			}
			for _, f := range faults {
				t.Run(f.name, func(t *testing.T) {
					g.sim.SetFaults(runcomfysim.Faults{Errors: map[string]runcomfysim.FaultError{
						"submit": f.fault, "status": f.fault, "result": f.fault, "cancel": f.fault,
					}})
					defer g.sim.SetFaults(runcomfysim.Faults{})
					checkAnswer(t, r, g.callRoute(ctx, t, r, routeCall{key: keyC, params: unrecorded, body: body}), routeCase{want: f.want})
				})
			}
		})
	}

	// The tenant's limits, on a gateway of their own: one submit and one
	// read, spent before the routes are called, refilled in days.
	limited := startGateway(t, withKeys(t), func(o *gatewayOptions) {
		o.limits = server.LimitsConfig{SubmitRate: 1e-6, SubmitBurst: 1, ReadRate: 1e-6, ReadBurst: 1}
	})
	rid = limited.submitAs(ctx, t, keyA)
	if _, err := limited.client.GetStatus(as(ctx, keyA), &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: rid}); err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		t.Run(r.String()+"/over the tenant's limit", func(t *testing.T) {
			var body []byte
			for _, p := range r.op.Parameters {
				if p.In == "body" {
					body = doc.resolve(t, p.Schema).Example
				}
			}
			call := routeCall{key: keyA, params: map[string]string{"deployment_id": "dep-1", "request_id": rid}, body: body}
			if _, _, ok := r.param("event_id"); ok {
				call.params["event_id"] = eventID
			}
			checkAnswer(t, r, limited.callRoute(ctx, t, r, call), routeCase{want: http.StatusTooManyRequests})
		})
	}
}

// checkAnswer checks that a is the answer tc wants, that r documents its
// status, and that an error is a google.rpc.Status from the route's handler.
func checkAnswer(t *testing.T, r documentedRoute, a routeAnswer, tc routeCase) {
	t.Helper()
	if a.code == http.StatusMethodNotAllowed || a.code == http.StatusNotImplemented {
		t.Fatalf("HTTP %d: the documented route has no handler for %s\n%s", a.code, r.method, a.body)
	}
	if a.code != tc.want {
		t.Errorf("HTTP %d, want %d\n%s", a.code, tc.want, a.body)
	}
	if !r.documents(a.code) {
		t.Errorf("HTTP %d, which %s does not document\n%s", a.code, r, a.body)
	}
	// The headers the document names for these statuses come with them.
	for code, name := range map[int]string{http.StatusUnauthorized: "WWW-Authenticate", http.StatusTooManyRequests: "Retry-After"} {
		if a.code != code {
			continue
		}
		if _, ok := r.op.Responses[strconv.Itoa(code)].Headers[http.CanonicalHeaderKey(name)]; !ok {
			t.Errorf("%s does not document the header %s of %d", r, name, code)
		}
		if a.header.Get(name) == "" {
			t.Errorf("HTTP %d without %s", code, name)
		}
	}
	if a.code < 400 {
		return
	}
	code, message, wrapped, ok := errorStatus(a.body)
	if !ok || code == 0 || message == "" {
		t.Fatalf("HTTP %d with %s: want a google.rpc.Status", a.code, a.body)
	}
	// Only a stream, whose documented lines carry "error", refuses with one.
	if success := r.op.Responses["200"].Schema; wrapped && (success == nil || success.Properties["error"].Ref == "") {
		t.Errorf("HTTP %d with %s: a google.rpc.Status inside {\"error\": ...}, which only a stream's lines document", a.code, a.body)
	}
	// The 404 of a path no route serves is grpc-gateway's "Not Found".
	if a.code == http.StatusNotFound && message == http.StatusText(http.StatusNotFound) {
		t.Errorf("HTTP 404 %q: no handler served the documented route", message)
	}
	if tc.message != "" && message != tc.message {
		t.Errorf("message %q, want %q", message, tc.message)
	}
}
