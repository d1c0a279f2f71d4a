package storage

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"

	"github.com/minio/minio-go/v7"
)

const (
	// defaultPartSize is the size of one multipart part, and of the buffer
	// an object must fit in to be sent in a single PUT. 8 MiB holds most
	// images in one request while keeping the memory of an upload small.
	defaultPartSize = 8 << 20
	// maxParts is S3's limit on the parts of one upload; the part size grows
	// beyond defaultPartSize when maxBytes needs more than 80 GiB.
	maxParts = 10000
	// uploadThreads is how many parts of an upload are in flight at once,
	// so that reading the source (often a download) and sending to the
	// store overlap.
	uploadThreads = 2
	// maxCopySize is the largest object a single CopyObject may copy;
	// larger ones are copied in parts.
	maxCopySize = 5 << 30
)

// Put stores what r yields under key and returns its description, streaming:
// memory use is a few parts, whatever the size. size is the number of bytes
// r will yield, or -1 when unknown; a source that yields another number of
// bytes fails the call. More than maxBytes bytes (which must be positive)
// fail with an error wrapping ErrTooLarge, as soon as the excess arrives,
// and leave nothing behind. An empty contentType is stored as
// application/octet-stream.
//
// The content's SHA-256, computed while streaming, is stored with the
// object (x-amz-meta-sha256) and returned. S3 takes metadata before the
// content, so an object larger than one part is first uploaded under a
// temporary key next to key and then copied to key, server-side, with its
// metadata: key appears only complete and with its checksum. A temporary
// object that cannot be removed afterwards (the store went away) is left
// for the retention of key's prefix to delete.
func (s *Store) Put(ctx context.Context, key string, r io.Reader, size int64, contentType string, maxBytes int64) (Object, error) {
	if err := s.checkKey(key); err != nil {
		return Object{}, err
	}
	switch {
	case maxBytes <= 0:
		return Object{}, fmt.Errorf("storage: put %s: maxBytes must be positive, got %d", key, maxBytes)
	case size < -1:
		return Object{}, fmt.Errorf("storage: put %s: size %d (want -1 for unknown)", key, size)
	case size > maxBytes:
		return Object{}, fmt.Errorf("storage: put %s: %d bytes declared, limit %d: %w", key, size, maxBytes, ErrTooLarge)
	}
	if contentType == "" {
		contentType = "application/octet-stream"
	}
	m := &meter{r: r, hash: sha256.New(), max: maxBytes, want: size}
	if size >= 0 {
		m.max = size
	}
	partSize := int64(defaultPartSize)
	if need := (m.max + maxParts - 1) / maxParts; need > partSize {
		partSize = (need + 1<<20 - 1) &^ (1<<20 - 1) // whole MiB
	}

	// Read the first part. An object that fits goes in one PUT with its
	// checksum in the metadata and in the signature, which the server
	// verifies; only larger ones need the multipart upload and the copy.
	//
	// The buffer is not pooled: the HTTP transport may still be reading a
	// request body after a failed round trip returns, so a buffer handed
	// to the next upload could be sent as this one's. A known size (the
	// usual case: Content-Length) allocates no more than the object. The
	// single-PUT threshold stays at defaultPartSize when a huge maxBytes
	// makes the parts larger, so small objects of unknown size do not each
	// cost a huge buffer.
	buf := make([]byte, min(defaultPartSize, m.max))
	n, err := io.ReadFull(m, buf)
	if m.err != nil {
		return Object{}, fmt.Errorf("storage: put %s: %w", key, m.err)
	}
	var extra [1]byte
	if err == nil {
		// The buffer is full: one more byte tells a source that ends here
		// from one that goes on.
		k, _ := io.ReadFull(m, extra[:])
		if m.err != nil {
			return Object{}, fmt.Errorf("storage: put %s: %w", key, m.err)
		}
		if k == 1 {
			rest := io.MultiReader(bytes.NewReader(buf[:n]), bytes.NewReader(extra[:]), m)
			return s.putLarge(ctx, key, rest, m, contentType, partSize)
		}
	}
	sum := hex.EncodeToString(m.hash.Sum(nil))
	info, err := minio.Core{Client: s.client}.PutObject(ctx, s.cfg.Bucket, key, bytes.NewReader(buf[:n]), int64(n), "", sum,
		minio.PutObjectOptions{ContentType: contentType, UserMetadata: map[string]string{metaSHA256: sum}})
	if err != nil {
		return Object{}, fmt.Errorf("storage: put %s: %w", key, err)
	}
	return Object{Key: key, Size: int64(n), ContentType: contentType, SHA256: sum, ETag: info.ETag, LastModified: info.LastModified}, nil
}

