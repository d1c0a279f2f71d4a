package hooks

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/net/dns/dnsmessage"
)

// TestMain checks that no test leaves a goroutine behind: receivers, the fake
// DNS server and client connections all have an owner that ends them.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// receiver is a real HTTP server on a real TCP listener that counts the
// connections it accepted, so a test can tell "refused before connecting" from
// "connected, then failed".
type receiver struct {
	*httptest.Server
	conns atomic.Int64
	hits  atomic.Int64
}

// newReceiver starts handler on listenAddr ("127.0.0.1:0" or "[::1]:0").
func newReceiver(t *testing.T, listenAddr string, handler http.HandlerFunc) *receiver {
	t.Helper()
	ln, err := net.Listen("tcp", listenAddr)
	if err != nil {
		t.Fatalf("listen on %s: %v", listenAddr, err)
	}
	r := &receiver{}
	r.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.hits.Add(1)
		// Reading the request body to its end is what lets the server notice
		// a client that hangs up (it then cancels req.Context()).
		_, _ = io.Copy(io.Discard, req.Body)
		if handler != nil {
			handler(w, req)
			return
		}
		_, _ = io.WriteString(w, "ok")
	}))
	r.Listener = ln
	r.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			r.conns.Add(1)
		}
	}
	r.Start()
	t.Cleanup(r.Close)
	return r
}

