package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
)

// uploadChunk is the size of each message of an upload: small enough to
// stay far below any message limit, large enough to cost little framing.
const uploadChunk = 256 << 10

// upload is the file an upload sends, opened before anything is dialled so
// that a typo in its name costs no round trip.
type upload struct {
	*os.File
	size      int64
	mediaType string
}

// openUpload opens name and settles its media type: mediaType when given,
// else the one its extension names, else the one its first bytes show.
func openUpload(name, mediaType string) (*upload, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("reading the file: %w", err)
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = errors.New("not a regular file")
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("reading the file %s: %w", name, err)
	}
	if mediaType == "" {
		// What the bytes are, when they say (a PNG named photo.jpg is a
		// PNG, and the gateway checks); else what the name says.
		head := make([]byte, 512)
		n, _ := io.ReadFull(f, head)
		mediaType, _, _ = strings.Cut(http.DetectContentType(head[:n]), ";")
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			f.Close()
			return nil, fmt.Errorf("reading the file %s: %w", name, err)
		}
		if byName := mime.TypeByExtension(filepath.Ext(name)); byName != "" && (mediaType == "application/octet-stream" || strings.HasPrefix(mediaType, "text/")) {
			mediaType = byName
		}
	}
	return &upload{File: f, size: fi.Size(), mediaType: mediaType}, nil
}

// upload streams the file to the gateway and returns what it stored.
func (c *cli) upload(ctx context.Context) (*comfygatev1.Upload, error) {
	stream, err := c.client.Upload(ctx)
	if err != nil {
		return nil, err
	}
	err = stream.Send(&comfygatev1.UploadRequest{Part: &comfygatev1.UploadRequest_Header{
		Header: &comfygatev1.UploadHeader{ContentType: c.file.mediaType, Size: c.file.size},
	}})
	buf := make([]byte, uploadChunk)
	for err == nil {
		n, rerr := io.ReadFull(c.file, buf)
		if n > 0 {
			err = stream.Send(&comfygatev1.UploadRequest{Part: &comfygatev1.UploadRequest_Chunk{Chunk: buf[:n]}})
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil && err == nil {
			return nil, fmt.Errorf("reading the file: %w", rerr)
		}
	}
	// A Send that failed (io.EOF) means the gateway ended the call: its
	// status comes with CloseAndRecv.
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return nil, err
	}
	return resp.GetUpload(), nil
}