// putLarge streams src to a temporary key in parts, then copies it to key
// with the checksum m computed, and removes the temporary object.
func (s *Store) putLarge(ctx context.Context, key string, src io.Reader, m *meter, contentType string, partSize int64) (Object, error) {
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	tmp := key + ".partial-" + hex.EncodeToString(rnd[:])
	// On any error, including the source's, the client aborts the upload,
	// so the parts sent so far do not linger (and cost) in the bucket.
	_, err := s.client.PutObject(ctx, s.cfg.Bucket, tmp, src, -1, minio.PutObjectOptions{
		ContentType:           contentType,
		PartSize:              uint64(partSize),
		ConcurrentStreamParts: true,
		NumThreads:            uploadThreads,
	})
	if m.err != nil {
		return Object{}, fmt.Errorf("storage: put %s: %w", key, m.err)
	}
	if err != nil {
		return Object{}, fmt.Errorf("storage: put %s: upload: %w", key, err)
	}
	defer s.removeTemporary(ctx, tmp)

	sum := hex.EncodeToString(m.hash.Sum(nil))
	dst := minio.CopyDestOptions{
		Bucket:          s.cfg.Bucket,
		Object:          key,
		ContentType:     contentType,
		ReplaceMetadata: true,
		UserMetadata:    map[string]string{metaSHA256: sum},
	}
	from := minio.CopySrcOptions{Bucket: s.cfg.Bucket, Object: tmp}
	var info minio.UploadInfo
	if m.n <= maxCopySize {
		info, err = s.client.CopyObject(ctx, dst, from)
	} else {
		dst.PartSize = uint64(maxCopySize)
		info, err = s.client.ComposeObject(ctx, dst, from)
	}
	if err != nil {
		return Object{}, fmt.Errorf("storage: put %s: copy into place: %w", key, err)
	}
	return Object{Key: key, Size: m.n, ContentType: contentType, SHA256: sum, ETag: info.ETag, LastModified: info.LastModified}, nil
}

// removeTemporary deletes a temporary object even when ctx has ended (the
// caller gave up, the object must still go), within opTimeout.
func (s *Store) removeTemporary(ctx context.Context, key string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
	defer cancel()
	_ = s.client.RemoveObject(ctx, s.cfg.Bucket, key, minio.RemoveObjectOptions{})
}

// meter passes a source through, hashing and counting it, and turns a
// source that breaks its promises (more than max bytes, or not the size
// declared) into an error that stays in err: the client reports a reader's
// error in its own words, and Put needs to know it was the source's.
type meter struct {
	r    io.Reader
	hash hash.Hash
	n    int64
	max  int64 // the declared size when there is one, else maxBytes
	want int64 // the declared size, or -1
	err  error
}

func (m *meter) Read(p []byte) (int, error) {
	if m.err != nil {
		return 0, m.err
	}
	// Ask for at most one byte beyond the limit: enough to see it broken,
	// without reading (and buffering) more of a source that is too large.
	if room := m.max - m.n + 1; int64(len(p)) > room {
		p = p[:room]
	}
	k, err := m.r.Read(p)
	if m.n+int64(k) > m.max {
		m.n += int64(k)
		if m.want >= 0 {
			m.err = fmt.Errorf("the source yields more than the %d bytes declared: %w", m.want, ErrSizeMismatch)
		} else {
			m.err = fmt.Errorf("more than %d bytes: %w", m.max, ErrTooLarge)
		}
		return 0, m.err
	}
	m.hash.Write(p[:k])
	m.n += int64(k)
	switch {
	case err == io.EOF:
		if m.want >= 0 && m.n != m.want {
			m.err = fmt.Errorf("the source ended after %d of the %d bytes declared: %w (%w)", m.n, m.want, ErrSizeMismatch, io.ErrUnexpectedEOF)
			return k, m.err
		}
		return k, io.EOF
	case err != nil:
		m.err = fmt.Errorf("read source: %w", err)
		return k, m.err
	}
	return k, nil
}
