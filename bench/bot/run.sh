#!/usr/bin/env bash
# bot-svc benchmark (issue 22): N linked Telegram chats, one push each,
# delivered to telegram-test-api at the rate bot-svc's limits allow.
#
# Processes, all on loopback, all stopped on exit:
#   stand-in     telegram-test-api (npm, bot-svc/tests/telegram/server.js),
#                the Bot API bot-svc talks to; it keeps what the bot sent
#   munity dev   users-svc, events-svc, notify-svc (embedded stores), its
#                own bot off; long-lived access tokens, and password checks
#                may queue (users.passwords) so Registers wait, not fail
#   bot-svc      its own process (so its CPU and memory are its own), its
#                store in the work dir; started twice:
#                A  set-up: --setup-rate messages/s, so the N replies to
#                   /link do not take minutes
#                B  measured: --messages-per-sec, on A's store (it resumes
#                   every user's stream from the stored position)
# Set-up (bench/bot-load setup): N real users (Register: Argon2id, the
# bulk of the set-up time), a meeting each (voting open), a link code each;
# each chat sends `/link CODE` to the bot through the stand-in; done when
# bot-svc has every chat linked, follows every user and has sent its
# replies. Its time is printed.
# Measured (bench/bot-load deliver): once bot B follows every user, every
# meeting's voting is closed (CloseVoting straight to events-svc, each by
# its owner), so notify-svc pushes one "Voting closed" to each owner's
# user: topic and the bot sends one message to each chat. Printed: the
# time from the first close to the last arrival, messages/s (first to last
# arrival, the stand-in's clock) against bot.messages_per_sec, bot-svc's
# CPU over the delivery and its RSS (peak and at the end), and per chat:
# lost, doubled, in a wrong chat (read from what the stand-in received).
# At Telegram's 30 messages/s, 10,000 chats take about 6 minutes to
# deliver, plus the set-up (registering 10,000 users is CPU-bound: minutes
# on 2 cores); for a quick run: --chats 1000 --messages-per-sec 200.
# See bench/bot/README.md.
#
# Usage: bench/bot/run.sh [--chats 10000] [--messages-per-sec 30]
#          [--setup-rate 1000] [--concurrency 32] [--profile release]
#          [--no-build] [--summary FILE] [--keep]
#   --profile: cargo profile to build and run (dev: to try the script out,
#   not for figures).
#   --summary: append `figure<TAB>goal<TAB>measured<TAB>met` lines to FILE
#   (delivered rate >= 0.9 x the configured one, lost = 0, doubled = 0,
#   wrong chat = 0).
#   --keep: keep the work dir (logs, stores, state).
set -euo pipefail

CHATS=10000
RATE=30
SETUP_RATE=1000
CONCURRENCY=32
PROFILE=release
BUILD=1
SUMMARY=""
KEEP=0

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --chats) CHATS="$2"; shift 2 ;;
    --messages-per-sec) RATE="$2"; shift 2 ;;
    --setup-rate) SETUP_RATE="$2"; shift 2 ;;
    --concurrency) CONCURRENCY="$2"; shift 2 ;;
    --profile) PROFILE="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --summary) SUMMARY="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
for n in "$CHATS" "$RATE" "$SETUP_RATE" "$CONCURRENCY"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: expected a positive integer, got '$n'" >&2; exit 2; }
done
[[ "$PROFILE" =~ ^[A-Za-z0-9_-]+$ ]] || { echo "run.sh: bad --profile '$PROFILE'" >&2; exit 2; }
if [[ -n "$SUMMARY" ]]; then
  touch "$SUMMARY" 2>/dev/null || { echo "run.sh: cannot write --summary $SUMMARY" >&2; exit 2; }
  SUMMARY="$(cd "$(dirname "$SUMMARY")" && pwd)/$(basename "$SUMMARY")"
fi

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
STAND_IN_DIR="$REPO/bot-svc/tests/telegram"
TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/munity-target}"
case "$PROFILE" in
  dev|test) PROFILE_DIR=debug ;;
  bench) PROFILE_DIR=release ;;
  *) PROFILE_DIR="$PROFILE" ;;
esac
BIN_DIR="$TARGET_DIR/$PROFILE_DIR"
MUNITY_BIN="$BIN_DIR/munity"
BOT_BIN="$BIN_DIR/bot-svc"
LOAD_BIN="$BIN_DIR/bot-load"
BOT_TOKEN="123456:munity-bench"

