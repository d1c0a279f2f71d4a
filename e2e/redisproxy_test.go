package e2e

import (
	"bytes"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// redisProxy is a TCP proxy between one replica and Redis that can cut the
// replica's pub/sub connection off silently: from then on it swallows the
// bytes of that connection both ways and keeps both sockets open, so neither
// end gets a FIN or an RST. That is what a network partition, a crashed Redis
// host or a failover behind a virtual IP looks like to the replica.
type redisProxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns []*proxiedConn
}

// proxiedConn is one client connection and its connection to Redis.
type proxiedConn struct {
	client, server net.Conn
	pubsub         atomic.Bool // the client sent SUBSCRIBE on it
	cut            atomic.Bool
}

func newRedisProxy(t *testing.T, target string) *redisProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &redisProxy{ln: ln, target: target}
	p.wg.Go(p.accept)
	return p
}

func (p *redisProxy) addr() string { return p.ln.Addr().String() }

func (p *redisProxy) accept() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			client.Close()
			continue
		}
		c := &proxiedConn{client: client, server: server}
		p.mu.Lock()
		p.conns = append(p.conns, c)
		p.mu.Unlock()
		p.wg.Go(func() { c.pump(server, client, true) })
		p.wg.Go(func() { c.pump(client, server, false) })
	}
}

// pump copies from src to dst until either side closes, or swallows what it
// reads once the connection is cut.
func (c *proxiedConn) pump(dst, src net.Conn, fromClient bool) {
	defer c.client.Close()
	defer c.server.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if fromClient && bytes.Contains(bytes.ToLower(buf[:n]), []byte("subscribe")) {
				c.pubsub.Store(true)
			}
			if !c.cut.Load() {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			return
		}
	}
}

// cutPubSub silently cuts every pub/sub connection and returns how many.
func (p *redisProxy) cutPubSub() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, c := range p.conns {
		if c.pubsub.Load() && !c.cut.Load() {
			c.cut.Store(true)
			n++
		}
	}
	return n
}

func (p *redisProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.client.Close()
		c.server.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
