package main

import (
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// TestWatchFields holds the field numbers the fan-out's watchers read by
// hand to the generated code.
func TestWatchFields(t *testing.T) {
	check := func(m protoreflect.ProtoMessage, name protoreflect.Name, num protowire.Number, kind protoreflect.Kind) {
		t.Helper()
		fd := m.ProtoReflect().Descriptor().Fields().ByName(name)
		if fd == nil {
			t.Fatalf("%s has no field %s", m.ProtoReflect().Descriptor().FullName(), name)
		}
		if fd.Number() != num || fd.Kind() != kind || fd.Cardinality() == protoreflect.Repeated {
			t.Errorf("%s: number %d, kind %s, want %d, %s, not repeated", fd.FullName(), fd.Number(), fd.Kind(), num, kind)
		}
	}
	check(&comfygatev1.WatchRequestResponse{}, "request", watchFieldRequest, protoreflect.MessageKind)
	check(&comfygatev1.RequestState{}, "seq", requestFieldSeq, protoreflect.Int64Kind)
	check(&comfygatev1.RequestState{}, "queue_position", requestFieldQueuePos, protoreflect.Int32Kind)
}

// TestWatchFieldsParse checks that the watchers' raw parse reads the seq
// and queue position proto.Unmarshal decodes, from encoded messages.
func TestWatchFieldsParse(t *testing.T) {
	pos := func(p int32) *int32 { return &p }
	full := func(seq int64, p *int32) *comfygatev1.WatchRequestResponse {
		out, err := structpb.NewStruct(map[string]any{"images": []any{"a.png", "b.png"}, "n": 3})
		if err != nil {
			t.Fatal(err)
		}
		return &comfygatev1.WatchRequestResponse{Request: &comfygatev1.RequestState{
			RequestId: "fan-0", DeploymentId: benchDep, Status: comfygatev1.Status(2), UpstreamStatus: "in_queue",
			QueuePosition: p, InstanceId: "i-1", Outputs: out, OutputUrls: []string{"https://x/a.png"},
			CreatedAt: timestamppb.Now(), Seq: seq, Epoch: 7, SyncedAt: timestamppb.Now(),
		}}
	}
	enc := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// unknown appends fields the proto does not have, of every wire type,
	// and a known field (seq) of the wrong wire type, which proto keeps as
	// unknown.
	unknown := func(b []byte) []byte {
		b = protowire.AppendTag(b, 99, protowire.VarintType)
		b = protowire.AppendVarint(b, 12345)
		b = protowire.AppendTag(b, 100, protowire.BytesType)
		b = protowire.AppendBytes(b, []byte("not a field"))
		b = protowire.AppendTag(b, 101, protowire.Fixed32Type)
		b = protowire.AppendFixed32(b, 1)
		b = protowire.AppendTag(b, 102, protowire.Fixed64Type)
		b = protowire.AppendFixed64(b, 2)
		b = protowire.AppendTag(b, 103, protowire.StartGroupType)
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, 3)
		b = protowire.AppendTag(b, 103, protowire.EndGroupType)
		b = protowire.AppendTag(b, requestFieldSeq, protowire.BytesType)
		return protowire.AppendBytes(b, []byte{1, 2, 3})
	}
	withUnknown := func() []byte {
		// An unknown field before and after the request, and unknown
		// fields inside it.
		req := unknown(enc(full(41, pos(12)).Request))
		b := unknown(nil)
		b = protowire.AppendTag(b, watchFieldRequest, protowire.BytesType)
		b = protowire.AppendBytes(b, req)
		return unknown(b)
	}
	cases := map[string][]byte{
		"full":                          enc(full(1234567, pos(999_000))),
		"no queue position":             enc(full(5, nil)),
		"queue position 0":              enc(full(6, pos(0))),
		"negative queue":                enc(full(7, pos(-1))),
		"large seq":                     enc(full(1<<40+3, pos(1))),
		"only seq":                      enc(&comfygatev1.WatchRequestResponse{Request: &comfygatev1.RequestState{Seq: 9}}),
		"empty request":                 enc(&comfygatev1.WatchRequestResponse{Request: &comfygatev1.RequestState{}}),
		"no request":                    nil,
		"unknown fields":                withUnknown(),
		"request twice (merged)":        append(enc(full(10, pos(3))), enc(full(11, nil))...),
		"request twice, later position": append(enc(full(10, nil)), enc(&comfygatev1.WatchRequestResponse{Request: &comfygatev1.RequestState{QueuePosition: pos(4)}})...),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			var want comfygatev1.WatchRequestResponse
			if err := proto.Unmarshal(b, &want); err != nil {
				t.Fatalf("proto.Unmarshal: %v", err)
			}
			seq, p, hasPos, err := watchFields(b)
			if err != nil {
				t.Fatalf("watchFields: %v", err)
			}
			r := want.GetRequest()
			wantHas := r != nil && r.QueuePosition != nil
			if seq != r.GetSeq() || p != r.GetQueuePosition() || hasPos != wantHas {
				t.Errorf("watchFields: seq %d, position %d (%v); proto.Unmarshal: seq %d, position %d (%v)",
					seq, p, hasPos, r.GetSeq(), r.GetQueuePosition(), wantHas)
			}

			// Through the codec, the bytes split over two buffers as gRPC
			// may hand them.
			h := len(b) / 2
			data := mem.BufferSlice{mem.SliceBuffer(b[:h]), mem.SliceBuffer(b[h:])}
			var raw rawWatch
			codec := newRawWatchCodec()
			if err := codec.Unmarshal(data, &raw); err != nil {
				t.Fatal(err)
			}
			data.Free()
			if s2, p2, h2, err := raw.parse(); err != nil || s2 != seq || p2 != p || h2 != hasPos {
				t.Errorf("through the codec: seq %d, position %d (%v), %v; want %d, %d (%v)", s2, p2, h2, err, seq, p, hasPos)
			}
			// Any other message is decoded as by the proto codec.
			var got comfygatev1.WatchRequestResponse
			if err := codec.Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, &got); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(&got, &want) {
				t.Errorf("the codec decoded %v, want %v", &got, &want)
			}
		})
	}
}

func TestWatchFieldsMalformed(t *testing.T) {
	b, err := proto.Marshal(&comfygatev1.WatchRequestResponse{Request: &comfygatev1.RequestState{Seq: 300, RequestId: "fan-0"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, cut := range []int{1, 3, len(b) - 1} {
		if _, _, _, err := watchFields(b[:cut]); err == nil {
			t.Errorf("watchFields parsed %d of %d bytes", cut, len(b))
		}
	}
}
