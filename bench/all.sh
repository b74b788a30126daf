#!/usr/bin/env bash
# Every benchmark ratio of issue 24 in one command: builds once, runs each
# bench with --summary, and ends with one table `figure | goal | measured |
# met`, then `N of M targets met`, nproc and the CPU model.
#
# Benches, in this order (see bench/README.md):
#   gateway    bench/gateway/run.sh --concurrency 4,32: unary GetMe, gateway
#              vs nginx (CPU per call, throughput)
#   streams    bench/gateway/run.sh --streams: long-lived streams, gateway vs
#              nginx (messages per proxy CPU-second, memory per stream)
#   notify     bench/notify/run.sh: Subscribe p99 at 10,000 and 1,000
#              streams, CPU per delivery through the gateway
#   events     bench/events/run.sh: Vote and CreateEvent vs GetMe, embedded
#              and on Cassandra
#   warehouse  bench/warehouse/run.sh: embedded ingest records/s, Cassandra
#              ingest vs a plain scylla-crate writer
#   discuss    bench/discuss/run.sh: CreatePost and React vs GetMe, feed
#              page p99
#
# Usage: bench/all.sh [--quick] [--profile release] [--keep] [--no-build]
#          [--only gateway,streams,notify,events,warehouse,discuss]
#   --quick: short settings (one round, short durations; notify keeps its
#   10,000-stream case but skips case d), about 5 minutes on 2 cores after
#   the build. Without it each bench runs in its own full default mode
#   (the gateway at -c 4 and 32, which its targets need).
#   --profile: the cargo profile every bench builds and runs (default
#   release; dev builds fast, for trying the plumbing, not for figures).
#   --only: the benches to run (comma-separated; default all of them).
#   --keep: keep this run's work dir and every bench's.
#   --no-build: use the binaries already built (when someone else's build
#   holds the target dir's lock, say).
# Builds once, before any bench: `cargo build --locked --profile P` of every
# package, bin and example the chosen benches need, into $CARGO_TARGET_DIR
# (default ~/.cache/munity-target, every bench script's default too); then
# each bench runs with --no-build. Starts Cassandra (scripts/cassandra.sh
# start) for events and warehouse when nothing answers on 127.0.0.1:9042,
# and stops it again at the end; installs nginx (apt-get) for gateway and
# streams when it is missing. A bench that fails does not stop the run: its
# targets say `failed`, its log is kept, and the run exits 1 at the end.
set -euo pipefail

QUICK=0
PROFILE=release
ALL_BENCHES=(gateway streams notify events warehouse discuss)
ONLY=$(IFS=,; echo "${ALL_BENCHES[*]}")
KEEP=0
BUILD=1

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1; shift ;;
    --profile) PROFILE="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "all.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
[[ "$PROFILE" =~ ^[A-Za-z0-9_-]+$ ]] || { echo "all.sh: bad --profile '$PROFILE'" >&2; exit 2; }
IFS=, read -r -a CHOSEN <<<"$ONLY"
for bench in "${CHOSEN[@]}"; do
  [[ " ${ALL_BENCHES[*]} " == *" $bench "* ]] \
    || { echo "all.sh: --only takes ${ALL_BENCHES[*]} (comma-separated), got '$bench'" >&2; exit 2; }
done
chosen() { [[ ",$ONLY," == *",$1,"* ]]; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/munity-target}"

# log, die, stop_pid, finish_tmp, in_background
source "$HERE/lib.sh"

# The targets each bench reports (figure <TAB> goal), in the words its
# report uses: a bench that fails before reporting gets them as `failed`.
expected_rows() {  # expected_rows BENCH
  case "$1" in
    gateway) printf '%s\t%s\n' \
      "gateway CPU per call vs nginx, -c 4" "<= 1.2x" \
      "gateway CPU per call vs nginx, -c 32" "<= 1.0x" \
      "gateway throughput vs nginx, -c 32" ">= 1.0x" ;;
    streams) printf '%s\t%s\n' \
      "streams: messages per proxy CPU-second, gateway vs nginx" ">= 2.5x" \
      "memory per open stream, gateway vs nginx" "<= 1.0x" ;;
    notify) printf '%s\t%s\n' \
      "notify p99 at 10,000 streams, direct" "<= 50 ms" \
      "notify p99 at 1,000 streams, direct" "<= 50 ms" \
      "notify CPU per delivery through the gateway" "<= 5 us" ;;
    events) printf '%s\t%s\n' \
      "events Vote vs GetMe, embedded, -c 4" ">= 0.5x" \
      "events Vote vs GetMe, embedded, -c 32" ">= 0.5x" \
      "events CreateEvent vs GetMe, embedded, -c 32" ">= 0.5x" \
      "events Vote vs GetMe on Cassandra, -c 32" ">= 0.3x" ;;
    warehouse) printf '%s\t%s\n' \
      "warehouse embedded ingest" ">= 100,000 records/s" \
      "warehouse on Cassandra vs a plain scylla-crate writer" ">= 0.8x" ;;
    discuss) printf '%s\t%s\n' \
      "discuss CreatePost vs GetMe, embedded, -c 32" ">= 0.5x" \
      "discuss React vs GetMe, embedded, -c 32" ">= 0.5x" \
      "discuss feed page p99, embedded, -c 32" "<= 20 ms" ;;
  esac
}

