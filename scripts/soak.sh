#!/usr/bin/env bash
# A bounded soak of the edge, on loopback only: users-svc and a gateway on
# free ports, then gateway/examples/soak.rs holds idle and slow-header
# connections, sends hostile requests at a steady rate, and calls with
# well-behaved clients throughout; it prints their errors (target 0) and
# p99, and the gateway's RSS at start and end. Everything stops by itself.
#
#   bash scripts/soak.sh                 5 minutes, 1000 idle, 50 slow, 5 hostile/s
#   SOAK_SECONDS=60 bash scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
seconds=${SOAK_SECONDS:-300}
idle=${SOAK_IDLE:-1000}
slow=${SOAK_SLOW:-50}
hostile=${SOAK_HOSTILE_PER_SEC:-5}
good=${SOAK_GOOD:-4}

ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build -q -p users-svc -p munity-gateway --bins --example soak
bin=$CARGO_TARGET_DIR/debug
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

MUNITY_USERS__LISTEN=127.0.0.1:0 MUNITY_USERS__STORAGE__PATH="$work/users" \
  MUNITY_READY_FILE="$work/users.json" RUST_LOG=warn "$bin/users-svc" >"$work/users.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [[ -s $work/users.json ]] && break; sleep 0.1; done
users=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["users"])' "$work/users.json")

port=$(free_port); admin=$(free_port)
cat >"$work/gateway.toml" <<TOML
[gateway]
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$admin"
[gateway.routes.users]
upstreams = ["$users"]
# Every client here is 127.0.0.1: one identity for the limits.
[gateway.rate_limits.default]
requests = 100000
per_secs = 1
burst = 100000
TOML
RUST_LOG=error "$bin/munity-gateway" --config "$work/gateway.toml" >"$work/gateway.log" 2>&1 &
gateway_pid=$!
pids+=($gateway_pid)
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
echo "soak.sh: users-svc $users, gateway 127.0.0.1:$port (pid $gateway_pid); $seconds s" >&2
"$bin/examples/soak" --gateway "127.0.0.1:$port" --gateway-pid "$gateway_pid" \
  --seconds "$seconds" --idle "$idle" --slow "$slow" --hostile-per-sec "$hostile" --good "$good"
