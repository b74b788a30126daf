#!/usr/bin/env bash
# events-svc benchmark through munity-gateway, embedded and CQL backends.
#
# One run, alternating: every round measures each concurrency, each backend
# and each call in turn (ghz, one HTTP/2 connection, every call with
# `authorization: Bearer <JWT>`, all through the gateway):
#   GetMe        munity.users.v1.Users/GetMe (baseline)
#   CreateEvent  munity.events.v1.Events/CreateEvent (one option, no community)
#   Vote         munity.events.v1.Events/Vote on one 10-option event made at
#                set-up, optionId = request number mod 10 (same user)
# Backends (both up for the whole run):
#   embedded     `munity dev`: gateway, users-svc, events-svc in one process
#   cql          users-svc + events-svc on Cassandra, Redis event log,
#                munity-gateway in front (three processes, plus the store)
# Prints per (backend, call, concurrency) req/s, p50, p99, errors and CPU
# seconds per 1,000 calls of the gateway, the services and (cql) the store.
# Everything on loopback; every process started here is stopped on exit.
# See bench/events/README.md.
#
# Usage: bench/events/run.sh [--profile release] [--no-build] [--rounds 2]
#          [--duration 5s] [--warmup 2s] [--concurrency 4,32]
#          [--backends embedded,cql] [--threads 1] [--keep]
#   --profile: cargo profile to build and run (dev: fast to build, for
#   trying the script out; not for figures).
#   --threads: gateway worker threads (both backends).
#   --keep: keep the work dir (logs, configs, ghz JSON).
set -euo pipefail

PROFILE=release
BUILD=1
ROUNDS=2
DURATION=5s
WARMUP=2s
CONCURRENCY=4,32
BACKENDS=embedded,cql
THREADS=1
KEEP=0

usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --profile) PROFILE="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --rounds|-r) ROUNDS="$2"; shift 2 ;;
    --duration|-z) DURATION="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --concurrency|-c) CONCURRENCY="$2"; shift 2 ;;
    --backends) BACKENDS="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
[[ "$CONCURRENCY" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] \
  || { echo "run.sh: --concurrency takes positive integers separated by commas, got '$CONCURRENCY'" >&2; exit 2; }
[[ "$BACKENDS" =~ ^(embedded|cql)(,(embedded|cql))?$ ]] \
  || { echo "run.sh: --backends takes embedded, cql or both (comma-separated), got '$BACKENDS'" >&2; exit 2; }
[[ "$PROFILE" =~ ^[A-Za-z0-9_-]+$ ]] || { echo "run.sh: bad --profile '$PROFILE'" >&2; exit 2; }
for d in "$DURATION" "$WARMUP"; do
  [[ "$d" =~ ^[1-9][0-9]*s$ ]] || { echo "run.sh: durations are whole seconds like 5s, got '$d'" >&2; exit 2; }
done
for n in "$ROUNDS" "$THREADS"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: expected a positive integer, got '$n'" >&2; exit 2; }
done
IFS=, read -r -a CONCURRENCIES <<<"$CONCURRENCY"
IFS=, read -r -a BACKEND_LIST <<<"$BACKENDS"
CALLS=(GetMe CreateEvent Vote)

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
export PATH="$HOME/go/bin:/usr/local/go/bin:$PATH"
TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/munity-target}"
# cargo puts the dev and test profiles under target/debug, bench under
# target/release, every other profile under its own name.
case "$PROFILE" in
  dev|test) PROFILE_DIR=debug ;;
  bench) PROFILE_DIR=release ;;
  *) PROFILE_DIR="$PROFILE" ;;
esac
BIN_DIR="$TARGET_DIR/$PROFILE_DIR"
MUNITY_BIN="$BIN_DIR/munity"
USERS_BIN="$BIN_DIR/users-svc"
EVENTS_BIN="$BIN_DIR/events-svc"
GATEWAY_BIN="$BIN_DIR/munity-gateway"
RUN_DIR="${MUNITY_RUN_DIR:-$HOME/.cache/munity/run}"   # scripts/{redis,cassandra}.sh state

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

has_backend() { [[ ",$BACKENDS," == *",$1,"* ]]; }

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
  command -v python3 >/dev/null || die "python3 is required"
}

