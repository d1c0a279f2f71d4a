package server

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
)

// gRPC reads a call's message before any interceptor runs, so what must hold
// before a message is received is decided when its stream opens, from its
// headers alone, here: a call without a valid key is refused (when keys are
// configured); a keyless health check gets one of a few slots; a submit
// reserves its message's room in the bytes in flight that REST bodies also
// draw from. The interceptors (auth.go) still authenticate every call that
// passes, and put the caller in its context.

// Keyless health checks are bounded: their messages are a few bytes, but
// gRPC receives up to the message limit before anything can look at one.
const (
	// maxPublicStreams bounds the keyless Health streams open at once (Watch
	// streams last).
	maxPublicStreams = 64
	// maxPublicMessages bounds the keyless messages being received at once:
	// at most this many times --max-body-bytes.
	maxPublicMessages = 2
	// maxWaitingSubmits bounds the gRPC submits of one tenant waiting for
	// room in the bytes in flight; each holds up to submitStreamWindow of its
	// message meanwhile.
	maxWaitingSubmits = 256
	// submitStreamWindow is a stream's HTTP/2 receive window: what a client
	// may send before the gateway reads it. It is fixed (no BDP estimate),
	// so that a stream waiting for room holds at most that much.
	submitStreamWindow = 256 << 10
	// connWindow is a connection's receive window, beside it.
	connWindow = 16 << 20
	// publicReceiveTimeout bounds the time a keyless health message may take
	// to arrive, so that a slow sender cannot hold a slot.
	publicReceiveTimeout = 5 * time.Second
	// smallReceiveTimeout bounds the time any request message but a
	// submit's, a few bytes, may take to arrive once it has room.
	smallReceiveTimeout = 5 * time.Second
)

// gatewayHeader carries the REST gateway's mark on its own calls: their
// bodies were counted in the bytes in flight when they arrived over HTTP.
const gatewayHeader = "comfygate-gateway"

// errPublicBusy: too many keyless health calls at once.
var errPublicBusy = errors.New("too many unauthenticated health calls at once; retry shortly")

// errInflightFull: the bodies and messages held on this replica reached
// --max-inflight-body-bytes.
var errInflightFull = errors.New("too many request bytes in flight on this replica; retry shortly")

// streamGuard decides, when a gRPC stream opens, whether it may go on.
type streamGuard struct {
	log      *slog.Logger
	metrics  *Metrics
	auth     Authenticator // nil: no keys, every caller is the local user
	inflight *inflightBudget
	maxMsg   int64
	// gateway tells the REST gateway's own calls (its mark), whose bodies
	// were counted when they arrived over HTTP.
	gateway *handoff
	// readTimeout bounds the time a submit's message may take to arrive.
	readTimeout time.Duration

	publicStreams  *semaphore.Weighted
	publicMessages *semaphore.Weighted

	mu      sync.Mutex
	waiting map[string]int // submits waiting for room, by tenant; absent is 0
}

// reservation is what a stream holds until its message is in (arrived) and
// until it ends (end); each is given back once. It is one value with no
// closures: every open stream, an idle watch's too, keeps it.
type reservation struct {
	g *streamGuard
	// tenant and wait: the stream must wait for room for a message of the
	// limit's size before it is read (every call but the REST gateway's and
	// keyless health checks).
	tenant string
	wait   bool
	// public: a keyless health call, holding a stream slot and, until its
	// message is in, a message slot.
	public bool
	// receive bounds the time the message may take to arrive once it has
	// room, after which cancel ends the stream.
	receive time.Duration
	cancel  context.CancelFunc
	// small: the message is not a submit's but a few bytes (ids, a seq),
	// which the call does not hold on to: once it is in, the stream holds
	// nothing, and its end has nothing to give back. A watch stream lasts
	// minutes, so it is then left with as little as can be.
	small bool

	mu sync.Mutex
	// unwatch stops watch's wait for the stream's end.
	unwatch func() bool
	// waiting: counted among the tenant's waiting submits.
	waiting bool
	ended   bool
	held    int64       // bytes held in the budget
	late    *time.Timer // ends a message that does not arrive in time
	msgHeld bool        // public: the message slot is held
}

