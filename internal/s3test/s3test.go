// Package s3test runs a real S3 server for tests: Versity's S3 gateway
// (versitygw, Apache-2.0) serving a temporary directory.
//
// A real server rather than a fake, so that what the storage package relies on
// (signatures, streaming multipart uploads, metadata, presigned URLs, error
// codes) is checked against an implementation of S3 that someone else wrote.
// The gateway is pinned in its own module, tools/s3/go.mod, so its large
// dependency tree stays out of the main go.mod. Its binary is built once and
// kept in the user's cache directory under a name derived from that module's
// go.mod and go.sum, so only the first test run after a version change pays
// for the build (about a minute).
package s3test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/comfygate/comfygate/internal/freeport"
	"github.com/comfygate/comfygate/storage"
)

const (
	// module is the main module's path, which marks the repository root.
	module = "github.com/comfygate/comfygate"
	// toolModuleDir holds the module that pins versitygw, relative to the root.
	toolModuleDir = "tools/s3"
	// toolPackage is the command built from it.
	toolPackage = "github.com/versity/versitygw/cmd/versitygw"

	// startTimeout bounds the wait for a started gateway to answer.
	startTimeout = 30 * time.Second
	// stopTimeout is how long a gateway gets to exit after SIGTERM before it
	// is killed.
	stopTimeout = 10 * time.Second
	// buildTimeout bounds the first build of the gateway.
	buildTimeout = 10 * time.Minute
)

// Server is a running versitygw serving one bucket from a temporary
// directory on a loopback port. Its methods are not safe for concurrent use:
// one test owns a server.
type Server struct {
	// Endpoint is the server's base URL, http://127.0.0.1:PORT.
	Endpoint string
	// AccessKey and SecretKey are the root credentials, random per server.
	AccessKey string
	SecretKey string
	// Bucket exists when Start returns.
	Bucket string
	// Region is the region the server signs for.
	Region string

	bin  string
	dir  string // holds root/ (the served directory), meta/ and the log
	root string
	port int
	args []string
	proc *process // nil while the server is stopped
}

