package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/internal/s3test"
	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
	"github.com/comfygate/comfygate/state/redisstore"
)

// outputBytes is the size of each output file the simulator serves here.
const outputBytes = 3<<20 + 1234

// TestCopyOfAKilledReplicaCompletesOnAnother: three replicas on one Redis
// copy outputs (files of several MiB) to a real S3 server. The replica
// copying a request is killed while it downloads the outputs; another
// replica takes the copy over once the dead one's lease has passed and
// stores it, once: the objects hold the simulator's bytes, with the SHA-256
// the state gives, and one copy is counted across the survivors.
func TestCopyOfAKilledReplicaCompletesOnAnother(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binaries against Redis and an S3 server")
	}
	t.Parallel()
	// The S3 server is built on its first use, which on a fresh machine takes
	// longer than the test's own steps may: their time starts once it serves.
	s3 := s3test.Start(t)
	ctx := testContext(t)
	c := newCluster(ctx, t, clusterConfig{
		queueTime: 100 * time.Millisecond, runTime: 100 * time.Millisecond,
		simArgs: []string{"--output-bytes", strconv.Itoa(outputBytes)},
		args:    []string{"--storage-url", s3.URL("outputs"), "--storage-copy-timeout", "2s"},
		env:     []string{"AWS_ACCESS_KEY_ID=" + s3.AccessKey, "AWS_SECRET_ACCESS_KEY=" + s3.SecretKey},
	})
	release := c.up.holdMedia()
	defer release()
	rid := c.submit(ctx, t, c.a)
	eventually(ctx, t, "the copy's first download", func() bool { return c.up.media() > 0 })

	owner, err := c.rdb.Get(ctx, redisstore.QueueLeaseKey(c.prefix, "copies", rid)).Result()
	if errors.Is(err, redis.Nil) {
		t.Fatal("no replica holds the copy's lease while it downloads")
	} else if err != nil {
		t.Fatal(err)
	}
	pid, ok := leasePID(owner)
	victim := c.byPID(pid)
	if !ok || victim == nil {
		t.Fatalf("the copy's lease is held by %q, not a replica", owner)
	}
	victim.proc.kill(t)
	release()
	t.Logf("killed %s mid-copy", victim.name)

	var survivor *gateway
	for _, g := range c.gateways() {
		if g != victim {
			survivor = g
		}
	}
	var st *comfygatev1.RequestState
	eventually(ctx, t, "the outputs stored by a survivor", func() bool {
		res, err := survivor.api.GetResult(ctx, &comfygatev1.GetResultRequest{DeploymentId: deployment, RequestId: rid})
		if err != nil {
			return false
		}
		st = res.GetRequest()
		return st.GetStorage().GetState() == comfygatev1.StorageState_STORAGE_STATE_STORED
	})
	sim := runcomfysim.New(runcomfysim.Options{OutputBytes: outputBytes})
	defer sim.Close()
	for _, o := range st.GetStorage().GetObjects() {
		var want bytes.Buffer
		if err := sim.WriteOutput(&want, rid, o.GetFile()); err != nil {
			t.Fatal(err)
		}
		got := fetchURL(ctx, t, c, o.GetUrl())
		sum := sha256.Sum256(got)
		if !bytes.Equal(got, want.Bytes()) || o.GetSize() != outputBytes || o.GetSha256() != hex.EncodeToString(sum[:]) {
			t.Errorf("object %s: %d bytes, size %d, sha %s; want the simulator's %d bytes", o.GetKey(), len(got), o.GetSize(), o.GetSha256(), want.Len())
		}
	}
	if len(st.GetStorage().GetObjects()) == 0 {
		t.Fatalf("stored with no objects: %v", st.GetStorage())
	}
	total := 0
	for _, g := range c.gateways() {
		if g != victim {
			total += counterOn(ctx, t, c, g, `comfygate_output_copies_total{outcome="stored"}`)
		}
	}
	if total != 1 {
		t.Errorf("the survivors counted %d stored copies, want 1", total)
	}
}

func fetchURL(ctx context.Context, t *testing.T, c *cluster, url string) []byte {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.httpc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: HTTP %d, %v", url, resp.StatusCode, err)
	}
	return b
}
