"""comfygate Python client: gRPC stubs generated from proto/ (see comfygate.v1)."""
