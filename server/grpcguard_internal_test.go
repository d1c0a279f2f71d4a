package server

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"golang.org/x/sync/semaphore"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/tap"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// TestReservation: a stream takes room for the largest message before its
// message is read; once the message is in, a submit keeps its size until
// the stream ends, and any other call (a few bytes) keeps nothing; whatever
// ends the stream gives back what is left, once. A release of more than is
// held would panic in the semaphore.
func TestReservation(t *testing.T) {
	const budget, maxMsg = 1 << 20, 64 << 10
	for _, tc := range []struct {
		name     string
		method   string
		msg      int64 // the message's size; -1: the stream ends before it
		heldThen int64 // held once the message is in
	}{
		{name: "watch", method: comfygatev1.GatewayService_WatchRequest_FullMethodName, msg: 40, heldThen: 0},
		{name: "watch, an empty message", method: comfygatev1.GatewayService_WatchRequest_FullMethodName, msg: 0, heldThen: 0},
		{name: "get status", method: comfygatev1.GatewayService_GetStatus_FullMethodName, msg: 40, heldThen: 0},
		{name: "submit", method: comfygatev1.GatewayService_Submit_FullMethodName, msg: 5000, heldThen: 5000},
		{name: "watch, ended before its message", method: comfygatev1.GatewayService_WatchRequest_FullMethodName, msg: -1},
		{name: "submit, ended before its message", method: comfygatev1.GatewayService_Submit_FullMethodName, msg: -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inflight := newInflightBudget(budget, maxMsg, false)
			g := &streamGuard{
				log: slog.New(slog.NewTextHandler(io.Discard, nil)), inflight: inflight, maxMsg: maxMsg,
				gateway: newHandoff(), readTimeout: time.Minute,
				publicStreams: semaphore.NewWeighted(1), publicMessages: semaphore.NewWeighted(1),
				waiting: map[string]int{},
			}
			held := func() int64 {
				t.Helper()
				for n := int64(0); n <= budget; n++ {
					if inflight.total.TryAcquire(budget - n) {
						inflight.total.Release(budget - n)
						return n
					}
				}
				t.Fatal("the budget is overdrawn")
				return 0
			}
			parent, end := context.WithCancel(t.Context())
			ctx, err := g.tap(parent, &tap.Info{FullMethodName: tc.method, Header: metadata.MD{}})
			if err != nil {
				t.Fatal(err)
			}
			g.HandleRPC(ctx, &stats.InHeader{FullMethod: tc.method})
			if got := held(); got != maxMsg {
				t.Fatalf("held before the message: %d, want %d", got, maxMsg)
			}
			if tc.msg >= 0 {
				g.HandleRPC(ctx, &stats.InPayload{Length: int(tc.msg)})
				if got := held(); got != tc.heldThen {
					t.Errorf("held once the message is in: %d, want %d", got, tc.heldThen)
				}
			}
			end()
			<-ctx.Done()
			deadline := time.Now().Add(10 * time.Second)
			for held() != 0 {
				if time.Now().After(deadline) {
					t.Fatalf("held after the stream ended: %d, want 0", held())
				}
				time.Sleep(time.Millisecond) // the release runs on the context's AfterFunc goroutine
			}
		})
	}
}
