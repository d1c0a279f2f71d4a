package runcomfysim

import (
	"container/heap"
	"fmt"
	"sort"
	"time"
)

// jobState is the simulator's own view of a job; how it is spelled on the wire
// depends on the active Faults.
type jobState int

const (
	stateQueued jobState = iota
	stateRunning
	stateSucceeded
	stateFailed
	stateCancelled
)

func (st jobState) terminal() bool { return st >= stateSucceeded }

// String is the canonical wire spelling.
func (st jobState) String() string {
	switch st {
	case stateQueued:
		return "in_queue"
	case stateRunning:
		return "in_progress"
	case stateSucceeded:
		return "succeeded"
	case stateFailed:
		return "failed"
	default:
		return "cancelled"
	}
}

// job is one submitted request. Every field is guarded by Sim.mu.
type job struct {
	id         string
	deployment string
	version    string
	base       string // public base URL for this job's URLs
	state      jobState
	// step increases on every transition; a scheduled event carries the step it was
	// scheduled at and is ignored if the job moved since (by Advance, cancel...).
	step            int
	queueSeq        uint64 // submit order, for the per-deployment queue
	cancelRequested bool
	outcome         Outcome
	instanceID      string
	createdAt       time.Time
	startedAt       time.Time
	finishedAt      time.Time

	webhook      string
	intermediate bool
	held         []callback // callbacks kept back by ReorderCallbacks
	outbox       []callback // callbacks waiting for the delivery goroutine
	delivering   bool       // a goroutine (or the submit handler) drains outbox
	// syncFirst is set once at creation (CallbackBeforeSubmitResponse): the submit
	// handler drains the first callbacks itself. Written only before the job is
	// shared, so the submit handler reads it without the lock.
	syncFirst bool
}

func (j *job) url(kind string) string {
	return fmt.Sprintf("%s/prod/%s/deployments/%s/requests/%s/%s", j.base, j.version, j.deployment, j.id, kind)
}

func (j *job) imageName(i int) string { return fmt.Sprintf("ComfyUI_%05d_.png", i+1) }

func (j *job) imageCount() int {
	if j.outcome.Images <= 0 {
		return 1
	}
	return j.outcome.Images
}

// event is a scheduled transition of one job.
type event struct {
	at   time.Time
	seq  uint64
	job  *job
	step int
}

// eventHeap orders events by time, then by scheduling order.
type eventHeap []event

func (h eventHeap) Len() int { return len(h) }
func (h eventHeap) Less(a, b int) bool {
	if h[a].at.Equal(h[b].at) {
		return h[a].seq < h[b].seq
	}
	return h[a].at.Before(h[b].at)
}
func (h eventHeap) Swap(a, b int) { h[a], h[b] = h[b], h[a] }
func (h *eventHeap) Push(x any)   { *h = append(*h, x.(event)) }
func (h *eventHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = event{}
	*h = old[:len(old)-1]
	return e
}

