package ringcache

import (
	"fmt"
	"sync"
	"testing"
)

func TestCache(t *testing.T) {
	type step struct {
		op   string // put, putIfAbsent
		k, v int
		want int // putIfAbsent: the value held afterwards
	}
	tests := []struct {
		name  string
		size  int
		steps []step
		held  map[int]int // every key held at the end, with its value
	}{
		{"holds up to its size", 3, []step{{op: "put", k: 1, v: 10}, {op: "put", k: 2, v: 20}, {op: "put", k: 3, v: 30}},
			map[int]int{1: 10, 2: 20, 3: 30}},
		{"forgets the oldest first", 2, []step{{op: "put", k: 1, v: 10}, {op: "put", k: 2, v: 20}, {op: "put", k: 3, v: 30}, {op: "put", k: 4, v: 40}},
			map[int]int{3: 30, 4: 40}},
		{"a replaced key keeps its place", 2, []step{{op: "put", k: 1, v: 10}, {op: "put", k: 2, v: 20}, {op: "put", k: 1, v: 11}, {op: "put", k: 3, v: 30}},
			map[int]int{2: 20, 3: 30}},
		{"putIfAbsent keeps what is held", 2, []step{{op: "put", k: 1, v: 10}, {op: "putIfAbsent", k: 1, v: 99, want: 10}, {op: "putIfAbsent", k: 2, v: 20, want: 20}},
			map[int]int{1: 10, 2: 20}},
		{"size below one holds one", 0, []step{{op: "put", k: 1, v: 10}, {op: "put", k: 2, v: 20}},
			map[int]int{2: 20}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New[int, int](tt.size)
			for i, s := range tt.steps {
				switch s.op {
				case "put":
					c.Put(s.k, s.v)
				case "putIfAbsent":
					if got := c.PutIfAbsent(s.k, s.v); got != s.want {
						t.Errorf("step %d: PutIfAbsent(%d, %d) = %d, want %d", i, s.k, s.v, got, s.want)
					}
				}
			}
			if c.Len() != len(tt.held) {
				t.Errorf("Len = %d, want %d", c.Len(), len(tt.held))
			}
			for k := range 10 {
				v, ok := c.Get(k)
				want, held := tt.held[k]
				if ok != held || v != want {
					t.Errorf("Get(%d) = %d, %v; want %d, %v", k, v, ok, want, held)
				}
			}
		})
	}
}

// TestCacheConcurrent: concurrent use stays within the size (run with -race).
func TestCacheConcurrent(t *testing.T) {
	c := New[string, int](64)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 1000 {
				k := fmt.Sprint(g, "-", i%100)
				c.Put(k, i)
				c.Get(k)
				c.PutIfAbsent(k, i)
			}
		})
	}
	wg.Wait()
	if n := c.Len(); n > 64 {
		t.Errorf("Len = %d, want at most 64", n)
	}
}