// port is the receiver's port, to build URLs with other spellings of its host.
func (r *receiver) port(t *testing.T) string {
	t.Helper()
	_, p, err := net.SplitHostPort(r.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func newClient(t *testing.T, cfg GuardConfig) *http.Client {
	t.Helper()
	c, err := NewGuardedClient(cfg)
	if err != nil {
		t.Fatalf("NewGuardedClient: %v", err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// get sends one request and reads the whole (capped) body.
func get(ctx context.Context, c *http.Client, url string) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(`{"type":"test"}`))
	if err != nil {
		return nil, nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return resp, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

func ipv6Loopback(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback on this machine: %v", err)
	}
	_ = ln.Close()
}

// TestGuardRefusesLocalReceivers points the default client at a live receiver
// through every spelling of a loopback address: each is refused with
// ErrForbiddenAddress, and the receiver never sees a connection.
func TestGuardRefusesLocalReceivers(t *testing.T) {
	v4 := newReceiver(t, "127.0.0.1:0", nil)
	c := newClient(t, GuardConfig{})

	tests := []struct {
		name string
		recv func(t *testing.T) (*receiver, string)
	}{
		{"127.0.0.1", func(t *testing.T) (*receiver, string) { return v4, "http://127.0.0.1:" + v4.port(t) + "/hook" }},
		{"::ffff:127.0.0.1", func(t *testing.T) (*receiver, string) {
			return v4, "http://[::ffff:127.0.0.1]:" + v4.port(t) + "/hook"
		}},
		{"localhost", func(t *testing.T) (*receiver, string) { return v4, "http://localhost:" + v4.port(t) + "/hook" }},
		{"LOCALHOST", func(t *testing.T) (*receiver, string) { return v4, "http://LOCALHOST:" + v4.port(t) + "/hook" }},
		{"::1", func(t *testing.T) (*receiver, string) {
			ipv6Loopback(t)
			v6 := newReceiver(t, "[::1]:0", nil)
			return v6, "http://[::1]:" + v6.port(t) + "/hook"
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, url := tc.recv(t)
			before := r.conns.Load()
			_, _, err := get(t.Context(), c, url)
			if !errors.Is(err, ErrForbiddenAddress) {
				t.Fatalf("error %v, want ErrForbiddenAddress", err)
			}
			if got := r.conns.Load() - before; got != 0 {
				t.Errorf("the receiver accepted %d connections, want none", got)
			}
		})
	}
}

// TestGuardRefusesBeforeConnecting dials addresses nothing answers on here. The
// client's timeout is a minute and the test's context gives up after ten
// seconds: the error can be ErrForbiddenAddress, from the dialer's Control hook
// that runs before connect(2), only if no connection was attempted; an
// attempted one would fail with a timeout or a network error instead.
func TestGuardRefusesBeforeConnecting(t *testing.T) {
	c := newClient(t, GuardConfig{Timeout: time.Minute})
	hosts := []string{
		"10.0.0.1", "169.254.169.254", "100.100.100.200", "172.16.0.1", "192.168.1.1",
		"0.0.0.0", "[::]", "255.255.255.255", "224.0.0.1", "[fe80::1]", "[fd00::1]", "[ff02::1]",
		"[::ffff:169.254.169.254]", "[::ffff:10.0.0.1]", "[64:ff9b::a9fe:a9fe]", "[64:ff9b::7f00:1]",
		"[2001:db8::1]", "192.0.2.1",
	}
	for _, host := range hosts {
		t.Run(host, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			start := time.Now()
			_, _, err := get(ctx, c, "http://"+host+":80/hook")
			if !errors.Is(err, ErrForbiddenAddress) {
				t.Fatalf("error %v, want ErrForbiddenAddress", err)
			}
			opErr, ok := errors.AsType[*net.OpError](err)
			if !ok || opErr.Op != "dial" {
				t.Errorf("error %v, want it to come from the dial", err)
			}
			// The check costs microseconds; a second is a bound no connect
			// attempt to an unroutable address would meet.
			if d := time.Since(start); d > time.Second {
				t.Errorf("refusal took %s: a connection was attempted first", d)
			}
		})
	}
}

// fakeDNS is a DNS server on a real UDP socket that answers A queries for its
// names and NXDOMAIN for the rest; it counts the queries for each name.
type fakeDNS struct {
	conn    net.PacketConn
	answers map[string]netip.Addr // "name." -> IPv4 address
	mu      sync.Mutex
	queries map[string]int
}

func startFakeDNS(t *testing.T, answers map[string]netip.Addr) *fakeDNS {
	t.Helper()
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &fakeDNS{conn: conn, answers: answers, queries: map[string]int{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.serve()
	}()
	t.Cleanup(func() {
		_ = conn.Close()
		<-done
	})
	return d
}

func (d *fakeDNS) serve() {
	buf := make([]byte, 1500)
	for {
		n, from, err := d.conn.ReadFrom(buf)
		if err != nil {
			return // closed by the test's cleanup
		}
		if resp, ok := d.answer(buf[:n]); ok {
			_, _ = d.conn.WriteTo(resp, from)
		}
	}
}

func (d *fakeDNS) answer(query []byte) ([]byte, bool) {
	var p dnsmessage.Parser
	hdr, err := p.Start(query)
	if err != nil {
		return nil, false
	}
	q, err := p.Question()
	if err != nil {
		return nil, false
	}
	name := strings.ToLower(q.Name.String())
	d.mu.Lock()
	d.queries[name]++
	d.mu.Unlock()

	addr, known := d.answers[name]
	rcode := dnsmessage.RCodeSuccess
	if !known {
		rcode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: hdr.ID, Response: true, Authoritative: true, RCode: rcode})
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, false
	}
	if err := b.Question(q); err != nil {
		return nil, false
	}
	if err := b.StartAnswers(); err != nil {
		return nil, false
	}
	// Only A records: an AAAA query gets an empty answer.
	if known && q.Type == dnsmessage.TypeA {
		rh := dnsmessage.ResourceHeader{Name: q.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 0}
		if err := b.AResource(rh, dnsmessage.AResource{A: addr.As4()}); err != nil {
			return nil, false
		}
	}
	msg, err := b.Finish()
	return msg, err == nil
}

func (d *fakeDNS) count(name string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.queries[name]
}

// resolver sends every lookup to d.
func (d *fakeDNS) resolver() *net.Resolver {
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dialer net.Dialer
			return dialer.DialContext(ctx, "udp", d.conn.LocalAddr().String())
		},
	}
}

