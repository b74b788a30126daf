#!/usr/bin/env bash
# Jaeger v2 (in-memory storage) on loopback, built from its Go module source.
#
#   scripts/jaeger.sh build    build once into ~/.cache/munity-tools/bin (about
#                              4.5 minutes on 2 cores, at nice 19); print its path
#   scripts/jaeger.sh start    build if needed, start in the background with
#                              observability/jaeger/jaeger.yml, wait until healthy;
#                              print JAEGER_OTLP=... and JAEGER_QUERY=...
#   scripts/jaeger.sh stop     stop the server started by `start`
#   scripts/jaeger.sh status   exit 0 when it reports healthy
#
# `go install` refuses github.com/jaegertracing/jaeger (its go.mod has a
# replace directive), so the module is downloaded and built in a copy.
# Environment: JAEGER_OTLP_GRPC_PORT (4317), JAEGER_QUERY_PORT (16686),
# JAEGER_QUERY_GRPC_PORT (16685), JAEGER_HEALTH_PORT (13133),
# MUNITY_RUN_DIR (default ~/.cache/munity/run).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=v1.76.0
tools=$HOME/.cache/munity-tools
BIN=$tools/bin/jaeger-$VERSION
RUN_DIR=${MUNITY_RUN_DIR:-$HOME/.cache/munity/run}/jaeger
PID_FILE=$RUN_DIR/jaeger.pid
export JAEGER_OTLP_GRPC_PORT=${JAEGER_OTLP_GRPC_PORT:-4317}
export JAEGER_QUERY_PORT=${JAEGER_QUERY_PORT:-16686}
export JAEGER_QUERY_GRPC_PORT=${JAEGER_QUERY_GRPC_PORT:-16685}
export JAEGER_HEALTH_PORT=${JAEGER_HEALTH_PORT:-13133}

log() { echo "jaeger.sh: $*" >&2; }

build() {
  if [[ ! -x $BIN ]]; then
    log "building Jaeger $VERSION from its Go module (a few minutes, once)"
    local module source
    module=$(cd /tmp && go mod download -json "github.com/jaegertracing/jaeger@$VERSION" |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
    source=$tools/jaeger-src-$VERSION
    rm -rf "$source" && cp -r "$module" "$source" && chmod -R u+w "$source"
    mkdir -p "$tools/bin"
    (cd "$source" && nice -n 19 go build -o "$BIN.partial" ./cmd/jaeger)
    mv "$BIN.partial" "$BIN"
    rm -rf "$source"
  fi
  echo "$BIN"
}

healthy() { curl -sf "http://127.0.0.1:$JAEGER_HEALTH_PORT/status" 2>/dev/null | grep -q '"healthy":true'; }

start() {
  build >/dev/null
  mkdir -p "$RUN_DIR"
  if ! healthy; then
    "$BIN" --config "$PWD/observability/jaeger/jaeger.yml" >"$RUN_DIR/jaeger.log" 2>&1 &
    echo $! >"$PID_FILE"
    for _ in $(seq 1 100); do healthy && break; sleep 0.1; done
    healthy || { log "Jaeger did not become healthy"; tail -20 "$RUN_DIR/jaeger.log" >&2; exit 1; }
  fi
  echo "JAEGER_OTLP=http://127.0.0.1:$JAEGER_OTLP_GRPC_PORT"
  echo "JAEGER_QUERY=http://127.0.0.1:$JAEGER_QUERY_PORT"
}

stop() {
  local pid
  pid=$(cat "$PID_FILE" 2>/dev/null || true)
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$PID_FILE"
}

case "${1:-}" in
  build) build ;;
  start) start ;;
  stop) stop ;;
  status) healthy ;;
  *) echo "usage: $0 build|start|stop|status" >&2; exit 2 ;;
esac
