#!/usr/bin/env bash
# warehouse-svc benchmark (issue 10): records/s ingested through the
# service into the embedded store; records/s into Cassandra through the
# service beside a plain scylla-crate writer with the same concurrency on
# the same server; Query p50/p99 for a 1,000-record page on both backends.
#
# Processes, all on loopback, all stopped on exit:
#   users-svc      embedded storage in a temp dir; an admin email in
#                  users.admin_emails (to create the service account)
#   warehouse-svc  a: embedded store in a temp dir
#                  b: storage.backend = "cql" on the Cassandra node at
#                     --cql (started with scripts/cassandra.sh start when it
#                     does not answer), a fresh keyspace whbench_svc_<pid>
# Set-up (bench/warehouse-load setup): registers the admin, creates a
# service account with scopes `warehouse.produce warehouse.read`; a fresh
# service token before each step (they live 10 min).
# Steps (bench/warehouse-load, a process each; straight to warehouse-svc,
# no gateway):
#   a      ingest into warehouse-svc a: --streams IngestStream calls, each
#          sending batches of --batch records of --record-bytes bytes for
#          --duration s; records/s = records accepted / time to the last
#          answer
#   b      the same into warehouse-svc b (Cassandra), then, after --settle
#          s, plain: the scylla-crate writer (warehouse-load plain-cql) of
#          the same records into a table of the same shape in its own
#          keyspace, unlogged single-partition batches
#          of 64 rows (warehouse-svc's BATCH_ROWS), --cql-concurrency
#          batches in flight (= warehouse.cql_write_concurrency of b),
#          keyspace whbench_plain_<pid>
#   (plain-arrivals, a diagnostic: the plain writer again, also writing
#          what warehouse-svc writes for its tail: a row of a table shaped
#          like its `arrivals` with the records' keys, as warehouse-svc
#          writes them, per --batch records)
#   query  --queries Query calls (page_size 1000, one at a time) at random
#          windows of 1,200 records of what a and b stored, on each
# A table and the targets (embedded >= 100,000 records/s; b >= 0.8 x plain)
# come last. See bench/warehouse/README.md.
#
# Usage: bench/warehouse/run.sh [--profile release] [--no-build] [--cases a,b]
#          [--streams 8] [--batch 1000] [--duration 10] [--record-bytes 200]
#          [--cql-concurrency 64] [--queries 1000] [--settle 5]
#          [--cql 127.0.0.1:9042] [--server-threads N] [--client-threads N]
#          [--plain-first] [--perf] [--keep] [--summary FILE]
#   --profile: cargo profile to build and run (dev: to try the script out,
#   not for figures). Binaries go to $CARGO_TARGET_DIR (default
#   ~/.cache/munity-target).
#   --server-threads: warehouse-svc's tokio workers (default: one per core).
#   --plain-first: in b, run the plain writers before warehouse-svc's
#   ingest instead of after (to see whether the order matters).
#   --perf: perf record (dwarf call graphs) of warehouse-svc during each
#   ingest (a, b); summaries in results/perf_<case>.data.txt (figures with
#   --perf are lower: not for the table).
#   --keep: keep the work dir (logs, configs, JSON results).
#   --summary FILE: append a line per target of issue 24 this run measured
#   (the two above) to FILE, in bench/summary.py's format (bench/all.sh
#   reads it).
#   WAREHOUSE_BIN=path (environment): run that warehouse-svc binary instead
#   of the one built (e.g. a copy of an earlier build, for before/after).
set -euo pipefail

PROFILE=release
BUILD=1
CASES=a,b
STREAMS=8
BATCH=1000
DURATION=10
RECORD_BYTES=200
CQL_CONCURRENCY=64
QUERIES=1000
SETTLE=5
CQL=127.0.0.1:9042
SERVER_THREADS=""
CLIENT_THREADS=""
PERF=0
KEEP=0
PLAIN_FIRST=0
SUMMARY=""

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --profile) PROFILE="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --cases) CASES="$2"; shift 2 ;;
    --streams) STREAMS="$2"; shift 2 ;;
    --batch) BATCH="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --record-bytes) RECORD_BYTES="$2"; shift 2 ;;
    --cql-concurrency) CQL_CONCURRENCY="$2"; shift 2 ;;
    --queries) QUERIES="$2"; shift 2 ;;
    --settle) SETTLE="$2"; shift 2 ;;
    --cql) CQL="$2"; shift 2 ;;
    --server-threads) SERVER_THREADS="$2"; shift 2 ;;
    --client-threads) CLIENT_THREADS="$2"; shift 2 ;;
    --perf) PERF=1; shift ;;
    --plain-first) PLAIN_FIRST=1; shift ;;
    --keep) KEEP=1; shift ;;
    --summary) SUMMARY="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
