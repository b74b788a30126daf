#!/usr/bin/env bash
# Memory of a real users-svc process through a login storm (a measurement,
# not a test): starts USERS_SVC on a free port with an empty embedded store,
# prints VmHWM (peak RSS) and VmRSS from /proc/PID/status before the storm,
# right after it, and SETTLE seconds later, then stops it.
#
#   cargo build -p users-svc --examples            # or --release
#   users-svc/examples/login_storm_rss.sh target/debug/users-svc \
#       target/debug/examples/login_storm [N=200]
#
# The hashing bound comes from the environment as usual, e.g. to turn it
# off in effect: MUNITY_USERS__PASSWORDS__MAX_CONCURRENT_HASHES=10000
# MUNITY_USERS__PASSWORDS__MAX_QUEUED_HASHES=10000.
set -euo pipefail

users_svc=${1:?usage: login_storm_rss.sh USERS_SVC LOGIN_STORM [N]}
storm=${2:?usage: login_storm_rss.sh USERS_SVC LOGIN_STORM [N]}
calls=${3:-200}
settle=${SETTLE:-3}

work=$(mktemp -d)
pid=
cleanup() {
    if [[ -n $pid ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

MUNITY_USERS__LISTEN=127.0.0.1:0 \
MUNITY_USERS__STORAGE__BACKEND=embedded \
MUNITY_USERS__STORAGE__PATH="$work/data" \
MUNITY_READY_FILE="$work/ready.json" \
RUST_LOG=${RUST_LOG:-error} \
    "$users_svc" >"$work/out.log" 2>&1 &
pid=$!
for _ in $(seq 300); do
    [[ -f $work/ready.json ]] && break
    kill -0 "$pid" || { cat "$work/out.log"; exit 1; }
    sleep 0.1
done
address=$(sed -E 's/.*"users":"([^"]+)".*/\1/' "$work/ready.json")

memory() {
    printf '%-22s %s\n' "$1" "$(grep -E '^(VmHWM|VmRSS)' /proc/"$pid"/status | tr -s ' \t' ' ' | paste -sd' ')"
}
echo "users-svc pid $pid at $address; $calls concurrent Logins"
memory "started:"
"$storm" "$address" "$calls"
memory "after the storm:"
sleep "$settle"
memory "${settle} s later:"
