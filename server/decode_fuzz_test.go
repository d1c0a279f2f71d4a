package server

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"unicode/utf8"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/protobuf/encoding/protojson"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// jsonSpace is the whitespace RFC 8259 allows around a JSON value.
const jsonSpace = " \t\r\n"

// FuzzSubmitBody drives a REST Submit body through the gateway's decoder and then
// Submit's input validation, as a POST /v1/deployments/{id}/requests does. Whatever
// the bytes: no panic; a body both accept reaches RunComfy exactly as sent and is
// one JSON object; a body the decoder refuses gets a message saying why.
func FuzzSubmitBody(f *testing.F) {
	// The same marshaler newGateway installs.
	m := &restMarshaler{JSONPb: &runtime.JSONPb{
		MarshalOptions:   protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true},
		UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
	}}

	paths, err := filepath.Glob(filepath.Join("..", "runcomfy", "testdata", "webhooks", "*.json"))
	if err != nil || len(paths) == 0 {
		f.Fatalf("no fixtures found: %v", err)
	}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{
		`{"seed":18446744073709551615}`,
		`{"n":1e400,"f":0.1000000000000000055511151231257827,"i":-0}`,
		`{"prompt":"\u00e9\ud83d\ude00","dup":1,"dup":2}`,
		" \t\r\n{}\n",
		`[]`, `{}`, `{}}`, `{} {}`, `null`, `"x"`, `1`,
		``, " ", "\n",
		"\xff", "{\"a\":\"\xc3\x28\"}", "\xef\xbb\xbf{}", "{\"a\":\"\x00\"}",
	} {
		f.Add([]byte(s))
	}

	f.Fuzz(func(t *testing.T, body []byte) {
		req := &comfygatev1.SubmitRequest{}
		if err := m.NewDecoder(bytes.NewReader(body)).Decode(req); err != nil {
			if err.Error() == "" {
				t.Fatalf("decoder refused %q with an empty message", body)
			}
			if req.GetInputJson() != "" {
				t.Fatalf("decoder refused %q but set input_json = %q", body, req.GetInputJson())
			}
			return
		}
		in := req.GetInputJson()
		if in != string(body) {
			t.Fatalf("input_json = %q, want the body %q byte for byte", in, body)
		}
		if err := validateInput(in); err != nil {
			if err.Error() == "" {
				t.Fatalf("validateInput refused %q with an empty message", in)
			}
			return
		}
		if !utf8.ValidString(in) {
			t.Fatalf("accepted input_json %q is not valid UTF-8", in)
		}
		if !json.Valid([]byte(in)) {
			t.Fatalf("accepted input_json %q is not valid JSON", in)
		}
		if trimmed := bytes.TrimLeft([]byte(in), jsonSpace); len(trimmed) == 0 || trimmed[0] != '{' {
			t.Fatalf("accepted input_json %q is not a JSON object", in)
		}
	})
}
