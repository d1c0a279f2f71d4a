// Package redistest finds or starts a real Redis server for tests.
//
// By default tests start a private redis-server on a free port (install it
// with `apt-get install redis-server`) and stop it when done: a Redis the
// tests did not start is never touched. COMFYGATE_TEST_REDIS_URL names a
// shared one to use instead; tests then isolate themselves with a key prefix
// of their own, deleted when each test ends.
package redistest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfygate/comfygate/internal/freeport"
)

// EnvURL names the variable that points tests at a Redis server.
const EnvURL = "COMFYGATE_TEST_REDIS_URL"

// Server is a Redis server tests can use.
type Server struct {
	URL  string
	Addr string
	cmd  *exec.Cmd
	dir  string
	port int
}

// Find returns the Redis COMFYGATE_TEST_REDIS_URL names, or starts a private
// one. Call Stop when done (it stops only a server Find started).
func Find() (*Server, error) {
	url := os.Getenv(EnvURL)
	if url == "" {
		return StartPrivate()
	}
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", EnvURL, err)
	}
	if !answers(opts) {
		return nil, fmt.Errorf("%s=%s does not answer", EnvURL, url)
	}
	return &Server{URL: url, Addr: opts.Addr}, nil
}

// Shared reports whether the server is one the tests did not start
// (COMFYGATE_TEST_REDIS_URL): nothing but keys under a test's prefix may be
// changed on it.
func (s *Server) Shared() bool { return s.cmd == nil }

func answers(opts *redis.Options) bool {
	c := redis.NewClient(opts)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return c.Ping(ctx).Err() == nil
}

// StartPrivate starts a redis-server of its own on a free port, for tests that
// stop and restart it. It keeps its data in an append-only file written on every
// change, so a restart loses nothing, as with a production Redis. extra are more
// redis-server arguments, which win over these (e.g. "--appendonly", "no").
func StartPrivate(extra ...string) (*Server, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errors.New("redis-server is not installed (apt-get install redis-server, or bash scripts/deps.sh), and COMFYGATE_TEST_REDIS_URL names no shared Redis")
	}
	dir, err := os.MkdirTemp("", "comfygate-redis-")
	if err != nil {
		return nil, err
	}
	addr, err := freeport.Loopback()
	if err != nil {
		return nil, err
	}
	_, p, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(p)
	s := &Server{dir: dir, port: port, Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	s.URL = "redis://" + s.Addr + "/0"
	args := append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--appendfsync", "always",
		"--dir", dir, "--logfile", filepath.Join(dir, "redis.log")}, extra...)
	s.cmd = exec.Command(bin, args...)
	if err := s.start(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) start() error {
	if err := s.cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	opts, _ := redis.ParseURL(s.URL)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if answers(opts) {
			return nil
		}
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	return errors.New("redis-server did not answer within 10s")
}

// Restart kills a private server (SIGKILL: no goodbye to clients), waits down,
// and starts it again on the same port with its data, as a crash and restart
// looks to clients.
func (s *Server) Restart(down time.Duration) error {
	if s.cmd == nil {
		return errors.New("only a private server can be restarted")
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	time.Sleep(down)
	s.cmd = exec.Command(s.cmd.Path, s.cmd.Args[1:]...)
	return s.start()
}

// RestartEmpty kills a private server (SIGKILL), throws its data away, and
// starts it again on the same port after down: a Redis that lost everything
// (run without persistence, or failed over to a replica that had nothing),
// as it looks to clients.
func (s *Server) RestartEmpty(down time.Duration) error {
	if s.cmd == nil {
		return errors.New("only a private server can be restarted")
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.Name() == "redis.log" {
			continue
		}
		if err := os.RemoveAll(filepath.Join(s.dir, e.Name())); err != nil {
			return err
		}
	}
	time.Sleep(down)
	s.cmd = exec.Command(s.cmd.Path, s.cmd.Args[1:]...)
	return s.start()
}

// Pause stops a private server's process (SIGSTOP): its port still accepts
// connections, but nothing answers, as a hung Redis looks to clients.
func (s *Server) Pause() error {
	if s.cmd == nil {
		return errors.New("only a private server can be paused")
	}
	return s.cmd.Process.Signal(syscall.SIGSTOP)
}

// Resume continues a paused private server (SIGCONT).
func (s *Server) Resume() error {
	if s.cmd == nil {
		return errors.New("only a private server can be resumed")
	}
	return s.cmd.Process.Signal(syscall.SIGCONT)
}

// Stop ends a server Find or StartPrivate started; a shared one is left alone.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	_ = os.RemoveAll(s.dir)
}

// Client returns a client of the server, closed when t ends.
func (s *Server) Client(t testing.TB) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() { c.Close() })
	return c
}

// Prefix returns a key prefix no other test uses. When t ends, every key
// under it is deleted from the shared Redis (COMFYGATE_TEST_REDIS_URL), so that tests
// leave a server they did not start as they found it; the cleanup runs after
// the test's own (cleanups run last registered first), once the processes
// that wrote under the prefix have stopped.
func Prefix(t testing.TB) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	prefix := "test:" + hex.EncodeToString(b) + ":"
	t.Cleanup(func() { deletePrefix(prefix) })
	return prefix
}

// deletePrefix deletes the keys under prefix on the shared server
// COMFYGATE_TEST_REDIS_URL names; a private server takes its keys with it
// when it stops.
func deletePrefix(prefix string) {
	url := os.Getenv(EnvURL)
	if url == "" {
		return
	}
	opts, err := redis.ParseURL(url)
	if err != nil {
		return
	}
	c := redis.NewClient(opts)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	var keys []string
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	for len(keys) > 0 {
		n := min(len(keys), 500)
		_ = c.Del(ctx, keys[:n]...).Err()
		keys = keys[n:]
	}
}
