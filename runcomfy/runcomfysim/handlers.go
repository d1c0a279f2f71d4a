package runcomfysim

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/comfygate/comfygate/runcomfy"
)

// answer is an HTTP answer computed under the lock and written after it is released.
type answer struct {
	status     int
	body       any    // JSON-encoded when raw is empty
	raw        string // served as HTML when non-empty
	retryAfter string
}

func (a answer) write(w http.ResponseWriter) {
	if a.retryAfter != "" {
		w.Header().Set("Retry-After", a.retryAfter)
	}
	if a.raw != "" {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(a.status)
		_, _ = io.WriteString(w, a.raw)
		return
	}
	b, err := json.Marshal(a.body)
	if err != nil {
		// Bodies are built from maps of plain values; a failure is a bug here.
		http.Error(w, `{"error_code":500001,"error_message":"runcomfysim: encode answer"}`, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(a.status)
	_, _ = w.Write(b)
}

// errorAnswer is RunComfy's error body: error_code (when non-zero), the message under
// error_message (or message), and detail when given.
func errorAnswer(status int, code int64, msg string, detail any, useMessageKey bool) answer {
	m := map[string]any{}
	if code != 0 {
		m["error_code"] = code
	}
	if useMessageKey {
		m["message"] = msg
	} else {
		m["error_message"] = msg
	}
	if detail != nil {
		m["detail"] = detail
	}
	return answer{status: status, body: m}
}

// validationAnswer is a 422001 with a FastAPI-style detail array.
func validationAnswer(loc []string, msg, typ string) answer {
	detail := []map[string]any{{"loc": loc, "msg": msg, "type": typ}}
	return errorAnswer(http.StatusUnprocessableEntity, runcomfy.CodeValidation, "Validation error", detail, false)
}

// closedAnswer is the answer to any call once Close was called.
func closedAnswer() answer {
	return errorAnswer(http.StatusServiceUnavailable, runcomfy.CodeInternal, "simulator closed", nil, false)
}

func notFoundAnswer(what string) answer {
	return errorAnswer(http.StatusNotFound, runcomfy.CodeNotFound, what+" not found", nil, false)
}

// deploymentAnswer is the error for a deployment that is not active. forSubmit is
// false for calls on existing requests, which disabled and unfunded deployments still
// answer.
func deploymentAnswer(st DeploymentState, forSubmit bool) (answer, bool) {
	switch st {
	case DeploymentUnknown:
		return notFoundAnswer("Deployment"), true
	case DeploymentDeleted:
		return errorAnswer(http.StatusNotFound, runcomfy.CodeDeleted, "Deployment has been deleted", nil, false), true
	case DeploymentDisabled:
		if forSubmit {
			return errorAnswer(http.StatusForbidden, runcomfy.CodeDisabled, "Deployment is disabled", nil, false), true
		}
	case DeploymentNoFunds:
		if forSubmit {
			return errorAnswer(http.StatusPaymentRequired, runcomfy.CodeInsufficientFunds,
				"Insufficient funds: deployment disabled by balance or plan", nil, false), true
		}
	}
	return answer{}, false
}

func (s *Sim) routes() *http.ServeMux {
	mux := http.NewServeMux()
	const req = "/prod/{version}/deployments/{deployment_id}/requests/{request_id}/"
	mux.HandleFunc("POST /prod/{version}/deployments/{deployment_id}/inference", s.api(EndpointSubmit, s.handleSubmit))
	mux.HandleFunc("GET "+req+"status", s.api(EndpointStatus, s.handleStatus))
	mux.HandleFunc("GET "+req+"result", s.api(EndpointResult, s.handleResult))
	mux.HandleFunc("POST "+req+"cancel", s.api(EndpointCancel, s.handleCancel))
	mux.HandleFunc("GET /media/{request_id}/{filename}", s.handleMedia)
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		notFoundAnswer("Route").write(w)
	})
	return mux
}

// api wraps an endpoint with what every call goes through, in this order: count,
// latency fault, closed check, version check, bearer check.
func (s *Sim) api(endpoint string, h func(http.ResponseWriter, *http.Request)) http.HandlerFunc {
	counter := s.calls[endpoint]
	return func(w http.ResponseWriter, r *http.Request) {
		counter.Add(1)
		if lat := s.currentFaults().Latency; lat > 0 && !s.sleep(r.Context(), lat) {
			if r.Context().Err() != nil {
				return // the caller gave up: nobody reads an answer
			}
		}
		if s.isClosed() {
			closedAnswer().write(w)
			return
		}
		if v := r.PathValue("version"); v != "v1" && v != "v2" {
			notFoundAnswer("API version").write(w)
			return
		}
		if !s.authorized(r) {
			errorAnswer(http.StatusUnauthorized, runcomfy.CodeUnauthorized, "Invalid or expired API token", nil, false).write(w)
			return
		}
		h(w, r)
	}
}

