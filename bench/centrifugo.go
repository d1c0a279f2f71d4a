package main

import (
	"bufio"
	"context"
	"debug/buildinfo"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/net/websocket"
	"google.golang.org/protobuf/encoding/protowire"
)

// Centrifugo is the fan-out's peer: a real-time messaging server that, like
// comfygate, fans one stream of events out to many connections over several
// nodes sharing Redis.
const (
	centrifugoModule  = "github.com/centrifugal/centrifugo/v6"
	centrifugoVersion = "v6.9.1"
	centrifugoChannel = "fan"
	centrifugoAPIKey  = "bench-centrifugo-api-key"
	// centrifugoDB is the database of the run's private Redis the nodes use.
	// Nothing else in the run uses it, so it is emptied at the end. The
	// prefix keeps their PUB/SUB channels, which all databases share, apart
	// from comfygate's.
	centrifugoDB     = 1
	centrifugoPrefix = "centrifugo-bench"
	// centrifugoOrigin is the Origin the subscribers send (x/net/websocket
	// requires one) and the nodes allow.
	centrifugoOrigin = "http://comfygate-bench"
	// centrifugoMaxMsg bounds a message the subscribers accept, as
	// Centrifugo bounds what it reads (64 KiB).
	centrifugoMaxMsg = 64 << 10
)

// centrifugoBinary returns Centrifugo's binary, built with go install into a
// directory of the Go build cache the first time and reused by later runs:
// the build takes minutes, the comparison seconds. A binary that is absent,
// or whose build information names another module or version, is rebuilt.
// goVersion is the Go release it was built with, from its build information.
func centrifugoBinary(ctx context.Context) (bin, goVersion string, err error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOCACHE").Output()
	if err != nil {
		return "", "", fmt.Errorf("go env GOCACHE: %w", err)
	}
	cache := strings.TrimSpace(string(out))
	if cache == "" || cache == "off" {
		if cache, err = os.UserCacheDir(); err != nil {
			return "", "", err
		}
	}
	dir := filepath.Join(cache, "comfygate-bench", "centrifugo-"+centrifugoVersion)
	bin = filepath.Join(dir, "centrifugo")
	built := func() (string, bool) {
		info, err := buildinfo.ReadFile(bin)
		if err != nil || info.Main.Path != centrifugoModule || info.Main.Version != centrifugoVersion {
			return "", false
		}
		return info.GoVersion, true
	}
	if v, ok := built(); ok {
		return bin, v, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	fmt.Printf("building Centrifugo %s with go install into %s (once; it takes minutes)\n", centrifugoVersion, dir)
	t0 := time.Now()
	cmd := exec.CommandContext(ctx, "go", "install", centrifugoModule+"@"+centrifugoVersion)
	// Outside the repository, so that its go.mod plays no part.
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("go install %s@%s: %w\n%s", centrifugoModule, centrifugoVersion, err, out)
	}
	fmt.Printf("built Centrifugo in %s\n", time.Since(t0).Round(time.Second))
	v, ok := built()
	if !ok {
		return "", "", fmt.Errorf("go install left no %s %s at %s", centrifugoModule, centrifugoVersion, bin)
	}
	return bin, v, nil
}

