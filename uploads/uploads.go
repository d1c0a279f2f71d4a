// Package uploads keeps the files a tenant uploads for its jobs' inputs in
// the object store, and turns the references to them in a submit's input
// into what RunComfy can fetch.
//
// RunComfy takes media inputs only as URLs it can fetch or as base64 data:
// URIs inside the submit body. A team whose images live on laptops or in
// private storage would otherwise have to publish them somewhere first, or
// push tens of megabytes of base64 through every submit (and every retry).
// An upload is stored once, under the tenant's own key prefix, and named in
// any number of submits by a short reference.
//
// Nothing about an upload is kept outside the store: its tenant is part of
// its key, so a reference from another tenant names an object that does not
// exist, and its age is the object's; every replica sees the same uploads
// without sharing any state.
package uploads

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/comfygate/comfygate/storage"
)

// Errors callers tell apart with errors.Is; each message is meant for the
// uploader.
var (
	// ErrTooLarge: the file is over the size limit.
	ErrTooLarge = errors.New("upload larger than the limit")
	// ErrType: the content type is not taken, or the bytes are of another
	// kind (a *TypeError says which).
	ErrType = errors.New("content type not accepted")
	// ErrNotFound: a reference names no upload of the caller's: it never
	// existed, it expired, or it is another tenant's (the three are
	// answered alike, so that a reference tells nothing of other tenants).
	ErrNotFound = errors.New("no such upload")
	// ErrBadReference: a string that begins like a reference is not one.
	ErrBadReference = errors.New("malformed upload reference")
	// ErrStore: the object store failed; the gateway's log says how (the
	// uploader is not told about the store's insides).
	ErrStore = errors.New("the object store could not be reached; retry later")
	// ErrBusy: the tenant has as many uploads in progress as it may.
	ErrBusy = errors.New("too many uploads in progress for this tenant; retry when one has finished")
	// ErrSizeMismatch: the file's bytes did not add up to the size its
	// uploader declared.
	ErrSizeMismatch = errors.New("the upload's bytes did not match its declared size")
	// ErrEmpty: an upload with no bytes.
	ErrEmpty = errors.New("the upload is empty")
)

// Scheme begins every reference: "comfygate://uploads/<id>".
const Scheme = "comfygate://uploads/"

// dir is the key segment, below the store's prefix, that holds every
// upload: prefix/.uploads/<tenant>/<id>. Outputs are kept under
// prefix/<tenant>/..., and a tenant's name cannot begin with a dot, so the
// two never meet, and the sweep of expired uploads touches no output.
const dir = ".uploads"

// Defaults of Config.
const (
	DefaultMaxBytes  = 100 << 20
	DefaultLifetime  = 24 * time.Hour
	DefaultPerTenant = 8
	// defaultMemory bounds the bytes the uploads in progress hold at once
	// (each holds up to a few parts of the store's multipart upload).
	defaultMemory = 256 << 20
	// partMemory is what one upload of unknown or large size holds, as
	// measured (RSS over concurrent 100 MiB uploads): the store's first
	// part buffer, the parts in flight, the client's buffers and the
	// stream's window, about 43 MiB.
	partMemory = 48 << 20
	// maxRefs bounds the references in one input (each occurrence, so
	// that a body of repeated references cannot grow many times over on
	// its way to RunComfy), and so the store round trips a submit makes
	// before RunComfy is called.
	maxRefs = 64
)

// DefaultTypes are the media types taken when Config.Types is empty:
// what ComfyUI workflows load.
var DefaultTypes = []string{"image/*", "video/*", "audio/*"}

// Store is what uploads needs of the object store; *storage.Store has it.
type Store interface {
	Key(parts ...string) string
	Put(ctx context.Context, key string, r io.Reader, size int64, contentType string, maxBytes int64) (storage.Object, error)
	Stat(ctx context.Context, key string) (storage.Object, error)
	Get(ctx context.Context, key string) (io.ReadCloser, storage.Object, error)
	Sign(ctx context.Context, key string, lifetime time.Duration) (string, error)
	DeleteOlderThan(ctx context.Context, dir string, before time.Time) (int, error)
}

