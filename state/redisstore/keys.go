package redisstore

import (
	"hash/crc32"
	"strconv"
	"strings"

	"github.com/comfygate/comfygate/runcomfy"
)

// Every Redis key and channel comfygate uses is named here, under a
// configurable prefix (default "comfygate:"), in one of two layouts.
//
// The classic layout (Options.Buckets 0, one server) is listed below: the
// request id is the hash tag ({...}) of the request's keys, and the keys
// every request shares (the poll schedule, the delivery jobs) are one key
// each.
//
// The bucketed layout (Options.Buckets N > 0, and any Redis Cluster) splits
// the shared keys into N buckets, each with a hash tag of its own chosen so
// that the N tags fall in N evenly spaced ranges of the 16384 hash slots
// (bucketTags). A request belongs to bucket crc32(id) mod N, and the keys its
// save script writes carry its bucket's tag instead of the request id:
//
//	<prefix>req:<tag><request_id>     and about:, events:, hooks:, hookdel:,
//	                                  hooklease:, lease: the same
//	<prefix><tag>pending              the bucket's poll schedule
//	<prefix><tag>poll-pause           the poll pause (written to every bucket)
//	<prefix><tag>hooks, <tag>hooks:due the bucket's delivery jobs and retries
//	<prefix>ls:<tag><owner>:...       the owner's listing indexes in the bucket
//	<prefix>usage:<tag><owner>:<hour> the owner's usage in the bucket
//	<prefix><tag>queue:<name>         the bucket's part of a work queue
//
// so that every script touches one slot and every shared structure is spread
// over the cluster. The keys of no request (idempotency entries, rate
// buckets, concurrency counts) keep their layout.
//
//	<prefix>req:{<request_id>}     hash: seq, rank, epoch, data (the record as
//	                                JSON), synced (Touch); expires after the
//	                                retention period
//	<prefix>about:{<request_id>}   string: the request's description for the
//	                                poll schedule (deployment, owner, creation),
//	                                written with the record while unfinished
//	<prefix>events:{<request_id>}  pub/sub channel: the record as JSON, once per
//	                                applied update, in seq order
//	<prefix>lease:{<request_id>}   string: the replica polling the request now;
//	                                expires by itself (a replica may die)
//	<prefix>{pending}              sorted set: unfinished requests scored by the
//	                                time (ms) they are next due for a poll; one
//	                                key for all requests, in a slot of its own
//	<prefix>{poll-pause}           string: the time (ms) until which no replica
//	                                polls, after a 429; expires then
//	<prefix>layout                  string: the number of buckets the keys
//	                                are named in (0 here), set by the first
//	                                replica to start, checked by the others
//	<prefix>idem:{<key>}           string: an idempotency entry as JSON (the
//	                                key is the caller's hashed scope and key);
//	                                expires after 24 hours
//	<prefix>rate:{<tenant>}:<limit> string: a tenant's submit or read bucket
//	                                (GCRA, ratelimit.go); expires once full
//	<prefix>hooks:{<request_id>}   stream: the request's webhook events, in
//	                                order, appended by the save that records
//	                                each; expires after the retention period
//	<prefix>hookdel:{<request_id>} hash: the request's webhook deliveries
//	                                (event id and endpoint -> JSON)
//	<prefix>hooklease:{<request_id>} string: the replica delivering the
//	                                request's events now; expires by itself
//	<prefix>{hooks}                stream: delivery jobs (a request id each),
//	                                read by the consumer group "deliverers"
//	<prefix>ls:{<owner>}:<state>    sorted set: the owner's requests in a
//	                                state, scored by creation time (ms);
//	                                written by the save script, expires
//	                                after the last record in it
//	<prefix>ls:{<owner>}:<deployment>:<state> the same, for one deployment
//	<prefix>usage:{<owner>}:<hour>  hash: the owner's requests that ended in
//	                                that Unix hour, counted by the save
//	                                script (state/usage.go); 90 days
//	<prefix>cap:{<deployment>}      sorted set: a capped deployment's
//	                                unfinished requests and submits under
//	                                way, scored by when each place expires
//	                                (ms); a final save removes its request
//	                                (slots.go)
//	<prefix>cap:{<deployment>}:<tenant> the same, for one tenant
//	<prefix>{hooks}:due            sorted set: requests whose deliveries are
//	                                retried later, scored by when (ms); in
//	                                the jobs stream's slot, so one script
//	                                moves due ones into it

// DefaultPrefix is the key prefix when none is configured.
const DefaultPrefix = "comfygate:"

