# syntax=docker/dockerfile:1
# Multi-stage build: a static binary (CGO off) on a distroless base, run as a
# non-root user. Build with `make docker`.

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/comfygate ./cmd/comfygate \
 && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/runcomfy-sim ./cmd/runcomfy-sim

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/comfygate /out/runcomfy-sim /usr/local/bin/
# Listen on all interfaces inside the container; the defaults are loopback only.
# Off loopback the gateway requires client API keys: mount a keys file and set
# COMFYGATE_API_KEYS_FILE (or COMFYGATE_INSECURE=true to run without).
ENV COMFYGATE_GRPC_ADDR=0.0.0.0:9090 \
    COMFYGATE_HTTP_ADDR=0.0.0.0:8080
EXPOSE 9090 8080
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/comfygate"]
