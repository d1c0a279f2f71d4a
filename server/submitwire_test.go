package server

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

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
// fields, or both refuse it.
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
	f.Add([]byte{0x12, 0x01, 0xff}, uint8(1))
	f.Add([]byte{0x0b, 0x0c}, uint8(1))
	f.Add([]byte{0x08, 0x01}, uint8(1))
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
		want.ProtoReflect().SetUnknown(nil)
		if !proto.Equal(&got, &want) {
			t.Fatalf("unmarshalSubmit = %v, proto.Unmarshal = %v", &got, &want)
		}
	})
}

// TestGatewayCodecRoundTrip: a large submit the REST gateway sends decodes to
// the same request on the server side, and the gateway's request has let go
// of its input.
func TestGatewayCodecRoundTrip(t *testing.T) {
	input := `{"image":"` + strings.Repeat("A", 2*largeSubmit) + `"}`
	for _, tc := range []struct {
		name string
		req  *comfygatev1.SubmitRequest
	}{
		{"all fields", &comfygatev1.SubmitRequest{DeploymentId: "dep", InputJson: input, IdempotencyKey: "key-1"}},
		{"input only", &comfygatev1.SubmitRequest{InputJson: input}},
		{"small", &comfygatev1.SubmitRequest{DeploymentId: "dep", InputJson: `{"a":1}`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := proto.Clone(tc.req).(*comfygatev1.SubmitRequest)
			wire, err := newGatewayCodec().Marshal(tc.req)
			if err != nil {
				t.Fatal(err)
			}
			var got comfygatev1.SubmitRequest
			if err := newCodec().Unmarshal(chunked(wire.Materialize(), 16<<10), &got); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(&got, want) {
				t.Errorf("decoded %v, want %v", got.GetDeploymentId(), want.GetDeploymentId())
			}
			if large := len(want.GetInputJson()) >= largeSubmit; large && tc.req.GetInputJson() != "" {
				t.Errorf("the gateway's request still holds its input")
			}
		})
	}
}
