package app

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/internal/s3test"
	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
)

// png is a file the gateway takes as image/png: a PNG signature, then n-8
// bytes that differ from one seed to another.
func png(n int, seed byte) []byte {
	b := make([]byte, n)
	copy(b, "\x89PNG\r\n\x1a\n")
	for i := 8; i < n; i++ {
		b[i] = byte(i*7) ^ seed
	}
	return b
}

func sha(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// uploadsGateway is a gateway with object storage in front of an in-process
// RunComfy simulator that fetches every input URL it is given.
type uploadsGateway struct {
	ctx      context.Context
	api      comfygatev1.GatewayServiceClient
	http     string
	sim      *runcomfysim.Sim
	as       func(key string) context.Context
	keyA     string
	keyB     string
	maxBytes int
}

const (
	uploadKeyA = "uploads-key-a-0123456789abcdef"
	uploadKeyB = "uploads-key-b-0123456789abcdef"
)

func startUploads(t *testing.T, args ...string) *uploadsGateway {
	t.Helper()
	s3 := s3test.Start(t)
	sim := runcomfysim.New(runcomfysim.Options{FetchInputs: true, Manual: true})
	upstream := httptest.NewServer(sim.Handler())
	t.Cleanup(func() {
		upstream.Close()
		sim.Close()
	})
	keys := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keys, []byte("tenant-a "+uploadKeyA+"\ntenant-b "+uploadKeyB+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	getenv := func(name string) string {
		if name == TokenEnv {
			return "sim-token"
		}
		return s3.Getenv(name)
	}
	const maxBytes = 4 << 20
	ctx, api, base := runGateway(t, getenv, append([]string{"--runcomfy-url", upstream.URL, "--api-keys-file", keys,
		"--storage-url", s3.URL("team"), "--upload-max-bytes", "4194304"}, args...)...)
	g := &uploadsGateway{ctx: ctx, api: api, http: base, sim: sim, keyA: uploadKeyA, keyB: uploadKeyB, maxBytes: maxBytes}
	g.as = func(key string) context.Context {
		return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
	}
	return g
}

// post sends body to path over REST as the tenant of key, and returns the
// status and the answer's body.
func (g *uploadsGateway) post(t *testing.T, path, key, ctype string, body io.Reader) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(g.ctx, http.MethodPost, g.http+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	req.Header.Set("Content-Type", ctype)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

// restUpload uploads data over REST and returns the answer's upload.
func (g *uploadsGateway) restUpload(t *testing.T, key, ctype string, data []byte) *comfygatev1.Upload {
	t.Helper()
	code, body := g.post(t, "/v1/uploads", key, ctype, bytes.NewReader(data))
	if code != http.StatusCreated {
		t.Fatalf("POST /v1/uploads: %d %s", code, body)
	}
	var resp struct {
		Upload struct {
			ID        string `json:"id"`
			Reference string `json:"reference"`
			Size      string `json:"size"`
			SHA256    string `json:"sha256"`
			ExpiresAt string `json:"expires_at"`
		} `json:"upload"`
	}
	if err := json.Unmarshal(body, &resp); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	u := resp.Upload
	return &comfygatev1.Upload{Id: u.ID, Reference: u.Reference, Sha256: u.SHA256}
}

// grpcUpload streams data in chunks of chunk bytes, with the size declared
// (or not), and returns the call's answer.
func (g *uploadsGateway) grpcUpload(ctx context.Context, ctype string, data []byte, chunk int, declare bool) (*comfygatev1.UploadResponse, error) {
	stream, err := g.api.Upload(ctx)
	if err != nil {
		return nil, err
	}
	h := &comfygatev1.UploadHeader{ContentType: ctype}
	if declare {
		h.Size = int64(len(data))
	}
	err = stream.Send(&comfygatev1.UploadRequest{Part: &comfygatev1.UploadRequest_Header{Header: h}})
	for off := 0; err == nil && off < len(data); off += chunk {
		err = stream.Send(&comfygatev1.UploadRequest{Part: &comfygatev1.UploadRequest_Chunk{Chunk: data[off:min(off+chunk, len(data))]}})
	}
	// io.EOF from Send: the server ended the call, its status comes next.
	return stream.CloseAndRecv()
}

// TestUploadsReachRunComfy: files uploaded over REST (raw and as a form)
// and over gRPC are referred to in submits; RunComfy (the simulator, which
// fetches every input URL) receives, in their place, URLs that fetch
// exactly the uploaded bytes, and nothing else in the input changes.
// Another tenant's submit naming them is refused before RunComfy is called.
func TestUploadsReachRunComfy(t *testing.T) {
	g := startUploads(t)
	raw := png(3<<20, 1)
	rest := g.restUpload(t, g.keyA, "image/png", raw)
	if rest.GetSha256() != sha(raw) || !strings.HasPrefix(rest.GetReference(), "comfygate://uploads/up_") {
		t.Fatalf("REST upload: %v", rest)
	}

	// A form, as curl -F file=@photo.webp sends it.
	formFile := append([]byte("RIFF\x00\x00\x00\x00WEBPVP"), png(5000, 2)[8:]...)
	var form bytes.Buffer
	mw := multipart.NewWriter(&form)
	_ = mw.WriteField("note", "ignored")
	part, err := mw.CreatePart(textproto.MIMEHeader{
		"Content-Disposition": {`form-data; name="file"; filename="photo.webp"`},
		"Content-Type":        {"image/webp"},
	})
	if err != nil {
		t.Fatal(err)
	}
	part.Write(formFile)
	mw.Close()
	code, body := g.post(t, "/v1/uploads", g.keyA, mw.FormDataContentType(), &form)
	if code != http.StatusCreated || !strings.Contains(string(body), sha(formFile)) || !strings.Contains(string(body), `"content_type":"image/webp"`) {
		t.Fatalf("form upload: %d %s", code, body)
	}
	var formUp struct{ Upload struct{ Reference string } }
	if err := json.Unmarshal(body, &formUp); err != nil {
		t.Fatal(err)
	}

	big := png(2<<20+12345, 3)
	resp, err := g.grpcUpload(g.as(g.keyA), "image/png", big, 300<<10, false)
	if err != nil {
		t.Fatal(err)
	}
	up := resp.GetUpload()
	if up.GetSize() != int64(len(big)) || up.GetSha256() != sha(big) || up.GetContentType() != "image/png" ||
		!up.GetExpiresAt().AsTime().After(up.GetCreatedAt().AsTime()) {
		t.Fatalf("gRPC upload: %v", up)
	}

	// gRPC submit: the references are replaced, the rest stays byte for byte.
	input := `{"overrides": {"10": {"inputs": {"image": "` + rest.GetReference() + `", "seed": 18446744073709551615}},` +
		` "11": {"inputs": {"frames": ["` + up.GetReference() + `", "` + rest.GetReference() + `"]}}}}`
	sub, err := g.api.Submit(g.as(g.keyA), &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: input})
	if err != nil {
		t.Fatal(err)
	}
	rec, ok := g.sim.LastSubmit()
	if !ok || rec.RequestID != sub.GetRequest().GetRequestId() {
		t.Fatalf("RunComfy's last submit: %+v", rec)
	}
	if strings.Contains(string(rec.Body), "comfygate://") || !strings.Contains(string(rec.Body), `"seed": 18446744073709551615}`) {
		t.Errorf("RunComfy received %s", rec.Body)
	}
	want := []struct {
		path, sha string
	}{{"/overrides/10/inputs/image", sha(raw)}, {"/overrides/11/inputs/frames/0", sha(big)}, {"/overrides/11/inputs/frames/1", sha(raw)}}
	if len(rec.Inputs) != len(want) {
		t.Fatalf("RunComfy fetched %+v", rec.Inputs)
	}
	for i, w := range want {
		if in := rec.Inputs[i]; in.Path != w.path || in.SHA256 != w.sha || !strings.HasPrefix(in.URL, "http://127.0.0.1:") {
			t.Errorf("input %d: %+v, want %s with sha %s", i, in, w.path, w.sha)
		}
	}

	// REST submit with the form's upload.
	code, body = g.post(t, "/v1/deployments/dep-1/requests", g.keyA, "application/json",
		strings.NewReader(`{"overrides": {"3": {"inputs": {"image": "`+formUp.Upload.Reference+`"}}}}`))
	if code != http.StatusOK {
		t.Fatalf("REST submit: %d %s", code, body)
	}
	if rec, _ := g.sim.LastSubmit(); len(rec.Inputs) != 1 || rec.Inputs[0].SHA256 != sha(formFile) || rec.Inputs[0].ContentType != "image/webp" {
		t.Errorf("RunComfy fetched %+v", rec.Inputs)
	}

	// Tenant B cannot use tenant A's uploads, by either transport.
	calls := g.sim.Calls(runcomfysim.EndpointSubmit)
	_, err = g.api.Submit(g.as(g.keyB), &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{"image": "` + up.GetReference() + `"}`})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "does not exist or has expired") {
		t.Errorf("tenant B's submit naming A's upload: %v", err)
	}
	code, body = g.post(t, "/v1/deployments/dep-1/requests", g.keyB, "application/json", strings.NewReader(`{"image": "`+rest.GetReference()+`"}`))
	if code != http.StatusBadRequest || !strings.Contains(string(body), rest.GetReference()) {
		t.Errorf("tenant B's REST submit naming A's upload: %d %s", code, body)
	}
	if n := g.sim.Calls(runcomfysim.EndpointSubmit); n != calls {
		t.Errorf("RunComfy was called %d times for refused submits", n-calls)
	}
}

// TestUploadsRefused: over the size limit (declared or not, REST and
// gRPC), of a type not taken or bytes of another kind, empty, without a
// key: each refused with its own status and a message that says why.
func TestUploadsRefused(t *testing.T) {
	g := startUploads(t)
	over := png(g.maxBytes+1, 4)
	html := []byte("<!DOCTYPE html><html><body>not an image</body></html>")
	documented := uploadStatuses(t, g.http)
	if !documented["201"] {
		t.Errorf("the OpenAPI document does not document 201 for POST /v1/uploads: %v", documented)
	}
	for _, tc := range []struct {
		name, key, ctype string
		body             io.Reader
		code             int
		msg              string
	}{
		{"over the limit", g.keyA, "image/png", bytes.NewReader(over), http.StatusRequestEntityTooLarge, "upload is larger than 4194304 bytes"},
		{"over the limit, chunked", g.keyA, "image/png", io.MultiReader(bytes.NewReader(over)), http.StatusRequestEntityTooLarge, "upload is larger than 4194304 bytes"},
		// Past what the route reads of a body (the limit and a form's framing).
		{"far over the limit, chunked", g.keyA, "image/png", io.MultiReader(bytes.NewReader(png(g.maxBytes+200<<10, 4))), http.StatusRequestEntityTooLarge, "upload is larger than 4194304 bytes"},
		{"a type not taken", g.keyA, "application/pdf", strings.NewReader("%PDF-1.4"), http.StatusUnsupportedMediaType, "takes image/*, video/*, audio/*"},
		{"html as an image", g.keyA, "image/png", bytes.NewReader(html), http.StatusUnsupportedMediaType, "bytes are text/html"},
		{"no type", g.keyA, "", bytes.NewReader(png(100, 1)), http.StatusUnsupportedMediaType, "missing"},
		{"empty", g.keyA, "image/png", strings.NewReader(""), http.StatusBadRequest, "empty"},
		{"no key", "", "image/png", bytes.NewReader(png(100, 1)), http.StatusUnauthorized, ""},
		{"a form without a file", g.keyA, "multipart/form-data; boundary=b", strings.NewReader("--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--b--\r\n"), http.StatusBadRequest, "no file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := g.post(t, "/v1/uploads", tc.key, tc.ctype, tc.body)
			if code != tc.code || !strings.Contains(string(body), tc.msg) {
				t.Errorf("POST /v1/uploads: %d %s; want %d with %q", code, body, tc.code, tc.msg)
			}
			if !documented[strconv.Itoa(code)] {
				t.Errorf("POST /v1/uploads answered %d, which the OpenAPI document does not document", code)
			}
		})
	}
	for _, tc := range []struct {
		name, ctype string
		data        []byte
		declare     bool
		code        codes.Code
		reason      string
	}{
		{"over the limit, declared", "image/png", over, true, codes.InvalidArgument, "BODY_TOO_LARGE"},
		{"over the limit", "image/png", over, false, codes.InvalidArgument, "BODY_TOO_LARGE"},
		{"a type not taken", "text/plain", []byte("hello"), false, codes.InvalidArgument, "UNSUPPORTED_MEDIA_TYPE"},
		{"shorter than declared", "image/png", png(1000, 1), false, codes.OK, ""},
	} {
		t.Run("gRPC "+tc.name, func(t *testing.T) {
			_, err := g.grpcUpload(g.as(g.keyA), tc.ctype, tc.data, 256<<10, tc.declare)
			st := status.Convert(err)
			if st.Code() != tc.code {
				t.Fatalf("Upload = %v, want %v", err, tc.code)
			}
			if tc.reason != "" && !hasReason(st, tc.reason) {
				t.Errorf("Upload = %v, want reason %s", st.Details(), tc.reason)
			}
		})
	}
	// A form cut short (no closing boundary) is refused, not stored short.
	cut := "--XYZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n" + string(png(3000, 5))
	for _, body := range []string{cut, cut + "\r\n--X"} {
		code, answer := g.post(t, "/v1/uploads", g.keyA, "multipart/form-data; boundary=XYZ", strings.NewReader(body))
		if code != http.StatusBadRequest || !strings.Contains(string(answer), "ended before the file did") {
			t.Errorf("a form cut short: %d %s", code, answer)
		}
	}
	// A Content-Length over the limit is answered at once, before any of
	// the body is read: the client sends the headers and waits.
	conn, err := net.Dial("tcp", strings.TrimPrefix(g.http, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /v1/uploads HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\nContent-Type: image/png\r\nContent-Length: 200000000\r\n\r\n\x89PNG", g.keyA)
	if err := conn.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer to an over-size Content-Length: %v", err)
	}
	answer, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(string(answer), "upload is larger than 4194304 bytes") {
		t.Errorf("an over-size Content-Length: %d %s", resp.StatusCode, answer)
	}

	// A size declared and not kept.
	stream, err := g.api.Upload(g.as(g.keyA))
	if err != nil {
		t.Fatal(err)
	}
	_ = stream.Send(&comfygatev1.UploadRequest{Part: &comfygatev1.UploadRequest_Header{Header: &comfygatev1.UploadHeader{ContentType: "image/png", Size: 2000}}})
	_ = stream.Send(&comfygatev1.UploadRequest{Part: &comfygatev1.UploadRequest_Chunk{Chunk: png(1000, 1)}})
	if _, err := stream.CloseAndRecv(); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "declared size") {
		t.Errorf("an upload shorter than declared: %v", err)
	}
	// A reference to no upload, or a malformed one, refuses the submit.
	for _, ref := range []string{"comfygate://uploads/up_aaaaaaaaaaaaaaaaaaaaaaaaaa", "comfygate://uploads/nope"} {
		_, err := g.api.Submit(g.as(g.keyA), &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{"a": ["` + ref + `"]}`})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), ref) {
			t.Errorf("submit naming %s: %v", ref, err)
		}
	}
	if n := g.sim.Calls(runcomfysim.EndpointSubmit); n != 0 {
		t.Errorf("RunComfy was called %d times", n)
	}
}

