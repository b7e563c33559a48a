# switchyard in a container: build with the Rust toolchain, run on a slim Debian.
#
#   docker build -t switchyard .
#   docker run --rm -p 8787:8787 -e SWITCHYARD__AUTH__ALLOW_ANONYMOUS=true switchyard
#
# The container listens on 0.0.0.0:8787, which is not a loopback address, so switchyard
# refuses to start unless API keys are configured (auth.keys_file) or
# auth.allow_anonymous = true. docker-compose.yaml sets up keys.

FROM rust:1 AS build
WORKDIR /src
# Only what the build needs, so target/ and local config never enter the image.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cargo.toml declares the soak bench, and cargo refuses a manifest whose declared
# targets are missing, even when building only the binary.
COPY benches ./benches
# awc carries one patch (see vendor/README.md), applied through [patch.crates-io].
COPY vendor ./vendor
RUN cargo build --release --locked --bin switchyard

FROM debian:bookworm-slim
# No ca-certificates needed: the binary carries its own TLS roots (webpki-roots).
RUN useradd --system --no-create-home --home-dir /app switchyard
WORKDIR /app
COPY --from=build /src/target/release/switchyard /usr/local/bin/switchyard
# The examples only: a user's own config/switchyard.toml and config/keys.json (keys!)
# are mounted at run time, not baked into the image.
COPY config/switchyard.example.toml config/keys.example.json ./config/
USER switchyard
ENV SWITCHYARD__SERVER__LISTEN=0.0.0.0:8787 \
    RUST_LOG=info
EXPOSE 8787
# SIGTERM lets in-flight requests finish (server.shutdown_timeout_secs), then exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["switchyard"]
CMD ["serve"]
