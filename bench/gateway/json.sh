#!/usr/bin/env bash
# GetMe over HTTP/JSON vs over gRPC through the same munity-gateway, in one
# run: alternating rounds of ghz (gRPC, h2c, one connection, C streams) and
# hey (GET /v1/me, HTTP/1.1 keep-alive, C connections) at the same
# concurrency. Prints req/s, p50 and p99 per round, the gateway's CPU per
# call for each, and JSON/gRPC (the target: JSON costs at most 1.5x the
# gateway CPU per call of gRPC).
#
# Usage: bench/gateway/json.sh [--concurrency C] [--rounds R] [--duration 5s]
#          [--threads N] [--profile release] [--no-build] [--keep]
set -euo pipefail

THREADS=1
CONCURRENCY=4
ROUNDS=3
DURATION=5s
BUILD=1
KEEP=0
PROFILE=release

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --threads) THREADS="$2"; shift 2 ;;
    --concurrency|-c) CONCURRENCY="$2"; shift 2 ;;
    --rounds|-r) ROUNDS="$2"; shift 2 ;;
    --duration|-z) DURATION="$2"; shift 2 ;;
    --profile) PROFILE="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "json.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
for n in "$THREADS" "$CONCURRENCY" "$ROUNDS"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "json.sh: expected a positive integer, got '$n'" >&2; exit 2; }
done
[[ "$PROFILE" =~ ^[A-Za-z0-9_-]+$ ]] || { echo "json.sh: bad --profile '$PROFILE'" >&2; exit 2; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
export PATH="$HOME/go/bin:/usr/local/go/bin:$PATH"
TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/munity-target}"
case "$PROFILE" in dev|test) PROFILE_DIR=debug ;; bench) PROFILE_DIR=release ;; *) PROFILE_DIR="$PROFILE" ;; esac
USERS_BIN="$TARGET_DIR/$PROFILE_DIR/users-svc"
GATEWAY_BIN="$TARGET_DIR/$PROFILE_DIR/munity-gateway"

# log, die, free_ports, wait_for_line
source "$HERE/../lib.sh"

command -v ghz >/dev/null || { log "installing ghz"; GOBIN="$HOME/go/bin" go install github.com/bojand/ghz/cmd/ghz@latest; }
command -v hey >/dev/null || { log "installing hey"; GOBIN="$HOME/go/bin" go install github.com/rakyll/hey@v0.1.4; }

if [[ $BUILD -eq 1 ]]; then
  log "building $PROFILE binaries into $TARGET_DIR"
  (cd "$REPO" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --locked --profile "$PROFILE" -p users-svc -p munity-gateway --bins)
fi
[[ -x "$USERS_BIN" && -x "$GATEWAY_BIN" ]] || die "missing binaries in $TARGET_DIR/$PROFILE_DIR (run without --no-build)"

