package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"google.golang.org/grpc/codes"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// settleTime bounds the wait, after the load and the faults have stopped,
// for every request, watcher, webhook and stored output to reach its end.
const settleTime = 4 * time.Minute

// result is what a soak counted.
type result struct {
	mode     string
	seed     int64
	duration time.Duration
	rate     float64
	faults   []*fault

	submitted, gaveUp, submitAttempts int
	slowestAnswer                     time.Duration
	submitErrs                        map[codes.Code]int
	upstreamTerminal                  int
	upstreamSucceeded                 int
	recorded, recordedWrong           int // terminal and right, terminal and wrong
	watchers, watchersEnded           int
	watchersUnfinished                int
	streamsWithoutFinal               int
	watcherResumes, epochChanges      int
	dups, backward, regressed         int
	billedTwice, billedUnanswered     int
	jobs                              int
	hooksMissing, hooksWrong          int
	hooksBad, hooksTotal, hooksRefuse int
	hooksRegressed                    int
	outputsMissing, outputsWrong      int
	outputsChecked                    int
	latencies                         []time.Duration // RunComfy's end to a live watcher's final state
	byVia                             map[string]int
	replicas                          []replicaStats
	settled                           time.Duration
	// examples name a few of the requests behind each broken promise, for
	// the logs kept of a failed run.
	examples map[string][]string
	// lost counts what went with Redis's data when it restarted empty
	// (documented: with no persistence a restart loses everything): what the
	// replicas' memory could not put back. Not counted as broken promises.
	lost struct{ records, hooks, outputs, billing int }
	// refusedUnanswered: submits refused for good because their first
	// attempt reached RunComfy and its replica died before the answer.
	refusedUnanswered int
}

// sideEffectWindow is how long after a request ended a loss of Redis's data
// is taken to explain its missing webhook or stored output: the events and
// copies of a request normally complete within seconds.
const sideEffectWindow = time.Minute

// forever: a finished record lost at any time is not made again.
const forever = 24 * time.Hour

func (r *result) example(what, which string) {
	if r.examples == nil {
		r.examples = map[string][]string{}
	}
	if len(r.examples[what]) < 3 {
		r.examples[what] = append(r.examples[what], which)
	}
}

// broken lists the must-be-zero counters that were not.
func (r *result) broken() []string {
	var out []string
	add := func(n int, what string) {
		if n != 0 {
			out = append(out, fmt.Sprintf("%d %s", n, what))
		}
	}
	add(r.upstreamTerminal-r.recorded, "requests terminal on RunComfy without their terminal state recorded")
	add(r.recordedWrong, "requests recorded with another final status than RunComfy's")
	add(r.watchers-r.watchersEnded, "watchers that did not end with the final state")
	add(r.streamsWithoutFinal, "watch streams that ended as complete without the final state")
	add(r.dups, "events sent twice to one watcher")
	add(r.backward, "events sent out of order to one watcher")
	add(r.regressed, "events of an earlier state than one the watcher had been sent")
	add(r.billedTwice, "idempotency keys billed more than once")
	add(r.billedUnanswered, "jobs billed for submits never answered")
	add(r.gaveUp, "submits abandoned after three minutes of retries")
	add(r.hooksMissing, "terminal webhooks missing")
	add(r.hooksWrong, "terminal webhooks with another status than RunComfy's")
	add(r.hooksBad, "webhooks with a bad signature or body")
	add(r.hooksRegressed, "webhooks of an earlier state than one the endpoint had received")
	add(r.outputsMissing, "outputs of succeeded requests not stored")
	add(r.outputsWrong, "stored outputs with wrong bytes")
	for _, s := range r.replicas {
		if !s.returned {
			out = append(out, fmt.Sprintf("%s: goroutines did not return to baseline (%d at rest before the load, %d after)", s.name, s.baseGoroutines, s.endGoroutines))
		}
	}
	return out
}

