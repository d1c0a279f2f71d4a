package state

import "sync"

// recentRecordsSize bounds the records a Tracker remembers: enough for the
// requests in flight on a busy replica, a few MiB at most.
const recentRecordsSize = 4096

// recentRecords remembers the last record the Tracker wrote or read for the
// most recently seen requests, evicting the oldest first. Records are never
// modified once made (merge works on a clone), so they are shared as they are.
type recentRecords struct {
	mu    sync.Mutex
	recs  map[string]*Record
	order []string // ring of the ids in recs, oldest at next
	next  int
}

func newRecentRecords(size int) *recentRecords {
	return &recentRecords{recs: make(map[string]*Record, size), order: make([]string, 0, size)}
}

// get returns the remembered record of requestID, nil when there is none.
func (c *recentRecords) get(requestID string) *Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.recs[requestID]
}

// put remembers rec. Concurrent Applies may put out of order, leaving an older
// record remembered: that costs the next Apply a retry, nothing more.
func (c *recentRecords) put(rec *Record) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.recs[rec.RequestID]; ok {
		c.recs[rec.RequestID] = rec
		return
	}
	if len(c.order) < cap(c.order) {
		c.order = append(c.order, rec.RequestID)
	} else {
		delete(c.recs, c.order[c.next])
		c.order[c.next] = rec.RequestID
		c.next = (c.next + 1) % len(c.order)
	}
	c.recs[rec.RequestID] = rec
}
