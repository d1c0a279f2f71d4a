package runcomfy

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/comfygate/comfygate/internal/backoff"
)

// DefaultBaseURL is RunComfy's public API endpoint.
const DefaultBaseURL = "https://api.runcomfy.net"

// maxResponseBytes bounds what the client reads from one upstream answer. Results
// list URLs, not media, so a few MiB is generous; the bound keeps a misbehaving
// upstream from exhausting memory.
const maxResponseBytes = 8 << 20

// Config holds what a Client needs. Zero values take the documented defaults.
type Config struct {
	// BaseURL is the scheme and host of the API, default DefaultBaseURL.
	BaseURL string
	// APIVersion is "v1" (default) or "v2": both path families exist upstream.
	APIVersion string
	// Token is the bearer token. It is sent on every call and never logged or
	// included in errors.
	Token string
	// Timeout bounds one HTTP attempt, default 30s. The caller's context bounds the
	// whole call, retries included.
	Timeout time.Duration
	// MaxRetries is how many times status, result and cancel are retried after a
	// retryable failure, default 3. Negative disables retries. Submit is never retried.
	MaxRetries int
	// BackoffBase and BackoffMax shape the jittered exponential backoff between
	// retries, defaults 100ms and 2s.
	BackoffBase time.Duration
	BackoffMax  time.Duration
	// Transport overrides the tuned default transport (tests, proxies).
	Transport http.RoundTripper
	// Observe, when set, is told of every HTTP attempt: the call ("submit",
	// "status", "result", "cancel"), the HTTP status (0 when none came back) and
	// how long it took. For metrics.
	Observe func(op string, httpStatus int, d time.Duration)
	// Tracer, when set, gives every HTTP attempt a client span carrying the call
	// name and HTTP status only: URLs are left out, since a submit's query holds
	// the callback URL and its token.
	Tracer trace.TracerProvider
}

// Validate is New's check of cfg (token, base URL, API version), for a
// configuration to be refused before anything starts. An empty BaseURL or
// APIVersion takes its default.
func (cfg Config) Validate() error {
	var errs []error
	if cfg.Token == "" {
		errs = append(errs, errors.New("runcomfy: API token is required"))
	}
	if cfg.BaseURL != "" {
		base, err := url.Parse(strings.TrimRight(cfg.BaseURL, "/"))
		if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
			errs = append(errs, fmt.Errorf("runcomfy: base URL %q must be an absolute http(s) URL", cfg.BaseURL))
		}
	}
	switch cfg.APIVersion {
	case "", "v1", "v2":
	default:
		errs = append(errs, fmt.Errorf("runcomfy: API version %q must be v1 or v2", cfg.APIVersion))
	}
	return errors.Join(errs...)
}

// Client calls the RunComfy Serverless API. It is safe for concurrent use.
type Client struct {
	base       *url.URL
	version    string
	token      string
	http       *http.Client
	maxRetries int
	backoff    func(attempt int) time.Duration
	observe    func(op string, httpStatus int, d time.Duration)
	tracer     trace.Tracer
}

