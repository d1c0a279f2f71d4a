package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/internal/s3test"
	"github.com/comfygate/comfygate/storage"
)

// outputCopies measures the copy of outputs to object storage: two replicas
// copy the outputs of requests that a burst of callbacks ends (one file
// each, served by a local stand-in for RunComfy's storage), against the
// same files fetched and stored with the same client (storage.Store.Put)
// by the harness itself, with the same concurrency, in the same run.
func outputCopies(ctx context.Context, e *env) (result, error) {
	requests, size := 64, 8<<20
	if e.smoke {
		requests, size = 4, 1<<20
	}
	const workers = 8 // the copiers of two replicas: 4 each
	res := result{Setup: fmt.Sprintf("Two replicas sharing Redis and a Versity S3 gateway on loopback (posix backend on the run's disk). "+
		"%d requests, each with one output file of %s served by a local HTTP server standing in for RunComfy's storage, end by a succeeded callback each, POSTed at once to replica A; "+
		"each replica copies 4 at a time. Per-output latency runs from the callback's POST to the stored state's arrival at a gRPC watcher on replica B; "+
		"throughput counts from the first POST to the last stored state. "+
		"The reference fetches the same files from the same server and stores them with the gateway's storage client (storage.Store.Put) from the harness, %d at a time, its latency from the start of its burst to each put's end (both figures include the wait for a free worker).",
		requests, fmtBytes(float64(size)), workers)}

	s3, err := s3test.StartServer(ctx)
	if err != nil {
		return res, err
	}
	defer s3.Close()
	file := bytes.Repeat([]byte("comfygate output "), size/17+1)[:size]
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return res, err
	}
	files := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "image/png")
		w.Header().Set("Content-Length", strconv.Itoa(len(file)))
		_, _ = w.Write(file)
	}), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = files.Serve(lis) }()
	defer files.Close()
	fileURL := "http://" + lis.Addr().String() + "/o/"

	c, stop, err := e.startClusterEnv(ctx, "copies", 2,
		[]string{"AWS_ACCESS_KEY_ID=" + s3.AccessKey, "AWS_SECRET_ACCESS_KEY=" + s3.SecretKey},
		"--storage-url", s3.URL("gateway"), "--storage-copy-timeout", "5m")
	defer stop()
	if err != nil {
		return res, err
	}
	a, b, path := c.replicas[0], c.replicas[1], c.path
	cc, client, err := b.dial()
	if err != nil {
		return res, err
	}
	defer cc.Close()
	ids := make([]string, requests)
	for k := range ids {
		sub, err := client.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: benchDep, InputJson: `{"overrides": {}}`})
		if err != nil {
			return res, err
		}
		ids[k] = sub.GetRequest().GetRequestId()
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	t := newTimings(requests, 1)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for k, id := range ids {
		stream, err := client.WatchRequest(wctx, &comfygatev1.WatchRequestRequest{DeploymentId: benchDep, RequestId: id})
		if err != nil {
			return res, err
		}
		wg.Go(func() {
			for {
				msg, err := stream.Recv()
				if err != nil {
					return
				}
				if msg.GetRequest().GetStorage().GetState() == comfygatev1.StorageState_STORAGE_STATE_STORED {
					t.received(k, 1)
				}
			}
		})
	}
	m := meterOf(a.named(), b.named(), e.redis.named())
	m.begin()
	start := time.Now()
	var sent atomic.Int64 // the next request to end
	if _, err := closedLoop(ctx, a.httpAddr, 8, 0, requests, func(_, _ int, buf []byte) (string, []byte) {
		k := int(sent.Add(1) - 1)
		t.sent(k, 1)
		return path, succeededWith(buf, ids[k], fileURL+strconv.Itoa(k)+".png")
	}); err != nil {
		return res, err
	}
	t.wait(ctx, 5*time.Minute)
	took := time.Duration(0)
	for k := range ids {
		if r := t.recvs[k][1].Load(); r > 0 {
			took = max(took, time.Duration(r)-start.Sub(t.start))
		}
	}
	cpu := m.end(requests)
	got, missing := t.latencies()
	if len(got) == 0 {
		return res, fmt.Errorf("no output was stored (%d missing)", missing)
	}

	// The reference: the same files, fetched and put by the harness.
	scfg, err := storage.ParseURL(s3.URL("reference"))
	if err != nil {
		return res, err
	}
	scfg.Getenv = s3.Getenv
	store, err := storage.New(ctx, scfg)
	if err != nil {
		return res, err
	}
	defer store.Close()
	ref := make(samples, requests)
	refStart := time.Now()
	var next sync.Mutex
	i := 0
	errs := make([]error, workers)
	var rwg sync.WaitGroup
	for w := range workers {
		rwg.Go(func() {
			for {
				next.Lock()
				k := i
				i++
				next.Unlock()
				if k >= requests {
					return
				}
				resp, err := http.Get(fileURL + strconv.Itoa(k) + ".png")
				if err != nil {
					errs[w] = err
					return
				}
				_, err = store.Put(ctx, store.Key("ref", strconv.Itoa(k)), resp.Body, resp.ContentLength, "image/png", 1<<30)
				resp.Body.Close()
				if err != nil {
					errs[w] = err
					return
				}
				// From the burst's start, as the gateway's figure runs from
				// its callback's POST: both include the wait for a worker.
				ref[k] = time.Since(refStart)
			}
		})
	}
	rwg.Wait()
	refTook := time.Since(refStart)
	for _, err := range errs {
		if err != nil {
			return res, err
		}
	}
	ref = ref.sorted()

	mib := float64(size) / (1 << 20)
	rate, refRate := float64(len(got))*mib/took.Seconds(), float64(requests)*mib/refTook.Seconds()
	quantileRow := func(name string, q float64) row {
		v, r := got.quantile(q), ref.quantile(q)
		return row{name, fmtDur(v), fmtDur(r), ratio(float64(v), float64(r)), "", ""}
	}
	res.Rows = []row{
		{"copy throughput, two replicas (ref: direct puts)", fmt.Sprintf("%.1f MiB/s", rate), fmt.Sprintf("%.1f MiB/s", refRate), ratio(rate, refRate), "", ""},
		quantileRow("per output: callback → stored at a watcher, p50 (ref: burst start → put done)", 0.50),
		quantileRow("per output: p99", 0.99),
		{"outputs stored", fmt.Sprintf("%d of %d", len(got), requests), fmt.Sprintf("%d of %d", requests, requests), "", "", ""},
	}
	res.CPU = []cpuTable{{Window: "burst, until the last stored state", Op: "output", Ops: requests, Rows: cpu}}
	return res, nil
}

// succeededWith is a succeeded callback for rid whose one output file is at
// url.
func succeededWith(buf []byte, rid, url string) []byte {
	b := buf[:0]
	b = append(b, `{"request_id": "`...)
	b = append(b, rid...)
	b = append(b, `", "status": "succeeded", "output": {"9": {"images": [{"filename": "out.png", "url": "`...)
	b = append(b, url...)
	b = append(b, `"}]}}}`...)
	return b
}
