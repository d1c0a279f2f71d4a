// Package storage keeps files in an S3-compatible object store: outputs the
// gateway copies out of RunComfy before their links expire, and inputs
// clients upload through the gateway. A Store is one bucket and a key prefix
// in it, named by a storage URL (--storage-url):
//
//	s3://bucket/prefix?endpoint=http://127.0.0.1:8333&region=us-east-1
//
// Credentials never appear in the URL; they come from the usual AWS
// variables or the shared credentials file (see Config.Getenv).
//
// The client is minio-go: a small dependency tree, streaming multipart
// uploads of unknown size, presigned URLs, and a record of working with the
// S3 implementations teams actually run (AWS, MinIO, Ceph, R2, Versity).
package storage

import (
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"
)

// awsEndpoint is where a storage URL without endpoint= points.
const awsEndpoint = "s3.amazonaws.com"

// defaultRegion is the region requests are signed for when the URL names
// none. Most S3-compatible servers accept any region; on AWS a bucket
// elsewhere answers with an error naming its region.
const defaultRegion = "us-east-1"

// Config says where a Store keeps its objects and how it reaches them.
// ParseURL fills everything but Getenv.
type Config struct {
	// Bucket is the bucket's name.
	Bucket string
	// Prefix is prepended to every key (with a "/"); empty for the bucket's
	// root. It has no leading or trailing slash and no empty, "." or ".."
	// segment.
	Prefix string
	// Endpoint is the server's host[:port].
	Endpoint string
	// Secure selects https.
	Secure bool
	// Region is the region requests are signed for.
	Region string
	// PathStyle puts the bucket in the path (http://host/bucket/key) rather
	// than in the host name (http://bucket.host/key). Self-hosted servers
	// usually need path style; AWS prefers virtual hosts.
	PathStyle bool
	// PublicBase, when set, is the public URL under which the objects below
	// Prefix are served (a CDN or a public bucket): Presign returns
	// PublicBase + "/" + the key without Prefix, with no signature and no
	// expiry. Nil for a private bucket.
	PublicBase *url.URL
	// Getenv looks up the credentials' environment variables: pass
	// os.Getenv. It is a field so that tests never read the real
	// environment; New refuses a nil one.
	Getenv func(string) string
}

// String returns the storage URL c stands for (which holds no secrets).
func (c Config) String() string {
	q := url.Values{}
	if c.Endpoint != awsEndpoint {
		scheme := "http"
		if c.Secure {
			scheme = "https"
		}
		q.Set("endpoint", scheme+"://"+c.Endpoint)
	}
	q.Set("region", c.Region)
	q.Set("path_style", strconv.FormatBool(c.PathStyle))
	if c.PublicBase != nil {
		q.Set("public_base", c.PublicBase.String())
	}
	u := url.URL{Scheme: "s3", Host: c.Bucket, Path: "/" + c.Prefix, RawQuery: q.Encode()}
	return u.String()
}

// ParseURL parses a storage URL:
//
//	s3://bucket[/prefix][?endpoint=URL][&region=R][&path_style=BOOL][&public_base=URL]
//
// endpoint is http://host:port, https://host or a bare host[:port] (https);
// without it the store is AWS S3 (virtual-host style). path_style defaults
// to true when an endpoint is given. region defaults to us-east-1.
// Errors say what is wrong without repeating the URL, which may hold
// something that should not reach a log.
func ParseURL(raw string) (Config, error) {
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // url.Error repeats the whole URL
		}
		return Config{}, fmt.Errorf("storage URL: %w", err)
	}
	if u.Scheme != "s3" {
		return Config{}, errors.New("storage URL: scheme must be s3 (s3://bucket/prefix?endpoint=...)")
	}
	if u.User != nil {
		return Config{}, errors.New("storage URL: credentials do not belong in the URL; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or use a shared credentials file")
	}
	if u.Opaque != "" || u.Host == "" {
		return Config{}, errors.New("storage URL: no bucket (want s3://bucket/prefix)")
	}
	if u.Fragment != "" {
		return Config{}, errors.New("storage URL: a fragment (#...) means nothing here")
	}
	cfg := Config{Bucket: u.Host, Region: defaultRegion, Endpoint: awsEndpoint, Secure: true}
	if err := s3utils.CheckValidBucketNameStrict(cfg.Bucket); err != nil {
		return Config{}, fmt.Errorf("storage URL: bucket %q: %w", cfg.Bucket, err)
	}
	if cfg.Prefix, err = cleanPrefix(u.Path); err != nil {
		return Config{}, fmt.Errorf("storage URL: prefix: %w", err)
	}

	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return Config{}, errors.New("storage URL: query is not well formed")
	}
	pathStyle := ""
	for name, vals := range q {
		if len(vals) != 1 {
			return Config{}, fmt.Errorf("storage URL: parameter %q given %d times", name, len(vals))
		}
		v := vals[0]
		switch name {
		case "endpoint":
			if cfg.Endpoint, cfg.Secure, err = parseEndpoint(v); err != nil {
				return Config{}, fmt.Errorf("storage URL: endpoint: %w", err)
			}
		case "region":
			if v == "" || strings.ContainsAny(v, " /") {
				return Config{}, errors.New("storage URL: region must be a region name such as us-east-1")
			}
			cfg.Region = v
		case "path_style":
			pathStyle = v
		case "public_base":
			if cfg.PublicBase, err = parsePublicBase(v); err != nil {
				return Config{}, fmt.Errorf("storage URL: public_base: %w", err)
			}
		default:
			// The value is not repeated: a misplaced secret_key=... must not
			// end up in a log.
			return Config{}, fmt.Errorf("storage URL: unknown parameter %q (known: endpoint, region, path_style, public_base)", name)
		}
	}
	cfg.PathStyle = cfg.Endpoint != awsEndpoint
	if pathStyle != "" {
		if cfg.PathStyle, err = strconv.ParseBool(pathStyle); err != nil {
			return Config{}, errors.New("storage URL: path_style must be true or false")
		}
	}
	return cfg, nil
}

