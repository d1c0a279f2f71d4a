package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
)

// Errors callers tell apart with errors.Is.
var (
	// ErrNotFound: no object has the key.
	ErrNotFound = errors.New("object not found")
	// ErrTooLarge: Put received more bytes than its limit allowed.
	ErrTooLarge = errors.New("object too large")
	// ErrSizeMismatch: Put's source yielded another number of bytes than
	// the size it was given.
	ErrSizeMismatch = errors.New("source size differs from the size declared")
	// ErrUnsupported: the server does not implement the operation (such as
	// lifecycle rules on a gateway that has none); the caller falls back
	// (for expiry, to DeleteOlderThan).
	ErrUnsupported = errors.New("not supported by the object store")
)

const (
	// metaSHA256 is the user metadata (x-amz-meta-sha256) holding the hex
	// SHA-256 of the content, so that Stat can report it without reading
	// the object and a copy can be checked against its source.
	metaSHA256 = "sha256"

	// opTimeout bounds the calls whose duration does not depend on an
	// object's size (stat, delete, lifecycle), including the client's
	// retries, when the caller's context allows longer.
	opTimeout = 30 * time.Second
	// checkTimeout bounds Check, which runs at start-up.
	checkTimeout = 10 * time.Second
	// maxPresign is the longest lifetime SigV4 allows a presigned URL.
	maxPresign = 7 * 24 * time.Hour
)

// Object describes a stored object.
type Object struct {
	// Key is the object's full key in the bucket (prefix included).
	Key  string
	Size int64
	// ContentType is what the object is served with.
	ContentType string
	// SHA256 is the hex SHA-256 of the content, as Put computed it while
	// streaming; "" for an object Put did not write.
	SHA256 string
	// ETag is the server's entity tag (not a content hash for multipart
	// objects).
	ETag string
	// LastModified is when the server stored the object.
	LastModified time.Time
}

// Store is a bucket and a key prefix in an S3-compatible object store. Its
// methods are safe for concurrent use. Keys passed to it must be under its
// prefix (as Key makes them): a store never touches the rest of a bucket it
// may share with others.
type Store struct {
	cfg    Config
	client *minio.Client
	// probe is client without retries, so that Check reports a store that
	// is down at once rather than after the client's ten backed-off tries.
	probe     *minio.Client
	transport *http.Transport
}

// New returns a store for cfg. It finds the credentials (and fails when
// there are none) but does not contact the server: call Check for that.
func New(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Getenv == nil {
		return nil, errors.New("storage: Config.Getenv is nil (pass os.Getenv)")
	}
	if cfg.Bucket == "" || cfg.Endpoint == "" || cfg.Region == "" {
		return nil, errors.New("storage: Config needs Bucket, Endpoint and Region (use ParseURL)")
	}
	if _, err := cleanPrefix(cfg.Prefix); err != nil || strings.Trim(cfg.Prefix, "/") != cfg.Prefix {
		return nil, fmt.Errorf("storage: prefix %q is not a clean key prefix", cfg.Prefix)
	}
	creds, err := cfg.credentials()
	if err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	tr, err := minio.DefaultTransport(cfg.Secure)
	if err != nil {
		return nil, fmt.Errorf("storage: transport: %w", err)
	}
	lookup := minio.BucketLookupDNS
	if cfg.PathStyle {
		lookup = minio.BucketLookupPath
	}
	opts := minio.Options{
		Creds:        creds,
		Secure:       cfg.Secure,
		Transport:    tr,
		Region:       cfg.Region, // set, so the client never asks the server for the bucket's location
		BucketLookup: lookup,
	}
	client, err := minio.New(cfg.Endpoint, &opts)
	if err != nil {
		return nil, fmt.Errorf("storage: client for %s: %w", cfg.Endpoint, err)
	}
	opts.MaxRetries = 1
	probe, err := minio.New(cfg.Endpoint, &opts)
	if err != nil {
		return nil, fmt.Errorf("storage: client for %s: %w", cfg.Endpoint, err)
	}
	return &Store{cfg: cfg, client: client, probe: probe, transport: tr}, nil
}

