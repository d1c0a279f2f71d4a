package main

import (
	"io"
	"sync"
)

// maxPendingLogs bounds the log bytes waiting to be written; past it, loggers
// wait for the writer rather than lose lines.
const maxPendingLogs = 1 << 20

// logSink hands log lines to a goroutine of its own that writes them out: a
// request does not wait for its log line's write system call, and the lines
// logged while one write is under way go out together in the next. Lines keep
// their order and are written as soon as the writer is free, with no timer;
// what a crash can lose is the lines of the last few microseconds. Close
// writes what is left; lines logged afterwards are written directly.
type logSink struct {
	w    io.Writer
	kick chan struct{} // lines are pending
	stop chan struct{} // Close was called
	done chan struct{} // the writer has stopped
	once sync.Once     // of Close
	max  int           // maxPendingLogs, but for tests

	mu      sync.Mutex
	room    *sync.Cond // signalled when the writer has taken the pending lines
	pending []byte
	spare   []byte
	closed  bool
}

func newLogSink(w io.Writer) *logSink {
	s := &logSink{w: w, kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}), max: maxPendingLogs}
	s.room = sync.NewCond(&s.mu)
	go s.run()
	return s
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	for !s.closed && len(s.pending) > 0 && len(s.pending)+len(p) > s.max {
		s.room.Wait()
	}
	if s.closed {
		defer s.mu.Unlock()
		return s.w.Write(p)
	}
	s.pending = append(s.pending, p...)
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default: // the writer is already due to run
	}
	return len(p), nil
}

// run writes the pending lines whenever there are some, until Close.
func (s *logSink) run() {
	defer close(s.done)
	for {
		select {
		case <-s.kick:
			s.flush()
		case <-s.stop:
			s.flush()
			return
		}
	}
}

func (s *logSink) flush() {
	s.mu.Lock()
	if len(s.pending) == 0 {
		s.mu.Unlock()
		return
	}
	// Swap buffers: loggers fill the spare one while this one is written.
	buf := s.pending
	s.pending, s.spare = s.spare[:0], nil
	s.room.Broadcast()
	s.mu.Unlock()
	// A failed write (stderr closed) loses these lines, as a direct write would.
	_, _ = s.w.Write(buf)
	s.mu.Lock()
	s.spare = buf[:0]
	s.mu.Unlock()
}

// Close writes the pending lines and stops the writer. Lines logged meanwhile
// follow them, in order.
func (s *logSink) Close() {
	s.once.Do(func() {
		close(s.stop)
		<-s.done
		s.mu.Lock()
		defer s.mu.Unlock()
		s.closed = true
		s.room.Broadcast()
		if len(s.pending) > 0 {
			_, _ = s.w.Write(s.pending)
			s.pending = nil
		}
	})
}
