# stocksync: build on Debian with the Rust toolchain, run on slim Debian.
# Base images are pinned by tag and digest. No digest is written here (none could be looked
# up where this file was written, and an invented one would not pull): pass the current ones,
#   docker buildx imagetools inspect rust:1.95-bookworm      (the "Digest:" line)
#   docker buildx imagetools inspect debian:bookworm-slim
# as --build-arg RUST_DIGEST=<hex> --build-arg DEBIAN_DIGEST=<hex> (docker-compose.yml takes
# them from the environment). Without them the build stops at FROM.
ARG RUST_DIGEST
ARG DEBIAN_DIGEST
FROM rust:1.95-bookworm@sha256:${RUST_DIGEST} AS build
RUN apt-get update && apt-get install -y --no-install-recommends libssl-dev pkg-config && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY sql ./sql
COPY benches ./benches
# --locked: exactly the dependency versions of Cargo.lock, or the build fails.
RUN cargo build --locked --release --bin stocksync

FROM debian:bookworm-slim@sha256:${DEBIAN_DIGEST}
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 stocksync \
 && useradd --system --uid 10001 --gid stocksync --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin stocksync
COPY --from=build /src/target/release/stocksync /usr/local/bin/stocksync
# A user of its own (numeric, so orchestrators can verify it is not root), owning nothing.
USER 10001:10001
ENV STOCKSYNC_HTTP_ADDR=0.0.0.0:9187
EXPOSE 9187
ENTRYPOINT ["stocksync"]
CMD ["run"]