// TestGuardChecksTheResolvedAddress uses a name that looks public and that the
// test's DNS server resolves to the loopback receiver: the guard refuses it
// after resolution, so the check is on the address dialed, not on the URL's
// text. The same name on the allow list, or its address on it, gets through.
func TestGuardChecksTheResolvedAddress(t *testing.T) {
	r := newReceiver(t, "127.0.0.1:0", nil)
	dns := startFakeDNS(t, map[string]netip.Addr{"hooks.tenant.test.": netip.MustParseAddr("127.0.0.1")})
	url := "http://hooks.tenant.test:" + r.port(t) + "/hook"

	tests := []struct {
		name       string
		allowHosts []string
		wantErr    error
	}{
		{"name and address not allowed", nil, ErrForbiddenAddress},
		{"another name allowed", []string{"other.tenant.test"}, ErrForbiddenAddress},
		{"another network allowed", []string{"10.0.0.0/8"}, ErrForbiddenAddress},
		{"name allowed", []string{"hooks.tenant.test"}, nil},
		{"name allowed in capitals, rooted", []string{"HOOKS.Tenant.Test."}, nil},
		{"resolved address allowed", []string{"127.0.0.1"}, nil},
		{"resolved address's network allowed", []string{"127.0.0.0/8"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t, GuardConfig{AllowHosts: tc.allowHosts, Resolver: dns.resolver()})
			queries, conns, hits := dns.count("hooks.tenant.test."), r.conns.Load(), r.hits.Load()
			resp, body, err := get(t.Context(), c, url)
			if dns.count("hooks.tenant.test.") == queries {
				t.Error("the name was not resolved by the test's DNS server")
			}
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("error %v, want %v", err, tc.wantErr)
				}
				if got := r.conns.Load() - conns; got != 0 {
					t.Errorf("the receiver accepted %d connections, want none", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("error %v, want the receiver reached", err)
			}
			if resp.StatusCode != http.StatusOK || string(body) != "ok" || r.hits.Load()-hits != 1 {
				t.Errorf("got %d %q and %d hits, want 200 \"ok\" and one hit", resp.StatusCode, body, r.hits.Load()-hits)
			}
		})
	}
}

// TestGuardAllows reaches a loopback receiver through each way of allowing it,
// and checks an allowance opens only what it names.
func TestGuardAllows(t *testing.T) {
	r := newReceiver(t, "127.0.0.1:0", nil)
	byIP := "http://127.0.0.1:" + r.port(t) + "/hook"
	byName := "http://localhost:" + r.port(t) + "/hook"

	tests := []struct {
		name    string
		cfg     GuardConfig
		url     string
		wantErr error
	}{
		{"AllowPrivate", GuardConfig{AllowPrivate: true}, byIP, nil},
		{"AllowPrivate by name", GuardConfig{AllowPrivate: true}, byName, nil},
		{"address allowed", GuardConfig{AllowHosts: []string{"127.0.0.1"}}, byIP, nil},
		{"mapped form of the address allowed", GuardConfig{AllowHosts: []string{"::ffff:127.0.0.1"}}, byIP, nil},
		{"network allowed", GuardConfig{AllowHosts: []string{"127.0.0.0/8"}}, byIP, nil},
		{"name allowed", GuardConfig{AllowHosts: []string{"localhost"}}, byName, nil},
		{"address allowed, reached by name", GuardConfig{AllowHosts: []string{"127.0.0.1"}}, byName, nil},
		{"name allowed, reached by address", GuardConfig{AllowHosts: []string{"localhost"}}, byIP, ErrForbiddenAddress},
		{"another address allowed", GuardConfig{AllowHosts: []string{"127.0.0.2"}}, byIP, ErrForbiddenAddress},
		{"another network allowed", GuardConfig{AllowHosts: []string{"10.0.0.0/8", "192.168.0.0/16"}}, byIP, ErrForbiddenAddress},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t, tc.cfg)
			hits := r.hits.Load()
			resp, body, err := get(t.Context(), c, tc.url)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("error %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("error %v, want the receiver reached", err)
			}
			if resp.StatusCode != http.StatusOK || string(body) != "ok" || r.hits.Load()-hits != 1 {
				t.Errorf("got %d %q and %d hits, want 200 \"ok\" and one hit", resp.StatusCode, body, r.hits.Load()-hits)
			}
		})
	}
}