TMP="$(mktemp -d /tmp/munity-bench-json.XXXXXX)"
PIDS=()
LOAD_PID=""
cleanup() {
  local status=$? pid
  trap - EXIT INT TERM
  [[ -n "$LOAD_PID" ]] && { kill -TERM "$LOAD_PID" 2>/dev/null || true; wait "$LOAD_PID" 2>/dev/null || true; }
  stop_all "${PIDS[@]}"
  finish_tmp "$status"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ghz's own proto parser refuses proto3 files that use the options proto,
# so it reads a descriptor set that grpcurl compiles (as in run.sh).
(cd "$REPO/proto" && grpcurl -import-path . -proto munity/users/v1/users.proto \
    -protoset-out "$TMP/users.protoset" describe >/dev/null) \
  || die "grpcurl could not compile the protos into $TMP/users.protoset"
PROTO_ARGS=(--protoset "$TMP/users.protoset")

ticks() {  # ticks PID: utime + stime in clock ticks
  local stat; stat=$(cat "/proc/$1/stat"); stat=${stat##*) }
  read -r -a f <<<"$stat"; echo $(( f[11] + f[12] ))
}

read -r USERS_PORT GATEWAY_PORT ADMIN_PORT <<<"$(free_ports 3)"
USERS_ADDR="127.0.0.1:$USERS_PORT"; GATEWAY_ADDR="127.0.0.1:$GATEWAY_PORT"
CLK_TCK="$(getconf CLK_TCK)"
mkdir -p "$TMP/users-data"
env MUNITY_USERS__LISTEN="$USERS_ADDR" MUNITY_USERS__STORAGE__BACKEND=embedded \
    MUNITY_USERS__STORAGE__PATH="$TMP/users-data" RUST_LOG=warn \
    "$USERS_BIN" >"$TMP/users-svc.log" 2>&1 &
PIDS+=("$!"); USERS_PID=$!
wait_for_line "$TMP/users-svc.log" "users-svc: listening on grpc://" "$USERS_PID" 30
sed -e "s|@USERS_ADDR@|$USERS_ADDR|g" -e "s|@TICKER_ADDR@|$USERS_ADDR|g" \
  "$HERE/gateway.toml.template" >"$TMP/gateway.toml"
env MUNITY_GATEWAY__LISTEN="$GATEWAY_ADDR" MUNITY_GATEWAY__ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT" \
    MUNITY_GATEWAY__THREADS="$THREADS" MUNITY_GATEWAY__JWKS_ENDPOINT="http://$USERS_ADDR" \
    MUNITY_GATEWAY__RATE_LIMITS__ENABLED=true \
    MUNITY_GATEWAY__RATE_LIMITS__DEFAULT__REQUESTS=1000000 \
    MUNITY_GATEWAY__RATE_LIMITS__DEFAULT__PER_SECS=1 \
    MUNITY_GATEWAY__RATE_LIMITS__DEFAULT__BURST=1000000 \
    MUNITY_GATEWAY__SHUTDOWN_GRACE_SECS=0 RUST_LOG=warn \
    "$GATEWAY_BIN" --config "$TMP/gateway.toml" >"$TMP/gateway.log" 2>&1 &
PIDS+=("$!"); GATEWAY_PID=$!
wait_for_line "$TMP/gateway.log" "munity-gateway: listening on grpc://" "$GATEWAY_PID" 30

# Registered over HTTP/JSON itself; the token serves both protocols.
EMAIL="bench-$$-$RANDOM@example.com"
deadline=$((SECONDS + 30))
until curl -sf -X POST -H 'content-type: application/json' \
    -d "{\"email\":\"$EMAIL\",\"password\":\"bench password\",\"displayName\":\"Bench\"}" \
    "http://$GATEWAY_ADDR/v1/auth/register" >"$TMP/register.json"; do
  (( SECONDS < deadline )) || die "Register over HTTP/JSON failed"
  sleep 0.3
done
TOKEN="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["accessToken"])' "$TMP/register.json")"
curl -sf -H "authorization: Bearer $TOKEN" "http://$GATEWAY_ADDR/v1/me" >/dev/null || die "GET /v1/me failed"
log "users-svc $USERS_ADDR, gateway $GATEWAY_ADDR (threads $THREADS); concurrency $CONCURRENCY, $ROUNDS rounds of $DURATION each"

round() {  # round grpc|json N: runs the load, prints "calls rps p50_ms p99_ms ticks"
  local before after out="$TMP/$1-$2"
  before=$(ticks "$GATEWAY_PID")
  if [[ $1 == grpc ]]; then
    ghz --insecure "${PROTO_ARGS[@]}" --call munity.users.v1.Users/GetMe -d '{}' \
      -m "{\"authorization\":\"Bearer $TOKEN\"}" -c "$CONCURRENCY" --connections 1 \
      -z "$DURATION" --duration-stop wait -O json -o "$out.json" "$GATEWAY_ADDR" &
  else
    hey -z "$DURATION" -c "$CONCURRENCY" -H "authorization: Bearer $TOKEN" \
      -o csv "http://$GATEWAY_ADDR/v1/me" >"$out.csv" &
  fi
  LOAD_PID=$!; wait "$LOAD_PID"; LOAD_PID=""
  after=$(ticks "$GATEWAY_PID")
  python3 - "$1" "$out" "$(( after - before ))" "${DURATION%s}" <<'PY'
import csv, json, sys
kind, out, ticks, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
if kind == "grpc":
    r = json.load(open(out + ".json"))
    ok = r["statusCodeDistribution"].get("OK", 0)
    lat = {d["percentage"]: round(d["latency"] / 1e6, 2) for d in r["latencyDistribution"]}
    bad = r["count"] - ok
    print(ok, round(r["rps"]), lat[50], lat[99], ticks, bad)
else:
    rows = list(csv.DictReader(open(out + ".csv")))
    ok = sum(1 for row in rows if row["status-code"] == "200")
    times = sorted(float(row["response-time"]) * 1000 for row in rows)
    p = lambda q: round(times[min(len(times) - 1, int(q * len(times)))], 2)
    print(ok, round(len(rows) / seconds), p(0.5), p(0.99), ticks, len(rows) - ok)
PY
}

printf '%-6s %-5s %9s %8s %8s %8s %14s\n' round proto calls req/s p50_ms p99_ms "gw_cpu_us/call" >&2
declare -A CALLS=([grpc]=0 [json]=0) TICKS=([grpc]=0 [json]=0)
for r in $(seq "$ROUNDS"); do
  for kind in grpc json; do
    read -r calls rps p50 p99 t bad <<<"$(round "$kind" "$r")"
    (( bad == 0 )) || die "$kind round $r: $bad calls failed"
    CALLS[$kind]=$(( CALLS[$kind] + calls )); TICKS[$kind]=$(( TICKS[$kind] + t ))
    printf '%-6s %-5s %9s %8s %8s %8s %14s\n' "$r" "$kind" "$calls" "$rps" "$p50" "$p99" \
      "$(python3 -c "print(round($t / $CLK_TCK * 1e6 / max($calls, 1), 1))")" >&2
  done
done
python3 - "${CALLS[grpc]}" "${TICKS[grpc]}" "${CALLS[json]}" "${TICKS[json]}" "$CLK_TCK" <<'PY'
import sys
grpc_calls, grpc_ticks, json_calls, json_ticks, hz = map(int, sys.argv[1:])
grpc = grpc_ticks / hz * 1e6 / grpc_calls
json_ = json_ticks / hz * 1e6 / json_calls
print(f"GetMe through the gateway: gRPC {grpc:.1f} us CPU/call ({grpc_calls} calls), "
      f"HTTP/JSON {json_:.1f} us CPU/call ({json_calls} calls): JSON/gRPC = {json_ / grpc:.2f}x (target <= 1.5x)")
PY
