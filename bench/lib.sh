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
