// Package outputs copies the outputs of succeeded requests from RunComfy's
// storage, which keeps them for about a week, to the operator's object
// storage: durable work taken from a state.WorkQueue, one replica at a time
// per request, retried with back-off, its progress and end recorded on the
// request.
package outputs

import (
	"encoding/json"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
)

// File is one output file of a request: the node that made it, its name,
// and where RunComfy serves it.
type File struct {
	Node, Name, URL string
}

// Files lists the files of an outputs document (RunComfy's per-node
// outputs): every object with an http(s) "url" member, named by its
// "filename" member or the URL's last path segment, and every bare URL in a
// list; text outputs are not files. Nodes come in id order, files in
// document order; a name repeated within a node gets a numbered suffix, so
// that each file has a key of its own.
func Files(outputs json.RawMessage) []File {
	var nodes map[string]json.RawMessage
	if err := json.Unmarshal(outputs, &nodes); err != nil {
		return nil
	}
	ids := make([]string, 0, len(nodes))
	for id := range nodes {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var files []File
	for _, id := range ids {
		var found []File
		walk(nodes[id], func(name, raw string) {
			if !isHTTP(raw) {
				return
			}
			if name == "" {
				name = baseName(raw)
			}
			found = append(found, File{Node: id, Name: name, URL: raw})
		})
		seen := map[string]int{}
		for i := range found {
			n := seen[found[i].Name]
			seen[found[i].Name] = n + 1
			if n > 0 {
				ext := path.Ext(found[i].Name)
				found[i].Name = strings.TrimSuffix(found[i].Name, ext) + "-" + strconv.Itoa(n+1) + ext
			}
		}
		files = append(files, found...)
	}
	return files
}

// walk calls found for every file reference in v: objects with a "url"
// (and their "filename"), and bare strings in lists.
func walk(v json.RawMessage, found func(name, url string)) {
	var obj map[string]json.RawMessage
	if json.Unmarshal(v, &obj) == nil {
		var u, name string
		if raw, ok := obj["url"]; ok && json.Unmarshal(raw, &u) == nil && u != "" {
			if raw, ok := obj["filename"]; ok {
				_ = json.Unmarshal(raw, &name)
			}
			found(safeName(name), u)
			return
		}
		keys := make([]string, 0, len(obj))
		for k := range obj {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			walk(obj[k], found)
		}
		return
	}
	var list []json.RawMessage
	if json.Unmarshal(v, &list) == nil {
		for _, item := range list {
			var s string
			if json.Unmarshal(item, &s) == nil {
				found("", s)
				continue
			}
			walk(item, found)
		}
	}
}

func isHTTP(raw string) bool {
	u, err := url.Parse(raw)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

// baseName is the last segment of a URL's path, or "output".
func baseName(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "output"
	}
	return safeName(path.Base(u.Path))
}

// safeName keeps a file name usable as the last part of an object key: no
// directory, not "." or "..", not empty.
func safeName(name string) string {
	name = path.Base(strings.ReplaceAll(name, "\\", "/"))
	if name == "." || name == ".." || name == "/" || name == "" {
		return ""
	}
	return name
}
