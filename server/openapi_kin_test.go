package server_test

import (
	"net/http"
	"strconv"
	"testing"

	"github.com/getkin/kin-openapi/openapi2"
	"github.com/getkin/kin-openapi/openapi2conv"
)

// TestOpenAPIDocumentIsValid: the served document loads as OpenAPI 2.0,
// converts to 3.0 and validates there, with every documented route and
// status kept by the conversion. TestOpenAPIRoutesAnswerAsDocumented calls
// the routes themselves.
func TestOpenAPIDocumentIsValid(t *testing.T) {
	g := startGateway(t)
	var v2 openapi2.T
	if err := openapi2.UnmarshalFromData(fetchOpenAPIJSON(t, g.httpc, g.httpBase), &v2); err != nil {
		t.Fatalf("load as OpenAPI 2.0: %v", err)
	}
	v3, err := openapi2conv.ToV3(&v2)
	if err != nil {
		t.Fatalf("convert to OpenAPI 3.0: %v", err)
	}
	if err := v3.Validate(t.Context()); err != nil {
		t.Fatalf("invalid: %v", err)
	}
	doc := fetchOpenAPI(t, g.httpc, g.httpBase)
	for _, r := range doc.routes(t) {
		item := v3.Paths.Find(r.path)
		if item == nil || item.GetOperation(r.method) == nil {
			t.Errorf("%s: lost in the conversion", r)
			continue
		}
		responses := item.GetOperation(r.method).Responses
		for code := range r.op.Responses {
			n, err := strconv.Atoi(code)
			if err != nil {
				continue // "default"
			}
			if responses.Status(n) == nil {
				t.Errorf("%s: %d %s lost in the conversion", r, n, http.StatusText(n))
			}
		}
	}
}