// Config configures Uploads.
type Config struct {
	Store Store
	// Lifetime is how long an upload can be referred to after it was
	// stored; then it is refused, and deleted by Sweep. Default
	// DefaultLifetime.
	Lifetime time.Duration
	// MaxBytes bounds one upload; default DefaultMaxBytes.
	MaxBytes int64
	// InlineMaxBytes: an upload of at most this many bytes is put into the
	// input as a data: URI rather than a presigned URL, for a store
	// RunComfy cannot reach. 0 never inlines.
	InlineMaxBytes int64
	// Types are the media types taken, exact ("image/png") or by family
	// ("image/*"); default DefaultTypes.
	Types []string
	// PerTenant bounds one tenant's uploads in progress at once; default
	// DefaultPerTenant.
	PerTenant int
	Logger    *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Upload is a stored upload.
type Upload struct {
	ID          string
	ContentType string
	Size        int64
	// SHA256 is the hex SHA-256 of the stored bytes.
	SHA256    string
	CreatedAt time.Time
	ExpiresAt time.Time
}

// Reference is what an input names the upload by.
func (u Upload) Reference() string { return Scheme + u.ID }

// Uploads stores uploads and resolves references to them. Its methods are
// safe for concurrent use.
type Uploads struct {
	cfg    Config
	memory *semaphore.Weighted

	mu     sync.Mutex
	active map[string]int // uploads in progress by tenant
}

// New checks cfg and returns the uploads.
func New(cfg Config) (*Uploads, error) {
	if cfg.Store == nil {
		return nil, errors.New("uploads: a store is required")
	}
	if cfg.Logger == nil {
		return nil, errors.New("uploads: a logger is required")
	}
	if cfg.Lifetime <= 0 {
		cfg.Lifetime = DefaultLifetime
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = DefaultMaxBytes
	}
	if cfg.InlineMaxBytes < 0 {
		return nil, fmt.Errorf("uploads: inline limit %d is negative", cfg.InlineMaxBytes)
	}
	if len(cfg.Types) == 0 {
		cfg.Types = DefaultTypes
	}
	if err := CheckTypes(cfg.Types); err != nil {
		return nil, err
	}
	if cfg.PerTenant <= 0 {
		cfg.PerTenant = DefaultPerTenant
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Uploads{cfg: cfg, memory: semaphore.NewWeighted(defaultMemory), active: map[string]int{}}, nil
}

// MaxBytes is the size limit of one upload.
func (u *Uploads) MaxBytes() int64 { return u.cfg.MaxBytes }

// Put stores what r yields as an upload of tenant's: contentType must be
// one Config.Types takes and the first bytes must agree with it; size is
// the number of bytes r yields, or -1 when unknown. The bytes are streamed
// to the store, never held whole.
func (u *Uploads) Put(ctx context.Context, tenant, contentType string, size int64, r io.Reader) (Upload, error) {
	ct, err := u.checkType(contentType)
	if err != nil {
		return Upload{}, err
	}
	switch {
	case size > u.cfg.MaxBytes:
		return Upload{}, fmt.Errorf("%w: %d bytes declared, at most %d taken", ErrTooLarge, size, u.cfg.MaxBytes)
	case size == 0:
		return Upload{}, ErrEmpty
	}
	if err := u.enter(tenant); err != nil {
		return Upload{}, err
	}
	defer u.leave(tenant)
	weight := int64(partMemory)
	if size > 0 {
		weight = min(size, partMemory)
	}
	if err := u.memory.Acquire(ctx, weight); err != nil {
		return Upload{}, fmt.Errorf("upload waited for room: %w", err)
	}
	defer u.memory.Release(weight)

	src := &source{r: r}
	head := make([]byte, 512)
	n, _ := io.ReadFull(src, head)
	if src.err != nil {
		return Upload{}, src.err
	}
	if n == 0 {
		return Upload{}, ErrEmpty
	}
	if err := agree(ct, http.DetectContentType(head[:n])); err != nil {
		return Upload{}, err
	}
	id, err := newID()
	if err != nil {
		return Upload{}, err
	}
	key := u.key(tenant, id)
	obj, err := u.cfg.Store.Put(ctx, key, io.MultiReader(bytes.NewReader(head[:n]), src), size, ct, u.cfg.MaxBytes)
	switch {
	case src.err != nil:
		// The uploader's side failed (gone, too slow): its error, not the
		// store's.
		return Upload{}, src.err
	case errors.Is(err, storage.ErrTooLarge):
		return Upload{}, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, u.cfg.MaxBytes)
	case errors.Is(err, storage.ErrSizeMismatch):
		return Upload{}, fmt.Errorf("%w: %d bytes declared", ErrSizeMismatch, size)
	case err != nil && ctx.Err() != nil:
		return Upload{}, fmt.Errorf("upload: %w", ctx.Err())
	case err != nil:
		u.cfg.Logger.WarnContext(ctx, "an upload was not stored", "tenant", tenant, "error", err)
		return Upload{}, ErrStore
	}
	now := u.cfg.Now()
	return Upload{ID: id, ContentType: ct, Size: obj.Size, SHA256: obj.SHA256, CreatedAt: now, ExpiresAt: now.Add(u.cfg.Lifetime)}, nil
}

// key is the object key of tenant's upload id. A gateway without API keys
// has one tenant, "", whose directory is "_" as for its outputs.
func (u *Uploads) key(tenant, id string) string {
	if tenant == "" {
		tenant = "_"
	}
	return u.cfg.Store.Key(dir, tenant, id)
}

// enter counts an upload of tenant's in progress, or refuses one past the
// tenant's bound.
func (u *Uploads) enter(tenant string) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.active[tenant] >= u.cfg.PerTenant {
		return ErrBusy
	}
	u.active[tenant]++
	return nil
}

