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
	// withHooks keeps, apart, the last record seen with webhooks of each
	// request: a record made again after a loss from what RunComfy said has
	// none, and once read it takes the first one's place in c.
	withHooks *ringcache.Cache[string, *Record]
}

func newRecentRecords(size int) *recentRecords {
	return &recentRecords{c: ringcache.New[string, *Record](size), withHooks: ringcache.New[string, *Record](size)}
}

// hooked returns the last remembered record of requestID that had webhooks.
func (r *recentRecords) hooked(requestID string) *Record {
	rec, _ := r.withHooks.Get(requestID)
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
	if len(rec.Webhooks) > 0 {
		r.withHooks.Put(rec.RequestID, rec)
	}
}

// all returns every remembered record.
func (r *recentRecords) all() []*Record { return r.c.Values() }
