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
	// keeping keeps, apart, the record of each request that knows the most
	// (kept): a record made again after a loss, from what RunComfy said or
	// put back by a replica that remembered less, may hold neither the
	// webhooks and deadlines (keepsMore) nor the state this replica knew,
	// and once read it takes the first one's place in c.
	keeping *ringcache.Cache[string, *Record]
}

func newRecentRecords(size int) *recentRecords {
	return &recentRecords{c: ringcache.New[string, *Record](size), keeping: ringcache.New[string, *Record](size)}
}

// kept returns the remembered record of requestID that knows the most: the
// last one, unless that one lost what an earlier one held, the webhooks and
// deadlines, or the state (a lower one, of another epoch).
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
	if old := r.kept(rec.RequestID); knowsAsMuch(rec, old) {
		r.keeping.Put(rec.RequestID, rec)
	}
}

// knowsAsMuch reports whether rec, a later record of old's request, knows
// what old knew: the webhooks and deadlines if old held them, and a state
// at least as far, unless rec is of the same epoch (where a state only goes
// back when Redis failed over to a replica that lagged, and the record
// stored is then what there is).
func knowsAsMuch(rec, old *Record) bool {
	if old == nil {
		return true
	}
	if keepsMore(old) && !keepsMore(rec) {
		return false
	}
	return rec.Epoch == old.Epoch || Rank(rec.State) >= Rank(old.State)
}

// all returns every remembered record.
func (r *recentRecords) all() []*Record { return r.c.Values() }