[[ "$CASES" =~ ^[ab](,[ab])*$ ]] \
  || { echo "run.sh: --cases takes a, b separated by commas, got '$CASES'" >&2; exit 2; }
[[ "$PROFILE" =~ ^[A-Za-z0-9_-]+$ ]] || { echo "run.sh: bad --profile '$PROFILE'" >&2; exit 2; }
[[ "$SETTLE" =~ ^[0-9]+$ ]] || { echo "run.sh: --settle takes seconds, got '$SETTLE'" >&2; exit 2; }
[[ "$CQL" =~ ^[A-Za-z0-9.-]+:[0-9]+$ ]] || { echo "run.sh: --cql takes host:port, got '$CQL'" >&2; exit 2; }
for n in "$STREAMS" "$BATCH" "$DURATION" "$RECORD_BYTES" "$CQL_CONCURRENCY" "$QUERIES" ${SERVER_THREADS:+"$SERVER_THREADS"} ${CLIENT_THREADS:+"$CLIENT_THREADS"}; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: expected a positive integer, got '$n'" >&2; exit 2; }
done
has_case() { [[ ",$CASES," == *",$1,"* ]]; }
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
WAREHOUSE_BIN="${WAREHOUSE_BIN:-$BIN_DIR/warehouse-svc}"
LOAD_BIN="$BIN_DIR/warehouse-load"

# log, die, free_ports, wait_for_file, wait_for_line
source "$(dirname "$0")/../lib.sh"

# ---------------------------------------------------------- processes ----
TMP=""
CQL_PID=""
PIDS=()            # users-svc, the warehouse-svcs
CHILD_PID=""       # warehouse-load, waited for in the background
PERF_PID=""
KEYSPACES=()       # dropped on exit

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  local pid ks
  [[ -z "$CHILD_PID" ]] || stop_pid "$CHILD_PID"
  [[ -z "$PERF_PID" ]] || { kill -INT "$PERF_PID" 2>/dev/null || true; wait "$PERF_PID" 2>/dev/null || true; }
  stop_all "${PIDS[@]}"
  for ks in "${KEYSPACES[@]}"; do
    "$LOAD_BIN" drop-keyspace --nodes "$CQL" --keyspace "$ks" >/dev/null 2>&1 \
      || log "could not drop keyspace $ks"
  done
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
# users-svc config written by bench/warehouse/run.sh
[users]
admin_emails = ["$ADMIN_EMAIL"]
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

start_warehouse() {  # start_warehouse CASE ADDR STORAGE_TOML: sets WAREHOUSE_PID
  local case=$1 addr=$2 storage=$3 dir="$TMP/warehouse.$1"
  mkdir -p "$dir"
  cat >"$dir/warehouse.toml" <<TOML
# warehouse-svc config written by bench/warehouse/run.sh (case $case)
[warehouse]
listen = "$addr"
cql_write_concurrency = $CQL_CONCURRENCY

[warehouse.storage]
$storage

[bus]
backend = "embedded"
path = "$dir/bus"
TOML
  local threads=()
  [[ -z "$SERVER_THREADS" ]] || threads=(TOKIO_WORKER_THREADS="$SERVER_THREADS")
  env "${COMMON_ENV[@]}" "${threads[@]}" \
    MUNITY_AUTH__JWKS_URL="http://$USERS_ADDR" \
    MUNITY_READY_FILE="$dir/ready.json" \
    "$WAREHOUSE_BIN" --config "$dir/warehouse.toml" >"$dir/warehouse-svc.log" 2>&1 &
  WAREHOUSE_PID=$!; PIDS+=("$WAREHOUSE_PID")
  wait_for_file "$dir/ready.json" "$WAREHOUSE_PID" 60 "$dir/warehouse-svc.log"
  "$LOAD_BIN" health --target "http://$addr" --service munity.warehouse.v1.Warehouse --timeout-secs 30 \
    || die "warehouse-svc ($case) is not serving"
  log "warehouse-svc $case up (pid $WAREHOUSE_PID, $addr, ${SERVER_THREADS:-$(nproc)} worker threads, storage: ${storage//$'\n'/, })"
}

