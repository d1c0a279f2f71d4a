package hooks

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"path"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Defaults and bounds of the guarded client.
const (
	// DefaultTimeout bounds one delivery attempt when GuardConfig gives none. A
	// receiver that needs longer should answer first and work afterwards.
	DefaultTimeout = 10 * time.Second
	// DefaultMaxResponseBytes is how much of a receiver's answer is read when
	// GuardConfig gives no bound: enough for an error message worth showing
	// the tenant, and not a way for a receiver to cost the gateway memory.
	DefaultMaxResponseBytes = 64 << 10
	// MaxURLBytes bounds a webhook URL, the common limit of browsers and
	// servers; a longer one is a mistake or an attempt to store data with us.
	MaxURLBytes = 2048
)

// drainBytes is how much of an unread response body is discarded before it is
// closed: a short remainder is read so the connection can be reused, a long one
// is cut by closing the connection rather than reading it all.
const drainBytes = 4 << 10

// ErrForbiddenAddress is wrapped in the dial error when the address being
// connected to is not public (loopback, private, link-local, metadata, ...) and
// not allowed by GuardConfig, so errors.Is works on the client's error.
var ErrForbiddenAddress = errors.New("address forbidden for webhooks")

// ErrRedirect is wrapped in the client's error when a receiver answers with a
// redirect. Redirects are not followed: a URL that passed the guard could
// otherwise send the gateway anywhere, and the specification asks the sender to
// treat a 3xx as a failure and the tenant to fix the URL. With this error
// http.Client.Do also returns the 3xx response, its body already closed.
var ErrRedirect = errors.New("webhook receiver answered with a redirect, which is not followed")

// ErrInvalidURL is wrapped by every error of CheckURL, and by the guarded
// client's error for a request whose URL it would refuse.
var ErrInvalidURL = errors.New("invalid webhook URL")

// GuardConfig configures NewGuardedClient. The zero value is the safe setting:
// only public addresses, the default timeout and response bound.
type GuardConfig struct {
	// AllowHosts lists host names (exact, case-insensitive, matched against the
	// URL's host before it is resolved), IP addresses and CIDRs (matched against
	// the address actually dialed) that may be reached even when private or
	// loopback: an operator's own receivers inside its network.
	AllowHosts []string
	// AllowPrivate allows every non-public address. Tests with loopback
	// receivers use it; a production gateway should not.
	AllowPrivate bool
	// Timeout bounds one attempt, from connecting to the last byte of the
	// response body. Zero means DefaultTimeout.
	Timeout time.Duration
	// MaxResponseBytes is how much of a response body can be read; reads stop
	// there and the rest is discarded. Zero means DefaultMaxResponseBytes.
	MaxResponseBytes int64
	// Resolver resolves host names; nil means the system's. Tests give one
	// backed by their own DNS server to show the check is on the resolved
	// address, not on the name.
	Resolver *net.Resolver
	// RootCAs verifies receivers' certificates; nil means the system roots.
	// Verification is never turned off: this only adds a private PKI (or a
	// test server's certificate).
	RootCAs *x509.CertPool
}

