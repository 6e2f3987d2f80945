# syntax=docker/dockerfile:1
#
# Spindle container image.
#   docker build -t spindle .                    # the runtime image (last stage)
#   docker build --target demo -t spindle-demo . # examples/demo-service, for docker-compose.yml
#
# Runtime: distroless (glibc, CA certificates, no shell, no package manager), non-root user
# 65532, config at /etc/spindle/spindle.yaml (collector-config/spindle.yaml: listens on 0.0.0.0,
# every key documented), health checked with `spindle healthcheck` (GET /healthz on the
# configured prometheus.listen port; no curl needed).

ARG RUST_VERSION=1.95

# ---- build: both binaries, dependencies cached across builds --------------------------------
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# The whole workspace: cargo needs every member's manifest (see .dockerignore for what is left out).
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p spindle -p demo-service \
 && install -D -m 0755 target/release/spindle /out/spindle \
 && install -D -m 0755 target/release/demo-service /out/demo-service \
 && install -d -m 0700 /out/state \
 && /out/spindle validate --config collector-config/spindle.yaml

# ---- demo: examples/demo-service (docker-compose.yml builds this target) --------------------
FROM gcr.io/distroless/cc-debian12:nonroot AS demo
COPY --from=build /out/demo-service /usr/local/bin/demo-service
ENV DEMO_LISTEN=0.0.0.0:8080
EXPOSE 8080
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/demo-service"]

# ---- runtime: spindle (default target) -------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot AS spindle
LABEL org.opencontainers.image.title="spindle" \
      org.opencontainers.image.description="OpenTelemetry pipeline: OTLP in, Prometheus/OpenMetrics with exemplars out" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/spindle /usr/local/bin/spindle
COPY collector-config/spindle.yaml /etc/spindle/spindle.yaml
# storage.path when set (docker-compose.yml mounts a named volume here): owned by the runtime user,
# so a fresh volume inherits a directory Spindle can write.
COPY --from=build --chown=65532:65532 /out/state /var/lib/spindle
# Read by `spindle`, `spindle validate`, `spindle print-config` and `spindle healthcheck` alike.
ENV SPINDLE_CONFIG=/etc/spindle/spindle.yaml \
    RUST_LOG=info
# OTLP/gRPC, OTLP/HTTP, Prometheus /metrics (+ /healthz, /readyz)
EXPOSE 4317 4318 9464
USER 65532:65532
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/spindle", "healthcheck", "--timeout", "2s"]
# SIGTERM drains: receivers stop, the trace export queue is flushed (shutdown_timeout).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/spindle"]
