package runcomfy_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/comfygate/comfygate/runcomfy"
)

// sentinels lists every classification an upstream failure can get; an *APIError
// must match exactly one.
var sentinels = map[string]error{
	"ErrInvalidInput":       runcomfy.ErrInvalidInput,
	"ErrNotFound":           runcomfy.ErrNotFound,
	"ErrUnauthorized":       runcomfy.ErrUnauthorized,
	"ErrInsufficientFunds":  runcomfy.ErrInsufficientFunds,
	"ErrDeploymentDisabled": runcomfy.ErrDeploymentDisabled,
	"ErrDeploymentDeleted":  runcomfy.ErrDeploymentDeleted,
	"ErrRateLimited":        runcomfy.ErrRateLimited,
	"ErrUnavailable":        runcomfy.ErrUnavailable,
}

func matching(err error) []string {
	var names []string
	for name, s := range sentinels {
		if errors.Is(err, s) {
			names = append(names, name)
		}
	}
	return names
}

func TestUpstreamErrors(t *testing.T) {
	const detail = `[{"loc":["body","overrides","9","inputs","seed"],"msg":"value is not a valid integer","type":"type_error.integer"}]`
	tests := []struct {
		name string
		a    answer
		// want is the sentinel; nil means the call succeeds.
		want           error
		wantHTTP       int
		wantCode       int64
		wantMessage    string
		wantDetail     string
		wantRetryAfter time.Duration // exact, unless retryAfterUpTo is set
		retryAfterUpTo bool          // RetryAfter in (wantRetryAfter-5s, wantRetryAfter]
	}{
		{
			name: "401001", a: answer{status: 401, body: `{"error_code":401001,"error_message":"Invalid or expired token"}`},
			want: runcomfy.ErrUnauthorized, wantHTTP: 401, wantCode: 401001, wantMessage: "Invalid or expired token",
		},
		{
			name: "403003", a: answer{status: 403, body: `{"error_code":403003,"error_message":"Deployment not owned by this token"}`},
			want: runcomfy.ErrNotFound, wantHTTP: 403, wantCode: 403003, wantMessage: "Deployment not owned by this token",
		},
		{
			name: "404001", a: answer{status: 404, body: `{"error_code":404001,"error_message":"Request not found"}`},
			want: runcomfy.ErrNotFound, wantHTTP: 404, wantCode: 404001, wantMessage: "Request not found",
		},
		{
			name: "422001 with detail array", a: answer{status: 422, body: `{"error_code":422001,"error_message":"Validation error","detail":` + detail + `}`},
			want: runcomfy.ErrInvalidInput, wantHTTP: 422, wantCode: 422001, wantMessage: "Validation error", wantDetail: detail,
		},
		{
			name: "422001 with detail null", a: answer{status: 422, body: `{"error_code":422001,"error_message":"Validation error","detail":null}`},
			want: runcomfy.ErrInvalidInput, wantHTTP: 422, wantCode: 422001, wantMessage: "Validation error",
		},
		{
			name: "500001", a: answer{status: 500, body: `{"error_code":500001,"error_message":"Internal error"}`},
			want: runcomfy.ErrUnavailable, wantHTTP: 500, wantCode: 500001, wantMessage: "Internal error",
		},
		{
			name: "10001 wins over HTTP 403", a: answer{status: 403, body: `{"error_code":10001,"error_message":"Insufficient funds"}`},
			want: runcomfy.ErrInsufficientFunds, wantHTTP: 403, wantCode: 10001, wantMessage: "Insufficient funds",
		},
		{
			name: "10002", a: answer{status: 400, body: `{"error_code":10002,"error_message":"Deployment disabled"}`},
			want: runcomfy.ErrDeploymentDisabled, wantHTTP: 400, wantCode: 10002, wantMessage: "Deployment disabled",
		},
		{
			name: "10003 wins over HTTP 404", a: answer{status: 404, body: `{"error_code":10003,"error_message":"Deployment deleted"}`},
			want: runcomfy.ErrDeploymentDeleted, wantHTTP: 404, wantCode: 10003, wantMessage: "Deployment deleted",
		},
		{
			name: "error_code as a string", a: answer{status: 404, body: `{"error_code":"404001","error_message":"Request not found"}`},
			want: runcomfy.ErrNotFound, wantHTTP: 404, wantCode: 404001, wantMessage: "Request not found",
		},
		{
			name: "HTTP 402 without code", a: answer{status: 402, body: `{"message":"Payment required"}`},
			want: runcomfy.ErrInsufficientFunds, wantHTTP: 402, wantMessage: "Payment required",
		},
		{
			name: "HTTP 402 without body", a: answer{status: 402},
			want: runcomfy.ErrInsufficientFunds, wantHTTP: 402, wantMessage: "Payment Required",
		},
		{
			name: "429 with Retry-After seconds", a: answer{status: 429, header: map[string]string{"Retry-After": "7"}, body: `{"message":"slow down"}`},
			want: runcomfy.ErrRateLimited, wantHTTP: 429, wantMessage: "slow down", wantRetryAfter: 7 * time.Second,
		},
		{
			name: "429 with Retry-After HTTP-date", a: answer{status: 429, header: map[string]string{"Retry-After": time.Now().Add(30 * time.Second).UTC().Format(http.TimeFormat)}},
			want: runcomfy.ErrRateLimited, wantHTTP: 429, wantMessage: "Too Many Requests", wantRetryAfter: 30 * time.Second, retryAfterUpTo: true,
		},
		{
			name: "429 with Retry-After in the past", a: answer{status: 429, header: map[string]string{"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}},
			want: runcomfy.ErrRateLimited, wantHTTP: 429, wantMessage: "Too Many Requests",
		},
		{
			name: "429 with unreadable Retry-After", a: answer{status: 429, header: map[string]string{"Retry-After": "soon"}},
			want: runcomfy.ErrRateLimited, wantHTTP: 429, wantMessage: "Too Many Requests",
		},
		{
			name: "500 without body", a: answer{status: 500},
			want: runcomfy.ErrUnavailable, wantHTTP: 500, wantMessage: "Internal Server Error",
		},
		{
			name: "502 without body", a: answer{status: 502},
			want: runcomfy.ErrUnavailable, wantHTTP: 502, wantMessage: "Bad Gateway",
		},
		{
			name: "503 without body, Retry-After kept", a: answer{status: 503, header: map[string]string{"Retry-After": "2"}},
			want: runcomfy.ErrUnavailable, wantHTTP: 503, wantMessage: "Service Unavailable", wantRetryAfter: 2 * time.Second,
		},
		{
			name: "HTTP 200 with error_code", a: answer{body: `{"error_code":401001,"error_message":"Token expired"}`},
			want: runcomfy.ErrUnauthorized, wantHTTP: 200, wantCode: 401001, wantMessage: "Token expired",
		},
		{
			name: "HTTP 200 with error_code and success fields", a: answer{body: `{"request_id":"req-1","status":"in_queue","outcome":"cancelled","error_code":10003,"error_message":"Deployment deleted"}`},
			want: runcomfy.ErrDeploymentDeleted, wantHTTP: 200, wantCode: 10003, wantMessage: "Deployment deleted",
		},
		{
			// Any non-null error_code is an error, even one that is not a number.
			name: "HTTP 200 with non-numeric error_code", a: answer{body: `{"request_id":"req-1","status":"in_queue","error_code":"QUOTA_EXCEEDED","error_message":"quota"}`},
			want: runcomfy.ErrUnavailable, wantHTTP: 200, wantMessage: "quota",
		},
		{
			name: "HTTP 200 with error_code null is success", a: answer{body: `{"request_id":"req-1","status":"in_queue","outcome":"cancelled","error_code":null,"error_message":null}`},
		},
		{
			name: "HTTP 200 with error_message but no error_code is success", a: answer{body: `{"request_id":"req-1","status":"in_queue","outcome":"cancelled","error_message":""}`},
		},
		{
			name: "message instead of error_message", a: answer{status: 404, body: `{"error_code":404001,"message":"Deployment not found"}`},
			want: runcomfy.ErrNotFound, wantHTTP: 404, wantCode: 404001, wantMessage: "Deployment not found",
		},
		{
			name: "error_message wins over message", a: answer{status: 404, body: `{"error_code":404001,"error_message":"first","message":"second"}`},
			want: runcomfy.ErrNotFound, wantHTTP: 404, wantCode: 404001, wantMessage: "first",
		},
		{
			name: "non-JSON 502 body", a: answer{status: 502, header: map[string]string{"Content-Type": "text/html"}, body: "<html><body>502 Bad Gateway</body></html>"},
			want: runcomfy.ErrUnavailable, wantHTTP: 502, wantMessage: "Bad Gateway",
		},
		{
			name: "non-JSON 400 body", a: answer{status: 400, header: map[string]string{"Content-Type": "text/plain"}, body: "bad request"},
			want: runcomfy.ErrInvalidInput, wantHTTP: 400, wantMessage: "Bad Request",
		},
		{
			name: "JSON array 404 body", a: answer{status: 404, body: `[{"error_code":404001}]`},
			want: runcomfy.ErrNotFound, wantHTTP: 404, wantMessage: "Not Found",
		},
		{
			name: "HTTP 200 with non-JSON body", a: answer{header: map[string]string{"Content-Type": "text/html"}, body: "<html>maintenance</html>"},
			want: runcomfy.ErrUnavailable, wantHTTP: 200,
		},
		{
			name: "HTTP 200 with empty body", a: answer{},
			want: runcomfy.ErrUnavailable, wantHTTP: 200,
		},
		{
			name: "unexpected 409 without code", a: answer{status: 409},
			want: runcomfy.ErrUnavailable, wantHTTP: 409, wantMessage: "Conflict",
		},
	}
	for _, tt := range tests {
		for _, op := range allOps {
			t.Run(tt.name+"/"+op, func(t *testing.T) {
				u := newUpstream(t, always(tt.a))
				c := newClient(t, u.URL, noRetries)
				err := call(context.Background(), c, op)
				if tt.want == nil {
					if err != nil {
						t.Fatalf("%s error = %v, want success", op, err)
					}
					return
				}
				if got, want := matching(err), []string{sentinelName(tt.want)}; len(got) != 1 || got[0] != want[0] {
					t.Fatalf("%s error = %v matches %q, want exactly %q", op, err, got, want)
				}
				var ae *runcomfy.APIError
				if !errors.As(err, &ae) {
					t.Fatalf("%s error = %v (%T), want *APIError", op, err, err)
				}
				if got, want := ae.Op, op; got != want {
					t.Errorf("Op = %q, want %q", got, want)
				}
				if got, want := ae.HTTPStatus, tt.wantHTTP; got != want {
					t.Errorf("HTTPStatus = %d, want %d", got, want)
				}
				if got, want := ae.Code, tt.wantCode; got != want {
					t.Errorf("Code = %d, want %d", got, want)
				}
				if tt.wantMessage != "" {
					if got, want := ae.Message, tt.wantMessage; got != want {
						t.Errorf("Message = %q, want %q", got, want)
					}
				}
				if got, want := string(ae.Detail), tt.wantDetail; got != want {
					t.Errorf("Detail = %s, want %s", got, want)
				}
				if tt.retryAfterUpTo {
					if got := ae.RetryAfter; got <= tt.wantRetryAfter-5*time.Second || got > tt.wantRetryAfter {
						t.Errorf("RetryAfter = %v, want in (%v, %v]", got, tt.wantRetryAfter-5*time.Second, tt.wantRetryAfter)
					}
				} else if got, want := ae.RetryAfter, tt.wantRetryAfter; got != want {
					t.Errorf("RetryAfter = %v, want %v", got, want)
				}
				if ae.Err != nil {
					t.Errorf("Err = %v, want nil for an answered call", ae.Err)
				}
				if s := err.Error(); !strings.Contains(s, op) {
					t.Errorf("Error() = %q, want it to name the operation %q", s, op)
				}
				if s := err.Error(); strings.Contains(s, testToken) {
					t.Errorf("Error() = %q carries the token", s)
				}
			})
		}
	}
}

func sentinelName(target error) string {
	for name, s := range sentinels {
		if s == target {
			return name
		}
	}
	return target.Error()
}

// TestAPIErrorIs pins the classification table itself, without a server: the
// error_code wins over the HTTP status, and each error matches one sentinel.
func TestAPIErrorIs(t *testing.T) {
	tests := []struct {
		name string
		err  *runcomfy.APIError
		want error
	}{
		{"422001", &runcomfy.APIError{HTTPStatus: 422, Code: runcomfy.CodeValidation}, runcomfy.ErrInvalidInput},
		{"404001", &runcomfy.APIError{HTTPStatus: 404, Code: runcomfy.CodeNotFound}, runcomfy.ErrNotFound},
		{"403003", &runcomfy.APIError{HTTPStatus: 403, Code: runcomfy.CodeForbidden}, runcomfy.ErrNotFound},
		{"401001", &runcomfy.APIError{HTTPStatus: 401, Code: runcomfy.CodeUnauthorized}, runcomfy.ErrUnauthorized},
		{"10001", &runcomfy.APIError{HTTPStatus: 200, Code: runcomfy.CodeInsufficientFunds}, runcomfy.ErrInsufficientFunds},
		{"10002", &runcomfy.APIError{HTTPStatus: 200, Code: runcomfy.CodeDisabled}, runcomfy.ErrDeploymentDisabled},
		{"10003", &runcomfy.APIError{HTTPStatus: 200, Code: runcomfy.CodeDeleted}, runcomfy.ErrDeploymentDeleted},
		{"500001 with HTTP 400", &runcomfy.APIError{HTTPStatus: 400, Code: runcomfy.CodeInternal}, runcomfy.ErrUnavailable},
		{"unknown code, HTTP 422", &runcomfy.APIError{HTTPStatus: 422, Code: 999999}, runcomfy.ErrInvalidInput},
		{"HTTP 400", &runcomfy.APIError{HTTPStatus: 400}, runcomfy.ErrInvalidInput},
		{"HTTP 401", &runcomfy.APIError{HTTPStatus: 401}, runcomfy.ErrUnauthorized},
		{"HTTP 402", &runcomfy.APIError{HTTPStatus: 402}, runcomfy.ErrInsufficientFunds},
		{"HTTP 403", &runcomfy.APIError{HTTPStatus: 403}, runcomfy.ErrNotFound},
		{"HTTP 404", &runcomfy.APIError{HTTPStatus: 404}, runcomfy.ErrNotFound},
		{"HTTP 429", &runcomfy.APIError{HTTPStatus: 429}, runcomfy.ErrRateLimited},
		{"HTTP 503", &runcomfy.APIError{HTTPStatus: 503}, runcomfy.ErrUnavailable},
		{"transport", &runcomfy.APIError{Err: errors.New("connection refused")}, runcomfy.ErrUnavailable},
		{"transport with a status", &runcomfy.APIError{HTTPStatus: 404, Code: runcomfy.CodeNotFound, Err: errors.New("reading answer: unexpected EOF")}, runcomfy.ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, want := matching(tt.err), sentinelName(tt.want); len(got) != 1 || got[0] != want {
				t.Errorf("%v matches %q, want exactly %q", tt.err, got, want)
			}
		})
	}
}

func TestAPIErrorUnwrap(t *testing.T) {
	cause := errors.New("boom")
	err := error(&runcomfy.APIError{Op: "status", Err: cause})
	if !errors.Is(err, cause) {
		t.Errorf("errors.Is(%v, cause) = false, want true", err)
	}
	if got := (&runcomfy.APIError{Op: "status", HTTPStatus: 404}).Unwrap(); got != nil {
		t.Errorf("Unwrap() = %v, want nil", got)
	}
}

// TestTransportFailure: with nothing listening, every call fails as ErrUnavailable,
// carries the transport error, and says nothing of the token or the webhook URL
// (which holds the gateway's callback secret).
func TestTransportFailure(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	base := srv.URL
	srv.Close()
	const hookSecret = "hook-secret-0d1e2f"
	for _, op := range allOps {
		t.Run(op, func(t *testing.T) {
			c := newClient(t, base, func(c *runcomfy.Config) { c.MaxRetries = 1 })
			var err error
			if op == "submit" {
				_, err = c.Submit(context.Background(), "dep-1", json.RawMessage(`{}`), runcomfy.SubmitOptions{
					WebhookURL: "https://gw.example/cb/" + hookSecret, IntermediateStatus: true,
				})
			} else {
				err = call(context.Background(), c, op)
			}
			if got, want := matching(err), "ErrUnavailable"; len(got) != 1 || got[0] != want {
				t.Fatalf("%s error = %v matches %q, want exactly %q", op, err, got, want)
			}
			var ae *runcomfy.APIError
			if !errors.As(err, &ae) {
				t.Fatalf("%s error = %v (%T), want *APIError", op, err, err)
			}
			if ae.Err == nil || ae.HTTPStatus != 0 {
				t.Errorf("Err = %v, HTTPStatus = %d, want a transport error and no status", ae.Err, ae.HTTPStatus)
			}
			for _, secret := range []string{testToken, hookSecret, "Bearer"} {
				if s := err.Error(); strings.Contains(s, secret) {
					t.Errorf("Error() = %q carries %q", s, secret)
				}
			}
		})
	}
}

// TestTokenNeverInErrors: not even an upstream that echoes the request back (a
// misconfigured proxy, a debug error page) can put the token into an error string.
func TestTokenNeverInErrors(t *testing.T) {
	echo := func(status int) func(http.ResponseWriter, *http.Request) {
		return func(w http.ResponseWriter, r *http.Request) {
			b, _ := json.Marshal(map[string]any{
				"error_code":    401001,
				"error_message": "bad credentials: " + r.Header.Get("Authorization"),
				"message":       r.Header.Get("Authorization"),
				"detail":        []string{r.Header.Get("Authorization")},
			})
			w.WriteHeader(status)
			_, _ = w.Write(b)
		}
	}
	for _, status := range []int{200, 401, 500} {
		for _, op := range allOps {
			t.Run(http.StatusText(status)+"/"+op, func(t *testing.T) {
				srv := httptest.NewServer(http.HandlerFunc(echo(status)))
				t.Cleanup(srv.Close)
				c := newClient(t, srv.URL, noRetries)
				err := call(context.Background(), c, op)
				if err == nil {
					t.Fatalf("%s succeeded, want an error", op)
				}
				if s := err.Error(); strings.Contains(s, testToken) {
					t.Errorf("Error() = %q carries the token", s)
				}
			})
		}
	}
}