// NewGuardedClient returns an HTTP client that is safe to point at any URL a
// tenant can type: it connects only to public addresses (or those cfg allows),
// checked when dialing on the address actually connected to, so that a name
// which resolves differently later (DNS rebinding) cannot reach the gateway's
// own network. It uses no proxy from the environment, follows no redirect,
// speaks only http and https, bounds each attempt by cfg.Timeout and lets at
// most cfg.MaxResponseBytes of a response body be read. It reports every
// problem of cfg at once.
func NewGuardedClient(cfg GuardConfig) (*http.Client, error) {
	g, err := newGuard(cfg)
	if err != nil {
		return nil, err
	}
	timeout := cfg.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	maxBody := cfg.MaxResponseBytes
	if maxBody == 0 {
		maxBody = DefaultMaxResponseBytes
	}

	guarded := &net.Dialer{Timeout: timeout, Resolver: cfg.Resolver, ControlContext: g.control}
	trusted := &net.Dialer{Timeout: timeout, Resolver: cfg.Resolver}
	tr := &http.Transport{
		// No proxy: one taken from the environment would do the dialing
		// itself, past the check.
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			// Without a proxy addr is the URL's host and port, seen here
			// before resolution: the only place a name can be matched.
			host, _, err := net.SplitHostPort(addr)
			if err == nil && g.allowName(host) {
				return trusted.DialContext(ctx, network, addr)
			}
			return guarded.DialContext(ctx, network, addr)
		},
		TLSClientConfig:        &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: cfg.RootCAs},
		ForceAttemptHTTP2:      true, // a custom DialContext turns HTTP/2 off unless asked
		TLSHandshakeTimeout:    timeout,
		ResponseHeaderTimeout:  timeout,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: 64 << 10,
		MaxIdleConns:           100,
		IdleConnTimeout:        90 * time.Second,
	}
	return &http.Client{
		Transport: &guardTransport{base: tr, maxBody: maxBody},
		CheckRedirect: func(req *http.Request, _ []*http.Request) error {
			return fmt.Errorf("%w (to %s)", ErrRedirect, req.URL.Redacted())
		},
		Timeout: timeout,
	}, nil
}

// CheckURL validates a webhook URL when a tenant submits it, so that a typo is
// refused then and not at the first delivery: an absolute http or https URL with
// a host, no user information (user:pass@, which would be sent to the receiver
// in clear), at most MaxURLBytes, no fragment (never sent, so a sign of a
// mistake). Whether the host's addresses are allowed is decided when dialing,
// since they can change after this check.
func CheckURL(raw string) error {
	if raw == "" {
		return fmt.Errorf("%w: empty", ErrInvalidURL)
	}
	if len(raw) > MaxURLBytes {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrInvalidURL, len(raw), MaxURLBytes)
	}
	// Checked on the text: url.Parse drops an empty fragment ("...#").
	if strings.Contains(raw, "#") {
		return fmt.Errorf("%w: has a fragment (#...), which is never sent to the receiver", ErrInvalidURL)
	}
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error repeats the whole URL; the reason is enough.
		if ue, ok := errors.AsType[*url.Error](err); ok {
			err = ue.Err
		}
		return fmt.Errorf("%w: %w", ErrInvalidURL, err)
	}
	if err := checkParsed(u); err != nil {
		return err
	}
	if IsCallbackURL(u) {
		return fmt.Errorf("%w: is a comfygate's own RunComfy callback URL (its path is under %s)", ErrInvalidURL, callbackPath)
	}
	return nil
}

// callbackPath is where a comfygate takes RunComfy's callbacks
// (webhook.PathPrefix).
const callbackPath = "/webhooks/runcomfy/"

// IsCallbackURL reports whether u points at a comfygate's RunComfy callbacks,
// this gateway's or another's, whatever its host: the gateway may be reached
// by names it does not know, and an event fed back as a callback would be
// refused there and retried for a day. The path is compared cleaned and in
// any case, as servers may read it.
func IsCallbackURL(u *url.URL) bool {
	p := strings.ToLower(path.Clean("/" + u.Path))
	return strings.Contains(p+"/", callbackPath)
}

// checkParsed holds the checks of CheckURL that a parsed URL still allows; the
// guarded client applies them to every request too.
func checkParsed(u *url.URL) error {
	switch u.Scheme {
	case "http", "https":
	case "":
		return fmt.Errorf("%w: not absolute (no http:// or https://)", ErrInvalidURL)
	default:
		return fmt.Errorf("%w: scheme %q is not http or https", ErrInvalidURL, u.Scheme)
	}
	if u.Opaque != "" {
		return fmt.Errorf("%w: %s: is not followed by //host", ErrInvalidURL, u.Scheme)
	}
	if u.User != nil {
		return fmt.Errorf("%w: has user information (user:password@ before the host)", ErrInvalidURL)
	}
	if u.Hostname() == "" {
		return fmt.Errorf("%w: no host", ErrInvalidURL)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("%w: port %s is not between 1 and 65535", ErrInvalidURL, p)
		}
	}
	if u.Fragment != "" {
		return fmt.Errorf("%w: has a fragment (#...), which is never sent to the receiver", ErrInvalidURL)
	}
	if n := len(u.String()); n > MaxURLBytes {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrInvalidURL, n, MaxURLBytes)
	}
	return nil
}

