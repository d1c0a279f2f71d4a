package server

import (
	"context"
	"log/slog"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
)

// authTap refuses a gRPC call without a valid API key when its stream opens,
// from its headers alone: gRPC reads a call's message before any interceptor
// runs, so without it a caller with no key could make the gateway receive
// and decode messages of up to --max-body-bytes each. The interceptor
// (auth.go) still authenticates every call that passes, and puts the caller
// in its context. Refusals are logged as the access log logs a call.
func authTap(a Authenticator, log *slog.Logger) tap.ServerInHandle {
	guard := &bodyGuard{auth: a}
	return func(ctx context.Context, info *tap.Info) (context.Context, error) {
		if public(info.FullMethodName) {
			return ctx, nil
		}
		for _, v := range info.Header.Get("authorization") {
			if guard.validKey(v) {
				return ctx, nil
			}
		}
		log.LogAttrs(ctx, slog.LevelInfo, "rpc", slog.String("method", info.FullMethodName),
			slog.String("tenant", ""), slog.String("code", codes.Unauthenticated.String()), slog.Duration("duration", 0))
		return ctx, status.Error(codes.Unauthenticated, errUnauthenticated.Error())
	}
}
