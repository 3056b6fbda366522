# stocksync: build on Debian with the Rust toolchain, run on slim Debian.
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libssl-dev pkg-config && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY sql ./sql
COPY benches ./benches
RUN cargo build --release --bin stocksync

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/stocksync /usr/local/bin/stocksync
USER nobody
ENV STOCKSYNC_HTTP_ADDR=0.0.0.0:9187
EXPOSE 9187
ENTRYPOINT ["stocksync"]
CMD ["run"]
