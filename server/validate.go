package server

import (
	"encoding/json"
	"strings"
	"unicode/utf8"

	"github.com/comfygate/comfygate/runcomfy"
)

// validateID applies runcomfy.ValidID and says which rule an id broke.
func validateID(field, id string) error {
	switch {
	case id == "":
		return &fieldError{field: field, reason: "is required"}
	case len(id) > runcomfy.MaxIDLen:
		return &fieldError{field: field, reason: "is longer than 128 characters"}
	case !runcomfy.ValidID(id):
		return &fieldError{field: field, reason: "may contain only letters, digits, '-' and '_'"}
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
	// Only JSON's own whitespace may surround the object: these are the bytes
	// RunComfy receives, so what passes here must be valid JSON as it stands
	// (bytes.TrimSpace would also skip \f or \v, which JSON does not allow).
	trimmed := strings.TrimLeft(input, " \t\r\n")
	switch {
	case strings.TrimRight(trimmed, " \t\r\n") == "":
		return &fieldError{field: field, reason: "is required: the deployment input as a JSON object"}
	case !utf8.ValidString(input):
		return &fieldError{field: field, reason: "is not valid UTF-8"}
	case !json.Valid(bytesOf(input)): // read only: no copy of a large input
		return &fieldError{field: field, reason: "is not valid JSON"}
	case trimmed[0] != '{':
		return &fieldError{field: field, reason: "must be a JSON object"}
	}
	return nil
}
