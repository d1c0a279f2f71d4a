package ringcache

import (
	"slices"
	"sync"
	"testing"
)

// TestValues pins Values: after any mix of puts, replacements and evictions
// it returns exactly the values the cache holds (each once, those of evicted
// keys never), whatever their order; and its slice is a snapshot that later
// puts do not change.
func TestValues(t *testing.T) {
	tests := []struct {
		name string
		size int
		puts [][2]int // key, value
		want []int
	}{
		{"empty", 3, nil, []int{}},
		{"below its size", 3, [][2]int{{1, 10}, {2, 20}}, []int{10, 20}},
		{"full", 3, [][2]int{{1, 10}, {2, 20}, {3, 30}}, []int{10, 20, 30}},
		{"oldest evicted", 2, [][2]int{{1, 10}, {2, 20}, {3, 30}, {4, 40}}, []int{30, 40}},
		{"replaced value, not the old one", 2, [][2]int{{1, 10}, {2, 20}, {1, 11}}, []int{11, 20}},
		{"replaced key keeps its place, so is evicted first", 2, [][2]int{{1, 10}, {2, 20}, {1, 11}, {3, 30}}, []int{20, 30}},
		{"wrapped around more than once", 3, [][2]int{{1, 1}, {2, 2}, {3, 3}, {4, 4}, {5, 5}, {6, 6}, {7, 7}, {8, 8}}, []int{6, 7, 8}},
		{"same value under two keys", 2, [][2]int{{1, 5}, {2, 5}}, []int{5, 5}},
		{"size below one holds one", 0, [][2]int{{1, 10}, {2, 20}}, []int{20}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New[int, int](tt.size)
			for _, p := range tt.puts {
				c.Put(p[0], p[1])
			}
			got := c.Values()
			if got == nil {
				t.Fatal("Values = nil, want an empty slice at least")
			}
			slices.Sort(got)
			if !slices.Equal(got, tt.want) {
				t.Errorf("Values = %v, want %v", got, tt.want)
			}
			if len(got) != c.Len() {
				t.Errorf("Values has %d values, Len = %d", len(got), c.Len())
			}
			snapshot := slices.Clone(got)
			c.Put(100, 1000)
			if !slices.Equal(got, snapshot) {
				t.Errorf("a later Put changed the slice Values returned: %v, was %v", got, snapshot)
			}
		})
	}
}

// TestValuesConcurrent pins that Values may be called while others put (run
// with -race) and never returns more values than the cache's size.
func TestValuesConcurrent(t *testing.T) {
	const size = 16
	c := New[int, int](size)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 500 {
				c.Put(g*1000+i%50, i)
			}
		})
	}
	wg.Go(func() {
		for range 200 {
			if n := len(c.Values()); n > size {
				t.Errorf("Values returned %d values, more than the size %d", n, size)
				return
			}
		}
	})
	wg.Wait()
}
