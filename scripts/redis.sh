#!/usr/bin/env bash
# Run a real Redis (Debian's redis-server) on loopback for tests.
#
#   scripts/redis.sh start    install if needed, start in the background, wait for PONG,
#                             print REDIS_URL=redis://127.0.0.1:<port>
#   scripts/redis.sh stop     stop the server started by `start`
#   scripts/redis.sh status   exit 0 when it answers PING
#
# Environment: REDIS_PORT (default 6390, away from a system Redis on 6379),
# MUNITY_RUN_DIR (default ~/.cache/munity/run).
set -euo pipefail

PORT=${REDIS_PORT:-6390}
RUN_DIR=${MUNITY_RUN_DIR:-$HOME/.cache/munity/run}/redis
PID_FILE=$RUN_DIR/redis.pid

log() { echo "redis.sh: $*" >&2; }

install() {
  command -v redis-server >/dev/null && return
  [[ $(id -u) -eq 0 ]] || { log "redis-server missing; install Debian's redis-server"; exit 1; }
  log "installing redis-server with apt-get"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
}

answers() { redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null | grep -q PONG; }

start() {
  install
  mkdir -p "$RUN_DIR"
  if ! answers; then
    # No persistence: test data is throwaway, and fsyncs would only slow tests.
    redis-server --bind 127.0.0.1 --port "$PORT" --daemonize yes \
      --pidfile "$PID_FILE" --dir "$RUN_DIR" --logfile "$RUN_DIR/redis.log" \
      --save '' --appendonly no --protected-mode yes
    for _ in $(seq 1 100); do answers && break; sleep 0.1; done
    answers || { log "redis did not answer on port $PORT"; tail -20 "$RUN_DIR/redis.log" >&2; exit 1; }
  fi
  echo "REDIS_URL=redis://127.0.0.1:$PORT"
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
  start) start ;;
  stop) stop ;;
  status) answers ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
