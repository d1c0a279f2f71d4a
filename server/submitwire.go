package server

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"unicode/utf8"
	"unsafe"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// A submit's input may be tens of megabytes of base64 media, and is held
// once on its way to RunComfy: a REST body is read into the string the
// request carries (gateway.go) and handed to the service by reference
// (handoff.go); a gRPC message is decoded straight from its frames into its
// string (unmarshalSubmit); Submit hands that string's bytes to the RunComfy
// client as they are (bytesOf).

// largeSubmit is the size from which a submit's input takes these paths;
// smaller ones go through the proto codec and the wire, where copies cost
// nothing.
const largeSubmit = 64 << 10

// bytesOf is s's bytes without a copy. The result must never be written to:
// strings are immutable, and other code may hold s.
func bytesOf(s string) []byte {
	return unsafe.Slice(unsafe.StringData(s), len(s))
}

// errNotFastPath: the message holds what unmarshalSubmit leaves to the proto
// codec.
var errNotFastPath = errors.New("decode submit: not on the fast path")

// inputJSONField is SubmitRequest.input_json's field number.
const inputJSONField = 2

// unmarshalSubmit decodes a SubmitRequest from data into req, copying the
// input once, straight from the received frames into its string. The
// result is what proto.Unmarshal gives: the other fields (the webhook, the
// deadlines, any unknown ones), small, are gathered as they came and decoded
// by the proto codec.
func unmarshalSubmit(data mem.BufferSlice, req *comfygatev1.SubmitRequest) error {
	r := data.Reader()
	defer r.Close()
	proto.Reset(req)
	var rest []byte
	var raw []byte // the field's bytes as received, for rest
	for r.Remaining() > 0 {
		tag, err := readVarint(r, &raw)
		if err != nil {
			return err
		}
		// The range is checked on the whole varint: Number is 32 bits, and
		// field 2^32+2 must not pass for field 2.
		if n := tag >> 3; n < uint64(protowire.MinValidNumber) || n > uint64(protowire.MaxValidNumber) {
			return errors.New("decode submit: invalid field number")
		}
		num, typ := protowire.Number(tag>>3), protowire.Type(tag&7)
		// A known field with another wire type is an unknown field to
		// proto.Unmarshal, and skipped like one.
		known := num >= 1 && num <= 3 && typ == protowire.BytesType
		if !known {
			rest = append(rest, raw...)
		}
		switch typ {
		case protowire.VarintType:
			_, err = readVarint(r, &raw)
			rest = append(rest, raw...)
		case protowire.Fixed32Type:
			rest, err = appendN(rest, r, 4)
		case protowire.Fixed64Type:
			rest, err = appendN(rest, r, 8)
		case protowire.BytesType:
			var n uint64
			if n, err = readVarint(r, &raw); err != nil {
				return err
			}
			if n > uint64(r.Remaining()) {
				return io.ErrUnexpectedEOF
			}
			if !known {
				rest = append(rest, raw...)
				rest, err = appendN(rest, r, int(n))
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
	if len(rest) > 0 {
		if err := (proto.UnmarshalOptions{Merge: true}).Unmarshal(rest, req); err != nil {
			return fmt.Errorf("decode submit: %w", err)
		}
	}
	return nil
}

// appendN appends the next n bytes of r to b.
func appendN(b []byte, r *mem.Reader, n int) ([]byte, error) {
	b = slices.Grow(b, n)
	got, _ := io.ReadFull(r, b[len(b):len(b)+n])
	if got != n {
		return b, fmt.Errorf("decode submit: %w", io.ErrUnexpectedEOF)
	}
	return b[:len(b)+n], nil
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

// readVarint reads a varint and sets *raw to its bytes as received (a
// non-minimal encoding is kept so).
func readVarint(r *mem.Reader, raw *[]byte) (uint64, error) {
	var v uint64
	*raw = (*raw)[:0]
	for shift := uint(0); shift < 64; shift += 7 {
		b, err := r.ReadByte()
		if err != nil {
			return 0, fmt.Errorf("decode submit: %w", io.ErrUnexpectedEOF)
		}
		*raw = append(*raw, b)
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
