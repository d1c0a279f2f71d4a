package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"github.com/comfygate/comfygate"
)

// The served OpenAPI document is the one protoc-gen-openapiv2 generates
// (comfygate.OpenAPI), with its title, description, Idempotency-Key header
// and error statuses from proto/comfygate/v1/openapi.yaml, plus what the
// generator cannot write, added here:
//   - the Submit body as the REST route takes it (submitBodySchema);
//   - the API key as optional (openAPISecurity);
//   - the events route (eventsOperation) and the uploads route
//     (uploadsOperation);
//   - the build's version.
//
// Every path the generator writes is served unchanged, so the routes of the
// proto and those of the document cannot drift apart.

// submitBodyDefinition is the definition the generator writes for Submit's
// body: the fields of SubmitRequest that are not in the path.
const submitBodyDefinition = "GatewayServiceSubmitBody"

// submitBodySchema replaces submitBodyDefinition. The generator describes the
// message that http.yaml's `body: "*"` names, {"input_json": "...",
// "idempotency_key": "..."}, but the REST gateway takes the HTTP body itself
// as input_json, byte for byte (restMarshaler in gateway.go), and the key from
// the Idempotency-Key header: the body is RunComfy's own submit body. No
// generator option can say so (options set a schema's title, type or
// example, but cannot drop a message's fields or allow any others), so the
// definition is written here, by hand, from RunComfy's submit body.
const submitBodySchema = `{
  "type": "object",
  "title": "RunComfy's submit body",
  "description": "The deployment's input, exactly as RunComfy's own POST /prod/v1/deployments/{deployment_id}/inference takes it: move an existing call over by changing its URL only. The gateway checks that the body is one JSON object in UTF-8, then forwards it to RunComfy byte for byte, so keys, key order, integers and 64-bit seeds (18446744073709551615) arrive exactly as written: none is re-typed, rounded or dropped. A ComfyUI deployment takes overrides (or a whole workflow_api_json); a LoRA deployment takes its own flat fields (prompt, seed, width, ...). Any other field is passed on as it is. The idempotency key is the Idempotency-Key header: in the body it would be one more field for RunComfy. Over gRPC the same text is SubmitRequest.input_json.",
  "properties": {
    "overrides": {
      "type": "object",
      "description": "The workflow inputs to change, by node id (a string, e.g. \"3\" or \"38:42\"): each value is {\"inputs\": {\"<input name>\": <value>, ...}}. Media inputs may be URLs or base64 data: URIs.",
      "additionalProperties": {
        "type": "object",
        "properties": {
          "inputs": {
            "type": "object",
            "description": "The node's inputs to set, by input name; any JSON value, passed on as written.",
            "additionalProperties": true
          }
        },
        "additionalProperties": true
      }
    },
    "workflow_api_json": {
      "description": "A whole ComfyUI workflow in API format, instead of overrides."
    },
    "extra_data": {
      "type": "object",
      "description": "Passed on to RunComfy as it is.",
      "additionalProperties": true
    }
  },
  "additionalProperties": true,
  "example": {"overrides": {"3": {"inputs": {"seed": 18446744073709551615, "steps": 20, "cfg": 7.5}}}}
}`

// apiKeyScheme is the security definition proto/comfygate/v1/openapi.yaml
// names the API key by.
const apiKeyScheme = "ApiKey"

// openAPISecurity says that a call carries the API key or nothing: a gateway
// without --api-keys-file takes calls without one. The generator drops an
// empty requirement, which is how OpenAPI says "or nothing", so it is set here.
const openAPISecurity = `[{"` + apiKeyScheme + `": []}, {}]`

