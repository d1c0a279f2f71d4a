package server

import (
	"context"
	"errors"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// Authenticator maps an API key to its tenant; *auth.Keys provides it.
type Authenticator interface {
	Tenant(key string) (string, bool)
}

// errUnauthenticated: the call carries no API key, or an unknown one.
var errUnauthenticated = errors.New("missing or unknown API key: send Authorization: Bearer <key>")

type tenantKey struct{}

// tenantOf is the tenant the call was authenticated as; "" when the gateway
// runs without API keys (one implicit tenant).
func tenantOf(ctx context.Context) string {
	t, _ := ctx.Value(tenantKey{}).(string)
	return t
}

// public lists the services callers reach without a key: probes and tooling.
func public(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/grpc.health.v1.Health/") ||
		strings.HasPrefix(fullMethod, "/grpc.reflection.")
}

// authenticate reads "authorization: Bearer KEY" (gRPC metadata, or the HTTP
// header the REST gateway forwards) and returns ctx carrying the tenant.
func authenticate(ctx context.Context, a Authenticator) (context.Context, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		scheme, key, ok := strings.Cut(strings.TrimSpace(v), " ")
		if !ok || !strings.EqualFold(scheme, "bearer") {
			continue
		}
		if tenant, ok := a.Tenant(strings.TrimSpace(key)); ok {
			noteTenant(ctx, tenant)
			return context.WithValue(ctx, tenantKey{}, tenant), nil
		}
	}
	return nil, errUnauthenticated
}

// authUnaryInterceptor refuses unauthenticated calls before any handler runs.
func authUnaryInterceptor(a Authenticator) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if public(info.FullMethod) {
			return handler(ctx, req)
		}
		ctx, err := authenticate(ctx, a)
		if err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// authStreamInterceptor is authUnaryInterceptor for streams.
func authStreamInterceptor(a Authenticator) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if public(info.FullMethod) {
			return handler(srv, ss)
		}
		ctx, err := authenticate(ss.Context(), a)
		if err != nil {
			return err
		}
		return handler(srv, &tenantStream{ServerStream: ss, ctx: ctx})
	}
}

type tenantStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *tenantStream) Context() context.Context { return s.ctx }
