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

// eventsOperation describes eventsRoute in OpenAPI 2.0. The generator cannot:
// the route is plain HTTP beside the gateway, not an RPC of the proto, and
// Swagger 2.0 has no way to add a path through the generator's options. Its
// schemas are the generated ones, by reference, so they follow the proto.
const eventsOperation = `{
  "get": {
    "summary": "WatchRequest as Server-Sent Events, for browsers' EventSource.",
    "description": "The stream is text/event-stream. Each state change is an event of type \"state\" whose id is \"<epoch>-<seq>\" of the state and whose data is the RequestState as JSON (the same object GET /v1/deployments/{deployment_id}/requests/{request_id} answers in \"request\"). After the terminal state comes an event of type \"end\" (data {\"last_seq\": \"<seq>\", \"last_epoch\": \"<epoch>\"}): close the EventSource on it, or it reconnects; a reconnect after the end is answered 204 No Content, which stops EventSource. An error after the stream started is an event of type \"error\" whose data is the google.rpc.Status JSON of REST errors; the stream then closes. A replica that drains ends its streams so (UNAVAILABLE, ErrorInfo reason DRAINING with metadata last_epoch and last_seq), and EventSource reconnects with Last-Event-ID and resumes. Errors before the first event are HTTP statuses as for the other routes (400, 401, 404, 503). A comment line (\": keepalive\") is sent after 15 s without events.",
    "operationId": "GatewayService_WatchRequestEvents",
    "produces": ["text/event-stream", "application/json"],
    "parameters": [
      {"name": "deployment_id", "in": "path", "required": true, "type": "string", "description": "The deployment the request was submitted to."},
      {"name": "request_id", "in": "path", "required": true, "type": "string", "description": "The request id returned by Submit."},
      {"name": "Last-Event-ID", "in": "header", "required": false, "type": "string", "description": "Resume after the state with this event id, \"<epoch>-<seq>\": later states of that epoch are sent, or the current state first when the request's epoch is another (its record was lost and made again). A bare \"<seq>\" compares seqs alone. EventSource sends it by itself when it reconnects. Wins over last_event_id."},
      {"name": "last_event_id", "in": "query", "required": false, "type": "string", "description": "Resume as with Last-Event-ID, for a first connection."},
      {"name": "access_token", "in": "query", "required": false, "type": "string", "description": "The API key, for clients that cannot send the Authorization header (EventSource); accepted on this route only (RFC 6750 section 2.3). A URL may end up in proxy logs and browser history: send the header where the client can."}
    ],
    "responses": {
      "200": {"description": "A text/event-stream of state events; each event's data is this object.", "schema": {"$ref": "#/definitions/v1RequestState"}},
      "204": {"description": "The request ended at or before Last-Event-ID: there is nothing more to send."},
      "default": {"description": "An unexpected error response.", "schema": {"$ref": "#/definitions/googleRpcStatus"}}
    },
    "tags": ["GatewayService"]
  }
}`

// openAPIDocument is the generated OpenAPI document (comfygate.OpenAPI) with
// eventsRoute added and the build's version in its info.
func openAPIDocument(generated []byte, version string) ([]byte, error) {
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(generated, &doc); err != nil {
		return nil, fmt.Errorf("parse the generated OpenAPI document: %w", err)
	}
	if version != "" {
		var info map[string]json.RawMessage
		if err := json.Unmarshal(doc["info"], &info); err != nil {
			return nil, fmt.Errorf("parse the generated OpenAPI info: %w", err)
		}
		info["version"], _ = json.Marshal(version)
		var err error
		if doc["info"], err = json.Marshal(info); err != nil {
			return nil, fmt.Errorf("set the OpenAPI info's version: %w", err)
		}
	}
	var paths map[string]json.RawMessage
	if err := json.Unmarshal(doc["paths"], &paths); err != nil {
		return nil, fmt.Errorf("parse the generated OpenAPI paths: %w", err)
	}
	path := strings.TrimPrefix(eventsRoute, "GET ")
	if _, ok := paths[path]; ok {
		return nil, errors.New("the generated OpenAPI document already has " + path)
	}
	paths[path] = json.RawMessage(eventsOperation)
	var err error
	if doc["paths"], err = json.Marshal(paths); err != nil {
		return nil, fmt.Errorf("add %s to the OpenAPI paths: %w", path, err)
	}
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode the OpenAPI document: %w", err)
	}
	return out, nil
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