// soak runs one mode for o.duration and counts.
func soak(ctx context.Context, bins *binaries, o options, mode string, stdout io.Writer) (*result, error) {
	logf := func(format string, args ...any) {
		fmt.Fprintf(stdout, "%s [%s] %s\n", time.Now().Format("15:04:05"), mode, fmt.Sprintf(format, args...))
	}
	logf("starting: 3 replicas, %s, the simulator, S3, webhook receivers (seed %d, %v at %.0f submits/s)", mode, o.seed, o.duration, o.rate)
	sys, err := startSystem(ctx, bins, o, mode)
	if err != nil {
		return nil, err
	}
	res := &result{mode: mode, seed: o.seed, duration: o.duration, rate: o.rate}
	kept := o.keep
	defer func() {
		sys.stop()
		// The canary's broken promises are its point: nothing to look into.
		if kept || (len(res.broken()) > 0 && o.dropFinalEvery == 0) {
			logf("logs kept in %s", sys.dir)
		} else {
			_ = os.RemoveAll(sys.dir)
		}
	}()

	smp := newSampler(sys)
	if err := smp.baseline(ctx); err != nil {
		return nil, err
	}
	sampleCtx, stopSampling := context.WithCancel(ctx)
	defer stopSampling()
	var sampling sync.WaitGroup
	sampling.Go(func() { smp.run(sampleCtx) })

	res.faults = schedule(o.seed, mode, o.duration)
	if o.dropFinalEvery > 0 {
		res.faults = nil // the canary shows the counting, not the faults
	}
	loadCtx, stopLoad := context.WithTimeout(ctx, o.duration)
	defer stopLoad()
	watchCtx, stopWatching := context.WithCancel(ctx)
	defer stopWatching()
	l := newLoader(sys, o.rate, o.seed)
	in := newInjector(sys, logf)
	var injecting sync.WaitGroup
	injecting.Go(func() { in.run(loadCtx, res.faults) })
	logf("load and %d faults for %v", len(res.faults), o.duration)
	l.run(loadCtx, watchCtx)
	injecting.Wait()
	in.wait()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	logf("load stopped; every fault healed; settling")

	settleStart := time.Now()
	settle := settleTime
	if o.dropFinalEvery > 0 {
		settle = 30 * time.Second // the canary's promises stay broken: no use waiting
	}
	deadline := settleStart.Add(settle)
	waited := make(chan struct{})
	go func() { l.wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(time.Until(deadline)):
		stopWatching()
		<-waited
	}
	c := newChecker(sys, l, in)
	for {
		c.check(ctx, res)
		if len(res.broken()) == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		hold(ctx, 2*time.Second)
	}
	res.settled = time.Since(settleStart)
	stopSampling()
	sampling.Wait()
	// The load's own idle connections hold a goroutine each on the replicas.
	l.http.CloseIdleConnections()
	http.DefaultClient.CloseIdleConnections()
	res.replicas = smp.atRest(ctx)
	logf("settled in %v: %d submitted, %d watchers, %d broken promises", res.settled.Round(time.Second), res.submitted, res.watchers, len(res.broken()))
	fmt.Fprintf(stdout, "\n%s\n", res.table())
	for what, ids := range res.examples {
		logf("%s, e.g.: %s", what, strings.Join(ids, "; "))
	}
	return res, nil
}

// checker compares what the harness saw with the simulator's books and the
// gateway's answers. It remembers what it confirmed, so a later round checks
// only what was still missing.
type checker struct {
	sys      *system
	l        *loader
	in       *injector // when Redis lost its data
	recorded map[string]comfygatev1.Status
	stored   map[string]bool
}

func newChecker(sys *system, l *loader, in *injector) *checker {
	return &checker{sys: sys, l: l, in: in, recorded: map[string]comfygatev1.Status{}, stored: map[string]bool{}}
}

func simStatus(s string) comfygatev1.Status {
	switch s {
	case "succeeded":
		return comfygatev1.Status_STATUS_SUCCEEDED
	case "failed":
		return comfygatev1.Status_STATUS_FAILED
	case "cancelled":
		return comfygatev1.Status_STATUS_CANCELLED
	}
	return comfygatev1.Status_STATUS_UNSPECIFIED
}