func (u *Uploads) leave(tenant string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.active[tenant]--; u.active[tenant] == 0 {
		delete(u.active, tenant)
	}
}

// source remembers the error of the uploader's reader, so that a failure
// of the uploader is told from one of the store.
type source struct {
	r   io.Reader
	err error
}

func (s *source) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		s.err = err
	}
	return n, err
}

// idEncoding writes ids in lower case, without padding: 16 random bytes are
// 26 characters.
var idEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// newID is a fresh upload id: 128 random bits, which no one can guess.
func newID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("upload id: %w", err)
	}
	return "up_" + strings.ToLower(idEncoding.EncodeToString(b[:])), nil
}

// validID reports whether id is one newID could have made.
func validID(id string) bool {
	rest, ok := strings.CutPrefix(id, "up_")
	if !ok || len(rest) != 26 {
		return false
	}
	for i := 0; i < len(rest); i++ {
		if c := rest[i]; !('a' <= c && c <= 'z' || '2' <= c && c <= '7') {
			return false
		}
	}
	return true
}

// TypeError is a content type refused, with why.
type TypeError struct {
	Declared string
	Reason   string
}

func (e *TypeError) Error() string {
	if e.Declared == "" {
		return "content type: " + e.Reason
	}
	return fmt.Sprintf("content type %q: %s", e.Declared, e.Reason)
}

func (e *TypeError) Unwrap() error { return ErrType }

// CheckTypes refuses a list of types Config.Types cannot take.
func CheckTypes(types []string) error {
	for _, t := range types {
		if err := checkPattern(t); err != nil {
			return err
		}
	}
	return nil
}

// checkPattern refuses a Config.Types entry that is not type/subtype or
// type/*.
func checkPattern(p string) error {
	t, sub, ok := strings.Cut(p, "/")
	if !ok || t == "" || sub == "" || t == "*" || strings.ContainsAny(p, " ;,") || (strings.Contains(sub, "*") && sub != "*") {
		return fmt.Errorf("uploads: type %q is not type/subtype or type/*", p)
	}
	return nil
}

