package runcomfysim

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

const (
	// inputFetchTimeout bounds one input download, so a URL that never answers
	// refuses the submit instead of holding it forever.
	inputFetchTimeout = 30 * time.Second
	// maxInputBytes bounds one input, fetched or decoded: large enough for any
	// real image or short video, small enough that a runaway URL cannot keep the
	// simulator reading.
	maxInputBytes = 256 << 20
	// maxShownValue is how much of an input's URL an error message repeats, so a
	// long signed URL does not swamp the answer.
	maxShownValue = 200
)

// FetchedInput is one media input that Options.FetchInputs made the simulator read,
// so tests can check the gateway forwarded a reachable URL and the right bytes
// without keeping the bytes themselves.
type FetchedInput struct {
	// Path locates the value in the body as a JSON pointer (RFC 6901), e.g.
	// "/overrides/12/inputs/image".
	Path string
	// URL is the value for an http(s) input; for a data: URI only its head,
	// "data:<mediatype>", so records never carry the inline content.
	URL string
	// ContentType is the response's Content-Type header, or the data: URI's media
	// type (empty when the URI names none).
	ContentType string
	// Size is the number of bytes read (decoded, for a data: URI).
	Size int64
	// SHA256 is the hex SHA-256 of those bytes.
	SHA256 string
}

// inputRef is a string value of the submit body that names media: an absolute
// http(s) URL, or a data: URI with base64 content.
type inputRef struct {
	path []string // unescaped keys and array indices from the body's root
	// value is the string as found in the body.
	value string
	// data is set for a data: URI: media type and still-encoded payload.
	data      bool
	mediaType string
	payload   string
}

// pointer renders path as a JSON pointer.
func (in inputRef) pointer() string {
	var b strings.Builder
	esc := strings.NewReplacer("~", "~0", "/", "~1")
	for _, p := range in.path {
		b.WriteByte('/')
		b.WriteString(esc.Replace(p))
	}
	return b.String()
}

// shown is how the input is named in an error message and in FetchedInput.URL:
// never a data: URI's content, and URLs cut to a readable length.
func (in inputRef) shown() string {
	if in.data {
		return truncate("data:"+in.mediaType, maxShownValue)
	}
	return truncate(in.value, maxShownValue)
}

// fetchInputs reads every media input of the body in document order, the way
// RunComfy does before it queues a job. It returns what was read and, when an input
// could not be read, the answer refusing the submit (inputs then holds those read
// before it). It runs without s.mu: downloads take as long as the remote server
// wants.
func (s *Sim) fetchInputs(ctx context.Context, body []byte) ([]FetchedInput, *answer) {
	refs, err := findInputs(body)
	if err != nil {
		// The body already decoded as a JSON object, so this is a bug here.
		a := validationAnswer([]string{"body"}, "JSON decode error: "+err.Error(), "json_invalid")
		return nil, &a
	}
	var inputs []FetchedInput
	for _, ref := range refs {
		var got FetchedInput
		var err error
		if ref.data {
			got, err = decodeDataURI(ref, maxInputBytes)
		} else {
			got, err = s.fetchURL(ctx, ref, maxInputBytes)
		}
		if err != nil {
			if s.ctx.Err() != nil {
				// Close interrupted the download: the input is not at fault.
				a := closedAnswer()
				return inputs, &a
			}
			loc := append([]string{"body"}, ref.path...)
			var a answer
			if ref.data {
				a = validationAnswer(loc, fmt.Sprintf("Input %q is not valid base64 data: %v", ref.shown(), err), "base64_decode")
			} else {
				a = validationAnswer(loc, fmt.Sprintf("Input URL %q could not be fetched: %v", ref.shown(), err), "url_parsing")
			}
			s.log.Debug("runcomfysim: input refused", "path", ref.pointer(), "input", ref.shown(), "err", err)
			return inputs, &a
		}
		got.Path = ref.pointer()
		got.URL = ref.shown()
		s.log.Debug("runcomfysim: input read", "path", got.Path, "input", got.URL, "size", got.Size)
		inputs = append(inputs, got)
	}
	return inputs, nil
}

// fetchURL downloads one input with a GET, hashing it as it streams.
func (s *Sim) fetchURL(ctx context.Context, ref inputRef, limit int64) (FetchedInput, error) {
	ctx, cancel := context.WithTimeout(ctx, inputFetchTimeout)
	defer cancel()
	// Close aborts downloads in flight, as it does callbacks.
	stop := context.AfterFunc(s.ctx, cancel)
	defer stop()
	return fetchURL(ctx, s.client, ref.value, limit)
}