// arrived shrinks what r holds once its message is in (n bytes): to the
// message's size, or to nothing for a small one (and then the wait for the
// stream's end goes too); r.mu is held.
func (r *reservation) arrived(n int64) {
	if r.small {
		r.end()
		if r.unwatch != nil {
			r.unwatch()
			r.unwatch = nil
		}
		return
	}
	r.shrink(n)
}

// shrink lets go of the timer and of all but n bytes; r.mu is held.
func (r *reservation) shrink(n int64) {
	if r.ended {
		return
	}
	if r.late != nil {
		r.late.Stop()
		r.late = nil
	}
	if r.public {
		if r.msgHeld {
			r.g.publicMessages.Release(1)
			r.msgHeld = false
		}
		return
	}
	if keep := min(n, r.held); keep < r.held {
		r.g.inflight.release(r.tenant, r.held-keep)
		r.held = keep
	}
}

// reserved records n bytes taken for the message, which must then arrive
// within r.receive; r.mu is held.
func (r *reservation) reserved(n int64) {
	r.held = n
	r.late = time.AfterFunc(r.receive, r.cancel)
}

// end gives back everything r holds, once; r.mu is held.
func (r *reservation) end() {
	if r.ended {
		return
	}
	r.shrink(0)
	if r.public {
		r.g.publicStreams.Release(1)
	} else {
		r.stopWaiting()
		r.g.inflight.release(r.tenant, r.held)
		r.held = 0
	}
	r.ended = true
}

type reservationKey struct{}

// tap is the grpc.InTapHandle.
func (g *streamGuard) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	if public(info.FullMethodName) {
		return g.public(ctx, info)
	}
	tenant, ok := g.tenant(info.Header)
	if !ok {
		g.refused(ctx, info.FullMethodName, errUnauthenticated)
		return ctx, toStatus(ctx, g.log, info.FullMethodName, errUnauthenticated)
	}
	if g.gateway.fromGateway(info.Header) {
		return ctx, nil
	}
	// Any message may be as large as the limit, and gRPC receives it whole
	// before anything can look at it: before it is read (InHeader, on the
	// stream's own goroutine, since the tap must not wait) a stream waits for
	// that much room; once the message is in, only its real size stays
	// reserved, until the call ends. Once it has room, the message must
	// arrive in time: a submit's within the read timeout, any other (a few
	// bytes) within smallReceiveTimeout.
	submit := isSubmit(info.FullMethodName)
	if submit && !g.startWaiting(tenant) {
		g.metrics.refused(limitInflight)
		return ctx, toStatus(ctx, g.log, info.FullMethodName, errInflightFull)
	}
	ctx, cancel := context.WithCancel(ctx)
	r := &reservation{g: g, tenant: tenant, wait: true, waiting: submit, receive: smallReceiveTimeout, cancel: cancel, small: !submit}
	if submit {
		r.receive = g.readTimeout
	}
	return g.watch(ctx, r), nil
}

// startWaiting counts one more submit of tenant waiting for room, unless
// there are already as many as may wait.
func (g *streamGuard) startWaiting(tenant string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.waiting[tenant] >= maxWaitingSubmits {
		return false
	}
	g.waiting[tenant]++
	return true
}

// stopWaiting counts a submit that no longer waits, once; r.mu is held.
func (r *reservation) stopWaiting() {
	if !r.waiting {
		return
	}
	r.waiting = false
	r.g.mu.Lock()
	defer r.g.mu.Unlock()
	if n := r.g.waiting[r.tenant] - 1; n > 0 {
		r.g.waiting[r.tenant] = n
	} else {
		delete(r.g.waiting, r.tenant)
	}
}

