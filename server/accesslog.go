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

// accessLogStreamInterceptor is accessLogUnaryInterceptor for streams: one line
// when the stream ends.
func accessLogStreamInterceptor(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if public(info.FullMethod) {
			return handler(srv, ss)
		}
		ci := &callInfo{}
		start := time.Now()
		rs := &recvStream{ServerStream: ss, ctx: context.WithValue(ss.Context(), callInfoKey{}, ci)}
		err := handler(srv, rs)
		rid, dep := idsOf(rs.first)
		log.LogAttrs(ss.Context(), slog.LevelInfo, "rpc",
			slog.String("method", info.FullMethod), slog.String("request_id", rid), slog.String("deployment_id", dep),
			slog.String("tenant", ci.tenant), slog.String("code", status.Code(err).String()),
			slog.Duration("duration", time.Since(start)))
		return err
	}
}

// recvStream keeps the first message a stream received (its request) for the
// log line.
type recvStream struct {
	grpc.ServerStream
	ctx   context.Context
	first any
}

func (s *recvStream) Context() context.Context { return s.ctx }

func (s *recvStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if err == nil && s.first == nil {
		s.first = m
	}
	return err
}
