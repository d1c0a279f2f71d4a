package server

import (
	"context"
	"log/slog"
	"runtime/debug"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// errorUnaryInterceptor maps every handler error to a status, once (errors.go).
func errorUnaryInterceptor(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		resp, err := handler(ctx, req)
		return resp, toStatus(ctx, log, info.FullMethod, err)
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

// limitsUnaryInterceptor spends one of the tenant's reads on every read
// (isRead) before it runs; it sits after authentication, so it knows the tenant.
func limitsUnaryInterceptor(l *TenantLimits) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if isRead(info.FullMethod) {
			if err := l.read(ctx, tenantOf(ctx)); err != nil {
				return nil, err
			}
		}
		return handler(ctx, req)
	}
}

// limitsStreamInterceptor holds one of the tenant's watch slots for as long as
// a WatchRequest stream lasts, and spends one read when it opens. Every watch
// transport is a WatchRequest stream (NDJSON and SSE come through the REST
// gateway's loopback connection), so they all count together. The slot is
// freed when the handler returns, however the stream ends: the client leaving,
// the terminal event, a drain, an error or a panic.
func limitsStreamInterceptor(l *TenantLimits) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if info.FullMethod != comfygatev1.GatewayService_WatchRequest_FullMethodName {
			return handler(srv, ss)
		}
		ctx := ss.Context()
		var release func()
		// Aside: spending a read may be a round trip to Redis (runAside).
		if err := runAside(func() (err error) {
			release, err = l.openWatch(ctx, tenantOf(ctx))
			return err
		}); err != nil {
			return err
		}
		defer release()
		return handler(srv, ss)
	}
}

// interceptors returns the server options that install the interceptor chains:
// recovery outermost so it also covers the rest, then the gRPC metrics and the
// access log (which sees the final code), then the error mapping, then
// authentication (when a is set), whose refusal the mapping turns into a code,
// then the per-tenant limits (when l is set), which need the tenant, then
// the REST gateway's handoff of large inputs.
func interceptors(log *slog.Logger, a Authenticator, m *Metrics, l *TenantLimits, h *handoff, maxInput int64) []grpc.ServerOption {
	rec := recoveryOption(log)
	unary := []grpc.UnaryServerInterceptor{recovery.UnaryServerInterceptor(rec)}
	stream := []grpc.StreamServerInterceptor{recovery.StreamServerInterceptor(rec)}
	if m != nil {
		unary = append(unary, m.grpc.unaryInterceptor())
		stream = append(stream, m.grpc.streamInterceptor())
	}
	unary = append(unary, accessLogUnaryInterceptor(log), errorUnaryInterceptor(log))
	stream = append(stream, accessLogStreamInterceptor(log))
	if a != nil {
		unary = append(unary, authUnaryInterceptor(a))
		stream = append(stream, authStreamInterceptor(a))
	} else {
		unary = append(unary, localUnaryInterceptor)
		stream = append(stream, localStreamInterceptor)
	}
	if l != nil {
		unary = append(unary, limitsUnaryInterceptor(l))
		stream = append(stream, limitsStreamInterceptor(l))
	}
	// Innermost: a Submit's input handed over by the REST gateway is taken
	// back only by a call that passed everything else.
	unary = append(unary, h.serverInterceptor(), inputLimitUnaryInterceptor(maxInput))
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(unary...), grpc.ChainStreamInterceptor(stream...)}
}

// inputLimitUnaryInterceptor refuses a call whose input_json is larger than
// limit (--max-body-bytes), as REST refuses a body larger than it (the body
// is the input): BODY_TOO_LARGE. A gRPC message may be 64 KiB larger than
// the limit, for the fields around an input of the limit's size.
func inputLimitUnaryInterceptor(limit int64) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		var input string
		switch r := req.(type) {
		case *comfygatev1.SubmitRequest:
			input = r.GetInputJson()
		case *comfygatev1.SubmitAndWaitRequest:
			input = r.GetSubmit().GetInputJson()
		}
		if int64(len(input)) > limit {
			return nil, &bodyTooLargeError{limit: limit, what: "input_json"}
		}
		return handler(ctx, req)
	}
}