// centrifugoSetup describes the Centrifugo half of the fan-out for the
// report: what was run, how, and what its figures count.
func centrifugoSetup(perNode, size int, goVersion string) string {
	return fmt.Sprintf("The peer, measured in the same run: **Centrifugo %s** (`go install %s@%s` with %s, CGO off; kept in the Go build cache for later runs), "+
		"two nodes sharing the same private Redis (engine `redis`, database %d, key and channel prefix `%s`; no history, presence or join/leave, so each publication is one PUBLISH that both nodes receive and fan out to their own subscribers). "+
		"%s subscribers of one channel, %d on each node, each over its own WebSocket connection with the protobuf protocol (`/connection/websocket?format=protobuf`, binary frames of length-delimited Replies; "+
		"the subscribers are this harness, on golang.org/x/net/websocket, decoding the client protocol by hand and answering Centrifugo's pings). "+
		"One publisher POSTs to node A's HTTP API (`/api/publish` with `b64data`, one keep-alive connection) at the same rates, for the same time per step, paced the same way; "+
		"each publication's data is %d bytes of binary, the encoded size of the WatchRequestResponse comfygate's watchers receive, its first 8 bytes a sequence number from which each subscriber counts deliveries and gaps as comfygate's watchers do, and a step waits (at most 5s) until every subscriber has its last publication. "+
		"Each node's configuration file: `http_server` {address 127.0.0.1, a free port}, `log.level` warn, `usage_stats.disabled` true, `health.enabled` true, "+
		"`engine` {type redis, redis {address [the run's Redis], db %d, prefix %s}}, `http_api` {key, error_mode transport}, "+
		"`client.allow_anonymous_connect_without_token` true, `client.allowed_origins` [the subscribers' Origin], `channel.without_namespace` {allow_subscribe_for_client, allow_subscribe_for_anonymous} true; "+
		"everything else at its default (so a subscriber whose 1 MiB queue overflows is disconnected, where comfygate coalesces). "+
		"Connection tokens are off, which changes connecting only, not fan-out. "+
		"The connections differ as each server is used: comfygate's 1,000 streams share 8 HTTP/2 connections, Centrifugo's subscribers have one WebSocket connection each, as so many browsers would, "+
		"so Centrifugo writes to (and the harness reads from) 125 times as many sockets per event; comfygate's last step gives each of its streams a connection of its own too, and is reported beside Centrifugo's step at the same rate. "+
		"Both senders wait for each answer before the next send, so when the machine cannot keep up a step stretches beyond its time at a lower rate than it names, for both alike; each step gives the rate each actually sent. "+
		"At each rate comfygate's step runs, then Centrifugo's. *Server CPU per delivery, both nodes together* is the CPU of replicas A and B (of nodes A and B) over the step's deliveries; Redis and the harness are in the CPU tables.",
		centrifugoVersion, centrifugoModule, centrifugoVersion, goVersion, centrifugoDB, centrifugoPrefix,
		fmtInt(int64(2*perNode)), perNode, size, centrifugoDB, centrifugoPrefix)
}

// centrifugoConfig is a node's configuration in Centrifugo v6's keys (its
// internal/config and internal/configtypes): the HTTP server on port (client
// WebSocket, HTTP API, health), the Redis engine on the run's Redis, an API
// key, and clients that connect and subscribe without tokens. Logging is at
// warn, so that it costs nothing per message; usage statistics are off (the
// machine has no internet, and they would only add noise).
func centrifugoConfig(port int, redisAddr string) map[string]any {
	return map[string]any{
		"http_server": map[string]any{"address": "127.0.0.1", "port": port},
		"log":         map[string]any{"level": "warn"},
		"usage_stats": map[string]any{"disabled": true},
		"health":      map[string]any{"enabled": true},
		"engine": map[string]any{"type": "redis", "redis": map[string]any{
			"address": []string{"redis://" + redisAddr}, "db": centrifugoDB, "prefix": centrifugoPrefix,
		}},
		// Errors as HTTP status codes, so that the publisher sees a refused
		// publish without parsing the body.
		"http_api": map[string]any{"key": centrifugoAPIKey, "error_mode": "transport"},
		"client": map[string]any{
			"allow_anonymous_connect_without_token": true,
			"allowed_origins":                       []string{centrifugoOrigin},
		},
		// Subscribing without a token takes both: clients may, and so may
		// anonymous ones.
		"channel": map[string]any{"without_namespace": map[string]any{"allow_subscribe_for_client": true, "allow_subscribe_for_anonymous": true}},
	}
}

// centNode is one Centrifugo node the harness started.
type centNode struct {
	*proc
	addr string // its HTTP server: client WebSocket, API, health
}

