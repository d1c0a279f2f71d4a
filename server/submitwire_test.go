package server

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// chunked splits b into buffers of n bytes, as frames arrive.
func chunked(b []byte, n int) mem.BufferSlice {
	var s mem.BufferSlice
	for len(b) > 0 {
		k := min(n, len(b))
		s = append(s, mem.SliceBuffer(b[:k]))
		b = b[k:]
	}
	return s
}

// FuzzUnmarshalSubmit: the SubmitRequest decoder agrees with proto.Unmarshal
// on every input, whatever the frame boundaries: both accept it with the same
// fields (the webhook, the deadlines and unknown ones included), or both
// refuse it.
func FuzzUnmarshalSubmit(f *testing.F) {
	seed := func(m *comfygatev1.SubmitRequest) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	f.Add(seed(&comfygatev1.SubmitRequest{DeploymentId: "d", InputJson: `{"a":1}`, IdempotencyKey: "k"}), uint8(3))
	f.Add(seed(&comfygatev1.SubmitRequest{InputJson: strings.Repeat("x", 300)}), uint8(7))
	f.Add(protowire.AppendVarint(protowire.AppendTag(nil, 9, protowire.VarintType), 300), uint8(1))
	f.Add(append(protowire.AppendTag(nil, 2, protowire.BytesType), 0x05, 'a'), uint8(2))
	// The fields after the input: a webhook, the deadlines.
	f.Add(seed(&comfygatev1.SubmitRequest{DeploymentId: "d", InputJson: strings.Repeat("y", 500),
		Webhook:          &comfygatev1.Webhook{Url: "https://x.example/h", Events: []comfygatev1.WebhookEvent{comfygatev1.WebhookEvent_WEBHOOK_EVENT_QUEUED}},
		MaxQueueDuration: durationpb.New(90 * time.Second), MaxRunDuration: durationpb.New(time.Hour)}), uint8(5))
	f.Add([]byte{0x12, 0x01, 0xff}, uint8(1))
	f.Add([]byte{0x0b, 0x0c}, uint8(1))
	f.Add([]byte{0x08, 0x01}, uint8(1))
	// Field 2^32+2: not field 2.
	f.Add(append(protowire.AppendVarint(nil, (1<<32+2)<<3|2), 0x01, 'a'), uint8(1))
	f.Add([]byte("\x85\x85\x85\x85\x8500000"), uint8(0))
	f.Fuzz(func(t *testing.T, wire []byte, chunk uint8) {
		var want comfygatev1.SubmitRequest
		wantErr := proto.Unmarshal(wire, &want)
		var got comfygatev1.SubmitRequest
		gotErr := unmarshalSubmit(chunked(wire, int(chunk)+1), &got)
		if errors.Is(gotErr, errNotFastPath) {
			return // the proto codec decodes it
		}
		if (gotErr == nil) != (wantErr == nil) {
			t.Fatalf("unmarshalSubmit error %v, proto.Unmarshal error %v", gotErr, wantErr)
		}
		if gotErr != nil {
			return
		}
		if !proto.Equal(&got, &want) {
			t.Fatalf("unmarshalSubmit = %v, proto.Unmarshal = %v", &got, &want)
		}
	})
}

// TestHandoff: a large REST submit's input goes from the gateway's
// connection to the service by reference, taken back once; a token from
// anywhere else names nothing, and nothing stays behind.
func TestHandoff(t *testing.T) {
	input := `{"image":"` + strings.Repeat("A", 2*largeSubmit) + `"}`
	h := newHandoff()
	client, server := h.clientInterceptor(), h.serverInterceptor()
	info := &grpc.UnaryServerInfo{FullMethod: comfygatev1.GatewayService_Submit_FullMethodName}
	tests := []struct {
		name      string
		req       *comfygatev1.SubmitRequest
		tamper    func(md metadata.MD)
		wantInput string
		wantErr   error
	}{
		{name: "large input by reference", req: &comfygatev1.SubmitRequest{DeploymentId: "d", InputJson: input, IdempotencyKey: "k"}, wantInput: input},
		{name: "small input on the wire", req: &comfygatev1.SubmitRequest{DeploymentId: "d", InputJson: `{"a":1}`}, wantInput: `{"a":1}`},
		{name: "unknown token", req: &comfygatev1.SubmitRequest{DeploymentId: "d", InputJson: input},
			tamper: func(md metadata.MD) { md.Set(handoffHeader, "0123456789abcdef0123456789abcdef") }, wantErr: errHandoffGone},
		{name: "two tokens", req: &comfygatev1.SubmitRequest{DeploymentId: "d", InputJson: input},
			tamper: func(md metadata.MD) { md.Append(handoffHeader, "x") }, wantErr: errHandoffGone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			orig := proto.Clone(tt.req).(*comfygatev1.SubmitRequest)
			var gotInput string
			var gotErr error
			invoker := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, opts ...grpc.CallOption) error {
				// What the server sees: the metadata and the message as sent.
				md, _ := metadata.FromOutgoingContext(ctx)
				md = md.Copy()
				if tt.tamper != nil {
					tt.tamper(md)
				}
				sent := req.(*comfygatev1.SubmitRequest)
				if len(orig.GetInputJson()) >= largeSubmit && sent.GetInputJson() != "" {
					t.Errorf("a large input went on the wire")
				}
				_, gotErr = server(metadata.NewIncomingContext(ctx, md), proto.Clone(sent), info, func(_ context.Context, req any) (any, error) {
					sub := req.(*comfygatev1.SubmitRequest)
					gotInput = sub.GetInputJson()
					if sub.GetDeploymentId() != orig.GetDeploymentId() || sub.GetIdempotencyKey() != orig.GetIdempotencyKey() {
						t.Errorf("server got %v, want the fields of %v", sub, orig)
					}
					return &comfygatev1.SubmitResponse{}, nil
				})
				return gotErr
			}
			err := client(context.Background(), info.FullMethod, tt.req, &comfygatev1.SubmitResponse{}, nil, invoker)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("error %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr == nil && gotInput != tt.wantInput {
				t.Errorf("the service got an input of %d bytes, want %d", len(gotInput), len(tt.wantInput))
			}
			if n := len(h.inputs); n != 0 {
				t.Errorf("%d inputs left in the handoff", n)
			}
		})
	}
}
