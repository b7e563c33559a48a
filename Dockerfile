# switchyard in a container: a static binary (musl) on an empty base image. Nothing but
# the binary, two example files and an empty state folder: no shell, no package manager,
# no C library to mismatch. It runs as a non-root user and checks its own health.
#
#   docker build -t switchyard .
#   docker run --rm -p 8787:8787 -e SWITCHYARD__AUTH__ALLOW_ANONYMOUS=true switchyard
#
# The container listens on 0.0.0.0:8787, which is not a loopback address, so switchyard
# refuses to start unless API keys are configured (auth.keys_file) or
# auth.allow_anonymous = true. docker-compose.yaml sets up keys.

FROM rust:1-bookworm AS build
# musl's C compiler wrapper, for the C parts (mimalloc, ring) of a static build.
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the build needs (.dockerignore keeps target/, keys and local config out of
# the context too).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cargo.toml declares the soak bench, and cargo refuses a manifest whose declared
# targets are missing, even when building only the binary.
COPY benches ./benches
# awc carries one patch (see vendor/README.md), applied through [patch.crates-io].
COPY vendor ./vendor
# The machine's own architecture (x86_64 or aarch64), linked statically.
RUN target="$(uname -m)-unknown-linux-musl" \
    && rustup target add "$target" \
    && cargo build --release --locked --target "$target" --bin switchyard \
    && mkdir -p /out/data \
    && strip -o /out/switchyard "target/$target/release/switchyard"

FROM scratch
COPY --from=build /out/switchyard /usr/local/bin/switchyard
WORKDIR /app
# The examples only: a user's own config/switchyard.toml and config/keys.json (keys!)
# are mounted at run time, never baked into the image.
COPY config/switchyard.example.toml config/keys.example.json ./config/
# A writable place for state, owned by the non-root user the gateway runs as.
COPY --from=build --chown=65532:65532 /out/data ./data
USER 65532:65532
ENV SWITCHYARD__SERVER__LISTEN=0.0.0.0:8787 \
    RUST_LOG=info
EXPOSE 8787
# The binary asks its own /health (no curl in this image); a degraded gateway (an
# upstream down) is still healthy, since restarting it would not mend the upstream.
HEALTHCHECK --interval=30s --timeout=6s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/switchyard", "health", "--url", "http://127.0.0.1:8787"]
# SIGTERM lets in-flight requests finish (server.shutdown_timeout_secs), then exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/switchyard"]
CMD ["serve"]
