package app

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/internal/s3test"
	"github.com/comfygate/comfygate/storage"
)

// TestOutputsCopiedToTheStore: a gateway with --storage-url (a real S3
// server) copies a succeeded request's outputs: a watch goes on past the
// success until the copy's end, the state says stored, each
// object's URL fetches exactly RunComfy's bytes, with the size and SHA-256
// the state gives, under tenant/deployment/request/node/file; another tenant
// cannot read the request, so cannot obtain the URLs.
func TestOutputsCopiedToTheStore(t *testing.T) {
	s3 := s3test.Start(t)
	keys := filepath.Join(t.TempDir(), "keys")
	const keyA, keyB = "outputs-key-a-0123456789abcdef", "outputs-key-b-0123456789abcdef"
	if err := os.WriteFile(keys, []byte("tenant-a "+keyA+"\ntenant-b "+keyB+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, api := startStored(t, s3, keys)
	as := func(key string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
	}
	rid := submitStored(ctx, t, api, as(keyA))
	// A watcher follows the request past its success to the copy's end.
	stream, err := api.WatchRequest(as(keyA), &comfygatev1.WatchRequestRequest{DeploymentId: "dep-1", RequestId: rid})
	if err != nil {
		t.Fatal(err)
	}
	var last *comfygatev1.RequestState
	var statuses []string
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("watch: %v", err)
		}
		last = msg.GetRequest()
		statuses = append(statuses, last.GetStatus().String()+"/"+last.GetStorage().GetState().String())
	}
	if last.GetStorage().GetState() != comfygatev1.StorageState_STORAGE_STATE_STORED || last.GetStatus() != comfygatev1.Status_STATUS_SUCCEEDED {
		t.Errorf("the watch ended at %v, want the stored state last (states %v)", last, statuses)
	}
	st := untilStorage(ctx, t, api, as(keyA), rid, func(s *comfygatev1.OutputStorage) bool {
		return s.GetState() == comfygatev1.StorageState_STORAGE_STATE_STORED
	})
	objects := st.GetStorage().GetObjects()
	if len(objects) == 0 || len(objects) != len(st.GetOutputUrls()) {
		t.Fatalf("%d objects for %d outputs: %v", len(objects), len(st.GetOutputUrls()), st.GetStorage())
	}
	for i, o := range objects {
		want := fetch(t, st.GetOutputUrls()[i])
		got := fetch(t, o.GetUrl())
		sum := sha256.Sum256(got)
		if string(got) != string(want) || o.GetSize() != int64(len(got)) || o.GetSha256() != hex.EncodeToString(sum[:]) {
			t.Errorf("object %s: %d bytes (state says %d, sha %s), RunComfy's %d", o.GetKey(), len(got), o.GetSize(), o.GetSha256(), len(want))
		}
		if !strings.HasPrefix(o.GetKey(), "outputs/tenant-a/dep-1/"+rid+"/") || o.GetUrlExpiresAt() == nil {
			t.Errorf("object %v: want a key under outputs/tenant-a/dep-1/%s/ and an expiring URL", o, rid)
		}
	}
	if _, err := api.GetResult(as(keyB), &comfygatev1.GetResultRequest{DeploymentId: "dep-1", RequestId: rid}); status.Code(err) != codes.NotFound {
		t.Errorf("another tenant's GetResult: %v, want NotFound", err)
	}
}

// TestStoreThatDoesNotAnswerStopsTheStart: a --storage-url whose bucket
// does not exist, or whose server is down, is refused by New.
func TestStoreThatDoesNotAnswerStopsTheStart(t *testing.T) {
	s3 := s3test.Start(t)
	for _, tc := range []struct{ name, url string }{
		{"no such bucket", strings.Replace(s3.URL("p"), s3.Bucket, "no-such-bucket", 1)},
		{"no server", "s3://bucket/p?endpoint=http://" + freeAddr(t)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := ParseConfig([]string{"--simulate", "--grpc-addr", freeAddr(t), "--http-addr", freeAddr(t), "--storage-url", tc.url}, s3.Getenv, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if a, err := New(t.Context(), cfg, slog.New(slog.DiscardHandler)); err == nil || a != nil || !strings.Contains(err.Error(), "--storage-url") {
				t.Fatalf("New = %v, %v; want the store refused", a, err)
			}
		})
	}
}

// startStored runs a gateway with --simulate, the keys file keys and its
// outputs copied to s3, until the test ends; it returns the test's context
// and a client.
func startStored(t *testing.T, s3 *s3test.Server, keys string) (context.Context, comfygatev1.GatewayServiceClient) {
	t.Helper()
	ctx, api, _ := runGateway(t, s3.Getenv, "--simulate", "--api-keys-file", keys,
		"--storage-url", s3.URL("outputs"), "--storage-url-lifetime", "10m")
	return ctx, api
}

