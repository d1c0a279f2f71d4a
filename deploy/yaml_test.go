package deploy

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

func TestParseYAML(t *testing.T) {
	src := `# a comment
a: 1   # a trailing comment
b:
- x
- {k: "v: #1", l: [1, 'it''s']}
- name: n
  value: "0.0.0.0:80"
- - nested
c:
  d: "quoted # not a comment"
  e:
  f: http://example.com/x#y
---
- second
`
	want := []any{
		map[string]any{
			"a": "1",
			"b": []any{
				"x",
				map[string]any{"k": "v: #1", "l": []any{"1", "it's"}},
				map[string]any{"name": "n", "value": "0.0.0.0:80"},
				[]any{"nested"},
			},
			"c": map[string]any{"d": "quoted # not a comment", "e": nil, "f": "http://example.com/x#y"},
		},
		[]any{"second"},
	}
	got, err := parseYAML(src)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %#v\nwant %#v", got, want)
	}
	for _, bad := range []string{
		"a: &anchor 1",
		"a: *alias",
		"a: |\n  text",
		"a: 1\na: 2",
		"a:\n\tb: 1",
		"a: b: c",
		"a: {b: 1",
		"a: 1\n  b: 2",
	} {
		if _, err := parseYAML(bad); err == nil {
			t.Errorf("parseYAML(%q) accepted it", bad)
		}
	}
}

// parseYAML reads the subset of YAML the Kubernetes and compose files are
// written in, since the module has no YAML library: block mappings and
// sequences, flow mappings and sequences on one line, plain and quoted
// scalars, comments, and "---" between documents. Mappings are
// map[string]any, sequences []any, scalars their text (string) and empty
// values nil. Anything else (anchors, aliases, tags, block scalars,
// multi-line flow or plain scalars, tabs) is an error, so that a file that
// leaves the subset fails the test instead of being misread.
func parseYAML(src string) ([]any, error) {
	var docs []any
	var cur []yamlLine
	flush := func() error {
		if len(cur) == 0 {
			return nil
		}
		p := &yamlParser{lines: cur}
		v, err := p.block()
		if err != nil {
			return err
		}
		if p.i < len(p.lines) {
			return p.errorf("unexpected indentation or content")
		}
		docs = append(docs, v)
		cur = nil
		return nil
	}
	for n, raw := range strings.Split(src, "\n") {
		raw = strings.TrimRight(raw, " \r")
		body := strings.TrimLeft(raw, " ")
		if strings.HasPrefix(body, "\t") {
			return nil, fmt.Errorf("line %d: tab in indentation", n+1)
		}
		indent := len(raw) - len(body)
		body = strings.TrimRight(stripComment(body), " ")
		switch {
		case body == "":
			continue
		case indent == 0 && body == "---":
			if err := flush(); err != nil {
				return nil, err
			}
			continue
		case strings.HasPrefix(body, "%") || strings.HasPrefix(body, "..."):
			return nil, fmt.Errorf("line %d: directives and document ends are not supported", n+1)
		}
		cur = append(cur, yamlLine{num: n + 1, indent: indent, text: body})
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return docs, nil
}

type yamlLine struct {
	num    int
	indent int
	text   string // without indentation, comment and trailing spaces
}

type yamlParser struct {
	lines []yamlLine
	i     int
}

func (p *yamlParser) errorf(format string, args ...any) error {
	num := 0
	if p.i < len(p.lines) {
		num = p.lines[p.i].num
	} else if len(p.lines) > 0 {
		num = p.lines[len(p.lines)-1].num
	}
	return fmt.Errorf("line %d: %s", num, fmt.Sprintf(format, args...))
}

// block parses the node starting at the current line, at its indentation.
func (p *yamlParser) block() (any, error) {
	l := p.lines[p.i]
	if isSeqItem(l.text) {
		return p.sequence(l.indent)
	}
	if _, _, ok := splitKey(l.text); ok {
		return p.mapping(l.indent)
	}
	return nil, p.errorf("want a mapping or a sequence, got %q", l.text)
}

func isSeqItem(text string) bool { return text == "-" || strings.HasPrefix(text, "- ") }

func (p *yamlParser) sequence(indent int) (any, error) {
	out := []any{}
	for p.i < len(p.lines) {
		l := p.lines[p.i]
		if l.indent < indent || (l.indent == indent && !isSeqItem(l.text)) {
			break
		}
		if l.indent > indent {
			return nil, p.errorf("unexpected indentation")
		}
		rest := strings.TrimLeft(l.text[1:], " ")
		switch {
		case rest == "":
			p.i++
			if p.i < len(p.lines) && p.lines[p.i].indent > indent {
				v, err := p.block()
				if err != nil {
					return nil, err
				}
				out = append(out, v)
			} else {
				out = append(out, nil)
			}
		case isSeqItem(rest) || keyed(rest):
			// "- key: value" or "- - x": the item is a block at the column
			// of its content.
			p.lines[p.i] = yamlLine{num: l.num, indent: indent + len(l.text) - len(rest), text: rest}
			v, err := p.block()
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		default:
			p.i++
			v, err := inline(rest)
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", l.num, err)
			}
			out = append(out, v)
		}
	}
	return out, nil
}

