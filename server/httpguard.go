package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

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
	inflight *inflightBudget
	// originAllowed reports whether a cross-origin caller may write (the
	// origins of --cors-origins); nil allows none.
	originAllowed func(*http.Request) bool
	// hold, when set, is the most of a body the route holds at once (it
	// streams the body on): what it reserves of the bytes in flight. Its
	// refusals read nothing of the body: a body the size of a file is not
	// worth reading for courtesy.
	hold int64
	// what and shownLimit name the body and its limit in the refusal of an
	// over-size one ("" and 0: the request body, maxBody).
	what       string
	shownLimit int64
}

func newBodyGuard(log *slog.Logger, m *Metrics, a Authenticator, maxBody int64, inflight *inflightBudget, originAllowed func(*http.Request) bool) *bodyGuard {
	return &bodyGuard{log: log, metrics: m, auth: a, maxBody: maxBody, inflight: inflight, originAllowed: originAllowed}
}

// streaming is g for a route that holds at most hold bytes of a body at
// once, with bodies up to maxBody, refused over it as a what larger than
// shownLimit.
func (g *bodyGuard) streaming(maxBody, hold int64, what string, shownLimit int64) *bodyGuard {
	c := *g
	c.maxBody, c.hold, c.what, c.shownLimit = maxBody, hold, what, shownLimit
	return &c
}

// tooLarge is the refusal of a body over the limit.
func (g *bodyGuard) tooLarge() error {
	return &bodyTooLargeError{limit: cmp.Or(g.shownLimit, g.maxBody), what: g.what}
}

