# syntax=docker/dockerfile:1
#
# The portcullis container image: the release binary on distroless (glibc, no shell, no
# package manager), running as a non-root user.
#
#   docker build -t portcullis .
#   docker run --rm --user "$(id -u):$(id -g)" -p 8080:8080 -p 127.0.0.1:9901:9901 \
#       -v "$PWD/my-config:/etc/portcullis:ro" portcullis
#
# The image holds no config: mount a directory with portcullis.yaml (and the files it
# names: credentials.yaml, keys/signing.pem) at /etc/portcullis. The entrypoint is the
# binary, so the other subcommands work too:
#
#   docker run --rm -v "$PWD/my-config:/etc/portcullis:ro" portcullis check --config /etc/portcullis/portcullis.yaml
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD/my-config:/etc/portcullis" portcullis keygen --out /etc/portcullis/keys/signing.pem
#
# docs/deploy.md has the whole story (Docker, Kubernetes, edge gateway).

ARG RUST_IMAGE=rust:1-bookworm
# Debian 12 glibc, libgcc_s and CA certificates, user nonroot (65532), no shell.
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# ---------------------------------------------------------------------------------------
# chef: the toolchain, cmake (pingora builds zlib-ng with it) and cargo-chef, which lets
# the dependencies be built in a layer of their own.
FROM ${RUST_IMAGE} AS chef
ARG CARGO_CHEF_VERSION=0.1.78
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# cmake comes from the Debian release the image is built on: pinning its exact version
# would only break the build at Debian's next point release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /build

# ---------------------------------------------------------------------------------------
# planner: a recipe of what the dependency build depends on (Cargo.toml, Cargo.lock and
# the layout of the targets), not of the sources. The recipe, and so the cached layer
# below, changes only when the dependencies do.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# ---------------------------------------------------------------------------------------
# builder: dependencies first (cached until the recipe changes), then portcullis itself.
FROM chef AS builder
COPY --from=planner /build/recipe.json recipe.json
RUN cargo chef cook --release --locked --bin portcullis --recipe-path recipe.json
COPY . .
# The release profile keeps debug info (Cargo.toml: debug = 1, about 100 MB); the image
# gets the binary without it (symbols stay, so panics still name functions). Build with
# --build-arg KEEP_DEBUG_INFO=true to ship it whole.
ARG KEEP_DEBUG_INFO=false
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN cargo build --release --locked --bin portcullis \
 && install -D -m 0755 target/release/portcullis /out/usr/local/bin/portcullis \
 && if [ "${KEEP_DEBUG_INFO}" != "true" ]; then strip --strip-debug /out/usr/local/bin/portcullis; fi \
 && /out/usr/local/bin/portcullis --version | grep '^portcullis ' \
 && mkdir -p /out/etc/portcullis

# ---------------------------------------------------------------------------------------
# runtime
FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="portcullis" \
      org.opencontainers.image.description="Authentication and authorization sidecar for HTTP APIs, built on pingora" \
      org.opencontainers.image.licenses="Apache-2.0"
# The binary, and /etc/portcullis as an empty, root-owned mount point for the config.
COPY --from=builder /out/ /
WORKDIR /etc/portcullis
# Numeric, so that Kubernetes' runAsNonRoot can verify it without a passwd lookup.
USER 65532:65532
# 8080: the proxy listener (`listen`); 9901: the admin listener (`admin_listen`:
# /metrics, /healthz, /readyz). Both must be bound to 0.0.0.0 in the mounted config to be
# reachable from outside the container; the admin listener has no authentication, so
# publish it only where the prober and the metrics scraper are.
EXPOSE 8080 9901
# SIGTERM: stop accepting, let in-flight requests finish for `shutdown_grace` seconds
# (default 10), exit 0. `docker stop` waits only 10 s by default: use `docker stop -t 15`
# or `docker run --stop-timeout 15` (more than shutdown_grace + 1).
STOPSIGNAL SIGTERM
# No HEALTHCHECK: distroless has no shell, curl or wget to run one, and portcullis has no
# probe subcommand. Health is checked from outside: Kubernetes' liveness and readiness
# probes on the admin port (GET /healthz, GET /readyz), or your orchestrator's HTTP check.
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["serve", "--config", "/etc/portcullis/portcullis.yaml"]
