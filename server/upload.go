package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/uploads"
)

// Uploads keeps the files tenants upload for their inputs; *uploads.Uploads
// provides it.
type Uploads interface {
	Put(ctx context.Context, tenant, contentType string, size int64, r io.Reader) (uploads.Upload, error)
	Resolve(ctx context.Context, tenant, input string) (string, error)
	MaxBytes() int64
}

// DefaultUploadTimeout bounds one upload: 100 MiB at a modest 2 Mbit/s.
const DefaultUploadTimeout = 10 * time.Minute

// uploadsRoute is Upload over REST: the body is the file.
const (
	uploadsPath  = "/v1/uploads"
	uploadsRoute = "POST " + uploadsPath
)

// uploadChunk is the size of the messages the REST route sends Upload, and
// so what it holds of a body at once.
const uploadChunk = 256 << 10

// uploadFormSlack is what a multipart/form-data body may hold beyond its
// file: the boundaries, the part headers and small fields.
const uploadFormSlack = 64 << 10

// errNoUploads: a gateway without object storage has nowhere to keep an
// upload, nor any to refer to.
var errNoUploads = errors.New("this gateway keeps no uploads: it runs without object storage (--storage-url)")

// Upload stores the streamed file for the caller's tenant.
func (s *Service) Upload(stream grpc.ClientStreamingServer[comfygatev1.UploadRequest, comfygatev1.UploadResponse]) error {
	if s.uploads == nil {
		return errNoUploads
	}
	ctx, cancel := context.WithTimeout(stream.Context(), s.uploadTimeout)
	defer cancel()
	first, err := stream.Recv()
	if errors.Is(err, io.EOF) {
		return &fieldError{field: "header", reason: "missing: the first message must be the header"}
	}
	if err != nil {
		return err
	}
	h := first.GetHeader()
	switch {
	case h == nil:
		return &fieldError{field: "header", reason: "the first message must be the header"}
	case h.GetSize() < 0:
		return &fieldError{field: "header.size", reason: "negative"}
	}
	size := h.GetSize()
	if size == 0 {
		size = -1
	}
	up, err := s.uploads.Put(ctx, tenantOf(ctx), h.GetContentType(), size, &chunkReader{stream: stream})
	if errors.Is(err, uploads.ErrTooLarge) {
		return &bodyTooLargeError{limit: s.uploads.MaxBytes(), what: "upload"}
	}
	if err != nil {
		if ctx.Err() != nil && stream.Context().Err() == nil {
			return fmt.Errorf("upload not received within %v: %w", s.uploadTimeout, ctx.Err())
		}
		return fmt.Errorf("upload: %w", err)
	}
	return stream.SendAndClose(&comfygatev1.UploadResponse{Upload: &comfygatev1.Upload{
		Id:          up.ID,
		Reference:   up.Reference(),
		ContentType: up.ContentType,
		Size:        up.Size,
		Sha256:      up.SHA256,
		CreatedAt:   timestamp(up.CreatedAt),
		ExpiresAt:   timestamp(up.ExpiresAt),
	}})
}

// chunkReader reads an Upload stream's chunks as one byte stream.
type chunkReader struct {
	stream grpc.ClientStreamingServer[comfygatev1.UploadRequest, comfygatev1.UploadResponse]
	buf    []byte
}

func (c *chunkReader) Read(p []byte) (int, error) {
	for len(c.buf) == 0 {
		msg, err := c.stream.Recv()
		if err != nil {
			return 0, err // io.EOF when the client closed its side
		}
		if msg.GetHeader() != nil {
			return 0, &fieldError{field: "header", reason: "sent twice: only the first message is the header"}
		}
		c.buf = msg.GetChunk()
	}
	n := copy(p, c.buf)
	c.buf = c.buf[n:]
	return n, nil
}

// resolveUploads returns the input with its references to uploads replaced;
// an input without any is returned as it is, at no cost.
func (s *Service) resolveUploads(ctx context.Context, input string) (string, error) {
	if !uploads.HasReferences(input) {
		return input, nil
	}
	if s.uploads == nil {
		if uploads.Refers(input) {
			return "", errNoUploads
		}
		return input, nil
	}
	out, err := s.uploads.Resolve(ctx, tenantOf(ctx), input)
	if errors.Is(err, uploads.ErrNotFound) || errors.Is(err, uploads.ErrBadReference) {
		return "", &fieldError{field: "input_json", reason: err.Error()}
	}
	return out, err
}

