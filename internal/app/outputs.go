package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/comfygate/comfygate/outputs"
	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/storage"
	"github.com/comfygate/comfygate/uploads"
)

// copyQueue names the work queue of outputs to copy.
const copyQueue = "copies"

// objectStore is the copier's view of the store (outputs.ObjectStore).
type objectStore struct {
	s   *storage.Store
	log *slog.Logger
}

func (o objectStore) Key(parts ...string) string { return o.s.Key(parts...) }

// errStoreFailed is what a request's copy shows of a store's failure: the
// store's own error names the operator's endpoint and bucket, which are not
// the tenant's to see; the log has it.
var errStoreFailed = errors.New("the object store did not take the output (the gateway's log says why); the copy is retried")

func (o objectStore) Put(ctx context.Context, key string, r io.Reader, size int64, contentType string, maxBytes int64) (outputs.Stored, error) {
	obj, err := o.s.Put(ctx, key, r, size, contentType, maxBytes)
	if errors.Is(err, storage.ErrTooLarge) {
		return outputs.Stored{}, fmt.Errorf("%w (%d bytes)", outputs.ErrTooLarge, maxBytes)
	}
	if err != nil {
		if ctx.Err() != nil {
			return outputs.Stored{}, fmt.Errorf("%w: %w", errStoreFailed, ctx.Err())
		}
		o.log.Warn("the object store did not take an output", "key", key, "error", err)
		return outputs.Stored{}, errStoreFailed
	}
	return outputs.Stored{Key: obj.Key, Size: obj.Size, ContentType: obj.ContentType, SHA256: obj.SHA256}, nil
}

// objectURLs signs stored outputs' URLs for the API (server.ObjectURLs).
type objectURLs struct {
	s        *storage.Store
	lifetime time.Duration
}

func (u objectURLs) ObjectURL(key string) (string, time.Time, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	signed, err := u.s.Presign(ctx, key, u.lifetime)
	if err != nil {
		return "", time.Time{}, err
	}
	if u.s.Config().PublicBase != nil {
		return signed, time.Time{}, nil
	}
	return signed, time.Now().Add(u.lifetime), nil
}

// stored is the object storage of a gateway with --storage-url: the store,
// the copier, and the retention of what it keeps.
type stored struct {
	store     *storage.Store
	copies    state.WorkQueue
	copier    *outputs.Copier
	uploads   *uploads.Uploads
	retention time.Duration
	// copyTimeout bounds a live copy or upload (the longer of
	// --storage-copy-timeout and --upload-timeout): a multipart upload
	// older than twice it is a dead one's.
	copyTimeout time.Duration
	log         *slog.Logger
}

// newStored opens the store (and checks that its bucket answers: a gateway
// that could copy nothing must not start) and builds the copier; it starts
// nothing.
func newStored(ctx context.Context, cfg *Config, copies state.WorkQueue, tracker outputs.Tracker, reg prometheus.Registerer, log *slog.Logger) (*stored, error) {
	scfg, err := storage.ParseURL(cfg.StorageURL)
	if err != nil {
		return nil, fmt.Errorf("--storage-url: %w", err)
	}
	scfg.Getenv = cfg.getenv
	store, err := storage.New(ctx, scfg)
	if err != nil {
		return nil, fmt.Errorf("--storage-url: %w", err)
	}
	if err := store.Check(ctx); err != nil {
		store.Close()
		return nil, fmt.Errorf("--storage-url %s: %w", scfg, err)
	}
	s := &stored{store: store, copies: copies, retention: cfg.StorageRetention, copyTimeout: max(cfg.StorageCopyTimeout, cfg.UploadTimeout), log: log}
	s.copier, err = outputs.New(outputs.Config{
		Queue: s.copies, Tracker: tracker, Store: objectStore{s: store, log: log},
		// RunComfy's output storage is public and answers large files:
		// the copy's own timeout bounds each attempt.
		Client:   &http.Client{},
		Owner:    replicaName(),
		MaxBytes: cfg.StorageMaxOutputBytes,
		Timeout:  cfg.StorageCopyTimeout,
		Logger:   log,
		Registry: reg,
	})
	if err != nil {
		store.Close()
		return nil, err
	}
	s.uploads, err = uploads.New(uploads.Config{
		Store: store, Lifetime: cfg.UploadLifetime, MaxBytes: cfg.UploadMaxBytes,
		InlineMaxBytes: cfg.UploadInlineMaxBytes, Types: uploadTypes(cfg.UploadTypes),
		Logger: log.With("component", "uploads"),
	})
	if err != nil {
		store.Close()
		return nil, err
	}
	log.Info("outputs copied to object storage, uploads kept there", "store", scfg.String(), "retention", cfg.StorageRetention, "upload_lifetime", cfg.UploadLifetime)
	return s, nil
}

// urls signs the stored outputs' URLs for lifetime.
func (s *stored) urls(lifetime time.Duration) objectURLs {
	return objectURLs{s: s.store, lifetime: lifetime}
}

// run copies until ctx ends, and keeps the bucket tidy: the retention by a
// lifecycle rule when the store has them, else by an hourly sweep; and the
// unfinished uploads of copies that died, aborted every hour.
func (s *stored) run(ctx context.Context) error {
	defer s.store.Close()
	sweep := false
	if s.retention > 0 {
		days := int((s.retention + 24*time.Hour - 1) / (24 * time.Hour))
		err := s.store.SetExpiry(ctx, s.store.Key(), days)
		switch {
		case errors.Is(err, storage.ErrUnsupported):
			s.log.Info("the object store has no lifecycle rules: the gateway sweeps expired objects every hour")
			sweep = true
		case err != nil:
			s.log.Warn("setting the object store's expiry rule failed; sweeping instead", "error", err)
			sweep = true
		}
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { s.maintain(ctx, sweep) })
	return s.copier.Run(ctx)
}

// maintain, now and every hour until ctx ends, aborts the multipart uploads
// older than two copy timeouts (no live copy runs that long), deletes the
// uploads past their lifetime and, with sweep, the objects older than the
// retention.
func (s *stored) maintain(ctx context.Context, sweep bool) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		if n, err := s.store.AbortStaleUploads(ctx, s.store.Key(), time.Now().Add(-2*s.copyTimeout)); err != nil && ctx.Err() == nil {
			s.log.Warn("aborting the unfinished uploads of dead copies failed", "error", err)
		} else if n > 0 {
			s.log.Info("unfinished uploads of dead copies aborted", "uploads", n)
		}
		if n, err := s.uploads.Sweep(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("deleting expired uploads failed", "error", err)
		} else if n > 0 {
			s.log.Info("expired uploads deleted", "uploads", n)
		}
		if sweep {
			if n, err := s.store.DeleteOlderThan(ctx, s.store.Key(), time.Now().Add(-s.retention)); err != nil && ctx.Err() == nil {
				s.log.Warn("sweeping expired objects failed", "error", err)
			} else if n > 0 {
				s.log.Info("expired objects deleted", "objects", n)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
