package server

import (
	"context"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// callInfo collects what the access log line needs from inner interceptors:
// the tenant is known only once authentication ran.
type callInfo struct{ tenant string }

type callInfoKey struct{}

// noteTenant records the tenant for the access log, if one is being kept.
func noteTenant(ctx context.Context, tenant string) {
	if ci, ok := ctx.Value(callInfoKey{}).(*callInfo); ok {
		ci.tenant = tenant
	}
}

// idsOf reads the request and deployment ids of a call, from its request or
// (for Submit) its response.
func idsOf(msgs ...any) (requestID, deploymentID string) {
	for _, m := range msgs {
		if r, ok := m.(interface{ GetRequestId() string }); ok && requestID == "" {
			requestID = r.GetRequestId()
		}
		if r, ok := m.(interface{ GetDeploymentId() string }); ok && deploymentID == "" {
			deploymentID = r.GetDeploymentId()
		}
		if r, ok := m.(*comfygatev1.SubmitResponse); ok && requestID == "" {
			requestID = r.GetRequest().GetRequestId()
		}
	}
	return requestID, deploymentID
}

// accessLogUnaryInterceptor writes one line per call: method, ids, tenant,
// code and duration. It sits outside the error mapping, so it logs the code
// the caller gets. Keys and inputs are never logged.
func accessLogUnaryInterceptor(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if public(info.FullMethod) {
			return handler(ctx, req)
		}
		ci := &callInfo{}
		start := time.Now()
		resp, err := handler(context.WithValue(ctx, callInfoKey{}, ci), req)
		rid, dep := idsOf(req, resp)
		log.LogAttrs(ctx, slog.LevelInfo, "rpc",
			slog.String("method", info.FullMethod), slog.String("request_id", rid), slog.String("deployment_id", dep),
			slog.String("tenant", ci.tenant), slog.String("code", status.Code(err).String()),
			slog.Duration("duration", time.Since(start)))
		return resp, err
	}
}

// accessLogStreamInterceptor is accessLogUnaryInterceptor and
// errorUnaryInterceptor for streams: the error mapping, then one line when
// the stream ends, with the code the caller gets. A watch stream's message is
// received aside (runAside). They are one interceptor for streams, not two as
// for unary calls, because a watch stream waits for minutes inside the chain:
// every interceptor's frame, and grpc-go's between each, stays on the stack of
// every idle watch stream.
func accessLogStreamInterceptor(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if public(info.FullMethod) {
			return toStatus(ss.Context(), log, info.FullMethod, handler(srv, ss))
		}
		rs := newRecvStream(ss, info.FullMethod == comfygatev1.GatewayService_WatchRequest_FullMethodName)
		err := toStatus(rs.ctx, log, info.FullMethod, handler(srv, rs))
		rs.logEnd(log, info.FullMethod, err)
		return err
	}
}

// recvStream keeps the first message a stream received (its request) and
// what the call's inner interceptors noted (callInfo) for the log line.
type recvStream struct {
	grpc.ServerStream
	ctx   context.Context
	first any
	ci    callInfo
	start time.Time
	// aside: the message is received on a goroutine of its own (runAside).
	aside bool
}

// newRecvStream and logEnd are kept out of the interceptor (noinline): the
// interceptor's frame, on every idle watch stream's stack, would otherwise
// hold the log line's attributes.
//
//go:noinline
func newRecvStream(ss grpc.ServerStream, aside bool) *recvStream {
	rs := &recvStream{ServerStream: ss, start: time.Now(), aside: aside}
	rs.ctx = context.WithValue(ss.Context(), callInfoKey{}, &rs.ci)
	return rs
}

//go:noinline
func (s *recvStream) logEnd(log *slog.Logger, method string, err error) {
	rid, dep := idsOf(s.first)
	log.LogAttrs(s.ServerStream.Context(), slog.LevelInfo, "rpc",
		slog.String("method", method), slog.String("request_id", rid), slog.String("deployment_id", dep),
		slog.String("tenant", s.ci.tenant), slog.String("code", status.Code(err).String()),
		slog.Duration("duration", time.Since(s.start)))
}

func (s *recvStream) Context() context.Context { return s.ctx }

func (s *recvStream) RecvMsg(m any) error {
	var err error
	if s.aside {
		err = runAside(func() error { return s.ServerStream.RecvMsg(m) })
	} else {
		err = s.ServerStream.RecvMsg(m)
	}
	if err == nil && s.first == nil {
		s.first = m
	}
	return err
}
