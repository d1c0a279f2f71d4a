package storage

import (
	"context"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// secret appears in bad URLs and credential files: no error may repeat it.
const secret = "SECRETxSECRETxSECRET"

func mustURL(t *testing.T, raw string) *url.URL {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// TestParseURL: the accepted forms give the configuration they say, with
// defaults that suit a self-hosted server when an endpoint is named and AWS
// when not.
func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		raw  string
		want Config
	}{
		{"s3://bucket", Config{Bucket: "bucket", Endpoint: "s3.amazonaws.com", Secure: true, Region: "us-east-1"}},
		{"s3://bucket/", Config{Bucket: "bucket", Endpoint: "s3.amazonaws.com", Secure: true, Region: "us-east-1"}},
		{"s3://my.bucket/a/b/?region=eu-west-1", Config{Bucket: "my.bucket", Prefix: "a/b", Endpoint: "s3.amazonaws.com", Secure: true, Region: "eu-west-1"}},
		{"s3://bucket/prefix?endpoint=http://127.0.0.1:8333&region=us-east-1",
			Config{Bucket: "bucket", Prefix: "prefix", Endpoint: "127.0.0.1:8333", Region: "us-east-1", PathStyle: true}},
		{"s3://bucket?endpoint=https://minio.example.com/",
			Config{Bucket: "bucket", Endpoint: "minio.example.com", Secure: true, Region: "us-east-1", PathStyle: true}},
		{"s3://bucket?endpoint=minio.example.com:9000",
			Config{Bucket: "bucket", Endpoint: "minio.example.com:9000", Secure: true, Region: "us-east-1", PathStyle: true}},
		{"s3://bucket?endpoint=http%3A%2F%2F%5B%3A%3A1%5D%3A9000&path_style=false",
			Config{Bucket: "bucket", Endpoint: "[::1]:9000", Region: "us-east-1"}},
		{"s3://bucket?path_style=true", Config{Bucket: "bucket", Endpoint: "s3.amazonaws.com", Secure: true, Region: "us-east-1", PathStyle: true}},
		{"s3://bucket/p?public_base=https://cdn.example.com/p/",
			Config{Bucket: "bucket", Prefix: "p", Endpoint: "s3.amazonaws.com", Secure: true, Region: "us-east-1", PublicBase: mustURL(t, "https://cdn.example.com/p")}},
	} {
		t.Run(tc.raw, func(t *testing.T) {
			got, err := ParseURL(tc.raw)
			if err != nil {
				t.Fatalf("ParseURL: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("ParseURL(%s)\n got %+v\nwant %+v", tc.raw, got, tc.want)
			}
			// String gives back a URL that means the same.
			again, err := ParseURL(got.String())
			if err != nil {
				t.Fatalf("ParseURL(String() = %s): %v", got, err)
			}
			if !reflect.DeepEqual(again, got) {
				t.Errorf("ParseURL(%s) = %+v, want %+v", got, again, got)
			}
		})
	}
}

// TestParseURLRefuses: each malformed URL is refused with an error that
// says what is wrong and does not repeat a credential that was in it.
func TestParseURLRefuses(t *testing.T) {
	for _, tc := range []struct{ raw, want string }{
		{"", "scheme must be s3"},
		{"https://bucket/p", "scheme must be s3"},
		{"s3://AKIAEXAMPLE:" + secret + "@bucket/p", "credentials do not belong in the URL"},
		{"s3:bucket", "no bucket"},
		{"s3:///prefix", "no bucket"},
		{"s3://Bad_Bucket", "bucket"},
		{"s3://bucket:9000/p", "bucket"},
		{"s3://bucket/a//b", "empty segment"},
		{"s3://bucket/a/../b", `".." segment`},
		{"s3://bucket/./b", `"." segment`},
		{"s3://bucket#x", "fragment"},
		{"s3://bucket/\x7f" + secret, "invalid control character"},
		{"s3://bucket?secret_key=" + secret, `unknown parameter "secret_key"`},
		{"s3://bucket?region=a&region=b", `"region" given 2 times`},
		{"s3://bucket?region=", "region must be"},
		{"s3://bucket?endpoint=", "endpoint: empty"},
		{"s3://bucket?endpoint=ftp://host", "scheme must be http or https"},
		{"s3://bucket?endpoint=http://host/path", "must not have a path"},
		{"s3://bucket?endpoint=http://host?x=1", "must not have a query"},
		{"s3://bucket?endpoint=" + url.QueryEscape("http://ak:"+secret+"@host"), "credentials do not belong in the endpoint"},
		{"s3://bucket?endpoint=http://host:99999", "bad port"},
		{"s3://bucket?endpoint=http://", "no host"},
		{"s3://bucket?path_style=maybe", "path_style must be true or false"},
		{"s3://bucket?public_base=/relative", "public_base: must be an http or https URL"},
		{"s3://bucket?public_base=https://cdn.example.com/?sig=1", "public_base: must not have a query"},
		{"s3://bucket?public_base=" + url.QueryEscape("https://u:"+secret+"@cdn.example.com"), "public_base: credentials"},
		{"s3://bucket?%zz", "query is not well formed"},
	} {
		t.Run(tc.raw, func(t *testing.T) {
			cfg, err := ParseURL(tc.raw)
			if err == nil {
				t.Fatalf("ParseURL(%q) = %+v, want an error", tc.raw, cfg)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error %q repeats the secret", err)
			}
		})
	}
}

// TestCredentials: credentials come from the AWS variables first, then from
// a profile of the shared credentials file, all looked up through Getenv;
// missing or half-set credentials are errors that name what is missing and
// repeat no secret.
func TestCredentials(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "credentials")
	writeFile(t, file, "[default]\naws_access_key_id = FILEDEFAULT\naws_secret_access_key = filesecret\n\n"+
		"[other]\naws_access_key_id = FILEOTHER\naws_secret_access_key = othersecret\naws_session_token = othertoken\n")
	home := filepath.Join(dir, "home")
	writeFile(t, filepath.Join(home, ".aws", "credentials"), "[default]\naws_access_key_id = HOMEKEY\naws_secret_access_key = homesecret\n")
	broken := filepath.Join(dir, "broken")
	writeFile(t, broken, "[default]\naws_secret_access_key "+secret+"\n")

	for _, tc := range []struct {
		name              string
		env               map[string]string
		wantID, wantToken string
		wantErr           string
	}{
		{name: "environment", env: map[string]string{"AWS_ACCESS_KEY_ID": "ENVKEY", "AWS_SECRET_ACCESS_KEY": "envsecret", "AWS_SHARED_CREDENTIALS_FILE": file}, wantID: "ENVKEY"},
		{name: "environment with session token", env: map[string]string{"AWS_ACCESS_KEY_ID": "ENVKEY", "AWS_SECRET_ACCESS_KEY": "envsecret", "AWS_SESSION_TOKEN": "tok"}, wantID: "ENVKEY", wantToken: "tok"},
		{name: "file default profile", env: map[string]string{"AWS_SHARED_CREDENTIALS_FILE": file}, wantID: "FILEDEFAULT"},
		{name: "file named profile", env: map[string]string{"AWS_SHARED_CREDENTIALS_FILE": file, "AWS_PROFILE": "other"}, wantID: "FILEOTHER", wantToken: "othertoken"},
		{name: "file under HOME", env: map[string]string{"HOME": home}, wantID: "HOMEKEY"},
		{name: "key id without secret", env: map[string]string{"AWS_ACCESS_KEY_ID": "ENVKEY", "AWS_SHARED_CREDENTIALS_FILE": file}, wantErr: "AWS_SECRET_ACCESS_KEY is not"},
		{name: "secret without key id", env: map[string]string{"AWS_SECRET_ACCESS_KEY": secret}, wantErr: "AWS_ACCESS_KEY_ID is not"},
		{name: "missing profile", env: map[string]string{"AWS_SHARED_CREDENTIALS_FILE": file, "AWS_PROFILE": "nope"}, wantErr: `profile "nope"`},
		{name: "missing file", env: map[string]string{"AWS_SHARED_CREDENTIALS_FILE": filepath.Join(dir, "absent")}, wantErr: "no such file"},
		{name: "broken file", env: map[string]string{"AWS_SHARED_CREDENTIALS_FILE": broken}, wantErr: "not a valid credentials file"},
		{name: "nothing at all", env: map[string]string{}, wantErr: "no credentials"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Getenv: func(k string) string { return tc.env[k] }}
			creds, err := cfg.credentials()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("credentials() error = %v, want one saying %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), secret) {
					t.Errorf("error %q repeats the secret", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			v, err := creds.GetWithContext(nil)
			if err != nil {
				t.Fatal(err)
			}
			if v.AccessKeyID != tc.wantID || v.SessionToken != tc.wantToken || v.SecretAccessKey == "" {
				t.Errorf("got key %q token %q (secret set: %v), want key %q token %q", v.AccessKeyID, v.SessionToken, v.SecretAccessKey != "", tc.wantID, tc.wantToken)
			}
		})
	}
}

// TestNewRefusesIncompleteConfig: New needs a Getenv (so nothing reads the
// real environment by accident) and the fields ParseURL fills.
func TestNewRefusesIncompleteConfig(t *testing.T) {
	cfg, err := ParseURL("s3://bucket/p?endpoint=http://127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "Getenv") {
		t.Errorf("New without Getenv: %v, want an error naming Getenv", err)
	}
	cfg.Getenv = func(string) string { return "" }
	cfg.Prefix = "/p/"
	if _, err := New(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "prefix") {
		t.Errorf("New with prefix /p/: %v, want an error naming the prefix", err)
	}
}

func writeFile(t *testing.T, name, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