# ---------------------------------------------------------- processes ----
TMP=""
PIDS=()
GHZ_PID=""
STOP_REDIS=0       # 1 when this script started Redis / Cassandra itself
STOP_CASSANDRA=0
CQL_KEYSPACES=()   # dropped on exit
CQL_NODE=""
REDIS_URL=""
REDIS_KEY=""
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  local pid
  if [[ -n "$GHZ_PID" ]]; then kill -TERM "$GHZ_PID" 2>/dev/null || true; wait "$GHZ_PID" 2>/dev/null || true; fi
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "pid $pid did not stop in 10 s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  # The CQL backend's data: its keyspaces and its event-log stream.
  if ((${#CQL_KEYSPACES[@]})) && [[ -n "$CQL_NODE" ]]; then
    python3 "$HERE/cql_drop.py" "$CQL_NODE" "${CQL_KEYSPACES[@]}" \
      || log "WARNING: could not drop keyspaces ${CQL_KEYSPACES[*]}"
  fi
  if [[ -n "$REDIS_KEY" && $STOP_REDIS -eq 0 ]] && command -v redis-cli >/dev/null; then
    redis-cli -u "$REDIS_URL" DEL "$REDIS_KEY" >/dev/null 2>&1 || true
  fi
  if [[ $STOP_CASSANDRA -eq 1 ]]; then
    log "stopping the Cassandra node this run started"
    bash "$REPO/scripts/cassandra.sh" stop >&2 || true
  fi
  if [[ $STOP_REDIS -eq 1 ]]; then
    log "stopping the Redis this run started"
    bash "$REPO/scripts/redis.sh" stop >&2 || true
  fi
  if [[ -n "$TMP" ]]; then
    if [[ $KEEP -eq 1 || $status -ne 0 ]]; then
      log "logs and results kept in $TMP"
    else
      rm -rf "$TMP"
    fi
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

wait_for_file() {  # wait_for_file FILE PID SECONDS LOG
  local file=$1 pid=$2 deadline=$((SECONDS + $3))
  until [[ -s "$file" ]]; do
    kill -0 "$pid" 2>/dev/null || { cat "$4" >&2; die "process $pid exited before writing $file"; }
    (( SECONDS < deadline )) || { cat "$4" >&2; die "timed out waiting for $file"; }
    sleep 0.1
  done
}

wait_for_line() {  # wait_for_line FILE PATTERN PID SECONDS
  local file=$1 pattern=$2 pid=$3 deadline=$((SECONDS + $4))
  until grep -q "$pattern" "$file" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { cat "$file" >&2; die "process $pid exited before printing '$pattern'"; }
    (( SECONDS < deadline )) || { cat "$file" >&2; die "timed out waiting for '$pattern' in $file"; }
    sleep 0.1
  done
}

json_get() {  # json_get FILE KEY
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}

grpc() {  # grpc ADDR METHOD DATA [TOKEN]: one call through grpcurl, JSON out
  local auth=()
  [[ -z "${4:-}" ]] || auth=(-H "authorization: Bearer $4")
  grpcurl -plaintext -max-time 10 -protoset "$PROTOSET" "${auth[@]}" -d "$3" "$1" "$2"
}

# CPU (utime + stime, in clock ticks) of a process or thread, from its stat
# file. Field 2 (comm) may contain spaces, so cut after the last ')'.
stat_ticks() {
  local stat
  stat=$(cat "$1" 2>/dev/null) || { echo 0; return; }
  stat=${stat##*) }
  local -a f
  read -r -a f <<<"$stat"
  echo $(( f[11] + f[12] ))
}
proc_ticks() { [[ -n "$1" ]] && stat_ticks "/proc/$1/stat" || echo 0; }

# `munity dev` runs everything in one process: the gateway's threads are
# Pingora's (named after its services: "BG munity-gateway", "BG admin",
# "BG health ...", ...); the services run on tokio's threads
# ("tokio-rt-worker") and the main thread. Pingora's threads live as long
# as the process, so gateway = sum over them; services = process - gateway
# (which keeps the CPU of tokio blocking threads that ended in between).
pingora_thread_ticks() {
  local pid=$1 total=0 task comm
  for task in /proc/"$pid"/task/*; do
    [[ "${task##*/}" != "$pid" ]] || continue
    comm=$(cat "$task/comm" 2>/dev/null) || continue
    [[ "$comm" != tokio-* ]] || continue
    total=$(( total + $(stat_ticks "$task/stat") ))
  done
  echo "$total"
}

# sample BACKEND: "gateway services users events store" CPU ticks so far
# ("-" where a figure does not apply).
sample() {
  case "$1" in
    embedded)
      local all gw
      all=$(proc_ticks "$EMB_PID"); gw=$(pingora_thread_ticks "$EMB_PID")
      echo "$gw $((all - gw)) - - -" ;;
    cql)
      local u e store=0 pid
      u=$(proc_ticks "$CQL_USERS_PID"); e=$(proc_ticks "$CQL_EVENTS_PID")
      for pid in $(cat "$RUN_DIR/cassandra/cassandra.pid" "$RUN_DIR/redis/redis.pid" 2>/dev/null); do
        store=$(( store + $(proc_ticks "$pid") ))
      done
      echo "$(proc_ticks "$CQL_GATEWAY_PID") $((u + e)) $u $e $store" ;;
  esac
}

diff_samples() {  # diff_samples "BEFORE" "AFTER": tab-separated differences
  local -a a b out
  read -r -a a <<<"$1"; read -r -a b <<<"$2"
  local i
  for i in "${!a[@]}"; do
    if [[ "${a[$i]}" == "-" ]]; then out+=("-"); else out+=($(( b[i] - a[i] ))); fi
  done
  (IFS=$'\t'; echo "${out[*]}")
}

# ------------------------------------------------------------ backends ----
# The gateway's rate limits stay ON (as in production and bench/gateway),
# with quotas no run can reach: the default quota (every method without a
# rule of its own, e.g. GetMe and Vote), and a configured rule for
# CreateEvent, which replaces the quota its proto declares (30/min, burst
# 10; a configured rule for a method wins over the declared one).
write_gateway_config() {  # write_gateway_config FILE [USERS_ADDR EVENTS_ADDR]
  {
    echo "# munity-gateway config written by bench/events/run.sh"
    echo "[gateway]"
    echo "token_cache_capacity = 100000"
    echo "health_check_interval_ms = 1000"
    if [[ $# -eq 3 ]]; then
      echo
      echo "[gateway.routes.users]"
      echo "upstreams = [\"$2\"]"
      echo
      echo "[gateway.routes.events]"
      echo "upstreams = [\"$3\"]"
    fi
    cat <<'TOML'

[gateway.rate_limits]
enabled = true
mode = "local"
default = { requests = 1000000, per_secs = 1, burst = 1000000 }

[[gateway.rate_limits.rules]]
method = "/munity.events.v1.Events/CreateEvent"
requests = 1000000
per_secs = 1
burst = 1000000
TOML
  } >"$1"
}

# Settings both backends share: long-lived access tokens (a long run must
# not outlive the bench user's token), gateway threads, quiet logs.
COMMON_ENV=(
  MUNITY_USERS__TOKENS__ACCESS_TTL_SECS=86400
  MUNITY_GATEWAY__THREADS="$THREADS"
  MUNITY_GATEWAY__SHUTDOWN_GRACE_SECS=0
  RUST_LOG=warn
)

start_embedded() {
  local dir="$TMP/embedded"
  mkdir -p "$dir/data"
  write_gateway_config "$dir/munity.toml"
  (cd "$dir" && exec env "${COMMON_ENV[@]}" \
      MUNITY_DEV__ANY_PORT=true \
      MUNITY_READY_FILE="$dir/ready.json" \
      "$MUNITY_BIN" --config "$dir/munity.toml" dev --data-dir "$dir/data") \
    >"$dir/munity.log" 2>&1 &
  EMB_PID=$!; PIDS+=("$EMB_PID")
  wait_for_file "$dir/ready.json" "$EMB_PID" 60 "$dir/munity.log"
  EMB_GATEWAY=$(json_get "$dir/ready.json" gateway)
  EMB_USERS=$(json_get "$dir/ready.json" users)
  log "embedded: munity dev pid $EMB_PID, gateway $EMB_GATEWAY, users-svc $EMB_USERS, events-svc $(json_get "$dir/ready.json" events)"
}

start_cql() {
  local dir="$TMP/cql" out
  mkdir -p "$dir"
  if ! bash "$REPO/scripts/redis.sh" status 2>/dev/null; then STOP_REDIS=1; fi
  out=$(bash "$REPO/scripts/redis.sh" start) || die "scripts/redis.sh start failed"
  REDIS_URL=$(sed -n 's/^REDIS_URL=//p' <<<"$out" | tail -n1)
  [[ -n "$REDIS_URL" ]] || die "scripts/redis.sh start printed no REDIS_URL"
  if ! bash "$REPO/scripts/cassandra.sh" status >/dev/null 2>&1; then
    STOP_CASSANDRA=1
    log "starting Cassandra (scripts/cassandra.sh start; a minute or more)"
  fi
  out=$(bash "$REPO/scripts/cassandra.sh" start) || die "scripts/cassandra.sh start failed"
  CQL_NODE=$(sed -n 's/^CASSANDRA_CQL=//p' <<<"$out" | tail -n1)
  [[ -n "$CQL_NODE" ]] || die "scripts/cassandra.sh start printed no CASSANDRA_CQL"

  local tag
  tag="$(date +%s)_$$"
  local ks_users="bench_users_$tag" ks_events="bench_events_$tag"
  CQL_KEYSPACES=("$ks_users" "$ks_events")
  REDIS_KEY="munity:bench:events:$tag"
  local bus=(
    MUNITY_BUS__BACKEND=redis
    MUNITY_BUS__REDIS_URL="$REDIS_URL"
    MUNITY_BUS__REDIS_KEY="$REDIS_KEY"
  )
  log "cql: Cassandra $CQL_NODE (keyspaces $ks_users, $ks_events), Redis $REDIS_URL (stream $REDIS_KEY)"

  (cd "$dir" && exec env "${COMMON_ENV[@]}" "${bus[@]}" \
      MUNITY_USERS__LISTEN=127.0.0.1:0 \
      MUNITY_USERS__STORAGE__BACKEND=cql \
      MUNITY_USERS__STORAGE__NODES="[$CQL_NODE]" \
      MUNITY_USERS__STORAGE__KEYSPACE="$ks_users" \
      MUNITY_USERS__STORAGE__REQUEST_TIMEOUT_MS=20000 \
      MUNITY_READY_FILE="$dir/users.ready.json" \
      "$USERS_BIN") >"$dir/users-svc.log" 2>&1 &
  CQL_USERS_PID=$!; PIDS+=("$CQL_USERS_PID")
  wait_for_file "$dir/users.ready.json" "$CQL_USERS_PID" 120 "$dir/users-svc.log"
  CQL_USERS=$(json_get "$dir/users.ready.json" users)

  (cd "$dir" && exec env "${COMMON_ENV[@]}" "${bus[@]}" \
      MUNITY_EVENTS__LISTEN=127.0.0.1:0 \
      MUNITY_EVENTS__STORAGE__BACKEND=cql \
      MUNITY_EVENTS__STORAGE__NODES="[$CQL_NODE]" \
      MUNITY_EVENTS__STORAGE__KEYSPACE="$ks_events" \
      MUNITY_EVENTS__STORAGE__REQUEST_TIMEOUT_MS=20000 \
      MUNITY_AUTH__JWKS_URL="http://$CQL_USERS" \
      MUNITY_READY_FILE="$dir/events.ready.json" \
      "$EVENTS_BIN") >"$dir/events-svc.log" 2>&1 &
  CQL_EVENTS_PID=$!; PIDS+=("$CQL_EVENTS_PID")
  wait_for_file "$dir/events.ready.json" "$CQL_EVENTS_PID" 120 "$dir/events-svc.log"
  CQL_EVENTS=$(json_get "$dir/events.ready.json" events)

  write_gateway_config "$dir/gateway.toml" "$CQL_USERS" "$CQL_EVENTS"
  (cd "$dir" && exec env "${COMMON_ENV[@]}" \
      MUNITY_GATEWAY__LISTEN=127.0.0.1:0 \
      MUNITY_GATEWAY__ADMIN_LISTEN=127.0.0.1:0 \
      MUNITY_GATEWAY__JWKS_ENDPOINT="http://$CQL_USERS" \
      MUNITY_AUTH__JWKS_URL="http://$CQL_USERS" \
      "$GATEWAY_BIN" --config "$dir/gateway.toml") >"$dir/gateway.log" 2>&1 &
  CQL_GATEWAY_PID=$!; PIDS+=("$CQL_GATEWAY_PID")
  wait_for_line "$dir/gateway.log" "munity-gateway: listening on grpc://" "$CQL_GATEWAY_PID" 30
  CQL_GATEWAY=$(sed -n 's|.*munity-gateway: listening on grpc://\([^ ]*\).*|\1|p' "$dir/gateway.log" | head -n1)
  log "cql: users-svc pid $CQL_USERS_PID $CQL_USERS, events-svc pid $CQL_EVENTS_PID $CQL_EVENTS, gateway pid $CQL_GATEWAY_PID $CQL_GATEWAY"
}

# Registers the bench user (directly at users-svc: Register has a 5/min quota
# at the gateway), then waits until GetMe and CreateEvent pass through the
# gateway (its health checks must have found both upstreams serving), and
# writes the three ghz request files. Sets <BACKEND>_TOKEN.
set_up_calls() {  # set_up_calls BACKEND GATEWAY_ADDR USERS_ADDR
  local backend=$1 gateway=$2 users=$3 dir="$TMP/$1" token deadline out
  local email="bench-$$-$RANDOM@example.com" password="bench password $RANDOM$RANDOM"
  deadline=$((SECONDS + 30))
  until grpc "$users" munity.users.v1.Users/Register \
      "{\"email\":\"$email\",\"password\":\"$password\",\"displayName\":\"Bench\"}" \
      >"$dir/register.json" 2>"$dir/register.err"; do
    (( SECONDS < deadline )) || { cat "$dir/register.err" >&2; die "$backend: Register failed"; }
    sleep 0.5
  done
  token=$(json_get "$dir/register.json" accessToken)
  [[ -n "$token" ]] || die "$backend: no accessToken in the Register response"
  printf -v "${backend^^}_TOKEN" '%s' "$token"

  deadline=$((SECONDS + 30))
  until out=$(grpc "$gateway" munity.users.v1.Users/GetMe '{}' "$token" 2>&1); do
    (( SECONDS < deadline )) || die "$backend: no successful GetMe through the gateway after 30 s: $out"
    sleep 0.3
  done
  # The event everyone votes on: 10 options (the most CreateEvent allows).
  local options
  options=$(python3 -c 'import json; print(json.dumps([{"start": "2030-01-%02dT09:00:00Z" % d, "end": "2030-01-%02dT12:00:00Z" % d} for d in range(10, 20)]))')
  deadline=$((SECONDS + 30))
  until grpc "$gateway" munity.events.v1.Events/CreateEvent \
      "{\"title\":\"bench vote\",\"options\":$options,\"votingDeadline\":\"2030-01-05T00:00:00Z\"}" \
      "$token" >"$dir/vote-event.json" 2>"$dir/vote-event.err"; do
    (( SECONDS < deadline )) || { cat "$dir/vote-event.err" >&2; die "$backend: CreateEvent through the gateway failed"; }
    sleep 0.3
  done
  local event_id
  event_id=$(json_get "$dir/vote-event.json" id)

  echo '{}' >"$dir/GetMe.json"
  echo '{"title":"bench meeting","description":"events-svc benchmark","options":[{"start":"2030-01-10T09:00:00Z","end":"2030-01-10T12:00:00Z"}],"votingDeadline":"2030-01-05T00:00:00Z"}' \
    >"$dir/CreateEvent.json"
  # A ghz call template: the last digit of the zero-padded request number,
  # i.e. RequestNumber mod 10 (Go templates have no arithmetic; ghz has no
  # mod function). A file, because ghz re-encodes -d and would escape the
  # quotes inside the action.
  printf '{"eventId":"%s","optionId":{{ slice (printf "%%010d" .RequestNumber) 9 }} }\n' \
    "$event_id" >"$dir/Vote.json"
  log "$backend: bench user $email, vote event $event_id"
}

gateway_addr() { if [[ $1 == embedded ]]; then echo "$EMB_GATEWAY"; else echo "$CQL_GATEWAY"; fi; }
token_of() { if [[ $1 == embedded ]]; then echo "$EMBEDDED_TOKEN"; else echo "$CQL_TOKEN"; fi; }
method_of() {
  case "$1" in
    GetMe) echo munity.users.v1.Users/GetMe ;;
    *) echo "munity.events.v1.Events/$1" ;;
  esac
}

run_ghz() {  # run_ghz BACKEND CALL CONCURRENCY DURATION OUT.json
  local seconds=${4%s}
  # In the background and waited for, so a signal to this script is handled
  # at once (bash defers traps until a foreground child exits).
  timeout $(( seconds + 60 )) ghz --insecure --protoset "$PROTOSET" \
    --call "$(method_of "$2")" \
    --data-file "$TMP/$1/$2.json" \
    -m "{\"authorization\":\"Bearer $(token_of "$1")\"}" \
    -c "$3" --connections 1 \
    -z "$4" --duration-stop wait \
    -O json -o "$5" \
    "$(gateway_addr "$1")" &
  GHZ_PID=$!
  local status=0
  wait "$GHZ_PID" || status=$?
  GHZ_PID=""
  return "$status"
}

warn_if_something_died() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || log "WARNING: pid $pid ($(tr '\0' ' ' </proc/$pid/cmdline 2>/dev/null || echo gone)) died during the run"
  done
}

