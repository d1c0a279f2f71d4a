package app

import (
	"sync"
	"sync/atomic"
	"testing"
)

// TestEveryNthOff pins that everyNth gives no function (the fault is off)
// for n below one.
func TestEveryNthOff(t *testing.T) {
	for _, n := range []int{0, -1, -100} {
		if f := everyNth(n); f != nil {
			t.Errorf("everyNth(%d) is a function, want nil", n)
		}
	}
}

// TestEveryNth pins that everyNth(n) answers true on calls n, 2n, 3n, ...
// and false on every other call.
func TestEveryNth(t *testing.T) {
	for _, n := range []int{1, 2, 3, 7} {
		f := everyNth(n)
		if f == nil {
			t.Fatalf("everyNth(%d) = nil", n)
		}
		for call := 1; call <= 5*n; call++ {
			if got, want := f(), call%n == 0; got != want {
				t.Errorf("everyNth(%d): call %d = %v, want %v", n, call, got, want)
			}
		}
	}
}

// TestEveryNthConcurrent pins that concurrent callers share one count:
// among k*n calls made at once, exactly k answer true (run with -race).
func TestEveryNthConcurrent(t *testing.T) {
	tests := []struct{ n, k, goroutines int }{
		{1, 50, 8},
		{3, 40, 8},
		{10, 25, 16},
	}
	for _, tt := range tests {
		f := everyNth(tt.n)
		var trues atomic.Int64
		var next atomic.Int64 // calls handed out so far
		total := int64(tt.k * tt.n)
		var wg sync.WaitGroup
		for range tt.goroutines {
			wg.Go(func() {
				for next.Add(1) <= total {
					if f() {
						trues.Add(1)
					}
				}
			})
		}
		wg.Wait()
		if got := trues.Load(); got != int64(tt.k) {
			t.Errorf("everyNth(%d): %d of %d concurrent calls answered true, want %d", tt.n, got, total, tt.k)
		}
	}
}
