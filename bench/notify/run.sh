#!/usr/bin/env bash
# notify-svc streaming benchmark (issue 9): many Subscribe streams on one
# topic, a steady Publish rate, publish-to-receive latency, missed or
# duplicated offsets, and notify-svc's resident memory per stream.
#
# Processes, all on loopback, all stopped on exit:
#   users-svc     embedded storage in a temp dir; an admin email in
#                 users.admin_emails (to create the service account)
#   notify-svc    embedded hub and inbox in a temp dir, a fresh process (and
#                 data dir) for each case, so one case's freed memory does
#                 not hide the next one's; notify.max_streams_per_user raised
#                 above the largest case (every stream is the same user's)
#   munity-gateway  routes `users` and `notify` to the two above
# Set-up (bench/notify-load setup): registers the admin and a subscriber,
# creates a service account with scope notify.publish; before each case a
# fresh service token (IssueServiceToken).
# Cases (bench/notify-load run, one process each; streams on the
# subscriber's own topic user:<id>; Publish straight to notify-svc):
#   a  --streams-big (10,000) streams over --connections (100), direct
#   b  --streams-small (1,000) streams over --connections, direct
#   d  --streams-small streams direct, then, on the same notify-svc,
#   c  --streams-small streams through the gateway (RSS there is the
#      gateway's, not notify-svc's)
#   e  (not by default) --streams-big streams direct, and every Publish on
#      another topic (user:elsewhere), which no stream follows: what idle
#      streams cost a notification of another topic (notify-svc's CPU per
#      Publish; nothing may arrive)
# Each publishes --rate notifications/s of --payload bytes for --duration
# seconds, and prints delivered/s, publish-to-receive p50/p99/max, missed
# and duplicated offsets, and (direct) notify-svc's VmRSS before connecting,
# with the connections only, with every stream subscribed: per stream =
# (streams - connections) / streams. A table and the targets (nothing
# missed, p99 <= 50 ms, <= 16 KiB per stream) come last.
# See bench/notify/README.md.
#
# Usage: bench/notify/run.sh [--profile release] [--no-build] [--cases a,b,d,c]
#          [--streams-big 10000] [--streams-small 1000] [--connections 100]
#          [--rate 10] [--payload 100] [--duration 10]
#          [--publishes-in-flight 0] [--server-threads 2] [--gateway-threads 1]
#          [--client-threads N]
#          [--perf] [--keep] [--summary FILE]
#   --profile: cargo profile to build and run (dev: to try the script out,
#   not for figures). Binaries come from $CARGO_TARGET_DIR (default
#   ~/.cache/munity-target).
#   --publishes-in-flight: 0 (default): a Publish every 1/rate s whatever
#   the earlier ones are doing (concurrent publishers); 1: one after the
#   other.
#   --server-threads: notify-svc's tokio worker threads (TOKIO_WORKER_THREADS).
#   --client-threads: notify-load's worker threads (default: one per core).
#   --perf: perf record notify-svc (call graphs) for the whole of case a
#   (opening the streams, then publishing).
#   --keep: keep the work dir (logs, configs, JSON results).
#   --summary FILE: append a line per target of issue 24 this run measured
#   (p99 of cases a and b with Publish's p99 beside, CPU per delivery of
#   case c) to FILE, in bench/summary.py's format (bench/all.sh reads it).
set -euo pipefail

PROFILE=release
BUILD=1
CASES=a,b,d,c
STREAMS_BIG=10000
STREAMS_SMALL=1000
CONNECTIONS=100
RATE=10
PAYLOAD=100
DURATION=10
SERVER_THREADS=2
GATEWAY_THREADS=1
CLIENT_THREADS=""
IN_FLIGHT=0
PERF=0
KEEP=0
SUMMARY=""

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --profile) PROFILE="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --cases) CASES="$2"; shift 2 ;;
    --streams-big) STREAMS_BIG="$2"; shift 2 ;;
    --streams-small) STREAMS_SMALL="$2"; shift 2 ;;
    --connections) CONNECTIONS="$2"; shift 2 ;;
    --rate) RATE="$2"; shift 2 ;;
    --payload) PAYLOAD="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --server-threads) SERVER_THREADS="$2"; shift 2 ;;
    --gateway-threads) GATEWAY_THREADS="$2"; shift 2 ;;
    --client-threads) CLIENT_THREADS="$2"; shift 2 ;;
    --publishes-in-flight) IN_FLIGHT="$2"; shift 2 ;;
    --perf) PERF=1; shift ;;
    --keep) KEEP=1; shift ;;
    --summary) SUMMARY="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