func (c *checker) check(ctx context.Context, res *result) {
	reqs := c.l.snapshot()
	*res = result{mode: res.mode, seed: res.seed, duration: res.duration, rate: res.rate, faults: res.faults, byVia: map[string]int{}}
	c.l.mu.Lock()
	res.submitErrs = maps(c.l.submitErrs)
	c.l.mu.Unlock()
	res.gaveUp = int(c.l.gaveUp.Load())
	answered := map[string]bool{}
	for _, r := range reqs {
		res.submitAttempts += r.attempts
		if r.rid == "" {
			res.example("abandoned submits", fmt.Sprintf("key %s after %d attempts: %v", r.key, r.attempts, r.lastErr))
			continue
		}
		answered[r.key] = true
		res.slowestAnswer = max(res.slowestAnswer, r.answerIn)
		res.submitted++
		state, _ := c.sys.sim.JobState(r.rid)
		want := simStatus(state)
		finishedAt, terminal := c.sys.sim.FinishedAt(r.rid)
		if terminal {
			res.upstreamTerminal++
			if want == comfygatev1.Status_STATUS_SUCCEEDED {
				res.upstreamSucceeded++
			}
		}
		for _, w := range r.watchers {
			res.watchers++
			res.byVia[w.via]++
			res.watcherResumes += w.resumes
			res.epochChanges += w.epochs
			res.dups += w.dups
			res.backward += w.backward
			res.regressed += w.regressed
			if w.regressed > 0 {
				res.example("events of an earlier state", fmt.Sprintf("request %s over %s, %d of them", r.rid, w.via, w.regressed))
			}
			switch {
			case w.withoutFinal:
				res.streamsWithoutFinal++
				res.example("streams ended without the final state", fmt.Sprintf("request %s over %s", r.rid, w.via))
			case w.final == 0:
				res.watchersUnfinished++
				res.example("watchers without the final state", fmt.Sprintf("request %s over %s, last %d-%d: %s", r.rid, w.via, w.epoch, w.seq, w.lastErr))
			case w.final == want:
				res.watchersEnded++
				if terminal && w.finalAt.After(finishedAt) && w.events > 1 {
					res.latencies = append(res.latencies, w.finalAt.Sub(finishedAt))
				}
			}
		}
		if !terminal {
			continue
		}
		switch got := c.status(ctx, r); {
		case got == want:
			res.recorded++
		case got == comfygatev1.Status_STATUS_UNSPECIFIED && c.in.wipedAfter(finishedAt, forever) && c.seenFinal(r, want):
			// Recorded (a watcher was sent it, or its webhook), then lost
			// with Redis's data when no replica remembered it any more: a
			// finished record is never made again.
			res.recorded++
			res.lost.records++
		case got == comfygatev1.Status_STATUS_UNSPECIFIED:
			res.example("terminal states not recorded", "request "+r.rid)
		default:
			res.recordedWrong++
			res.example("recorded with another status", fmt.Sprintf("request %s: %s, RunComfy %s", r.rid, got, state))
		}
		switch got, other := c.sys.hooks.terminal(r.rid, "request."+state); {
		case other:
			res.hooksWrong++
		case !got && c.in.wipedAfter(finishedAt, sideEffectWindow):
			res.lost.hooks++
		case !got:
			res.hooksMissing++
			res.example("terminal webhooks missing", fmt.Sprintf("request %s, ended on RunComfy at %s", r.rid, finishedAt.Format("15:04:05.000")))
		}
		if want == comfygatev1.Status_STATUS_SUCCEEDED {
			res.outputsChecked++
			switch c.output(ctx, r) {
			case outputMissing:
				if c.in.wipedAfter(finishedAt, sideEffectWindow) {
					res.lost.outputs++
					break
				}
				res.outputsMissing++
				res.example("outputs not stored", "request "+r.rid)
			case outputWrong:
				res.outputsWrong++
			}
		}
	}
	byKey := map[string]*request{}
	for _, r := range reqs {
		byKey[r.key] = r
		if r.unanswered {
			res.refusedUnanswered++
		}
	}
	for key, n := range c.sys.billing.snapshot() {
		res.jobs += n
		r := byKey[key]
		switch {
		case n > 1 && r != nil && c.in.wipedAfter(r.firstAt, r.answerIn+time.Second):
			// The key went with Redis's data between two attempts.
			res.lost.billing++
		case n > 1:
			res.billedTwice++
		case !answered[key]:
			res.billedUnanswered++
		}
	}
	var regressed []string
	res.hooksTotal, res.hooksBad, res.hooksRefuse, regressed = c.sys.hooks.counts()
	res.hooksRegressed = len(regressed)
	for _, r := range regressed {
		res.example("webhooks of an earlier state than one the endpoint had received", r)
	}
	slices.Sort(res.latencies)
}