// submitStored submits once the gateway serves, and returns the request id.
func submitStored(ctx context.Context, t *testing.T, api comfygatev1.GatewayServiceClient, as context.Context) string {
	t.Helper()
	for {
		sub, err := api.Submit(as, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{"overrides": {}}`})
		if status.Code(err) != codes.Unavailable { // Unavailable: not serving yet
			if err != nil {
				t.Fatal(err)
			}
			return sub.GetRequest().GetRequestId()
		}
		select {
		case <-ctx.Done():
			t.Fatal("the gateway did not serve in time")
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// untilStorage reads rid until its storage satisfies done.
func untilStorage(ctx context.Context, t *testing.T, api comfygatev1.GatewayServiceClient, as context.Context, rid string, done func(*comfygatev1.OutputStorage) bool) *comfygatev1.RequestState {
	t.Helper()
	for {
		res, err := api.GetResult(as, &comfygatev1.GetResultRequest{DeploymentId: "dep-1", RequestId: rid})
		if err != nil {
			t.Fatal(err)
		}
		if st := res.GetRequest(); done(st.GetStorage()) {
			return st
		}
		select {
		case <-ctx.Done():
			t.Fatalf("request %s: storage not as wanted in time: %v", rid, res.GetRequest().GetStorage())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestOutputsWaitForAStoreThatIsDown: the bucket's server stops before a
// request succeeds: the request shows its copy pending with the failure
// while it is retried, and is stored once the server is back.
func TestOutputsWaitForAStoreThatIsDown(t *testing.T) {
	s3 := s3test.Start(t)
	keys := filepath.Join(t.TempDir(), "keys")
	const key = "outputs-down-key-0123456789abcdef"
	if err := os.WriteFile(keys, []byte("tenant-a "+key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, api := startStored(t, s3, keys)
	as := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
	rid := submitStored(ctx, t, api, as)
	if err := s3.Stop(); err != nil {
		t.Fatal(err)
	}
	st := untilStorage(ctx, t, api, as, rid, func(s *comfygatev1.OutputStorage) bool {
		return s.GetState() == comfygatev1.StorageState_STORAGE_STATE_PENDING && s.GetError() != "" && s.GetAttempts() >= 1
	})
	t.Logf("while the store is down: %v", st.GetStorage())
	if e := st.GetStorage().GetError(); strings.Contains(e, s3.Endpoint) || strings.Contains(e, s3.Bucket) {
		t.Errorf("the tenant is shown the operator's store: %q", e)
	}
	if err := s3.Restart(); err != nil {
		t.Fatal(err)
	}
	st = untilStorage(ctx, t, api, as, rid, func(s *comfygatev1.OutputStorage) bool {
		return s.GetState() == comfygatev1.StorageState_STORAGE_STATE_STORED
	})
	if o := st.GetStorage().GetObjects(); len(o) == 0 || string(fetch(t, o[0].GetUrl())) != string(fetch(t, st.GetOutputUrls()[0])) || st.GetStorage().GetError() != "" {
		t.Errorf("after the store came back: %v", st.GetStorage())
	}
}

func fetch(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
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

// TestRetentionSweepsAtStart: on a store without lifecycle rules (the test
// server has none), a gateway with --storage-retention deletes, as it
// starts and hourly after, the objects older than the retention, and the
// uploads older than --upload-lifetime; younger ones stay.
func TestRetentionSweepsAtStart(t *testing.T) {
	s3 := s3test.Start(t)
	st := s3.Store(t, "outputs")
	put := func(age time.Duration, parts ...string) string {
		key := st.Key(parts...)
		if _, err := st.Put(t.Context(), key, strings.NewReader("x"), 1, "image/png", 10); err != nil {
			t.Fatal(err)
		}
		if err := s3.Backdate(key, time.Now().Add(-age)); err != nil {
			t.Fatal(err)
		}
		return key
	}
	oldOutput := put(49*time.Hour, "tenant-a", "dep-1", "req-1", "9", "old.png")
	newOutput := put(47*time.Hour, "tenant-a", "dep-1", "req-2", "9", "new.png")
	oldUpload := put(2*time.Hour, ".uploads", "tenant-a", "up_aaaaaaaaaaaaaaaaaaaaaaaaaa")
	newUpload := put(30*time.Minute, ".uploads", "tenant-a", "up_bbbbbbbbbbbbbbbbbbbbbbbbbb")

	ctx, _, _ := runGateway(t, s3.Getenv, "--simulate", "--storage-url", s3.URL("outputs"),
		"--storage-retention", "48h", "--upload-lifetime", "1h")
	for _, key := range []string{oldOutput, oldUpload} {
		for {
			if _, err := st.Stat(ctx, key); errors.Is(err, storage.ErrNotFound) {
				break
			} else if err != nil {
				t.Fatal(err)
			}
			select {
			case <-ctx.Done():
				t.Fatalf("%s was not deleted", key)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	for _, key := range []string{newOutput, newUpload} {
		if _, err := st.Stat(ctx, key); err != nil {
			t.Errorf("%s: %v; want it kept", key, err)
		}
	}
}