token() {
  BENCH_CLIENT_SECRET="$SERVICE_CLIENT_SECRET" \
    "$LOAD_BIN" service-token --users "http://$USERS_ADDR" --client-id "$SERVICE_CLIENT_ID"
}

client_threads() { [[ -z "$CLIENT_THREADS" ]] || echo "--threads $CLIENT_THREADS"; }

run_ingest() {  # run_ingest LABEL ADDR PID [CQL_SERVER_PID]
  local label=$1 addr=$2 pid=$3 cql_pid=${4:-} tok
  tok=$(token) || die "IssueServiceToken failed"
  log "ingest $label: $STREAMS streams x batches of $BATCH x $RECORD_BYTES B for $DURATION s into $addr"
  # shellcheck disable=SC2046
  WAREHOUSE_LOAD_TOKEN="$tok" in_background timeout $((DURATION + 300)) "$LOAD_BIN" ingest \
      --label "$label" --target "http://$addr" --source "bench.$label" \
      --streams "$STREAMS" --batch "$BATCH" --duration "$DURATION" --record-bytes "$RECORD_BYTES" \
      --pid "$pid" ${cql_pid:+--cql-pid "$cql_pid"} $(client_threads) --json "$TMP/results/ingest_$label.json" \
    >"$TMP/results/ingest_$label.txt" || die "warehouse-load ingest failed ($label)"
  kill -0 "$pid" 2>/dev/null || die "warehouse-svc died in ingest $label"
  RESULTS+=("$TMP/results/ingest_$label.json")
  log "ingest $label: $(sed -n 's/^ *"records_per_sec": \(.*\),/\1/p' "$TMP/results/ingest_$label.json") records/s"
}

run_query() {  # run_query LABEL ADDR
  local label=$1 addr=$2 tok
  tok=$(token) || die "IssueServiceToken failed"
  log "query $label: $QUERIES pages of 1,000 at $addr"
  WAREHOUSE_LOAD_TOKEN="$tok" in_background timeout 600 "$LOAD_BIN" query \
      --label "query $label" --target "http://$addr" --ingest-json "$TMP/results/ingest_$label.json" \
      --queries "$QUERIES" --json "$TMP/results/query_$label.json" \
    >"$TMP/results/query_$label.txt" || die "warehouse-load query failed ($label)"
  RESULTS+=("$TMP/results/query_$label.json")
}

run_plain() {  # run_plain LABEL ARRIVAL_RECORDS: the plain writer into its own keyspace
  local label=$1 arrivals=$2 ks="whbench_${1//-/_}_$$"
  KEYSPACES+=("$ks")
  ((SETTLE == 0)) || { log "settling $SETTLE s"; sleep "$SETTLE"; }
  log "$label: scylla-crate writer, $CQL_CONCURRENCY batches of 64 rows in flight for $DURATION s into keyspace $ks$( ((arrivals == 0)) || echo ", and an arrival entry per $arrivals records")"
  # shellcheck disable=SC2046
  in_background timeout $((DURATION + 300)) "$LOAD_BIN" plain-cql \
      --label "$label" --nodes "$CQL" --keyspace "$ks" --source bench.cql \
      --concurrency "$CQL_CONCURRENCY" --batch-rows 64 --duration "$DURATION" \
      --record-bytes "$RECORD_BYTES" --arrival-records "$arrivals" \
      ${CQL_PID:+--pid "$CQL_PID"} $(client_threads) \
      --json "$TMP/results/$label.json" >"$TMP/results/$label.txt" \
    || die "warehouse-load plain-cql failed ($label)"
  RESULTS+=("$TMP/results/$label.json")
  log "$label: $(sed -n 's/^ *"records_per_sec": \(.*\),/\1/p' "$TMP/results/$label.json") records/s"
}

perf_start() {  # perf_start PID DATA: samples PID (call graphs) until perf_finish
  [[ $PERF -eq 1 ]] || return 0
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
  log "profile of warehouse-svc: $1 (summary $1.txt)"
}

cql_server_pid() {  # the Cassandra started by scripts/cassandra.sh, if local
  "$REPO/scripts/cassandra.sh" status 2>/dev/null | sed -n 's/.*pid \([0-9]*\).*/\1/p' | head -1
}