// keyed reports whether text is "key: ..." rather than a scalar or flow value.
func keyed(text string) bool {
	_, _, ok := splitKey(text)
	return ok
}

func (p *yamlParser) mapping(indent int) (any, error) {
	out := map[string]any{}
	for p.i < len(p.lines) {
		l := p.lines[p.i]
		if l.indent < indent || (l.indent == indent && isSeqItem(l.text)) {
			break
		}
		if l.indent > indent {
			return nil, p.errorf("unexpected indentation")
		}
		key, rest, ok := splitKey(l.text)
		if !ok {
			return nil, p.errorf("want key: value, got %q", l.text)
		}
		if _, dup := out[key]; dup {
			return nil, p.errorf("key %q given twice", key)
		}
		p.i++
		if rest != "" {
			v, err := inline(rest)
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", l.num, err)
			}
			out[key] = v
			continue
		}
		if p.i < len(p.lines) {
			next := p.lines[p.i]
			if next.indent > indent || (next.indent == indent && isSeqItem(next.text)) {
				v, err := p.block()
				if err != nil {
					return nil, err
				}
				out[key] = v
				continue
			}
		}
		out[key] = nil
	}
	return out, nil
}

// splitKey splits "key: value" (or "key:") into its key and the rest; ok is
// false for a line that is not a mapping entry.
func splitKey(text string) (key, rest string, ok bool) {
	if text == "" || strings.ContainsRune("{[&*!|>", rune(text[0])) {
		return "", "", false
	}
	var after string
	if text[0] == '"' || text[0] == '\'' {
		end := quotedEnd(text)
		if end < 0 {
			return "", "", false
		}
		k, err := unquote(text[:end])
		if err != nil {
			return "", "", false
		}
		key, after = k, text[end:]
		if !strings.HasPrefix(after, ":") {
			return "", "", false
		}
		after = after[1:]
	} else {
		i := strings.Index(text, ": ")
		switch {
		case i >= 0:
			key, after = text[:i], text[i+1:]
		case strings.HasSuffix(text, ":"):
			key, after = text[:len(text)-1], ""
		default:
			return "", "", false
		}
	}
	if after != "" && after[0] != ' ' {
		return "", "", false
	}
	return key, strings.TrimSpace(after), true
}

// quotedEnd is the index just past the quoted scalar text starts with, or -1.
func quotedEnd(text string) int {
	q := text[0]
	for i := 1; i < len(text); i++ {
		switch {
		case q == '"' && text[i] == '\\':
			i++
		case text[i] == q && q == '\'' && i+1 < len(text) && text[i+1] == '\'':
			i++
		case text[i] == q:
			return i + 1
		}
	}
	return -1
}

func unquote(s string) (string, error) {
	if s[0] == '\'' {
		return strings.ReplaceAll(s[1:len(s)-1], "''", "'"), nil
	}
	return strconv.Unquote(s)
}