// schedule is the one goroutine that fires timed transitions. One goroutine and one
// timer for all jobs keeps the cost per job to a heap entry, and gives Close a single
// thing to stop.
func (s *Sim) schedule() {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		s.mu.Lock()
		now := time.Now()
		for len(s.events) > 0 && !s.events[0].at.After(now) {
			e := heap.Pop(&s.events).(event)
			s.fireLocked(e)
		}
		wait := time.Duration(-1)
		if len(s.events) > 0 {
			wait = s.events[0].at.Sub(now)
		}
		s.mu.Unlock()
		if wait >= 0 {
			timer.Reset(wait)
		}
		select {
		case <-s.ctx.Done():
			return
		case <-s.wake:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// scheduleLocked arranges for the job's next transition after d.
func (s *Sim) scheduleLocked(j *job, d time.Duration) {
	if s.closed {
		return
	}
	s.eventSeq++
	heap.Push(&s.events, event{at: time.Now().Add(d), seq: s.eventSeq, job: j, step: j.step})
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *Sim) fireLocked(e event) {
	j := e.job
	if j.step != e.step {
		return // the job moved since this event was scheduled
	}
	switch j.state {
	case stateQueued:
		s.startLocked(j)
	case stateRunning:
		if j.cancelRequested {
			s.cancelLocked(j)
		} else {
			s.finishLocked(j)
		}
	}
}

// afterSubmitLocked starts the automatic lifecycle of a new job.
func (s *Sim) afterSubmitLocked(j *job) {
	s.emitLocked(j, false)
	if s.opts.Manual {
		return
	}
	if s.opts.QueueTime <= 0 {
		s.startLocked(j)
		return
	}
	s.scheduleLocked(j, s.opts.QueueTime)
}

func (s *Sim) startLocked(j *job) {
	s.dequeueLocked(j)
	j.state = stateRunning
	j.step++
	j.startedAt = s.now()
	j.instanceID = newUUID()
	s.log.Debug("runcomfysim: job started", "request_id", j.id)
	s.emitLocked(j, false)
	if s.opts.Manual {
		return
	}
	if s.opts.RunTime <= 0 {
		s.finishLocked(j)
		return
	}
	s.scheduleLocked(j, s.opts.RunTime)
}

func (s *Sim) finishLocked(j *job) {
	if j.cancelRequested {
		s.cancelLocked(j)
		return
	}
	j.step++
	j.finishedAt = s.now()
	if j.outcome.State == OutcomeFailed {
		j.state = stateFailed
	} else {
		j.state = stateSucceeded
	}
	s.log.Debug("runcomfysim: job finished", "request_id", j.id, "state", j.state.String())
	s.emitLocked(j, true)
}

func (s *Sim) cancelLocked(j *job) {
	s.dequeueLocked(j)
	j.state = stateCancelled
	j.step++
	j.finishedAt = s.now()
	s.log.Debug("runcomfysim: job cancelled", "request_id", j.id)
	s.emitLocked(j, true)
}

// requestCancelLocked applies a cancel call and returns whether the job could be
// cancelled and whether it is already cancelled.
func (s *Sim) requestCancelLocked(j *job) (cancellable bool) {
	switch j.state {
	case stateQueued:
		s.cancelLocked(j)
		return true
	case stateRunning:
		if j.cancelRequested {
			return true
		}
		j.cancelRequested = true
		j.step++ // the pending finish must not fire
		if s.opts.Manual {
			return true
		}
		if s.opts.CancelDelay <= 0 {
			s.cancelLocked(j)
		} else {
			s.scheduleLocked(j, s.opts.CancelDelay)
		}
		return true
	default:
		return false
	}
}

// dequeueLocked removes j from its deployment's queue. Queues stay in submit order,
// so the job is found by binary search on queueSeq, and the common case (the head
// leaves first) costs no copy: a long queue in a benchmark stays cheap.
func (s *Sim) dequeueLocked(j *job) {
	q := s.queues[j.deployment]
	i, found := s.queueIndexLocked(q, j)
	if !found {
		return
	}
	if i == 0 {
		q[0] = nil
		q = q[1:]
	} else {
		copy(q[i:], q[i+1:])
		q[len(q)-1] = nil // drop the duplicate pointer left at the end
		q = q[:len(q)-1]
	}
	if len(q) == 0 {
		delete(s.queues, j.deployment)
		return
	}
	s.queues[j.deployment] = q
}

func (s *Sim) queueIndexLocked(q []*job, j *job) (int, bool) {
	i := sort.Search(len(q), func(k int) bool { return q[k].queueSeq >= j.queueSeq })
	return i, i < len(q) && q[i] == j
}

// queuePositionLocked is the number of queued jobs of the same deployment submitted
// before this one: 0 means next to start.
func (s *Sim) queuePositionLocked(j *job) int {
	i, _ := s.queueIndexLocked(s.queues[j.deployment], j)
	return i
}