# The script and arguments of each bench (besides --no-build, --profile,
# --summary and --keep), full or --quick.
bench_command() {  # bench_command BENCH: sets CMD
  local full quick
  case "$1" in
    gateway) CMD=(gateway/run.sh --concurrency 4,32)
             quick=(--rounds 1 --duration 3s --warmup 1s) ;;
    streams) CMD=(gateway/run.sh --streams)
             quick=(--streams-hold 5) ;;
    notify) CMD=(notify/run.sh)
            quick=(--cases a,b,c --duration 5) ;;
    events) CMD=(events/run.sh)
            quick=(--rounds 1 --duration 3s --warmup 1s) ;;
    warehouse) CMD=(warehouse/run.sh)
               quick=(--duration 5 --queries 200 --settle 2) ;;
    discuss) CMD=(discuss/run.sh)
             quick=(--rounds 1 --duration 3s --warmup 1s --concurrency 32) ;;
  esac
  full=()
  [[ $QUICK -eq 0 ]] || full=("${quick[@]}")
  CMD+=(--no-build --profile "$PROFILE" --summary "$TMP/summary.tsv" "${full[@]}")
  [[ $KEEP -eq 0 ]] || CMD+=(--keep)
}

# ---------------------------------------------------------- processes ----
TMP=""
CHILD_PID=""        # the running bench (in_background)
STOP_CASSANDRA=0    # 1 when this run started Cassandra
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  [[ -z "$CHILD_PID" ]] || stop_pid "$CHILD_PID"
  if [[ $STOP_CASSANDRA -eq 1 ]]; then
    log "stopping the Cassandra node this run started"
    bash "$REPO/scripts/cassandra.sh" stop >&2 || true
  fi
  finish_tmp "$status"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ensure_nginx() {
  if command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]]; then return 0; fi
  log "installing nginx (apt-get)"
  local sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y nginx >&2 \
    || { $sudo apt-get update >&2 && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y nginx >&2; } \
    || die "could not install nginx"
}

ensure_cassandra() {
  if bash "$REPO/scripts/cassandra.sh" status >/dev/null 2>&1; then
    log "Cassandra answers on 127.0.0.1:9042: using it"
    return 0
  fi
  log "Cassandra does not answer on 127.0.0.1:9042: scripts/cassandra.sh start (a minute or more)"
  STOP_CASSANDRA=1
  bash "$REPO/scripts/cassandra.sh" start >&2 || die "scripts/cassandra.sh start failed"
}

build() {
  local packages=() bench p
  declare -A seen=()
  local example=()
  for bench in "${CHOSEN[@]}"; do
    case "$bench" in
      gateway) packages+=(users-svc munity-gateway bench-proxies) ;;
      streams) packages+=(users-svc munity-gateway bench-proxies); example=(--example health_ticker) ;;
      notify) packages+=(notify-load notify-svc users-svc munity-gateway) ;;
      events) packages+=(munity users-svc events-svc munity-gateway) ;;
      warehouse) packages+=(warehouse-svc users-svc warehouse-load) ;;
      discuss) packages+=(munity) ;;
    esac
  done
  local args=()
  for p in "${packages[@]}"; do
    [[ -z "${seen[$p]:-}" ]] || continue
    seen[$p]=1
    args+=(-p "$p")
  done
  log "building once: cargo build --locked --profile $PROFILE ${args[*]} --bins ${example[*]} (into $CARGO_TARGET_DIR)"
  (cd "$REPO" && cargo build --locked --profile "$PROFILE" "${args[@]}" --bins "${example[@]}") \
    || die "the build failed"
}

# ---------------------------------------------------------------- main ----
command -v python3 >/dev/null || die "python3 is required"
TMP="$(work_dir all)"
: >"$TMP/summary.tsv"
started=$SECONDS
log "$( ((QUICK)) && echo quick || echo full) run of ${CHOSEN[*]}; profile $PROFILE; work dir $TMP"

if chosen gateway || chosen streams; then ensure_nginx; fi
if [[ $BUILD -eq 1 ]]; then build; else log "--no-build: the binaries already in $CARGO_TARGET_DIR"; fi
if chosen events || chosen warehouse; then ensure_cassandra; fi

FAILED=()
for bench in "${ALL_BENCHES[@]}"; do
  chosen "$bench" || continue
  bench_command "$bench"
  log "$bench: bench/${CMD[*]}"
  bench_started=$SECONDS
  status=0
  in_background bash "$HERE/${CMD[0]}" "${CMD[@]:1}" > >(tee "$TMP/$bench.log") 2>&1 || status=$?
  log "$bench: exit $status after $((SECONDS - bench_started)) s (log $TMP/$bench.log)"
  missing=0
  while IFS=$'\t' read -r figure goal; do
    if ! awk -F'\t' -v f="$figure" '$1 == f { found = 1 } END { exit !found }' "$TMP/summary.tsv"; then
      missing=1
      printf '%s\t%s\t%s\tno\n' "$figure" "$goal" \
        "$( ((status)) && echo "failed (exit $status)" || echo "not reported")" >>"$TMP/summary.tsv"
    fi
  done < <(expected_rows "$bench")
  if ((status != 0 || missing)); then FAILED+=("$bench"); fi
done

echo
echo "Munity benchmarks: bench/all.sh$( ((QUICK)) && echo " --quick")$( ((BUILD)) || echo " --no-build"), $PROFILE profile, $(date -u '+%Y-%m-%d %H:%M UTC'), $((SECONDS - started)) s"
if ((${#FAILED[@]})); then
  echo "FAILED: ${FAILED[*]} (logs in $TMP)"
fi
echo
python3 "$HERE/summary.py" table "$TMP/summary.tsv"
echo "nproc $(nproc); CPU: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)"
((${#FAILED[@]} == 0))
