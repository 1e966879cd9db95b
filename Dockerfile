# Multi-stage build of the release binary. The config is mounted at /etc/portcullis.
#   docker build -t portcullis .
#   docker run -p 8080:8080 -e JWT_SECRET=... -v "$PWD/config:/etc/portcullis:ro" portcullis
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# The allocator's build settings (mimalloc's lazy arena commit).
COPY .cargo .cargo
COPY src src
COPY config config
COPY benches benches
RUN cargo build --release --locked --bin portcullis

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home portcullis
COPY --from=build /src/target/release/portcullis /usr/local/bin/portcullis
USER 10001
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/portcullis"]
CMD ["run", "--config", "/etc/portcullis/gateway.toml"]
