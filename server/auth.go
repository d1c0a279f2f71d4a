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

// callerOf is who made the call, as the auth interceptors (or, without API
// keys, the local ones) put it in ctx. A ctx without one is a caller with no
// tenant and no permission: a path that skipped the interceptors gains
// nothing.
func callerOf(ctx context.Context) caller {
	c, _ := ctx.Value(callerKey{}).(caller)
	return c
}

// localCaller is every caller of a gateway without API keys: the single local
// user, one implicit tenant "", who may attach, since there is no other
// tenant to take a request from.
func localCaller() caller { return caller{tenant: "", attach: true} }

// localUnaryInterceptor marks every call as the local user's, on a gateway
// without API keys.
func localUnaryInterceptor(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	return handler(context.WithValue(ctx, callerKey{}, localCaller()), req)
}

// localStreamInterceptor is localUnaryInterceptor for streams.
func localStreamInterceptor(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return handler(srv, &tenantStream{ServerStream: ss, ctx: context.WithValue(ss.Context(), callerKey{}, localCaller())})
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
	if vals := md.Get("authorization"); len(vals) == 1 {
		key, ok := bearerKey(vals[0])
		if !ok {
			return nil, errUnauthenticated
		}
		if tenant, perms, ok := a.Lookup(key); ok {
			noteTenant(ctx, tenant)
			return context.WithValue(ctx, callerKey{}, caller{tenant: tenant, attach: perms.Has(auth.Attach)}), nil
		}
	}
	return nil, errUnauthenticated
}

// bearerKey is the key of an Authorization value "Bearer KEY" (the scheme in
// any case), the one form every listener reads.
func bearerKey(authorization string) (string, bool) {
	scheme, key, ok := strings.Cut(strings.TrimSpace(authorization), " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return "", false
	}
	return strings.TrimSpace(key), true
}

// bearerTenant is the tenant of a call's Authorization values, when they are
// one "Bearer KEY" with a known key; for the checks made before a body or
// message is read (httpguard.go, grpcguard.go). Several values are refused: a
// call carries one credential, not a list of guesses.
func bearerTenant(a Authenticator, authorization []string) (string, bool) {
	if len(authorization) != 1 {
		return "", false
	}
	key, ok := bearerKey(authorization[0])
	if !ok {
		return "", false
	}
	return a.Tenant(key)
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
