package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"golang.org/x/sync/semaphore"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The HTTP listener's guards. Everything here runs before a request body is
// read or handed to grpc-gateway, so that a caller without a key, or one that
// sends more or slower than the gateway accepts, costs almost nothing: its body
// is never read, and the answer names the reason.

// inflightRetryAfter is the Retry-After of a 503 for bodies in flight: they
// are answered within a submit's time, and usually far sooner.
const inflightRetryAfter = "1"

// bodyGuard authenticates REST calls and bounds their bodies before the
// gateway reads them.
type bodyGuard struct {
	log      *slog.Logger
	metrics  *Metrics
	auth     Authenticator // nil: every caller is the one local tenant
	maxBody  int64
	inflight *semaphore.Weighted
}

func newBodyGuard(log *slog.Logger, m *Metrics, a Authenticator, maxBody, maxInflight int64) *bodyGuard {
	return &bodyGuard{log: log, metrics: m, auth: a, maxBody: maxBody, inflight: semaphore.NewWeighted(maxInflight)}
}

// wrap returns h behind the guard: the API key is checked (the same store and
// constant-time compare as the gRPC interceptor, which checks it again), the
// Idempotency-Key header validated, then the body's size is reserved from the
// bytes in flight and bounded by maxBody. Each refusal answers without
// reading the body.
func (g *bodyGuard) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if g.auth != nil && !g.authenticated(r.Header) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="comfygate"`)
			g.refuse(w, r, status.New(codes.Unauthenticated, errUnauthenticated.Error()))
			return
		}
		if err := validIdempotencyHeader(r.Header); err != nil {
			g.refuseKeyed(w, r, status.Convert(toStatus(r.Context(), g.log, "", err)))
			return
		}
		r = r.WithContext(context.WithValue(r.Context(), responseHeaderKey{}, w.Header()))
		if !hasBody(r) {
			h.ServeHTTP(w, r)
			return
		}
		if r.ContentLength > g.maxBody {
			g.refuseKeyed(w, r, status.Newf(codes.InvalidArgument, "request body is larger than %d bytes", g.maxBody))
			return
		}
		// A body of unknown length (chunked) may grow to the limit: reserve
		// that much, so the bound holds whatever the client sends.
		n := r.ContentLength
		if n < 0 {
			n = g.maxBody
		}
		if !g.inflight.TryAcquire(n) {
			g.metrics.refused(limitInflight)
			w.Header().Set("Retry-After", inflightRetryAfter)
			g.refuseKeyed(w, r, status.New(codes.Unavailable, "too many request bytes in flight on this replica; retry shortly"))
			return
		}
		defer g.inflight.Release(n)
		r.Body = &sizedBody{ReadCloser: http.MaxBytesReader(w, r.Body, g.maxBody), size: max(r.ContentLength, 0)}
		h.ServeHTTP(w, r)
	})
}

// refuseKeyed refuses the call of an authenticated caller, then reads (never
// keeps) what it sends, so that it reads this answer rather than a reset
// connection. The read deadline bounds the time, drainLimit the bytes; a
// caller without a key gets no such courtesy (refuse).
func (g *bodyGuard) refuseKeyed(w http.ResponseWriter, r *http.Request, st *status.Status) {
	g.refuse(w, r, st)
	if hasBody(r) {
		n := r.ContentLength
		if n < 0 || n > drainLimit(g.maxBody) {
			n = drainLimit(g.maxBody)
		}
		_, _ = io.CopyN(io.Discard, r.Body, n)
	}
}

// drainLimit is the most of an over-size body read (and dropped) so that its
// sender sees the refusal; past it the connection is simply closed.
func drainLimit(maxBody int64) int64 { return 2 * maxBody }

// refuse answers a call the guard refuses, with the status and body REST
// gives the same gRPC status, and logs it as the access log logs an RPC. The
// body is left unread; the connection is then closed, since reading the rest
// of the body to keep it alive would cost what the refusal saves.
func (g *bodyGuard) refuse(w http.ResponseWriter, r *http.Request, st *status.Status) {
	refuseUnread(w, r, st)
	path := r.URL.Path
	if len(path) > maxLoggedPath {
		path = path[:maxLoggedPath] + "…"
	}
	g.log.LogAttrs(r.Context(), slog.LevelInfo, "rpc",
		slog.String("method", "HTTP "+r.Method+" "+path), slog.String("tenant", ""),
		slog.String("code", st.Code().String()), slog.Duration("duration", 0))
}

// maxLoggedPath bounds the path a refusal's log line repeats: it is the
// caller's text.
const maxLoggedPath = 256

// sizedBody is a request body of known size (0: unknown), so that a reader
// can make room for all of it at once (readBody in gateway.go).
type sizedBody struct {
	io.ReadCloser
	size int64
}

// authenticated reports whether the request carries a known API key, read as
// the gRPC interceptor reads it (authenticate in auth.go).
func (g *bodyGuard) authenticated(h http.Header) bool {
	for _, v := range h.Values("Authorization") {
		if g.validKey(v) {
			return true
		}
	}
	return false
}

// validKey reports whether an Authorization value is "Bearer KEY" with a
// known key (the same store and constant-time compare as authenticate).
func (g *bodyGuard) validKey(authorization string) bool {
	scheme, key, ok := strings.Cut(strings.TrimSpace(authorization), " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return false
	}
	_, ok = g.auth.Tenant(strings.TrimSpace(key))
	return ok
}

// validIdempotencyHeader refuses an Idempotency-Key the gateway could not
// honour: grpc-gateway would drop a value that gRPC metadata cannot carry,
// and the submit would then run again on every retry.
func validIdempotencyHeader(h http.Header) error {
	vals := h.Values("Idempotency-Key")
	switch {
	case len(vals) == 0:
		return nil
	case len(vals) > 1:
		return &fieldError{field: "Idempotency-Key", reason: "must be given once"}
	case vals[0] == "":
		return &fieldError{field: "Idempotency-Key", reason: "must not be empty"}
	}
	return checkIdempotencyKey("Idempotency-Key", vals[0])
}

func hasBody(r *http.Request) bool {
	return r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0
}

// refuseUnread answers a request whose body was not read. The connection is
// closed after the answer: reading the rest of an unread body to keep it
// alive would cost what the refusal saves.
func refuseUnread(w http.ResponseWriter, r *http.Request, st *status.Status) {
	if hasBody(r) {
		w.Header().Set("Connection", "close")
	}
	refuse(w, st)
}

// validPath refuses a path that is not UTF-8 (such as %FF) on every route:
// no id can hold it, and gRPC could not carry it. On an API route the answer
// names the id that is malformed, as the service's own checks do.
func validPath(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if utf8.ValidString(r.URL.Path) {
			h.ServeHTTP(w, r)
			return
		}
		err := error(&fieldError{field: "path", reason: "is not valid UTF-8"})
		// /v1/deployments/{deployment_id}/requests/{request_id}...
		parts := strings.SplitN(r.URL.Path, "/", 6)
		for _, id := range [...]struct {
			i     int
			field string
		}{{5, "request_id"}, {3, "deployment_id"}} {
			if len(parts) > id.i && parts[1] == "v1" && !utf8.ValidString(parts[id.i]) {
				err = &fieldError{field: id.field, reason: "may contain only letters, digits, '-' and '_'"}
			}
		}
		refuseUnread(w, r, status.Convert(toStatus(r.Context(), nil, "", err)))
	})
}

// readDeadline bounds the time a client may take to send a request body: the
// connection's read deadline is set when the handler starts and cleared once
// the body has been read (or the handler ends), so that a slow handler, or a
// stream, is not cut by it. A client that stalls mid-body gets a read error,
// and its connection is closed. Requests without a body (watch streams, SSE)
// are not touched. http.Server.ReadTimeout cannot do this: it stays set after
// the body, and cancels a handler that outlives it.
func readDeadline(h http.Handler, d time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !hasBody(r) {
			h.ServeHTTP(w, r)
			return
		}
		rc := http.NewResponseController(w)
		if err := rc.SetReadDeadline(time.Now().Add(d)); err != nil {
			// Only a connection that cannot take deadlines (none of ours).
			h.ServeHTTP(w, r)
			return
		}
		// The deadline stays when the handler ends before the body's end (a
		// refusal): the server's discard of the rest is then bounded too.
		r.Body = &deadlineBody{ReadCloser: r.Body, rc: rc}
		h.ServeHTTP(w, r)
	})
}

// deadlineBody clears the read deadline once the body has been read to its
// end; a read that fails on the deadline reports it as such.
type deadlineBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	once sync.Once
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	switch {
	case errors.Is(err, io.EOF):
		b.clear()
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		err = fmt.Errorf("request body not received within the read timeout: %w", errBodyTimeout)
	}
	return n, err
}

// clear removes the read deadline, once: after it the connection's reads are
// the server's own (the next request, or the background read of a stream).
func (b *deadlineBody) clear() {
	b.once.Do(func() { _ = b.rc.SetReadDeadline(time.Time{}) })
}

// errBodyTimeout: the client did not send its body within the read timeout.
var errBodyTimeout = errors.New("read timeout")

func isTimeout(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne) && ne.Timeout()
}

// retryAfterSeconds formats a delay for a Retry-After header: whole seconds,
// at least 1.
func retryAfterSeconds(d time.Duration) string {
	return strconv.FormatInt(max(1, int64((d+time.Second-1)/time.Second)), 10)
}
