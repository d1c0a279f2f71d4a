package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
)

// simulator is the built-in RunComfy of --simulate, served on its own loopback
// listener so that the gateway reaches it over real HTTP, exactly as it would reach
// RunComfy.
type simulator struct {
	sim   *runcomfysim.Sim
	srv   *http.Server
	lis   net.Listener
	url   string
	token string
}

// newSimulator opens the simulator's listener. With no token configured it makes
// up a random one, so the bearer check is exercised as upstream would.
func newSimulator(log *slog.Logger, token string) (*simulator, error) {
	if token == "" {
		token = randomSecret()
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("simulator listener: %w", err)
	}
	url := "http://" + lis.Addr().String()
	opts := runcomfysim.DefaultOptions()
	opts.Token = token
	opts.PublicURL = url
	opts.Logger = log
	sim := runcomfysim.New(opts)
	return &simulator{
		sim:   sim,
		srv:   &http.Server{Handler: sim.Handler(), ReadHeaderTimeout: 10 * time.Second},
		lis:   lis,
		url:   url,
		token: token,
	}, nil
}

// close releases a simulator that never ran.
func (s *simulator) close() {
	s.lis.Close()
	s.sim.Close()
}

// run serves until ctx ends, then stops the server and the simulated jobs.
func (s *simulator) run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.lis) }()
	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
		shCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err = s.srv.Shutdown(shCtx)
		if serveErr := <-errc; !errors.Is(serveErr, http.ErrServerClosed) {
			err = errors.Join(err, serveErr)
		}
	}
	s.sim.Close()
	if err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("simulator: %w", err)
	}
	return nil
}