// startCentrifugo starts a node named name (its config and log in the run's
// directory) and waits until its health endpoint answers.
func (e *env) startCentrifugo(ctx context.Context, bin, name string) (*centNode, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	_, portS, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portS)
	cfg, err := json.MarshalIndent(centrifugoConfig(port, e.redis.addr), "", "  ")
	if err != nil {
		return nil, err
	}
	path := filepath.Join(e.dir, name+".json")
	if err := os.WriteFile(path, cfg, 0o600); err != nil {
		return nil, err
	}
	p, err := startProc(e.dir, name, bin, []string{"--config", path})
	if err != nil {
		return nil, err
	}
	if err := waitHTTP(ctx, p, "http://"+addr+"/health"); err != nil {
		p.stop()
		return nil, err
	}
	return &centNode{proc: p, addr: addr}, nil
}

// centRun is the fan-out's load on Centrifugo, the shape of a fanRun: two
// nodes sharing Redis, a publisher to node A, and subscribers of one channel
// split over both, each on its own WebSocket connection. It stays open
// between steps, so that comfygate's and Centrifugo's steps can take turns.
type centRun struct {
	a, b      *centNode
	redisAddr string
	pub       *httpConn // to node A, opened anew by each step
	data      []byte    // a publication's data; its first 8 bytes are the seq
	body      []byte
	ws        []fanWatcher // the subscribers' counts, as comfygate's watchers keep them
	conns     []*websocket.Conn
	sent      int
	meter     *cpuMeter
	closing   atomic.Bool
	lost      atomic.Int64 // subscribers whose connection ended before close
	wg        sync.WaitGroup
	closed    bool
	leftKeys  int64 // keys the nodes left in their Redis database, flushed at close
}

// openCentrifugo checks that the Redis database for Centrifugo is empty,
// starts two nodes on it and opens perNode subscribers on each; the
// publisher, of size-byte publications, connects at each step. The CPU of
// both nodes and of the run's Redis is metered per step. close ends it all and empties the
// database; it is to be called whatever openCentrifugo returned.
func (e *env) openCentrifugo(ctx context.Context, bin string, perNode, size int) (c *centRun, err error) {
	c = &centRun{redisAddr: e.redis.addr, data: make([]byte, max(size, 8))}
	rdb := redis.NewClient(&redis.Options{Addr: e.redis.addr, DB: centrifugoDB})
	n, err := rdb.DBSize(ctx).Result()
	rdb.Close()
	if err != nil {
		return c, err
	}
	if n != 0 {
		c.closed = true // not ours to flush
		return c, fmt.Errorf("redis database %d holds %d keys: it is not free for Centrifugo", centrifugoDB, n)
	}
	if c.a, err = e.startCentrifugo(ctx, bin, "centrifugo-a"); err != nil {
		return c, err
	}
	if c.b, err = e.startCentrifugo(ctx, bin, "centrifugo-b"); err != nil {
		return c, err
	}
	c.ws = make([]fanWatcher, 2*perNode)
	for r, node := range []*centNode{c.a, c.b} {
		for i := range perNode {
			ws, br, err := subscribe(ctx, node.addr)
			if err != nil {
				return c, fmt.Errorf("subscriber %d on %s: %w", i, node.name, err)
			}
			c.conns = append(c.conns, ws)
			w := &c.ws[r*perNode+i]
			c.wg.Go(func() { c.follow(w, ws, br) })
		}
	}
	c.meter = meterOf(c.a.named(), c.b.named(), e.redis.named())
	return c, nil
}