// MaxBuckets bounds Options.Buckets: a listing or usage read touches every
// bucket.
const MaxBuckets = 1024

// Keys names every key of one layout. The zero number of buckets is the
// classic layout.
type Keys struct {
	prefix string
	// tags are the buckets' hash tags, braces included; nil in the classic
	// layout.
	tags []string
}

// NewKeys returns the names of keys under prefix split over buckets buckets
// (0: the classic layout). Tests that lose data on purpose, or read what a
// replica stored, name keys with it.
func NewKeys(prefix string, buckets int) Keys {
	return Keys{prefix: prefix, tags: bucketTags(buckets)}
}

// bucketTags finds, for each of n buckets, the first hash tag "{b<i>.<k>}"
// whose slot lies in the bucket's share of the slot space, so that the
// buckets spread evenly over a cluster's masters however the slots are
// split between them.
func bucketTags(n int) []string {
	if n <= 0 {
		return nil
	}
	tags := make([]string, n)
	for i := range n {
		lo, hi := i*clusterSlots/n, (i+1)*clusterSlots/n
		for k := 0; ; k++ {
			t := "b" + strconv.Itoa(i) + "." + strconv.Itoa(k)
			if s := int(crc16(t) % clusterSlots); s >= lo && s < hi {
				tags[i] = "{" + t + "}"
				break
			}
		}
	}
	return tags
}

// Buckets is the number of buckets: 1 in the classic layout.
func (k Keys) Buckets() int { return max(len(k.tags), 1) }

// Bucket is the bucket of requestID.
func (k Keys) Bucket(requestID string) int {
	if len(k.tags) == 0 {
		return 0
	}
	return int(crc32.ChecksumIEEE([]byte(requestID)) % uint32(len(k.tags)))
}

// perRequest is kind's key of requestID: the request id as its hash tag,
// or its bucket's tag.
func (k Keys) perRequest(kind, requestID string) string {
	if k.tags == nil {
		return k.prefix + kind + ":{" + requestID + "}"
	}
	return k.prefix + kind + ":" + k.tags[k.Bucket(requestID)] + requestID
}

// shared is the bucket's key named name; in the classic layout the name in
// braces.
func (k Keys) shared(bucket int, name string) string {
	if k.tags == nil {
		return k.prefix + "{" + name + "}"
	}
	return k.prefix + k.tags[bucket] + name
}

// Record is the key of a request's record.
func (k Keys) Record(requestID string) string { return k.perRequest("req", requestID) }

// About is the key of a scheduled request's description.
func (k Keys) About(requestID string) string { return k.perRequest("about", requestID) }

// Channel is the pub/sub channel of a request's updates.
func (k Keys) Channel(requestID string) string { return k.perRequest("events", requestID) }

// Outbox is the stream of a request's webhook events.
func (k Keys) Outbox(requestID string) string { return k.perRequest("hooks", requestID) }

// LayoutKey holds the number of buckets the keys under the prefix are
// named in (0: the classic layout), written by the first replica that
// starts (Backend.Check).
func (k Keys) LayoutKey() string { return k.prefix + "layout" }

// GenerationKey names the data Redis holds under the prefix: a random token
// that the first replica to find it missing writes. A replica that finds
// another token than the one it saw knows Redis lost what it held (Lost).
func (k Keys) GenerationKey() string { return k.prefix + "generation" }

// Lease is the key of a request's poll lease. In the bucketed layout it is
// in its bucket's slot too, although one command touches it alone: a
// request whose record a master serves is then never held up by another
// master's outage.
func (k Keys) Lease(requestID string) string { return k.perRequest("lease", requestID) }

// Deliveries is the hash of a request's webhook deliveries.
func (k Keys) Deliveries(requestID string) string { return k.perRequest("hookdel", requestID) }

// OutboxLease is the key of a request's webhook delivery lease: its value
// names the replica delivering the request's events.
func (k Keys) OutboxLease(requestID string) string { return k.perRequest("hooklease", requestID) }

// Pending is a bucket's poll schedule.
func (k Keys) Pending(bucket int) string { return k.shared(bucket, "pending") }

// Pause is a bucket's copy of the poll pause.
func (k Keys) Pause(bucket int) string { return k.shared(bucket, "poll-pause") }

// Jobs is a bucket's stream of webhook delivery jobs.
func (k Keys) Jobs(bucket int) string { return k.shared(bucket, "hooks") }

// Retries is a bucket's schedule of webhook delivery retries, in the slot
// of its jobs stream.
func (k Keys) Retries(bucket int) string { return k.Jobs(bucket) + ":due" }