# ---------------------------------------------------------------- main ----
ensure_tools

if [[ $BUILD -eq 1 ]]; then
  packages=()
  has_backend embedded && packages+=(-p munity)
  has_backend cql && packages+=(-p users-svc -p events-svc -p munity-gateway)
  log "building $PROFILE binaries into $TARGET_DIR"
  (cd "$REPO" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --locked --profile "$PROFILE" "${packages[@]}" --bins)
fi
if has_backend embedded; then
  [[ -x "$MUNITY_BIN" ]] || die "missing $MUNITY_BIN (run without --no-build)"
fi
if has_backend cql; then
  for bin in "$USERS_BIN" "$EVENTS_BIN" "$GATEWAY_BIN"; do
    [[ -x "$bin" ]] || die "missing $bin (run without --no-build)"
  done
fi

TMP="$(mktemp -d /tmp/munity-bench-events.XXXXXX)"
mkdir -p "$TMP/results"
CLK_TCK="$(getconf CLK_TCK)"
# ghz's proto parser predates proto3 `optional` (events.proto uses it), so
# ghz reads a descriptor set that grpcurl compiles from the protos.
PROTOSET="$TMP/munity.protoset"
(cd "$REPO/proto" && grpcurl -import-path . -proto munity/users/v1/users.proto \
    -proto munity/events/v1/events.proto -protoset-out "$PROTOSET" describe >/dev/null) \
  || die "grpcurl could not compile the protos into $PROTOSET"
