package server

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
)

// TestEventCache: every watcher of a request on one replica gets the same
// encoding of a record (one Marshal, however many watchers), which decodes to
// exactly what encoding the record directly gives; another seq, or the same
// seq of a request that expired and started again, is another event.
func TestEventCache(t *testing.T) {
	c := newEventCache(4, nil)
	at := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	pos := int64(3)
	rec := &state.Record{RequestID: "req-1", DeploymentID: "dep-1", State: runcomfy.StateQueued, UpstreamStatus: "in_queue",
		QueuePosition: &pos, Seq: 2, CreatedAt: at, UpdatedAt: at}

	first, err := c.event(rec)
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.event(rec.Clone()) // another watcher's copy of the same record
	if err != nil {
		t.Fatal(err)
	}
	if first != again {
		t.Errorf("the same record was encoded twice")
	}
	var got comfygatev1.WatchRequestResponse
	if err := proto.Unmarshal(first.b, &got); err != nil {
		t.Fatal(err)
	}
	if want := (&comfygatev1.WatchRequestResponse{Request: recordToProto(rec, nil)}); !proto.Equal(&got, want) {
		t.Errorf("encoded event decodes to %v, want %v", &got, want)
	}

	tests := []struct {
		name   string
		change func(*state.Record)
	}{
		{"next seq", func(r *state.Record) { r.Seq++ }},
		{"same seq after the request expired and started again", func(r *state.Record) { r.UpdatedAt = r.UpdatedAt.Add(time.Hour) }},
		{"another request", func(r *state.Record) { r.RequestID = "req-2" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			other := rec.Clone()
			tt.change(other)
			ev, err := c.event(other)
			if err != nil {
				t.Fatal(err)
			}
			if ev == first {
				t.Errorf("a different record got the cached event of seq %d", rec.Seq)
			}
		})
	}

	// Bounded: older events are evicted and encoded again when asked for.
	for i := range 10 {
		r := rec.Clone()
		r.RequestID = fmt.Sprintf("req-fill-%d", i)
		if _, err := c.event(r); err != nil {
			t.Fatal(err)
		}
	}
	if n := c.c.Len(); n != 4 {
		t.Errorf("cache holds %d events, want its size 4", n)
	}
	if ev, _ := c.event(rec); ev == first {
		t.Errorf("an evicted event was still served from the cache")
	}
}

// TestEventCacheLastRecord: the hub hands every watcher of a request the
// same record, one after the other; the record asked for last is served by
// its pointer, without the cache, and a record asked for after it is not
// mistaken for it.
func TestEventCacheLastRecord(t *testing.T) {
	c := newEventCache(1, nil)
	at := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	rec := &state.Record{RequestID: "req-1", DeploymentID: "dep-1", State: runcomfy.StateRunning, UpstreamStatus: "in_progress", Seq: 2, CreatedAt: at, UpdatedAt: at}
	first, err := c.event(rec)
	if err != nil {
		t.Fatal(err)
	}
	// Evict it from the cache behind the record's back: only the last
	// record's slot can still serve it.
	c.c.Put(eventKey{requestID: "elsewhere"}, &encodedMessage{})
	if again, _ := c.event(rec); again != first {
		t.Error("the record asked for last was encoded again")
	}
	next := rec.Clone()
	next.Seq, next.State, next.UpstreamStatus = 3, runcomfy.StateSucceeded, "succeeded"
	ev, err := c.event(next)
	if err != nil {
		t.Fatal(err)
	}
	var got comfygatev1.WatchRequestResponse
	if err := proto.Unmarshal(ev.b, &got); err != nil || got.GetRequest().GetSeq() != 3 {
		t.Errorf("the next record was served as seq %d (%v), want 3", got.GetRequest().GetSeq(), err)
	}
}

// TestCodecPassesEncodedEvents: the server codec sends an encoded event byte
// for byte and encodes every other message as the proto codec does.
func TestCodecPassesEncodedEvents(t *testing.T) {
	c := newCodec(nil)
	raw := &encodedMessage{b: []byte{0x0a, 0x02, 0x08, 0x01}}
	out, err := c.Marshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	if got := out.Materialize(); string(got) != string(raw.b) {
		t.Errorf("encoded message sent as %x, want %x", got, raw.b)
	}
	msg := &comfygatev1.GetStatusRequest{DeploymentId: "dep-1", RequestId: "req-1"}
	out, err = c.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := proto.Marshal(msg)
	if got := out.Materialize(); string(got) != string(want) {
		t.Errorf("a plain message encoded as %x, want %x", got, want)
	}
	var back comfygatev1.GetStatusRequest
	if err := c.Unmarshal(out, &back); err != nil || !proto.Equal(&back, msg) {
		t.Errorf("Unmarshal = %v, %v; want %v", &back, err, msg)
	}
}
