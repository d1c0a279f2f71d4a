package server_test

import (
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/internal/rawcodec"
)

// TestUndecodableMessagesAreInvalidArgument pins that a request message that
// is not the method's protobuf is the caller's error (INVALID_ARGUMENT, not
// the INTERNAL grpc-go gives it), on every kind of method, and reaches no
// upstream.
func TestUndecodableMessagesAreInvalidArgument(t *testing.T) {
	t.Parallel()
	g := startGateway(t)
	ctx := ctxT(t)
	bodies := []struct {
		name string
		b    []byte
	}{
		{"not protobuf", []byte("\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff")},
		// Field 1 (deployment_id) says 16 bytes and has 1.
		{"truncated", []byte{0x0a, 0x10, 'd'}},
		// Field 2 (input_json, a string) that is not UTF-8.
		{"a string that is not UTF-8", []byte{0x12, 0x02, 0xc3, 0x28}},
	}
	methods := []string{
		comfygatev1.GatewayService_Submit_FullMethodName,
		comfygatev1.GatewayService_GetStatus_FullMethodName,
		comfygatev1.GatewayService_Cancel_FullMethodName,
	}
	for _, m := range methods {
		for _, body := range bodies {
			t.Run(m[strings.LastIndex(m, "/")+1:]+"/"+body.name, func(t *testing.T) {
				var out []byte
				err := g.conn.Invoke(ctx, m, &body.b, &out, grpc.ForceCodecV2(rawcodec.Codec{}))
				if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "does not decode") {
					t.Errorf("%s = %v, want INVALID_ARGUMENT saying the message does not decode", m, err)
				}
			})
		}
	}
	t.Run("WatchRequest", func(t *testing.T) {
		desc := &grpc.StreamDesc{StreamName: "WatchRequest", ServerStreams: true}
		for _, body := range bodies {
			stream, err := g.conn.NewStream(ctx, desc, comfygatev1.GatewayService_WatchRequest_FullMethodName, grpc.ForceCodecV2(rawcodec.Codec{}))
			if err != nil {
				t.Fatal(err)
			}
			if err := stream.SendMsg(&body.b); err != nil {
				t.Fatal(err)
			}
			if err := stream.CloseSend(); err != nil {
				t.Fatal(err)
			}
			var out []byte
			err = stream.RecvMsg(&out)
			if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "does not decode") {
				t.Errorf("%s: WatchRequest = %v, want INVALID_ARGUMENT saying the message does not decode", body.name, err)
			}
		}
	})
	t.Run("health and reflection", func(t *testing.T) {
		calls := map[string][][]byte{
			// Check's field 1 (service, a string) not UTF-8, too.
			"/grpc.health.v1.Health/Check": {bodies[0].b, bodies[1].b, {0x0a, 0x02, 0xc3, 0x28}},
			"/grpc.health.v1.Health/List":  {bodies[0].b},
		}
		for m, bs := range calls {
			for _, b := range bs {
				var out []byte
				err := g.conn.Invoke(ctx, m, &b, &out, grpc.ForceCodecV2(rawcodec.Codec{}))
				if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "does not decode") {
					t.Errorf("%s with %x = %v, want INVALID_ARGUMENT saying the message does not decode", m, b, err)
				}
			}
		}
		desc := &grpc.StreamDesc{StreamName: "ServerReflectionInfo", ServerStreams: true, ClientStreams: true}
		stream, err := g.conn.NewStream(ctx, desc, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", grpc.ForceCodecV2(rawcodec.Codec{}))
		if err != nil {
			t.Fatal(err)
		}
		b := bodies[0].b
		if err := stream.SendMsg(&b); err != nil {
			t.Fatal(err)
		}
		var out []byte
		if err := stream.RecvMsg(&out); status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "does not decode") {
			t.Errorf("reflection = %v, want INVALID_ARGUMENT saying the message does not decode", err)
		}
	})
	t.Run("larger than any of its kind", func(t *testing.T) {
		// A GetStatusRequest of 100 KiB: a deployment id no id can be.
		b := append([]byte{0x0a, 0x80, 0x90, 0x06}, strings.Repeat("d", 100<<10)...)
		var out []byte
		err := g.conn.Invoke(ctx, comfygatev1.GatewayService_GetStatus_FullMethodName, &b, &out, grpc.ForceCodecV2(rawcodec.Codec{}))
		if st := status.Convert(err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "at most") {
			t.Errorf("GetStatus = %v, want RESOURCE_EXHAUSTED saying how large it may be", err)
		}
	})
	if n := g.sim.TotalCalls(); n != 0 {
		t.Errorf("RunComfy was called %d times, want never", n)
	}
}
