# Kizuna: build with the Rust toolchain, run on a slim Debian.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY sql ./sql
COPY config ./config
RUN cargo build --release --locked --bin kizuna

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --home /app kizuna
WORKDIR /app
COPY --from=build /src/target/release/kizuna /usr/local/bin/kizuna
COPY config ./config
USER kizuna
ENV KIZUNA__SERVER__BIND=0.0.0.0:8080 KIZUNA__LOG__FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD ["/bin/sh", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080"]
ENTRYPOINT ["kizuna"]
CMD ["serve"]