// uploadStatuses are the statuses the served OpenAPI document gives POST
// /v1/uploads.
func uploadStatuses(t *testing.T, base string) map[string]bool {
	t.Helper()
	resp, err := http.Get(base + "/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var doc struct {
		Paths map[string]struct {
			Post struct {
				Responses map[string]json.RawMessage `json:"responses"`
			} `json:"post"`
		} `json:"paths"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for code := range doc.Paths["/v1/uploads"].Post.Responses {
		out[code] = true
	}
	return out
}

func hasReason(st *status.Status, reason string) bool {
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok && ei.GetReason() == reason {
			return true
		}
	}
	return false
}

// TestUploadsNeedStorage: without --storage-url, Upload and a submit naming
// an upload are FAILED_PRECONDITION, saying why; a submit that merely
// mentions the scheme inside a longer text goes through.
func TestUploadsNeedStorage(t *testing.T) {
	ctx, api, base := runGateway(t, func(string) string { return "" }, "--simulate")
	for {
		_, err := api.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{"a": "comfygate://uploads/up_aaaaaaaaaaaaaaaaaaaaaaaaaa"}`})
		if status.Code(err) == codes.Unavailable {
			continue // not serving yet
		}
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "--storage-url") {
			t.Fatalf("submit naming an upload: %v", err)
		}
		break
	}
	if _, err := api.Submit(ctx, &comfygatev1.SubmitRequest{DeploymentId: "dep-1", InputJson: `{"a": "see comfygate://uploads/x"}`}); err != nil {
		t.Errorf("submit mentioning the scheme: %v", err)
	}
	stream, err := api.Upload(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.CloseAndRecv(); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("Upload: %v", err)
	}
	resp, err := http.Post(base+"/v1/uploads", "image/png", bytes.NewReader(png(100, 1)))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "--storage-url") {
		t.Errorf("POST /v1/uploads: %d %s", resp.StatusCode, body)
	}
}
