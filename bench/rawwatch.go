package main

import (
	"errors"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// The fan-out's watchers receive hundreds of thousands of messages a
// second. Decoding each into the generated structs costs the harness
// several µs a delivery, CPU taken from the servers it measures on the same
// cores, so the watchers take each message's bytes as they came and read
// only the two fields they count with: the request's seq and queue
// position.

// Field numbers in proto/comfygate/v1/gateway.proto: WatchRequestResponse
// .request, RequestState.queue_position and RequestState.seq.
// TestWatchFields holds them to the generated code.
const (
	watchFieldRequest    protowire.Number = 1
	requestFieldQueuePos protowire.Number = 5
	requestFieldSeq      protowire.Number = 13
)

// rawCodecName is the codec's name, which gRPC sends as the content
// subtype: the server's proto codec's, as the server decodes the request
// and encodes the responses as ever.
const rawCodecName = "proto"

var errMalformedWatch = errors.New("malformed WatchRequestResponse")

// rawWatchCodec is the proto codec, except that it hands a *rawWatch the
// message's bytes instead of decoding them. Forced on a call
// (rawWatchCall), it leaves the request and any other message (the
// snapshot a watcher receives first) to the proto codec.
type rawWatchCodec struct{ proto encoding.CodecV2 }

// newRawWatchCodec wraps the registered proto codec.
func newRawWatchCodec() rawWatchCodec {
	return rawWatchCodec{proto: encoding.GetCodecV2(rawCodecName)}
}

// rawWatchCall forces a rawWatchCodec on a WatchRequest call.
func rawWatchCall() grpc.CallOption { return grpc.ForceCodecV2(newRawWatchCodec()) }

func (c rawWatchCodec) Marshal(v any) (mem.BufferSlice, error) { return c.proto.Marshal(v) }

func (c rawWatchCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if r, ok := v.(*rawWatch); ok {
		// gRPC frees data once Unmarshal returns: the reference taken here
		// keeps it until the watcher has read it (rawWatch.parse).
		r.buf = data.MaterializeToBuffer(mem.DefaultBufferPool())
		return nil
	}
	return c.proto.Unmarshal(data, v)
}

func (rawWatchCodec) Name() string { return rawCodecName }

// rawWatch is one WatchRequestResponse as received, not decoded.
type rawWatch struct{ buf mem.Buffer }

// parse reads the message's seq and queue position and frees its bytes.
func (r *rawWatch) parse() (seq int64, pos int32, hasPos bool, err error) {
	if r.buf == nil {
		return 0, 0, false, errors.New("no message")
	}
	seq, pos, hasPos, err = watchFields(r.buf.ReadOnlyData())
	r.buf.Free()
	r.buf = nil
	return seq, pos, hasPos, err
}

// watchFields reads request.seq and request.queue_position from an encoded
// WatchRequestResponse, as proto.Unmarshal would decode them: a field that
// occurs more than once takes its last value (messages merge), fields of
// other numbers or of the wrong wire type are skipped (proto keeps them as
// unknown fields).
func watchFields(b []byte) (seq int64, pos int32, hasPos bool, err error) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, 0, false, errMalformedWatch
		}
		b = b[n:]
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return 0, 0, false, errMalformedWatch
		}
		if num == watchFieldRequest && typ == protowire.BytesType {
			req, _ := protowire.ConsumeBytes(b[:m])
			if err := requestFields(req, &seq, &pos, &hasPos); err != nil {
				return 0, 0, false, err
			}
		}
		b = b[m:]
	}
	return seq, pos, hasPos, nil
}

// requestFields updates seq and pos from the fields of an encoded
// RequestState.
func requestFields(b []byte, seq *int64, pos *int32, hasPos *bool) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return errMalformedWatch
		}
		b = b[n:]
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return errMalformedWatch
		}
		if typ == protowire.VarintType && (num == requestFieldSeq || num == requestFieldQueuePos) {
			v, _ := protowire.ConsumeVarint(b[:m])
			if num == requestFieldSeq {
				*seq = int64(v)
			} else {
				*pos, *hasPos = int32(v), true
			}
		}
		b = b[m:]
	}
	return nil
}
