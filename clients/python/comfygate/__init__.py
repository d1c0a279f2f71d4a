"""comfygate Python client: gRPC stubs generated from proto/ (see comfygate.v1),
and comfygate.errors, which reads the error details the gateway sends."""
