// Package comfygate holds what belongs to the repository as a whole: the
// OpenAPI document that protoc-gen-openapiv2 writes into gen/.
//
// The document is embedded here, at the module root, because go:embed cannot
// reach up the tree (server/ cannot embed ../gen/...), and a Go file inside gen/
// would be deleted by `buf generate` (clean: true). Embedding the generated file
// itself, rather than a copy, keeps the served document equal to what the protos
// generate: `make generate` updates both at once, and a renamed proto breaks the
// build here instead of serving a stale document.
package comfygate

import (
	"bytes"
	_ "embed" // for go:embed
)

//go:embed gen/openapiv2/comfygate/v1/gateway.swagger.json
var openAPI []byte

// OpenAPI returns the generated OpenAPI (Swagger 2.0) document of the REST API,
// as JSON. Each call returns a fresh copy, so no caller can change what another
// one serves.
func OpenAPI() []byte { return bytes.Clone(openAPI) }
