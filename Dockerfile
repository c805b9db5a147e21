# syntax=docker/dockerfile:1
# chatgg's container image (docs/deploy.md): a static binary on distroless,
# run as an unprivileged user. Build with BuildKit (the default builder since
# Docker 23): docker build -t chatgg .
#
# The stack runs it as `serve` (brokers) and `worker`; on its own the image
# runs role `all` with the embedded store in /data:
#   docker run -p 9001:9001 -p 9002:9002 -v chatgg-data:/data chatgg

ARG GO_VERSION=1.26

# The builder runs on the build machine's platform and cross-compiles, so a
# multi-platform build (--platform linux/amd64,linux/arm64) needs no emulator.
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
WORKDIR /src
# CGO off: a static binary that runs on distroless/static. GOTOOLCHAIN=local:
# fail rather than download another toolchain if go.mod asks for a newer Go.
ENV CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=readonly

# Modules first, in their own layer and cache, so that a source change does
# not download them again.
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=bind,source=go.mod,target=go.mod \
    --mount=type=bind,source=go.sum,target=go.sum \
    go mod download

ARG TARGETOS
ARG TARGETARCH
# chatgg-healthcheck is the HEALTHCHECK below: distroless has no curl.
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    --mount=type=bind,target=. \
    GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -ldflags='-s -w' -o /out/chatgg ./cmd/chatgg && \
    GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -ldflags='-s -w' -o /out/chatgg-healthcheck ./deploy/healthcheck && \
    mkdir -p /out/data

# static-debian12 has CA certificates (for rediss:// and https:// CouchDB),
# tzdata and /etc/passwd with the nonroot user (65532), and no shell.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/chatgg /out/chatgg-healthcheck /usr/local/bin/
# The embedded store's directory (role all), writable by nonroot. Not a
# VOLUME: serve and worker keep nothing on disk; mount one for role all.
COPY --from=build --chown=65532:65532 /out/data /data
ENV CHATGG_DATA_DIR=/data
WORKDIR /data
USER 65532:65532

# WebSocket (--ws-addr) and REST, /healthz, /readyz, /metrics (--http-addr).
EXPOSE 9001 9002

# Liveness only (see deploy/healthcheck): the balancer checks /readyz.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/chatgg-healthcheck"]

ENTRYPOINT ["/usr/local/bin/chatgg"]
CMD ["all"]