# log, die, free_ports, wait_for_file, stop_pid, stop_all, finish_tmp
source "$(dirname "$0")/../lib.sh"

json_get() {  # json_get FILE KEY
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}

# ---------------------------------------------------------- processes ----
TMP=""
PIDS=()          # stand-in, munity dev
BOT_PID=""
CHILD_PID=""     # bot-load, waited for in the background

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  [[ -z "$CHILD_PID" ]] || stop_pid "$CHILD_PID"
  stop_all "$BOT_PID" "${PIDS[@]}"
  finish_tmp "$status"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_stand_in() {
  if [[ ! -d "$STAND_IN_DIR/node_modules/telegram-test-api" ]]; then
    log "installing telegram-test-api (npm ci in $STAND_IN_DIR)"
    (cd "$STAND_IN_DIR" && npm ci --no-audit --no-fund >&2)
  fi
  # Keeps messages for 2 hours: the run reads them all at the end.
  (cd "$STAND_IN_DIR" && exec node server.js "$STAND_IN_PORT" "$PROXY_PORT" 7200) \
    >"$TMP/stand-in.log" 2>&1 &
  PIDS+=("$!")
  wait_for_line "$TMP/stand-in.log" READY "$!" 30
  log "telegram-test-api up (pid ${PIDS[-1]}, :$STAND_IN_PORT, proxy :$PROXY_PORT)"
}

start_munity() {
  local dir="$TMP/munity"
  mkdir -p "$dir/data"
  cat >"$dir/munity.toml" <<TOML
# munity dev config written by bench/bot/run.sh
[users]
admin_emails = ["$ADMIN_EMAIL"]

[users.tokens]
# The owners' tokens close the meetings after the set-up: they must
# outlive the run.
access_ttl_secs = 86400

[users.passwords]
# Registers queue for the hashing threads instead of being refused.
max_queued_hashes = 100000
queue_timeout_ms = 600000

[auth]
# users-svc refuses to start unless revocations are replayed for as long
# as the longest token lives (plus leeway).
revocation_replay_secs = 90000
TOML
  (cd "$dir" && exec env RUST_LOG=warn \
      MUNITY_DEV__ANY_PORT=true \
      MUNITY_READY_FILE="$dir/ready.json" \
      "$MUNITY_BIN" --config "$dir/munity.toml" dev --data-dir "$dir/data") \
    >"$dir/munity.log" 2>&1 &
  MUNITY_PID=$!; PIDS+=("$MUNITY_PID")
  wait_for_file "$dir/ready.json" "$MUNITY_PID" 60 "$dir/munity.log"
  USERS_ADDR=$(json_get "$dir/ready.json" users)
  EVENTS_ADDR=$(json_get "$dir/ready.json" events)
  NOTIFY_ADDR=$(json_get "$dir/ready.json" notify)
  log "munity dev up (pid $MUNITY_PID): users-svc $USERS_ADDR, events-svc $EVENTS_ADDR, notify-svc $NOTIFY_ADDR"
}

BOT_RUNS=0
start_bot() {  # start_bot MESSAGES_PER_SEC: bot-svc on the work dir's store
  BOT_RUNS=$((BOT_RUNS + 1))
  local rate=$1 ready="$TMP/bot/ready.$BOT_RUNS.json"
  mkdir -p "$TMP/bot"
  env RUST_LOG=warn \
    MUNITY_BOT__LISTEN="$BOT_ADDR" \
    MUNITY_BOT__STORAGE__BACKEND=embedded \
    MUNITY_BOT__STORAGE__PATH="$TMP/bot/store" \
    MUNITY_BUS__PATH="$TMP/bot/bus" \
    MUNITY_AUTH__JWKS_URL="http://$USERS_ADDR" \
    MUNITY_AUTH__REVOCATION_REPLAY_SECS=90000 \
    MUNITY_BOT__USERS_URL="http://$USERS_ADDR" \
    MUNITY_BOT__EVENTS_URL="http://$EVENTS_ADDR" \
    MUNITY_BOT__NOTIFY_URL="http://$NOTIFY_ADDR" \
    MUNITY_BOT__TELEGRAM_TOKEN="$BOT_TOKEN" \
    MUNITY_BOT__TELEGRAM_API_URL="http://127.0.0.1:$PROXY_PORT" \
    MUNITY_BOT__CLIENT_ID="$CLIENT_ID" \
    MUNITY_BOT__CLIENT_SECRET="$CLIENT_SECRET" \
    MUNITY_BOT__MESSAGES_PER_SEC="$rate" \
    MUNITY_READY_FILE="$ready" \
    "$BOT_BIN" >>"$TMP/bot/bot-svc.log" 2>&1 &
  BOT_PID=$!
  wait_for_file "$ready" "$BOT_PID" 60 "$TMP/bot/bot-svc.log"
  log "bot-svc up (pid $BOT_PID, $BOT_ADDR, bot.messages_per_sec = $rate)"
}

