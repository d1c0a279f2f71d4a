package hooks

// Unexported helpers of the deliverer, exported to the external tests.
var (
	ParseRetryAfter = parseRetryAfter
	RedactURL       = redactURL
)
