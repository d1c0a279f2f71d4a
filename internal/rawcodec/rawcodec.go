// Package rawcodec is a gRPC codec for tests that send a message's bytes as
// they are: bytes that are not the method's protobuf, as a client that does
// not speak it would send, or a large message encoded once and sent by many
// callers without each encoding it again.
package rawcodec

import (
	"fmt"

	"google.golang.org/grpc/mem"
)

// Codec sends a *[]byte as the message's bytes and reads an answer into a
// *[]byte. Use it with grpc.ForceCodecV2; it names itself "proto", so the
// server reads the call as an ordinary protobuf one.
type Codec struct{}

// Marshal returns the bytes v points at, unchanged.
func (Codec) Marshal(v any) (mem.BufferSlice, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("rawcodec: a message must be a *[]byte, not %T", v)
	}
	return mem.BufferSlice{mem.SliceBuffer(*b)}, nil
}

// Unmarshal copies the answer's bytes into the *[]byte v.
func (Codec) Unmarshal(data mem.BufferSlice, v any) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawcodec: an answer must be read into a *[]byte, not %T", v)
	}
	*b = data.Materialize()
	return nil
}

// Name is "proto", the content subtype the server expects.
func (Codec) Name() string { return "proto" }
