package server

import (
	"errors"
	"fmt"
	"sync/atomic"

	"google.golang.org/grpc/encoding"
	protoenc "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/internal/ringcache"
	"github.com/comfygate/comfygate/state"
)

// encodedMessage is a message already in its wire form.
type encodedMessage struct{ b []byte }

// codec is gRPC's proto codec, except that it sends an encodedMessage as it
// is: a watch event goes to every watcher of a request on this replica, and is
// encoded once for all of them rather than once per stream.
type codec struct {
	encoding.CodecV2
	// failed, when set, takes the errors of the service's messages that do
	// not decode (undecodable), and Unmarshal reports success for them.
	failed *undecodable
}

func newCodec(failed *undecodable) codec {
	return codec{CodecV2: encoding.GetCodecV2(protoenc.Name), failed: failed}
}

func (c codec) Marshal(v any) (mem.BufferSlice, error) {
	if m, ok := v.(*encodedMessage); ok {
		// Shared by every stream it goes to, never written to: a plain
		// slice buffer, which nothing recycles.
		return mem.BufferSlice{mem.SliceBuffer(m.b)}, nil
	}
	return c.CodecV2.Marshal(v)
}

// Unmarshal decodes a large SubmitRequest straight from the received frames
// into its strings (submitwire.go); everything else as the proto codec does,
// but for a message (other than an upload's chunk) larger than any legitimate one of its kind, which is
// refused without being decoded (decoding copies it, twice).
func (c codec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.unmarshal(data, v)
	if err != nil && c.failed != nil && c.failed.put(v, err) {
		return nil
	}
	return err
}

// messageTooLargeError refuses a message larger than any legitimate one of
// its kind.
type messageTooLargeError struct {
	v        any
	size, at int
}

func (e *messageTooLargeError) Error() string {
	return fmt.Sprintf("a %T is at most %d bytes; this one has %d", e.v, e.at, e.size)
}

func (c codec) unmarshal(data mem.BufferSlice, v any) error {
	req, submit := v.(*comfygatev1.SubmitRequest)
	_, upload := v.(*comfygatev1.UploadRequest)
	_, submitAndWait := v.(*comfygatev1.SubmitAndWaitRequest)
	switch {
	case submit && data.Len() >= largeSubmit:
		if err := unmarshalSubmit(data, req); !errors.Is(err, errNotFastPath) {
			return err
		}
	case !submit && !upload && !submitAndWait && data.Len() > maxSmallMessage:
		return &messageTooLargeError{v: v, size: data.Len(), at: maxSmallMessage}
	}
	return c.CodecV2.Unmarshal(data, v)
}

// maxSmallMessage bounds every request message but a submit's (alone or in
// SubmitAndWait) and an upload's chunks (bounded by the server's message
// limit): ids of up to
// 128 characters, a seq, a health check's service name.
const maxSmallMessage = 64 << 10

// eventCacheSize bounds the encoded events kept: the latest few per request
// being watched are all that is asked for again.
const eventCacheSize = 1024

// eventKey names one record: a request's (epoch, seq), its update time in
// case the request expired and started again at seq 1 in the same epoch (a
// record from before epochs existed), and its sync time, which a touch moves
// without a new seq.
type eventKey struct {
	requestID string
	epoch     int64
	seq       int64
	updatedAt int64
	syncedAt  int64
}

// eventCache holds the wire form of recent watch events, so that all the
// watchers of one request on this replica share one encoding. It evicts the
// oldest first.
type eventCache struct {
	c    *ringcache.Cache[eventKey, *encodedMessage]
	urls ObjectURLs // signs stored outputs' URLs; nil without storage
	// last is the record asked for last and its encoding. The hub hands
	// every watcher of a request the same *Record, one watcher after the
	// other, so all but the first find it here by pointer, without the
	// lock and the hashing of the cache.
	last atomic.Pointer[lastEvent]
}

// lastEvent is a record, never changed once published, and its encoding.
type lastEvent struct {
	rec *state.Record
	m   *encodedMessage
}

func newEventCache(size int, urls ObjectURLs) *eventCache {
	return &eventCache{c: ringcache.New[eventKey, *encodedMessage](size), urls: urls}
}

// event returns r as an encoded WatchRequestResponse.
func (c *eventCache) event(r *state.Record) (*encodedMessage, error) {
	if l := c.last.Load(); l != nil && l.rec == r {
		return l.m, nil
	}
	k := eventKey{r.RequestID, r.Epoch, r.Seq, r.UpdatedAt.UnixNano(), r.SyncedAt.UnixNano()}
	m, ok := c.c.Get(k)
	if !ok {
		// Two watchers may both miss and both encode: the same bytes, once more.
		b, err := proto.Marshal(&comfygatev1.WatchRequestResponse{Request: recordToProto(r, c.urls)})
		if err != nil {
			return nil, fmt.Errorf("encode watch event: %w", err)
		}
		m = c.c.PutIfAbsent(k, &encodedMessage{b: b})
	}
	c.last.Store(&lastEvent{rec: r, m: m})
	return m, nil
}
