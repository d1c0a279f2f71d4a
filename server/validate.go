package server

import (
	"bytes"
	"encoding/json"
	"unicode/utf8"
)

// maxIDLen bounds deployment and request ids. RunComfy's ids are UUIDs; the bound
// leaves room for other formats while keeping ids cheap to log and store.
const maxIDLen = 128

// validateID accepts letters, digits, '-' and '_' only. Ids are placed in upstream
// URL paths, so nothing that could add a segment, a query, a fragment or a control
// character may pass.
func validateID(field, id string) error {
	if id == "" {
		return &fieldError{field: field, reason: "is required"}
	}
	if len(id) > maxIDLen {
		return &fieldError{field: field, reason: "is longer than 128 characters"}
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return &fieldError{field: field, reason: "may contain only letters, digits, '-' and '_'"}
		}
	}
	return nil
}

// validateRequestRef checks the pair of ids that names a request.
func validateRequestRef(deploymentID, requestID string) error {
	if err := validateID("deployment_id", deploymentID); err != nil {
		return err
	}
	return validateID("request_id", requestID)
}

// validateInput checks that the deployment input is one JSON object. It does not
// re-encode anything: the bytes that pass are the bytes RunComfy receives.
func validateInput(input string) error {
	const field = "input_json"
	trimmed := bytes.TrimSpace([]byte(input))
	switch {
	case len(trimmed) == 0:
		return &fieldError{field: field, reason: "is required: the deployment input as a JSON object"}
	case !utf8.Valid(trimmed):
		return &fieldError{field: field, reason: "is not valid UTF-8"}
	case !json.Valid(trimmed):
		return &fieldError{field: field, reason: "is not valid JSON"}
	case trimmed[0] != '{':
		return &fieldError{field: field, reason: "must be a JSON object"}
	}
	return nil
}
