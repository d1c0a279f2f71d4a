package state

import "github.com/comfygate/comfygate/internal/ringcache"

// recentRecordsSize bounds the records a Tracker remembers: enough for the
// requests in flight on a busy replica, a few MiB at most.
const recentRecordsSize = 4096

// recentRecords remembers the last record the Tracker wrote or read for the
// most recently seen requests, evicting the oldest first. Records are never
// modified once made (merge works on a clone), so they are shared as they are.
type recentRecords struct {
	c *ringcache.Cache[string, *Record]
	// keeping keeps, apart, the last record seen of each request that held
	// what no update from RunComfy brings back (webhooks, deadlines:
	// keepsMore): a record made again after a loss from what RunComfy said
	// holds none of it, and once read it takes the first one's place in c.
	keeping *ringcache.Cache[string, *Record]
}

func newRecentRecords(size int) *recentRecords {
	return &recentRecords{c: ringcache.New[string, *Record](size), keeping: ringcache.New[string, *Record](size)}
}

// kept returns the last remembered record of requestID that held webhooks
// or deadlines.
func (r *recentRecords) kept(requestID string) *Record {
	rec, _ := r.keeping.Get(requestID)
	return rec
}

// get returns the remembered record of requestID, nil when there is none.
func (r *recentRecords) get(requestID string) *Record {
	rec, _ := r.c.Get(requestID)
	return rec
}

// put remembers rec. Concurrent Applies may put out of order, leaving an older
// record remembered: that costs the next Apply a retry, nothing more.
func (r *recentRecords) put(rec *Record) {
	r.c.Put(rec.RequestID, rec)
	if keepsMore(rec) {
		r.keeping.Put(rec.RequestID, rec)
	}
}

// all returns every remembered record.
func (r *recentRecords) all() []*Record { return r.c.Values() }
