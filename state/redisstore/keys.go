package redisstore

// Every Redis key and channel comfygate uses is named here, under a
// configurable prefix (default "comfygate:"). The request id is a hash tag
// ({...}), so every key of one request lands in one Redis Cluster hash slot: the
// Lua script that touches them stays valid on a cluster.
//
//	<prefix>req:{<request_id>}     hash: seq, rank, data (the record as JSON);
//	                                expires after the retention period
//	<prefix>events:{<request_id>}  pub/sub channel: the record as JSON, once per
//	                                applied update, in seq order

// DefaultPrefix is the key prefix when none is configured.
const DefaultPrefix = "comfygate:"

func (b *Backend) recordKey(requestID string) string {
	return b.prefix + "req:{" + requestID + "}"
}

func (b *Backend) channel(requestID string) string {
	return b.prefix + "events:{" + requestID + "}"
}