// Close releases the store's idle connections. Calls in flight are not
// affected; the store must not be used afterwards.
func (s *Store) Close() {
	s.transport.CloseIdleConnections()
}

// Config returns the configuration the store was made with.
func (s *Store) Config() Config { return s.cfg }

// Check asks the server whether the bucket exists and the credentials are
// accepted, within a few seconds: start-up reports a wrong URL, key or
// bucket at once instead of at the first upload.
func (s *Store) Check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	ok, err := s.probe.BucketExists(ctx, s.cfg.Bucket)
	if err != nil {
		return fmt.Errorf("storage: bucket %s at %s: %w", s.cfg.Bucket, s.cfg.Endpoint, err)
	}
	if !ok {
		return fmt.Errorf("storage: bucket %s does not exist at %s", s.cfg.Bucket, s.cfg.Endpoint)
	}
	return nil
}

// Key joins parts into a key under the store's prefix. Each part is escaped
// so that it is one non-empty path segment of safe characters whatever it
// holds: every byte but A-Z a-z 0-9 - _ . becomes %XX (so "/" cannot add a
// level and the key is the same on every server and file system), "." and
// ".." become %2E and %2E%2E, and an empty part becomes "%". Distinct parts
// give distinct keys, so ids from clients can go in unchecked. Key() with no
// parts is the prefix itself, the form DeleteOlderThan and SetExpiry take.
func (s *Store) Key(parts ...string) string {
	var b strings.Builder
	b.WriteString(s.cfg.Prefix)
	for _, p := range parts {
		if b.Len() > 0 {
			b.WriteByte('/')
		}
		escapePart(&b, p)
	}
	return b.String()
}

func escapePart(b *strings.Builder, p string) {
	switch p {
	case "":
		b.WriteByte('%')
		return
	case ".":
		b.WriteString("%2E")
		return
	case "..":
		b.WriteString("%2E%2E")
		return
	}
	const hexDigits = "0123456789ABCDEF"
	for i := 0; i < len(p); i++ {
		c := p[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&15])
	}
}

// checkKey refuses a key that is not an object key under the prefix.
func (s *Store) checkKey(key string) error {
	rel, ok := s.relative(key)
	if !ok || rel == "" {
		return fmt.Errorf("storage: key %q is not an object key under prefix %q", key, s.cfg.Prefix)
	}
	for _, seg := range strings.Split(rel, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("storage: key %q has an empty, . or .. segment", key)
		}
	}
	return nil
}

// relative returns key without the store's prefix and reports whether key
// is the prefix or under it.
func (s *Store) relative(key string) (string, bool) {
	if s.cfg.Prefix == "" {
		return key, !strings.HasPrefix(key, "/")
	}
	if key == s.cfg.Prefix {
		return "", true
	}
	rel, ok := strings.CutPrefix(key, s.cfg.Prefix+"/")
	return rel, ok
}

// Presign returns a URL that fetches the object with a plain GET for
// lifetime (1s to 7 days, SigV4's limits). With a public base configured it
// returns the public URL instead, which does not expire. No request is made.
func (s *Store) Presign(ctx context.Context, key string, lifetime time.Duration) (string, error) {
	if err := s.checkKey(key); err != nil {
		return "", err
	}
	if s.cfg.PublicBase != nil {
		return s.publicURL(key), nil
	}
	return s.Sign(ctx, key, lifetime)
}

