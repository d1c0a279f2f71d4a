package redisstore_test

// BenchmarkList measures ListRequests' store side at scale: a page of 50 of
// one tenant's newest requests (all, one deployment and status, and a page
// deep in the listing) among N records on a private Redis, beside a single
// read of one record (Get) in the same run, the floor of any read. N is
// 100,000 by default; COMFYGATE_BENCH_LIST_RECORDS=1000000 for the figure
// in BENCHMARKS.md (filling takes a minute). Each case reports its p50 and
// p99 per call.
//
//	COMFYGATE_BENCH_LIST_RECORDS=1000000 go test ./state/redisstore -run '^$' -bench BenchmarkList -benchtime 2000x

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/comfygate/comfygate/internal/redistest"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/state/redisstore"
)

func BenchmarkList(b *testing.B) {
	n := 100_000
	if v := os.Getenv("COMFYGATE_BENCH_LIST_RECORDS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			b.Fatal(err)
		}
	}
	srv, err := redistest.StartPrivate()
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Stop()
	rdb := srv.Client(b)
	be, err := redisstore.New(rdb, redisstore.Options{Prefix: "bench:", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	// Ten tenants, four deployments each, states spread: the tenant listed
	// has a tenth of the records.
	base := time.Now().Add(-24 * time.Hour)
	start := time.Now()
	var wg sync.WaitGroup
	const workers = 64
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				rec := &state.Record{
					RequestID: fmt.Sprintf("req-%08d", i), DeploymentID: fmt.Sprintf("dep-%d", i/10%4),
					Owner: fmt.Sprintf("tenant-%d", i%10), State: state.ListStates[i%5],
					CreatedAt: base.Add(time.Duration(i) * time.Millisecond), Seq: 1, Epoch: 1,
				}
				if err := be.Save(ctx, rec, time.Hour); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.Logf("%d records saved in %v", n, time.Since(start).Round(time.Millisecond))
	deep, err := be.List(ctx, state.ListQuery{Owner: "tenant-3", Limit: 500})
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		call func() error
	}{
		{"reference: Get of one record", func() error { _, err := be.Get(ctx, "req-00000003"); return err }},
		{"List 50, a tenant's newest", func() error {
			page, err := be.List(ctx, state.ListQuery{Owner: "tenant-3", Limit: 50})
			if err == nil && len(page.Records) != 50 {
				err = fmt.Errorf("a page of %d", len(page.Records))
			}
			return err
		}},
		{"List 50, one deployment and status", func() error {
			// tenant-3's requests are all failed (i%10 == 3, so i%5 == 3):
			// a full page of one deployment's.
			page, err := be.List(ctx, state.ListQuery{Owner: "tenant-3", DeploymentID: "dep-1", States: []runcomfy.State{runcomfy.StateFailed}, Limit: 50})
			if err == nil && len(page.Records) != 50 {
				err = fmt.Errorf("a page of %d", len(page.Records))
			}
			return err
		}},
		{"List 50, after 500", func() error {
			_, err := be.List(ctx, state.ListQuery{Owner: "tenant-3", Limit: 50, After: deep.Next})
			return err
		}},
	} {
		b.Run(c.name, func(b *testing.B) { benchLatency(b, c.call) })
	}
}

// benchLatency runs call b.N times and reports its p50 and p99.
func benchLatency(b *testing.B, call func() error) {
	lat := make([]time.Duration, 0, b.N)
	for b.Loop() {
		t0 := time.Now()
		if err := call(); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
