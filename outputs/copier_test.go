package outputs_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/comfygate/comfygate/outputs"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/state/memory"
)

// dirStore keeps objects as files in a directory: the copier's logic is
// tested here; the real S3 store has its own tests, and the gateway's
// tests run the two together.
type dirStore struct {
	dir  string
	down atomic.Bool
	mu   sync.Mutex
	puts map[string]int
}

func newDirStore(t *testing.T) *dirStore {
	return &dirStore{dir: t.TempDir(), puts: map[string]int{}}
}

func (s *dirStore) Key(parts ...string) string { return "pre/" + strings.Join(parts, "/") }

func (s *dirStore) Put(ctx context.Context, key string, r io.Reader, _ int64, contentType string, maxBytes int64) (outputs.Stored, error) {
	if s.down.Load() {
		return outputs.Stored{}, errors.New("connection refused")
	}
	path := filepath.Join(s.dir, filepath.FromSlash(key))
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return outputs.Stored{}, err
	}
	f, err := os.Create(path)
	if err != nil {
		return outputs.Stored{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(r, maxBytes+1))
	if err != nil {
		return outputs.Stored{}, err
	}
	if n > maxBytes {
		os.Remove(path)
		return outputs.Stored{}, fmt.Errorf("%s: %w", key, outputs.ErrTooLarge)
	}
	s.mu.Lock()
	s.puts[key]++
	s.mu.Unlock()
	return outputs.Stored{Key: key, Size: n, ContentType: contentType, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

func (s *dirStore) putsOf(key string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.puts[key]
}

// source is RunComfy's output storage: files by path, with failures to
// inject.
type source struct {
	srv   *httptest.Server
	fail  atomic.Int32 // answer 500 to this many more requests
	gets  atomic.Int64
	files map[string][]byte
}

func newSource(t *testing.T, files map[string][]byte) *source {
	s := &source{files: files}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.gets.Add(1)
		if s.fail.Add(-1) >= 0 {
			http.Error(w, "busy", http.StatusInternalServerError)
			return
		}
		b, ok := s.files[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "image/png")
		_, _ = w.Write(b)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

type harness struct {
	b      *memory.Backend
	queue  state.WorkQueue
	tr     *state.Tracker
	store  *dirStore
	src    *source
	reg    *prometheus.Registry
	cfg    outputs.Config
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newHarness(t *testing.T, files map[string][]byte, tweak func(*outputs.Config)) *harness {
	t.Helper()
	h := &harness{b: memory.New(nil), store: newDirStore(t), src: newSource(t, files), reg: prometheus.NewRegistry()}
	h.queue = h.b.Queue("copies")
	var err error
	h.tr, err = state.NewTracker(state.TrackerConfig{Store: h.b, Results: noResults{}, Copies: h.queue})
	if err != nil {
		t.Fatal(err)
	}
	h.cfg = outputs.Config{Queue: h.queue, Tracker: h.tr, Store: h.store, Client: h.src.srv.Client(), Owner: "replica-a",
		MaxBytes: 1 << 20, Timeout: 2 * time.Second, RetryMin: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond,
		Interval: 10 * time.Millisecond, Registry: h.reg}
	if tweak != nil {
		tweak(&h.cfg)
	}
	h.ctx, h.cancel = context.WithCancel(context.Background())
	t.Cleanup(func() {
		h.cancel()
		h.wg.Wait()
	})
	return h
}

// start runs a copier with cfg until the test ends.
func (h *harness) start(t *testing.T, cfg outputs.Config) {
	t.Helper()
	c, err := outputs.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.wg.Go(func() {
		if err := c.Run(h.ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

type noResults struct{}

func (noResults) Result(context.Context, string, string) (*runcomfy.ResultResponse, error) {
	return nil, errors.New("no result reads here")
}

// succeed records request id succeeded with outputs naming the source's
// paths.
func (h *harness) succeed(t *testing.T, id string, outputsDoc string) {
	t.Helper()
	ctx := context.Background()
	if _, _, err := h.tr.Apply(ctx, state.Update{RequestID: id, DeploymentID: "dep", Source: state.SourceSubmit, State: runcomfy.StateQueued, Owner: "team"}); err != nil {
		t.Fatal(err)
	}
	doc := strings.ReplaceAll(outputsDoc, "SRC", h.src.srv.URL)
	if _, _, err := h.tr.Apply(ctx, state.Update{RequestID: id, Source: state.SourceCallback, State: runcomfy.StateSucceeded, Outputs: []byte(doc)}); err != nil {
		t.Fatal(err)
	}
}

// until polls id's record until done says so.
func (h *harness) until(t *testing.T, id, what string, done func(*state.Storage) bool) *state.Storage {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		rec, err := h.b.Get(context.Background(), id)
		if err == nil && rec.Storage != nil && done(rec.Storage) {
			return rec.Storage
		}
		if time.Now().After(deadline) {
			var st *state.Storage
			if rec != nil {
				st = rec.Storage
			}
			t.Fatalf("%s: %s not in time (storage %+v, err %v)", id, what, st, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func stored(s *state.Storage) bool    { return s.State == state.StorageStored }
func failed(s *state.Storage) bool    { return s.State == state.StorageFailed }
func sum(b []byte) string             { x := sha256.Sum256(b); return hex.EncodeToString(x[:]) }
func bytesOf(n int, seed byte) []byte { return []byte(strings.Repeat(string(rune('a'+seed)), n)) }

const twoFiles = `{"9": {"images": [{"filename": "a.png", "url": "SRC/o/a.png"}, {"url": "SRC/o/b.png"}]}, "38:42": {"text": [["a caption"]]}}`

// TestCopyStoresEveryOutput: a succeeded request's files are stored under
// tenant/deployment/request/node/file with their sizes and SHA-256, the
// record says stored, the queue is empty, and the metrics count it.
func TestCopyStoresEveryOutput(t *testing.T) {
	files := map[string][]byte{"/o/a.png": bytesOf(300_000, 0), "/o/b.png": bytesOf(1000, 1)}
	h := newHarness(t, files, nil)
	h.succeed(t, "req-1", twoFiles)
	h.start(t, h.cfg)
	s := h.until(t, "req-1", "stored", stored)
	if len(s.Objects) != 2 || s.Attempts != 1 || s.Error != "" {
		t.Fatalf("storage %+v", s)
	}
	for i, want := range []struct{ key, path string }{{"pre/team/dep/req-1/9/a.png", "/o/a.png"}, {"pre/team/dep/req-1/9/b.png", "/o/b.png"}} {
		o := s.Objects[i]
		if o.Key != want.key || o.Size != int64(len(files[want.path])) || o.SHA256 != sum(files[want.path]) || o.ContentType != "image/png" || o.Node != "9" {
			t.Errorf("object %d = %+v, want key %s and the bytes of %s", i, o, want.key, want.path)
		}
	}
	if n, _ := h.queue.Len(context.Background()); n != 0 {
		t.Errorf("queue holds %d after the copy", n)
	}
	if got := counter(t, h.reg, "comfygate_output_copies_total", "stored"); got != 1 {
		t.Errorf("stored copies counted %v", got)
	}
}

// TestCopyRetriesAndShowsTheFailure: RunComfy's storage answering 500, then
// the object store down: each failed attempt is recorded on the request
// (pending, with the error) and retried; once both answer, it is stored.
func TestCopyRetriesAndShowsTheFailure(t *testing.T) {
	files := map[string][]byte{"/o/a.png": bytesOf(1000, 0), "/o/b.png": bytesOf(10, 1)}
	h := newHarness(t, files, nil)
	h.src.fail.Store(2)
	h.store.down.Store(true)
	h.succeed(t, "req-1", twoFiles)
	h.start(t, h.cfg)
	h.until(t, "req-1", "the source's failure shown", func(s *state.Storage) bool {
		return s.State == state.StoragePending && strings.Contains(s.Error, "HTTP 500")
	})
	h.until(t, "req-1", "the store's failure shown", func(s *state.Storage) bool {
		return s.State == state.StoragePending && strings.Contains(s.Error, "connection refused")
	})
	h.store.down.Store(false)
	s := h.until(t, "req-1", "stored", stored)
	if s.Attempts < 4 || s.Error != "" || s.FirstAttempt.IsZero() {
		t.Errorf("storage %+v: want at least 4 attempts, no error", s)
	}
	if got := counter(t, h.reg, "comfygate_output_copies_total", "retry"); got < 3 {
		t.Errorf("retries counted %v", got)
	}
}

// TestCopyFailsWhatCannotBeCopied: an output over the size limit, one gone
// from RunComfy, and one that fails past the horizon end the copy as failed,
// with the reason, and leave the queue.
func TestCopyFailsWhatCannotBeCopied(t *testing.T) {
	files := map[string][]byte{"/o/big.png": bytesOf(2<<20, 0), "/o/ok.png": bytesOf(10, 1)}
	h := newHarness(t, files, func(c *outputs.Config) { c.Horizon = 200 * time.Millisecond })
	h.succeed(t, "req-big", `{"9": {"images": [{"url": "SRC/o/big.png"}]}}`)
	h.succeed(t, "req-gone", `{"9": {"images": [{"url": "SRC/o/missing.png"}]}}`)
	h.start(t, h.cfg)
	if s := h.until(t, "req-big", "failed", failed); !strings.Contains(s.Error, "larger than the limit") || s.Attempts != 1 {
		t.Errorf("too large: %+v", s)
	}
	if s := h.until(t, "req-gone", "failed", failed); !strings.Contains(s.Error, "gone") || s.Attempts != 1 {
		t.Errorf("gone: %+v", s)
	}
	h.store.down.Store(true)
	h.succeed(t, "req-horizon", `{"9": {"images": [{"url": "SRC/o/ok.png"}]}}`)
	if s := h.until(t, "req-horizon", "failed past the horizon", failed); !strings.Contains(s.Error, "connection refused") || s.Attempts < 2 {
		t.Errorf("horizon: %+v", s)
	}
	if n, _ := h.queue.Len(context.Background()); n != 0 {
		t.Errorf("queue holds %d after every copy ended", n)
	}
}

// TestCopyOnceAcrossCopiers: two copiers on one queue: every request is
// stored, each object put once.
func TestCopyOnceAcrossCopiers(t *testing.T) {
	files := map[string][]byte{"/o/a.png": bytesOf(50_000, 0), "/o/b.png": bytesOf(10, 1)}
	h := newHarness(t, files, nil)
	const n = 20
	for i := range n {
		h.succeed(t, fmt.Sprintf("req-%d", i), twoFiles)
	}
	h.start(t, h.cfg)
	other := h.cfg
	other.Owner, other.Registry = "replica-b", nil
	h.start(t, other)
	for i := range n {
		id := fmt.Sprintf("req-%d", i)
		h.until(t, id, "stored", stored)
		for _, f := range []string{"a.png", "b.png"} {
			if p := h.store.putsOf("pre/team/dep/" + id + "/9/" + f); p != 1 {
				t.Errorf("%s/%s put %d times", id, f, p)
			}
		}
	}
}

// TestCopyOfADeadReplicaTakenOver: a replica that took a copy's lease and
// died: another copies it once the lease has passed.
func TestCopyOfADeadReplicaTakenOver(t *testing.T) {
	files := map[string][]byte{"/o/a.png": bytesOf(10, 0), "/o/b.png": bytesOf(10, 1)}
	h := newHarness(t, files, func(c *outputs.Config) { c.Timeout = 300 * time.Millisecond })
	h.succeed(t, "req-1", twoFiles)
	ttl := 1300 * time.Millisecond // the dead replica's: its Timeout and a second
	if ok, err := h.queue.Lease(context.Background(), "req-1", "replica-dead", ttl); err != nil || !ok {
		t.Fatalf("Lease: %v %v", ok, err)
	}
	taken := time.Now()
	h.start(t, h.cfg)
	h.until(t, "req-1", "stored by the survivor", stored)
	if d := time.Since(taken); d < ttl {
		t.Errorf("stored %v after the dead replica's lease was taken, before it expired (%v)", d, ttl)
	}
}

// counter is the value of name{outcome} in reg.
func counter(t *testing.T, reg *prometheus.Registry, name, outcome string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "outcome" && l.GetValue() == outcome {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no %s{outcome=%q}", name, outcome)
	return 0
}

// TestCopyDueBeforeItsRecordSucceeded: a copy is queued just before the save
// that makes its record succeeded, so a copier may find it due while the
// record still says running (the save stalled, or the record is being put
// back after Redis lost it). The copy is put off, not dropped, and done once
// the success lands; a copy whose record never succeeds leaves the queue
// after a few looks.
func TestCopyDueBeforeItsRecordSucceeded(t *testing.T) {
	files := map[string][]byte{"/o/a.png": bytesOf(100, 0), "/o/b.png": bytesOf(10, 1)}
	h := newHarness(t, files, nil)
	ctx := context.Background()
	for _, id := range []string{"req-late", "req-never"} {
		if _, _, err := h.tr.Apply(ctx, state.Update{RequestID: id, DeploymentID: "dep", Source: state.SourceSubmit, State: runcomfy.StateRunning, Owner: "team"}); err != nil {
			t.Fatal(err)
		}
		if err := h.queue.Add(ctx, id, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	h.start(t, h.cfg)
	postponed := func(id string) bool {
		due, err := h.queue.Due(ctx, time.Now(), 10)
		return err == nil && !slices.Contains(due, id)
	}
	waitFor(t, "the early copy put off", func() bool { return postponed("req-late") })
	if n, _ := h.queue.Len(ctx); n != 2 {
		t.Fatalf("queue holds %d copies after the early looks, want both kept", n)
	}
	// The success lands now, as its save would have, without queueing again.
	cur, err := h.b.Get(ctx, "req-late")
	if err != nil {
		t.Fatal(err)
	}
	next := cur.Clone()
	next.Seq++
	next.State = runcomfy.StateSucceeded
	next.Outputs = []byte(strings.ReplaceAll(twoFiles, "SRC", h.src.srv.URL))
	next.Storage = &state.Storage{State: state.StoragePending}
	if err := h.b.Save(ctx, next, time.Hour); err != nil {
		t.Fatal(err)
	}
	h.until(t, "req-late", "stored", stored)
	waitFor(t, "the copy of a record that never succeeds dropped", func() bool {
		due, _ := h.queue.Due(ctx, time.Now().Add(time.Hour), 10)
		return !slices.Contains(due, "req-never")
	})
}

// waitFor polls cond for up to 20 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not in time", what)
		}
	}
}
