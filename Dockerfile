# thinhook container image.
#
#   docker build -t thinhook .
#   docker run -d --name thinhook -p 8080:8080 -v thinhook-data:/var/lib/thinhook \
#       -e THINHOOK_PUBLIC_BASE_URL=https://hooks.example.com thinhook
#
# With no other settings the container keeps its SQLite database and its
# secrets key file in the volume /var/lib/thinhook. compose.yaml runs it on
# PostgreSQL; docs/operations.md covers backups, upgrades and monitoring.

# Build on the Debian release the runtime image is made from (bookworm), so
# the binary finds the same glibc and libssl there. The committed Cargo.lock
# needs Rust 1.95 (parking_lot 0.13, through r2d2).
FROM rust:1.95-bookworm AS build
WORKDIR /src

# Dependencies change far less often than the code: build them against a
# placeholder crate first, so that a change under src/ reuses this layer.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

COPY src src
COPY migrations migrations
COPY openapi.yaml ./
# COPY keeps the files' modification times, which can be older than the
# placeholder build: touch the crate roots so that cargo rebuilds them.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && mkdir -p /out/data \
    && cp target/release/thinhook /out/thinhook

# glibc, libgcc and libssl3 (libpq is linked against the system OpenSSL);
# no shell, no package manager. The :nonroot tag runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/thinhook /usr/local/bin/thinhook
# The data directory belongs to the runtime user, so that a new named
# volume mounted here is writable by it too.
COPY --from=build --chown=65532:65532 /out/data /var/lib/thinhook

# DL3064 takes THINHOOK_SECRETS_KEY_FILE for a secret: it is the key's path.
# hadolint ignore=DL3064
ENV THINHOOK_LISTEN=0.0.0.0:8080 \
    THINHOOK_DATABASE_URL=sqlite:///var/lib/thinhook/thinhook.sqlite3 \
    THINHOOK_SECRETS_KEY_FILE=/var/lib/thinhook/thinhook.key
VOLUME ["/var/lib/thinhook"]
WORKDIR /var/lib/thinhook
USER 65532:65532
EXPOSE 8080

# `thinhook healthcheck` asks this process's /readyz (see docs/operations.md).
# A worker (`serve --role worker`) has no HTTP listener: turn the check off
# for it (compose.yaml does).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/thinhook", "healthcheck"]

ENTRYPOINT ["/usr/local/bin/thinhook"]
CMD ["serve"]
