package runcomfy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/go-json-experiment/json/jsontext"
)

// resultWire is the union of every field seen on /result answers and on callbacks,
// which share one shape ("output matches the output schema of GET .../result").
type resultWire struct {
	RequestID     string          `json:"request_id"`
	Status        string          `json:"status"`
	Outcome       string          `json:"outcome"`
	Outputs       json.RawMessage `json:"outputs"`
	Output        json.RawMessage `json:"output"`
	Error         json.RawMessage `json:"error"`
	InstanceID    string          `json:"instance_id"`
	CreatedAt     string          `json:"created_at"`
	StartedAt     string          `json:"started_at"`
	FinishedAt    string          `json:"finished_at"`
	QueuePosition json.RawMessage `json:"queue_position"`
	DeploymentID  string          `json:"deployment_id"`
}

// ParseResult decodes a /result answer. It accepts "outputs" or "output", status in
// "status" or "outcome", error as an object or an array, and output lists of URL
// strings or of objects with a "url"; it fails only when data is not a JSON object.
func ParseResult(data []byte) (*ResultResponse, error) {
	r, _, err := parseResultWire(data)
	return r, err
}

func parseResultWire(data []byte) (*ResultResponse, *resultWire, error) {
	var w resultWire
	if err := decodeObject(data, &w); err != nil {
		return nil, nil, err
	}
	raw := w.Status
	if raw == "" {
		raw = w.Outcome
	}
	r := &ResultResponse{
		RequestID:  w.RequestID,
		Status:     raw,
		State:      ParseState(raw),
		InstanceID: w.InstanceID,
		CreatedAt:  parseTime(w.CreatedAt),
		StartedAt:  parseTime(w.StartedAt),
		FinishedAt: parseTime(w.FinishedAt),
		Error:      parseJobError(w.Error),
	}
	outputs := w.Outputs
	if !hasContent(outputs) {
		outputs = w.Output
	}
	if hasContent(outputs) {
		r.Outputs = outputs
		r.OutputURLs = CollectURLs(outputs)
	}
	return r, &w, nil
}

// hasContent reports whether an outputs document holds anything: a non-empty
// object or list. An empty one, or a lone number or string, is read as no
// outputs at all, so that a success that names none has its outputs fetched
// (and a later answer that has them fills them in) instead of being kept
// without them.
func hasContent(raw json.RawMessage) bool {
	s := bytes.TrimSpace(raw)
	if len(s) < 2 || (s[0] != '{' && s[0] != '[') {
		return false
	}
	return len(bytes.TrimSpace(s[1:len(s)-1])) > 0
}

// Callback is one webhook callback from RunComfy.
type Callback struct {
	ResultResponse
	// DeploymentID is the deployment named in the payload, when it names one; the
	// receiver should trust the deployment its callback URL authenticates instead.
	DeploymentID  string
	QueuePosition *int64
}

// ParseCallback decodes a webhook callback body. Callbacks share /result's
// shape, with one documented exception: the in_queue callback carries no status
// (and no outcome) at all, only the ids and URLs; a payload with neither a status
// nor outputs nor an error is therefore read as queued, with Status left empty. A
// status that is present but unknown stays StateUnknown.
func ParseCallback(data []byte) (*Callback, error) {
	r, w, err := parseResultWire(data)
	if err != nil {
		return nil, err
	}
	cb := &Callback{ResultResponse: *r, DeploymentID: w.DeploymentID}
	if p, ok := parseInt(w.QueuePosition); ok {
		cb.QueuePosition = &p
	}
	if r.Status == "" && r.Outputs == nil && r.Error == nil {
		cb.State = StateQueued
	}
	return cb, nil
}

// decodeObject insists on one JSON object that is I-JSON (RFC 7493): arrays,
// scalars, trailing data, anything but JSON's own whitespace around it, a name
// given twice in any object, and text that is not UTF-8 (or an escape that is
// no character) are all refused, so a caller never acts on half a document or
// on one that two readers would read differently. Names are matched exactly, as
// RunComfy writes them. A member of an unexpected type is not fatal: it is left
// empty and the rest of the object is still read, since upstream is to be
// parsed loosely. The document is read in one pass over its bytes (jsontext):
// the callback endpoint reads one per callback.
func decodeObject(data []byte, w *resultWire) error {
	if i := bytes.IndexFunc(data, func(r rune) bool { return !isJSONSpace(r) }); i < 0 || data[i] != '{' {
		return errors.New("answer is not a JSON object")
	}
	if err := readResultWire(data, w); err != nil {
		return fmt.Errorf("answer is not valid JSON: %w", err)
	}
	return nil
}

// isJSONSpace reports whether r is whitespace in JSON's grammar (RFC 8259).
func isJSONSpace(r rune) bool {
	return r == ' ' || r == '\t' || r == '\n' || r == '\r'
}

// readResultWire reads the one JSON object in data (and nothing after it) into w.
func readResultWire(data []byte, w *resultWire) error {
	dec := jsontext.NewDecoder(bytes.NewBuffer(data))
	if _, err := dec.ReadToken(); err != nil { // '{', as the caller checked
		return err
	}
	for dec.PeekKind() != '}' {
		name, err := dec.ReadToken()
		if err != nil {
			return err
		}
		switch p := w.exact(name.String()).(type) {
		case *string:
			if dec.PeekKind() != '"' {
				err = dec.SkipValue()
				break
			}
			var tok jsontext.Token
			if tok, err = dec.ReadToken(); err == nil {
				*p = tok.String()
			}
		case *json.RawMessage:
			var v jsontext.Value
			if v, err = dec.ReadValue(); err == nil {
				*p = append(json.RawMessage(nil), v...)
			}
		default:
			err = dec.SkipValue()
		}
		if err != nil {
			return err
		}
	}
	if _, err := dec.ReadToken(); err != nil { // '}'
		return err
	}
	if _, err := dec.ReadToken(); err != io.EOF {
		if err == nil {
			err = errors.New("data after the object")
		}
		return err
	}
	return nil
}