// public admits a keyless call of a public service: a Health call, within
// the slots; reflection needs a key when keys are configured (it is tooling,
// not a probe).
func (g *streamGuard) public(ctx context.Context, info *tap.Info) (context.Context, error) {
	if _, ok := g.tenant(info.Header); g.auth == nil || ok {
		return ctx, nil
	}
	if !isHealth(info.FullMethodName) {
		g.refused(ctx, info.FullMethodName, errUnauthenticated)
		return ctx, toStatus(ctx, g.log, info.FullMethodName, errUnauthenticated)
	}
	if !g.publicStreams.TryAcquire(1) {
		return ctx, toStatus(ctx, g.log, info.FullMethodName, errPublicBusy)
	}
	if !g.publicMessages.TryAcquire(1) {
		g.publicStreams.Release(1)
		return ctx, toStatus(ctx, g.log, info.FullMethodName, errPublicBusy)
	}
	ctx, cancel := context.WithCancel(ctx)
	r := &reservation{g: g, public: true, msgHeld: true, cancel: cancel}
	r.late = time.AfterFunc(publicReceiveTimeout, cancel)
	return g.watch(ctx, r), nil
}

// watch gives r back when the stream ends: its context ends then, whatever
// ended it, including the transport refusing it after the tap.
func (g *streamGuard) watch(ctx context.Context, r *reservation) context.Context {
	stop := context.AfterFunc(ctx, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.end()
	})
	r.mu.Lock()
	r.unwatch = stop
	r.mu.Unlock()
	return context.WithValue(ctx, reservationKey{}, r)
}

// tenant is the tenant of the call's API key (see bearerTenant); without
// keys every caller is the local user, "".
func (g *streamGuard) tenant(md metadata.MD) (string, bool) {
	if g.auth == nil {
		return "", true
	}
	return bearerTenant(g.auth, md.Get("authorization"))
}

// refused logs a call refused for want of a key, as the access log logs a
// call. The method is the caller's text: it is cut short.
func (g *streamGuard) refused(ctx context.Context, method string, err error) {
	if len(method) > maxLoggedPath {
		method = method[:maxLoggedPath] + "…"
	}
	g.log.LogAttrs(ctx, slog.LevelInfo, "rpc", slog.String("method", method),
		slog.String("tenant", ""), slog.String("code", status.Code(toStatus(ctx, g.log, method, err)).String()),
		slog.Duration("duration", 0))
}

// isHealth reports whether a method is the gRPC health service's.
func isHealth(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/grpc.health.v1.Health/")
}

// HandleRPC is the guard's stats.Handler side: a submit's stream waits for
// room before its message is read (InHeader), and its reservation shrinks
// once the message is in (InPayload): from then on the message's own size
// (or nothing, for a health check) is what it holds.
func (g *streamGuard) HandleRPC(ctx context.Context, s stats.RPCStats) {
	// Called for every message sent too (a watch event to each watcher):
	// those return before anything else.
	switch s := s.(type) {
	case *stats.InHeader:
		if r, ok := ctx.Value(reservationKey{}).(*reservation); ok && r.wait {
			g.reserve(ctx, r)
		}
	case *stats.InPayload:
		if r, ok := ctx.Value(reservationKey{}).(*reservation); ok {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.arrived(int64(s.Length))
		}
	}
}

// reserve waits for room for a message of the limit's size, on the stream's
// goroutine before its message is read. A stream whose context ends first
// (its deadline, its client gone) takes nothing, and its read fails.
func (g *streamGuard) reserve(ctx context.Context, r *reservation) {
	err := g.inflight.acquireWait(ctx, r.tenant, g.maxMsg)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopWaiting()
	if err != nil {
		return
	}
	if r.ended {
		g.inflight.release(r.tenant, g.maxMsg)
		return
	}
	r.reserved(g.maxMsg)
}

// TagRPC keeps the context: the tap put the reservation in it.
func (g *streamGuard) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }

// TagConn keeps the context.
func (g *streamGuard) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }

// HandleConn does nothing: the guard follows streams, not connections.
func (g *streamGuard) HandleConn(context.Context, stats.ConnStats) {}
