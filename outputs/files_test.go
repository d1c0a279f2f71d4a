package outputs_test

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/comfygate/comfygate/outputs"
)

func TestFiles(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want []outputs.File
	}{
		{"the documented shape", `{"9": {"images": [{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output", "url": "https://cdn.example/o/1.png"}]}, "38:42": {"text": [["a caption"]]}}`,
			[]outputs.File{{Node: "9", Name: "ComfyUI_00001_.png", URL: "https://cdn.example/o/1.png"}}},
		{"nodes in id order, files in document order", `{"b": {"images": [{"url": "https://x/2.png"}, {"url": "https://x/1.png"}]}, "a": {"gifs": [{"url": "https://x/v.gif"}]}}`,
			[]outputs.File{{Node: "a", Name: "v.gif", URL: "https://x/v.gif"}, {Node: "b", Name: "2.png", URL: "https://x/2.png"}, {Node: "b", Name: "1.png", URL: "https://x/1.png"}}},
		{"bare URLs in a list", `{"9": ["https://x/a.png", "not a url", "ftp://x/b.png"]}`,
			[]outputs.File{{Node: "9", Name: "a.png", URL: "https://x/a.png"}}},
		{"a name repeated in a node", `{"9": {"images": [{"filename": "out.png", "url": "https://x/1"}, {"filename": "out.png", "url": "https://x/2"}]}}`,
			[]outputs.File{{Node: "9", Name: "out.png", URL: "https://x/1"}, {Node: "9", Name: "out-2.png", URL: "https://x/2"}}},
		{"names that would leave the prefix", `{"9": {"images": [{"filename": "../../etc/passwd", "url": "https://x/1"}, {"filename": "..", "url": "https://x/dir/"}]}}`,
			[]outputs.File{{Node: "9", Name: "passwd", URL: "https://x/1"}, {Node: "9", Name: "dir", URL: "https://x/dir/"}}},
		{"no files", `{"38:42": {"text": [["only text"]]}}`, nil},
		{"not an object", `[1, 2]`, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := outputs.Files(json.RawMessage(tc.doc)); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Files = %+v\nwant %+v", got, tc.want)
			}
		})
	}
}
