package runcomfysim

import (
	"net/http"
	"time"
)

// Values of Faults.CancelShape: the three answer shapes seen from the cancel endpoint.
const (
	// CancelShapeOutcome answers {"request_id", "outcome": "cancelled"|"not_cancellable"}.
	CancelShapeOutcome = "outcome"
	// CancelShapeStatus answers the older
	// {"request_id", "status": "cancellation_requested"|"not_cancellable"}.
	CancelShapeStatus = "status"
	// CancelShapeBoth answers with both keys.
	CancelShapeBoth = "both"
)

// Values of Faults.ErrorStyle: how a failed job's error object is written.
const (
	// ErrorStyleSeed is the webhook page's {"error","details","debugInfo","errorCode"}.
	ErrorStyleSeed = "seed"
	// ErrorStyleTypeMessage is {"type","message"}.
	ErrorStyleTypeMessage = "type_message"
)

// Values of Faults.CallbackOutputKey.
const (
	// CallbackOutputSingular is the current docs' "output".
	CallbackOutputSingular = "output"
	// CallbackOutputPlural is the older docs' "outputs".
	CallbackOutputPlural = "outputs"
)

// Faults make the simulator misbehave in the ways upstream is known to, so every
// tolerance the gateway claims can be tested. The zero value is a healthy upstream
// answering in the current documented shapes. Replace it with Sim.SetFaults.
type Faults struct {
	// Errors injects an error answer per endpoint ("submit", "status", "result",
	// "cancel"), after the bearer check.
	Errors map[string]FaultError
	// Latency delays every API answer; a caller that gives up (request context
	// cancelled) gets no answer and the handler returns at once.
	Latency time.Duration

	// DropCallbacks sends no webhook callback at all (counted in CallbackStats.Dropped).
	DropCallbacks bool
	// DuplicateCallbacks sends every callback this many extra times.
	DuplicateCallbacks int
	// ReorderCallbacks holds a job's callbacks and delivers them in reverse order
	// after its terminal one, so the terminal event arrives first.
	ReorderCallbacks bool
	// CallbackDelay waits this long before each callback delivery.
	CallbackDelay time.Duration
	// CallbackBeforeSubmitResponse delivers, synchronously, every callback already
	// due when the submit is accepted (at least the in_queue one when intermediate
	// statuses are asked for; all of them when QueueTime and RunTime are zero) before
	// the submit answer is written: the gateway sees a callback for a request id it
	// does not know yet.
	CallbackBeforeSubmitResponse bool
	// CallbackOutputKey names the outputs in the success callback: "output" (default,
	// the current docs) or "outputs" (older docs).
	CallbackOutputKey string
	// CallbackOmitOutputs leaves outputs out of the success callback, so the gateway
	// has to fetch them from /result.
	CallbackOmitOutputs bool

	// CancelShape chooses the cancel answer shape; empty means CancelShapeOutcome.
	CancelShape string
	// CanceledSpelling reports "canceled" instead of "cancelled" in status, result and
	// callbacks (never in the cancel answer's outcome, whose documented value is
	// "cancelled").
	CanceledSpelling bool
	// CompletedOnStatus makes /status report "completed" for a succeeded job; /result
	// and callbacks still say "succeeded".
	CompletedOnStatus bool

	// ErrorArray writes a failed job's error as an array of one object.
	ErrorArray bool
	// ErrorStyle chooses the error object's keys; empty means ErrorStyleSeed.
	ErrorStyle string
}

// FaultError is an error answer injected on one endpoint.
type FaultError struct {
	// HTTPStatus is the answer's status; zero means 500. 200 together with ErrorCode
	// gives the "HTTP 200 with error_code" variant.
	HTTPStatus int
	// ErrorCode is the body's error_code; zero leaves the key out.
	ErrorCode int64
	// Message is the body's error_message (or message); empty uses the status text.
	Message string
	// UseMessageKey writes the message under "message" instead of "error_message",
	// since upstream has used both.
	UseMessageKey bool
	// Detail is the body's detail, written when non-nil (an array for validation).
	Detail any
	// RetryAfter, when set, is sent as the Retry-After header (e.g. "2").
	RetryAfter string
	// RawBody, when set, replaces the JSON body with this text served as HTML, like
	// a proxy's error page that a strict decoder cannot read.
	RawBody string
	// Times limits the fault to the next Times calls, after which the endpoint is
	// healthy again; zero means every call.
	Times int
}

// answer renders the fault as an HTTP answer.
func (fe FaultError) answer() answer {
	status := fe.HTTPStatus
	if status == 0 {
		status = http.StatusInternalServerError
	}
	if fe.RawBody != "" {
		return answer{status: status, raw: fe.RawBody, retryAfter: fe.RetryAfter}
	}
	msg := fe.Message
	if msg == "" {
		msg = http.StatusText(status)
	}
	a := errorAnswer(status, fe.ErrorCode, msg, fe.Detail, fe.UseMessageKey)
	a.retryAfter = fe.RetryAfter
	return a
}

// takeFault returns the fault to apply to this call of endpoint, if any, consuming
// one of its Times.
func (s *Sim) takeFault(endpoint string) (FaultError, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fe, ok := s.faults.Errors[endpoint]
	if !ok {
		return FaultError{}, false
	}
	if fe.Times == 0 {
		return fe, true
	}
	if s.remaining[endpoint] <= 0 {
		return FaultError{}, false
	}
	s.remaining[endpoint]--
	return fe, true
}