// parseFlag reads webhook_intermediate_status from the query ("true", "1"...).
func parseFlag(v string) bool {
	b, err := strconv.ParseBool(strings.TrimSpace(v))
	return err == nil && b
}

// legacyKeys are the webhook settings some clients still put in the body.
type legacyKeys struct {
	Overrides    json.RawMessage `json:"overrides"`
	Webhook      json.RawMessage `json:"webhook"`
	Intermediate json.RawMessage `json:"webhook_intermediate_status"`
}

func (s *Sim) handleSubmit(w http.ResponseWriter, r *http.Request) {
	body, readErr := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	q := r.URL.Query()
	rec := SubmitRecord{
		APIVersion:                r.PathValue("version"),
		DeploymentID:              r.PathValue("deployment_id"),
		Body:                      body,
		Query:                     q,
		Webhook:                   q.Get("webhook"),
		WebhookIntermediateStatus: parseFlag(q.Get("webhook_intermediate_status")),
		At:                        s.now(),
	}
	a, j := s.submit(r, &rec, readErr)
	rec.HTTPStatus = a.status
	if j != nil {
		rec.RequestID = j.id
	}
	s.record(rec)
	if j != nil && j.syncFirst {
		// The job was created with delivering set, so no goroutine raced us to its
		// first callbacks: deliver them now, before the answer.
		s.drain(j)
	}
	a.write(w)
}

// submit validates the call and creates the job; it returns the answer and the job
// (nil when refused).
func (s *Sim) submit(r *http.Request, rec *SubmitRecord, readErr error) (answer, *job) {
	if readErr != nil {
		var tooBig *http.MaxBytesError
		if errors.As(readErr, &tooBig) {
			return validationAnswer([]string{"body"}, "request body too large", "value_error"), nil
		}
		return validationAnswer([]string{"body"}, "request body could not be read", "value_error"), nil
	}
	if fe, ok := s.takeFault(EndpointSubmit); ok {
		return fe.answer(), nil
	}
	s.mu.Lock()
	st := s.deployments[rec.DeploymentID]
	s.mu.Unlock()
	if a, bad := deploymentAnswer(st, true); bad {
		return a, nil
	}

	trimmed := bytes.TrimLeft(rec.Body, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return validationAnswer([]string{"body"}, "Input should be a valid dictionary", "dict_type"), nil
	}
	var top legacyKeys
	if err := json.Unmarshal(rec.Body, &top); err != nil {
		return validationAnswer([]string{"body"}, "JSON decode error: "+err.Error(), "json_invalid"), nil
	}
	if o := bytes.TrimSpace(top.Overrides); len(o) > 0 && string(o) != "null" && o[0] != '{' {
		return validationAnswer([]string{"body", "overrides"}, "Input should be a valid dictionary", "dict_type"), nil
	}
	// Legacy body keys count only when the query does not set them.
	if rec.Webhook == "" && len(top.Webhook) > 0 {
		var u string
		if err := json.Unmarshal(top.Webhook, &u); err != nil {
			return validationAnswer([]string{"body", "webhook"}, "Input should be a valid string", "string_type"), nil
		}
		rec.Webhook = u
	}
	if !rec.Query.Has("webhook_intermediate_status") && len(top.Intermediate) > 0 {
		var b bool
		var str string
		switch {
		case json.Unmarshal(top.Intermediate, &b) == nil:
			rec.WebhookIntermediateStatus = b
		case json.Unmarshal(top.Intermediate, &str) == nil:
			rec.WebhookIntermediateStatus = parseFlag(str)
		}
	}
	if rec.Webhook != "" {
		u, err := url.Parse(rec.Webhook)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return validationAnswer([]string{"query", "webhook"}, "Input should be a valid URL", "url_parsing"), nil
		}
	}

	if s.opts.FetchInputs {
		inputs, refused := s.fetchInputs(r.Context(), rec.Body)
		rec.Inputs = inputs
		if refused != nil {
			return *refused, nil
		}
	}

	s.mu.Lock()
	fn := s.outcome
	s.mu.Unlock()
	var out Outcome
	if fn != nil {
		out = fn(rec.DeploymentID, rec.Body) // outside the lock: it is caller code
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	j := &job{
		id:           newUUID(),
		deployment:   rec.DeploymentID,
		version:      rec.APIVersion,
		base:         s.baseURL(r),
		state:        stateQueued,
		outcome:      out,
		createdAt:    s.now(),
		webhook:      rec.Webhook,
		intermediate: rec.WebhookIntermediateStatus,
		// With CallbackBeforeSubmitResponse the handler itself delivers the first
		// callbacks, so no delivery goroutine may start for them.
		syncFirst: rec.Webhook != "" && s.faults.CallbackBeforeSubmitResponse,
	}
	j.delivering = j.syncFirst
	s.queueSeq++
	j.queueSeq = s.queueSeq
	s.jobs[j.id] = j
	s.queues[j.deployment] = append(s.queues[j.deployment], j)
	s.log.Debug("runcomfysim: job submitted", "request_id", j.id, "deployment_id", j.deployment)
	s.afterSubmitLocked(j)
	return answer{status: http.StatusOK, body: map[string]any{
		"request_id": j.id,
		"status_url": j.url("status"),
		"result_url": j.url("result"),
		"cancel_url": j.url("cancel"),
	}}, j
}