// ReadLimited reads at most max bytes of resp's body, discards a little more so
// the connection can be reused, and closes the body whatever happens. A longer
// body is cut without an error: a receiver's answer is kept for diagnosis only.
// The read is bounded in time by the client's Timeout.
func ReadLimited(resp *http.Response, max int64) ([]byte, error) {
	if resp == nil || resp.Body == nil {
		return nil, nil
	}
	defer closeDrained(resp.Body)
	b, err := io.ReadAll(io.LimitReader(resp.Body, max))
	if err != nil {
		return b, fmt.Errorf("reading the webhook response: %w", err)
	}
	return b, nil
}

// closeDrained discards up to drainBytes of rc and closes it. The close error
// is dropped: the caller has what it read, and a failed close only costs the
// connection, which is what closing early does anyway.
func closeDrained(rc io.ReadCloser) {
	_, _ = io.CopyN(io.Discard, rc, drainBytes)
	_ = rc.Close()
}

// guardTransport refuses URLs CheckURL would refuse (above all a scheme other
// than http and https) and caps every response body.
type guardTransport struct {
	base    *http.Transport
	maxBody int64
}

// RoundTrip implements http.RoundTripper.
func (t *guardTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := checkParsed(req.URL); err != nil {
		// A RoundTripper closes the request body, even when it fails.
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, err
	}
	resp, err := t.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	resp.Body = &limitedBody{rc: resp.Body, left: t.maxBody}
	return resp, nil
}

// CloseIdleConnections lets http.Client.CloseIdleConnections reach the
// transport, so tests and shutdowns leave no connection behind.
func (t *guardTransport) CloseIdleConnections() { t.base.CloseIdleConnections() }

// limitedBody ends a response body with io.EOF after its bound, whatever the
// caller reads with, and drains a little before closing.
type limitedBody struct {
	rc   io.ReadCloser
	left int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *limitedBody) Close() error {
	_, _ = io.CopyN(io.Discard, b.rc, drainBytes)
	return b.rc.Close()
}

// guard decides which addresses may be dialed.
type guard struct {
	allowPrivate bool
	allowNames   map[string]bool
	allowNets    []netip.Prefix
	// blocked names the non-public ranges, so a refusal says which one.
	blocked []namedPrefix
	nat64   netip.Prefix
	global6 netip.Prefix
}

type namedPrefix struct {
	prefix netip.Prefix
	name   string
}

func newGuard(cfg GuardConfig) (*guard, error) {
	var errs []error
	if cfg.Timeout < 0 {
		errs = append(errs, fmt.Errorf("GuardConfig.Timeout %s is negative", cfg.Timeout))
	}
	if cfg.MaxResponseBytes < 0 {
		errs = append(errs, fmt.Errorf("GuardConfig.MaxResponseBytes %d is negative", cfg.MaxResponseBytes))
	}
	g := &guard{
		allowPrivate: cfg.AllowPrivate,
		allowNames:   map[string]bool{},
		blocked:      nonPublicRanges(),
		nat64:        netip.MustParsePrefix("64:ff9b::/96"),
		global6:      netip.MustParsePrefix("2000::/3"),
	}
	for i, entry := range cfg.AllowHosts {
		if p, err := netip.ParsePrefix(entry); err == nil {
			g.allowNets = append(g.allowNets, unmapPrefix(p.Masked()))
			continue
		}
		if a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(entry, "["), "]")); err == nil {
			a = a.WithZone("").Unmap()
			g.allowNets = append(g.allowNets, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		name := strings.TrimSuffix(strings.ToLower(entry), ".")
		if !isHostName(name) {
			errs = append(errs, fmt.Errorf("GuardConfig.AllowHosts[%d] %q is not a host name, an IP address or a CIDR", i, entry))
			continue
		}
		g.allowNames[name] = true
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("webhook client configuration: %w", errors.Join(errs...))
	}
	return g, nil
}

