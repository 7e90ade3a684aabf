# syntax=docker/dockerfile:1
# gh-token-proxy container image: the release binary on distroless (glibc, CA roots, no shell),
# running as uid 65532. Build:  docker build -t gh-token-proxy .   (BuildKit, the default since 23.0)
# Config is mounted at /etc/gh-token-proxy/gh-token-proxy.yaml; ports 8080 (proxy), 9090 (admin).

FROM rust:1.95-bookworm AS builder
WORKDIR /src
# Cache mounts keep the crate registry and target/ between builds, so a source change recompiles
# only this crate (the dependency tree, aws-lc included, is built once). This is more robust than
# the "dummy main.rs" layer trick, which breaks as soon as Cargo.toml declares benches or tests.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin gh-token-proxy \
 && install -D -m 0755 target/release/gh-token-proxy /out/gh-token-proxy

# cc-debian12 = Debian 12's glibc and libgcc (matching the bookworm builder) plus
# /etc/ssl/certs/ca-certificates.crt, which rustls-native-certs loads as the system roots.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="gh-token-proxy" \
      org.opencontainers.image.description="Puts the right GitHub credential (App installation token or PAT) on every GitHub call" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/gh-token-proxy /usr/local/bin/gh-token-proxy
ENV GH_TOKEN_PROXY_CONFIG=/etc/gh-token-proxy/gh-token-proxy.yaml
# The proxy must listen on 0.0.0.0:8080 here, which needs proxy.clients (or
# allowUnauthenticatedClients: true); admin.listen 0.0.0.0:9090 for probes and metrics.
EXPOSE 8080 9090
# nonroot (65532:65532) is the distroless default; stated so `docker inspect` and policy checks see it.
USER 65532:65532
# SIGTERM (Docker's and Kubernetes' default stop signal) drains for proxy.shutdownGraceSeconds.
ENTRYPOINT ["/usr/local/bin/gh-token-proxy"]
CMD ["serve"]
