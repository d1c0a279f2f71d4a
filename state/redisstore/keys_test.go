package redisstore

import (
	"fmt"
	"testing"

	"github.com/comfygate/comfygate/runcomfy"
)

// TestCRC16 pins the slot function against the specification's check value
// and CLUSTER KEYSLOT's answers (TestKeysOnCluster asks a real cluster).
func TestCRC16(t *testing.T) {
	for _, c := range []struct {
		in   string
		want uint16
	}{
		{"123456789", 0x31C3}, // the specification's check value
		{"", 0},
		{"foo", 12182},     // CLUSTER KEYSLOT foo
		{"user1000", 3443}, // CLUSTER KEYSLOT user1000
	} {
		got := crc16(c.in)
		if c.in == "foo" || c.in == "user1000" {
			got %= clusterSlots
		}
		if got != c.want {
			t.Errorf("crc16(%q) = %d, want %d", c.in, got, c.want)
		}
	}
}

// TestBucketTags: each bucket's tag hashes into its own share of the slot
// space, so N buckets spread evenly over any split of the slots.
func TestBucketTags(t *testing.T) {
	for _, n := range []int{1, 3, 16, 100, MaxBuckets} {
		tags := bucketTags(n)
		if len(tags) != n {
			t.Fatalf("bucketTags(%d) has %d tags", n, len(tags))
		}
		for i, tag := range tags {
			slot := int(crc16(tag[1:len(tag)-1]) % clusterSlots)
			if lo, hi := i*clusterSlots/n, (i+1)*clusterSlots/n; slot < lo || slot >= hi {
				t.Errorf("n=%d: bucket %d tag %s in slot %d, want [%d, %d)", n, i, tag, slot, lo, hi)
			}
		}
	}
}

// TestBucketedKeysShareASlot: in the bucketed layout every key a request's
// save script touches is in one slot, whatever the request id and owner
// hold; the classic layout keeps the names of versions before buckets.
func TestBucketedKeysShareASlot(t *testing.T) {
	k := NewKeys("cg:", 16)
	seen := map[int]bool{}
	for i := range 200 {
		id := fmt.Sprintf("req-%d-{x}", i)
		b := k.Bucket(id)
		seen[b] = true
		keys := []string{
			k.Record(id), k.About(id), k.Channel(id), k.Outbox(id), k.Lease(id), k.Deliveries(id), k.OutboxLease(id),
			k.Jobs(b), k.Retries(b), k.Pending(b), k.Pause(b),
			k.Queue(b, "copies"), k.List(b, "{tenant}", "", runcomfy.StateQueued), k.List(b, "t", "dep", runcomfy.StateRunning),
			k.Usage(b, "t{1}", 490000),
		}
		for _, key := range keys {
			if keySlot(key) != keySlot(keys[0]) {
				t.Fatalf("%s: key %s in slot %d, record %s in %d", id, key, keySlot(key), keys[0], keySlot(keys[0]))
			}
		}
	}
	if len(seen) != 16 {
		t.Errorf("200 ids fell in %d of 16 buckets", len(seen))
	}
	classic := NewKeys("cg:", 0)
	for got, want := range map[string]string{
		classic.Record("r1"):                            "cg:req:{r1}",
		classic.Channel("r1"):                           "cg:events:{r1}",
		classic.Pending(0):                              "cg:{pending}",
		classic.Pause(0):                                "cg:{poll-pause}",
		classic.Jobs(0):                                 "cg:{hooks}",
		classic.Retries(0):                              "cg:{hooks}:due",
		classic.Queue(0, "q"):                           "cg:{queue:q}",
		classic.Usage(0, "t", 5):                        "cg:usage:{t}:5",
		classic.List(0, "t", "d", runcomfy.StateQueued): "cg:ls:{t}:d:" + runcomfy.StateQueued.String(),
	} {
		if got != want {
			t.Errorf("classic key %q, want %q", got, want)
		}
	}
}

// TestKeySlot: a key's slot is its hash tag's (the first {...} with
// something in it), or the whole key's, as Redis Cluster computes it.
func TestKeySlot(t *testing.T) {
	for key, same := range map[string]string{
		"{user1000}.following": "user1000",
		"foo{}{bar}":           "foo{}{bar}",
		"foo{{bar}}zap":        "{bar",
		"foo{bar}{zap}":        "bar",
		"plain":                "plain",
	} {
		if got, want := keySlot(key), int(crc16(same)%clusterSlots); got != want {
			t.Errorf("keySlot(%q) = %d, want %d (the slot of %q)", key, got, want, same)
		}
	}
}
