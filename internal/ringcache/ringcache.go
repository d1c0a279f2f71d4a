// Package ringcache is a fixed-size map that forgets its oldest entries first:
// the memory of recent work a replica keeps to save a round trip (the last
// record written per request, the wire form of recent watch events), bounded
// whatever the traffic.
package ringcache

import "sync"

// Cache maps keys to values, holding at most its size; adding a key to a full
// cache forgets the key added longest ago. Safe for concurrent use.
type Cache[K comparable, V any] struct {
	mu    sync.Mutex
	m     map[K]V
	order []K // ring of the keys in m, oldest at next once full
	next  int
}

// New returns an empty Cache of size entries (at least one).
func New[K comparable, V any](size int) *Cache[K, V] {
	size = max(size, 1)
	return &Cache[K, V]{m: make(map[K]V, size), order: make([]K, 0, size)}
}

// Get returns k's value and whether k is held.
func (c *Cache[K, V]) Get(k K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.m[k]
	return v, ok
}

// Put sets k's value. A key already held keeps its place in the order.
func (c *Cache[K, V]) Put(k K, v V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.putLocked(k, v)
}

// PutIfAbsent adds k with v unless k is held already, and returns the value
// k then holds: v, or the one held before.
func (c *Cache[K, V]) PutIfAbsent(k K, v V) V {
	c.mu.Lock()
	defer c.mu.Unlock()
	if held, ok := c.m[k]; ok {
		return held
	}
	c.putLocked(k, v)
	return v
}

// Len is how many entries the cache holds.
func (c *Cache[K, V]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// Values returns the values held, in no particular order: a snapshot, for
// the rare walk over everything remembered.
func (c *Cache[K, V]) Values() []V {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]V, 0, len(c.m))
	for _, v := range c.m {
		out = append(out, v)
	}
	return out
}

func (c *Cache[K, V]) putLocked(k K, v V) {
	if _, ok := c.m[k]; ok {
		c.m[k] = v
		return
	}
	if len(c.order) < cap(c.order) {
		c.order = append(c.order, k)
	} else {
		delete(c.m, c.order[c.next])
		c.order[c.next] = k
		c.next = (c.next + 1) % len(c.order)
	}
	c.m[k] = v
}