// subscribe opens a subscriber's WebSocket to the node at addr with the
// protobuf protocol, connects without a token and subscribes to the
// channel, waiting for each reply.
func subscribe(ctx context.Context, addr string) (*websocket.Conn, *bufio.Reader, error) {
	cfg, err := websocket.NewConfig("ws://"+addr+"/connection/websocket?format=protobuf", centrifugoOrigin)
	if err != nil {
		return nil, nil, err
	}
	ws, err := cfg.DialContext(ctx)
	if err != nil {
		return nil, nil, err
	}
	ws.PayloadType = websocket.BinaryFrame
	// Read as one stream: the messages are length-delimited whatever the
	// frames that carry them.
	br := bufio.NewReaderSize(ws, 4096)
	var buf []byte
	for _, cmd := range [][]byte{connectCommand(1), subscribeCommand(2, centrifugoChannel)} {
		id, _ := pbVarint(cmd, 1)
		if _, err := ws.Write(protowire.AppendBytes(nil, cmd)); err != nil {
			ws.Close()
			return nil, nil, err
		}
		for {
			msg, err := readMessage(br, &buf)
			if err != nil {
				ws.Close()
				return nil, nil, err
			}
			if len(msg) == 0 {
				continue // a ping; none comes this early
			}
			if got, _ := pbVarint(msg, 1); got != id {
				continue
			}
			if e, ok := pbBytes(msg, 2); ok {
				code, _ := pbVarint(e, 1)
				text, _ := pbBytes(e, 2)
				ws.Close()
				return nil, nil, fmt.Errorf("command %d refused: %d %s", id, code, text)
			}
			break
		}
	}
	return ws, br, nil
}

// follow reads a subscriber's connection until it ends: it answers pings
// (the empty reply) with pongs (the empty command), as Centrifugo's client
// protocol asks, and counts the publications and their seq jumps exactly as
// fanWatcher.follow counts comfygate's events.
func (c *centRun) follow(w *fanWatcher, ws *websocket.Conn, br *bufio.Reader) {
	var buf []byte
	for {
		msg, err := readMessage(br, &buf)
		if err != nil {
			if !c.closing.Load() {
				c.lost.Add(1)
			}
			return
		}
		if len(msg) == 0 {
			if _, err := ws.Write([]byte{0}); err != nil && !c.closing.Load() {
				c.lost.Add(1)
				return
			}
			continue
		}
		// Reply.push (4) → Push.pub (4) → Publication.data (4).
		push, ok := pbBytes(msg, 4)
		if !ok {
			continue
		}
		pub, ok := pbBytes(push, 4)
		if !ok {
			continue
		}
		data, ok := pbBytes(pub, 4)
		if !ok || len(data) < 8 {
			continue
		}
		seq := int64(binary.BigEndian.Uint64(data))
		if seq != w.seq+1 {
			w.gaps.Add(1)
		}
		w.seq = seq
		w.delivered.Add(1)
		w.last.Store(seq)
	}
}

// post publishes publication n (data carrying n) to the channel through node
// A's HTTP API.
func (c *centRun) post(n int) error {
	binary.BigEndian.PutUint64(c.data, uint64(n))
	b := append(c.body[:0], `{"channel":"`+centrifugoChannel+`","b64data":"`...)
	b = base64.StdEncoding.AppendEncode(b, c.data)
	b = append(b, `"}`...)
	c.body = b
	code, err := c.pub.post("/api/publish", b)
	if err == nil && code != 200 {
		err = fmt.Errorf("publish answered %d", code)
	}
	return err
}

// step publishes rate messages a second for d, as fanRun.step posts
// callbacks, then waits (at most 5s) until every subscriber has the last.
// The publisher's keep-alive connection is opened anew before each step,
// outside the measured window: Centrifugo's HTTP server closes a connection
// idle for 30s (its ReadTimeout, which Go's server also takes as the idle
// timeout), and the steps of comfygate and the time to open the subscribers
// come between.
func (c *centRun) step(ctx context.Context, rate int, d time.Duration) (fanStep, error) {
	n := int(d.Seconds() * float64(rate))
	if c.pub != nil {
		c.pub.close()
	}
	var err error
	if c.pub, err = dialHTTP(c.a.addr); err != nil {
		return fanStep{}, err
	}
	c.pub.header = "X-API-Key: " + centrifugoAPIKey + "\r\n"
	lost := c.lost.Load()
	s, err := measureStep(ctx, c.ws, c.meter, rate, n, c.sent+n, func(j int) error { return c.post(c.sent + j) })
	if err != nil {
		return s, err
	}
	c.sent += n
	s.lost = int(c.lost.Load() - lost)
	return s, nil
}