# ---------------------------------------------------------------- main ----
command -v python3 >/dev/null || die "python3 is required (free ports)"
if [[ $BUILD -eq 1 ]]; then
  log "building $PROFILE binaries into $TARGET_DIR"
  (cd "$REPO" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --locked --profile "$PROFILE" \
      -p warehouse-svc -p users-svc -p warehouse-load --bins)
fi
for bin in "$USERS_BIN" "$WAREHOUSE_BIN" "$LOAD_BIN"; do
  [[ -x "$bin" ]] || die "missing $bin (run without --no-build)"
done

if has_case b; then
  if [[ "$CQL" == "127.0.0.1:9042" ]] && ! "$REPO/scripts/cassandra.sh" status >/dev/null 2>&1; then
    log "Cassandra does not answer on $CQL: scripts/cassandra.sh start"
    "$REPO/scripts/cassandra.sh" start >&2 || die "cannot start Cassandra"
  fi
  CQL_PID=$(cql_server_pid || true)
fi

TMP="$(work_dir warehouse)"
mkdir -p "$TMP/results"
read -r USERS_PORT A_PORT B_PORT <<<"$(free_ports 3)"
USERS_ADDR="127.0.0.1:$USERS_PORT"
A_ADDR="127.0.0.1:$A_PORT"
B_ADDR="127.0.0.1:$B_PORT"
ADMIN_EMAIL="bench-admin-$$-$RANDOM@example.com"
SVC_KEYSPACE="whbench_svc_$$"
RESULTS=()
log "profile $PROFILE ($BIN_DIR); cases $CASES; $STREAMS streams x $BATCH records x $RECORD_BYTES B for $DURATION s; work dir $TMP"

start_users
"$LOAD_BIN" setup --users "http://$USERS_ADDR" --admin-email "$ADMIN_EMAIL" >"$TMP/setup.env" \
  || die "set-up at users-svc failed"
SERVICE_CLIENT_ID=$(sed -n 's/^SERVICE_CLIENT_ID=//p' "$TMP/setup.env")
SERVICE_CLIENT_SECRET=$(sed -n 's/^SERVICE_CLIENT_SECRET=//p' "$TMP/setup.env")
[[ -n "$SERVICE_CLIENT_ID" && -n "$SERVICE_CLIENT_SECRET" ]] || die "set-up printed no account (see $TMP/setup.env)"
log "service account $SERVICE_CLIENT_ID (warehouse.produce warehouse.read)"

if has_case a; then
  start_warehouse a "$A_ADDR" "backend = \"embedded\"
path = \"$TMP/warehouse.a/data\""
  A_PID=$WAREHOUSE_PID
  perf_start "$A_PID" "$TMP/results/perf_a.data"
  run_ingest embedded "$A_ADDR" "$A_PID"
  perf_finish "$TMP/results/perf_a.data"
fi

if has_case b; then
  KEYSPACES+=("$SVC_KEYSPACE")
  start_warehouse b "$B_ADDR" "backend = \"cql\"
nodes = [\"$CQL\"]
keyspace = \"$SVC_KEYSPACE\""
  B_PID=$WAREHOUSE_PID
  if [[ $PLAIN_FIRST -eq 1 ]]; then
    run_plain plain 0
    run_plain plain-arrivals "$BATCH"
    ((SETTLE == 0)) || { log "settling $SETTLE s"; sleep "$SETTLE"; }
  fi
  perf_start "$B_PID" "$TMP/results/perf_b.data"
  run_ingest cql "$B_ADDR" "$B_PID" "$CQL_PID"
  perf_finish "$TMP/results/perf_b.data"
  if [[ $PLAIN_FIRST -eq 0 ]]; then
    run_plain plain 0
    run_plain plain-arrivals "$BATCH"
  fi
fi

if has_case a; then run_query embedded "$A_ADDR"; fi
if has_case b; then run_query cql "$B_ADDR"; fi

echo
echo "Munity warehouse-svc benchmark: IngestStream, $STREAMS streams x batches of $BATCH records of $RECORD_BYTES B (data + attributes) for $DURATION s, straight to warehouse-svc; Query pages of 1,000, one call at a time"
echo "$PROFILE binaries; $(nproc) CPUs (client, services and Cassandra share them); warehouse-svc ${SERVER_THREADS:-$(nproc)} worker threads; CQL: $CQL, cql_write_concurrency $CQL_CONCURRENCY"
"$LOAD_BIN" report "${SUMMARY_ARGS[@]}" "${RESULTS[@]}"
