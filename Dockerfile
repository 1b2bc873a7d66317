# Confab node image: `docker build -t confab .`, then
#   docker run -e CONFAB_REDIS_URL=... -e CONFAB_MONGO_URL=... -e CONFAB_JWT_SECRET=... -p 8080:8080 confab
# Every `confab serve` setting can be given as a CONFAB_* variable
# (see config/confab.example.toml).

FROM rust:1-bookworm AS builder
WORKDIR /src

# Build the dependencies alone first, against dummy crates, so that this
# layer stays cached until a Cargo.toml or Cargo.lock changes. The workspace
# also holds the load generator and the benchmarks; the image builds only
# the server, but cargo needs every member's manifest and target files.
COPY Cargo.toml Cargo.lock ./
COPY loadtest/Cargo.toml ./loadtest/
RUN mkdir -p src bench loadtest/src/bin \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > bench/hot_path.rs \
    && echo 'fn main() {}' > loadtest/src/main.rs \
    && echo 'fn main() {}' > loadtest/src/bin/confab-baseline.rs \
    && cargo build --release --locked -p confab --bin confab \
    && rm -rf src

# Now the real sources. Touch the crate roots so cargo rebuilds the crate
# even when the copied files are older than the dummy build.
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked -p confab --bin confab \
    && cp target/release/confab /usr/local/bin/confab

FROM debian:bookworm-slim
# curl is only for the HEALTHCHECK below.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin confab
COPY --from=builder /usr/local/bin/confab /usr/local/bin/confab
USER confab
ENV CONFAB_LISTEN=0.0.0.0:8080
EXPOSE 8080
# Ready = Redis and MongoDB answer (GET /readyz). Assumes the default port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD curl -fsS -o /dev/null http://127.0.0.1:8080/readyz || exit 1
ENTRYPOINT ["confab"]
CMD ["serve"]