// TestGuardRefusesRedirects: a 3xx is returned as an error wrapping
// ErrRedirect, and the target it names is never asked.
func TestGuardRefusesRedirects(t *testing.T) {
	target := newReceiver(t, "127.0.0.1:0", nil)
	c := newClient(t, GuardConfig{AllowPrivate: true})
	for _, code := range []int{301, 302, 303, 307, 308} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			from := newReceiver(t, "127.0.0.1:0", func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, target.URL+"/elsewhere", code)
			})
			resp, _, err := get(t.Context(), c, from.URL+"/hook")
			if !errors.Is(err, ErrRedirect) {
				t.Fatalf("error %v, want ErrRedirect", err)
			}
			if resp == nil || resp.StatusCode != code {
				t.Errorf("response %v, want the %d itself", resp, code)
			}
			// Do has returned: had it followed, the target would have answered.
			if got := target.hits.Load(); got != 0 {
				t.Errorf("the redirect target got %d requests, want none", got)
			}
			if got := from.hits.Load(); got != 1 {
				t.Errorf("the receiver got %d requests, want 1", got)
			}
		})
	}
}

// TestGuardRefusesOtherSchemes: only http and https leave the gateway; the
// refusal comes before any dial.
func TestGuardRefusesOtherSchemes(t *testing.T) {
	r := newReceiver(t, "127.0.0.1:0", nil)
	c := newClient(t, GuardConfig{AllowPrivate: true})
	hostPort := r.Listener.Addr().String()
	for _, url := range []string{
		"ftp://" + hostPort + "/hook",
		"file:///etc/passwd",
		"gopher://" + hostPort + "/_GET",
		"ws://" + hostPort + "/hook",
		"http://user:secret@" + hostPort + "/hook",
	} {
		t.Run(url, func(t *testing.T) {
			_, _, err := get(t.Context(), c, url)
			if !errors.Is(err, ErrInvalidURL) {
				t.Fatalf("error %v, want ErrInvalidURL", err)
			}
			if got := r.conns.Load(); got != 0 {
				t.Errorf("the receiver accepted %d connections, want none", got)
			}
		})
	}
}

