package redisstore_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfygate/comfygate/internal/redistest"
	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/state/redisstore"
)

// BenchmarkSaveRedisCPU measures what a save costs Redis itself, in CPU per
// save (redis-cpu-µs/op, from INFO cpu), where a callback's cost is largest
// after the replica's own: each op is one update of a request walking queued,
// running and succeeded, through the backend as the tracker calls it (the
// poll schedule, the listing indexes, the usage counters at the end), from
// 64 callers at once so that saves share pipelines as under load. The
// reference, in the same run, is what a bare receiver asks of Redis for a
// callback: a pipelined HSET and PUBLISH of the same record, 64 at a time.
// Both run on a Redis of their own without persistence, as the bench
// harness's, so that its CPU is theirs alone.
//
//	go test ./state/redisstore -run '^$' -bench BenchmarkSaveRedisCPU -benchtime 20000x -count 3
func BenchmarkSaveRedisCPU(b *testing.B) {
	srv, err := redistest.StartPrivate("--appendonly", "no")
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Stop()
	b.Run("bare-hset-publish", func(b *testing.B) { benchBareSave(b, srv.Client(b)) })
	b.Run("save", func(b *testing.B) { benchSave(b, srv.Client(b)) })
}

// lifeRecord is a record of request id at step i of its life (0 queued, 1
// running, 2 succeeded with four outputs).
func lifeRecord(id string, i int) *state.Record {
	now := time.Now()
	rec := &state.Record{RequestID: id, DeploymentID: "d3b8a1f0-6c2e-4b7d-9e1a-2f3c4d5e6f70", Owner: "tenant-a", Epoch: 1,
		Seq: int64(i + 1), CreatedAt: now, UpdatedAt: now, SyncedAt: now, State: runcomfy.StateQueued, UpstreamStatus: "in_queue"}
	switch i {
	case 1:
		rec.State, rec.UpstreamStatus, rec.StartedAt = runcomfy.StateRunning, "in_progress", now
	case 2:
		rec.State, rec.UpstreamStatus, rec.StartedAt, rec.FinishedAt = runcomfy.StateSucceeded, "succeeded", now, now
		for n := range 4 {
			rec.OutputURLs = append(rec.OutputURLs, fmt.Sprintf("https://cdn.runcomfy.net/outputs/%s/ComfyUI_%05d_.png", id, n+1))
		}
		rec.Outputs, _ = json.Marshal(map[string][]string{"images": rec.OutputURLs})
	}
	return rec
}

// redisCPU is the Redis server's CPU time so far.
func redisCPU(b *testing.B, rdb *redis.Client) time.Duration {
	b.Helper()
	info, err := rdb.InfoMap(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var sum float64
	for _, k := range []string{"used_cpu_user", "used_cpu_sys"} {
		v, err := strconv.ParseFloat(strings.TrimSpace(info["CPU"][k]), 64)
		if err != nil {
			b.Fatalf("INFO cpu %s: %v", k, err)
		}
		sum += v
	}
	return time.Duration(sum * float64(time.Second))
}

func reportRedisCPU(b *testing.B, rdb *redis.Client, before time.Duration) {
	b.ReportMetric(float64((redisCPU(b, rdb)-before).Microseconds())/float64(b.N), "redis-cpu-µs/op")
}

func benchBareSave(b *testing.B, rdb *redis.Client) {
	prefix := redistest.Prefix(b)
	ctx := context.Background()
	data, err := json.Marshal(lifeRecord("5f0c1e52-8a3b-4d7e-9b61-2f4c8d0a7e13", 2))
	if err != nil {
		b.Fatal(err)
	}
	before := redisCPU(b, rdb)
	b.ResetTimer()
	for done := 0; done < b.N; {
		pipe := rdb.Pipeline()
		for n := 0; n < 64 && done < b.N; n, done = n+1, done+1 {
			key := prefix + "bare:" + strconv.Itoa(done)
			pipe.HSet(ctx, key, "data", data)
			pipe.Publish(ctx, key, data)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	reportRedisCPU(b, rdb, before)
}

func benchSave(b *testing.B, rdb *redis.Client) {
	prefix := redistest.Prefix(b)
	be, err := redisstore.New(rdb, redisstore.Options{Prefix: prefix, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	var next atomic.Int64
	before := redisCPU(b, rdb)
	b.SetParallelism(32) // 64 callers on two cores
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		id, step := "", 3
		for pb.Next() {
			if step == 3 {
				id, step = fmt.Sprintf("%08x-8a3b-4d7e-9b61-2f4c8d0a7e13", next.Add(1)), 0
			}
			rec := lifeRecord(id, step)
			due, forget := time.Now().Add(time.Minute), false
			if step == 2 {
				due, forget = time.Time{}, true
			}
			if err := be.SaveScheduled(ctx, rec, time.Hour, due, forget); err != nil {
				b.Error(err)
				return
			}
			step++
		}
	})
	b.StopTimer()
	reportRedisCPU(b, rdb, before)
}