// cleanPrefix turns the URL's path into a key prefix, refusing segments that
// would make keys ambiguous or walk out of the prefix on a file-system
// backed server.
func cleanPrefix(p string) (string, error) {
	p = strings.Trim(p, "/")
	if p == "" {
		return "", nil
	}
	for _, seg := range strings.Split(p, "/") {
		switch seg {
		case "":
			return "", errors.New("empty segment (//)")
		case ".", "..":
			return "", fmt.Errorf("%q segment", seg)
		}
	}
	return p, nil
}

// parseEndpoint accepts http://host[:port], https://host[:port] and a bare
// host[:port] (taken as https, the safe guess for a remote server).
func parseEndpoint(v string) (host string, secure bool, err error) {
	if v == "" {
		return "", false, errors.New("empty")
	}
	if !strings.Contains(v, "://") {
		v = "https://" + v
	}
	u, err := url.Parse(v)
	if err != nil {
		return "", false, errors.New("not a URL or host[:port]")
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return "", false, errors.New("scheme must be http or https")
	case u.User != nil:
		return "", false, errors.New("credentials do not belong in the endpoint")
	case u.Host == "":
		return "", false, errors.New("no host")
	case u.Path != "" && u.Path != "/":
		return "", false, errors.New("must not have a path (the bucket goes in s3://bucket)")
	case u.RawQuery != "" || u.Fragment != "":
		return "", false, errors.New("must not have a query or fragment")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return "", false, errors.New("bad port")
		}
	}
	return u.Host, u.Scheme == "https", nil
}

// parsePublicBase accepts an absolute http(s) URL with no query; a trailing
// slash is dropped.
func parsePublicBase(v string) (*url.URL, error) {
	u, err := url.Parse(v)
	if err != nil {
		return nil, errors.New("not a URL")
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, errors.New("must be an http or https URL")
	case u.Host == "":
		return nil, errors.New("no host")
	case u.User != nil:
		return nil, errors.New("credentials do not belong in a public URL")
	case u.RawQuery != "" || u.Fragment != "":
		return nil, errors.New("must not have a query or fragment")
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	return u, nil
}

// credentials finds the credentials the way the AWS tools do, minus the
// instance-metadata and web-identity sources: AWS_ACCESS_KEY_ID,
// AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN first, else the profile
// AWS_PROFILE (or "default") of the shared credentials file
// AWS_SHARED_CREDENTIALS_FILE (or ~/.aws/credentials). Everything is read
// through getenv: minio-go's own environment providers call os.Getenv.
// The file is read here, once, so a missing or broken file is reported at
// start-up rather than on the first upload.
func (c Config) credentials() (*credentials.Credentials, error) {
	getenv := c.Getenv
	id, secret := getenv("AWS_ACCESS_KEY_ID"), getenv("AWS_SECRET_ACCESS_KEY")
	switch {
	case id != "" && secret != "":
		return credentials.NewStaticV4(id, secret, getenv("AWS_SESSION_TOKEN")), nil
	case id != "":
		return nil, errors.New("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not")
	case secret != "":
		return nil, errors.New("AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not")
	}
	file := getenv("AWS_SHARED_CREDENTIALS_FILE")
	if file == "" {
		home := getenv("HOME")
		if home == "" {
			return nil, errors.New("no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_SHARED_CREDENTIALS_FILE (HOME is not set, so ~/.aws/credentials cannot be found)")
		}
		file = filepath.Join(home, ".aws", "credentials")
	}
	profile := getenv("AWS_PROFILE")
	if profile == "" {
		profile = "default"
	}
	creds := credentials.NewFileAWSCredentials(file, profile)
	v, err := creds.GetWithContext(nil)
	if err != nil {
		return nil, fmt.Errorf("no credentials in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, and profile %q of %s: %w", profile, file, fileError(err))
	}
	if v.AccessKeyID == "" || v.SecretAccessKey == "" {
		return nil, fmt.Errorf("profile %q of %s has no aws_access_key_id and aws_secret_access_key", profile, file)
	}
	return creds, nil
}

// fileError keeps what helps from an error reading the shared credentials
// file, except that the ini parser quotes the line it could not parse, which
// may hold a secret: those errors become a sentence of our own.
func fileError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return err // names the file and what the OS said, no contents
	}
	msg := err.Error()
	if strings.HasPrefix(msg, "section ") && strings.HasSuffix(msg, "does not exist") {
		return errors.New("no such profile")
	}
	for _, p := range []string{"key-value delimiter not found", "empty key name", "missing closing key quote", "unclosed section", "BOM:"} {
		if strings.Contains(msg, p) {
			return errors.New("not a valid credentials file")
		}
	}
	return err
}
