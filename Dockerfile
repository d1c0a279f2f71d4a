# syntax=docker/dockerfile:1
# Multi-stage build: static binaries (CGO off) on a distroless base, run as a
# non-root user. The release and commit are stamped into the binaries as
# `make build` stamps them (comfygate version, the start-up line,
# comfygate_build_info) and label the image:
#
#   docker build \
#     --build-arg VERSION=$(git describe --tags --always --dirty) \
#     --build-arg COMMIT=$(git rev-parse HEAD) \
#     -t ghcr.io/comfygate/comfygate:$(git describe --tags --always --dirty) .

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Declared after the sources are copied, so a new version reuses the
# module download above.
ARG VERSION=devel
ARG COMMIT=unknown
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-X github.com/comfygate/comfygate/internal/version.version=${VERSION} -X github.com/comfygate/comfygate/internal/version.commit=${COMMIT}" \
      -o /out/ ./cmd/...

FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=devel
ARG COMMIT=unknown
LABEL org.opencontainers.image.title="comfygate" \
      org.opencontainers.image.description="gRPC and REST gateway to the RunComfy Serverless API" \
      org.opencontainers.image.source="https://github.com/comfygate/comfygate" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}"
COPY --from=build /out/comfygate /out/runcomfy-sim /usr/local/bin/
# Listen on all interfaces inside the container; the defaults are loopback only.
# Off loopback the gateway requires client API keys: mount a keys file and set
# COMFYGATE_API_KEYS_FILE (or COMFYGATE_INSECURE=true to run without).
# --webhook-addr and --admin-addr are off unless set (deploy/kubernetes uses
# 8081 and 8082).
ENV COMFYGATE_GRPC_ADDR=0.0.0.0:9090 \
    COMFYGATE_HTTP_ADDR=0.0.0.0:8080
EXPOSE 9090 8080
# distroless's nonroot user, by number, so that Kubernetes' runAsNonRoot can
# check it.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/comfygate"]
