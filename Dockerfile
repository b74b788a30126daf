# One image with every Munity binary: munity (all-in-one, `munity dev`),
# munity-gateway, users-svc, events-svc, notify-svc, warehouse-svc,
# discuss-svc and bot-svc. The
# Kubernetes manifests (k8s/) choose the binary by `command`.
#
#   docker build -t munity .        (or: buildah bud -t munity .)
#
# Stage 1 compiles the workspace (cmake for Pingora's zlib-ng; no protoc:
# protox compiles the protos; the web app is the committed web/dist).
# Stage 2 is Debian slim with the binaries, CA certificates and a non-root
# user (10001, the UID the manifests run as); the root filesystem can be
# read-only: embedded storage and the bus go under a volume when used.

FROM docker.io/library/rust:1.95-bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
      -p munity -p munity-gateway -p users-svc -p events-svc -p notify-svc -p warehouse-svc \
      -p discuss-svc -p bot-svc \
 && mkdir -p /out \
 && cp target/release/munity target/release/munity-gateway target/release/users-svc \
       target/release/events-svc target/release/notify-svc target/release/warehouse-svc \
       target/release/discuss-svc target/release/bot-svc /out/

FROM docker.io/library/debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 munity \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/munity --shell /usr/sbin/nologin munity \
 && mkdir -p /var/lib/munity /etc/munity \
 && chown munity:munity /var/lib/munity
COPY --from=build /out/ /usr/local/bin/
# /usr/local/bin/munity /usr/local/bin/munity-gateway /usr/local/bin/users-svc
# /usr/local/bin/events-svc /usr/local/bin/notify-svc /usr/local/bin/warehouse-svc
# /usr/local/bin/discuss-svc /usr/local/bin/bot-svc
USER 10001:10001
WORKDIR /var/lib/munity
ENV MUNITY_CONFIG=/etc/munity/munity.toml
EXPOSE 8080 9090 50051 50052 50053 50054
ENTRYPOINT []
CMD ["/usr/local/bin/munity", "dev"]
