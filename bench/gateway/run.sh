#!/usr/bin/env bash
# Unary gRPC benchmark: users-svc direct vs munity-gateway vs nginx grpc_pass,
# with two reference proxies beside them (bench/proxies): bare Pingora (the
# gateway's proxy core with none of its work) and bare hyper (an HTTP/2
# relay on hyper, the alternative data path).
#
# One run, alternating rounds (direct, gateway, nginx, pingora, hyper;
# repeated), ghz at a
# fixed concurrency against authenticated munity.users.v1.Users/GetMe.
# Prints req/s, p50, p99, proxy and users-svc CPU seconds per 100k requests,
# and gateway-vs-nginx ratios. Everything on loopback; every process started
# here is stopped on exit. See bench/gateway/README.md.
#
# Usage: bench/gateway/run.sh [--threads N] [--concurrency C] [--rounds R]
#          [--duration 5s] [--warmup 2s] [--connections K] [--no-build]
#          [--profile release-lto] [--keep] [--perf] [--summary FILE]
#   --perf: perf-record each proxy during round 1, then print where its CPU
#   goes per call (kernel, allocation, h2, Pingora, tokio, ours...:
#   perf_split.py).
#        bench/gateway/run.sh --streams [--streams-count 1000]
#          [--streams-hold 10] [--streams-rate 10] [--connections 10]
#          [--threads N] [--no-build] [--profile release-lto] [--keep]
#          [--summary FILE]
#   --concurrency may be a list (4,32): each value is measured in turn with
#   the same processes, then a one-line-per-value table is printed.
#   --profile: the cargo profile to build and run (dev, release, ...);
#   release-lto is what the published figures use.
#   --streams: N concurrent streams (the health_ticker example's ticking
#   Health/Watch, called as munity.bench.v1.Ticker/Watch) held open through
#   the gateway, then nginx, bare Pingora and bare hyper; the ticker sends --streams-rate messages/s on
#   each. Prints open streams, messages/s, proxy CPU per message, RSS/HWM
#   before, during and after, and RSS per stream.
#   --summary FILE: append a line per target of issue 24 this run measured
#   (gateway vs nginx: CPU per call at -c 4 and -c 32, throughput at -c 32;
#   with --streams, messages per proxy CPU-second and memory per stream)
#   to FILE, in bench/summary.py's format (bench/all.sh reads it).
#   Binaries come from $CARGO_TARGET_DIR (default ~/.cache/munity-target).
set -euo pipefail

THREADS=1         # nginx worker_processes == gateway threads
CONCURRENCY=4
ROUNDS=3
DURATION=5s
WARMUP=2s
CONNECTIONS=""    # client connections (load is spread over them); default 1, --streams 10
BUILD=1
MODE=unary        # unary | streams
STREAMS_COUNT=1000
STREAMS_HOLD=10   # seconds all streams are held open
STREAMS_OPEN_TIMEOUT=20  # seconds to wait for every stream's first message
STREAMS_RATE=10   # status flips per second at the ticker = messages/s per stream
KEEP=0
PERF=0            # --perf: perf-record the proxies during round 1
SUMMARY=""        # --summary FILE
# The release-lto profile (Cargo.toml): what a deployment image would ship,
# and what the figures in README.md were measured with. dev or release build
# much faster, for trying the script out.
PROFILE=release-lto

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --threads|--workers) THREADS="$2"; shift 2 ;;
    --concurrency|-c) CONCURRENCY="$2"; shift 2 ;;
    --rounds|-r) ROUNDS="$2"; shift 2 ;;
    --duration|-z) DURATION="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --connections) CONNECTIONS="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --profile) PROFILE="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --perf) PERF=1; KEEP=1; shift ;;
    --streams) MODE=streams; shift ;;
    --streams-count) STREAMS_COUNT="$2"; shift 2 ;;
    --streams-hold) STREAMS_HOLD="$2"; shift 2 ;;
    --streams-open-timeout) STREAMS_OPEN_TIMEOUT="$2"; shift 2 ;;
    --streams-rate) STREAMS_RATE="$2"; shift 2 ;;
    --summary) SUMMARY="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [[ -z "$CONNECTIONS" ]]; then
  if [[ $MODE == streams ]]; then CONNECTIONS=10; else CONNECTIONS=1; fi
