package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/procfs"
	"github.com/redis/go-redis/v9"

	"github.com/comfygate/comfygate/internal/freeport"
)

// proc is a child process the harness started: a gateway replica, the
// simulator, Redis or a reference server. Its CPU time and memory are read from
// /proc, so each figure can be divided among the processes sharing the cores.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error // the exit status, once done is closed
}

// startProc starts bin with args, its output in dir/name.log.
func startProc(dir, name, bin string, args []string, env ...string) (*proc, error) {
	logPath := filepath.Join(dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// Killed with the harness, however it ends: no replica or Redis outlives a
	// run that crashed or was interrupted.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Env = append(os.Environ(), env...)
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// stop ends the process with SIGTERM (SIGKILL after 10s) and waits for it.
func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// exited reports an early exit, with the end of the process's log.
func (p *proc) exited() error {
	select {
	case <-p.done:
		return fmt.Errorf("%s exited (%v): %s", p.name, p.err, tail(p.log, 2000))
	default:
		return nil
	}
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}

// procStat reads /proc/<pid>/stat.
func procStat(pid int) (procfs.ProcStat, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return procfs.ProcStat{}, err
	}
	return p.Stat()
}

// cpuTime is the process's user plus system CPU time, all threads.
func cpuTime(pid int) (time.Duration, error) {
	st, err := procStat(pid)
	return time.Duration(st.CPUTime() * float64(time.Second)), err
}

// rss is the process's resident set size in bytes.
func rss(pid int) (int64, error) {
	st, err := procStat(pid)
	return int64(st.ResidentMemory()), err
}

// cpuMeter reads the CPU time of a set of processes at the start and the end
// of a measured window.
type cpuMeter struct {
	names []string
	pids  []int
	start []time.Duration
}

// meterOf measures the harness itself (the load generator) and procs.
func meterOf(procs ...namedPID) *cpuMeter {
	m := &cpuMeter{}
	m.add(namedPID{"load generator (harness)", os.Getpid()})
	for _, p := range procs {
		m.add(p)
	}
	return m
}

type namedPID struct {
	name string
	pid  int
}

func (p *proc) named() namedPID { return namedPID{p.name, p.pid()} }

func (m *cpuMeter) add(p namedPID) {
	m.names = append(m.names, p.name)
	m.pids = append(m.pids, p.pid)
}

func (m *cpuMeter) begin() {
	m.start = make([]time.Duration, len(m.pids))
	for i, pid := range m.pids {
		m.start[i], _ = cpuTime(pid)
	}
}

// end returns each process's CPU microseconds per operation over the window.
func (m *cpuMeter) end(ops int) []cpuRow {
	rows := make([]cpuRow, len(m.pids))
	for i, pid := range m.pids {
		t, _ := cpuTime(pid)
		d := t - m.start[i]
		rows[i] = cpuRow{Process: m.names[i], CPU: d}
		if ops > 0 {
			rows[i].PerOp = float64(d.Microseconds()) / float64(ops)
		}
	}
	return rows
}

// addCPU sums the CPU accounting of two windows of the same processes; ops
// is the operations of both.
func addCPU(sum, w []cpuRow, ops int) []cpuRow {
	if sum == nil {
		sum = w
	} else {
		for i := range sum {
			sum[i].CPU += w[i].CPU
		}
	}
	for i := range sum {
		sum[i].PerOp = float64(sum[i].CPU.Microseconds()) / float64(max(ops, 1))
	}
	return sum
}

// buildBinaries compiles the gateway and the simulator into dir.
func buildBinaries(ctx context.Context, dir string) (gateway, sim string, err error) {
	gateway, sim = filepath.Join(dir, "comfygate"), filepath.Join(dir, "runcomfy-sim")
	for _, b := range []struct{ out, pkg string }{{gateway, "./cmd/comfygate"}, {sim, "./cmd/runcomfy-sim"}} {
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", b.out, b.pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("go build %s: %w\n%s", b.pkg, err, out)
		}
	}
	return gateway, sim, nil
}

func freeAddr() (string, error) { return freeport.Loopback() }

// waitHTTP waits until url answers 200, or the process exits.
func waitHTTP(ctx context.Context, p *proc, url string) error { return waitStatus(ctx, p, url, 200) }

// waitStatus waits until url answers with code, or the process exits.
func waitStatus(ctx context.Context, p *proc, url string, code int) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == code {
				return nil
			}
		}
		if err := p.exited(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %s did not answer %d: %w", p.name, url, code, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// redisServer is a private Redis for the run, without persistence (like the
// machine's own), so no other user of a shared Redis disturbs the figures.
type redisServer struct {
	*proc
	url     string
	addr    string
	version string
}

func startRedis(ctx context.Context, dir string) (*redisServer, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errors.New("redis-server is not installed (apt-get install redis-server)")
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	_, port, _ := net.SplitHostPort(addr)
	p, err := startProc(dir, "redis", bin, []string{"--port", port, "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", dir})
	if err != nil {
		return nil, err
	}
	s := &redisServer{proc: p, addr: addr, url: "redis://" + addr + "/0"}
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		info, err := c.InfoMap(ctx, "server").Result()
		if err == nil {
			s.version = info["Server"]["redis_version"]
			return s, nil
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("redis-server did not answer: %w", err)
		}
	}
}

// fetch saves what url answers into path.
func fetch(ctx context.Context, url, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