// close ends the subscribers and the publisher, stops both nodes and empties
// their Redis database, noting how many keys they had left there. It does
// all of it once, however often it is called.
func (c *centRun) close(ctx context.Context) error {
	if c.closed {
		return nil
	}
	c.closed = true
	c.closing.Store(true)
	for _, ws := range c.conns {
		ws.Close()
	}
	c.wg.Wait()
	if c.pub != nil {
		c.pub.close()
	}
	for _, n := range []*centNode{c.a, c.b} {
		if n != nil {
			n.stop()
		}
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	rdb := redis.NewClient(&redis.Options{Addr: c.redisAddr, DB: centrifugoDB})
	defer rdb.Close()
	var err error
	if c.leftKeys, err = rdb.DBSize(ctx).Result(); err != nil {
		return fmt.Errorf("centrifugo's redis database: %w", err)
	}
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		return fmt.Errorf("flush centrifugo's redis database: %w", err)
	}
	return nil
}

// connectCommand is Command{id, connect: ConnectRequest{}}: an anonymous
// connect, no token (client.proto of centrifugal/protocol).
func connectCommand(id uint64) []byte {
	b := protowire.AppendTag(nil, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, id)
	b = protowire.AppendTag(b, 4, protowire.BytesType)
	return protowire.AppendBytes(b, nil)
}

// subscribeCommand is Command{id, subscribe: SubscribeRequest{channel}}.
func subscribeCommand(id uint64, channel string) []byte {
	req := protowire.AppendTag(nil, 1, protowire.BytesType)
	req = protowire.AppendString(req, channel)
	b := protowire.AppendTag(nil, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, id)
	b = protowire.AppendTag(b, 5, protowire.BytesType)
	return protowire.AppendBytes(b, req)
}

// readMessage reads one varint-length-delimited message into *buf, which
// it grows as needed and reuses.
func readMessage(br *bufio.Reader, buf *[]byte) ([]byte, error) {
	n, err := binary.ReadUvarint(br)
	if err != nil {
		return nil, err
	}
	if n > centrifugoMaxMsg {
		return nil, fmt.Errorf("message of %d bytes", n)
	}
	if uint64(cap(*buf)) < n {
		*buf = make([]byte, n)
	}
	b := (*buf)[:n]
	if _, err := io.ReadFull(br, b); err != nil {
		return nil, err
	}
	return b, nil
}

// pbField finds the first field num of the protobuf message b and returns
// its wire type and value bytes; ok is false when b lacks it or does not
// parse. The subscribers read only the few fields they need, without the
// protocol's generated code.
func pbField(b []byte, num protowire.Number) (typ protowire.Type, v []byte, ok bool) {
	for len(b) > 0 {
		n, t, l := protowire.ConsumeTag(b)
		if l < 0 {
			return 0, nil, false
		}
		b = b[l:]
		m := protowire.ConsumeFieldValue(n, t, b)
		if m < 0 {
			return 0, nil, false
		}
		if n == num {
			return t, b[:m], true
		}
		b = b[m:]
	}
	return 0, nil, false
}

// pbBytes is the bytes (a string or a message) of field num of b.
func pbBytes(b []byte, num protowire.Number) ([]byte, bool) {
	typ, v, ok := pbField(b, num)
	if !ok || typ != protowire.BytesType {
		return nil, false
	}
	v, n := protowire.ConsumeBytes(v)
	return v, n >= 0
}

// pbVarint is the varint field num of b.
func pbVarint(b []byte, num protowire.Number) (uint64, bool) {
	typ, v, ok := pbField(b, num)
	if !ok || typ != protowire.VarintType {
		return 0, false
	}
	x, n := protowire.ConsumeVarint(v)
	return x, n >= 0
}