// eventsOperation describes eventsRoute in OpenAPI 2.0. The generator cannot:
// the route is plain HTTP beside the gateway, not an RPC of the proto, and
// Swagger 2.0 has no way to add a path through the generator's options. Its
// schemas are the generated ones, by reference, so they follow the proto; its
// error statuses are those of the other reads (openapi.yaml), answered by
// refuse in sse.go.
const eventsOperation = `{
  "get": {
    "summary": "WatchRequest as Server-Sent Events, for browsers' EventSource.",
    "description": "The stream is text/event-stream. Each state change is an event of type \"state\" whose id is \"<epoch>-<seq>-<status>\" of the state (the status as a word: \"running\") and whose data is the RequestState as JSON (the same object GET /v1/deployments/{deployment_id}/requests/{request_id} answers in \"request\"). After the terminal state comes an event of type \"end\" (data {\"last_seq\": \"<seq>\", \"last_epoch\": \"<epoch>\"}): close the EventSource on it, or it reconnects; a reconnect after the end is answered 204 No Content, which stops EventSource. An error after the stream started is an event of type \"error\" whose data is the google.rpc.Status JSON of REST errors; the stream then closes. A replica that drains ends its streams so (UNAVAILABLE, ErrorInfo reason DRAINING with metadata last_epoch, last_seq and last_status), and EventSource reconnects with Last-Event-ID and resumes. Errors before the first event are HTTP statuses as for the other routes, with the google.rpc.Status JSON as the body. A comment line (\": keepalive\") is sent after 15 s without events.",
    "operationId": "GatewayService_WatchRequestEvents",
    "produces": ["text/event-stream", "application/json"],
    "parameters": [
      {"name": "deployment_id", "in": "path", "required": true, "type": "string", "description": "The deployment the request was submitted to."},
      {"name": "request_id", "in": "path", "required": true, "type": "string", "description": "The request id returned by Submit."},
      {"name": "Last-Event-ID", "in": "header", "required": false, "type": "string", "description": "Resume after the state with this event id, \"<epoch>-<seq>-<status>\": later states of that epoch are sent, or the current state first when the request's epoch is another (its record was lost and made again), but never a state earlier than the status. \"<epoch>-<seq>\" (ids before statuses were part of them) does the same without that guarantee; a bare \"<seq>\" compares seqs alone. EventSource sends it by itself when it reconnects. Wins over last_event_id."},
      {"name": "last_event_id", "in": "query", "required": false, "type": "string", "description": "Resume as with Last-Event-ID, for a first connection."},
      {"name": "access_token", "in": "query", "required": false, "type": "string", "description": "The API key, for clients that cannot send the Authorization header (EventSource); accepted on this route only (RFC 6750 section 2.3). A URL may end up in proxy logs and browser history: send the header where the client can."}
    ],
    "responses": {
      "200": {"description": "A text/event-stream of state events; each event's data is this object.", "schema": {"$ref": "#/definitions/v1RequestState"}},
      "204": {"description": "The request ended at or before Last-Event-ID: there is nothing more to send."},
      "400": {"description": "INVALID_ARGUMENT: the deployment_id or request_id is malformed (letters, digits, \"-\" and \"_\", at most 128), Last-Event-ID or last_event_id is not an event id, or an Idempotency-Key header is malformed. Or FAILED_PRECONDITION: RunComfy refused the call because the account has insufficient funds or the deployment is disabled or deleted (ErrorInfo UPSTREAM_10001, UPSTREAM_10002 or UPSTREAM_10003).", "schema": {"$ref": "#/definitions/googleRpcStatus"}},
      "401": {"description": "UNAUTHENTICATED: the gateway requires API keys and the call carries none (neither the Authorization header nor access_token), an unknown one, or more than one.", "schema": {"$ref": "#/definitions/googleRpcStatus"}, "headers": {"Www-Authenticate": {"type": "string", "description": "Bearer realm=\"comfygate\""}}},
      "404": {"description": "NOT_FOUND: no such request: an id nobody knows, another tenant's request, or one RunComfy does not know. Always the message \"no such request\" and no details, whatever the cause.", "schema": {"$ref": "#/definitions/googleRpcStatus"}},
      "413": {"description": "INVALID_ARGUMENT: the call carries a body, which this route does not take, larger than the gateway's --max-body-bytes (ErrorInfo reason BODY_TOO_LARGE, domain comfygate). Answered before the body is read.", "schema": {"$ref": "#/definitions/googleRpcStatus"}},
      "429": {"description": "RESOURCE_EXHAUSTED: the tenant's read rate is spent (RetryInfo and Retry-After), the tenant has as many watch streams open on this replica as it may (--max-watches-per-tenant), or RunComfy is rate limiting the account while the gateway had to ask it.", "schema": {"$ref": "#/definitions/googleRpcStatus"}, "headers": {"Retry-After": {"type": "integer", "description": "Seconds to wait before retrying."}}},
      "500": {"description": "INTERNAL: RunComfy rejected the gateway's own API token (ErrorInfo UPSTREAM_401001 or UPSTREAM_HTTP_401): its operator must act. Or an internal error of the gateway.", "schema": {"$ref": "#/definitions/googleRpcStatus"}},
      "503": {"description": "UNAVAILABLE: the gateway's state backend is unavailable, or RunComfy failed or could not be reached while the gateway had to ask it. Safe to retry.", "schema": {"$ref": "#/definitions/googleRpcStatus"}},
      "504": {"description": "DEADLINE_EXCEEDED: RunComfy did not answer in time while the gateway had to ask it (ErrorInfo UPSTREAM_TIMEOUT). Safe to retry.", "schema": {"$ref": "#/definitions/googleRpcStatus"}},
      "default": {"description": "An unexpected error response.", "schema": {"$ref": "#/definitions/googleRpcStatus"}}
    },
    "tags": ["GatewayService"]
  }
}`