// wrap returns h behind the guard: the API key is checked (the same store and
// constant-time compare as the gRPC interceptor, which checks it again), the
// Idempotency-Key header validated, then the body's size is reserved from the
// bytes in flight and bounded by maxBody. Each refusal answers without
// reading the body.
func (g *bodyGuard) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := g.checkOrigin(r); err != nil {
			g.refuse(w, r, status.Convert(toStatus(r.Context(), g.log, "", err)))
			return
		}
		tenant, ok := g.tenant(r.Header)
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="comfygate"`)
			g.refuse(w, r, status.Convert(toStatus(r.Context(), g.log, "", errUnauthenticated)))
			return
		}
		if err := errors.Join(validIdempotencyHeader(r.Header), validWebhookHeaders(r.Header)); err != nil {
			g.refuseKeyed(w, r, status.Convert(toStatus(r.Context(), g.log, "", err)))
			return
		}
		r = r.WithContext(context.WithValue(r.Context(), responseHeaderKey{}, w.Header()))
		if !hasBody(r) {
			h.ServeHTTP(w, r)
			return
		}
		if r.ContentLength > g.maxBody {
			g.refuseKeyed(w, r, status.Convert(toStatus(r.Context(), g.log, "", g.tooLarge())))
			return
		}
		if !readsBody(r) {
			// A route that takes no body still bounds one sent in chunks:
			// it is read (never kept) up to the limit, and over it refused.
			if n, _ := io.CopyN(io.Discard, r.Body, g.maxBody+1); n > g.maxBody {
				g.refuseKeyed(w, r, status.Convert(toStatus(r.Context(), g.log, "", g.tooLarge())))
				return
			}
			r.Body = http.NoBody
			h.ServeHTTP(w, r)
			return
		}
		// A body of unknown length (chunked) may grow to the limit: reserve
		// that much, so the bound holds whatever the client sends.
		n := r.ContentLength
		if n < 0 {
			n = g.maxBody
		}
		if g.hold > 0 {
			n = min(n, g.hold)
		}
		if !g.inflight.acquire(tenant, n) {
			g.metrics.refused(limitInflight)
			w.Header().Set("Retry-After", inflightRetryAfter)
			g.refuseKeyed(w, r, status.Convert(toStatus(r.Context(), g.log, "", errInflightFull)))
			return
		}
		defer g.inflight.release(tenant, n)
		r.Body = &sizedBody{ReadCloser: http.MaxBytesReader(w, r.Body, g.maxBody), size: max(r.ContentLength, 0)}
		h.ServeHTTP(w, r)
	})
}

// checkOrigin refuses a write (any method but GET, HEAD and OPTIONS) sent by
// a browser page that --cors-origins does not allow: the gateway serves no
// page of its own, so every Origin is another site's. A browser
// sends a "simple" cross-origin POST (a form, or text/plain) without asking
// first, and with whatever credentials are ambient; a gateway without API
// keys on a developer's machine would otherwise submit and cancel jobs for
// any web page its user opens. Callers that are not browsers send no Origin.
func (g *bodyGuard) checkOrigin(r *http.Request) error {
	origin := r.Header.Get("Origin")
	if origin == "" || r.Method == http.MethodGet || r.Method == http.MethodHead || r.Method == http.MethodOptions {
		return nil
	}
	if g.originAllowed != nil && g.originAllowed(r) {
		return nil
	}
	return &crossOriginError{origin: origin}
}

// localHosts, when on, refuses a request whose Host is neither a loopback
// name nor an IP address (403), callbacks excepted. A page whose DNS name an
// attacker rebinds to 127.0.0.1 reaches a gateway on loopback as its own
// origin, with its own name as Host; a name that is not local is how it
// shows.
func localHosts(on bool, next http.Handler) http.Handler {
	if !on {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// RunComfy's callbacks carry their own proof (the URL's token) and
		// come by the public URL's name, through a tunnel on a developer's
		// machine.
		if localHost(r.Host) || strings.HasPrefix(r.URL.Path, "/webhooks/") {
			next.ServeHTTP(w, r)
			return
		}
		host := r.Host
		if len(host) > 200 {
			host = host[:200] + "…"
		}
		refuseUnread(w, r, status.New(codes.PermissionDenied, fmt.Sprintf(
			"Host %q is not this gateway's: without API keys it answers only to localhost and IP addresses (give it --api-keys-file to serve other names)", host)))
	})
}

// localHost reports whether a Host header names this machine by a loopback
// name or names an IP address (which no DNS answer can rebind).
func localHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	if host == "" || host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	_, err := netip.ParseAddr(host)
	return err == nil
}

// crossOriginError: a browser on another origin sent a write.
type crossOriginError struct{ origin string }

func (e *crossOriginError) Error() string {
	o := e.origin
	if len(o) > 200 {
		o = o[:200] + "…"
	}
	return fmt.Sprintf("cross-origin request from %q refused: the gateway's operator allows browser origins with --cors-origins", o)
}

// readsBody reports whether the API route a request is for reads its body:
// only Submit and Upload do.
func readsBody(r *http.Request) bool {
	return r.Method == http.MethodPost && (r.URL.Path == uploadsPath ||
		strings.HasPrefix(r.URL.Path, "/v1/deployments/") && strings.HasSuffix(r.URL.Path, "/requests") && allows(allowedMethods(r.URL.Path), http.MethodPost))
}

// refuseKeyed refuses the call of an authenticated caller, then reads (never
// keeps) what it sends, so that it reads this answer rather than a reset
// connection. The answer goes out first: the caller has it at once, however
// slowly it sends the rest. The read deadline bounds the time, drainLimit
// the bytes, and a body declared larger than that is not read at all (its
// connection is closed anyway); a caller without a key gets no such
// courtesy (refuse).
func (g *bodyGuard) refuseKeyed(w http.ResponseWriter, r *http.Request, st *status.Status) {
	g.refuse(w, r, st)
	if !hasBody(r) || g.hold != 0 || r.ContentLength > drainLimit(g.maxBody) {
		return
	}
	_ = http.NewResponseController(w).Flush()
	n := r.ContentLength
	if n < 0 {
		n = drainLimit(g.maxBody)
	}
	_, _ = io.CopyN(io.Discard, r.Body, n)
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

// bodyTooLargeError: a request body is over --max-body-bytes.
type bodyTooLargeError struct {
	limit int64
	what  string // what is too large; "" is the request body
}

func (e *bodyTooLargeError) Error() string {
	return fmt.Sprintf("%s is larger than %d bytes", cmp.Or(e.what, "request body"), e.limit)
}

// sizedBody is a request body of known size (0: unknown), so that a reader
// can make room for all of it at once (readBody in gateway.go). It remembers
// a read past the limit, for the error handler to answer 413.
type sizedBody struct {
	io.ReadCloser
	size     int64
	overflow *http.MaxBytesError
}

// Read reads from the limited body, noting an overflow.
func (b *sizedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if tooBig := (*http.MaxBytesError)(nil); err != nil && errors.As(err, &tooBig) {
		b.overflow = tooBig
	}
	return n, err
}

// tenant is the tenant of the request's API key, read as the gRPC
// interceptor reads it (authenticate in auth.go): one Authorization header,
// "Bearer KEY". Without keys every caller is the local user, "".
func (g *bodyGuard) tenant(h http.Header) (string, bool) {
	if g.auth == nil {
		return "", true
	}
	return bearerTenant(g.auth, h.Values("Authorization"))
}

// validIdempotencyHeader refuses an Idempotency-Key the gateway could not
// honour: grpc-gateway would drop a value that gRPC metadata cannot carry,
// and the submit would then run again on every retry.
func validIdempotencyHeader(h http.Header) error {
	if len(h.Values("Grpc-Metadata-Idempotency-Key")) > 0 {
		// grpc-gateway's alias of the header, which the gateway does not
		// forward: refused rather than ignored.
		return &fieldError{field: "Grpc-Metadata-Idempotency-Key", reason: "is not read: send Idempotency-Key"}
	}
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

// validWebhookHeaders refuses a Comfygate-Webhook, Comfygate-Webhook-Events
// or deadline header value grpc-gateway would drop (not printable ASCII): the
// submit would go on without the webhook or the deadline its caller named.
func validWebhookHeaders(h http.Header) error {
	for _, hd := range []struct{ name, hint string }{
		{"Comfygate-Webhook", " (percent-encode the URL)"},
		{"Comfygate-Webhook-Events", ""},
		{"Comfygate-Max-Queue-Duration", ` ("90s", "10m")`},
		{"Comfygate-Max-Run-Duration", ` ("90s", "10m")`},
	} {
		if len(h.Values("Grpc-Metadata-"+hd.name)) > 0 {
			return &fieldError{field: "Grpc-Metadata-" + hd.name, reason: "is not read: send " + hd.name}
		}
		for _, v := range h.Values(hd.name) {
			if !printableASCII(v) {
				return &fieldError{field: hd.name, reason: "may contain only printable ASCII" + hd.hint}
			}
		}
	}
	return nil
}

// hasBody reports whether a request has a body to read: a declared length,
// or chunks to come.
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
// no id can hold it, and gRPC could not carry it. It refuses too a path that
// is not clean (an empty, "." or ".." segment, as in /requests/../x), which
// http.ServeMux would answer with a redirect to another path: a client that
// follows it would call another route, or act on another request, than the
// one it named. On an API route the answer names the id that is malformed,
// as the service's own checks do.
func validPath(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		valid, clean := utf8.ValidString(p), isClean(p)
		if valid && clean {
			h.ServeHTTP(w, r)
			return
		}
		err := error(&fieldError{field: "path", reason: "is not valid UTF-8"})
		if !clean {
			err = &fieldError{field: "path", reason: "may not hold an empty, \".\" or \"..\" segment"}
		}
		// /v1/deployments/{deployment_id}/requests/{request_id}...
		parts := strings.Split(p, "/")
		for _, id := range [...]struct {
			i     int
			field string
		}{{5, "request_id"}, {3, "deployment_id"}} {
			if len(parts) <= id.i || parts[1] != "v1" {
				continue
			}
			switch seg := parts[id.i]; {
			case !utf8.ValidString(seg), seg == ".", seg == "..":
				err = &fieldError{field: id.field, reason: "may contain only letters, digits, '-' and '_'"}
			case seg == "" && len(parts) > id.i+1:
				err = &fieldError{field: id.field, reason: "is required"}
			}
		}
		refuseUnread(w, r, status.Convert(toStatus(r.Context(), slog.New(slog.DiscardHandler), "", err)))
	})
}

// isClean reports whether http.ServeMux takes p as it is: it redirects a
// path that path.Clean changes, but for a trailing slash, which it keeps.
func isClean(p string) bool {
	if p == "" || p[0] != '/' {
		return true // ServeMux answers these itself
	}
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c == p
}

// readDeadline bounds the time a client may take to send a request body.
// No deadline is set on the connection while the body comes in: a timer, if
// the body has not ended when it fires, cuts the read at once. A deadline set
// up front would outlive the body (net/http starts a background read the
// moment the body ends, which would fail on it and cancel a handler still at
// work), and http.Server.ReadTimeout has the same flaw. A client that stalls
// mid-body gets a read error, and its connection is closed. A handler that
// ends before the body does (a refusal) leaves the deadline set instead, so
// that the server's discard of the rest is bounded too. Requests without a
// body (watch streams, SSE) are not touched.
// An upload (uploadsPath) has the longer deadline upload.
func readDeadline(h http.Handler, d, upload time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !hasBody(r) {
			h.ServeHTTP(w, r)
			return
		}
		d := d
		if r.URL.Path == uploadsPath {
			d = upload
		}
		b := &deadlineBody{ReadCloser: r.Body, rc: http.NewResponseController(w), deadline: time.Now().Add(d)}
		b.timer = time.AfterFunc(d, b.expire)
		r.Body = b
		defer b.handlerDone()
		h.ServeHTTP(w, r)
	})
}

// deadlineBody is a request body read under readDeadline's timer.
type deadlineBody struct {
	io.ReadCloser
	rc       *http.ResponseController
	deadline time.Time
	timer    *time.Timer

	mu    sync.Mutex
	ended bool // the body was read to its end, or the handler is done
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	switch {
	case errors.Is(err, io.EOF):
		b.mu.Lock()
		b.ended = true
		b.timer.Stop()
		b.mu.Unlock()
	case isTimeout(err):
		err = fmt.Errorf("request body not received within the read timeout: %w", errBodyTimeout)
	}
	return n, err
}

// expire cuts the read of a body that has not ended in time.
func (b *deadlineBody) expire() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.ended {
		_ = b.rc.SetReadDeadline(time.Now())
	}
}

// handlerDone stops the timer; a body not read to its end keeps the
// deadline for the server's discard of the rest.
func (b *deadlineBody) handlerDone() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ended {
		return
	}
	b.ended = true
	b.timer.Stop()
	_ = b.rc.SetReadDeadline(b.deadline)
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
