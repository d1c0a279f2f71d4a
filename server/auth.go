package server

import (
	"context"
	"errors"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/comfygate/comfygate/auth"
)

// Authenticator maps an API key to its tenant and the permissions the key
// grants; *auth.Keys provides it.
type Authenticator interface {
	// Tenant is Lookup without the permissions, for checks that only need to
	// know the key is valid.
	Tenant(key string) (string, bool)
	// Lookup returns the key's tenant and permissions from one version of the
	// keys, so a reload never pairs one tenant with another's permissions.
	Lookup(key string) (tenant string, perms auth.Permissions, ok bool)
}

// errUnauthenticated: the call carries no API key, or an unknown one.
var errUnauthenticated = errors.New("missing or unknown API key: send Authorization: Bearer <key>")

// caller is who made a call, as authenticate found it.
type caller struct {
	tenant string
	// attach: the caller may read from RunComfy a request the gateway does not
	// know, and so own it (auth.Attach).
	attach bool
}

type callerKey struct{}

// callerOf is who made the call. The auth interceptors put it in ctx on every
// call of a gateway with API keys; a ctx without one is a call of a gateway
// without keys (no interceptor runs), whose every caller is the single local
// user: one implicit tenant "", who may attach, since there is no other
// tenant to take a request from.
func callerOf(ctx context.Context) caller {
	if c, ok := ctx.Value(callerKey{}).(caller); ok {
		return c
	}
	return caller{tenant: "", attach: true}
}

// tenantOf is the tenant the call was authenticated as; "" when the gateway
// runs without API keys (one implicit tenant).
func tenantOf(ctx context.Context) string {
	return callerOf(ctx).tenant
}

// mayAttach reports whether the caller may attach a request: read one the
// gateway has no record of from RunComfy, or claim a record nobody owns.
func mayAttach(ctx context.Context) bool {
	return callerOf(ctx).attach
}

// public lists the services callers reach without a key: probes and tooling.
func public(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/grpc.health.v1.Health/") ||
		strings.HasPrefix(fullMethod, "/grpc.reflection.")
}

// authenticate reads "authorization: Bearer KEY" (gRPC metadata, or the HTTP
// header the REST gateway forwards) and returns ctx carrying the caller: the
// key's tenant and whether the key lets it attach.
func authenticate(ctx context.Context, a Authenticator) (context.Context, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		scheme, key, ok := strings.Cut(strings.TrimSpace(v), " ")
		if !ok || !strings.EqualFold(scheme, "bearer") {
			continue
		}
		if tenant, perms, ok := a.Lookup(strings.TrimSpace(key)); ok {
			noteTenant(ctx, tenant)
			return context.WithValue(ctx, callerKey{}, caller{tenant: tenant, attach: perms.Has(auth.Attach)}), nil
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