// checkType returns contentType's media type, lower case and without
// parameters, when Config.Types takes it.
func (u *Uploads) checkType(contentType string) (string, error) {
	if contentType == "" {
		return "", &TypeError{Reason: "missing: say what the file is (such as image/png)"}
	}
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil || !strings.Contains(mt, "/") || strings.Contains(mt, "*") {
		return "", &TypeError{Declared: truncate(contentType), Reason: "not the media type of a file"}
	}
	for _, p := range u.cfg.Types {
		p = strings.ToLower(p)
		if p == mt || strings.HasSuffix(p, "/*") && strings.HasPrefix(mt, strings.TrimSuffix(p, "*")) {
			return mt, nil
		}
	}
	return "", &TypeError{Declared: mt, Reason: "not taken by this gateway, which takes " + strings.Join(u.cfg.Types, ", ")}
}

// agree refuses a file whose first bytes say it is of another kind than
// declared (sniffed as net/http does): an "image" that is an HTML page, an
// executable or zeros would be served from the bucket under the declared
// type to whatever fetches it. A declared type the sniffer recognises must
// be what it finds (names of one type, such as audio/wav and audio/wave,
// are one); one it cannot recognise (image/avif, video/quicktime) passes
// when it finds nothing it knows, or, for the ISO media file formats, an
// MP4. application/octet-stream, when the operator takes it, takes any
// bytes.
func agree(declared, sniffed string) error {
	sniffed, _, _ = strings.Cut(sniffed, ";")
	d, sn := canonicalType(declared), canonicalType(sniffed)
	switch {
	case d == "application/octet-stream", d == sn:
		return nil
	case sn == "application/octet-stream" && !sniffable[d]:
		return nil
	case sn == "video/mp4" && isoMedia[d]:
		return nil
	case sn == "video/webm" && d == "audio/webm":
		return nil
	}
	what := sniffed
	if sniffed == "application/octet-stream" {
		what = "not recognisable as such"
	}
	return &TypeError{Declared: declared, Reason: "the file's bytes are " + what + ", not that"}
}

// typeAliases are other names of one media type, by the name the sniffer
// gives it.
var typeAliases = map[string]string{
	"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg",
	"image/vnd.microsoft.icon": "image/x-icon", "image/x-ms-bmp": "image/bmp",
	"audio/wav": "audio/wave", "audio/x-wav": "audio/wave", "audio/vnd.wave": "audio/wave",
	"audio/mp3": "audio/mpeg", "audio/x-aiff": "audio/aiff", "audio/mid": "audio/midi",
	"audio/ogg": "application/ogg", "video/ogg": "application/ogg",
	"video/x-msvideo": "video/avi", "video/msvideo": "video/avi",
}

func canonicalType(t string) string {
	if c, ok := typeAliases[t]; ok {
		return c
	}
	return t
}

// sniffable are the media types net/http's sniffer recognises (of the
// families an upload may be), by their canonical names.
var sniffable = map[string]bool{
	"image/x-icon": true, "image/bmp": true, "image/gif": true, "image/webp": true, "image/png": true, "image/jpeg": true,
	"audio/aiff": true, "audio/mpeg": true, "application/ogg": true, "audio/midi": true, "audio/wave": true,
	"video/avi": true, "video/mp4": true, "video/webm": true,
}

// isoMedia are the types of the ISO base media file format, which the
// sniffer may call video/mp4.
var isoMedia = map[string]bool{
	"audio/mp4": true, "audio/x-m4a": true, "audio/m4a": true, "video/quicktime": true, "video/x-m4v": true,
	"video/3gpp": true, "video/3gpp2": true, "audio/3gpp": true, "image/avif": true, "image/heic": true, "image/heif": true,
}

// truncate bounds a caller's string quoted in an error.
func truncate(s string) string {
	if len(s) > 100 {
		return s[:100] + "…"
	}
	return s
}