// uploadsOperation describes uploadsRoute, plain HTTP beside the gateway
// like the events route. The Upload RPC has no REST rule (a client stream
// has no REST form), so the generator writes none of its messages: the
// answer's schema is written here, from UploadResponse.
const uploadsOperation = `{
  "post": {
    "summary": "Upload stores a file for the tenant's jobs to take as an input.",
    "description": "The body is the file, with its media type as Content-Type (image/*, video/* and audio/* unless the operator set --upload-types); or a multipart/form-data form whose first file part is taken, with the type its part declares (curl -F file=@photo.png). The file's first bytes must agree with the type: an HTML page sent as image/png is refused. The answer's reference, \"comfygate://uploads/<id>\", may stand as a string value anywhere in a submit's body; the gateway replaces it with a presigned URL of the file (or a data: URI for a file of at most --upload-inline-max-bytes) before calling RunComfy. Only the uploader's tenant can refer to it, until expires_at (--upload-lifetime after its creation); then it is refused and deleted. Needs the gateway's object storage (--storage-url).",
    "operationId": "GatewayService_UploadFile",
    "consumes": ["image/png", "image/jpeg", "image/webp", "video/mp4", "audio/wav", "multipart/form-data"],
    "produces": ["application/json"],
    "parameters": [
      {"name": "body", "in": "body", "required": true, "description": "The file's bytes, at most --upload-max-bytes (100 MiB by default).", "schema": {"type": "string", "format": "binary"}}
    ],
    "responses": {
      "201": {"description": "The stored upload.", "schema": {
        "type": "object",
        "properties": {
          "upload": {
            "type": "object",
            "properties": {
              "id": {"type": "string", "description": "\"up_\" and 26 letters and digits."},
              "reference": {"type": "string", "description": "What a submit's input names it by: \"comfygate://uploads/<id>\"."},
              "content_type": {"type": "string"},
              "size": {"type": "string", "format": "int64"},
              "sha256": {"type": "string", "description": "Hex SHA-256 of the stored bytes."},
              "created_at": {"type": "string", "format": "date-time"},
              "expires_at": {"type": "string", "format": "date-time", "description": "After this a reference to the upload is refused and the file deleted."}
            }
          }
        }
      }},
      "400": {"description": "INVALID_ARGUMENT: the file is empty, a form holds no file or does not parse, or the body did not arrive within --upload-timeout. Or FAILED_PRECONDITION: the gateway has no object storage (--storage-url).", "schema": {"$ref": "#/definitions/googleRpcStatus"}},
      "401": {"description": "UNAUTHENTICATED: the gateway requires API keys and the call carries none, an unknown one, or more than one.", "schema": {"$ref": "#/definitions/googleRpcStatus"}, "headers": {"Www-Authenticate": {"type": "string", "description": "Bearer realm=\"comfygate\""}}},
      "403": {"description": "PERMISSION_DENIED: a browser page of an origin the gateway's --cors-origins does not allow.", "schema": {"$ref": "#/definitions/googleRpcStatus"}},
      "413": {"description": "INVALID_ARGUMENT: the file is larger than --upload-max-bytes (ErrorInfo reason BODY_TOO_LARGE, domain comfygate); a Content-Length over it is refused before the body is read.", "schema": {"$ref": "#/definitions/googleRpcStatus"}},
      "415": {"description": "INVALID_ARGUMENT: the Content-Type is missing or not one the gateway takes, or the file's bytes are of another kind (ErrorInfo reason UNSUPPORTED_MEDIA_TYPE, domain comfygate).", "schema": {"$ref": "#/definitions/googleRpcStatus"}},
      "429": {"description": "RESOURCE_EXHAUSTED: the tenant has as many uploads in progress as it may.", "schema": {"$ref": "#/definitions/googleRpcStatus"}},
      "503": {"description": "UNAVAILABLE: the object store could not take the file, or the gateway holds as many request bodies as it may (Retry-After). Safe to retry.", "schema": {"$ref": "#/definitions/googleRpcStatus"}},
      "default": {"description": "An unexpected error response.", "schema": {"$ref": "#/definitions/googleRpcStatus"}}
    },
    "tags": ["GatewayService"]
  }
}`

