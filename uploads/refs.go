package uploads

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/comfygate/comfygate/storage"
)

// marker is what every reference holds even when its writer escaped its
// slashes ("comfygate:\/\/uploads\/..."), as some JSON encoders do: an
// input without it has no reference, and is not scanned.
const marker = "comfygate:"

// HasReferences reports whether input may hold a reference (a cheap test:
// it can say yes for an input with none).
func HasReferences(input string) bool { return strings.Contains(input, marker) }

// errFound stops Refers' scan at the first reference.
var errFound = errors.New("found")

// Refers reports whether input (valid JSON) holds a reference as a string
// value: for a gateway without uploads, which refuses such an input rather
// than send RunComfy a URL it cannot fetch.
func Refers(input string) bool {
	if !HasReferences(input) {
		return false
	}
	_, err := rewrite(input, func(string) (string, error) { return "", errFound })
	return errors.Is(err, errFound)
}

// Resolve returns input with every string value that is a reference to one
// of tenant's uploads replaced by a URL that fetches it (presigned until the
// upload expires) or, for an upload of at most Config.InlineMaxBytes, by a
// data: URI of its bytes. Everything else in input stays byte for byte as it
// was; an input without references is returned as it is. input must be
// valid JSON. A reference to an upload that is not the tenant's, or has
// expired, fails with ErrNotFound; a malformed one with ErrBadReference.
func (u *Uploads) Resolve(ctx context.Context, tenant, input string) (string, error) {
	if !HasReferences(input) {
		return input, nil
	}
	done := map[string]string{}
	refs := 0
	out, err := rewrite(input, func(ref string) (string, error) {
		if refs++; refs > maxRefs {
			return "", fmt.Errorf("%w: an input may hold at most %d references to uploads", ErrBadReference, maxRefs)
		}
		if v, ok := done[ref]; ok {
			return v, nil
		}
		v, err := u.resolve(ctx, tenant, ref)
		if err != nil {
			return "", err
		}
		done[ref] = v
		return v, nil
	})
	if err != nil {
		return "", err
	}
	return out, nil
}

// resolve is what one reference stands for.
func (u *Uploads) resolve(ctx context.Context, tenant, ref string) (string, error) {
	id := strings.TrimPrefix(ref, Scheme)
	if !validID(id) {
		return "", fmt.Errorf("%w: %q (want %sup_ and 26 letters and digits)", ErrBadReference, truncate(ref), Scheme)
	}
	key := u.key(tenant, id)
	obj, err := u.cfg.Store.Stat(ctx, key)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return "", fmt.Errorf("%w: %s does not exist or has expired", ErrNotFound, ref)
	case err != nil:
		u.cfg.Logger.WarnContext(ctx, "an upload could not be read", "tenant", tenant, "upload", id, "error", err)
		return "", ErrStore
	}
	left := obj.LastModified.Add(u.cfg.Lifetime).Sub(u.cfg.Now())
	if left < time.Second {
		return "", fmt.Errorf("%w: %s does not exist or has expired", ErrNotFound, ref)
	}
	if obj.Size <= u.cfg.InlineMaxBytes {
		return u.inline(ctx, tenant, id, key)
	}
	// Signed on the store's endpoint even when outputs are served under a
	// public base: an upload is the tenant's, not the public's.
	url, err := u.cfg.Store.Sign(ctx, key, min(left, 7*24*time.Hour))
	if err != nil {
		u.cfg.Logger.WarnContext(ctx, "an upload's URL could not be signed", "tenant", tenant, "upload", id, "error", err)
		return "", ErrStore
	}
	return url, nil
}

// inline is the upload at key as a data: URI.
func (u *Uploads) inline(ctx context.Context, tenant, id, key string) (string, error) {
	r, obj, err := u.cfg.Store.Get(ctx, key)
	if err != nil {
		u.cfg.Logger.WarnContext(ctx, "an upload could not be read", "tenant", tenant, "upload", id, "error", err)
		return "", ErrStore
	}
	defer r.Close()
	var b strings.Builder
	b.WriteString("data:" + obj.ContentType + ";base64,")
	enc := base64.NewEncoder(base64.StdEncoding, &b)
	if _, err := io.Copy(enc, io.LimitReader(r, u.cfg.InlineMaxBytes+1)); err != nil {
		u.cfg.Logger.WarnContext(ctx, "an upload could not be read", "tenant", tenant, "upload", id, "error", err)
		return "", ErrStore
	}
	enc.Close()
	return b.String(), nil
}

// rewrite returns input with each string value (not object key) that decodes
// to a text beginning with Scheme replaced by the JSON string of
// replace(text). The bytes between replacements are copied as they are; an
// input without any is returned as it is, uncopied. It expects valid JSON;
// on anything else it copies what it does not understand.
func rewrite(input string, replace func(ref string) (string, error)) (string, error) {
	var out *strings.Builder
	last := 0 // input[:last] is in out
	for i := 0; i < len(input); i++ {
		// Between strings there is no quote to skip: jump to the next.
		k := strings.IndexByte(input[i:], '"')
		if k < 0 {
			break
		}
		i += k
		end := stringEnd(input, i)
		if end < 0 {
			break
		}
		raw := input[i:end]
		i = end - 1
		if !strings.Contains(raw, marker) || isKey(input, end) {
			continue
		}
		var text string
		if json.Unmarshal([]byte(raw), &text) != nil || !strings.HasPrefix(text, Scheme) {
			continue
		}
		v, err := replace(text)
		if err != nil {
			return "", err
		}
		if out == nil {
			out = &strings.Builder{}
			out.Grow(len(input) + len(v))
		}
		out.WriteString(input[last : end-len(raw)])
		writeString(out, v)
		last = end
	}
	if out == nil {
		return input, nil
	}
	out.WriteString(input[last:])
	return out.String(), nil
}

// stringEnd is the index just past the JSON string that opens at
// input[start], or -1 when it does not close.
func stringEnd(input string, start int) int {
	for j := start + 1; j < len(input); {
		k := strings.IndexByte(input[j:], '"')
		if k < 0 {
			return -1
		}
		j += k
		// The quote closes the string unless an odd run of backslashes
		// escapes it.
		n := 0
		for b := j - 1; b > start && input[b] == '\\'; b-- {
			n++
		}
		if n%2 == 0 {
			return j + 1
		}
		j++
	}
	return -1
}

// isKey reports whether the string ending at input[end] is an object key:
// the next thing after it is a colon.
func isKey(input string, end int) bool {
	for ; end < len(input); end++ {
		switch input[end] {
		case ' ', '\t', '\r', '\n':
			continue
		case ':':
			return true
		}
		return false
	}
	return false
}

// writeString writes s as a JSON string, with &, < and > as they are (a
// URL's query is read by RunComfy, not by a browser).
func writeString(dst *strings.Builder, s string) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // a string always encodes
	dst.Write(bytes.TrimSuffix(b.Bytes(), []byte("\n")))
}

// Sweep deletes the uploads older than their lifetime and returns how many;
// run it now and then (references to them are refused already).
func (u *Uploads) Sweep(ctx context.Context) (int, error) {
	return u.cfg.Store.DeleteOlderThan(ctx, u.cfg.Store.Key(dir), u.cfg.Now().Add(-u.cfg.Lifetime))
}