stop_bot() {
  local pid=$BOT_PID
  BOT_PID=""
  stop_pid "$pid"
}

# ---------------------------------------------------------------- main ----
command -v python3 >/dev/null || die "python3 is required (free ports, JSON)"
command -v node >/dev/null || die "node is required (telegram-test-api)"
if [[ $BUILD -eq 1 ]]; then
  log "building $PROFILE binaries into $TARGET_DIR"
  (cd "$REPO" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --locked --profile "$PROFILE" \
      -p munity -p bot-svc -p bot-load --bins)
fi
for bin in "$MUNITY_BIN" "$BOT_BIN" "$LOAD_BIN"; do
  [[ -x "$bin" ]] || die "missing $bin (run without --no-build)"
done

TMP="$(work_dir bot)"
read -r STAND_IN_PORT PROXY_PORT BOT_PORT <<<"$(free_ports 3)"
BOT_ADDR="127.0.0.1:$BOT_PORT"
ADMIN_EMAIL="bench-admin-$$-$RANDOM@example.com"
minutes=$(python3 -c "import sys; print(round(int(sys.argv[1]) / int(sys.argv[2]) / 60, 1))" "$CHATS" "$RATE")
log "profile $PROFILE ($BIN_DIR); $CHATS chats at $RATE messages/s: about $minutes min of delivery after the set-up; work dir $TMP"

start_stand_in
start_munity
"$LOAD_BIN" account --users "http://$USERS_ADDR" --admin-email "$ADMIN_EMAIL" >"$TMP/account.env" \
  || die "making the bot's service account failed"
CLIENT_ID=$(sed -n 's/^CLIENT_ID=//p' "$TMP/account.env")
CLIENT_SECRET=$(sed -n 's/^CLIENT_SECRET=//p' "$TMP/account.env")
[[ -n "$CLIENT_ID" && -n "$CLIENT_SECRET" ]] || die "no service account (see $TMP/account.env)"

COMMON=(--users "http://$USERS_ADDR" --events "http://$EVENTS_ADDR" --bot "http://$BOT_ADDR"
        --stand-in "$PROXY_PORT" --bot-token "$BOT_TOKEN" --concurrency "$CONCURRENCY"
        --state "$TMP/state.json")

start_bot "$SETUP_RATE"
setup_started=$SECONDS
log "set-up: $CHATS users, meetings and links ($CONCURRENCY calls at a time)"
in_background "$LOAD_BIN" setup "${COMMON[@]}" --chats "$CHATS" | tee "$TMP/setup.txt" \
  || die "set-up failed (logs in $TMP)"
SETUP_SECS=$((SECONDS - setup_started))
stop_bot

start_bot "$RATE"
summary=()
[[ -z "$SUMMARY" ]] || summary=(--summary "$SUMMARY")
log "measuring: every meeting closed; $CHATS pushes at $RATE messages/s"
deliver_status=0
in_background "$LOAD_BIN" deliver "${COMMON[@]}" --bot-pid "$BOT_PID" --messages-per-sec "$RATE" \
    "${summary[@]}" | tee "$TMP/deliver.txt" || deliver_status=$?
kill -0 "$BOT_PID" 2>/dev/null || die "bot-svc died (see $TMP/bot/bot-svc.log)"

echo
echo "Munity bot-svc benchmark: $CHATS linked chats, one 'Voting closed' push each, to telegram-test-api"
echo "$PROFILE binaries; $(nproc) CPUs; bot-svc alone in its process (embedded store), munity dev beside it; bot.messages_per_sec = $RATE, bot.chat_interval_ms = 1000"
echo "set-up (users, meetings, links, follows): $SETUP_SECS s in all"
sed -n 's/^set-up: /  /p' "$TMP/setup.txt"
sed -n 's/^deliver: /  /p' "$TMP/deliver.txt"
[[ $deliver_status -eq 0 ]] || die "delivery check failed (exit $deliver_status)"
