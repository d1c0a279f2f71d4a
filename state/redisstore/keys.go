package redisstore

import (
	"strconv"

	"github.com/comfygate/comfygate/runcomfy"
)

// Every Redis key and channel comfygate uses is named here, under a
// configurable prefix (default "comfygate:"). The request id is a hash tag
// ({...}), so every key of one request lands in one Redis Cluster hash slot: the
// Lua script that touches them stays valid on a cluster.
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

// RecordKey is the key of a request's record under prefix. Tests that lose
// data on purpose, or read what a replica stored, name keys with it.
func RecordKey(prefix, requestID string) string {
	return prefix + "req:{" + requestID + "}"
}

// LeaseKey is the key of a request's poll lease under prefix.
func LeaseKey(prefix, requestID string) string {
	return prefix + "lease:{" + requestID + "}"
}

// Channel is the pub/sub channel of a request's updates under prefix.
func Channel(prefix, requestID string) string {
	return prefix + "events:{" + requestID + "}"
}

// PendingKey is the key of the poll schedule under prefix.
func PendingKey(prefix string) string {
	return prefix + "{pending}"
}

func (b *Backend) recordKey(requestID string) string { return RecordKey(b.prefix, requestID) }

func (b *Backend) channel(requestID string) string { return Channel(b.prefix, requestID) }

func (b *Backend) leaseKey(requestID string) string { return LeaseKey(b.prefix, requestID) }

func (b *Backend) pendingKey() string { return PendingKey(b.prefix) }

// aboutKey holds the description of a scheduled request (deployment, owner,
// creation), written by the save script beside its record, so that an
// evicted record can be made again.
func (b *Backend) aboutKey(requestID string) string {
	return b.prefix + "about:{" + requestID + "}"
}

func (b *Backend) pauseKey() string {
	return b.prefix + "{poll-pause}"
}

func (b *Backend) idemKey(key string) string {
	return b.prefix + "idem:{" + key + "}"
}

func (b *Backend) outboxKey(requestID string) string {
	return b.prefix + "hooks:{" + requestID + "}"
}

func (b *Backend) deliveriesKey(requestID string) string {
	return b.prefix + "hookdel:{" + requestID + "}"
}

// OutboxLeaseKey is the key of a request's webhook delivery lease under
// prefix: its value names the replica delivering the request's events.
func OutboxLeaseKey(prefix, requestID string) string {
	return prefix + "hooklease:{" + requestID + "}"
}

func (b *Backend) outboxLeaseKey(requestID string) string { return OutboxLeaseKey(b.prefix, requestID) }

// JobsKey is the stream of webhook delivery jobs under prefix.
func JobsKey(prefix string) string { return prefix + "{hooks}" }

func (b *Backend) jobsKey() string { return JobsKey(b.prefix) }

func (b *Backend) retriesKey() string { return b.prefix + "{hooks}:due" }

// ListKey is the listing index of owner's requests in state st, on
// deployment dep ("" for all of the owner's). The owner is the hash tag:
// every index of one tenant is in one slot, for the list script.
func ListKey(prefix, owner, dep string, st runcomfy.State) string {
	if dep == "" {
		return prefix + "ls:{" + owner + "}:" + st.String()
	}
	return prefix + "ls:{" + owner + "}:" + dep + ":" + st.String()
}

func (b *Backend) listKey(owner, dep string, st runcomfy.State) string {
	return ListKey(b.prefix, owner, dep, st)
}

// UsageKey is the usage bucket of owner's requests that ended in the Unix
// hour hour; in the slot of the owner's listing indexes.
func UsageKey(prefix, owner string, hour int64) string {
	return prefix + "usage:{" + owner + "}:" + strconv.FormatInt(hour, 10)
}

func (b *Backend) usageKey(owner string, hour int64) string { return UsageKey(b.prefix, owner, hour) }
