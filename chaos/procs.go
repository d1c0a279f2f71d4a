package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/comfygate/comfygate/internal/freeport"
)

// binaries are the gateway builds a run starts: the real one, and the one
// broken on purpose (the chaosfault tag) for the canary.
type binaries struct {
	dir     string
	gateway string
	broken  string
}

func buildAll(ctx context.Context) (*binaries, error) {
	dir, err := os.MkdirTemp("", "comfygate-chaos-bin-")
	if err != nil {
		return nil, err
	}
	b := &binaries{dir: dir, gateway: filepath.Join(dir, "comfygate"), broken: filepath.Join(dir, "comfygate-broken")}
	for _, t := range []struct{ out, tags string }{{b.gateway, ""}, {b.broken, "chaosfault"}} {
		args := []string{"build", "-trimpath", "-o", t.out}
		if t.tags != "" {
			args = append(args, "-tags", t.tags)
		}
		cmd := exec.CommandContext(ctx, "go", append(args, "./cmd/comfygate")...)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			b.remove()
			return nil, fmt.Errorf("go build %s: %w\n%s", t.out, err, out)
		}
	}
	return b, nil
}

func (b *binaries) remove() { _ = os.RemoveAll(b.dir) }

// proc is one run of a child process, its output in a log file that later
// runs of the same name append to.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // Wait's answer, once done is closed
}

func startProc(dir, name, bin string, args, env []string) (*proc, error) {
	f, err := os.OpenFile(filepath.Join(dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(f, "==== %s %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// Killed with the harness, however it ends.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "COMFYGATE_") && !strings.HasPrefix(kv, "RUNCOMFY_") && !strings.HasPrefix(kv, "AWS_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// signal sends sig and waits for the exit, killing the process after grace.
func (p *proc) signal(sig syscall.Signal, grace time.Duration) {
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func freeAddr() (string, error) { return freeport.Loopback() }

// waitOK waits until url answers 200, the process exits or ctx ends.
func waitOK(ctx context.Context, p *proc, url string, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if !p.running() {
			return fmt.Errorf("%s exited: %v", p.name, p.err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %s did not answer 200 within %v", p.name, url, limit)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