// stripComment removes a comment: a '#' at the start or after a space,
// outside quotes. A quote opens a quoted scalar only where one can start.
func stripComment(s string) string {
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote == '"' && c == '\\':
			i++
		case quote != 0 && c == quote:
			if quote == '\'' && i+1 < len(s) && s[i+1] == '\'' {
				i++
				continue
			}
			quote = 0
		case quote != 0:
		case (c == '"' || c == '\'') && (i == 0 || strings.ContainsRune(" [{,:", rune(s[i-1]))):
			quote = c
		case c == '#' && (i == 0 || s[i-1] == ' '):
			return s[:i]
		}
	}
	return s
}

// inline parses a value written on one line: flow, quoted or plain.
func inline(s string) (any, error) {
	switch s[0] {
	case '&', '*', '!', '|', '>', '@', '`':
		return nil, fmt.Errorf("unsupported YAML: %q", s)
	case '{', '[', '"', '\'':
		f := &flowParser{s: s}
		v, err := f.value()
		if err != nil {
			return nil, err
		}
		if f.skip(); f.i != len(s) {
			return nil, fmt.Errorf("trailing text after %q", s[:f.i])
		}
		return v, nil
	}
	if strings.Contains(s, ": ") {
		return nil, fmt.Errorf("plain scalar holds \": \": %q", s)
	}
	return s, nil
}

type flowParser struct {
	s string
	i int
}

func (f *flowParser) skip() {
	for f.i < len(f.s) && f.s[f.i] == ' ' {
		f.i++
	}
}

func (f *flowParser) value() (any, error) {
	f.skip()
	if f.i >= len(f.s) {
		return nil, fmt.Errorf("unexpected end of %q", f.s)
	}
	switch f.s[f.i] {
	case '{':
		return f.mapping()
	case '[':
		return f.sequence()
	case '"', '\'':
		return f.quoted()
	case '&', '*', '!', '|', '>':
		return nil, fmt.Errorf("unsupported YAML in %q", f.s)
	}
	start := f.i
	for f.i < len(f.s) && !strings.ContainsRune(",[]{}", rune(f.s[f.i])) {
		f.i++
	}
	v := strings.TrimSpace(f.s[start:f.i])
	if v == "" {
		return nil, nil
	}
	return v, nil
}

func (f *flowParser) quoted() (string, error) {
	end := quotedEnd(f.s[f.i:])
	if end < 0 {
		return "", fmt.Errorf("unterminated quote in %q", f.s)
	}
	v, err := unquote(f.s[f.i : f.i+end])
	f.i += end
	return v, err
}

func (f *flowParser) sequence() (any, error) {
	f.i++ // [
	out := []any{}
	for {
		f.skip()
		if f.i < len(f.s) && f.s[f.i] == ']' {
			f.i++
			return out, nil
		}
		v, err := f.value()
		if err != nil {
			return nil, err
		}
		out = append(out, v)
		f.skip()
		switch {
		case f.i < len(f.s) && f.s[f.i] == ',':
			f.i++
		case f.i < len(f.s) && f.s[f.i] == ']':
		default:
			return nil, fmt.Errorf("want , or ] in %q", f.s)
		}
	}
}

func (f *flowParser) mapping() (any, error) {
	f.i++ // {
	out := map[string]any{}
	for {
		f.skip()
		if f.i < len(f.s) && f.s[f.i] == '}' {
			f.i++
			return out, nil
		}
		var key string
		if f.i < len(f.s) && (f.s[f.i] == '"' || f.s[f.i] == '\'') {
			k, err := f.quoted()
			if err != nil {
				return nil, err
			}
			key = k
		} else {
			start := f.i
			for f.i < len(f.s) && f.s[f.i] != ':' && !strings.ContainsRune(",[]{}", rune(f.s[f.i])) {
				f.i++
			}
			key = strings.TrimSpace(f.s[start:f.i])
		}
		if f.i >= len(f.s) || f.s[f.i] != ':' {
			return nil, fmt.Errorf("want key: value in %q", f.s)
		}
		f.i++
		if _, dup := out[key]; dup {
			return nil, fmt.Errorf("key %q given twice in %q", key, f.s)
		}
		v, err := f.value()
		if err != nil {
			return nil, err
		}
		out[key] = v
		f.skip()
		switch {
		case f.i < len(f.s) && f.s[f.i] == ',':
			f.i++
		case f.i < len(f.s) && f.s[f.i] == '}':
		default:
			return nil, fmt.Errorf("want , or } in %q", f.s)
		}
	}
}