// uploadHandler serves uploadsRoute by calling Upload through the REST
// gateway's client connection, as eventsHandler does WatchRequest: the key,
// the tenant, the limits, the logs and the errors are the gRPC call's. The
// body is the file, with its Content-Type; or a multipart/form-data form
// (curl -F file=@photo.png), whose first file is taken, with the type its
// part declares. The answer is 201 with {"upload": {...}}.
type uploadHandler struct {
	client comfygatev1.GatewayServiceClient
	log    *slog.Logger
	// maxBytes is --upload-max-bytes, the limit a body over its route's is
	// refused with (the route's is larger, for a form's framing).
	maxBytes int64
}

func (h *uploadHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithCancel(metadata.NewOutgoingContext(r.Context(), callMetadata(r.Header)))
	defer cancel()
	body, ctype, size, err := uploadBody(r, h.maxBytes)
	if err != nil {
		refuse(w, status.Convert(toStatus(ctx, h.log, comfygatev1.GatewayService_Upload_FullMethodName, err)))
		return
	}
	stream, err := h.client.Upload(ctx)
	if err != nil {
		refuse(w, status.Convert(err))
		return
	}
	err = stream.Send(&comfygatev1.UploadRequest{Part: &comfygatev1.UploadRequest_Header{Header: &comfygatev1.UploadHeader{ContentType: ctype, Size: size}}})
	buf := make([]byte, uploadChunk)
	for err == nil {
		n, rerr := fill(body, buf)
		if n > 0 && (rerr == nil || rerr == io.EOF) {
			err = stream.Send(&comfygatev1.UploadRequest{Part: &comfygatev1.UploadRequest_Chunk{Chunk: buf[:n]}})
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil && err == nil {
			// The client's side failed (gone, too slow, over the limit):
			// the call ends, and the answer says why.
			cancel()
			refuse(w, status.Convert(toStatus(ctx, h.log, comfygatev1.GatewayService_Upload_FullMethodName, bodyError(rerr, h.maxBytes))))
			return
		}
	}
	// A Send that failed (io.EOF) means the server ended the call: its
	// status comes with CloseAndRecv.
	resp, err := stream.CloseAndRecv()
	if err != nil {
		refuse(w, status.Convert(err))
		return
	}
	data, err := marshalJSON(resp)
	if err != nil {
		refuse(w, status.Convert(toStatus(ctx, h.log, comfygatev1.GatewayService_Upload_FullMethodName, err)))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_, _ = w.Write(data)
}

// fill reads into buf until it is full or r ends, and returns io.EOF only
// when r ended cleanly. (io.ReadFull would also call a body cut short, whose
// reader says io.ErrUnexpectedEOF, a short read: a truncated file must not
// be stored as a whole one.)
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		k, err := r.Read(buf[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// uploadBody is the file an upload's request carries, its declared type and
// its size (0: unknown).
func uploadBody(r *http.Request, maxBytes int64) (io.Reader, string, int64, error) {
	ctype := r.Header.Get("Content-Type")
	if mt, _, err := mime.ParseMediaType(ctype); err != nil || mt != "multipart/form-data" {
		return r.Body, ctype, max(r.ContentLength, 0), nil
	}
	mr, err := r.MultipartReader()
	if err != nil {
		return nil, "", 0, &fieldError{field: "body", reason: "a multipart/form-data body that cannot be read: " + err.Error()}
	}
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			return nil, "", 0, &fieldError{field: "body", reason: "the form holds no file"}
		}
		if err != nil {
			return nil, "", 0, bodyError(fmt.Errorf("%w: a multipart/form-data body that cannot be read: %w", errBadForm, err), maxBytes)
		}
		if part.FileName() != "" {
			return part, part.Header.Get("Content-Type"), 0, nil
		}
		// Fields before the file are read past (bounded by the body's
		// limit).
		if _, err := io.Copy(io.Discard, part); err != nil {
			return nil, "", 0, bodyError(err, maxBytes)
		}
	}
}

// errBadForm: a multipart body that does not parse.
var errBadForm = errors.New("bad form")

// bodyError turns the failure to read an upload's body into what the
// caller is told: over the limit (maxBytes, --upload-max-bytes), too slow, or
// malformed.
func bodyError(err error, maxBytes int64) error {
	if errors.As(err, new(*http.MaxBytesError)) {
		return &bodyTooLargeError{limit: maxBytes, what: "upload"}
	}
	if errors.Is(err, errBadForm) || errors.Is(err, errBodyTimeout) {
		return &fieldError{field: "body", reason: err.Error()}
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return &fieldError{field: "body", reason: "ended before the file did (a form without its closing boundary, or a body cut short): nothing was stored"}
	}
	// The connection broke: no one reads the answer.
	return fmt.Errorf("reading the upload: %w (%w)", err, context.Canceled)
}
