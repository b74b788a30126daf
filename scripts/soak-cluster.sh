#!/usr/bin/env bash
# Soak of the scale-out product (issue 25 item 6; by hand, not in CI):
# munity/tests/faults.rs's cluster (two replicas each of users-svc,
# events-svc, notify-svc and warehouse-svc on Cassandra and Redis, behind
# munity-gateway) under its mixed load at a steady rate, with no faults,
# for SOAK_SECONDS (default 1800). Every 10 s it samples each process's
# RSS, open descriptors and threads, and the open Subscribe streams; then
# the same checks as the fault run (0 lost, 0 missing, 0 doubled) and a plot.
#
#   bash scripts/soak-cluster.sh                  30 minutes
#   SOAK_SECONDS=120 bash scripts/soak-cluster.sh
#
# Writes soak.csv and soak.svg to SOAK_OUT (default bench/soak/).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
seconds=${SOAK_SECONDS:-1800}
out=${SOAK_OUT:-bench/soak}
mkdir -p "$out"
out=$(cd "$out" && pwd)

eval "$(bash scripts/cassandra.sh start)"
cargo build -q --bins
MUNITY_TEST_CQL="$CASSANDRA_CQL" MUNITY_FAULTS_SOAK_SECS="$seconds" \
  MUNITY_FAULTS_SOAK_CSV="$out/soak.csv" \
  cargo test -q -p munity --test faults -- --nocapture 2>&1 | tee "$out/soak.log"
python3 scripts/soak-plot.py "$out/soak.csv" "$out/soak.svg"
echo "soak-cluster.sh: $out/soak.csv, $out/soak.svg" >&2
