#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a bounded time and prints, per target,
# how many inputs it executed and whether it found anything.
#
#   bash scripts/fuzz.sh            60 s per target
#   bash scripts/fuzz.sh 300        300 s per target
#   bash scripts/fuzz.sh 60 config  one target
#
# Needs a nightly toolchain (cargo-fuzz builds with sanitizers) and installs
# cargo-fuzz from crates.io when missing. The corpus lives in
# fuzz/corpus/<target> (kept in the repository: each run starts from what
# earlier runs found); crashes land in fuzz/artifacts/<target>. Not part of
# CI: it takes minutes and a nightly compiler.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
only=${2:-}
export CARGO_TARGET_DIR=${CARGO_FUZZ_TARGET_DIR:-$HOME/.cache/munity-fuzz-target}
export PATH="$HOME/.cargo/bin:$PATH"

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz.sh: needs a nightly toolchain (rustup toolchain install nightly)" >&2
  exit 2
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

targets=$(cd fuzz && cargo +nightly fuzz list)
[[ -n $only ]] && targets=$only
# One build for every target (cargo-fuzz builds one or all).
(cd fuzz && cargo +nightly fuzz build -O $only >/dev/null)

status=0
printf '%-20s %12s %10s  %s\n' target executions exec/s findings
for target in $targets; do
  mkdir -p "fuzz/corpus/$target"
  log=$(mktemp)
  if (cd fuzz && cargo +nightly fuzz run -O "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=4096 -print_final_stats=1) >"$log" 2>&1; then
    found=none
  else
    found="CRASH: see fuzz/artifacts/$target and $log"
    status=1
  fi
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
  speed=$(grep -oE 'stat::average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
  printf '%-20s %12s %10s  %s\n' "$target" "${runs:-?}" "${speed:-?}" "$found"
  [[ $found == none ]] && rm -f "$log"
done
exit $status
