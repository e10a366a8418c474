# The journey binary for docker-compose.yml (production-like deployment).
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release -p journey-pipeline --bin journey

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/journey /usr/local/bin/journey
COPY config/journey.example.toml /etc/journey/journey.toml
ENV JOURNEY_CONFIG=/etc/journey/journey.toml
USER nobody
ENTRYPOINT ["journey"]
