package server

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// A REST submit goes from grpc-gateway to the service over the gateway's own
// loopback gRPC connection, so that it passes the same interceptors as any
// call. Its input, which may be tens of megabytes of base64 media, does not
// need that trip: both ends are this process. A large input therefore stays
// where the REST decoder put it and travels by reference: the gateway's
// connection leaves it in the handoff under a random token, sends the call
// with an empty input and the token in its metadata, and the server takes it
// back just before Submit runs. The input is held once, never copied into and
// out of the wire.

// handoffHeader is the metadata key of a handed-off input's token.
const handoffHeader = "comfygate-handoff"

// errHandoffGone: a call names a handed-off input that is not there (a token
// from outside this process, or one already taken).
var errHandoffGone = &fieldError{field: handoffHeader, reason: "names no input handed over by this gateway"}

// handoff holds the inputs in transit from the REST gateway to the service.
type handoff struct {
	// mark is sent with every Submit of the REST gateway (gatewayHeader),
	// whose body was counted when it arrived over HTTP: random, known only to
	// this process.
	mark string

	mu     sync.Mutex
	inputs map[string]string
}

func newHandoff() *handoff { return &handoff{mark: randomToken(), inputs: map[string]string{}} }

// randomToken is 128 random bits in hex.
func randomToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b)
}

// put leaves input under a new token, unguessable and used once.
func (h *handoff) put(input string) string {
	token := randomToken()
	h.mu.Lock()
	h.inputs[token] = input
	h.mu.Unlock()
	return token
}

// take removes and returns the input under token.
func (h *handoff) take(token string) (string, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	input, ok := h.inputs[token]
	delete(h.inputs, token)
	return input, ok
}

// clientInterceptor is the REST gateway connection's side: every call
// carries the gateway's mark, and a large Submit is sent with its input left
// in the handoff. The gateway's request lets go of
// its input (grpc-gateway builds each request for one call and never reads it
// again), so the handoff holds the only reference until the server takes it;
// whatever the call's outcome, nothing is left behind.
func (h *handoff) clientInterceptor() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		ctx = metadata.AppendToOutgoingContext(ctx, gatewayHeader, h.mark)
		sub, ok := req.(*comfygatev1.SubmitRequest)
		if !ok || len(sub.GetInputJson()) < largeSubmit {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		token := h.put(sub.GetInputJson())
		defer h.take(token)
		ref := &comfygatev1.SubmitRequest{DeploymentId: sub.GetDeploymentId(), IdempotencyKey: sub.GetIdempotencyKey()}
		sub.InputJson = ""
		return invoker(metadata.AppendToOutgoingContext(ctx, handoffHeader, token), method, ref, reply, cc, opts...)
	}
}

// streamClientInterceptor marks the REST gateway's streams (watches) as its
// own.
func (h *handoff) streamClientInterceptor() grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		return streamer(metadata.AppendToOutgoingContext(ctx, gatewayHeader, h.mark), desc, cc, method, opts...)
	}
}

// fromGateway reports whether md carries the REST gateway's mark.
func (h *handoff) fromGateway(md metadata.MD) bool {
	v := md.Get(gatewayHeader)
	return len(v) == 1 && subtle.ConstantTimeCompare([]byte(v[0]), []byte(h.mark)) == 1
}

// serverInterceptor is the service's side: a Submit that names a handed-off
// input gets it back before it runs. It runs after authentication and the
// limits, innermost, so that a refused call never takes an input (the
// client's side drops it).
func (h *handoff) serverInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		sub, ok := req.(*comfygatev1.SubmitRequest)
		if !ok {
			return handler(ctx, req)
		}
		tokens := metadata.ValueFromIncomingContext(ctx, handoffHeader)
		switch {
		case len(tokens) == 0:
			return handler(ctx, req)
		case len(tokens) > 1 || sub.GetInputJson() != "":
			return nil, errHandoffGone
		}
		// Only the REST gateway hands inputs over.
		if md, _ := metadata.FromIncomingContext(ctx); !h.fromGateway(md) {
			return nil, errHandoffGone
		}
		input, ok := h.take(tokens[0])
		if !ok {
			return nil, errHandoffGone
		}
		sub.InputJson = input
		return handler(ctx, req)
	}
}