// Sign returns a presigned GET URL of the object on the store's own
// endpoint, for lifetime (1s to 7 days), even with a public base: for
// objects that must not be public. No request is made.
func (s *Store) Sign(ctx context.Context, key string, lifetime time.Duration) (string, error) {
	if err := s.checkKey(key); err != nil {
		return "", err
	}
	if lifetime < time.Second || lifetime > maxPresign {
		return "", fmt.Errorf("storage: presign %s: lifetime %v outside 1s..%v", key, lifetime, maxPresign)
	}
	u, err := s.client.PresignedGetObject(ctx, s.cfg.Bucket, key, lifetime, nil)
	if err != nil {
		return "", fmt.Errorf("storage: presign %s: %w", key, err)
	}
	return u.String(), nil
}

// publicURL is PublicBase followed by the key's segments below the prefix,
// each escaped: a key holds literal "%" (from Key's escaping), which a URL
// must carry as %25.
func (s *Store) publicURL(key string) string {
	rel, _ := s.relative(key)
	segs := strings.Split(rel, "/")
	for i, seg := range segs {
		segs[i] = url.PathEscape(seg)
	}
	return s.cfg.PublicBase.String() + "/" + strings.Join(segs, "/")
}

// Stat describes the object key; ErrNotFound when there is none.
func (s *Store) Stat(ctx context.Context, key string) (Object, error) {
	if err := s.checkKey(key); err != nil {
		return Object{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	info, err := s.client.StatObject(ctx, s.cfg.Bucket, key, minio.StatObjectOptions{})
	if err != nil {
		return Object{}, s.objectError("stat", key, err)
	}
	return toObject(info), nil
}

// Get opens the object key for reading; ErrNotFound when there is none. The
// caller closes the reader. ctx bounds the whole read, not just the call.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, Object, error) {
	if err := s.checkKey(key); err != nil {
		return nil, Object{}, err
	}
	obj, err := s.client.GetObject(ctx, s.cfg.Bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return nil, Object{}, s.objectError("get", key, err)
	}
	// GetObject is lazy: Stat sends the request and waits for the headers,
	// so a missing key is reported here rather than on the first Read.
	info, err := obj.Stat()
	if err != nil {
		obj.Close()
		return nil, Object{}, s.objectError("get", key, err)
	}
	return obj, toObject(info), nil
}

// Delete removes the object key. Deleting a missing key is not an error (S3
// answers both alike), so a retried delete succeeds.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := s.checkKey(key); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	if err := s.client.RemoveObject(ctx, s.cfg.Bucket, key, minio.RemoveObjectOptions{}); err != nil {
		return s.objectError("delete", key, err)
	}
	return nil
}

// objectError wraps a client error, as ErrNotFound when the key is missing.
func (s *Store) objectError(op, key string, err error) error {
	if isCode(err, minio.NoSuchKey) {
		return fmt.Errorf("storage: %s %s: %w", op, key, ErrNotFound)
	}
	return fmt.Errorf("storage: %s %s: %w", op, key, err)
}

// isCode reports whether err is an S3 error response with one of codes.
func isCode(err error, codes ...string) bool {
	var resp minio.ErrorResponse
	if !errors.As(err, &resp) {
		return false
	}
	for _, c := range codes {
		if resp.Code == c {
			return true
		}
	}
	return false
}

// isUnsupported reports whether err says the server does not implement the
// request at all (as opposed to refusing this caller).
func isUnsupported(err error) bool {
	var resp minio.ErrorResponse
	if !errors.As(err, &resp) {
		return false
	}
	return resp.StatusCode == http.StatusNotImplemented || resp.StatusCode == http.StatusMethodNotAllowed ||
		resp.Code == "NotImplemented" || resp.Code == "XNotImplemented" || resp.Code == "MethodNotAllowed"
}

func toObject(info minio.ObjectInfo) Object {
	o := Object{
		Key:          info.Key,
		Size:         info.Size,
		ContentType:  info.ContentType,
		ETag:         info.ETag,
		LastModified: info.LastModified,
	}
	for k, v := range info.UserMetadata {
		if strings.EqualFold(k, metaSHA256) || strings.EqualFold(k, "X-Amz-Meta-"+metaSHA256) {
			o.SHA256 = v
		}
	}
	return o
}
