package runcomfy

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Sentinel errors classify upstream failures. An *APIError matches exactly one of
// them through errors.Is, so callers map failures without knowing RunComfy's numeric
// codes.
var (
	// ErrInvalidInput: upstream rejected the input (422001, HTTP 400/422).
	ErrInvalidInput = errors.New("runcomfy: invalid input")
	// ErrNotFound: deployment, version or request unknown (404001, HTTP 404), or not
	// owned by this token (403003): from the caller's side both are "not here".
	ErrNotFound = errors.New("runcomfy: not found")
	// ErrUnauthorized: the gateway's own API token was rejected (401001, HTTP 401).
	ErrUnauthorized = errors.New("runcomfy: api token rejected")
	// ErrInsufficientFunds: the account cannot pay (10001, HTTP 402).
	ErrInsufficientFunds = errors.New("runcomfy: insufficient funds")
	// ErrDeploymentDisabled: the deployment is disabled (10002).
	ErrDeploymentDisabled = errors.New("runcomfy: deployment disabled")
	// ErrDeploymentDeleted: the deployment was deleted (10003).
	ErrDeploymentDeleted = errors.New("runcomfy: deployment deleted")
	// ErrRateLimited: upstream answered 429.
	ErrRateLimited = errors.New("runcomfy: rate limited")
	// ErrUnavailable: upstream failed in a way worth retrying later: 5xx (500001),
	// timeouts, connection failures, or an answer that could not be decoded.
	ErrUnavailable = errors.New("runcomfy: unavailable")
)

// Upstream error codes, as documented by RunComfy.
const (
	CodeUnauthorized      = 401001
	CodeForbidden         = 403003
	CodeNotFound          = 404001
	CodeValidation        = 422001
	CodeInternal          = 500001
	CodeInsufficientFunds = 10001
	CodeDisabled          = 10002
	CodeDeleted           = 10003
)

// APIError is a failure answered by RunComfy, or met on the way to it.
type APIError struct {
	// Op names the call: "submit", "status", "result" or "cancel".
	Op string
	// HTTPStatus is the HTTP status of the answer; 0 when none arrived.
	HTTPStatus int
	// Code is the upstream error_code; 0 when none was sent.
	Code int64
	// Message is the upstream error_message or message.
	Message string
	// Detail is the upstream detail (an array for validation errors), as sent.
	Detail json.RawMessage
	// RetryAfter is the delay upstream asked for with Retry-After; 0 when absent.
	RetryAfter time.Duration
	// Err is the transport error when no answer arrived.
	Err error
}

// Error describes the failure without any credential: only the operation, status,
// code and upstream message.
func (e *APIError) Error() string {
	switch {
	case e.Err != nil:
		return fmt.Sprintf("runcomfy %s: %v", e.Op, e.Err)
	case e.Code != 0:
		return fmt.Sprintf("runcomfy %s: http %d, error_code %d: %s", e.Op, e.HTTPStatus, e.Code, e.Message)
	default:
		return fmt.Sprintf("runcomfy %s: http %d: %s", e.Op, e.HTTPStatus, e.Message)
	}
}

// Unwrap exposes the transport error, so context errors stay visible to errors.Is.
func (e *APIError) Unwrap() error { return e.Err }

// Is matches the sentinel that classifies this failure. The upstream error_code wins
// over the HTTP status, since some answers carry an error_code with HTTP 200.
func (e *APIError) Is(target error) bool {
	return e.kind() == target
}

func (e *APIError) kind() error {
	if e.Err != nil {
		return ErrUnavailable
	}
	switch e.Code {
	case CodeValidation:
		return ErrInvalidInput
	case CodeNotFound, CodeForbidden:
		return ErrNotFound
	case CodeUnauthorized:
		return ErrUnauthorized
	case CodeInsufficientFunds:
		return ErrInsufficientFunds
	case CodeDisabled:
		return ErrDeploymentDisabled
	case CodeDeleted:
		return ErrDeploymentDeleted
	case CodeInternal:
		return ErrUnavailable
	}
	switch {
	case e.HTTPStatus == http.StatusTooManyRequests:
		return ErrRateLimited
	case e.HTTPStatus == http.StatusUnauthorized:
		return ErrUnauthorized
	case e.HTTPStatus == http.StatusPaymentRequired:
		return ErrInsufficientFunds
	case e.HTTPStatus == http.StatusNotFound, e.HTTPStatus == http.StatusForbidden:
		return ErrNotFound
	case e.HTTPStatus == http.StatusBadRequest, e.HTTPStatus == http.StatusUnprocessableEntity:
		return ErrInvalidInput
	default:
		// 5xx, an unexpected 3xx/4xx, or a 2xx whose body could not be used.
		return ErrUnavailable
	}
}