func maps(m map[codes.Code]int) map[codes.Code]int {
	out := make(map[codes.Code]int, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// seenFinal reports whether the gateway was seen to hold r's final state:
// one of its watchers was sent it, or its terminal webhook came.
func (c *checker) seenFinal(r *request, want comfygatev1.Status) bool {
	for _, w := range r.watchers {
		if w.final == want {
			return true
		}
	}
	state, _ := c.sys.sim.JobState(r.rid)
	got, _ := c.sys.hooks.terminal(r.rid, "request."+state)
	return got
}

// status is the request's status as a replica answers it; UNSPECIFIED when
// none answers.
func (c *checker) status(ctx context.Context, r *request) comfygatev1.Status {
	if st, ok := c.recorded[r.rid]; ok {
		return st
	}
	for _, g := range c.sys.live() {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := g.api.GetStatus(c.l.authed(cctx, r.tenant), &comfygatev1.GetStatusRequest{DeploymentId: r.dep, RequestId: r.rid})
		cancel()
		if err != nil {
			continue
		}
		st := resp.GetRequest().GetStatus()
		switch st {
		case comfygatev1.Status_STATUS_SUCCEEDED, comfygatev1.Status_STATUS_FAILED, comfygatev1.Status_STATUS_CANCELLED:
			c.recorded[r.rid] = st
		}
		return st
	}
	return comfygatev1.Status_STATUS_UNSPECIFIED
}

type outputCheck int

const (
	outputStored outputCheck = iota
	outputMissing
	outputWrong
)

// output checks, in the S3 bucket itself, that a succeeded request's outputs
// are stored with the simulator's bytes, under
// outputs/<tenant>/<deployment>/<request>/: whatever became of its record.
func (c *checker) output(ctx context.Context, r *request) outputCheck {
	if c.stored[r.rid] {
		return outputStored
	}
	cl := c.sys.s3.Client()
	prefix := strings.Join([]string{"outputs", r.tenant.name, r.dep, r.rid}, "/") + "/"
	n := 0
	for obj := range cl.ListObjects(ctx, c.sys.s3.Bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if obj.Err != nil {
			return outputMissing
		}
		o, err := cl.GetObject(ctx, c.sys.s3.Bucket, obj.Key, minio.GetObjectOptions{})
		if err != nil {
			return outputMissing
		}
		got, err := io.ReadAll(o)
		o.Close()
		if err != nil {
			return outputMissing
		}
		var want bytes.Buffer
		if err := c.sys.sim.WriteOutput(&want, r.rid, path.Base(obj.Key)); err != nil || !bytes.Equal(got, want.Bytes()) {
			return outputWrong
		}
		n++
	}
	if n == 0 {
		return outputMissing
	}
	c.stored[r.rid] = true
	return outputStored
}

func download(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: HTTP %d", url, resp.StatusCode)
	}
	return io.ReadAll(resp.Body)
}

// replicaStats are one replica's resources over the run: peaks under load,
// and whether it came back to where it stood before the load.
type replicaStats struct {
	name                                string
	runs                                int
	peakRSS, peakHeap                   int64
	peakGoroutines                      int
	baseGoroutines, endGoroutines       int // less idle pooled HTTP client connections
	idleConns                           int // idle pooled HTTP client connections at rest
	baseHeap, endHeap, baseRSS, lastRSS int64
	returned                            bool
}

// sampler reads every replica's process metrics once a second.
type sampler struct {
	sys   *system
	mu    sync.Mutex
	stats []replicaStats
}

func newSampler(sys *system) *sampler {
	s := &sampler{sys: sys, stats: make([]replicaStats, len(sys.replicas))}
	for i, r := range sys.replicas {
		s.stats[i].name = r.name
	}
	return s
}

type processMetrics struct {
	goroutines int
	rss, heap  int64
}

// scrape reads a replica's /metrics, after a GC when gc is set.
func scrape(ctx context.Context, r *replica, gc bool) (processMetrics, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if gc {
		if _, err := download(ctx, "http://"+r.adminAddr+"/debug/pprof/heap?gc=1"); err != nil {
			return processMetrics{}, err
		}
	}
	body, err := download(ctx, "http://"+r.adminAddr+"/metrics")
	if err != nil {
		return processMetrics{}, err
	}
	var m processMetrics
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		v, _ := strconv.ParseFloat(value, 64)
		switch name {
		case "go_goroutines":
			m.goroutines = int(v)
		case "process_resident_memory_bytes":
			m.rss = int64(v)
		case "go_memstats_heap_inuse_bytes":
			m.heap = int64(v)
		}
	}
	return m, nil
}