[[ "$CASES" =~ ^[abcde](,[abcde])*$ ]] \
  || { echo "run.sh: --cases takes a, b, c, d, e separated by commas, got '$CASES'" >&2; exit 2; }
[[ "$PROFILE" =~ ^[A-Za-z0-9_-]+$ ]] || { echo "run.sh: bad --profile '$PROFILE'" >&2; exit 2; }
[[ "$IN_FLIGHT" =~ ^[0-9]+$ ]] || { echo "run.sh: --publishes-in-flight takes a number, got '$IN_FLIGHT'" >&2; exit 2; }
for n in "$STREAMS_BIG" "$STREAMS_SMALL" "$CONNECTIONS" "$RATE" "$PAYLOAD" "$DURATION" "$SERVER_THREADS" "$GATEWAY_THREADS" ${CLIENT_THREADS:+"$CLIENT_THREADS"}; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: expected a positive integer, got '$n'" >&2; exit 2; }
done
IFS=, read -r -a CASE_LIST <<<"$CASES"
[[ -z "$SUMMARY" || "$SUMMARY" == /* ]] || SUMMARY="$PWD/$SUMMARY"
SUMMARY_ARGS=(); [[ -z "$SUMMARY" ]] || SUMMARY_ARGS=(--summary "$SUMMARY")

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/munity-target}"
case "$PROFILE" in
  dev|test) PROFILE_DIR=debug ;;
  bench) PROFILE_DIR=release ;;
  *) PROFILE_DIR="$PROFILE" ;;
esac
BIN_DIR="$TARGET_DIR/$PROFILE_DIR"
USERS_BIN="$BIN_DIR/users-svc"
NOTIFY_BIN="${NOTIFY_BIN:-$BIN_DIR/notify-svc}"
GATEWAY_BIN="${GATEWAY_BIN:-$BIN_DIR/munity-gateway}"
LOAD_BIN="$BIN_DIR/notify-load"

# log, die, free_ports, wait_for_file, wait_for_line
source "$(dirname "$0")/../lib.sh"

# ---------------------------------------------------------- processes ----
TMP=""
PIDS=()            # long-lived: users-svc, gateway
NOTIFY_PID=""      # the current notify-svc
CHILD_PID=""       # notify-load or perf, waited for in the background
PERF_PID=""

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  [[ -z "$CHILD_PID" ]] || stop_pid "$CHILD_PID"
  [[ -z "$PERF_PID" ]] || { kill -INT "$PERF_PID" 2>/dev/null || true; wait "$PERF_PID" 2>/dev/null || true; }
  stop_all "$NOTIFY_PID" "${PIDS[@]}"
  finish_tmp "$status"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

COMMON_ENV=(RUST_LOG=warn)

start_users() {
  mkdir -p "$TMP/users-data"
  cat >"$TMP/users.toml" <<TOML
# users-svc config written by bench/notify/run.sh
[users]
admin_emails = ["$ADMIN_EMAIL"]

[users.tokens]
# The subscriber's token must outlive the run.
access_ttl_secs = 86400

[auth]
# users-svc refuses to start unless revocations are replayed for as long as
# the longest token lives (plus leeway).
revocation_replay_secs = 90000
TOML
  env "${COMMON_ENV[@]}" \
    MUNITY_USERS__LISTEN="$USERS_ADDR" \
    MUNITY_USERS__STORAGE__BACKEND=embedded \
    MUNITY_USERS__STORAGE__PATH="$TMP/users-data" \
    MUNITY_READY_FILE="$TMP/users.ready.json" \
    "$USERS_BIN" --config "$TMP/users.toml" >"$TMP/users-svc.log" 2>&1 &
  USERS_PID=$!; PIDS+=("$USERS_PID")
  wait_for_file "$TMP/users.ready.json" "$USERS_PID" 30 "$TMP/users-svc.log"
  log "users-svc up (pid $USERS_PID, $USERS_ADDR)"
}

NOTIFY_RUNS=0
start_notify() {  # a fresh notify-svc (and data dir) on NOTIFY_ADDR
  NOTIFY_RUNS=$((NOTIFY_RUNS + 1))
  local dir="$TMP/notify.$NOTIFY_RUNS"
  mkdir -p "$dir/data"
  local max_streams=$(( (STREAMS_BIG > STREAMS_SMALL ? STREAMS_BIG : STREAMS_SMALL) * 2 ))
  env "${COMMON_ENV[@]}" \
    TOKIO_WORKER_THREADS="$SERVER_THREADS" \
    MUNITY_NOTIFY__LISTEN="$NOTIFY_ADDR" \
    MUNITY_NOTIFY__STORAGE__BACKEND=embedded \
    MUNITY_NOTIFY__STORAGE__PATH="$dir/data" \
    MUNITY_NOTIFY__MAX_STREAMS_PER_USER="$max_streams" \
    MUNITY_AUTH__JWKS_URL="http://$USERS_ADDR" \
    MUNITY_READY_FILE="$dir/ready.json" \
    "$NOTIFY_BIN" >"$dir/notify-svc.log" 2>&1 &
  NOTIFY_PID=$!
  wait_for_file "$dir/ready.json" "$NOTIFY_PID" 30 "$dir/notify-svc.log"
  "$LOAD_BIN" health --target "http://$NOTIFY_ADDR" --service munity.notify.v1.Notify --timeout-secs 30 \
    || die "notify-svc is not serving"
  log "notify-svc up (pid $NOTIFY_PID, $NOTIFY_ADDR, $SERVER_THREADS worker threads, max_streams_per_user $max_streams, data $dir/data)"
}

stop_notify() {
  local pid=$NOTIFY_PID
  NOTIFY_PID=""
  stop_pid "$pid"
}

start_gateway() {
  cat >"$TMP/gateway.toml" <<TOML
# munity-gateway config written by bench/notify/run.sh
[gateway]
token_cache_capacity = 100000
health_check_interval_ms = 1000

[gateway.routes.users]
upstreams = ["$USERS_ADDR"]

[gateway.routes.notify]
upstreams = ["$NOTIFY_ADDR"]

# Rate limiting stays ON, with a quota no run reaches.
[gateway.rate_limits]
enabled = true
mode = "local"
default = { requests = 1000000, per_secs = 1, burst = 1000000 }
TOML
  env "${COMMON_ENV[@]}" \
    MUNITY_GATEWAY__LISTEN="$GATEWAY_ADDR" \
    MUNITY_GATEWAY__ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT" \
    MUNITY_GATEWAY__THREADS="$GATEWAY_THREADS" \
    MUNITY_GATEWAY__JWKS_ENDPOINT="http://$USERS_ADDR" \
    MUNITY_GATEWAY__SHUTDOWN_GRACE_SECS=0 \
    MUNITY_AUTH__JWKS_URL="http://$USERS_ADDR" \
    "$GATEWAY_BIN" --config "$TMP/gateway.toml" >"$TMP/gateway.log" 2>&1 &
  GATEWAY_PID=$!; PIDS+=("$GATEWAY_PID")
  wait_for_line "$TMP/gateway.log" "munity-gateway: listening on grpc://" "$GATEWAY_PID" 30
  log "munity-gateway up (pid $GATEWAY_PID, $GATEWAY_ADDR, threads $GATEWAY_THREADS)"
}

publish_token() {
  BENCH_CLIENT_SECRET="$SERVICE_CLIENT_SECRET" \
    "$LOAD_BIN" service-token --users "http://$USERS_ADDR" --client-id "$SERVICE_CLIENT_ID"
}

run_case() {  # run_case LABEL STREAMS TARGET_ADDR PID PID_LABEL [NOTIFY-LOAD ARGS...]
  local label=$1 streams=$2 target=$3 pid=$4 pid_label=$5 token
  shift 5
  token=$(publish_token) || die "IssueServiceToken failed"
  local threads=()
  [[ -z "$CLIENT_THREADS" ]] || threads=(--threads "$CLIENT_THREADS")
  log "case $label: $streams streams over $CONNECTIONS connections to $target"
  NOTIFY_LOAD_TOKEN="$SUBSCRIBER_TOKEN" NOTIFY_LOAD_PUBLISH_TOKEN="$token" \
    in_background timeout $(( DURATION + 180 )) "$LOAD_BIN" run \
      --label "$label" --target "http://$target" --publish-target "http://$NOTIFY_ADDR" \
      --streams "$streams" --connections "$CONNECTIONS" \
      --rate "$RATE" --payload "$PAYLOAD" --duration "$DURATION" --publishes-in-flight "$IN_FLIGHT" \
      --pid "$pid" --pid-label "$pid_label" "${threads[@]}" \
      --json "$TMP/results/$label.json" "$@" \
    | tee "$TMP/results/$label.txt" \
    || die "notify-load failed in case $label"
  kill -0 "$NOTIFY_PID" 2>/dev/null || die "notify-svc died in case $label (see $TMP/notify.$NOTIFY_RUNS/notify-svc.log)"
  RESULTS+=("$TMP/results/$label.json")
}

perf_start() {  # perf_start PID DATA: samples PID (call graphs) until perf_finish
  command -v perf >/dev/null || { log "perf not installed; no profile"; return 0; }
  perf record -q -F 199 --call-graph dwarf,16384 -p "$1" -o "$2" >"$2.log" 2>&1 &
  PERF_PID=$!
}

perf_finish() {  # perf_finish DATA: stops perf and summarises
  [[ -n "$PERF_PID" ]] || return 0
  kill -INT "$PERF_PID" 2>/dev/null || true
  wait "$PERF_PID" 2>/dev/null || true
  PERF_PID=""
  { perf report -i "$1" --no-children --percent-limit 1 --stdio -g none 2>/dev/null
    perf report -i "$1" --children --percent-limit 3 --stdio -g none 2>/dev/null
  } | grep -v '^$' | grep -v '^#' | cut -c1-200 >"$1.txt" || true
  log "profile of notify-svc: $1 (summary $1.txt)"
}

# ---------------------------------------------------------------- main ----
command -v python3 >/dev/null || die "python3 is required (free ports)"
if [[ $BUILD -eq 1 ]]; then
  log "building $PROFILE binaries into $TARGET_DIR"
  (cd "$REPO" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --locked --profile "$PROFILE" \
      -p notify-load -p notify-svc -p users-svc -p munity-gateway --bins)
fi
for bin in "$USERS_BIN" "$NOTIFY_BIN" "$GATEWAY_BIN" "$LOAD_BIN"; do
  [[ -x "$bin" ]] || die "missing $bin (run without --no-build)"
done

TMP="$(work_dir notify)"
mkdir -p "$TMP/results"
read -r USERS_PORT NOTIFY_PORT GATEWAY_PORT ADMIN_PORT <<<"$(free_ports 4)"
USERS_ADDR="127.0.0.1:$USERS_PORT"
NOTIFY_ADDR="127.0.0.1:$NOTIFY_PORT"
GATEWAY_ADDR="127.0.0.1:$GATEWAY_PORT"
ADMIN_EMAIL="bench-admin-$$-$RANDOM@example.com"
RESULTS=()
log "profile $PROFILE ($BIN_DIR); cases $CASES; $RATE/s x $PAYLOAD B for $DURATION s; work dir $TMP"

start_users
"$LOAD_BIN" setup --users "http://$USERS_ADDR" --admin-email "$ADMIN_EMAIL" >"$TMP/setup.env" \
  || die "set-up at users-svc failed (exit $?; 3: service accounts not built in this users-svc)"
SUBSCRIBER_TOKEN=$(sed -n 's/^SUBSCRIBER_TOKEN=//p' "$TMP/setup.env")
SUBSCRIBER_ID=$(sed -n 's/^SUBSCRIBER_ID=//p' "$TMP/setup.env")
SERVICE_CLIENT_ID=$(sed -n 's/^SERVICE_CLIENT_ID=//p' "$TMP/setup.env")
SERVICE_CLIENT_SECRET=$(sed -n 's/^SERVICE_CLIENT_SECRET=//p' "$TMP/setup.env")
[[ -n "$SUBSCRIBER_TOKEN" && -n "$SERVICE_CLIENT_ID" && -n "$SERVICE_CLIENT_SECRET" ]] \
  || die "set-up printed no tokens (see $TMP/setup.env)"
publish_token >/dev/null || die "IssueServiceToken failed"
log "subscriber $SUBSCRIBER_ID (topic user:$SUBSCRIBER_ID); service account $SERVICE_CLIENT_ID (notify.publish)"

has_case() { [[ ",$CASES," == *",$1,"* ]]; }
if has_case c; then start_gateway; fi

if has_case a; then
  start_notify
  # The whole case: opening the streams, then publishing.
  [[ $PERF -eq 0 ]] || perf_start "$NOTIFY_PID" "$TMP/results/perf_a.data"
  run_case a_direct_big "$STREAMS_BIG" "$NOTIFY_ADDR" "$NOTIFY_PID" notify-svc
  perf_finish "$TMP/results/perf_a.data"
  stop_notify
fi
if has_case e; then
  start_notify
  # Case a's streams, but every Publish on a topic none of them follows.
  run_case e_elsewhere_big "$STREAMS_BIG" "$NOTIFY_ADDR" "$NOTIFY_PID" notify-svc \
    --publish-topic user:elsewhere
  stop_notify
fi
if has_case b; then
  start_notify
  run_case b_direct_small "$STREAMS_SMALL" "$NOTIFY_ADDR" "$NOTIFY_PID" notify-svc
  stop_notify
fi
if has_case c || has_case d; then
  start_notify
  if has_case d; then
    run_case d_direct_beside "$STREAMS_SMALL" "$NOTIFY_ADDR" "$NOTIFY_PID" notify-svc
  fi
  if has_case c; then
    "$LOAD_BIN" health --target "http://$GATEWAY_ADDR" --service munity.notify.v1.Notify --timeout-secs 30 \
      || die "the gateway does not see notify-svc serving"
    run_case c_gateway "$STREAMS_SMALL" "$GATEWAY_ADDR" "$GATEWAY_PID" gateway
    kill -0 "$GATEWAY_PID" 2>/dev/null || die "the gateway died"
  fi
  stop_notify
fi

echo
echo "Munity notify-svc streaming benchmark: one topic (user:<id>), $RATE notifications/s x $PAYLOAD B for $DURATION s, streams over $CONNECTIONS HTTP/2 connections; Publish straight to notify-svc, $( ((IN_FLIGHT == 0)) && echo "one call every 1/$RATE s however many are in flight" || echo "at most $IN_FLIGHT in flight")"
echo "$PROFILE binaries; $(nproc) CPUs; notify-svc $SERVER_THREADS worker threads (embedded hub and inbox); gateway threads $GATEWAY_THREADS; client notify-load ${CLIENT_THREADS:-$(nproc)} threads in the same machine"
echo "RSS/stream: notify-svc VmRSS (all streams subscribed - connections only) / streams; after load: (after publishing - connections only) / streams; 'ga': the gateway's RSS, not notify-svc's"
"$LOAD_BIN" report "${SUMMARY_ARGS[@]}" "${RESULTS[@]}"
