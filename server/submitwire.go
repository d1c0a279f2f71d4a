package server

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
	"unsafe"

	"google.golang.org/grpc/encoding"
	protoenc "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// A submit's input may be tens of megabytes of base64 media. On its way from
// a REST body to RunComfy it crosses the REST gateway, the loopback gRPC hop
// and the service, and each crossing would otherwise copy it: the input is
// held once, not once per layer. The REST decoder (gateway.go) reads the body
// into the string the request carries; the gateway's codec puts that string's
// bytes on the wire as they are and lets the request drop it; the server's
// codec reads the wire into one new string; Submit hands that string's bytes
// to the RunComfy client as they are.

// largeSubmit is the size from which a SubmitRequest takes the paths below;
// smaller ones go through the proto codec, where copies cost nothing.
const largeSubmit = 64 << 10

// bytesOf is s's bytes without a copy. The result must never be written to:
// strings are immutable, and other code may hold s.
func bytesOf(s string) []byte {
	return unsafe.Slice(unsafe.StringData(s), len(s))
}

// gatewayCodec is the REST gateway's client codec: the proto codec, except
// that a large SubmitRequest is sent with its input's bytes as they are, and
// the request then lets go of its input. The REST gateway builds each request
// for one call and never reads it again, so once the input is on its way the
// transport holds the only reference, and frees it once written.
type gatewayCodec struct{ encoding.CodecV2 }

func newGatewayCodec() gatewayCodec { return gatewayCodec{encoding.GetCodecV2(protoenc.Name)} }

func (c gatewayCodec) Marshal(v any) (mem.BufferSlice, error) {
	req, ok := v.(*comfygatev1.SubmitRequest)
	if !ok || len(req.GetInputJson()) < largeSubmit {
		return c.CodecV2.Marshal(v)
	}
	input := req.GetInputJson()
	rest, err := proto.Marshal(&comfygatev1.SubmitRequest{DeploymentId: req.GetDeploymentId(), IdempotencyKey: req.GetIdempotencyKey()})
	if err != nil {
		return nil, fmt.Errorf("encode submit: %w", err)
	}
	if !utf8.ValidString(input) {
		// As the proto codec would refuse it.
		return nil, errors.New("encode submit: input_json is not valid UTF-8")
	}
	// Fields may come in any order on the wire: the input goes last.
	rest = protowire.AppendTag(rest, inputJSONField, protowire.BytesType)
	rest = protowire.AppendVarint(rest, uint64(len(input)))
	req.InputJson = ""
	return mem.BufferSlice{mem.SliceBuffer(rest), mem.SliceBuffer(bytesOf(input))}, nil
}

// errNotFastPath: the message holds what unmarshalSubmit leaves to the proto
// codec.
var errNotFastPath = errors.New("decode submit: not on the fast path")

// inputJSONField is SubmitRequest.input_json's field number.
const inputJSONField = 2

// unmarshalSubmit decodes a SubmitRequest from data into req, copying the
// input once, straight from the received frames into its string. The
// result is what proto.Unmarshal gives, unknown fields aside (dropped: the
// service reads none).
func unmarshalSubmit(data mem.BufferSlice, req *comfygatev1.SubmitRequest) error {
	r := data.Reader()
	defer r.Close()
	proto.Reset(req)
	for r.Remaining() > 0 {
		tag, err := readVarint(r)
		if err != nil {
			return err
		}
		num, typ := protowire.Number(tag>>3), protowire.Type(tag&7)
		if num < protowire.MinValidNumber || num > protowire.MaxValidNumber {
			return errors.New("decode submit: invalid field number")
		}
		// A known field with another wire type is an unknown field to
		// proto.Unmarshal, and skipped like one.
		known := num >= 1 && num <= 3 && typ == protowire.BytesType
		switch typ {
		case protowire.VarintType:
			_, err = readVarint(r)
		case protowire.Fixed32Type:
			err = discard(r, 4)
		case protowire.Fixed64Type:
			err = discard(r, 8)
		case protowire.BytesType:
			var n uint64
			if n, err = readVarint(r); err != nil {
				return err
			}
			if n > uint64(r.Remaining()) {
				return io.ErrUnexpectedEOF
			}
			if !known {
				err = discard(r, int(n))
				break
			}
			var s string
			if s, err = readString(r, int(n)); err != nil {
				return err
			}
			switch num {
			case 1:
				req.DeploymentId = s
			case inputJSONField:
				req.InputJson = s
			case 3:
				req.IdempotencyKey = s
			}
		default:
			// Groups are not proto3's and nothing sends them; the proto
			// codec knows how to skip them.
			return errNotFastPath
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// readString reads n bytes into a new string, with no intermediate copy,
// and checks that they are UTF-8, as proto3 requires of strings.
func readString(r *mem.Reader, n int) (string, error) {
	var b strings.Builder
	b.Grow(n)
	if _, err := io.CopyN(&b, r, int64(n)); err != nil {
		return "", fmt.Errorf("decode submit: %w", io.ErrUnexpectedEOF)
	}
	s := b.String()
	if !utf8.ValidString(s) {
		return "", errors.New("decode submit: string field contains invalid UTF-8")
	}
	return s, nil
}

func readVarint(r *mem.Reader) (uint64, error) {
	var v uint64
	for shift := uint(0); shift < 64; shift += 7 {
		b, err := r.ReadByte()
		if err != nil {
			return 0, fmt.Errorf("decode submit: %w", io.ErrUnexpectedEOF)
		}
		if shift == 63 && b > 1 {
			return 0, errors.New("decode submit: varint overflows 64 bits")
		}
		v |= uint64(b&0x7f) << shift
		if b < 0x80 {
			return v, nil
		}
	}
	return 0, errors.New("decode submit: varint overflows 64 bits")
}

func discard(r *mem.Reader, n int) error {
	if got, _ := r.Discard(n); got != n {
		return fmt.Errorf("decode submit: %w", io.ErrUnexpectedEOF)
	}
	return nil
}