// process is one run of the gateway; done closes when it has exited, after
// which err holds what Wait returned.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Start starts a server for t and stops it, deleting its data, when t ends.
// It fails t when the server cannot be built or started.
func Start(t testing.TB) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout+startTimeout)
	defer cancel()
	s, err := StartServer(ctx)
	if err != nil {
		t.Fatalf("s3test: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// StartServer builds versitygw if its binary is not cached yet, starts it on a
// free loopback port with a new temporary directory and random credentials,
// waits until it answers, and creates the bucket. The caller must Close it.
// ctx bounds the build and the start, not the server's life.
func StartServer(ctx context.Context) (*Server, error) {
	bin, err := Binary(ctx)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "comfygate-s3-")
	if err != nil {
		return nil, err
	}
	s := &Server{
		AccessKey: randomKey(10),
		SecretKey: randomKey(20),
		Bucket:    "comfygate-test",
		Region:    "us-east-1",
		bin:       bin,
		dir:       dir,
		root:      filepath.Join(dir, "root"),
	}
	if err := s.prepareDir(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	// The free port is found by listening and closing, so another process
	// may take it before the gateway binds it; a few attempts make that
	// race harmless.
	for attempt := 0; ; attempt++ {
		s.port, err = freePort()
		if err != nil {
			break
		}
		s.Endpoint = "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
		if err = s.start(ctx); err == nil || attempt == 2 || ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	if err := s.client().MakeBucket(ctx, s.Bucket, minio.MakeBucketOptions{Region: s.Region}); err != nil {
		s.Close()
		return nil, fmt.Errorf("create bucket %s: %w", s.Bucket, err)
	}
	return s, nil
}

// prepareDir creates the served directory and chooses where the gateway
// keeps object metadata: in extended attributes where the file system
// supports them (as in production), else in a sidecar directory (tmpfs on
// older kernels has no user xattrs).
func (s *Server) prepareDir() error {
	if err := os.Mkdir(s.root, 0o755); err != nil {
		return err
	}
	s.args = []string{"--port", net.JoinHostPort("127.0.0.1", "PORT"), "--quiet", "posix"}
	if err := syscall.Setxattr(s.root, "user.comfygate-probe", []byte("1"), 0); err != nil {
		meta := filepath.Join(s.dir, "meta")
		if err := os.Mkdir(meta, 0o755); err != nil {
			return err
		}
		s.args = append(s.args, "--sidecar", meta)
	} else {
		_ = syscall.Removexattr(s.root, "user.comfygate-probe")
	}
	s.args = append(s.args, s.root)
	return nil
}

// start runs the gateway on s.port and waits until it answers with s's
// credentials (so a foreign process on the port does not count).
func (s *Server) start(ctx context.Context) error {
	args := make([]string, len(s.args))
	for i, a := range s.args {
		args[i] = strings.Replace(a, "PORT", strconv.Itoa(s.port), 1)
	}
	logf, err := os.OpenFile(s.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own copy of the descriptor
	cmd := exec.Command(s.bin, args...)
	cmd.Env = append(cleanEnv(os.Environ()), "ROOT_ACCESS_KEY="+s.AccessKey, "ROOT_SECRET_KEY="+s.SecretKey, "VGW_REGION="+s.Region)
	cmd.Stdout = logf
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start versitygw: %w", err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	s.proc = p

	c := s.client()
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	for {
		if s.answers(ctx, c) {
			return nil
		}
		select {
		case <-p.done:
			s.proc = nil
			return fmt.Errorf("versitygw exited at start (%v): %s", p.err, s.logTail())
		case <-ctx.Done():
			_ = s.Stop()
			return fmt.Errorf("versitygw did not answer on %s within %v: %s", s.Endpoint, startTimeout, s.logTail())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// answers reports whether the server accepts a signed request.
func (s *Server) answers(ctx context.Context, c *minio.Client) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, err := c.ListBuckets(ctx)
	return err == nil
}

// Stop stops the server (SIGTERM, then SIGKILL after a grace period) and
// waits until it has exited. Its port and data stay, so Restart brings it
// back as it was: the object store going down and coming back. Stopping a
// stopped server does nothing.
func (s *Server) Stop() error {
	p := s.proc
	if p == nil {
		return nil
	}
	s.proc = nil
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(stopTimeout):
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	return fmt.Errorf("versitygw did not exit within %v of SIGTERM; killed", stopTimeout)
}

// Restart stops the server if it runs and starts it again on the same port
// with the same data and credentials, returning once it answers.
func (s *Server) Restart() error {
	if err := s.Stop(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	return s.start(ctx)
}

// Close stops the server and deletes its data.
func (s *Server) Close() {
	_ = s.Stop()
	_ = os.RemoveAll(s.dir)
}

// URL returns the storage URL (the --storage-url form the storage package
// parses) of the server's bucket under prefix.
func (s *Server) URL(prefix string) string {
	q := url.Values{"endpoint": {s.Endpoint}, "region": {s.Region}}
	u := url.URL{Scheme: "s3", Host: s.Bucket, Path: "/" + strings.Trim(prefix, "/"), RawQuery: q.Encode()}
	return u.String()
}

// Getenv answers for the AWS credential variables with the server's
// credentials and returns "" for anything else: a stand-in for os.Getenv that
// keeps tests away from the real environment.
func (s *Server) Getenv(name string) string {
	switch name {
	case "AWS_ACCESS_KEY_ID":
		return s.AccessKey
	case "AWS_SECRET_ACCESS_KEY":
		return s.SecretKey
	}
	return ""
}

// Store is a store of the gateway's on the server's bucket under prefix,
// checked to answer, and closed when t ends.
func (s *Server) Store(t testing.TB, prefix string) *storage.Store {
	t.Helper()
	cfg, err := storage.ParseURL(s.URL(prefix))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Getenv = s.Getenv
	st, err := storage.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	if err := st.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	return st
}

// Backdate sets the modification time of the object key in the bucket to t,
// which the gateway reports as the object's LastModified: how tests make
// objects old without waiting.
func (s *Server) Backdate(key string, t time.Time) error {
	clean := path.Clean("/" + key)[1:]
	if clean != key || key == "" {
		return fmt.Errorf("s3test: key %q is not a clean relative path", key)
	}
	return os.Chtimes(filepath.Join(s.root, s.Bucket, filepath.FromSlash(key)), t, t)
}

// client returns a client of the server that does not retry, for probing.
// Client is a client of the server with its root credentials, for a check
// of the objects the gateway stored.
func (s *Server) Client() *minio.Client { return s.client() }

func (s *Server) client() *minio.Client {
	c, err := minio.New(strings.TrimPrefix(s.Endpoint, "http://"), &minio.Options{
		Creds:        credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""),
		Region:       s.Region,
		BucketLookup: minio.BucketLookupPath,
		MaxRetries:   1,
	})
	if err != nil {
		panic(fmt.Sprintf("s3test: client for %s: %v", s.Endpoint, err)) // the endpoint is built above; cannot be invalid
	}
	return c
}

func (s *Server) logPath() string { return filepath.Join(s.dir, "versitygw.log") }

// logTail returns the end of the gateway's log, for error messages.
func (s *Server) logTail() string {
	b, err := os.ReadFile(s.logPath())
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	b = bytes.TrimSpace(b)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	if len(b) == 0 {
		return "(empty log)"
	}
	return string(b)
}

// cleanEnv drops the variables versitygw reads its configuration from, so a
// developer's environment cannot change the server tests run.
func cleanEnv(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "VGW_") || strings.HasPrefix(name, "ROOT_") || name == "LOGFILE" || name == "WEBHOOK" {
			continue
		}
		out = append(out, kv)
	}
	return out
}

func freePort() (int, error) {
	addr, err := freeport.Loopback()
	if err != nil {
		return 0, err
	}
	_, p, _ := net.SplitHostPort(addr)
	return strconv.Atoi(p)
}

func randomKey(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Binary returns the path of a versitygw binary built from the version
// tools/s3/go.mod pins, building it on first use. The binary is cached under
// os.UserCacheDir, keyed by that module's go.mod and go.sum and the Go
// version, so test binaries and repeated runs share one build; a file lock
// makes concurrent test binaries wait for one build instead of each
// starting their own.
func Binary(ctx context.Context) (string, error) {
	repo, err := repoRoot()
	if err != nil {
		return "", err
	}
	modDir := filepath.Join(repo, filepath.FromSlash(toolModuleDir))
	h := sha256.New()
	for _, name := range []string{"go.mod", "go.sum"} {
		b, err := os.ReadFile(filepath.Join(modDir, name))
		if err != nil {
			return "", fmt.Errorf("versitygw module: %w", err)
		}
		fmt.Fprintf(h, "%s %d\n", name, len(b))
		h.Write(b)
	}
	fmt.Fprintf(h, "%s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("cache directory for versitygw: %w", err)
	}
	dir := filepath.Join(cache, "comfygate", "versitygw-"+hex.EncodeToString(h.Sum(nil))[:16])
	bin := filepath.Join(dir, "versitygw")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	unlock, err := lockFile(filepath.Join(dir, "build.lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(bin); err == nil {
		return bin, nil // another process built it while this one waited
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("building versitygw needs the go command: %w", err)
	}
	tmp := bin + ".tmp"
	ctx, cancel := context.WithTimeout(ctx, buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, gobin, "build", "-trimpath", "-o", tmp, toolPackage)
	cmd.Dir = modDir
	// A static binary needs no C toolchain; GOWORK=off keeps a go.work
	// elsewhere from changing what is built.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=-mod=readonly")
	if out, err := cmd.CombinedOutput(); err != nil {
		_ = os.Remove(tmp)
		return "", fmt.Errorf("go build %s in %s: %w\n%s", toolPackage, modDir, err, out)
	}
	if err := os.Rename(tmp, bin); err != nil {
		return "", err
	}
	return bin, nil
}

// lockFile takes an exclusive lock on name, waiting for it, and returns its
// release.
func lockFile(name string) (func(), error) {
	f, err := os.OpenFile(name, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// repoRoot finds the repository root: the nearest directory at or above the
// working directory whose go.mod declares the main module (tests run in their
// package's directory).
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && declaresModule(b, module) {
			return dir, nil
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod of module %s at or above the working directory", module)
		}
		dir = parent
	}
}

func declaresModule(gomod []byte, want string) bool {
	for _, line := range strings.Split(string(gomod), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == "module" {
			return strings.Trim(f[1], `"`) == want
		}
	}
	return false
}
