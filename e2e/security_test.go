package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	grpccodes "google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/internal/rawcodec"
	"github.com/comfygate/comfygate/webhook"
)

// The attacks of a caller without a key, or with one and no manners, against
// the real binary: each test performs the attack and asserts its bound.

const securityKey = "security-test-key-0123456789abcdef"

// fakeRunComfy answers submits with a fresh request id, after hold (when set)
// returns; it counts every call, and reads every body without keeping it.
type fakeRunComfy struct {
	srv     *httptest.Server
	calls   atomic.Int64
	submits atomic.Int64
	// onSubmit, when set, runs before the submit body is read.
	onSubmit atomic.Pointer[func()]
}

func newFakeRunComfy(t *testing.T) *fakeRunComfy {
	t.Helper()
	f := &fakeRunComfy{}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.calls.Add(1)
		if r.Method != http.MethodPost || !strings.HasSuffix(r.URL.Path, "/inference") {
			w.WriteHeader(http.StatusNotFound)
			_, _ = io.WriteString(w, `{"code":404001,"message":"not found"}`)
			return
		}
		f.submits.Add(1)
		if hook := f.onSubmit.Load(); hook != nil {
			(*hook)()
		}
		_, _ = io.Copy(io.Discard, r.Body)
		id := make([]byte, 8)
		_, _ = rand.Read(id)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"request_id":"req-%x"}`, id)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

// attackSetup skips under -short (the tests run the binary) and gives a test
// its deadline and a RunComfy of its own.
func attackSetup(t *testing.T) (context.Context, *fakeRunComfy) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs the binary")
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx, newFakeRunComfy(t)
}

// keyedGateway starts the real binary with an API key for tenant "sec" and
// args, in front of upstream.
func keyedGateway(ctx context.Context, t *testing.T, upstream string, args ...string) *gateway {
	t.Helper()
	return keyedGatewayBin(ctx, t, gatewayBin, upstream, args...)
}

// keyedGatewayBin is keyedGateway with the binary bin: plainGatewayBin for
// the tests that measure memory.
func keyedGatewayBin(ctx context.Context, t *testing.T, bin, upstream string, args ...string) *gateway {
	t.Helper()
	return keyedGatewayKeys(ctx, t, bin, "sec "+securityKey+"\n", upstream, args...)
}

// keyedGatewayKeys is keyedGatewayBin with the keys file's content.
func keyedGatewayKeys(ctx context.Context, t *testing.T, bin, keysContent, upstream string, args ...string) *gateway {
	t.Helper()
	keys := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keys, []byte(keysContent), 0o600); err != nil {
		t.Fatal(err)
	}
	return launchGateway(ctx, t, bin, append([]string{"--runcomfy-url", upstream, "--api-keys-file", keys}, args...),
		"RUNCOMFY_API_TOKEN="+simToken)
}

// launchGateway starts bin with args on fresh ports (and env), waits until it
// is ready, and stops it when t ends.
func launchGateway(ctx context.Context, t *testing.T, bin string, args []string, env ...string) *gateway {
	t.Helper()
	g := &gateway{name: "gateway"}
	var procs []*process
	t.Cleanup(func() {
		for _, p := range procs {
			p.stop()
		}
		checkLogs(t, procs)
	})
	launchReplica(ctx, t, g, bin, args, env, &procs)
	return g
}

// procStatus reads a field of /proc/PID/status, in KiB for memory fields.
func procStatus(t *testing.T, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// openFDs counts a process's open file descriptors.
func openFDs(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// rawPost writes a POST with a body of n bytes on its own connection, and
// returns the status line the server answers (the answer may come before the
// body is sent; the write then fails, which is the point).
func rawPost(ctx context.Context, addr, path, key string, n int) (string, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	hdr := "POST " + path + " HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nContent-Length: " + strconv.Itoa(n) + "\r\n"
	if key != "" {
		hdr += "Authorization: Bearer " + key + "\r\n"
	}
	if _, err := io.WriteString(c, hdr+"\r\n"); err != nil {
		return "", err
	}
	go func() {
		chunk := bytes.Repeat([]byte("A"), 64<<10)
		for sent := 0; sent < n; sent += len(chunk) {
			if _, err := c.Write(chunk[:min(len(chunk), n-sent)]); err != nil {
				return
			}
		}
	}()
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// TestNoKeyBodiesAreNeverRead: 30 clients without a key each POST 10 MiB at
// once. Every one gets 401 with its body unread, and the gateway's peak
// memory grows by less than 20 MiB (it would hold 300 MiB if it read them).
func TestNoKeyBodiesAreNeverRead(t *testing.T) {
	ctx, up := attackSetup(t)
	g := keyedGatewayBin(ctx, t, plainGatewayBin, up.srv.URL)
	pid := g.proc.cmd.Process.Pid
	// Warm up: one refused call, so the baseline includes the code paths.
	if line, err := rawPost(ctx, g.httpAddr, "/v1/deployments/d/requests", "", 1024); err != nil || !strings.Contains(line, " 401 ") {
		t.Fatalf("warm-up: %q, %v", line, err)
	}
	before := procStatus(t, pid, "VmHWM")
	var wg sync.WaitGroup
	lines := make([]string, 30)
	errs := make([]error, 30)
	for i := range lines {
		wg.Go(func() {
			lines[i], errs[i] = rawPost(ctx, g.httpAddr, "/v1/deployments/d/requests", "", 10<<20)
		})
	}
	wg.Wait()
	// The gateway closes the connection after its answer, while the client
	// is still sending: the kernel may then reset it before the client reads
	// the 401. Either is a refusal; an answer other than 401 is not.
	answered := 0
	for i := range lines {
		switch {
		case errs[i] == nil && strings.Contains(lines[i], " 401 "):
			answered++
		case errs[i] != nil && errors.Is(errs[i], syscall.ECONNRESET):
		default:
			t.Errorf("client %d: %q, %v; want 401", i, lines[i], errs[i])
		}
	}
	if answered == 0 {
		t.Error("no client read its 401")
	}
	grew := procStatus(t, pid, "VmHWM") - before
	t.Logf("peak RSS grew by %d KiB for 30 x 10 MiB unauthenticated bodies", grew)
	if grew >= 20<<10 {
		t.Errorf("peak RSS grew by %d KiB, want < 20 MiB", grew)
	}
	if n := up.calls.Load(); n != 0 {
		t.Errorf("RunComfy saw %d calls, want 0", n)
	}

	// The same over gRPC, whose server reads a call's message before any
	// interceptor runs: the call is refused when its stream opens.
	cc, err := grpc.NewClient(g.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(16<<20)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	api := comfygatev1.NewGatewayServiceClient(cc)
	input := `{"image":"` + strings.Repeat("A", 10<<20-12) + `"}`
	before = procStatus(t, pid, "VmHWM")
	got := make([]grpccodes.Code, 30)
	msgs := make([]string, 30)
	for i := range got {
		wg.Go(func() {
			_, err := api.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "d", InputJson: input})
			got[i] = status.Code(err)
		})
	}
	wg.Wait()
	for i, c := range got {
		if c != grpccodes.Unauthenticated {
			t.Errorf("gRPC client %d: %v, want Unauthenticated", i, c)
		}
	}
	grew = procStatus(t, pid, "VmHWM") - before
	t.Logf("peak RSS grew by %d KiB for 30 x 10 MiB unauthenticated gRPC submits", grew)
	if grew >= 20<<10 {
		t.Errorf("peak RSS grew by %d KiB, want < 20 MiB", grew)
	}

	// Reflection needs a key; health does not, but only a few keyless
	// health messages are received at once, whatever their size.
	refl, err := reflectionpb.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
	if err == nil {
		// A refused stream's Send may see only io.EOF; Recv has the status.
		_ = refl.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}})
		_, err = refl.Recv()
	}
	if status.Code(err) != grpccodes.Unauthenticated {
		t.Errorf("keyless reflection: %v; want Unauthenticated", err)
	}
	health := healthpb.NewHealthClient(cc)
	if _, err := health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("keyless health check: %v", err)
	}
	before = procStatus(t, pid, "VmHWM")
	// Encoded once and sent as it is (rawcodec.Codec): thirty clients each
	// encoding 9 MiB at once, under the race detector, may not have begun
	// to send by the time a received message must have arrived.
	huge, err := proto.Marshal(&healthpb.HealthCheckRequest{Service: strings.Repeat("h", 9<<20)})
	if err != nil {
		t.Fatal(err)
	}
	for i := range got {
		wg.Go(func() {
			var out []byte
			err := cc.Invoke(ctx, "/grpc.health.v1.Health/Check", &huge, &out, grpc.ForceCodecV2(rawcodec.Codec{}))
			got[i], msgs[i] = status.Code(err), status.Convert(err).Message()
		})
	}
	wg.Wait()
	busy := 0
	for i, c := range got {
		switch {
		case c == grpccodes.ResourceExhausted && strings.Contains(msgs[i], "at most"):
			// Received, and refused undecoded for its size.
		case c == grpccodes.ResourceExhausted:
			busy++
		default:
			t.Errorf("keyless health check %d: %v %q, want ResourceExhausted (too large, or busy)", i, c, msgs[i])
		}
	}
	grew = procStatus(t, pid, "VmHWM") - before
	t.Logf("peak RSS grew by %d KiB for 30 x 9 MiB keyless health checks (%d refused as busy)", grew, busy)
	// At most two keyless messages are received at once, and none is
	// decoded (a health request is a few bytes).
	if limit := int64(2*9<<10 + 16<<10); grew >= limit {
		t.Errorf("peak RSS grew by %d KiB, want < %d KiB", grew, limit)
	}
	if n := up.calls.Load(); n != 0 {
		t.Errorf("RunComfy saw %d calls, want 0", n)
	}
}

// TestInflightBodyBytesAreBounded: with valid keys, the bodies held at once
// are bounded by --max-inflight-body-bytes, and one tenant may hold only a
// quarter of it (or one body, if more): past either, the answer is 503 with
// Retry-After (gRPC: UNAVAILABLE), and RunComfy is not called. gRPC submits
// draw from the same budget.
func TestInflightBodyBytesAreBounded(t *testing.T) {
	ctx, up := attackSetup(t)
	release := make(chan struct{})
	var releaseOnce sync.Once
	defer releaseOnce.Do(func() { close(release) })
	hold := func() { <-release }
	up.onSubmit.Store(&hold)
	const body = 8 << 20
	keys := map[string]string{}
	var keysFile strings.Builder
	for _, tenant := range []string{"t1", "t2", "t3", "t4", "t5"} {
		keys[tenant] = tenant + "-key-0123456789abcdef"
		fmt.Fprintf(&keysFile, "%s %s\n", tenant, keys[tenant])
	}
	// Four bodies fill the budget; a tenant's share is one body (the message
	// limit is more than a quarter of the budget).
	g := keyedGatewayKeys(ctx, t, gatewayBin, keysFile.String(), up.srv.URL,
		"--max-body-bytes", strconv.Itoa(body+1<<20), "--max-inflight-body-bytes", strconv.Itoa(4*body+1<<20))

	hc := &http.Client{}
	post := func(tenant string) (int, string, string) {
		payload := `{"image":"` + strings.Repeat("A", body-12) + `"}`
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+g.httpAddr+"/v1/deployments/d/requests", strings.NewReader(payload))
		if err != nil {
			t.Error(err)
			return 0, "", ""
		}
		req.Header.Set("Authorization", "Bearer "+keys[tenant])
		resp, err := hc.Do(req)
		if err != nil {
			t.Error(err)
			return 0, "", ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Retry-After"), string(b)
	}
	refused := func(what string, code int, retryAfter, body string) {
		t.Helper()
		if code != http.StatusServiceUnavailable || retryAfter == "" {
			t.Errorf("%s: HTTP %d, Retry-After %q: %s; want 503 with Retry-After", what, code, retryAfter, body)
		}
	}
	held := make(chan int, 4)
	go func() {
		code, _, _ := post("t1")
		held <- code
	}()
	eventually(ctx, t, "t1's submit held upstream", func() bool { return up.submits.Load() == 1 })
	code, retry, msg := post("t1")
	refused("t1's second body, past its share", code, retry, msg)
	for _, tenant := range []string{"t2", "t3", "t4"} {
		go func() {
			code, _, _ := post(tenant)
			held <- code
		}()
	}
	eventually(ctx, t, "four submits held upstream", func() bool { return up.submits.Load() == 4 })
	code, retry, msg = post("t5")
	refused("t5's body, past the budget", code, retry, msg)

	// gRPC submits draw from the same budget: one needs room for a message
	// of the limit's size before it is read, which is not there; it waits
	// (HTTP/2 holds what its client sends back) until its deadline.
	cc, err := grpc.NewClient(g.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	authed := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+keys["t5"])
	api := comfygatev1.NewGatewayServiceClient(cc)
	short, cancelShort := context.WithTimeout(authed, 500*time.Millisecond)
	defer cancelShort()
	if _, err := api.Submit(short, &comfygatev1.SubmitRequest{DeploymentId: "d", InputJson: `{}`}); status.Code(err) != grpccodes.DeadlineExceeded {
		t.Errorf("gRPC submit over the budget: %v, want DeadlineExceeded after waiting", err)
	}
	// One that waits without a deadline goes through once room is made.
	waited := make(chan error, 1)
	go func() {
		_, err := api.Submit(authed, &comfygatev1.SubmitRequest{DeploymentId: "d", InputJson: `{}`})
		waited <- err
	}()
	if n := up.submits.Load(); n != 4 {
		t.Errorf("RunComfy saw %d submits, want the 4 admitted", n)
	}
	mresp, err := http.Get("http://" + g.httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	if want := `comfygate_limit_refusals_total{limit="inflight_bytes"} 2`; !strings.Contains(string(metrics), want) {
		t.Errorf("metrics do not show %s", want)
	}
	releaseOnce.Do(func() { close(release) })
	for range 4 {
		if code := <-held; code != http.StatusOK {
			t.Errorf("admitted submit: HTTP %d, want 200", code)
		}
	}
	if err := <-waited; err != nil {
		t.Errorf("gRPC submit that waited for room: %v", err)
	}
	// The budget is free again, over both transports.
	if code, _, msg := post("t1"); code != http.StatusOK {
		t.Errorf("submit after the others ended: HTTP %d %s, want 200", code, msg)
	}
	if _, err := api.Submit(authed, &comfygatev1.SubmitRequest{DeploymentId: "d", InputJson: `{}`}); err != nil {
		t.Errorf("gRPC submit after the others ended: %v", err)
	}
}

// heapAlloc is the gateway's live heap after a forced GC, from its profiler.
func heapAlloc(ctx context.Context, debugAddr string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+debugAddr+"/debug/pprof/heap?gc=1&debug=1", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "# HeapAlloc = "); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("no HeapAlloc in the heap profile (%v)", sc.Err())
}

// liveHeap is heapAlloc after two collections: buffers that gRPC's pool
// frees stay in the pool's victim cache through the first, and are gone
// after the second; they are a cache for the next message, not a copy a
// submit holds.
func liveHeap(ctx context.Context, debugAddr string) (int64, error) {
	if _, err := heapAlloc(ctx, debugAddr); err != nil {
		return 0, err
	}
	return heapAlloc(ctx, debugAddr)
}

// TestSubmitBodyHeldOnce: a 24 MiB submit, over REST and over gRPC. While
// RunComfy receives it, the gateway's live heap holds the body once, plus a
// bounded overhead, not once per layer it crossed; over REST (where the body
// stays in the process from socket to RunComfy) the process's peak memory
// grows by little more than the body too.
func TestSubmitBodyHeldOnce(t *testing.T) {
	ctx, up := attackSetup(t)
	const body = 24 << 20
	debugAddr := freeAddr(t)
	during := make(chan int64, 1)
	hook := func() {
		n, err := liveHeap(ctx, debugAddr)
		if err != nil {
			n = -1
		}
		during <- n
	}
	up.onSubmit.Store(&hook)
	g := keyedGatewayBin(ctx, t, plainGatewayBin, up.srv.URL, "--max-body-bytes", strconv.Itoa(32<<20), "--debug-addr", debugAddr)
	pid := g.proc.cmd.Process.Pid
	payload := `{"image":"` + strings.Repeat("A", body-12) + `"}`

	// The gRPC client's own connection is made first: its buffers are not
	// the body's.
	cc, err := grpc.NewClient(g.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	api := comfygatev1.NewGatewayServiceClient(cc)
	authed := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+securityKey)
	if _, err := api.GetStatus(authed, &comfygatev1.GetStatusRequest{DeploymentId: "d", RequestId: "warm-up"}); status.Code(err) != grpccodes.NotFound {
		t.Fatalf("warm-up: %v", err)
	}

	for _, tr := range []string{"REST", "gRPC"} {
		base, err := liveHeap(ctx, debugAddr)
		if err != nil {
			t.Fatal(err)
		}
		rss := procStatus(t, pid, "VmHWM")
		if tr == "REST" {
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+g.httpAddr+"/v1/deployments/d/requests", strings.NewReader(payload))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Authorization", "Bearer "+securityKey)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("REST submit: HTTP %d", resp.StatusCode)
			}
		} else if _, err := api.Submit(authed, &comfygatev1.SubmitRequest{DeploymentId: "d", InputJson: payload}); err != nil {
			t.Fatalf("gRPC submit: %v", err)
		}
		held := <-during
		if held < 0 {
			t.Fatal("the gateway's profiler did not answer")
		}
		held -= base
		grew := procStatus(t, pid, "VmHWM") - rss
		t.Logf("%s: live heap while RunComfy receives a %d MiB body: %.2f MiB above the baseline (%.2fx the body); peak RSS grew by %.2f MiB",
			tr, body>>20, float64(held)/(1<<20), float64(held)/body, float64(grew)/(1<<10))
		if limit := int64(body) + 4<<20; held > limit {
			t.Errorf("%s: live heap grew by %d bytes, want at most the body once plus 4 MiB (%d)", tr, held, limit)
		}
		if limit := int64(body+body/2) >> 10; tr == "REST" && grew > limit {
			t.Errorf("REST: peak RSS grew by %d KiB, want at most 1.5x the body (%d KiB)", grew, limit)
		}
	}
}

// TestStalledBodiesAreCut: 1,000 connections send their headers and part of
// a body (REST submits and callbacks), then stall. Every one is closed
// within --read-timeout, and the gateway's file descriptors come back to
// where they were. An idle keep-alive connection is closed after
// --idle-timeout, an idle gRPC connection after --max-connection-idle.
func TestStalledBodiesAreCut(t *testing.T) {
	ctx, up := attackSetup(t)
	secretFile := filepath.Join(t.TempDir(), "webhook-secret")
	const secret = "stalled-bodies-webhook-secret-0123456789"
	if err := os.WriteFile(secretFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const readTimeout = time.Second
	g := keyedGateway(ctx, t, up.srv.URL, "--read-timeout", readTimeout.String(), "--idle-timeout", "1s",
		"--max-connection-idle", "1s", "--public-url", "http://127.0.0.1:1", "--webhook-secret-file", secretFile)
	pid := g.proc.cmd.Process.Pid
	signer, err := webhook.NewSigner([]string{secret})
	if err != nil {
		t.Fatal(err)
	}
	urls, err := webhook.NewURLs("http://"+g.httpAddr, signer)
	if err != nil {
		t.Fatal(err)
	}
	callbackPath := strings.TrimPrefix(urls.CallbackURL("dep", ""), "http://"+g.httpAddr)
	base := openFDs(t, pid)

	const conns = 1000
	// The test holds one descriptor per connection, the gateway another.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < conns+256 {
		t.Skipf("needs %d open files; the limit is %d (%v)", conns+256, lim.Cur, err)
	}
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		late   []string
		opened = make(chan struct{}, conns)
	)
	start := time.Now()
	for i := range conns {
		path, auth := "/v1/deployments/d/requests", "Authorization: Bearer "+securityKey+"\r\n"
		if i%2 == 1 {
			path, auth = callbackPath, ""
		}
		wg.Go(func() {
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", g.httpAddr)
			sent := time.Now()
			if err != nil {
				opened <- struct{}{}
				mu.Lock()
				late = append(late, fmt.Sprintf("conn %d: %v", i, err))
				mu.Unlock()
				return
			}
			defer c.Close()
			_, err = io.WriteString(c, "POST "+path+" HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"+auth+
				"Content-Length: 1000\r\n\r\n{\"overrides\": {")
			opened <- struct{}{}
			if err != nil {
				return
			}
			// Read until the gateway closes the connection (it may answer
			// first); the test's own deadline only stops a hang.
			_ = c.SetReadDeadline(time.Now().Add(testTimeout))
			_, err = io.Copy(io.Discard, c)
			// From this connection's own start: a loaded machine takes its
			// time to open a thousand.
			if took := time.Since(sent); err != nil || took > readTimeout+5*time.Second {
				mu.Lock()
				late = append(late, fmt.Sprintf("conn %d: closed after %v (%v)", i, took, err))
				mu.Unlock()
			}
		})
	}
	for range conns {
		<-opened
	}
	t.Logf("%d stalled connections open after %v; gateway fds %d (baseline %d)", conns, time.Since(start), openFDs(t, pid), base)
	wg.Wait()
	t.Logf("all closed after %v", time.Since(start))
	for _, l := range late {
		t.Error(l)
	}
	eventually(ctx, t, "file descriptors back to the baseline", func() bool { return openFDs(t, pid) <= base })
	if n := up.calls.Load(); n != 0 {
		t.Errorf("RunComfy saw %d calls, want 0", n)
	}

	// An idle keep-alive connection is closed after --idle-timeout.
	c, err := net.Dial("tcp", g.httpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(testTimeout))
	idleStart := time.Now()
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatalf("keep-alive connection: %v, want closed by the gateway", err)
	}
	if took := time.Since(idleStart); took < 500*time.Millisecond {
		t.Errorf("idle keep-alive connection closed after %v, before --idle-timeout", took)
	} else {
		t.Logf("idle keep-alive connection closed after %v", took)
	}

	// An idle gRPC connection is closed (GOAWAY) after --max-connection-idle.
	cc, err := grpc.NewClient(g.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	cc.Connect()
	for s := cc.GetState(); s != connectivity.Ready; s = cc.GetState() {
		if !cc.WaitForStateChange(ctx, s) {
			t.Fatal("gRPC connection never ready")
		}
	}
	if !cc.WaitForStateChange(ctx, connectivity.Ready) {
		t.Fatal("idle gRPC connection still open at the test's deadline")
	}
	t.Logf("idle gRPC connection: %v", cc.GetState())
}

// TestStreamsOutliveTheReadTimeout: watch streams (NDJSON and SSE) last as
// long as their request, far past --read-timeout.
func TestStreamsOutliveTheReadTimeout(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the binary")
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	// The simulator queues each job about a second and runs it two: the
	// streams outlive a 200 ms read timeout many times over.
	g := launchGateway(ctx, t, gatewayBin, []string{"--simulate", "--read-timeout", "200ms"})
	hc := &http.Client{}
	for _, route := range []string{":watch", "/events"} {
		t.Run(route, func(t *testing.T) {
			resp, err := hc.Post("http://"+g.httpAddr+"/v1/deployments/d/requests", "application/json", strings.NewReader(`{"overrides":{}}`))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var sub struct {
				Request struct {
					RequestID string `json:"request_id"`
				} `json:"request"`
			}
			if err := json.Unmarshal(b, &sub); err != nil || sub.Request.RequestID == "" {
				t.Fatalf("submit: %s", b)
			}
			rid := sub.Request.RequestID
			start := time.Now()
			resp, err = hc.Get("http://" + g.httpAddr + "/v1/deployments/d/requests/" + rid + route)
			if err != nil {
				t.Fatal(err)
			}
			b, err = io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || !bytes.Contains(b, []byte("STATUS_SUCCEEDED")) {
				t.Fatalf("stream ended after %v with %v:\n%s", time.Since(start), err, b)
			}
			t.Logf("stream lasted %v", time.Since(start))
		})
	}
}

// TestRefusedHeadersAndPaths: an Idempotency-Key that cannot be honoured is
// 400, not dropped (the submit would run twice); a path that is not UTF-8 is
// 400 on every route. Neither reaches RunComfy.
func TestRefusedHeadersAndPaths(t *testing.T) {
	ctx, up := attackSetup(t)
	secretFile := filepath.Join(t.TempDir(), "webhook-secret")
	if err := os.WriteFile(secretFile, []byte("refused-headers-webhook-secret-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	g := keyedGateway(ctx, t, up.srv.URL, "--public-url", "http://127.0.0.1:1", "--webhook-secret-file", secretFile)
	do := func(method, path string, header map[string][]string, body string) (int, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, method, "http://"+g.httpAddr+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+securityKey)
		for k, v := range header {
			req.Header[k] = v
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	submit := "/v1/deployments/d/requests"
	for name, vals := range map[string][]string{
		"non-ASCII": {"clé-1"},
		"tab":       {"a\tb"},
		"too long":  {strings.Repeat("k", 256)},
		"empty":     {""},
		"twice":     {"a", "b"},
	} {
		t.Run("Idempotency-Key "+name, func(t *testing.T) {
			code, body := do(http.MethodPost, submit, map[string][]string{"Idempotency-Key": vals}, `{"overrides":{}}`)
			if code != http.StatusBadRequest || !strings.Contains(body, "Idempotency-Key") {
				t.Errorf("HTTP %d %s, want 400 naming Idempotency-Key", code, body)
			}
		})
	}
	// grpc-gateway's metadata aliases carry nothing the guard did not check.
	for name, header := range map[string]map[string][]string{
		"alias":             {"Grpc-Metadata-Idempotency-Key": {"cl\u00e9-1"}},
		"alias beside":      {"Idempotency-Key": {"k-1"}, "Grpc-Metadata-Idempotency-Key": {"k-2"}},
		"handoff token":     {"Grpc-Metadata-Comfygate-Handoff": {"0123456789abcdef0123456789abcdef"}},
		"gateway mark":      {"Grpc-Metadata-Comfygate-Gateway": {"0123456789abcdef0123456789abcdef"}},
		"authorization too": {"Grpc-Metadata-Authorization": {"Bearer nope"}},
	} {
		t.Run(name, func(t *testing.T) {
			code, body := do(http.MethodPost, submit, header, `{"overrides":{}}`)
			want := http.StatusOK
			if _, ok := header["Grpc-Metadata-Idempotency-Key"]; ok {
				want = http.StatusBadRequest
			}
			if code != want {
				t.Errorf("HTTP %d %s, want %d", code, body, want)
			}
		})
	}
	for _, route := range []struct{ method, path string }{
		{http.MethodPost, "/v1/deployments/%FF/requests"},
		{http.MethodGet, "/v1/deployments/d/requests/%FF"},
		{http.MethodGet, "/v1/deployments/%FF/requests/r"},
		{http.MethodGet, "/v1/deployments/d/requests/%FF/result"},
		{http.MethodPost, "/v1/deployments/d/requests/%FF:cancel"},
		{http.MethodGet, "/v1/deployments/d/requests/%FF:watch"},
		{http.MethodGet, "/v1/deployments/d/requests/%FF/events"},
		{http.MethodPost, "/webhooks/runcomfy/d/%FF"},
		{http.MethodGet, "/openapi.json%FF"},
		{http.MethodGet, "/%FF"},
	} {
		t.Run(route.method+" "+route.path, func(t *testing.T) {
			code, body := do(route.method, route.path, nil, `{}`)
			if code != http.StatusBadRequest {
				t.Errorf("HTTP %d %s, want 400", code, body)
			}
		})
	}
	// One credential per call: a second Authorization (a list of guesses)
	// is refused, even beside a valid key.
	t.Run("two Authorization headers", func(t *testing.T) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+g.httpAddr+"/v1/deployments/d/requests/r", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header["Authorization"] = []string{"Bearer guess-0123456789abcdef", "Bearer " + securityKey}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("REST: HTTP %d, want 401", resp.StatusCode)
		}
		cc, err := grpc.NewClient(g.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		two := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer guess-0123456789abcdef", "authorization", "Bearer "+securityKey)
		_, err = comfygatev1.NewGatewayServiceClient(cc).GetStatus(two, &comfygatev1.GetStatusRequest{DeploymentId: "d", RequestId: "r"})
		if status.Code(err) != grpccodes.Unauthenticated {
			t.Errorf("gRPC: %v, want Unauthenticated", err)
		}
	})
	// A callback with a wrong token is answered at once, its body unread,
	// however slowly the body comes.
	t.Run("callback with a wrong token, slow body", func(t *testing.T) {
		c, err := net.Dial("tcp", g.httpAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := io.WriteString(c, "POST /webhooks/runcomfy/d/wrong-token HTTP/1.1\r\nHost: g\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"); err != nil {
			t.Fatal(err)
		}
		// Far less than the 30 s read timeout the body would otherwise get.
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		start := time.Now()
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || !strings.Contains(line, " 401 ") {
			t.Errorf("answer %q, %v after %v; want 401 at once", line, err, time.Since(start))
		}
	})
	// The three header cases above that were not refused each submitted once.
	if n := up.calls.Load(); n != 3 {
		t.Errorf("RunComfy saw %d calls, want the 3 plain submits", n)
	}
}

// TestSlowHandlerOutlivesTheReadTimeout: the read timeout bounds the time to
// send a body, not the call: a submit whose body arrived at once and whose
// RunComfy answer takes longer than --read-timeout succeeds, and its
// keep-alive connection serves the next call.
func TestSlowHandlerOutlivesTheReadTimeout(t *testing.T) {
	ctx, up := attackSetup(t)
	const readTimeout = 300 * time.Millisecond
	// RunComfy answers the first submit after three read timeouts.
	var first atomic.Bool
	slow := func() {
		if first.CompareAndSwap(false, true) {
			<-time.After(3 * readTimeout)
		}
	}
	up.onSubmit.Store(&slow)
	g := keyedGateway(ctx, t, up.srv.URL, "--read-timeout", readTimeout.String())
	c, err := net.Dial("tcp", g.httpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	for i := range 2 {
		body := `{"overrides":{}}`
		if _, err := fmt.Fprintf(c, "POST /v1/deployments/d/requests HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
			securityKey, len(body), body); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("submit %d on the same connection: %v", i+1, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("submit %d: HTTP %d after %v, want 200", i+1, resp.StatusCode, time.Since(start))
		}
		t.Logf("submit %d: 200 after %v", i+1, time.Since(start))
	}
}

// TestConnectionsAreBounded: past --max-connections a listener accepts no
// more until one closes, so a flood of keyless connections cannot take the
// process's file descriptors; once they go, the gateway serves again.
func TestConnectionsAreBounded(t *testing.T) {
	ctx, up := attackSetup(t)
	const limit = 50
	g := keyedGateway(ctx, t, up.srv.URL, "--max-connections", strconv.Itoa(limit))
	pid := g.proc.cmd.Process.Pid
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	base := openFDs(t, pid)
	for _, addr := range []string{g.httpAddr, g.grpcAddr} {
		// Connections that say nothing: each listener holds what it
		// accepted (the readiness probe's keep-alive connection may hold one
		// of the HTTP listener's places), the rest wait in the kernel.
		before := openFDs(t, pid)
		for range 2 * limit {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
		}
		eventually(ctx, t, "the listener at its limit", func() bool { return openFDs(t, pid) >= before+limit-1 })
		if n := openFDs(t, pid); n > before+limit {
			t.Errorf("%s: the gateway holds %d descriptors (%d before %d connections), want at most %d", addr, n, before, 2*limit, before+limit)
		}
	}
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	eventually(ctx, t, "descriptors back to the baseline", func() bool { return openFDs(t, pid) <= base })
	resp, err := http.Get("http://" + g.httpAddr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz after the flood: HTTP %d", resp.StatusCode)
	}
}

// TestGRPCSubmitsWaitForRoom: many large gRPC messages at once from one
// tenant (the floods that once took gigabytes), oversized GetStatus messages
// and then submits, are received a few at a time, within the bytes in
// flight: the others wait, held back by HTTP/2's flow control. The submits
// all go through.
func TestGRPCSubmitsWaitForRoom(t *testing.T) {
	ctx, up := attackSetup(t)
	const (
		body   = 8 << 20
		budget = 64 << 20
		calls  = 40
	)
	g := keyedGatewayBin(ctx, t, plainGatewayBin, up.srv.URL, "--max-body-bytes", strconv.Itoa(body+1<<20),
		"--max-inflight-body-bytes", strconv.Itoa(budget), "--upstream-timeout", "20s")
	pid := g.proc.cmd.Process.Pid
	cc, err := grpc.NewClient(g.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(16<<20)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	api := comfygatev1.NewGatewayServiceClient(cc)
	authed := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+securityKey)
	// Any other call's message is a few bytes, but gRPC receives whatever
	// is sent, up to the limit, before it can be refused: those wait for
	// room too.
	before := procStatus(t, pid, "VmHWM")
	// Encoded once and sent as it is: a message has 5 seconds to arrive
	// once it has room, and forty clients each encoding 8 MiB at once, under
	// the race detector on a machine busy with the other tests, may not have
	// begun to send it by then.
	huge, err := proto.Marshal(&comfygatev1.GetStatusRequest{DeploymentId: "d", RequestId: strings.Repeat("r", body)})
	if err != nil {
		t.Fatal(err)
	}
	// Five times the budget: enough to show they wait, few enough that the
	// last ones arrive within the receive timeout of such calls (5s) on a
	// loaded machine, instead of being cancelled for taking too long.
	codes := make([]grpccodes.Code, calls)
	var wg sync.WaitGroup
	for i := range codes {
		wg.Go(func() {
			var out []byte
			err := cc.Invoke(authed, comfygatev1.GatewayService_GetStatus_FullMethodName, &huge, &out, grpc.ForceCodecV2(rawcodec.Codec{}))
			codes[i] = status.Code(err)
		})
	}
	wg.Wait()
	for i, c := range codes {
		if c != grpccodes.ResourceExhausted { // larger than any message of its kind
			t.Errorf("GetStatus %d with an %d MiB id: %v, want ResourceExhausted", i, body>>20, c)
		}
	}
	grew := procStatus(t, pid, "VmHWM") - before
	t.Logf("peak RSS grew by %.1f MiB for %d x %d MiB GetStatus messages at once", float64(grew)/(1<<10), len(codes), body>>20)
	if limit := int64(2*budget+32<<20) >> 10; grew > limit {
		t.Errorf("peak RSS grew by %d KiB, want at most %d KiB", grew, limit)
	}

	input := `{"image":"` + strings.Repeat("A", body-12) + `"}`
	before = procStatus(t, pid, "VmHWM")
	errs := make([]error, calls)
	for i := range calls {
		wg.Go(func() {
			_, errs[i] = api.Submit(authed, &comfygatev1.SubmitRequest{DeploymentId: "d", InputJson: input})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("submit %d: %v", i, err)
		}
	}
	if n := up.submits.Load(); n != calls {
		t.Errorf("RunComfy saw %d submits, want %d", n, calls)
	}
	grew = procStatus(t, pid, "VmHWM") - before
	t.Logf("peak RSS grew by %.1f MiB for %d x %d MiB gRPC submits at once, with %d MiB in flight", float64(grew)/(1<<10), calls, body>>20, budget>>20)
	// The budget, the decoding copy of the messages being read, and the
	// flow-control windows of the waiting streams: far from calls x body.
	if limit := int64(2*budget+32<<20) >> 10; grew > limit {
		t.Errorf("peak RSS grew by %d KiB, want at most %d KiB", grew, limit)
	}

	// And the service still serves.
	if _, err := api.Submit(authed, &comfygatev1.SubmitRequest{DeploymentId: "d", InputJson: `{}`}); err != nil {
		t.Errorf("submit after the flood: %v", err)
	}
}
