package redistest

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"
)

// TestFindStartsPrivateServerByDefault: with no shared Redis named, tests run
// on a server of their own, never on one they did not start (such as a
// developer's 127.0.0.1:6379), and Stop takes it away.
func TestFindStartsPrivateServerByDefault(t *testing.T) {
	t.Setenv(EnvURL, "")
	srv, err := Find()
	if err != nil {
		t.Fatal(err)
	}
	if srv.Shared() {
		srv.Stop()
		t.Fatalf("Find with %s unset returned the shared server %s, want a private one", EnvURL, srv.URL)
	}
	if srv.Addr == "127.0.0.1:6379" || srv.Addr == "localhost:6379" {
		srv.Stop()
		t.Fatalf("private server on the default port %s", srv.Addr)
	}
	opts, err := redis.ParseURL(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if !answers(opts) {
		t.Fatalf("private server %s does not answer", srv.URL)
	}
	srv.Stop()
	if answers(opts) {
		t.Fatalf("private server %s still answers after Stop", srv.URL)
	}
}

// TestSharedServerKeepsOnlyOthersKeys: on a shared server
// (COMFYGATE_TEST_REDIS_URL), a test's keys are deleted when it ends and keys
// that are not under its prefix are left as they were; Stop leaves the
// server running.
func TestSharedServerKeepsOnlyOthersKeys(t *testing.T) {
	owner, err := StartPrivate()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(owner.Stop)
	ctx := context.Background()
	admin := owner.Client(t)
	if err := admin.Set(ctx, "someone-else", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvURL, owner.URL)

	var prefix string
	t.Run("inner", func(t *testing.T) {
		srv, err := Find()
		if err != nil {
			t.Fatal(err)
		}
		if !srv.Shared() {
			t.Fatalf("Find with %s set started a server", EnvURL)
		}
		t.Cleanup(srv.Stop)
		prefix = Prefix(t)
		if err := srv.Client(t).Set(ctx, prefix+"k", "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
	})
	if n, err := admin.Exists(ctx, prefix+"k").Result(); err != nil || n != 0 {
		t.Errorf("key under the test's prefix after it ended: exists=%d err=%v, want gone", n, err)
	}
	if v, err := admin.Get(ctx, "someone-else").Result(); err != nil || v != "v" {
		t.Errorf("someone else's key = %q, %v; want it untouched", v, err)
	}
}

// TestFindRefusesASharedServerThatDoesNotAnswer: a named server that is down
// is an error, not a silent fallback to another server.
func TestFindRefusesASharedServerThatDoesNotAnswer(t *testing.T) {
	t.Setenv(EnvURL, "redis://127.0.0.1:1/0")
	if srv, err := Find(); err == nil {
		srv.Stop()
		t.Fatal("Find succeeded on a server that does not answer")
	}
}
