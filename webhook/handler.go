package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
)

// MaxBodyBytes bounds a callback body. Callbacks carry URLs, not media: 1 MiB is
// generous, and the bound keeps an unauthenticated sender from costing memory.
const MaxBodyBytes = 1 << 20

// Applier records an update; *state.Tracker provides it.
type Applier interface {
	Apply(ctx context.Context, u state.Update) (*state.Record, state.Outcome, error)
}

// Rejection reasons, the labels of rejected callbacks in Stats.
const (
	ReasonMethod       = "method"
	ReasonUnauthorized = "unauthorized"
	ReasonMediaType    = "media_type"
	ReasonTooLarge     = "too_large"
	ReasonMalformed    = "malformed"
	ReasonStore        = "store"
	// ReasonForeignOwner: the callback's URL was issued to another tenant than
	// the one that owns the request.
	ReasonForeignOwner = "foreign_owner"
)

// Handler serves POST PathPrefix{deployment_id}/t/{tenant}/{token} and, for
// URLs without a tenant, POST PathPrefix{deployment_id}/{token}.
type Handler struct {
	signer  *Signer
	tracker Applier
	log     *slog.Logger

	tracer trace.Tracer
	// outcomes has a counter for every Apply outcome, so none can index past
	// it; a Foreign one is a refusal, counted in rejected.
	outcomes [state.Foreign + 1]atomic.Int64
	// rejected has one counter per reason, made by NewHandler; read-only map.
	rejected map[string]*atomic.Int64
	// answers is the body of the 200 answer for each outcome, encoded once:
	// encoding a map for every callback cost a twentieth of the handler.
	answers [state.Foreign + 1][]byte
}

// Reasons lists every reason a callback is refused for, as Stats counts
// them: the metrics export one series each.
func Reasons() []string {
	return []string{ReasonMethod, ReasonUnauthorized, ReasonMediaType, ReasonTooLarge, ReasonMalformed, ReasonStore, ReasonForeignOwner}
}

// NewHandler checks its dependencies and returns a Handler. With tp, every
// callback gets a server span (request id, deployment, outcome; never the
// URL, which holds the token); nil traces nothing.
func NewHandler(signer *Signer, tracker Applier, log *slog.Logger, tp trace.TracerProvider) (*Handler, error) {
	if signer == nil || tracker == nil || log == nil {
		return nil, errors.New("webhook: signer, tracker and logger are required")
	}
	if tp == nil {
		tp = noop.NewTracerProvider()
	}
	h := &Handler{signer: signer, tracker: tracker, log: log, rejected: map[string]*atomic.Int64{},
		tracer: tp.Tracer("github.com/comfygate/comfygate/webhook")}
	for _, r := range Reasons() {
		h.rejected[r] = new(atomic.Int64)
	}
	for o := range h.answers {
		b, err := json.Marshal(map[string]string{"outcome": state.Outcome(o).String()})
		if err != nil {
			return nil, fmt.Errorf("webhook: encode the answer for outcome %d: %w", o, err)
		}
		h.answers[o] = append(b, '\n')
	}
	return h, nil
}