func (s *sampler) baseline(ctx context.Context) error {
	for i, r := range s.sys.replicas {
		m, err := scrape(ctx, r, true)
		if err != nil {
			return fmt.Errorf("%s metrics: %w", r.name, err)
		}
		dump, err := download(ctx, "http://"+r.adminAddr+"/debug/pprof/goroutine?debug=1")
		if err != nil {
			return fmt.Errorf("%s goroutines: %w", r.name, err)
		}
		s.stats[i].baseGoroutines, _ = goroutines(dump)
		s.stats[i].baseHeap, s.stats[i].baseRSS = m.heap, m.rss
	}
	return nil
}

// goroutines counts a replica's goroutines in a goroutine profile
// (debug=1), less the two each idle pooled HTTP client connection holds (to
// RunComfy, S3, the webhook receivers): a pool, bounded by its transport,
// that empties on its own after 90 s idle. idle is those connections.
func goroutines(dump []byte) (n, idle int) {
	for group := range strings.SplitSeq(string(dump), "\n\n") {
		head, _, _ := strings.Cut(group, " @ ")
		count, err := strconv.Atoi(strings.TrimSpace(head))
		if err != nil {
			continue // the "goroutine profile: total N" line
		}
		if strings.Contains(group, "net/http.(*persistConn).readLoop") || strings.Contains(group, "net/http.(*persistConn).writeLoop") {
			idle += count
			continue
		}
		n += count
	}
	return n, idle / 2
}

func (s *sampler) run(ctx context.Context) {
	for ctx.Err() == nil {
		for i, r := range s.sys.replicas {
			if !r.up() {
				continue
			}
			m, err := scrape(ctx, r, false)
			if err != nil {
				continue
			}
			s.mu.Lock()
			st := &s.stats[i]
			st.peakRSS, st.peakHeap, st.peakGoroutines = max(st.peakRSS, m.rss), max(st.peakHeap, m.heap), max(st.peakGoroutines, m.goroutines)
			st.lastRSS = m.rss
			s.mu.Unlock()
		}
		hold(ctx, time.Second)
	}
}

// atRest waits (30 s at most) for each replica's goroutines to come back
// within 20% (and 50) of its count before the load, the watchers gone.
func (s *sampler) atRest(ctx context.Context) []replicaStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for i, r := range s.sys.replicas {
		st := &s.stats[i]
		r.mu.Lock()
		st.runs = r.runs
		r.mu.Unlock()
		limit := st.baseGoroutines + max(20, st.baseGoroutines/5)
		for {
			m, err := scrape(ctx, r, true)
			if err == nil {
				st.endHeap = m.heap
			}
			dump, derr := download(ctx, "http://"+r.adminAddr+"/debug/pprof/goroutine?debug=1")
			if derr == nil {
				st.endGoroutines, st.idleConns = goroutines(dump)
				if st.endGoroutines <= limit {
					st.returned = true
					break
				}
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				// What they are, for the logs kept of the run.
				_ = os.WriteFile(filepath.Join(s.sys.dir, r.name+"-goroutines.txt"), dump, 0o644)
				break
			}
			hold(ctx, time.Second)
		}
	}
	return slices.Clone(s.stats)
}