// baseURL is Options.PublicURL, or the scheme and Host the request came in on.
func (s *Sim) baseURL(r *http.Request) string {
	if s.opts.PublicURL != "" {
		return s.opts.PublicURL
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

func (s *Sim) record(rec SubmitRecord) {
	if s.opts.SubmitHistory < 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.submits) >= s.opts.SubmitHistory {
		s.submits = slicesDropFront(s.submits, len(s.submits)-s.opts.SubmitHistory+1)
	}
	s.submits = append(s.submits, rec)
}

// slicesDropFront removes the first n records, copying so the dropped bodies can be
// collected.
func slicesDropFront(recs []SubmitRecord, n int) []SubmitRecord {
	kept := copy(recs, recs[n:])
	clear(recs[kept:])
	return recs[:kept]
}

// withJob answers a call on an existing request: fault, deployment state, ownership
// check, then render under the lock.
func (s *Sim) withJob(w http.ResponseWriter, r *http.Request, endpoint string, render func(*job) map[string]any) {
	if fe, ok := s.takeFault(endpoint); ok {
		fe.answer().write(w)
		return
	}
	dep, id := r.PathValue("deployment_id"), r.PathValue("request_id")
	s.mu.Lock()
	if a, bad := deploymentAnswer(s.deployments[dep], false); bad {
		s.mu.Unlock()
		a.write(w)
		return
	}
	j, ok := s.jobs[id]
	if !ok || j.deployment != dep {
		s.mu.Unlock()
		notFoundAnswer("Request").write(w)
		return
	}
	body := render(j)
	s.mu.Unlock()
	answer{status: http.StatusOK, body: body}.write(w)
}

func (s *Sim) handleStatus(w http.ResponseWriter, r *http.Request) {
	s.withJob(w, r, EndpointStatus, s.statusBodyLocked)
}

func (s *Sim) handleResult(w http.ResponseWriter, r *http.Request) {
	s.withJob(w, r, EndpointResult, s.resultBodyLocked)
}

// handleCancel answers in the shape chosen by Faults.CancelShape:
//
//	job state   outcome            status
//	in_queue    cancelled          cancellation_requested   (cancelled at once)
//	in_progress cancelled          cancellation_requested   (cancelled after CancelDelay)
//	terminal    not_cancellable    not_cancellable
func (s *Sim) handleCancel(w http.ResponseWriter, r *http.Request) {
	s.withJob(w, r, EndpointCancel, func(j *job) map[string]any {
		outcome, status := "not_cancellable", "not_cancellable"
		if s.requestCancelLocked(j) {
			outcome, status = "cancelled", "cancellation_requested"
		}
		m := map[string]any{"request_id": j.id}
		switch s.faults.CancelShape {
		case CancelShapeStatus:
			m["status"] = status
		case CancelShapeBoth:
			m["status"] = status
			m["outcome"] = outcome
		default:
			m["outcome"] = outcome
		}
		return m
	})
}

// handleMedia serves the output images named in /result, so a client can download
// what it was given. No bearer check: RunComfy's output storage URLs are public.
func (s *Sim) handleMedia(w http.ResponseWriter, r *http.Request) {
	s.calls[EndpointMedia].Add(1)
	id, name := r.PathValue("request_id"), r.PathValue("filename")
	s.mu.Lock()
	j, ok := s.jobs[id]
	found := false
	if ok && j.state == stateSucceeded {
		for i := range j.imageCount() {
			if j.imageName(i) == name {
				found = true
				break
			}
		}
	}
	s.mu.Unlock()
	if !found {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "image/png")
	w.Header().Set("Content-Length", strconv.Itoa(s.outputSize()))
	w.Header().Set("Cache-Control", "public, max-age=604800")
	if r.Method == http.MethodHead {
		return
	}
	_ = s.WriteOutput(w, id, name)
}