// ServeHTTP authenticates, parses and applies one callback. It answers 2xx only
// once the update is stored and published (or known to need neither), so that
// RunComfy retries anything not safely recorded.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	ctx, span := h.tracer.Start(r.Context(), "callback", trace.WithSpanKind(trace.SpanKindServer))
	defer span.End()
	r = r.WithContext(ctx)
	// Authenticate before anything else: an unauthenticated caller learns nothing
	// and costs nothing beyond one MAC. The ids are checked on the escaped path,
	// so an escaped spelling of either is refused, not decoded.
	deploymentID, tenant, token, ok := parsePath(strings.TrimPrefix(r.URL.EscapedPath(), PathPrefix))
	if !ok || !runcomfy.ValidID(deploymentID) || (tenant != "" && !runcomfy.ValidID(tenant)) ||
		!h.signer.VerifyTenant(deploymentID, tenant, token) {
		h.rejectUnread(w, r, ReasonUnauthorized, http.StatusUnauthorized, "missing or invalid callback token")
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		h.rejectUnread(w, r, ReasonMethod, http.StatusMethodNotAllowed, "callbacks are POST")
		return
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		h.rejectUnread(w, r, ReasonMediaType, http.StatusUnsupportedMediaType, "callbacks are application/json")
		return
	}
	if r.ContentLength > MaxBodyBytes {
		// Declared too large: refused before a byte of it is read, however
		// much of it ever comes.
		h.rejectUnread(w, r, ReasonTooLarge, http.StatusRequestEntityTooLarge, "callback body exceeds 1 MiB")
		return
	}
	body, err := readBody(w, r)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			h.reject(w, r, ReasonTooLarge, http.StatusRequestEntityTooLarge, "callback body exceeds 1 MiB")
			return
		}
		h.reject(w, r, ReasonMalformed, http.StatusBadRequest, "reading callback body failed")
		return
	}
	cb, err := runcomfy.ParseCallback(body)
	if err != nil {
		h.reject(w, r, ReasonMalformed, http.StatusBadRequest, "callback body is not a JSON object: "+err.Error())
		return
	}
	if !runcomfy.ValidID(cb.RequestID) {
		h.reject(w, r, ReasonMalformed, http.StatusBadRequest, "callback has no valid request_id")
		return
	}
	if cb.DeploymentID != "" && cb.DeploymentID != deploymentID {
		// The URL is authenticated, the payload is not: trust the URL.
		h.log.WarnContext(r.Context(), "callback names another deployment than its URL",
			"request_id", cb.RequestID, "deployment_id", deploymentID, "payload_deployment_id", cb.DeploymentID)
	}

	u := state.UpdateFromResult(deploymentID, state.SourceCallback, &cb.ResultResponse)
	u.QueuePosition = cb.QueuePosition
	// The URL names the tenant the request was submitted for, authenticated:
	// a record lost from the store is created again with its owner, and one
	// that someone else owns is not touched (Foreign).
	u.Owner = tenant
	outcome := state.Unknown
	if cb.State != runcomfy.StateUnknown {
		var rec *state.Record
		if rec, outcome, err = h.tracker.Apply(r.Context(), u); err != nil {
			h.log.ErrorContext(r.Context(), "callback not recorded; asking RunComfy to retry",
				"request_id", cb.RequestID, "deployment_id", deploymentID, "error", err)
			h.reject(w, r, ReasonStore, http.StatusServiceUnavailable, "callback could not be recorded; retry later")
			return
		}
		if outcome == state.Foreign {
			// A genuine URL of one tenant naming another tenant's request: the
			// record was taken over (an attach while it was lost) or the id was
			// reused. Either way the request is not this URL's to change.
			owner := ""
			if rec != nil {
				owner = rec.Owner
			}
			h.log.WarnContext(r.Context(), "callback for a request another tenant owns",
				"request_id", cb.RequestID, "deployment_id", deploymentID, "tenant", tenant, "owner", owner)
			span.SetAttributes(attribute.String("comfygate.request_id", cb.RequestID),
				attribute.String("comfygate.deployment_id", deploymentID), attribute.String("comfygate.outcome", outcome.String()))
			h.reject(w, r, ReasonForeignOwner, http.StatusForbidden, "the request belongs to another tenant than this callback URL")
			return
		}
	}
	h.outcomes[outcome].Add(1)
	span.SetAttributes(attribute.String("comfygate.request_id", cb.RequestID),
		attribute.String("comfygate.deployment_id", deploymentID), attribute.String("comfygate.outcome", outcome.String()))
	h.log.InfoContext(r.Context(), "callback", "request_id", cb.RequestID, "deployment_id", deploymentID,
		"tenant", tenant, "status", cb.Status, "outcome", outcome.String(), "duration", time.Since(start))
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(h.answers[outcome])
}

// readBody reads a callback's body, at most MaxBodyBytes. A body whose
// length is declared and within the bound is read into a buffer of exactly
// that size, instead of one grown from 512 bytes by doubling.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	body := http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	if n := r.ContentLength; n > 0 && n <= MaxBodyBytes {
		b := make([]byte, n)
		if _, err := io.ReadFull(body, b); err != nil {
			return nil, err
		}
		return b, nil
	}
	return io.ReadAll(body)
}

func (h *Handler) reject(w http.ResponseWriter, r *http.Request, reason string, code int, msg string) {
	h.rejected[reason].Add(1)
	// The path holds the callback token: log the reason, never the URL.
	h.log.InfoContext(r.Context(), "callback refused", "reason", reason, "code", code)
	writeJSON(w, code, map[string]string{"error": msg})
}

// rejectUnread refuses a callback whose body was not read, and closes the
// connection after the answer: net/http would otherwise read (up to 256 KiB
// of) the body before answering, at the sender's pace.
func (h *Handler) rejectUnread(w http.ResponseWriter, r *http.Request, reason string, code int, msg string) {
	if r.ContentLength != 0 {
		w.Header().Set("Connection", "close")
	}
	h.reject(w, r, reason, code, msg)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// Stats counts callbacks by what became of them.
type Stats struct {
	// Outcomes counts accepted callbacks by state.Outcome name: applied,
	// duplicate, stale, unknown (a status the gateway does not know). A
	// callback Apply finds foreign is refused: Rejected counts it.
	Outcomes map[string]int64
	// Rejected counts refused callbacks by reason (the Reason constants).
	Rejected map[string]int64
}

// Stats returns the counters.
func (h *Handler) Stats() Stats {
	s := Stats{Outcomes: map[string]int64{}, Rejected: map[string]int64{}}
	// Outcomes up to Unknown are the accepted ones; Foreign is a refusal.
	for o := state.Applied; o <= state.Unknown; o++ {
		s.Outcomes[o.String()] = h.outcomes[o].Load()
	}
	for r, n := range h.rejected {
		s.Rejected[r] = n.Load()
	}
	return s
}