fi
CONCURRENCY_LIST="$CONCURRENCY"
[[ "$CONCURRENCY_LIST" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] \
  || { echo "run.sh: --concurrency takes positive integers separated by commas, got '$CONCURRENCY_LIST'" >&2; exit 2; }
CONCURRENCY="${CONCURRENCY_LIST%%,*}"   # --streams and the log line use the first
[[ "$PROFILE" =~ ^[A-Za-z0-9_-]+$ ]] || { echo "run.sh: bad --profile '$PROFILE'" >&2; exit 2; }
for n in "$THREADS" "$ROUNDS" "$CONNECTIONS" "$STREAMS_COUNT" "$STREAMS_HOLD" "$STREAMS_OPEN_TIMEOUT" "$STREAMS_RATE"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: expected a positive integer, got '$n'" >&2; exit 2; }
done

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
export PATH="$HOME/go/bin:/usr/local/go/bin:$PATH"
TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/munity-target}"
[[ -z "$SUMMARY" || "$SUMMARY" == /* ]] || SUMMARY="$PWD/$SUMMARY"
SUMMARY_ARGS=(); [[ -z "$SUMMARY" ]] || SUMMARY_ARGS=(--summary "$SUMMARY")
# cargo puts the dev and test profiles under target/debug, bench under
# target/release, every other profile under its own name.
case "$PROFILE" in
  dev|test) PROFILE_DIR=debug ;;
  bench) PROFILE_DIR=release ;;
  *) PROFILE_DIR="$PROFILE" ;;
esac
USERS_BIN="${USERS_BIN:-$TARGET_DIR/$PROFILE_DIR/users-svc}"
GATEWAY_BIN="${GATEWAY_BIN:-$TARGET_DIR/$PROFILE_DIR/munity-gateway}"
TICKER_BIN="${TICKER_BIN:-$TARGET_DIR/$PROFILE_DIR/examples/health_ticker}"
BARE_PINGORA_BIN="${BARE_PINGORA_BIN:-$TARGET_DIR/$PROFILE_DIR/bare-pingora}"
BARE_HYPER_BIN="${BARE_HYPER_BIN:-$TARGET_DIR/$PROFILE_DIR/bare-hyper}"
PROTO_ARGS=()     # ghz's: a descriptor set, made once the work dir exists
GRPCURL_PROTO=(-import-path "$REPO/proto" -proto munity/users/v1/users.proto)

# log, die, free_ports, wait_for_file, wait_for_line
source "$(dirname "$0")/../lib.sh"

# ---------------------------------------------------------------- tools ----
ensure_tools() {
  if ! command -v ghz >/dev/null; then
    log "installing ghz (go install github.com/bojand/ghz/cmd/ghz@latest)"
    GOBIN="$HOME/go/bin" go install github.com/bojand/ghz/cmd/ghz@latest
  fi
  if ! command -v grpcurl >/dev/null; then
    log "installing grpcurl"
    GOBIN="$HOME/go/bin" go install github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.4
  fi
  if ! command -v nginx >/dev/null && [[ ! -x /usr/sbin/nginx ]]; then
    log "installing nginx (apt-get)"
    local sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y nginx \
      || { $sudo apt-get update && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y nginx; }
  fi
  NGINX_BIN="$(command -v nginx || echo /usr/sbin/nginx)"
  command -v python3 >/dev/null || die "python3 is required"
}

# ---------------------------------------------------------- processes ----
TMP=""
PIDS=()
GHZ_PID=""        # the running load client (ghz, or streams.py with --streams)
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [[ -n "$GHZ_PID" ]]; then kill -TERM "$GHZ_PID" 2>/dev/null || true; wait "$GHZ_PID" 2>/dev/null || true; fi
  stop_all "${PIDS[@]}"
  finish_tmp "$status"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

get_me() {  # get_me ADDR: one authenticated GetMe call, quiet
  grpcurl -plaintext -max-time 2 "${GRPCURL_PROTO[@]}" \
    -H "authorization: Bearer $TOKEN" "$1" munity.users.v1.Users/GetMe
}

wait_for_get_me() {  # wait_for_get_me ADDR NAME PID SECONDS
  local addr=$1 name=$2 pid=$3 deadline=$((SECONDS + $4)) out
  until out=$(get_me "$addr" 2>&1); do
    kill -0 "$pid" 2>/dev/null || die "$name exited; see $TMP"
    (( SECONDS < deadline )) || die "no successful GetMe through $name after $4 s: $out"
    sleep 0.2
  done
}

# proc_ticks: ../lib.sh.
proxy_ticks() {  # proxy_ticks TARGET: CPU ticks of the proxy's processes
  local total=0 pid
  case "$1" in
    direct) echo "-"; return ;;
    gateway) total=$(proc_ticks "$GATEWAY_PID") ;;
    pingora) total=$(proc_ticks "$PINGORA_PID") ;;
    hyper) total=$(proc_ticks "$HYPER_PID") ;;
    nginx)
      # master + workers (workers are the master's children)
      for pid in "$NGINX_PID" $(cat "/proc/$NGINX_PID/task/$NGINX_PID/children" 2>/dev/null); do
        total=$(( total + $(proc_ticks "$pid") ))
      done ;;
  esac
  echo "$total"
}

proxy_pids() {  # proxy_pids TARGET: one pid per line (gateway, or nginx master + workers)
  case "$1" in
    gateway) echo "$GATEWAY_PID" ;;
    pingora) echo "$PINGORA_PID" ;;
    hyper) echo "$HYPER_PID" ;;
    nginx) echo "$NGINX_PID"; tr ' ' '\n' <"/proc/$NGINX_PID/task/$NGINX_PID/children" | grep . ;;
  esac
}

warn_if_a_proxy_died() {
  local name
  for name in gateway nginx pingora hyper; do
    kill -0 "$(proxy_pids "$name" | head -n 1)" 2>/dev/null \
      || log "WARNING: $name died during the run"
  done
}

addr_of() {
  case "$1" in
    direct) echo "$USERS_ADDR" ;;
    gateway) echo "$GATEWAY_ADDR" ;;
    nginx) echo "$NGINX_ADDR" ;;
    pingora) echo "$PINGORA_ADDR" ;;
    hyper) echo "$HYPER_ADDR" ;;
  esac
}

run_ghz() {  # run_ghz TARGET DURATION OUT.json
  local seconds=${2%s}
  [[ "$seconds" =~ ^[0-9]+$ ]] || seconds=60
  # In the background and waited for, so a signal to this script is handled
  # at once (bash defers traps until a foreground child exits).
  timeout $(( seconds + 60 )) ghz --insecure "${PROTO_ARGS[@]}" \
    --call munity.users.v1.Users/GetMe \
    -d '{}' \
    -m "{\"authorization\":\"Bearer $TOKEN\"}" \
    -c "$CONCURRENCY" --connections "$CONNECTIONS" \
    -z "$2" --duration-stop wait \
    -O json -o "$3" \
    "$(addr_of "$1")" &
  GHZ_PID=$!
  local status=0
  wait "$GHZ_PID" || status=$?
  GHZ_PID=""
  return "$status"
}

# ---------------------------------------------------------------- main ----
ensure_tools

if [[ $BUILD -eq 1 ]]; then
  log "building $PROFILE binaries into $TARGET_DIR"
  (cd "$REPO" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --locked --profile "$PROFILE" -p users-svc -p munity-gateway -p bench-proxies --bins --example health_ticker)
fi
[[ -x "$USERS_BIN" ]] || die "missing $USERS_BIN (run without --no-build)"
[[ -x "$GATEWAY_BIN" ]] || die "missing $GATEWAY_BIN (run without --no-build)"
[[ -x "$BARE_PINGORA_BIN" ]] || die "missing $BARE_PINGORA_BIN (run without --no-build)"
[[ -x "$BARE_HYPER_BIN" ]] || die "missing $BARE_HYPER_BIN (run without --no-build)"
[[ $MODE != streams || -x "$TICKER_BIN" ]] || die "missing $TICKER_BIN (run without --no-build)"

TMP="$(work_dir gateway)"
chmod 755 "$TMP"
mkdir -p "$TMP/users-data" "$TMP/nginx/tmp" "$TMP/results"
# ghz's own proto parser refuses proto3 files that use the options proto
# (munity/options/v1/options.proto), so it reads a descriptor set that
# grpcurl compiles from the protos (as bench/events and bench/discuss do).
(cd "$REPO/proto" && grpcurl "${GRPCURL_PROTO[@]}" -protoset-out "$TMP/users.protoset" describe >/dev/null) \
  || die "grpcurl could not compile the protos into $TMP/users.protoset"
PROTO_ARGS=(--protoset "$TMP/users.protoset")
if [[ $MODE == streams ]]; then
  # The streams client needs grpcio: a venv in the work dir (pip's own cache
  # makes later runs quick); nothing is installed into the repo or system.
  log "installing grpcio into $TMP/venv"
  python3 -m venv "$TMP/venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$TMP/venv/bin/pip" install -q --disable-pip-version-check grpcio >"$TMP/pip.log" 2>&1 \
    || { cat "$TMP/pip.log" >&2; die "pip install grpcio failed"; }
fi
read -r USERS_PORT GATEWAY_PORT ADMIN_PORT NGINX_PORT TICKER_PORT PINGORA_PORT HYPER_PORT <<<"$(free_ports 7)"
USERS_ADDR="127.0.0.1:$USERS_PORT"
# Where both proxies send munity.bench.v1.Ticker: the ticker (a steady
# message source) for --streams; users-svc in the unary rounds, where
# nothing calls it (the gateway's health checks of the route then pass
# without a ticker running).
TICKER_ADDR="$USERS_ADDR"
GATEWAY_ADDR="127.0.0.1:$GATEWAY_PORT"
NGINX_ADDR="127.0.0.1:$NGINX_PORT"
PINGORA_ADDR="127.0.0.1:$PINGORA_PORT"
HYPER_ADDR="127.0.0.1:$HYPER_PORT"
CLK_TCK="$(getconf CLK_TCK)"
log "profile $PROFILE: $USERS_BIN, $GATEWAY_BIN"
if [[ $MODE == streams ]]; then
  log "streams: threads/workers=$THREADS streams=$STREAMS_COUNT connections=$CONNECTIONS hold=${STREAMS_HOLD}s"
else
  log "threads/workers=$THREADS concurrency=$CONCURRENCY_LIST connections=$CONNECTIONS rounds=$ROUNDS duration=$DURATION warmup=$WARMUP"
fi
log "users-svc $USERS_ADDR, gateway $GATEWAY_ADDR (admin 127.0.0.1:$ADMIN_PORT), nginx $NGINX_ADDR, bare Pingora $PINGORA_ADDR, bare hyper $HYPER_ADDR; work dir $TMP"

# users-svc ------------------------------------------------------------------
env MUNITY_USERS__LISTEN="$USERS_ADDR" \
    MUNITY_USERS__STORAGE__BACKEND=embedded \
    MUNITY_USERS__STORAGE__PATH="$TMP/users-data" \
    RUST_LOG=warn \
    "$USERS_BIN" >"$TMP/users-svc.log" 2>&1 &
USERS_PID=$!; PIDS+=("$USERS_PID")
wait_for_line "$TMP/users-svc.log" "users-svc: listening on grpc://" "$USERS_PID" 30

EMAIL="bench-$$-$RANDOM@example.com"
PASSWORD="bench password $RANDOM$RANDOM"
deadline=$((SECONDS + 30))
until grpcurl -plaintext -max-time 5 "${GRPCURL_PROTO[@]}" \
    -d "{\"email\":\"$EMAIL\",\"password\":\"$PASSWORD\",\"displayName\":\"Bench\"}" \
    "$USERS_ADDR" munity.users.v1.Users/Register >"$TMP/register.json" 2>&1; do
  (( SECONDS < deadline )) || { cat "$TMP/register.json" >&2; die "Register failed"; }
  sleep 0.2
done
grpcurl -plaintext -max-time 5 "${GRPCURL_PROTO[@]}" \
  -d "{\"email\":\"$EMAIL\",\"password\":\"$PASSWORD\"}" \
  "$USERS_ADDR" munity.users.v1.Users/Login >"$TMP/login.json" || die "Login failed"
TOKEN="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["accessToken"])' "$TMP/login.json")"
[[ -n "$TOKEN" ]] || die "no accessToken in Login response"
get_me "$USERS_ADDR" >/dev/null || die "GetMe against users-svc failed"
log "users-svc up (pid $USERS_PID); token for $EMAIL obtained"

# health_ticker (streams only) -------------------------------------------------
if [[ $MODE == streams ]]; then
  RUST_LOG=warn "$TICKER_BIN" --listen "127.0.0.1:$TICKER_PORT" --per-second "$STREAMS_RATE" \
    >"$TMP/ticker.log" 2>&1 &
  TICKER_PID=$!; PIDS+=("$TICKER_PID")
  wait_for_line "$TMP/ticker.log" "health-ticker: listening on grpc://" "$TICKER_PID" 30
  TICKER_ADDR="127.0.0.1:$TICKER_PORT"
  log "health_ticker up (pid $TICKER_PID, $STREAMS_RATE flips/s)"
fi

# munity-gateway -------------------------------------------------------------
sed -e "s|@USERS_ADDR@|$USERS_ADDR|g" -e "s|@TICKER_ADDR@|$TICKER_ADDR|g" \
  "$HERE/gateway.toml.template" >"$TMP/gateway.toml"
env MUNITY_GATEWAY__LISTEN="$GATEWAY_ADDR" \
    MUNITY_GATEWAY__ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT" \
    MUNITY_GATEWAY__THREADS="$THREADS" \
    MUNITY_GATEWAY__JWKS_ENDPOINT="http://$USERS_ADDR" \
    MUNITY_GATEWAY__RATE_LIMITS__ENABLED=true \
    MUNITY_GATEWAY__RATE_LIMITS__DEFAULT__REQUESTS=1000000 \
    MUNITY_GATEWAY__RATE_LIMITS__DEFAULT__PER_SECS=1 \
    MUNITY_GATEWAY__RATE_LIMITS__DEFAULT__BURST=1000000 \
    MUNITY_GATEWAY__SHUTDOWN_GRACE_SECS=0 \
    RUST_LOG=warn \
    "$GATEWAY_BIN" --config "$TMP/gateway.toml" >"$TMP/gateway.log" 2>&1 &
GATEWAY_PID=$!; PIDS+=("$GATEWAY_PID")
wait_for_line "$TMP/gateway.log" "munity-gateway: listening on grpc://" "$GATEWAY_PID" 30
wait_for_get_me "$GATEWAY_ADDR" munity-gateway "$GATEWAY_PID" 30
log "munity-gateway up (pid $GATEWAY_PID, threads=$THREADS)"

# nginx ----------------------------------------------------------------------
sed -e "s|@WORKERS@|$THREADS|g" -e "s|@DIR@|$TMP/nginx|g" \
    -e "s|@LISTEN@|$NGINX_ADDR|g" -e "s|@USERS_ADDR@|$USERS_ADDR|g" -e "s|@TICKER_ADDR@|$TICKER_ADDR|g" \
    "$HERE/nginx.conf.template" >"$TMP/nginx/nginx.conf"
"$NGINX_BIN" -t -q -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" \
  || die "nginx -t refused $TMP/nginx/nginx.conf"
"$NGINX_BIN" -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf" \
  >"$TMP/nginx/stdout.log" 2>&1 &
NGINX_PID=$!; PIDS+=("$NGINX_PID")
wait_for_get_me "$NGINX_ADDR" nginx "$NGINX_PID" 30
log "nginx up (master pid $NGINX_PID, worker_processes=$THREADS: $(cat "/proc/$NGINX_PID/task/$NGINX_PID/children" 2>/dev/null))"

# bare Pingora and bare hyper (bench/proxies) ---------------------------------
# One arena per worker thread, as the gateway gives itself (its main.rs).
start_bare() {  # start_bare NAME BIN ADDR: sets BARE_PID
  env MALLOC_ARENA_MAX="$THREADS" RUST_LOG=warn "$2" --listen "$3" --threads "$THREADS" \
    --upstream "$USERS_ADDR" --route "/munity.bench.v1.Ticker/=$TICKER_ADDR" \
    >"$TMP/$1.log" 2>&1 &
  BARE_PID=$!; PIDS+=("$BARE_PID")
  wait_for_line "$TMP/$1.log" "$1: listening on grpc://" "$BARE_PID" 30
  wait_for_get_me "$3" "$1" "$BARE_PID" 30
  log "$1 up (pid $BARE_PID, threads=$THREADS)"
}
start_bare bare-pingora "$BARE_PINGORA_BIN" "$PINGORA_ADDR"; PINGORA_PID=$BARE_PID
start_bare bare-hyper "$BARE_HYPER_BIN" "$HYPER_ADDR"; HYPER_PID=$BARE_PID

# streams ----------------------------------------------------------------------
run_streams() {  # run_streams LABEL ADDR OUT.json PIDS [CHILDREN_OF]
  # In the background and waited for, like ghz (signals are handled at once).
  timeout $(( STREAMS_HOLD + STREAMS_OPEN_TIMEOUT + 60 )) \
    "$TMP/venv/bin/python" "$HERE/streams.py" run \
    --label "$1" --target "$2" --out "$3" --pids "$4" --children-of "${5:-}" \
    --count "$STREAMS_COUNT" --connections "$CONNECTIONS" \
    --hold "$STREAMS_HOLD" --open-timeout "$STREAMS_OPEN_TIMEOUT" \
    --method /munity.bench.v1.Ticker/Watch --service munity.bench.Ticker \
    --token "$TOKEN" --offered-per-stream "$STREAMS_RATE" \
    --upstream-port "$TICKER_PORT" --upstream-pid "$TICKER_PID" &
  GHZ_PID=$!
  local status=0
  wait "$GHZ_PID" || status=$?
  GHZ_PID=""
  return "$status"
}

if [[ $MODE == streams ]]; then
  log "gateway: opening $STREAMS_COUNT Ticker/Watch streams over $CONNECTIONS connections"
  run_streams gateway "$GATEWAY_ADDR" "$TMP/results/streams_gateway.json" "$GATEWAY_PID" \
    || die "streams client against the gateway failed"
  log "nginx: opening $STREAMS_COUNT Ticker/Watch streams over $CONNECTIONS connections"
  run_streams nginx "$NGINX_ADDR" "$TMP/results/streams_nginx.json" "$NGINX_PID" "$NGINX_PID" \
    || die "streams client against nginx failed"
  for bare in pingora hyper; do
    log "bare $bare: opening $STREAMS_COUNT Ticker/Watch streams over $CONNECTIONS connections"
    run_streams "bare-$bare" "$(addr_of "$bare")" "$TMP/results/streams_$bare.json" "$(proxy_pids "$bare")" \
      || die "streams client against bare $bare failed"
  done
  warn_if_a_proxy_died
  echo
  echo "Munity gateway benchmark: $STREAMS_COUNT concurrent munity.bench.v1.Ticker/Watch streams (the health_ticker's grpc.health.v1.Health/Watch, {\"service\":\"munity.bench.Ticker\"}; JWT sent, checked by the gateway only) over $CONNECTIONS HTTP/2 connections, held ${STREAMS_HOLD} s; the ticker sends $STREAMS_RATE messages/s on each stream"
  echo "binaries: $PROFILE profile"
  echo "gateway threads = nginx worker_processes = $THREADS; $(nproc) CPUs; $("$NGINX_BIN" -v 2>&1); client: python grpcio $("$TMP/venv/bin/python" -c 'import grpc; print(grpc.__version__)')"
  echo "bare-pingora, bare-hyper: bench/proxies, reference proxies that check nothing (the gateway's core, and the alternative data path)"
  echo "memory: VmRSS/VmHWM of the gateway process, or nginx master + workers summed; 'all open' = max over samples every 0.5 s while held; RSS per stream = (all open max - before) / open streams"
  report_status=0
  python3 "$HERE/streams.py" report "$CLK_TCK" \
    "$TMP/results/streams_gateway.json" "$TMP/results/streams_nginx.json" \
    "$TMP/results/streams_pingora.json" "$TMP/results/streams_hyper.json" "${SUMMARY_ARGS[@]}" \
    || report_status=$?
  if [[ $report_status -ne 0 ]]; then
    KEEP=1
    log "some streams failed or did not open; results kept in $TMP/results"
  fi
  exit 0
fi

# rounds ---------------------------------------------------------------------
# --concurrency may list several values (4,32): the same processes are
# measured at each in turn, with results under results/c<N>/.
TARGETS=(direct gateway nginx pingora hyper)
IFS=, read -r -a CONCURRENCIES <<<"$CONCURRENCY_LIST"
report_status=0
sweep_dirs=()
for CONCURRENCY in "${CONCURRENCIES[@]}"; do
  results="$TMP/results/c$CONCURRENCY"
  mkdir -p "$results"
  sweep_dirs+=("$results")
  for target in "${TARGETS[@]}"; do
    log "warm-up $target ($WARMUP, -c $CONCURRENCY)"
    run_ghz "$target" "$WARMUP" "$results/warmup_$target.json" \
      || die "ghz warm-up against $target failed"
  done

  : >"$results/rounds.tsv"
  for round in $(seq "$ROUNDS"); do
    for target in "${TARGETS[@]}"; do
      out="$results/round${round}_$target.json"
      p0=$(proxy_ticks "$target"); u0=$(proc_ticks "$USERS_PID")
      perf_pid=""
      if [[ $PERF -eq 1 && $round -eq 1 && $target != direct ]]; then
        # Samples the proxy's processes (all threads) for the whole round.
        perf record -q -F 999 --call-graph dwarf,16384 -o "$results/perf_$target.data" \
          -p "$(proxy_pids "$target" | paste -sd,)" -- sleep "${DURATION%s}" >/dev/null 2>&1 &
        perf_pid=$!
      fi
      run_ghz "$target" "$DURATION" "$out" || die "ghz against $target failed (round $round)"
      [[ -z "$perf_pid" ]] || wait "$perf_pid" || true
      p1=$(proxy_ticks "$target"); u1=$(proc_ticks "$USERS_PID")
      if [[ "$p0" == "-" ]]; then pd="-"; else pd=$((p1 - p0)); fi
      printf '%s\t%s\t%s\t%s\t%s\n' "$round" "$target" "$out" "$pd" "$((u1 - u0))" >>"$results/rounds.tsv"
      log "-c $CONCURRENCY round $round $target: $(python3 "$HERE/report.py" --brief "$out")"
    done
  done

  warn_if_a_proxy_died

  echo
  echo "Munity gateway benchmark: unary munity.users.v1.Users/GetMe (JWT), ghz -c $CONCURRENCY --connections $CONNECTIONS -z $DURATION x $ROUNDS rounds; $PROFILE binaries"
  echo "gateway threads = nginx worker_processes = $THREADS; $(nproc) CPUs; $("$NGINX_BIN" -v 2>&1); ghz $(go version -m "$(command -v ghz)" 2>/dev/null | awk '$1 == "mod" {print $3}')"
  echo "gateway: JWT check (verified-token cache) + rate limiting ON (1e6 req/s quota); nginx: plain grpc_pass with upstream keepalive; bare Pingora, bare hyper: bench/proxies, checking nothing"
  python3 "$HERE/report.py" "$results" "$CLK_TCK" "${SUMMARY_ARGS[@]}" || report_status=$?
  if [[ $PERF -eq 1 ]]; then
    python3 "$HERE/perf_split.py" "$results" 999 || log "perf_split.py could not read the recordings"
  fi
done
if ((${#sweep_dirs[@]} > 1)); then
  python3 "$HERE/report.py" --sweep "${sweep_dirs[@]}"
fi
if [[ $report_status -ne 0 ]]; then
  KEEP=1
  log "some calls failed; ghz JSON kept in $TMP/results"
fi
