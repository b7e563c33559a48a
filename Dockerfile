# switchyard in a container: built on Debian bookworm, run on distroless's bookworm
# image with glibc (the same Debian release, so the binary finds the glibc it was
# linked against), as a non-root user, with no shell and no package manager.
#
#   docker build -t switchyard .
#   docker run --rm -p 8787:8787 -e SWITCHYARD__AUTH__ALLOW_ANONYMOUS=true switchyard
#
# The container listens on 0.0.0.0:8787, which is not a loopback address, so switchyard
# refuses to start unless API keys are configured (auth.keys_file) or
# auth.allow_anonymous = true. docker-compose.yaml sets up keys.

FROM rust:1-bookworm AS build
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
RUN cargo build --release --locked --bin switchyard \
    && mkdir -p /out/data

FROM gcr.io/distroless/cc-debian12:nonroot
WORKDIR /app
COPY --from=build /src/target/release/switchyard /usr/local/bin/switchyard
# The examples only: a user's own config/switchyard.toml and config/keys.json (keys!)
# are mounted at run time, never baked into the image.
COPY config/switchyard.example.toml config/keys.example.json ./config/
# A writable place for state, owned by the image's non-root user (uid 65532).
COPY --from=build --chown=65532:65532 /out/data ./data
USER nonroot
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