// New validates cfg and returns a Client. It refuses a missing token, because every
// upstream call would fail with 401 and the operator should learn that at start-up.
func New(cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.BaseURL = cmp.Or(cfg.BaseURL, DefaultBaseURL)
	cfg.APIVersion = cmp.Or(cfg.APIVersion, "v1")
	base, err := url.Parse(strings.TrimRight(cfg.BaseURL, "/"))
	if err != nil {
		return nil, fmt.Errorf("runcomfy: base URL: %w", err)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.MaxRetries == 0 {
		cfg.MaxRetries = 3
	}
	if cfg.MaxRetries < 0 {
		cfg.MaxRetries = 0
	}
	if cfg.BackoffBase <= 0 {
		cfg.BackoffBase = 100 * time.Millisecond
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = 2 * time.Second
	}
	if cfg.Transport == nil {
		cfg.Transport = NewTransport()
	}
	bb, bm := cfg.BackoffBase, cfg.BackoffMax
	return &Client{
		base:       base,
		version:    cfg.APIVersion,
		token:      cfg.Token,
		http:       &http.Client{Transport: cfg.Transport, Timeout: cfg.Timeout, CheckRedirect: noRedirect},
		maxRetries: cfg.MaxRetries,
		observe:    cfg.Observe,
		tracer:     tracerOf(cfg.Tracer),
		// Full jitter over a capped exponential: spreads retries of many
		// gateways so they do not hit upstream in lockstep.
		backoff: backoff.Exponential{Base: bb, Max: bm, Jitter: true}.Delay,
	}, nil
}

// tracerOf is tp's tracer for this package, or one that records nothing.
func tracerOf(tp trace.TracerProvider) trace.Tracer {
	if tp == nil {
		tp = noop.NewTracerProvider()
	}
	return tp.Tracer("github.com/comfygate/comfygate/runcomfy")
}

// NewTransport is the client's default transport, for callers that wrap it
// (tracing). It is tuned for many concurrent calls to one host: the default
// MaxIdleConnsPerHost of 2 would open and close connections under load.
func NewTransport() *http.Transport {
	return &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:   true,
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 128,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 5 * time.Second,
		// No ResponseHeaderTimeout: each call's own deadline (Config.Timeout,
		// --upstream-timeout) bounds the wait for an answer, and a shorter
		// one here would cut it short.
		ExpectContinueTimeout: time.Second,
	}
}

// noRedirect keeps the bearer token from following a redirect to another host, and
// surfaces redirects as errors since the API never sends them.
func noRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// Submit starts a job with input as the request body, byte for byte. It is never
// retried: a second attempt after an ambiguous failure could start a second paid job.
func (c *Client) Submit(ctx context.Context, deploymentID string, input json.RawMessage, opts SubmitOptions) (*SubmitResponse, error) {
	if err := checkIDs("submit", deploymentID); err != nil {
		return nil, err
	}
	q := url.Values{}
	if opts.WebhookURL != "" {
		q.Set("webhook", opts.WebhookURL)
		if opts.IntermediateStatus {
			q.Set("webhook_intermediate_status", "true")
		}
	}
	var w struct {
		RequestID string `json:"request_id"`
		StatusURL string `json:"status_url"`
		ResultURL string `json:"result_url"`
		CancelURL string `json:"cancel_url"`
	}
	if err := c.do(ctx, "submit", http.MethodPost, c.path(deploymentID, "inference"), q, input, false, &w); err != nil {
		return nil, err
	}
	if w.RequestID == "" {
		return nil, &APIError{Op: "submit", HTTPStatus: http.StatusOK, Message: "answer carries no request_id"}
	}
	if !ValidID(w.RequestID) {
		// An id the gateway's own rule refuses could never be read back (and
		// may be a path): the job is as unknown as with no id at all.
		return nil, &APIError{Op: "submit", HTTPStatus: http.StatusOK, Message: "answer carries a request_id that is not a valid id"}
	}
	return &SubmitResponse{RequestID: w.RequestID, StatusURL: w.StatusURL, ResultURL: w.ResultURL, CancelURL: w.CancelURL}, nil
}

// Status returns the current state of a request.
func (c *Client) Status(ctx context.Context, deploymentID, requestID string) (*StatusResponse, error) {
	if err := checkIDs("status", deploymentID, requestID); err != nil {
		return nil, err
	}
	var w struct {
		RequestID     string          `json:"request_id"`
		Status        string          `json:"status"`
		QueuePosition json.RawMessage `json:"queue_position"`
		InstanceID    string          `json:"instance_id"`
		StatusURL     string          `json:"status_url"`
		ResultURL     string          `json:"result_url"`
	}
	if err := c.do(ctx, "status", http.MethodGet, c.path(deploymentID, "requests", requestID, "status"), nil, nil, true, &w); err != nil {
		return nil, err
	}
	resp := &StatusResponse{
		RequestID:  w.RequestID,
		Status:     w.Status,
		State:      ParseState(w.Status),
		InstanceID: w.InstanceID,
		StatusURL:  w.StatusURL,
		ResultURL:  w.ResultURL,
	}
	if p, ok := parseInt(w.QueuePosition); ok {
		resp.QueuePosition = &p
	}
	if err := sameRequest("status", resp.RequestID, requestID); err != nil {
		return nil, err
	}
	resp.RequestID = requestID
	return resp, nil
}