log "profile $PROFILE ($BIN_DIR); backends $BACKENDS; concurrency $CONCURRENCY; $ROUNDS round(s) of $DURATION per call, warm-up $WARMUP; gateway threads $THREADS; work dir $TMP"

if has_backend embedded; then
  start_embedded
  set_up_calls embedded "$EMB_GATEWAY" "$EMB_USERS"
fi
if has_backend cql; then
  start_cql
  set_up_calls cql "$CQL_GATEWAY" "$CQL_USERS"
fi

# Warm-up: every backend and call once, at the highest concurrency.
max_c=0
for c in "${CONCURRENCIES[@]}"; do (( c > max_c )) && max_c=$c; done
for backend in "${BACKEND_LIST[@]}"; do
  for call in "${CALLS[@]}"; do
    log "warm-up $backend $call ($WARMUP, -c $max_c)"
    run_ghz "$backend" "$call" "$max_c" "$WARMUP" "$TMP/results/warmup_${backend}_$call.json" \
      || die "ghz warm-up $backend $call failed"
  done
done

# Rounds: each round runs every concurrency x backend x call once, so
# drift on the machine hits all alike.
rounds_tsv="$TMP/results/rounds.tsv"
: >"$rounds_tsv"
for round in $(seq "$ROUNDS"); do
  for c in "${CONCURRENCIES[@]}"; do
    for backend in "${BACKEND_LIST[@]}"; do
      for call in "${CALLS[@]}"; do
        out="$TMP/results/r${round}_c${c}_${backend}_$call.json"
        before=$(sample "$backend")
        run_ghz "$backend" "$call" "$c" "$DURATION" "$out" \
          || die "ghz $backend $call -c $c failed (round $round)"
        after=$(sample "$backend")
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$c" "$backend" "$call" "$out" \
          "$(diff_samples "$before" "$after")" >>"$rounds_tsv"
        log "round $round -c $c $backend $call: $(python3 "$HERE/report.py" --brief "$out")"
      done
    done
  done
done
warn_if_something_died

echo
echo "Munity events-svc benchmark through munity-gateway: ghz -c $CONCURRENCY --connections 1 -z $DURATION x $ROUNDS round(s); $PROFILE binaries; gateway threads $THREADS"
echo "$(nproc) CPUs; ghz $(go version -m "$(command -v ghz)" 2>/dev/null | awk '$1 == "mod" {print $3}'); rate limits ON with quotas of 1e6/s (CreateEvent's proto quota overridden)"
has_backend embedded && echo "embedded: munity dev (one process; gateway = its Pingora threads, services = the rest; redb stores)"
has_backend cql && echo "cql: users-svc + events-svc on Cassandra $CQL_NODE, Redis event log; store CPU = Cassandra + Redis processes (shared: anything else using them counts too)"
report_status=0
python3 "$HERE/report.py" "$rounds_tsv" "$CLK_TCK" || report_status=$?
if [[ $report_status -ne 0 ]]; then
  KEEP=1
  log "some calls failed; ghz JSON kept in $TMP/results"
fi
