package cli

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/comfygate/comfygate/internal/gatewaytest"
	"github.com/comfygate/comfygate/internal/s3test"
	"github.com/comfygate/comfygate/runcomfy/runcomfysim"
)

// TestCLIUpload: `comfygate upload FILE` stores the file and prints its
// reference; a submit naming it hands RunComfy a URL of exactly those
// bytes. Its type is guessed from the name, or from the bytes; a file that
// is not there, or of a type the gateway does not take, fails as usage or
// as the gateway's refusal.
func TestCLIUpload(t *testing.T) {
	s3 := s3test.Start(t)
	sim := runcomfysim.New(runcomfysim.Options{Manual: true, FetchInputs: true})
	srv := httptest.NewServer(sim.Handler())
	t.Cleanup(srv.Close)
	t.Cleanup(sim.Close)
	g := startGateway(t, gatewaytest.Setup{Upstream: srv.URL, Getenv: s3.Getenv, Args: []string{"--storage-url", s3.URL("cli")}})
	environ := map[string]string{AddrEnv: g.GRPCAddr, DeploymentEnv: cliDeployment}

	dir := t.TempDir()
	data := []byte("\x89PNG\r\n\x1a\n" + strings.Repeat("pixels", 100_000))
	sum := sha256.Sum256(data)
	for _, name := range []string{"photo.png", "no-extension"} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		code, out, errOut := runCLIWait(t, cliCall{env: environ, args: []string{"upload", path}})
		ref := strings.TrimSpace(out)
		if code != ExitOK || !strings.HasPrefix(ref, "comfygate://uploads/up_") {
			t.Fatalf("upload %s: exit %d, stdout %q, stderr %q", name, code, out, errOut)
		}
		input := `{"overrides": {"1": {"inputs": {"image": "` + ref + `"}}}}`
		if id := submitID(t, environ, input); id == "" {
			t.Fatal("no request id")
		}
		rec, _ := sim.LastSubmit()
		if len(rec.Inputs) != 1 || rec.Inputs[0].SHA256 != hex.EncodeToString(sum[:]) || rec.Inputs[0].ContentType != "image/png" {
			t.Errorf("RunComfy fetched %+v", rec.Inputs)
		}
	}

	// --json prints the upload.
	code, out, _ := runCLIWait(t, cliCall{env: environ, args: []string{"upload", "--json", filepath.Join(dir, "photo.png")}})
	var up struct{ Size, Sha256, ContentType string }
	if err := json.Unmarshal([]byte(out), &up); code != ExitOK || err != nil || up.Sha256 != hex.EncodeToString(sum[:]) {
		t.Errorf("upload --json: exit %d, %q (%v)", code, out, err)
	}

	text := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(text, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"upload", filepath.Join(dir, "missing.png")}, ExitUsage, "no such file"},
		{[]string{"upload"}, ExitUsage, "want one FILE"},
		{[]string{"upload", dir}, ExitUsage, "not a regular file"},
		{[]string{"upload", text}, ExitError, "not taken by this gateway"},
		{[]string{"upload", "--type", "image/png", text}, ExitError, "bytes are text/plain"},
	} {
		code, _, errOut := runCLIWait(t, cliCall{env: environ, args: tc.args})
		if code != tc.code || !strings.Contains(errOut, tc.msg) {
			t.Errorf("%v: exit %d, stderr %q; want %d with %q", tc.args, code, errOut, tc.code, tc.msg)
		}
	}
}
