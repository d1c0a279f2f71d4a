package main

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// slowWriter is stderr on a slow terminal: each write takes a while.
type slowWriter struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	writes int
	delay  time.Duration
}

func (w *slowWriter) Write(p []byte) (int, error) {
	time.Sleep(w.delay)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes++
	return w.buf.Write(p)
}

func (w *slowWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// TestLogSink: many loggers at once through a slow writer; after Close every
// line is out, whole, each logger's lines in its order, in fewer writes than
// lines; and a line logged after Close is written at once.
func TestLogSink(t *testing.T) {
	tests := []struct {
		name       string
		max        int // bytes pending before loggers wait
		loggers, n int
	}{
		{"ample buffer", maxPendingLogs, 8, 200},
		{"loggers wait for the writer", 64, 8, 50},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := &slowWriter{delay: 200 * time.Microsecond}
			s := newLogSink(w)
			s.max = tt.max
			var wg sync.WaitGroup
			for l := range tt.loggers {
				wg.Go(func() {
					for i := range tt.n {
						line := fmt.Sprintf("logger=%d line=%d\n", l, i)
						if n, err := s.Write([]byte(line)); n != len(line) || err != nil {
							t.Errorf("Write = %d, %v", n, err)
						}
					}
				})
			}
			wg.Wait()
			s.Close()
			s.Close() // twice is harmless
			if _, err := s.Write([]byte("after close\n")); err != nil {
				t.Fatal(err)
			}
			if !strings.HasSuffix(w.String(), "after close\n") {
				t.Errorf("a line logged after Close was not written at once, last")
			}

			next := make([]int, tt.loggers)
			lines := strings.Split(strings.TrimSuffix(w.String(), "after close\n"), "\n")
			for _, line := range lines[:len(lines)-1] {
				var l, i int
				if _, err := fmt.Sscanf(line, "logger=%d line=%d", &l, &i); err != nil {
					t.Fatalf("torn or foreign line %q", line)
				}
				if i != next[l] {
					t.Fatalf("logger %d: line %d after line %d", l, i, next[l]-1)
				}
				next[l]++
			}
			for l, n := range next {
				if n != tt.n {
					t.Errorf("logger %d: %d lines written, want %d", l, n, tt.n)
				}
			}
			if total := tt.loggers * tt.n; w.writes >= total {
				t.Errorf("%d lines took %d writes: nothing was written together", total, w.writes)
			}
		})
	}
}