// fetchURL GETs rawURL with client and returns the size and SHA-256 of its body,
// which must be a 2xx of at most limit bytes.
func fetchURL(ctx context.Context, client *http.Client, rawURL string, limit int64) (FetchedInput, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return FetchedInput{}, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("User-Agent", "runcomfysim")
	resp, err := client.Do(req)
	if err != nil {
		// The *url.Error repeats the whole URL, which the caller names already.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return FetchedInput{}, fmt.Errorf("get: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		// Drain a bounded amount so the connection can be reused.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return FetchedInput{}, fmt.Errorf("http status %s", resp.Status)
	}
	if resp.ContentLength > limit {
		return FetchedInput{}, fmt.Errorf("content length %d is over the limit of %d bytes", resp.ContentLength, limit)
	}
	got, err := hashReader(resp.Body, limit)
	if err != nil {
		return FetchedInput{}, fmt.Errorf("read body: %w", err)
	}
	got.ContentType = resp.Header.Get("Content-Type")
	return got, nil
}

// decodeDataURI decodes one data: URI's base64 payload, hashing it as it streams.
func decodeDataURI(ref inputRef, limit int64) (FetchedInput, error) {
	got, err := hashReader(base64.NewDecoder(base64.StdEncoding, strings.NewReader(ref.payload)), limit)
	if err != nil {
		return FetchedInput{}, fmt.Errorf("decode: %w", err)
	}
	got.ContentType = ref.mediaType
	return got, nil
}

// hashReader reads r to the end into SHA-256, refusing more than limit bytes, so an
// input is never held whole in memory.
func hashReader(r io.Reader, limit int64) (FetchedInput, error) {
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(r, limit+1))
	if err != nil {
		return FetchedInput{}, err
	}
	if n > limit {
		return FetchedInput{}, fmt.Errorf("over the limit of %d bytes", limit)
	}
	return FetchedInput{Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// findInputs walks the body in document order and returns its string values that
// are media inputs. Object keys are not values. The legacy top-level "webhook" key
// is skipped: it is where RunComfy posts callbacks, not an input it reads.
func findInputs(body []byte) ([]inputRef, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var refs []inputRef
	if err := walkValue(dec, nil, &refs); err != nil {
		return nil, err
	}
	return refs, nil
}

// walkValue consumes one JSON value from dec, appending the inputs it contains.
func walkValue(dec *json.Decoder, path []string, refs *[]inputRef) error {
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("read token: %w", err)
	}
	switch v := tok.(type) {
	case json.Delim:
		switch v {
		case '{':
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return fmt.Errorf("read key: %w", err)
				}
				key, ok := kt.(string)
				if !ok {
					return fmt.Errorf("object key is %T, not a string", kt)
				}
				if len(path) == 0 && key == "webhook" {
					if err := skipValue(dec); err != nil {
						return err
					}
					continue
				}
				if err := walkValue(dec, appendPath(path, key), refs); err != nil {
					return err
				}
			}
		case '[':
			for i := 0; dec.More(); i++ {
				if err := walkValue(dec, appendPath(path, strconv.Itoa(i)), refs); err != nil {
					return err
				}
			}
		}
		if _, err := dec.Token(); err != nil { // the closing delimiter
			return fmt.Errorf("read closing delimiter: %w", err)
		}
	case string:
		if ref, ok := classify(v); ok {
			ref.path = path
			*refs = append(*refs, ref)
		}
	}
	return nil
}

// skipValue consumes one JSON value from dec without looking at it.
func skipValue(dec *json.Decoder) error {
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return fmt.Errorf("skip value: %w", err)
	}
	return nil
}

// appendPath returns path plus elem in a new slice, since sibling values share the
// parent's backing array.
func appendPath(path []string, elem string) []string {
	out := make([]string, len(path), len(path)+1)
	copy(out, path)
	return append(out, elem)
}

// classify tells whether a string value is a media input: an absolute http(s) URL
// with a host, or a data: URI whose header ends in ";base64" (RFC 2397). Other
// data: URIs and any other text are left alone, so a prompt is never mistaken for
// an input.
func classify(v string) (inputRef, bool) {
	if len(v) >= 5 && strings.EqualFold(v[:5], "data:") {
		comma := strings.IndexByte(v, ',')
		if comma < 0 {
			return inputRef{}, false
		}
		head := v[5:comma]
		const marker = ";base64"
		if len(head) < len(marker) || !strings.EqualFold(head[len(head)-len(marker):], marker) {
			return inputRef{}, false
		}
		return inputRef{value: v, data: true, mediaType: head[:len(head)-len(marker)], payload: v[comma+1:]}, true
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return inputRef{}, false
	}
	return inputRef{value: v}, true
}

// truncate cuts s to at most n bytes on a rune boundary, marking the cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