// TestGuardCapsResponseBody: a receiver that never stops writing costs the
// client MaxResponseBytes, whether the caller reads with io.ReadAll or with
// ReadLimited, and the receiver's handler ends once the client hangs up.
func TestGuardCapsResponseBody(t *testing.T) {
	const maxBody = 1000
	handlerDone := make(chan struct{}, 8)
	r := newReceiver(t, "127.0.0.1:0", func(w http.ResponseWriter, req *http.Request) {
		defer func() { handlerDone <- struct{}{} }()
		chunk := []byte(strings.Repeat("x", 32<<10))
		for req.Context().Err() == nil {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	c := newClient(t, GuardConfig{AllowPrivate: true, MaxResponseBytes: maxBody, Timeout: time.Minute})

	t.Run("io.ReadAll", func(t *testing.T) {
		_, body, err := get(t.Context(), c, r.URL)
		if err != nil {
			t.Fatal(err)
		}
		if len(body) != maxBody {
			t.Errorf("read %d bytes, want %d", len(body), maxBody)
		}
		<-handlerDone
	})
	t.Run("ReadLimited below the client's cap", func(t *testing.T) {
		resp, err := c.Post(r.URL, "application/json", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		body, err := ReadLimited(resp, 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(body) != 100 {
			t.Errorf("read %d bytes, want 100", len(body))
		}
		<-handlerDone
	})
	t.Run("ReadLimited above the client's cap", func(t *testing.T) {
		resp, err := c.Post(r.URL, "application/json", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		body, err := ReadLimited(resp, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		if len(body) != maxBody {
			t.Errorf("read %d bytes, want %d", len(body), maxBody)
		}
		<-handlerDone
	})
}

func TestReadLimitedShortBody(t *testing.T) {
	r := newReceiver(t, "127.0.0.1:0", nil)
	c := newClient(t, GuardConfig{AllowPrivate: true})
	resp, err := c.Post(r.URL, "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	body, err := ReadLimited(resp, 1<<10)
	if err != nil || string(body) != "ok" {
		t.Fatalf("ReadLimited = %q, %v, want \"ok\"", body, err)
	}
	if b, err := ReadLimited(nil, 10); b != nil || err != nil {
		t.Errorf("ReadLimited(nil) = %q, %v", b, err)
	}
}

// TestGuardTimeout: a receiver that hangs, before its headers or in the middle
// of its body, is cut at Timeout, and its handler sees the connection go.
func TestGuardTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	tests := []struct {
		name        string
		writeFirst  bool // send headers and part of the body, then hang
		errOnHeader bool
	}{
		{"before the headers", false, true},
		{"in the middle of the body", true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			gone := make(chan struct{})
			r := newReceiver(t, "127.0.0.1:0", func(w http.ResponseWriter, req *http.Request) {
				if tc.writeFirst {
					_, _ = io.WriteString(w, "partial")
					w.(http.Flusher).Flush()
				}
				<-req.Context().Done() // the client gave up and closed the connection
				close(gone)
			})
			c := newClient(t, GuardConfig{AllowPrivate: true, Timeout: timeout})
			start := time.Now()
			resp, body, err := get(t.Context(), c, r.URL)
			if err == nil {
				t.Fatalf("got %v %q, want a timeout", resp.Status, body)
			}
			if tc.errOnHeader != (resp == nil) {
				t.Errorf("response %v, error %v: failed at the wrong step", resp, err)
			}
			if netErr, ok := errors.AsType[net.Error](err); !ok || !netErr.Timeout() {
				t.Errorf("error %v, want a timeout", err)
			}
			if d := time.Since(start); d < timeout {
				t.Errorf("gave up after %s, before the timeout of %s", d, timeout)
			}
			<-gone
		})
	}
}

// TestGuardTLS: certificates are verified as usual (a test server's own
// certificate is refused), RootCAs adds a trusted root, and HTTP/2 is spoken
// when the receiver offers it.
func TestGuardTLS(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}))
	srv.EnableHTTP2 = true
	// The refused handshake is expected; keep its log line out of the output.
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)

	t.Run("unknown authority", func(t *testing.T) {
		c := newClient(t, GuardConfig{AllowPrivate: true})
		_, _, err := get(t.Context(), c, srv.URL)
		if _, ok := errors.AsType[*tls.CertificateVerificationError](err); !ok {
			t.Fatalf("error %v, want a certificate verification error", err)
		}
	})
	t.Run("trusted root", func(t *testing.T) {
		pool := x509.NewCertPool()
		pool.AddCert(srv.Certificate())
		c := newClient(t, GuardConfig{AllowPrivate: true, RootCAs: pool})
		resp, body, err := get(t.Context(), c, srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		if string(body) != "ok" || resp.ProtoMajor != 2 {
			t.Errorf("got %q over %s, want \"ok\" over HTTP/2", body, resp.Proto)
		}
	})
	t.Run("trusted root, loopback not allowed", func(t *testing.T) {
		pool := x509.NewCertPool()
		pool.AddCert(srv.Certificate())
		c := newClient(t, GuardConfig{RootCAs: pool})
		if _, _, err := get(t.Context(), c, srv.URL); !errors.Is(err, ErrForbiddenAddress) {
			t.Fatalf("error %v, want ErrForbiddenAddress", err)
		}
	})
}

func TestNewGuardedClientConfig(t *testing.T) {
	tests := []struct {
		name    string
		cfg     GuardConfig
		wantErr []string // fragments; nil: accepted
	}{
		{"zero value", GuardConfig{}, nil},
		{"names, addresses, networks", GuardConfig{AllowHosts: []string{"hooks.internal", "10.1.2.3", "[fd00::1]", "192.168.0.0/16", "fd00::/8", "Foo_Bar.example."}}, nil},
		{"negative timeout", GuardConfig{Timeout: -time.Second}, []string{"Timeout -1s"}},
		{"negative body bound", GuardConfig{MaxResponseBytes: -1}, []string{"MaxResponseBytes -1"}},
		{"URL in the allow list", GuardConfig{AllowHosts: []string{"http://hooks.internal"}}, []string{`AllowHosts[0] "http://hooks.internal"`}},
		{"host and port in the allow list", GuardConfig{AllowHosts: []string{"ok.internal", "hooks.internal:8080"}}, []string{"AllowHosts[1]"}},
		{"empty entry", GuardConfig{AllowHosts: []string{""}}, []string{"AllowHosts[0]"}},
		{"every problem at once", GuardConfig{Timeout: -1, MaxResponseBytes: -1, AllowHosts: []string{"a b"}}, []string{"Timeout", "MaxResponseBytes", "AllowHosts[0]"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewGuardedClient(tc.cfg)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("NewGuardedClient: %v", err)
				}
				c.CloseIdleConnections()
				return
			}
			if err == nil {
				t.Fatal("NewGuardedClient accepted the configuration")
			}
			for _, frag := range tc.wantErr {
				if !strings.Contains(err.Error(), frag) {
					t.Errorf("error %q does not mention %q", err, frag)
				}
			}
		})
	}
}

// TestNonPublic classifies addresses without dialing: the edges of each
// refused range and public addresses next to them.
func TestNonPublic(t *testing.T) {
	g, err := newGuard(GuardConfig{})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		addr    string
		private bool
	}{
		{"8.8.8.8", false},
		{"1.1.1.1", false},
		{"9.255.255.255", false},
		{"11.0.0.0", false},
		{"100.63.255.255", false},
		{"100.128.0.0", false},
		{"172.15.255.255", false},
		{"172.32.0.0", false},
		{"192.167.255.255", false},
		{"192.169.0.0", false},
		{"223.255.255.255", false},
		{"2606:4700:4700::1111", false},
		{"2a00:1450:4001::1", false},
		{"64:ff9b::808:808", false}, // NAT64 of 8.8.8.8
		{"::ffff:8.8.8.8", false},

		{"0.0.0.0", true},
		{"0.1.2.3", true},
		{"10.0.0.0", true},
		{"10.255.255.255", true},
		{"100.64.0.0", true},
		{"100.100.100.200", true},
		{"100.127.255.255", true},
		{"127.0.0.1", true},
		{"127.255.255.254", true},
		{"169.254.169.254", true},
		{"172.16.0.0", true},
		{"172.31.255.255", true},
		{"192.0.0.8", true},
		{"192.0.2.1", true},
		{"192.168.0.1", true},
		{"198.18.0.1", true},
		{"198.51.100.1", true},
		{"203.0.113.1", true},
		{"224.0.0.1", true},
		{"239.255.255.250", true},
		{"240.0.0.1", true},
		{"255.255.255.255", true},
		{"::", true},
		{"::1", true},
		{"::ffff:127.0.0.1", true},
		{"::ffff:169.254.169.254", true},
		{"::ffff:0.0.0.0", true},
		{"::127.0.0.1", true},        // IPv4-compatible, deprecated
		{"64:ff9b::7f00:1", true},    // NAT64 of 127.0.0.1
		{"64:ff9b::a9fe:a9fe", true}, // NAT64 of 169.254.169.254
		{"64:ff9b::a00:1", true},     // NAT64 of 10.0.0.1
		{"64:ff9b:1::1", true},
		{"100::1", true},
		{"2001::1", true},
		{"2001:db8::1", true},
		{"2002:7f00:1::1", true},
		{"3fff::1", true},
		{"fc00::1", true},
		{"fd12:3456::1", true},
		{"fe80::1", true},
		{"fe80::1%eth0", true},
		{"fec0::1", true},
		{"ff02::1", true},
		{"4000::1", true},
	}
	for _, tc := range tests {
		t.Run(tc.addr, func(t *testing.T) {
			why := g.nonPublic(netip.MustParseAddr(tc.addr))
			if got := why != ""; got != tc.private {
				t.Errorf("nonPublic(%s) = %q, want refused: %v", tc.addr, why, tc.private)
			}
		})
	}
}

