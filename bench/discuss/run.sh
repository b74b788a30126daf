#!/usr/bin/env bash
# discuss-svc benchmark through munity-gateway, beside GetMe, in one run.
#
# `munity dev` (gateway, users-svc, discuss-svc, ... in one process, redb
# stores, embedded event log). Every round measures each concurrency and
# each call in turn (ghz, one HTTP/2 connection, every call with
# `authorization: Bearer <JWT>`, all through the gateway):
#   GetMe       munity.users.v1.Users/GetMe (baseline)
#   CreatePost  munity.discuss.v1.Discuss/CreatePost (a 60-character post)
#   React       munity.discuss.v1.Discuss/React, each ghz run by a reactor
#               of its own over the (post, kind) pairs of the posts made at
#               set-up, in turn: a new reaction per call until the pairs
#               run out (then a repeat, which writes nothing)
#   ListPosts   munity.discuss.v1.Discuss/ListPosts, the community's first
#               feed page (20 posts and the pinned ones), in a community of
#               --posts posts and more as CreatePost runs
# Prints per (call, concurrency) calls/s, ratio to GetMe, p50, p99, errors,
# and the issue's targets at -c 32: CreatePost and React >= 0.5x GetMe,
# feed page p99 <= 20 ms.
# Everything on loopback; every process started here is stopped on exit.
#
# Usage: bench/discuss/run.sh [--profile release] [--no-build] [--rounds 2]
#          [--duration 5s] [--warmup 2s] [--concurrency 4,32] [--posts 1000]
#          [--threads 1] [--keep] [--summary FILE]
#   --summary FILE: append a line per target of issue 24 this run measured
#   (at -c 32) to FILE, in bench/summary.py's format (bench/all.sh reads it).
#   Binaries come from $CARGO_TARGET_DIR (default ~/.cache/munity-target).
#   The work dir, munity's data dir in it, is made under $BENCH_TMP (default
#   /tmp; ../lib.sh).
set -euo pipefail

PROFILE=release
BUILD=1
ROUNDS=2
DURATION=5s
WARMUP=2s
CONCURRENCY=4,32
POSTS=1000
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
    --posts) POSTS="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --summary) SUMMARY="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