// exact is the field of w that the JSON member name fills, or nil.
func (w *resultWire) exact(name string) any {
	switch name {
	case "request_id":
		return &w.RequestID
	case "status":
		return &w.Status
	case "outcome":
		return &w.Outcome
	case "outputs":
		return &w.Outputs
	case "output":
		return &w.Output
	case "error":
		return &w.Error
	case "instance_id":
		return &w.InstanceID
	case "created_at":
		return &w.CreatedAt
	case "started_at":
		return &w.StartedAt
	case "finished_at":
		return &w.FinishedAt
	case "queue_position":
		return &w.QueuePosition
	case "deployment_id":
		return &w.DeploymentID
	}
	return nil
}

func isNull(raw json.RawMessage) bool {
	s := bytes.TrimSpace(raw)
	return len(s) == 0 || bytes.Equal(s, []byte("null"))
}

// CollectURLs returns every output URL in an outputs document, in document order:
// each "url" member of an object, and each string element of a list that is itself
// an http(s) URL (the callback form lists bare URLs). Other strings, such as the
// text channel's captions, are not URLs and are skipped.
func CollectURLs(outputs json.RawMessage) []string {
	dec := jsontext.NewDecoder(bytes.NewBuffer(outputs), jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true))
	var urls []string
	// Walk the token stream rather than unmarshalling into maps: map iteration would
	// lose the document order of node ids.
	type frame struct {
		object bool
		key    bool // in an object, the next token is a key
	}
	var stack []frame
	lastKey := ""
	for {
		tok, err := dec.ReadToken()
		if err != nil {
			return urls
		}
		inObject := len(stack) > 0 && stack[len(stack)-1].object
		isKey := inObject && stack[len(stack)-1].key
		switch k := tok.Kind(); k {
		case '{', '[':
			if inObject {
				stack[len(stack)-1].key = true
			}
			stack = append(stack, frame{object: k == '{', key: k == '{'})
			continue
		case '}', ']':
			stack = stack[:len(stack)-1]
			continue
		case '"':
			t := tok.String()
			switch {
			case isKey:
				lastKey = t
				stack[len(stack)-1].key = false
				continue
			case inObject && lastKey == "url":
				if t != "" {
					urls = append(urls, t)
				}
			case !inObject && isHTTPURL(t):
				urls = append(urls, t)
			}
		}
		if inObject {
			stack[len(stack)-1].key = true
		}
	}
}

func isHTTPURL(s string) bool {
	return strings.HasPrefix(s, "https://") || strings.HasPrefix(s, "http://")
}

// parseJobError reads an error however upstream shaped it: an object with
// type/message, the seed's error/details/debugInfo/errorCode, a plain string, or an
// array of any of these (the first one with content wins; the rest are joined into
// the message).
func parseJobError(raw json.RawMessage) *JobError {
	if isNull(raw) {
		return nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		if s == "" {
			return nil
		}
		return &JobError{Message: s}
	}
	var list []json.RawMessage
	if json.Unmarshal(raw, &list) == nil {
		var first *JobError
		var msgs []string
		for _, item := range list {
			e := parseJobError(item)
			if e == nil {
				continue
			}
			if first == nil {
				first = e
			}
			if e.Message != "" {
				msgs = append(msgs, e.Message)
			}
		}
		if first != nil && len(msgs) > 1 {
			first.Message = strings.Join(msgs, "; ")
		}
		return first
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return &JobError{Message: string(raw)}
	}
	e := &JobError{
		Type:    firstString(m, "type", "error_type", "errorType", "error", "name"),
		Message: firstString(m, "message", "details", "detail", "error_message", "msg"),
		Code:    firstString(m, "errorCode", "error_code", "code"),
	}
	if e.Message == "" && e.Type == "" && e.Code == "" {
		return &JobError{Message: string(raw)}
	}
	return e
}

// firstString returns the first of keys present as a non-empty string or number.
func firstString(m map[string]json.RawMessage, keys ...string) string {
	for _, k := range keys {
		v, ok := m[k]
		if !ok || isNull(v) {
			continue
		}
		var s string
		if json.Unmarshal(v, &s) == nil {
			if s != "" {
				return s
			}
			continue
		}
		var n json.Number
		if json.Unmarshal(v, &n) == nil {
			return n.String()
		}
	}
	return ""
}

// parseTime reads a timestamp leniently; the zero time means absent or unreadable.
// The layouts are the forms seen upstream: RFC 3339 with or without fractions, with
// "Z" or an offset, and the offset-less form that some Python services emit (read
// as UTC).
func parseTime(s string) time.Time {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}
	}
	for _, l := range [...]string{
		time.RFC3339Nano,
		"2006-01-02T15:04:05.999999999",
		"2006-01-02 15:04:05.999999999Z07:00",
		"2006-01-02 15:04:05.999999999",
	} {
		if t, err := time.Parse(l, s); err == nil {
			return t.UTC()
		}
	}
	// Unix seconds, as a number in a string.
	if f, err := strconv.ParseFloat(s, 64); err == nil && f > 0 {
		sec := int64(f)
		return time.Unix(sec, int64((f-float64(sec))*1e9)).UTC()
	}
	return time.Time{}
}
