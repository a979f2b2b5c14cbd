# Production-like image of the `sluice` binary (used by docker-compose.yml).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p sluice

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
COPY broker.toml /etc/sluice/broker.toml
EXPOSE 1883 8080 9464
ENTRYPOINT ["sluice", "--config", "/etc/sluice/broker.toml"]