// allowName reports whether the URL's host is an allowed name.
func (g *guard) allowName(host string) bool {
	return len(g.allowNames) > 0 && g.allowNames[strings.TrimSuffix(strings.ToLower(host), ".")]
}

// control runs after the name is resolved and before connect(2), on the address
// about to be connected to: the one place no later DNS answer can change.
func (g *guard) control(_ context.Context, network, address string, _ syscall.RawConn) error {
	if network != "tcp4" && network != "tcp6" {
		return fmt.Errorf("%w: network %s", ErrForbiddenAddress, network)
	}
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: unreadable address: %w", ErrForbiddenAddress, err)
	}
	ip := ap.Addr().WithZone("").Unmap()
	if g.allowPrivate {
		return nil
	}
	for _, p := range g.allowNets {
		if p.Contains(ip) {
			return nil
		}
	}
	if why := g.nonPublic(ip); why != "" {
		return fmt.Errorf("%w: %s is %s", ErrForbiddenAddress, ip, why)
	}
	return nil
}

// nonPublic says why ip is not a public unicast address, or "" if it is.
func (g *guard) nonPublic(ip netip.Addr) string {
	ip = ip.WithZone("").Unmap() // ::ffff:127.0.0.1 is 127.0.0.1
	for _, b := range g.blocked {
		if b.prefix.Contains(ip) {
			return b.name + " (" + b.prefix.String() + ")"
		}
	}
	if ip.Is6() {
		if g.nat64.Contains(ip) {
			// The NAT64 gateway connects to the embedded IPv4 address.
			a := ip.As16()
			v4 := netip.AddrFrom4([4]byte(a[12:]))
			if why := g.nonPublic(v4); why != "" {
				return "NAT64 of " + v4.String() + ", " + why
			}
			return ""
		}
		if !g.global6.Contains(ip) {
			return "outside IPv6 global unicast (2000::/3)"
		}
	}
	return ""
}

// nonPublicRanges lists the ranges no tenant's receiver can be in, from the
// IANA special-purpose registries, each with what it is.
func nonPublicRanges() []namedPrefix {
	ranges := []struct{ cidr, name string }{
		{"0.0.0.0/8", "unspecified (this network)"},
		{"10.0.0.0/8", "private"},
		{"100.64.0.0/10", "shared address space (carrier-grade NAT, cloud metadata)"},
		{"127.0.0.0/8", "loopback"},
		{"169.254.0.0/16", "link-local (cloud metadata)"},
		{"172.16.0.0/12", "private"},
		{"192.0.0.0/24", "IETF protocol assignments"},
		{"192.0.2.0/24", "documentation"},
		{"192.88.99.0/24", "6to4 relay anycast"},
		{"192.168.0.0/16", "private"},
		{"198.18.0.0/15", "benchmarking"},
		{"198.51.100.0/24", "documentation"},
		{"203.0.113.0/24", "documentation"},
		{"224.0.0.0/4", "multicast"},
		{"255.255.255.255/32", "broadcast"},
		{"240.0.0.0/4", "reserved"},
		{"::/128", "unspecified"},
		{"::1/128", "loopback"},
		{"64:ff9b:1::/48", "local-use NAT64"},
		{"100::/64", "discard-only"},
		{"2001::/23", "IETF protocol assignments (Teredo, benchmarking)"},
		{"2001:db8::/32", "documentation"},
		{"2002::/16", "6to4 (embeds an IPv4 address)"},
		{"3fff::/20", "documentation"},
		{"fc00::/7", "unique local (private)"},
		{"fe80::/10", "link-local"},
		{"ff00::/8", "multicast"},
	}
	out := make([]namedPrefix, len(ranges))
	for i, r := range ranges {
		out[i] = namedPrefix{prefix: netip.MustParsePrefix(r.cidr), name: r.name}
	}
	return out
}

// unmapPrefix turns ::ffff:a.b.c.d/n into a.b.c.d/(n-96), since dialed addresses
// are compared unmapped.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	if p.Addr().Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p
}

// isHostName reports whether s is a plausible DNS name: dot-separated labels of
// letters, digits, '-' and '_', none empty, 253 bytes at most.
func isHostName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}