// TestControlRefusesOtherNetworks: the dial hook refuses anything but TCP, so a
// future change that dials UDP through it fails closed.
func TestControlRefusesOtherNetworks(t *testing.T) {
	g, err := newGuard(GuardConfig{AllowPrivate: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, network := range []string{"udp4", "udp6", "unix"} {
		if err := g.control(t.Context(), network, "8.8.8.8:53", nil); !errors.Is(err, ErrForbiddenAddress) {
			t.Errorf("control(%s) = %v, want ErrForbiddenAddress", network, err)
		}
	}
	if err := g.control(t.Context(), "tcp4", "127.0.0.1:80", nil); err != nil {
		t.Errorf("control with AllowPrivate = %v", err)
	}
}

func TestCheckURL(t *testing.T) {
	long := "https://example.com/" + strings.Repeat("a", MaxURLBytes-len("https://example.com/"))
	tests := []struct {
		url     string
		wantErr string // "": accepted; else a fragment of the error
	}{
		{"https://example.com/hook", ""},
		{"http://example.com:8080/a/b?c=d&e=f", ""},
		{"HTTPS://Example.COM/hook", ""},
		{"https://[2001:db8::1]:8443/hook", ""},
		{"http://127.0.0.1/hook", ""}, // the address is the dialer's business
		{"https://example.com/webhooks/runcomfyx/a", ""},

		{"https://gw.example.com/webhooks/runcomfy/dep-1/token", "callback URL"},
		{"https://gw.example.com/prefix/WEBHOOKS/RunComfy/dep-1/token", "callback URL"},
		{"https://gw.example.com/a/../webhooks/runcomfy/dep-1", "callback URL"},
		{"https://gw.example.com/webhooks//runcomfy/dep-1", "callback URL"},
		{"https://gw.example.com/webhooks/runcomfy", "callback URL"},
		{"https://example.com", ""},
		{long, ""},

		{"", "empty"},
		{long + "a", fmt.Sprintf("%d bytes, at most %d", MaxURLBytes+1, MaxURLBytes)},
		{"example.com/hook", "not absolute"},
		{"/hook", "not absolute"},
		{"//example.com/hook", "not absolute"},
		{"ftp://example.com/hook", `scheme "ftp"`},
		{"file:///etc/passwd", `scheme "file"`},
		{"javascript:alert(1)", `scheme "javascript"`},
		{"http:example.com/hook", "not followed by //host"},
		{"https://", "no host"},
		{"https:///hook", "no host"},
		{"http://:8080/hook", "no host"},
		{"http://user:pass@example.com/hook", "user information"},
		{"http://user@example.com/hook", "user information"},
		{"https://example.com/hook#part", "fragment"},
		{"https://example.com/hook#", "fragment"},
		{"http://example.com:0/hook", "port 0"},
		{"http://example.com:65536/hook", "port 65536"},
		{"http://example.com:http/hook", "invalid port"},
		{"http://exa mple.com/hook", "invalid character"},
		{"http://example.com/\x00", "control character"},
		{"http://[::1/hook", "missing ']'"},
	}
	for _, tc := range tests {
		name := tc.url
		if len(name) > 40 {
			name = name[:40] + "..."
		}
		t.Run(name, func(t *testing.T) {
			err := CheckURL(tc.url)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("CheckURL: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidURL) {
				t.Fatalf("error %v, want ErrInvalidURL", err)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q, want it to say %q", err, tc.wantErr)
			}
		})
	}
}