// Result returns a request's outputs (or its error) once finished, and its status
// before that.
func (c *Client) Result(ctx context.Context, deploymentID, requestID string) (*ResultResponse, error) {
	if err := checkIDs("result", deploymentID, requestID); err != nil {
		return nil, err
	}
	var raw json.RawMessage
	if err := c.do(ctx, "result", http.MethodGet, c.path(deploymentID, "requests", requestID, "result"), nil, nil, true, &raw); err != nil {
		return nil, err
	}
	resp, err := ParseResult(raw)
	if err != nil {
		return nil, &APIError{Op: "result", HTTPStatus: http.StatusOK, Message: err.Error()}
	}
	if e := resp.Error; e != nil && c.token != "" {
		// A job's error is an error message like any other: one that echoes
		// the request must not carry the token into a record, a log or an
		// answer to a tenant.
		e.Type = strings.ReplaceAll(e.Type, c.token, "[redacted]")
		e.Message = strings.ReplaceAll(e.Message, c.token, "[redacted]")
		e.Code = strings.ReplaceAll(e.Code, c.token, "[redacted]")
	}
	if err := sameRequest("result", resp.RequestID, requestID); err != nil {
		return nil, err
	}
	resp.RequestID = requestID
	return resp, nil
}

// Cancel asks upstream to cancel a request. Cancelling is idempotent upstream, so
// the call is retried like a read.
func (c *Client) Cancel(ctx context.Context, deploymentID, requestID string) (*CancelResponse, error) {
	if err := checkIDs("cancel", deploymentID, requestID); err != nil {
		return nil, err
	}
	var w struct {
		RequestID string `json:"request_id"`
		Outcome   string `json:"outcome"`
		Status    string `json:"status"`
	}
	if err := c.do(ctx, "cancel", http.MethodPost, c.path(deploymentID, "requests", requestID, "cancel"), nil, nil, true, &w); err != nil {
		return nil, err
	}
	resp := &CancelResponse{RequestID: w.RequestID, Raw: w.Outcome}
	if resp.Raw == "" {
		resp.Raw = w.Status
	}
	// "outcome" is the current shape and wins when both are present.
	resp.Outcome = parseCancelOutcome(w.Outcome)
	if resp.Outcome == CancelUnknown {
		resp.Outcome = parseCancelOutcome(w.Status)
	}
	if err := sameRequest("cancel", resp.RequestID, requestID); err != nil {
		return nil, err
	}
	resp.RequestID = requestID
	return resp, nil
}

// sameRequest refuses an answer about a request that names another one:
// applied, it would move that other request (another tenant's, perhaps) or
// leave the asked one under a record of another id. An answer that names none
// is about the request asked for.
func sameRequest(op, named, asked string) error {
	if named == "" || named == asked {
		return nil
	}
	return &APIError{Op: op, HTTPStatus: http.StatusOK, Message: "answer is about another request than the one asked for"}
}

func parseCancelOutcome(s string) CancelOutcome {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "cancelled", "canceled":
		return CancelDone
	case "cancellation_requested", "cancelation_requested", "cancelling", "canceling":
		return CancelRequested
	case "not_cancellable", "not_cancelable":
		return CancelNotCancellable
	default:
		return CancelUnknown
	}
}

// checkIDs refuses the ids that escaping cannot make safe: an empty id or a dot
// segment ("." or "..") stays as it is under url.PathEscape, and any proxy that
// normalises paths would merge or resolve it, sending the call to another endpoint.
func checkIDs(op string, ids ...string) error {
	for _, id := range ids {
		if id == "" || id == "." || id == ".." {
			return fmt.Errorf("runcomfy %s: %w: id %q cannot be a path segment", op, ErrInvalidInput, id)
		}
	}
	return nil
}