// Queue is a bucket's part of the work queue name.
func (k Keys) Queue(bucket int, name string) string { return k.shared(bucket, "queue:"+name) }

// List is the listing index of owner's requests in state st, on deployment
// dep ("" for all of the owner's), in a bucket. In the classic layout the
// owner is the hash tag: every index of one tenant is in one slot.
func (k Keys) List(bucket int, owner, dep string, st runcomfy.State) string {
	tag := "{" + owner + "}"
	if k.tags != nil {
		tag = k.tags[bucket] + owner
	}
	if dep == "" {
		return k.prefix + "ls:" + tag + ":" + st.String()
	}
	return k.prefix + "ls:" + tag + ":" + dep + ":" + st.String()
}

// Usage is the usage bucket of owner's requests that ended in the Unix hour
// hour, in the slot of the owner's listing indexes.
func (k Keys) Usage(bucket int, owner string, hour int64) string {
	tag := "{" + owner + "}"
	if k.tags != nil {
		tag = k.tags[bucket] + owner
	}
	return k.prefix + "usage:" + tag + ":" + strconv.FormatInt(hour, 10)
}

// RecordKey is the key of a request's record under prefix, in the classic
// layout.
func RecordKey(prefix, requestID string) string { return NewKeys(prefix, 0).Record(requestID) }

// LeaseKey is the key of a request's poll lease under prefix.
func LeaseKey(prefix, requestID string) string { return NewKeys(prefix, 0).Lease(requestID) }

// Channel is the pub/sub channel of a request's updates under prefix, in
// the classic layout.
func Channel(prefix, requestID string) string { return NewKeys(prefix, 0).Channel(requestID) }

// PendingKey is the key of the poll schedule under prefix, in the classic
// layout.
func PendingKey(prefix string) string { return NewKeys(prefix, 0).Pending(0) }

// OutboxLeaseKey is the key of a request's webhook delivery lease under
// prefix, in the classic layout.
func OutboxLeaseKey(prefix, requestID string) string {
	return NewKeys(prefix, 0).OutboxLease(requestID)
}

// JobsKey is the stream of webhook delivery jobs under prefix, in the
// classic layout.
func JobsKey(prefix string) string { return NewKeys(prefix, 0).Jobs(0) }

// ListKey is the listing index of owner's requests in state st, on
// deployment dep ("" for all of the owner's), in the classic layout.
func ListKey(prefix, owner, dep string, st runcomfy.State) string {
	return NewKeys(prefix, 0).List(0, owner, dep, st)
}

// UsageKey is the usage bucket of owner's requests that ended in the Unix
// hour hour, in the classic layout.
func UsageKey(prefix, owner string, hour int64) string {
	return NewKeys(prefix, 0).Usage(0, owner, hour)
}

func (b *Backend) recordKey(requestID string) string { return b.keys.Record(requestID) }

func (b *Backend) channel(requestID string) string { return b.keys.Channel(requestID) }

func (b *Backend) leaseKey(requestID string) string { return b.keys.Lease(requestID) }

// aboutKey holds the description of a scheduled request (deployment, owner,
// creation), written by the save script beside its record, so that an
// evicted record can be made again.
func (b *Backend) aboutKey(requestID string) string { return b.keys.About(requestID) }

// pendingKey is the poll schedule of requestID's bucket.
func (b *Backend) pendingKey(requestID string) string {
	return b.keys.Pending(b.keys.Bucket(requestID))
}

func (b *Backend) idemKey(key string) string {
	return b.prefix + "idem:{" + key + "}"
}

func (b *Backend) outboxKey(requestID string) string { return b.keys.Outbox(requestID) }

func (b *Backend) deliveriesKey(requestID string) string { return b.keys.Deliveries(requestID) }

func (b *Backend) outboxLeaseKey(requestID string) string { return b.keys.OutboxLease(requestID) }

// jobsKey is the delivery job stream of requestID's bucket.
func (b *Backend) jobsKey(requestID string) string { return b.keys.Jobs(b.keys.Bucket(requestID)) }

// keySlot is the cluster slot of key: its hash tag's (the first {...} with
// something in it), or the whole key's.
func keySlot(key string) int {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	return int(crc16(key) % clusterSlots)
}

// clusterSlots is the number of Redis Cluster hash slots.
const clusterSlots = 16384

// crc16 is Redis Cluster's key hash (CRC16-CCITT, XMODEM): a key's slot is
// crc16 of its hash tag mod 16384.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}
