# Helpers every bench/*/run.sh shares: `source "$(dirname "$0")/../lib.sh"`.

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

free_ports() {  # free_ports N: N currently unused loopback ports
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

wait_for_file() {  # wait_for_file FILE PID SECONDS LOG
  local file=$1 pid=$2 deadline=$((SECONDS + $3))
  until [[ -s "$file" ]]; do
    kill -0 "$pid" 2>/dev/null || { cat "$4" >&2; die "process $pid exited before writing $file"; }
    (( SECONDS < deadline )) || { cat "$4" >&2; die "timed out waiting for $file"; }
    sleep 0.1
  done
}

wait_for_line() {  # wait_for_line FILE PATTERN PID SECONDS
  local file=$1 pattern=$2 pid=$3 deadline=$((SECONDS + $4))
  until grep -q "$pattern" "$file" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { cat "$file" >&2; die "process $pid exited before printing '$pattern'"; }
    (( SECONDS < deadline )) || { cat "$file" >&2; die "timed out waiting for '$pattern' in $file"; }
    sleep 0.1
  done
}

stop_pid() {  # stop_pid PID: SIGTERM, up to 10 s, then SIGKILL
  local pid=$1
  [[ -n "$pid" ]] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid did not stop in 10 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

stop_all() {  # stop_all PID...: SIGTERM to all at once, then stop_pid each (so they stop in parallel)
  local pid
  for pid in "$@"; do [[ -z "$pid" ]] || kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "$@"; do stop_pid "$pid"; done
}

finish_tmp() {  # finish_tmp STATUS: keep $TMP (with --keep, or after a failure) or remove it
  [[ -n "${TMP:-}" ]] || return 0
  if [[ ${KEEP:-0} -eq 1 || $1 -ne 0 ]]; then
    log "logs and results kept in $TMP"
  else
    rm -rf "$TMP"
  fi
}

in_background() {  # in_background CMD...: runs it as CHILD_PID and waits (signals are handled at once)
  "$@" &
  CHILD_PID=$!
  local status=0
  wait "$CHILD_PID" || status=$?
  CHILD_PID=""
  return "$status"
}

# CPU (utime + stime, in clock ticks) of a process or thread, from its stat
# file. Field 2 (comm) may contain spaces, so cut after the last ')'.
stat_ticks() {
  local stat
  stat=$(cat "$1" 2>/dev/null) || { echo 0; return; }
  stat=${stat##*) }
  local -a f
  read -r -a f <<<"$stat"
  echo $(( f[11] + f[12] ))
}
proc_ticks() { [[ -n "$1" ]] && stat_ticks "/proc/$1/stat" || echo 0; }

# wait_quiet PID...: waits (at most 30 s) until the processes are idle:
# under 2 clock ticks (20 ms of CPU) together in a quarter of a second. A
# call's consumers (notify, warehouse, statistics, search) may still work on
# its events when ghz stops; that work is the call's, and it must not slow
# the next call down. So a bench samples a run's CPU after this wait, and
# the next run starts on an idle process.
wait_quiet() {
  local started=$SECONDS before after pid
  while (( SECONDS - started < 30 )); do
    before=0; for pid in "$@"; do before=$(( before + $(proc_ticks "$pid") )); done
    sleep 0.25
    after=0; for pid in "$@"; do after=$(( after + $(proc_ticks "$pid") )); done
    (( after - before <= 2 )) && return 0
  done
  log "warning: still busy after 30 s: pids $*"
}

# work_dir NAME: a new work dir for a bench run, under $BENCH_TMP (default
# /tmp). Services' data dirs go inside it, so BENCH_TMP=/dev/shm shows what
# the fsyncs cost.
work_dir() { mktemp -d "${BENCH_TMP:-/tmp}/munity-bench-$1.XXXXXX"; }