// path builds an API path with each segment escaped, so an id can never add a path
// segment, a query or a fragment to the upstream URL.
func (c *Client) path(deploymentID string, rest ...string) string {
	var b strings.Builder
	b.WriteString("/prod/")
	b.WriteString(c.version)
	b.WriteString("/deployments/")
	b.WriteString(url.PathEscape(deploymentID))
	for _, s := range rest {
		b.WriteByte('/')
		b.WriteString(url.PathEscape(s))
	}
	return b.String()
}

// do performs one call, retrying when retry is set and the failure is retryable.
func (c *Client) do(ctx context.Context, op, method, path string, q url.Values, body []byte, retry bool, out any) error {
	u := *c.base
	// EscapedPath, not Path: when the base path holds an escaped character, a
	// RawPath that mixes decoded and escaped text is invalid and Go would re-escape
	// Path instead, turning an id's %2F back into a separator.
	u.RawPath = u.EscapedPath() + path
	u.Path += mustUnescape(path)
	u.RawQuery = q.Encode()
	target := u.String()

	attempts := 1
	if retry {
		attempts += c.maxRetries
	}
	var lastErr *APIError
	for attempt := 0; attempt < attempts; attempt++ {
		if attempt > 0 {
			wait := c.backoff(attempt - 1)
			if lastErr.RetryAfter > wait {
				wait = lastErr.RetryAfter
			}
			if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < wait {
				// The caller's time runs out before the next attempt could
				// start: its answer is the last failure (a 429 with its
				// Retry-After, say), not a deadline.
				return lastErr
			}
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return fmt.Errorf("runcomfy %s: giving up after %d attempts: %w", op, attempt, ctx.Err())
			case <-t.C:
			}
		}
		start := time.Now()
		sctx, span := c.tracer.Start(ctx, "runcomfy "+op, trace.WithSpanKind(trace.SpanKindClient),
			trace.WithAttributes(attribute.String("runcomfy.op", op), attribute.Int("runcomfy.attempt", attempt+1)))
		apiErr := c.once(sctx, op, method, target, body, out)
		if apiErr != nil {
			span.SetAttributes(attribute.Int("http.response.status_code", apiErr.HTTPStatus))
			span.SetStatus(codes.Error, "runcomfy "+op+" failed")
		}
		span.End()
		if c.observe != nil {
			code := http.StatusOK
			if apiErr != nil {
				code = apiErr.HTTPStatus
			}
			c.observe(op, code, time.Since(start))
		}
		if apiErr == nil {
			return nil
		}
		if ctx.Err() != nil {
			// The caller gave up: report that, not the transport symptom of it.
			return fmt.Errorf("runcomfy %s: %w", op, ctx.Err())
		}
		lastErr = apiErr
		if !retryable(apiErr) || apiErr.RetryAfter > maxRetryWait {
			break
		}
	}
	return lastErr
}

// retryable: network errors, 5xx and 429. Never 4xx answers, which would fail again.
func retryable(e *APIError) bool {
	if e.Err != nil {
		return true
	}
	if e.Code == CodeInternal || e.HTTPStatus == http.StatusTooManyRequests {
		return true
	}
	return e.Code == 0 && e.HTTPStatus >= 500
}

func (c *Client) once(ctx context.Context, op, method, target string, body []byte, out any) *APIError {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, rd)
	if err != nil {
		return &APIError{Op: op, Err: err}
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	if body != nil || method == http.MethodPost {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return &APIError{Op: op, Err: scrubURLError(err)}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		return &APIError{Op: op, HTTPStatus: resp.StatusCode, Err: fmt.Errorf("reading answer: %w", err)}
	}
	if len(data) > maxResponseBytes {
		return &APIError{Op: op, HTTPStatus: resp.StatusCode, Message: "answer exceeds size limit"}
	}
	if e := parseErrorBody(op, resp, data); e != nil {
		// An upstream (or a proxy) that echoes the request must not put the token
		// into an error that ends up in logs or in front of a tenant.
		e.Message = strings.ReplaceAll(e.Message, c.token, "[redacted]")
		e.Detail = bytes.ReplaceAll(e.Detail, []byte(c.token), []byte("[redacted]"))
		return e
	}
	if err := json.Unmarshal(data, out); err != nil {
		return &APIError{Op: op, HTTPStatus: resp.StatusCode, Message: "answer is not the expected JSON: " + jsonProblem(err)}
	}
	return nil
}