// openAPIDocument is the generated OpenAPI document (comfygate.OpenAPI) with
// what the generator cannot write added (see above) and the build's version
// in its info. A generated document that lacks what these additions replace
// or name is an error, rather than a document served half fixed.
func openAPIDocument(generated []byte, version string) ([]byte, error) {
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(generated, &doc); err != nil {
		return nil, fmt.Errorf("parse the generated OpenAPI document: %w", err)
	}
	if version != "" {
		if err := editObject(doc, "info", func(info map[string]json.RawMessage) error {
			var err error
			info["version"], err = json.Marshal(version)
			return err
		}); err != nil {
			return nil, err
		}
	}
	if err := editObject(doc, "definitions", func(defs map[string]json.RawMessage) error {
		if _, ok := defs[submitBodyDefinition]; !ok {
			return errors.New("the generated OpenAPI document has no definition " + submitBodyDefinition + " to replace")
		}
		defs[submitBodyDefinition] = json.RawMessage(submitBodySchema)
		return nil
	}); err != nil {
		return nil, err
	}
	if err := editObject(doc, "securityDefinitions", func(schemes map[string]json.RawMessage) error {
		if _, ok := schemes[apiKeyScheme]; !ok {
			return errors.New("the generated OpenAPI document has no security definition " + apiKeyScheme)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	doc["security"] = json.RawMessage(openAPISecurity)
	if err := editObject(doc, "paths", func(paths map[string]json.RawMessage) error {
		path := strings.TrimPrefix(eventsRoute, "GET ")
		if _, ok := paths[path]; ok {
			return errors.New("the generated OpenAPI document already has " + path)
		}
		paths[path] = json.RawMessage(eventsOperation)
		if _, ok := paths[uploadsPath]; ok {
			return errors.New("the generated OpenAPI document already has " + uploadsPath)
		}
		paths[uploadsPath] = json.RawMessage(uploadsOperation)
		return nil
	}); err != nil {
		return nil, err
	}
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode the OpenAPI document: %w", err)
	}
	return out, nil
}

// editObject decodes the JSON object doc[key], lets edit change it, and
// encodes it back into doc.
func editObject(doc map[string]json.RawMessage, key string, edit func(map[string]json.RawMessage) error) error {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(doc[key], &obj); err != nil {
		return fmt.Errorf("parse the generated OpenAPI %s: %w", key, err)
	}
	if err := edit(obj); err != nil {
		return err
	}
	var err error
	if doc[key], err = json.Marshal(obj); err != nil {
		return fmt.Errorf("encode the OpenAPI %s: %w", key, err)
	}
	return nil
}

// newOpenAPIHandler serves the OpenAPI document on GET /openapi.json, without
// authentication: it describes the API, it gives no access to it. The document
// is built once, here. If it cannot be (a broken generated file, which the
// tests catch first), the error is logged and the route answers 500: the API
// itself keeps serving.
func newOpenAPIHandler(log *slog.Logger, version string) http.Handler {
	doc, err := openAPIDocument(comfygate.OpenAPI(), version)
	if err != nil {
		log.Error("OpenAPI document unavailable", "error", err)
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			writePlain(w, http.StatusInternalServerError, "OpenAPI document unavailable")
		})
	}
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(doc)
	})
}
