package storage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/lifecycle"
)

// deleteBatch is how many keys one DeleteObjects request carries (S3's
// maximum).
const deleteBatch = 1000

// listPrefix turns a directory as Key returns it (the store's prefix, or a
// key under it) into the listing prefix of the objects below it. The
// trailing "/" keeps "outputs" from also matching "outputs2/...".
func (s *Store) listPrefix(dir string) (string, error) {
	rel, ok := s.relative(dir)
	if !ok {
		return "", fmt.Errorf("storage: %q is not the prefix %q or under it", dir, s.cfg.Prefix)
	}
	if rel != "" {
		if err := s.checkKey(dir); err != nil {
			return "", err
		}
	}
	if dir == "" {
		return "", nil
	}
	return dir + "/", nil
}

// DeleteOlderThan deletes the objects below dir (the store's prefix or a
// key under it, as Key returns them) last modified before before, and
// returns how many it deleted: the retention sweep for stores without
// lifecycle rules. It stops at the first error, returning the count so far;
// running it again continues the work.
func (s *Store) DeleteOlderThan(ctx context.Context, dir string, before time.Time) (int, error) {
	prefix, err := s.listPrefix(dir)
	if err != nil {
		return 0, err
	}
	// Cancelling ends the client's listing goroutine when this returns
	// before the listing is drained.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	deleted := 0
	batch := make([]string, 0, deleteBatch)
	flush := func() error {
		n, err := s.deleteKeys(ctx, batch)
		deleted += n
		batch = batch[:0]
		return err
	}
	for obj := range s.client.ListObjects(ctx, s.cfg.Bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if obj.Err != nil {
			return deleted, fmt.Errorf("storage: list %s: %w", prefix, obj.Err)
		}
		if !obj.LastModified.Before(before) {
			continue
		}
		if batch = append(batch, obj.Key); len(batch) == deleteBatch {
			if err := flush(); err != nil {
				return deleted, err
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return deleted, fmt.Errorf("storage: list %s: %w", prefix, err)
	}
	if len(batch) > 0 {
		if err := flush(); err != nil {
			return deleted, err
		}
	}
	return deleted, nil
}

// deleteKeys deletes keys in one DeleteObjects request and returns how many
// went.
func (s *Store) deleteKeys(ctx context.Context, keys []string) (int, error) {
	ch := make(chan minio.ObjectInfo, len(keys))
	for _, k := range keys {
		ch <- minio.ObjectInfo{Key: k}
	}
	close(ch)
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	var errs []error
	for e := range s.client.RemoveObjects(ctx, s.cfg.Bucket, ch, minio.RemoveObjectsOptions{}) {
		errs = append(errs, fmt.Errorf("%s: %w", e.ObjectName, e.Err))
	}
	if len(errs) > 0 {
		return len(keys) - len(errs), fmt.Errorf("storage: delete %d of %d objects failed: %w", len(errs), len(keys), errors.Join(errs...))
	}
	return len(keys), nil
}

// SetExpiry makes the store delete objects below dir (as for
// DeleteOlderThan) days days after they were written, with a bucket
// lifecycle rule of its own; days 0 removes that rule. Other rules in the
// bucket's configuration are kept: S3 replaces the whole configuration at
// once, so this reads it, changes its rule and writes it back. A server
// without lifecycle rules (versitygw, some gateways) yields an error
// wrapping ErrUnsupported, and the caller sweeps with DeleteOlderThan
// instead. The server deletes expired objects on its own schedule (AWS:
// within a day or so).
func (s *Store) SetExpiry(ctx context.Context, dir string, days int) error {
	prefix, err := s.listPrefix(dir)
	if err != nil {
		return err
	}
	if days < 0 {
		return fmt.Errorf("storage: expiry of %d days", days)
	}
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	cfg, err := s.client.GetBucketLifecycle(ctx, s.cfg.Bucket)
	switch {
	case isCode(err, "NoSuchLifecycleConfiguration"):
		cfg = lifecycle.NewConfiguration()
	case isUnsupported(err):
		return fmt.Errorf("storage: bucket lifecycle of %s: %w: %w", s.cfg.Bucket, ErrUnsupported, err)
	case err != nil:
		return fmt.Errorf("storage: bucket lifecycle of %s: %w", s.cfg.Bucket, err)
	}
	cfg = withExpiryRule(cfg, prefix, days)
	if err := s.client.SetBucketLifecycle(ctx, s.cfg.Bucket, cfg); err != nil {
		if isUnsupported(err) {
			return fmt.Errorf("storage: set bucket lifecycle of %s: %w: %w", s.cfg.Bucket, ErrUnsupported, err)
		}
		return fmt.Errorf("storage: set bucket lifecycle of %s: %w", s.cfg.Bucket, err)
	}
	return nil
}

// expiryRuleID names the rule SetExpiry keeps for prefix. A hash keeps it
// within the 255 characters S3 allows whatever the prefix's length.
func expiryRuleID(prefix string) string {
	h := sha256.Sum256([]byte(prefix))
	return "comfygate-expiry-" + hex.EncodeToString(h[:8])
}

// withExpiryRule returns cfg with the expiry rule for prefix set to days
// (removed when days is 0) and every other rule as it was.
func withExpiryRule(cfg *lifecycle.Configuration, prefix string, days int) *lifecycle.Configuration {
	id := expiryRuleID(prefix)
	out := lifecycle.NewConfiguration()
	for _, r := range cfg.Rules {
		if r.ID != id {
			out.Rules = append(out.Rules, r)
		}
	}
	if days > 0 {
		out.Rules = append(out.Rules, lifecycle.Rule{
			ID:         id,
			Status:     "Enabled",
			RuleFilter: lifecycle.Filter{Prefix: prefix},
			Expiration: lifecycle.Expiration{Days: lifecycle.ExpirationDays(days)},
		})
	}
	return out
}

// AbortStaleUploads aborts the multipart uploads below dir begun before
// before, and returns how many: what a copy that died mid-upload left
// behind, which no listing of objects shows and whose parts the bucket keeps
// until aborted.
func (s *Store) AbortStaleUploads(ctx context.Context, dir string, before time.Time) (int, error) {
	prefix, err := s.listPrefix(dir)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the listing when an abort fails
	core := minio.Core{Client: s.client}
	n := 0
	for u := range s.client.ListIncompleteUploads(ctx, s.cfg.Bucket, prefix, true) {
		if u.Err != nil {
			return n, fmt.Errorf("storage: list unfinished uploads: %w", u.Err)
		}
		if !u.Initiated.Before(before) {
			continue
		}
		if err := core.AbortMultipartUpload(ctx, s.cfg.Bucket, u.Key, u.UploadID); err != nil {
			return n, fmt.Errorf("storage: abort the unfinished upload of %s: %w", u.Key, err)
		}
		n++
	}
	return n, nil
}
