# Multi-stage build: compile in the Rust image, run in a slim Debian with only libpq.
# Migrations, the /docs page and the ops dashboard (assets/) are embedded in the binary;
# `serve` applies migrations at start-up. Nothing is downloaded at build time beyond crates
# and Debian packages. Whatever the build reads must be copied below (and let through by
# .dockerignore): deploy/validate.sh replays this build stage from exactly those files.
#
#   docker build -t storefront .
#   docker run --rm -p 8080:8080 -e JWT_SECRET="$(openssl rand -hex 32)" -v storefront-data:/app/data storefront
#
# The image runs with APP_ENV=production, which refuses to start without JWT_SECRET: a
# random per-process key would log every user out on each restart and differ between
# replicas. Pass -e JWT_SECRET=... (32 bytes or more), or -e APP_ENV=development to try it.
FROM rust:1-bookworm AS build
WORKDIR /src
# Debian stable's packages are pinned by the base image's release, not here.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends libpq-dev && rm -rf /var/lib/apt/lists/*
# Dependencies first, so code changes do not rebuild them.
COPY Cargo.toml Cargo.lock build.rs ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked && rm -rf src
COPY src ./src
COPY migrations ./migrations
COPY assets ./assets
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends libpq5 ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /app --create-home storefront \
    && mkdir -p /app/data && chown storefront:storefront /app/data
WORKDIR /app
COPY --from=build /src/target/release/storefront /usr/local/bin/storefront
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
ENV BIND_ADDR=0.0.0.0:8080 \
    DATABASE_URL=sqlite:///app/data/storefront.db \
    LOG_FORMAT=json \
    APP_ENV=production
# The SQLite database (the default DATABASE_URL) lives here; mount a volume to keep it.
VOLUME ["/app/data"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=2s --start-period=15s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/livez"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["storefront"]
CMD ["serve"]
