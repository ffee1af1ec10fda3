# The `tidemark` image: one binary, every role as a subcommand.
# Build: docker build -t tidemark:0.1.0 .
FROM rust:1-bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      cmake pkg-config libssl-dev libsasl2-dev libzstd-dev zlib1g-dev libcurl4-openssl-dev \
      protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p tidemark

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates libssl3 libsasl2-2 libzstd1 zlib1g libcurl4 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/tidemark /usr/local/bin/tidemark
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/tidemark"]
CMD ["--help"]