// jsonProblem says what is wrong with an answer in its own terms: a member
// of the wrong type by its JSON name and type, not by the Go type it was to
// fill.
func jsonProblem(err error) string {
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		if typeErr.Field == "" {
			return fmt.Sprintf("it is a JSON %s", typeErr.Value)
		}
		return fmt.Sprintf("%q is a JSON %s", typeErr.Field, typeErr.Value)
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

// parseErrorBody returns the error an answer describes, or nil for a success. Any
// non-null error_code is an error whatever the HTTP status.
func parseErrorBody(op string, resp *http.Response, data []byte) *APIError {
	var w struct {
		ErrorCode    json.RawMessage `json:"error_code"`
		ErrorMessage string          `json:"error_message"`
		Message      string          `json:"message"`
		Detail       json.RawMessage `json:"detail"`
	}
	// A body that is not an object (or not JSON) carries no error fields; the HTTP
	// status decides alone.
	_ = json.Unmarshal(data, &w)
	// Any non-null error_code is an error, even one that is not a number (Code
	// stays 0 then, and the HTTP status classifies it).
	code, _ := parseInt(w.ErrorCode)
	hasCode := !isNull(w.ErrorCode)
	if resp.StatusCode >= 200 && resp.StatusCode < 300 && !hasCode {
		return nil
	}
	e := &APIError{
		Op:         op,
		HTTPStatus: resp.StatusCode,
		Code:       code,
		Message:    w.ErrorMessage,
		Detail:     w.Detail,
		RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()),
	}
	if e.Message == "" {
		e.Message = w.Message
	}
	if e.Message == "" {
		// A success's status text ("OK") would contradict the error it
		// carries: its code says more.
		e.Message = http.StatusText(resp.StatusCode)
		if hasCode && resp.StatusCode >= 200 && resp.StatusCode < 300 {
			e.Message = fmt.Sprintf("error_code %d", code)
		}
	}
	if len(e.Detail) == 0 || string(e.Detail) == "null" {
		e.Detail = nil
	}
	return e
}

// maxRetryAfter caps what upstream can ask for: a day-long Retry-After is passed
// on to the caller as a hint, but never slept on.
const maxRetryAfter = time.Hour

// maxRetryWait is the longest Retry-After the client waits out itself; beyond it,
// the call returns the rate-limit error at once so its caller decides.
const maxRetryWait = 10 * time.Second

// parseRetryAfter accepts both forms HTTP allows: delay seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseFloat(v, 64); err == nil {
		if !(s > 0) { // also NaN
			return 0
		}
		return min(time.Duration(min(s, maxRetryAfter.Seconds())*float64(time.Second)), maxRetryAfter)
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := min(t.Sub(now), maxRetryAfter); d > 0 {
			return d
		}
	}
	return 0
}

// parseInt reads a JSON number or a numeric string; null and absent give false.
func parseInt(raw json.RawMessage) (int64, bool) {
	s := strings.TrimSpace(string(raw))
	if s == "" || s == "null" {
		return 0, false
	}
	s = strings.Trim(s, `"`)
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return n, true
	}
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		return int64(f), true
	}
	return 0, false
}

// scrubURLError drops the URL from a transport error: it is ours to know, and a
// proxy-in-URL setup could carry credentials.
func scrubURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s: %w", strings.ToLower(ue.Op), ue.Err)
	}
	return err
}

func mustUnescape(p string) string {
	s, err := url.PathUnescape(p)
	if err != nil {
		return p
	}
	return s
}