[[ "$CONCURRENCY" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] \
  || { echo "run.sh: --concurrency takes positive integers separated by commas, got '$CONCURRENCY'" >&2; exit 2; }
[[ "$PROFILE" =~ ^[A-Za-z0-9_-]+$ ]] || { echo "run.sh: bad --profile '$PROFILE'" >&2; exit 2; }
for d in "$DURATION" "$WARMUP"; do
  [[ "$d" =~ ^[1-9][0-9]*s$ ]] || { echo "run.sh: durations are whole seconds like 5s, got '$d'" >&2; exit 2; }
done
for n in "$ROUNDS" "$THREADS" "$POSTS"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: expected a positive integer, got '$n'" >&2; exit 2; }
done
[[ -z "$SUMMARY" || "$SUMMARY" == /* ]] || SUMMARY="$PWD/$SUMMARY"
SUMMARY_ARGS=(); [[ -z "$SUMMARY" ]] || SUMMARY_ARGS=(--summary "$SUMMARY")
IFS=, read -r -a CONCURRENCIES <<<"$CONCURRENCY"
CALLS=(GetMe CreatePost React ListPosts)

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
export PATH="$HOME/go/bin:/usr/local/go/bin:$PATH"
TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/munity-target}"
case "$PROFILE" in
  dev|test) PROFILE_DIR=debug ;;
  bench) PROFILE_DIR=release ;;
  *) PROFILE_DIR="$PROFILE" ;;
esac
MUNITY_BIN="$TARGET_DIR/$PROFILE_DIR/munity"

# log, die, wait_for_file, stop_all, finish_tmp
source "$HERE/../lib.sh"

if ! command -v ghz >/dev/null; then
  log "installing ghz (go install github.com/bojand/ghz/cmd/ghz@latest)"
  GOBIN="$HOME/go/bin" go install github.com/bojand/ghz/cmd/ghz@latest
fi
command -v grpcurl >/dev/null || die "grpcurl is required (see bench/events)"
command -v python3 >/dev/null || die "python3 is required"

TMP=""
PIDS=()
GHZ_PID=""
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

json_get() {  # json_get FILE KEY
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}

grpc() {  # grpc ADDR METHOD DATA [TOKEN]: one call through grpcurl, JSON out
  local auth=()
  [[ -z "${4:-}" ]] || auth=(-H "authorization: Bearer $4")
  grpcurl -plaintext -max-time "${GRPC_MAX_TIME:-10}" -protoset "$PROTOSET" "${auth[@]}" -d "$3" "$1" "$2"
}

ghz_wait() {  # ghz_wait SECONDS GHZ_ARGS...: at most SECONDS, in the background (signals handled at once)
  local limit=$1
  shift
  timeout "$limit" ghz --insecure --protoset "$PROTOSET" "$@" &
  GHZ_PID=$!
  local status=0
  wait "$GHZ_PID" || status=$?
  GHZ_PID=""
  return "$status"
}

if [[ $BUILD -eq 1 ]]; then
  log "building $PROFILE munity into $TARGET_DIR"
  (cd "$REPO" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --locked --profile "$PROFILE" -p munity --bins)
fi
[[ -x "$MUNITY_BIN" ]] || die "missing $MUNITY_BIN (run without --no-build)"

TMP="$(work_dir discuss)"
mkdir -p "$TMP/results" "$TMP/data"
PROTOSET="$TMP/munity.protoset"
(cd "$REPO/proto" && grpcurl -import-path . -proto munity/users/v1/users.proto \
    -proto munity/discuss/v1/discuss.proto -protoset-out "$PROTOSET" describe >/dev/null) \
  || die "grpcurl could not compile the protos into $PROTOSET"

# Rate limits ON (as in production), with quotas no run reaches: the
# default for every method without a rule, and CreatePost's own (its proto
# declares 60/min, which a configured rule replaces).
cat >"$TMP/munity.toml" <<'TOML'
[gateway]
token_cache_capacity = 100000
health_check_interval_ms = 1000

[gateway.rate_limits]
enabled = true
mode = "local"
default = { requests = 1000000, per_secs = 1, burst = 1000000 }

[[gateway.rate_limits.rules]]
method = "/munity.discuss.v1.Discuss/CreatePost"
requests = 1000000
per_secs = 1
burst = 1000000
TOML
log "profile $PROFILE; concurrency $CONCURRENCY; $ROUNDS round(s) of $DURATION per call, warm-up $WARMUP; $POSTS posts at set-up; gateway threads $THREADS; work dir $TMP"
# Access tokens outlive the run (an hour); users-svc refuses to start unless
# the revocation replay covers the longest token lifetime plus the leeway.
(cd "$TMP" && exec env MUNITY_USERS__TOKENS__ACCESS_TTL_SECS=3600 MUNITY_AUTH__REVOCATION_REPLAY_SECS=7200 \
    MUNITY_GATEWAY__THREADS="$THREADS" MUNITY_GATEWAY__SHUTDOWN_GRACE_SECS=0 RUST_LOG=warn \
    MUNITY_DEV__ANY_PORT=true MUNITY_READY_FILE="$TMP/ready.json" \
    "$MUNITY_BIN" --config "$TMP/munity.toml" dev --data-dir "$TMP/data") \
  >"$TMP/munity.log" 2>&1 &
PID=$!; PIDS+=("$PID")
wait_for_file "$TMP/ready.json" "$PID" 60 "$TMP/munity.log"
GATEWAY=$(json_get "$TMP/ready.json" gateway)
USERS=$(json_get "$TMP/ready.json" users)
log "munity dev pid $PID, gateway $GATEWAY, users-svc $USERS, discuss-svc $(json_get "$TMP/ready.json" discuss)"

# Set-up straight at users-svc (Register and CreateCommunity have quotas at
# the gateway): the bench user (GetMe, CreatePost, ListPosts; owner of the
# community) and one reactor per React run.
register() {  # register NAME OUT.json
  local deadline=$((SECONDS + 60))
  until grpc "$USERS" munity.users.v1.Users/Register \
      "{\"email\":\"bench-$1-$$-$RANDOM@example.com\",\"password\":\"bench password $RANDOM$RANDOM\",\"displayName\":\"Bench $1\"}" \
      >"$2" 2>"$2.err"; do
    (( SECONDS < deadline )) || { cat "$2.err" >&2; die "Register ($1) failed"; }
    sleep 0.5
  done
}
token_in() { json_get "$1" accessToken; }
register user "$TMP/user.json"
TOKEN=$(token_in "$TMP/user.json")
COMMUNITY=$(grpc "$USERS" munity.users.v1.Users/CreateCommunity '{"name":"bench discuss"}' "$TOKEN" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
REACTORS=$(( 1 + ROUNDS * ${#CONCURRENCIES[@]} ))
for i in $(seq 0 $((REACTORS - 1))); do
  register "reactor$i" "$TMP/reactor.$i.json"
  grpc "$USERS" munity.users.v1.Users/JoinCommunity "{\"communityId\":\"$COMMUNITY\"}" \
    "$(token_in "$TMP/reactor.$i.json")" >/dev/null || die "reactor $i could not join"
done
echo "{\"communityId\":\"$COMMUNITY\",\"body\":\"A benchmark post: sixty characters of text, give or take.\"}" \
  >"$TMP/CreatePost.json"
echo '{}' >"$TMP/GetMe.json"
echo "{\"communityId\":\"$COMMUNITY\",\"pageSize\":20}" >"$TMP/ListPosts.json"
# discuss-svc learns the membership from the event log: the first post
# through the gateway once it has.
deadline=$((SECONDS + 60))
until grpc "$GATEWAY" munity.discuss.v1.Discuss/CreatePost "$(cat "$TMP/CreatePost.json")" "$TOKEN" \
    >/dev/null 2>"$TMP/first-post.err"; do
  (( SECONDS < deadline )) || { cat "$TMP/first-post.err" >&2; die "CreatePost through the gateway failed"; }
  sleep 0.3
done
ghz_wait 600 --call munity.discuss.v1.Discuss/CreatePost --data-file "$TMP/CreatePost.json" \
    -m "{\"authorization\":\"Bearer $TOKEN\"}" -n "$((POSTS - 1))" -c 8 --connections 1 \
    -O json -o "$TMP/results/setup_posts.json" "$GATEWAY" || die "ghz CreatePost (set-up) failed"
next=""; page=0
while :; do
  page=$((page + 1))
  printf -v file '%s/posts.page.%04d.json' "$TMP" "$page"
  grpc "$GATEWAY" munity.discuss.v1.Discuss/ListPosts \
      "{\"communityId\":\"$COMMUNITY\",\"pageSize\":100,\"pageToken\":\"$next\"}" "$TOKEN" >"$file" \
    || die "ListPosts (set-up) failed"
  next=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("nextPageToken", ""))' "$file")
  [[ -n "$next" ]] || break
done
read -r posts pairs < <(python3 "$HERE/report.py" --react "$TMP/React.json" "$TMP"/posts.page.*.json)
(( posts == POSTS )) || die "the community has $posts posts, expected $POSTS"
log "set up: community $COMMUNITY with $posts posts, $REACTORS reactors, $pairs (post, kind) pairs each"

wait_quiet "$PID"
NEXT_REACTOR=0
run_ghz() {  # run_ghz CALL CONCURRENCY DURATION OUT.json
  local token=$TOKEN
  if [[ $1 == React ]]; then
    token=$(token_in "$TMP/reactor.$NEXT_REACTOR.json")
    NEXT_REACTOR=$((NEXT_REACTOR + 1))
  fi
  local method=munity.discuss.v1.Discuss/$1
  [[ $1 != GetMe ]] || method=munity.users.v1.Users/GetMe
  ghz_wait $(( ${3%s} + 60 )) --call "$method" --data-file "$TMP/$1.json" \
    -m "{\"authorization\":\"Bearer $token\"}" -c "$2" --connections 1 \
    -z "$3" --duration-stop wait -O json -o "$4" "$GATEWAY"
}

max_c=0
for c in "${CONCURRENCIES[@]}"; do (( c > max_c )) && max_c=$c; done
for call in "${CALLS[@]}"; do
  log "warm-up $call ($WARMUP, -c $max_c)"
  run_ghz "$call" "$max_c" "$WARMUP" "$TMP/results/warmup_$call.json" || die "ghz warm-up $call failed"
  wait_quiet "$PID"
done
rounds_tsv="$TMP/results/rounds.tsv"
: >"$rounds_tsv"
for round in $(seq "$ROUNDS"); do
  for c in "${CONCURRENCIES[@]}"; do
    for call in "${CALLS[@]}"; do
      out="$TMP/results/r${round}_c${c}_$call.json"
      run_ghz "$call" "$c" "$DURATION" "$out" || die "ghz $call -c $c failed (round $round)"
      # The next call starts on an idle process (../lib.sh).
      wait_quiet "$PID"
      printf '%s\t%s\t%s\t%s\n' "$round" "$c" "$call" "$out" >>"$rounds_tsv"
      log "round $round -c $c $call: $(python3 "$HERE/report.py" --brief "$out")"
      if [[ $call == React ]]; then
        count=$(json_get "$out" count)
        (( count <= pairs )) || log "note: React -c $c made $count calls over $pairs pairs: $((count - pairs)) were repeats (no write)"
      fi
    done
  done
done
kill -0 "$PID" 2>/dev/null || log "WARNING: munity dev died during the run"

echo
echo "Munity discuss-svc benchmark through munity-gateway (munity dev, embedded storage): ghz -c $CONCURRENCY --connections 1 -z $DURATION x $ROUNDS round(s); $PROFILE binaries; gateway threads $THREADS; $(nproc) CPUs"
report_status=0
python3 "$HERE/report.py" "$rounds_tsv" "${SUMMARY_ARGS[@]}" || report_status=$?
if [[ $report_status -ne 0 ]]; then
  KEEP=1
  log "some calls failed; ghz JSON kept in $TMP/results"
fi
exit "$report_status"
