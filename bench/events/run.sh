#!/usr/bin/env bash
# events-svc benchmark through munity-gateway, embedded and CQL backends.
#
# One run, alternating: every round measures each concurrency, each backend
# and each call in turn (ghz, one HTTP/2 connection, every call with
# `authorization: Bearer <JWT>`, all through the gateway):
#   GetMe        munity.users.v1.Users/GetMe (baseline)
#   CreateEvent  munity.events.v1.Events/CreateEvent (one option, no community)
#   Vote         munity.events.v1.Events/Vote, every call a new vote: each
#                ghz run by a voter of its own, over the (event, option)
#                pairs of 10-option events made at set-up, in turn
# Backends (both up for the whole run):
#   embedded     `munity dev`: gateway, users-svc, events-svc in one process
#   cql          users-svc + events-svc on Cassandra, Redis event log,
#                munity-gateway in front (three processes, plus the store)
# Prints per (backend, call, concurrency) req/s, p50, p99, errors and CPU
# seconds per 1,000 calls of the gateway, the services and (cql) the store,
# and per backend how many Vote calls there were against how many distinct
# (user, event, option) votes they could cast.
# Everything on loopback; every process started here is stopped on exit.
# See bench/events/README.md.
#
# Usage: bench/events/run.sh [--profile release] [--no-build] [--rounds 2]
#          [--duration 5s] [--warmup 2s] [--concurrency 4,32]
#          [--backends embedded,cql] [--threads 1] [--keep] [--summary FILE]
#   --profile: cargo profile to build and run (dev: fast to build, for
#   trying the script out; not for figures). Binaries come from
#   $CARGO_TARGET_DIR (default ~/.cache/munity-target).
#   --threads: gateway worker threads (both backends).
#   --keep: keep the work dir (logs, configs, ghz JSON).
#   --summary FILE: append a line per target of issue 24 this run measured
#   (Vote and CreateEvent calls/s against GetMe's) to FILE, in
#   bench/summary.py's format (bench/all.sh reads it).
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
SUMMARY=""

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

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
    --summary) SUMMARY="$2"; shift 2 ;;
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
[[ -z "$SUMMARY" || "$SUMMARY" == /* ]] || SUMMARY="$PWD/$SUMMARY"
SUMMARY_ARGS=(); [[ -z "$SUMMARY" ]] || SUMMARY_ARGS=(--summary "$SUMMARY")
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

# log, die, free_ports, wait_for_file, wait_for_line
source "$(dirname "$0")/../lib.sh"

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
REGISTER_PIDS=()   # grpcurl Registers running in the background
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
  for pid in "${REGISTER_PIDS[@]}"; do
    [[ -z "$pid" ]] || { kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
  done
  stop_all "${PIDS[@]}"
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
  finish_tmp "$status"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

json_get() {  # json_get FILE KEY
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}

grpc() {  # grpc ADDR METHOD DATA [TOKEN]: one call through grpcurl, JSON out
  local auth=()
  [[ -z "${4:-}" ]] || auth=(-H "authorization: Bearer $4")
  grpcurl -plaintext -max-time "${GRPC_MAX_TIME:-10}" -protoset "$PROTOSET" "${auth[@]}" -d "$3" "$1" "$2"
}

# stat_ticks, proc_ticks and wait_quiet are in ../lib.sh.

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

# The backend's services, idle again (../lib.sh): each run's CPU is sampled
# after this, and the next run starts on an idle process. Cassandra and
# Redis are not waited for (their background work never stops).
wait_quiet_backend() {
  case "$1" in
    embedded) wait_quiet "$EMB_PID" ;;
    cql) wait_quiet "$CQL_GATEWAY_PID" "$CQL_USERS_PID" "$CQL_EVENTS_PID" ;;
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
# rule of its own, e.g. GetMe, Vote and ListEvents), and a configured rule
# for CreateEvent, which replaces the quota its proto declares (30/min,
# burst 10; a configured rule for a method wins over the declared one): it
# covers the benchmark and the set-up's vote events alike.
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
# not outlive the bench user's token; revocations are replayed for as long
# as the longest token lives, which users-svc checks at start), gateway
# threads, quiet logs.
COMMON_ENV=(
  MUNITY_USERS__TOKENS__ACCESS_TTL_SECS=86400
  MUNITY_AUTH__REVOCATION_REPLAY_SECS=90000
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

# Users register directly at users-svc (Register has a 5/min quota at the
# gateway).
register_request() {  # register_request NAME: a RegisterRequest (JSON)
  echo "{\"email\":\"bench-$1-$$-$RANDOM$RANDOM@example.com\",\"password\":\"bench password $RANDOM$RANDOM\",\"displayName\":\"Bench $1\"}"
}

# Registers one user, retrying for 30 s while users-svc comes up. The
# AuthResponse goes to OUT.json.
register() {  # register BACKEND USERS_ADDR NAME OUT.json
  local request deadline=$((SECONDS + 30))
  request=$(register_request "$3")
  until grpc "$2" munity.users.v1.Users/Register "$request" >"$4" 2>"$4.err"; do
    (( SECONDS < deadline )) || { cat "$4.err" >&2; die "$1: Register ($3) failed"; }
    sleep 0.5
  done
  [[ -n "$(json_get "$4" accessToken)" ]] || die "$1: no accessToken in $4"
}

# Registers users two at a time: users-svc hashes as many passwords at once
# as it has cores (a debug build takes seconds per hash), and refuses calls
# queued for over 2 s. One that fails is tried again alone.
register_all() {  # register_all BACKEND USERS_ADDR NAME:OUT.json...
  local backend=$1 users=$2 specs spec i k status
  shift 2
  specs=("$@")
  for (( i = 0; i < ${#specs[@]}; i += 2 )); do
    REGISTER_PIDS=()
    for spec in "${specs[@]:i:2}"; do
      grpcurl -plaintext -max-time 10 -protoset "$PROTOSET" -d "$(register_request "${spec%%:*}")" \
        "$users" munity.users.v1.Users/Register >"${spec#*:}" 2>"${spec#*:}.err" &
      REGISTER_PIDS+=($!)
    done
    for k in "${!REGISTER_PIDS[@]}"; do
      status=0
      wait "${REGISTER_PIDS[k]}" || status=$?
      REGISTER_PIDS[k]=""   # reaped: not to be signalled on exit
      (( status != 0 )) || continue
      spec=${specs[i + k]}
      register "$backend" "$users" "${spec%%:*}" "${spec#*:}"
    done
    REGISTER_PIDS=()
  done
  for spec in "${specs[@]}"; do
    [[ -n "$(json_get "${spec#*:}" accessToken)" ]] || die "$backend: no accessToken in ${spec#*:}"
  done
}
access_token() { json_get "$1" accessToken; }  # access_token AUTH_RESPONSE.json

# Vote must write: cast a new vote (a vote row and its VoteCast in the
# outbox), not find the caller's vote already there (Unchanged: nothing
# written, no domain event). So an organizer (a user of its own) makes
# 10-option events at set-up, and Vote.json is a JSON array of one request
# per (event, option) pair, events first (request i: event i mod E, option
# i div E), which ghz sends in turn: element RequestNumber mod its length,
# counting from 0 in every ghz run. Each Vote ghz run (the warm-up, then
# every round and concurrency) gets a voter of its own, registered at
# set-up: a run's calls are all new votes as long as they are no more than
# the pairs. There are at least VOTE_EVENTS_MIN events, more when a run may
# go faster (ensure_vote_pairs).
VOTE_EVENTS_MIN=300
VOTERS=$(( 1 + ROUNDS * ${#CONCURRENCIES[@]} ))   # per backend
declare -A VOTE_EVENTS=() VOTE_PAIRS=() NEXT_VOTER=()
VOTE_CREATE_RPS=0

# The organizer's events (ListEvents MINE through the gateway, 100 a page,
# in creation order), to DIR/vote-events.page.NNNN.json.
list_vote_events() {  # list_vote_events BACKEND
  local backend=$1 dir="$TMP/$1" token page=0 next="" file
  token=$(access_token "$dir/organizer.json")
  rm -f "$dir"/vote-events.page.*.json
  while :; do
    page=$((page + 1))
    printf -v file '%s/vote-events.page.%04d.json' "$dir" "$page"
    # A page is 100 events, each read with its vote counts: slow on a busy
    # debug CQL backend.
    GRPC_MAX_TIME=120 grpc "$(gateway_addr "$backend")" munity.events.v1.Events/ListEvents \
        "{\"filter\":\"EVENT_FILTER_MINE\",\"pageSize\":100,\"pageToken\":\"$next\"}" "$token" \
        >"$file" 2>"$dir/vote-events.err" \
      || { cat "$dir/vote-events.err" >&2; die "$backend: ListEvents (the vote events) failed"; }
    next=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("nextPageToken", ""))' "$file")
    [[ -n "$next" ]] || break
  done
}

# Creates N more vote events as the organizer (ghz CreateEvent through the
# gateway: the rule above lifts its quota), lists them all and rewrites
# Vote.json. Sets VOTE_EVENTS, VOTE_PAIRS and VOTE_CREATE_RPS.
add_vote_events() {  # add_vote_events BACKEND N
  local backend=$1 n=$2 dir="$TMP/$1" out expected events pairs
  expected=$(( ${VOTE_EVENTS[$backend]:-0} + n ))
  out="$dir/vote-events.create.$expected.json"
  ghz_wait 300 --call munity.events.v1.Events/CreateEvent \
      --data-file "$dir/vote-event.json" \
      -m "{\"authorization\":\"Bearer $(access_token "$dir/organizer.json")\"}" \
      -n "$n" -c $(( n < 8 ? n : 8 )) --connections 1 \
      -O json -o "$out" "$(gateway_addr "$backend")" \
    || die "$backend: ghz CreateEvent (vote events) failed"
  list_vote_events "$backend"
  read -r events pairs _ < <(python3 "$HERE/report.py" --vote-events "$dir/Vote.json" "$dir"/vote-events.page.*.json)
  (( events == expected )) \
    || die "$backend: the organizer has $events events, expected $expected (ghz: $(python3 "$HERE/report.py" --brief "$out"))"
  VOTE_EVENTS[$backend]=$events
  VOTE_PAIRS[$backend]=$pairs
  VOTE_CREATE_RPS=$(json_get "$out" rps)
}

# Creates more vote events when a Vote run of SECONDS at twice RATE calls/s
# (a round may go faster than the rate measured) could make more calls than
# there are pairs.
ensure_vote_pairs() {  # ensure_vote_pairs BACKEND RATE SECONDS WHAT
  local need more
  need=$(python3 -c 'import math,sys; print(math.ceil(float(sys.argv[1]) * float(sys.argv[2]) * 2))' "$2" "$3")
  (( need > ${VOTE_PAIRS[$1]} )) || return 0
  more=$(( (need - ${VOTE_PAIRS[$1]} + 9) / 10 ))
  log "$1: $4 $(printf '%.0f' "$2")/s: a Vote run of ${3}s at up to twice that may make ~$need calls, more than the ${VOTE_PAIRS[$1]} (event, option) pairs; creating $more more events"
  add_vote_events "$1" "$more"
}

# Registers the bench user, the organizer and the voters, waits until GetMe
# and CreateEvent pass through the gateway (its health checks must have found
# both upstreams serving), makes the vote events and writes the three ghz
# request files. Sets <BACKEND>_TOKEN.
set_up_calls() {  # set_up_calls BACKEND GATEWAY_ADDR USERS_ADDR
  local backend=$1 gateway=$2 users=$3 dir="$TMP/$1" token deadline out i started=$SECONDS
  local others=("organizer:$dir/organizer.json")
  for i in $(seq 0 $((VOTERS - 1))); do others+=("voter$i:$dir/voter.$i.json"); done
  register "$backend" "$users" user "$dir/user.json"   # waits for users-svc
  token=$(access_token "$dir/user.json")
  printf -v "${backend^^}_TOKEN" '%s' "$token"
  register_all "$backend" "$users" "${others[@]}"
  NEXT_VOTER[$backend]=0

  deadline=$((SECONDS + 30))
  until out=$(grpc "$gateway" munity.users.v1.Users/GetMe '{}' "$token" 2>&1); do
    (( SECONDS < deadline )) || die "$backend: no successful GetMe through the gateway after 30 s: $out"
    sleep 0.3
  done
  # The events voted on: 10 options each (the most CreateEvent allows). The
  # first one by grpcurl, until events-svc is reachable through the gateway.
  local options
  options=$(python3 -c 'import json; print(json.dumps([{"start": "2030-01-%02dT09:00:00Z" % d, "end": "2030-01-%02dT12:00:00Z" % d} for d in range(10, 20)]))')
  echo "{\"title\":\"bench vote\",\"options\":$options,\"votingDeadline\":\"2030-01-05T00:00:00Z\"}" \
    >"$dir/vote-event.json"
  deadline=$((SECONDS + 30))
  until grpc "$gateway" munity.events.v1.Events/CreateEvent "$(cat "$dir/vote-event.json")" \
      "$(access_token "$dir/organizer.json")" >"$dir/vote-event.first.json" 2>"$dir/vote-event.err"; do
    (( SECONDS < deadline )) || { cat "$dir/vote-event.err" >&2; die "$backend: CreateEvent through the gateway failed"; }
    sleep 0.3
  done
  VOTE_EVENTS[$backend]=1
  add_vote_events "$backend" $((VOTE_EVENTS_MIN - 1))
  # CreateEvent, a write like Vote, gives a first idea of the rate; the
  # Vote warm-up checks again before the rounds.
  local longest=${DURATION%s}
  (( ${WARMUP%s} <= longest )) || longest=${WARMUP%s}
  ensure_vote_pairs "$backend" "$VOTE_CREATE_RPS" "$longest" "CreateEvent ran at"

  echo '{}' >"$dir/GetMe.json"
  echo '{"title":"bench meeting","description":"events-svc benchmark","options":[{"start":"2030-01-10T09:00:00Z","end":"2030-01-10T12:00:00Z"}],"votingDeadline":"2030-01-05T00:00:00Z"}' \
    >"$dir/CreateEvent.json"
  log "$backend: set up in $((SECONDS - started)) s: bench user, organizer, $VOTERS voters, ${VOTE_EVENTS[$backend]} vote events (${VOTE_PAIRS[$backend]} pairs)"
}

gateway_addr() { if [[ $1 == embedded ]]; then echo "$EMB_GATEWAY"; else echo "$CQL_GATEWAY"; fi; }
token_of() { if [[ $1 == embedded ]]; then echo "$EMBEDDED_TOKEN"; else echo "$CQL_TOKEN"; fi; }
method_of() {
  case "$1" in
    GetMe) echo munity.users.v1.Users/GetMe ;;
    *) echo "munity.events.v1.Events/$1" ;;
  esac
}

# call_token BACKEND CALL: sets TOKEN, the bench user's; for Vote, the next
# voter's (one not used before).
call_token() {
  if [[ $2 != Vote ]]; then TOKEN=$(token_of "$1"); return; fi
  local i=${NEXT_VOTER[$1]}
  (( i < VOTERS )) || die "$1: no voter left for Vote"
  NEXT_VOTER[$1]=$((i + 1))
  TOKEN=$(access_token "$TMP/$1/voter.$i.json")
}

ghz_wait() {  # ghz_wait SECONDS GHZ_ARGS...: at most SECONDS
  # In the background and waited for, so a signal to this script is handled
  # at once (bash defers traps until a foreground child exits).
  local limit=$1
  shift
  timeout "$limit" ghz --insecure --protoset "$PROTOSET" "$@" &
  GHZ_PID=$!
  local status=0
  wait "$GHZ_PID" || status=$?
  GHZ_PID=""
  return "$status"
}

run_ghz() {  # run_ghz BACKEND CALL CONCURRENCY DURATION OUT.json TOKEN
  ghz_wait $(( ${4%s} + 60 )) \
    --call "$(method_of "$2")" \
    --data-file "$TMP/$1/$2.json" \
    -m "{\"authorization\":\"Bearer $6\"}" \
    -c "$3" --connections 1 \
    -z "$4" --duration-stop wait \
    -O json -o "$5" \
    "$(gateway_addr "$1")"
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

TMP="$(work_dir events)"
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
  wait_quiet_backend embedded
fi
if has_backend cql; then
  start_cql
  set_up_calls cql "$CQL_GATEWAY" "$CQL_USERS"
  wait_quiet_backend cql
fi

# Warm-up: every backend and call once, at the highest concurrency.
max_c=0
for c in "${CONCURRENCIES[@]}"; do (( c > max_c )) && max_c=$c; done
# Vote runs (backend, warmup | measured, its voter's pairs, ghz JSON), then
# per backend the votes stored at the end: report.py's Vote lines.
votes_tsv="$TMP/results/votes.tsv"
: >"$votes_tsv"
for backend in "${BACKEND_LIST[@]}"; do
  for call in "${CALLS[@]}"; do
    log "warm-up $backend $call ($WARMUP, -c $max_c)"
    out="$TMP/results/warmup_${backend}_$call.json"
    call_token "$backend" "$call"
    run_ghz "$backend" "$call" "$max_c" "$WARMUP" "$out" "$TOKEN" \
      || die "ghz warm-up $backend $call failed"
    wait_quiet_backend "$backend"
    [[ $call != Vote ]] \
      || printf '%s\twarmup\t%s\t%s\n' "$backend" "${VOTE_PAIRS[$backend]}" "$out" >>"$votes_tsv"
  done
done
# Enough pairs for the rounds at the warm-up's Vote rate (highest -c)?
for backend in "${BACKEND_LIST[@]}"; do
  ensure_vote_pairs "$backend" "$(json_get "$TMP/results/warmup_${backend}_Vote.json" rps)" \
    "${DURATION%s}" "the Vote warm-up ran at"
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
        call_token "$backend" "$call"
        before=$(sample "$backend")
        run_ghz "$backend" "$call" "$c" "$DURATION" "$out" "$TOKEN" \
          || die "ghz $backend $call -c $c failed (round $round)"
        wait_quiet_backend "$backend"
        after=$(sample "$backend")
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$c" "$backend" "$call" "$out" \
          "$(diff_samples "$before" "$after")" >>"$rounds_tsv"
        [[ $call != Vote ]] \
          || printf '%s\tmeasured\t%s\t%s\n' "$backend" "${VOTE_PAIRS[$backend]}" "$out" >>"$votes_tsv"
        log "round $round -c $c $backend $call: $(python3 "$HERE/report.py" --brief "$out")"
      done
    done
  done
done
warn_if_something_died
# The votes stored: the sum of the vote counts of the organizer's events
# (left empty if they cannot be listed: the report still comes).
for backend in "${BACKEND_LIST[@]}"; do
  stored=""
  if (list_vote_events "$backend"); then
    read -r _ _ stored < <(python3 "$HERE/report.py" --vote-events - "$TMP/$backend"/vote-events.page.*.json) || true
  fi
  printf '%s\tstored\t%s\t-\n' "$backend" "$stored" >>"$votes_tsv"
done

echo
echo "Munity events-svc benchmark through munity-gateway: ghz -c $CONCURRENCY --connections 1 -z $DURATION x $ROUNDS round(s); $PROFILE binaries; gateway threads $THREADS"
echo "$(nproc) CPUs; ghz $(go version -m "$(command -v ghz)" 2>/dev/null | awk '$1 == "mod" {print $3}'); rate limits ON with quotas of 1e6/s (CreateEvent's proto quota overridden)"
has_backend embedded && echo "embedded: munity dev (one process; gateway = its Pingora threads, services = the rest; redb stores)"
has_backend cql && echo "cql: users-svc + events-svc on Cassandra $CQL_NODE, Redis event log; store CPU = Cassandra + Redis processes (shared: anything else using them counts too)"
report_status=0
python3 "$HERE/report.py" "$rounds_tsv" "$CLK_TCK" "$votes_tsv" "${SUMMARY_ARGS[@]}" || report_status=$?
if [[ $report_status -ne 0 ]]; then
  KEEP=1
  log "some calls failed, or the stored votes disagree with the Vote calls; ghz JSON kept in $TMP/results"
fi
