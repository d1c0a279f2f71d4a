package server

import (
	"context"
	"log/slog"
	"runtime/debug"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// errorUnaryInterceptor maps every handler error to a status, once (errors.go).
func errorUnaryInterceptor(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		return resp, toStatus(ctx, log, info.FullMethod, err)
	}
}

// errorStreamInterceptor is errorUnaryInterceptor for streams.
func errorStreamInterceptor(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		return toStatus(ss.Context(), log, info.FullMethod, handler(srv, ss))
	}
}

// recoveryOption turns a panic into Internal with the stack in the log, instead of
// a crashed process that drops every other caller.
func recoveryOption(log *slog.Logger) recovery.Option {
	return recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		log.ErrorContext(ctx, "panic in handler", "panic", p, "stack", string(debug.Stack()))
		return status.Error(codes.Internal, "internal error")
	})
}

// interceptors returns the server options that install the interceptor chains:
// recovery outermost so it also covers the rest, then the gRPC metrics and the
// access log (which
// sees the final code), then the error mapping, then authentication (when a is
// set), whose refusal the mapping turns into a code.
func interceptors(log *slog.Logger, a Authenticator, m *Metrics) []grpc.ServerOption {
	rec := recoveryOption(log)
	unary := []grpc.UnaryServerInterceptor{recovery.UnaryServerInterceptor(rec)}
	stream := []grpc.StreamServerInterceptor{recovery.StreamServerInterceptor(rec)}
	if m != nil {
		unary = append(unary, m.grpc.UnaryServerInterceptor())
		stream = append(stream, m.grpc.StreamServerInterceptor())
	}
	unary = append(unary, accessLogUnaryInterceptor(log), errorUnaryInterceptor(log))
	stream = append(stream, accessLogStreamInterceptor(log), errorStreamInterceptor(log))
	if a != nil {
		unary = append(unary, authUnaryInterceptor(a))
		stream = append(stream, authStreamInterceptor(a))
	}
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(unary...), grpc.ChainStreamInterceptor(stream...)}
}
