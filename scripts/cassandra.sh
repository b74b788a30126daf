#!/usr/bin/env bash
# Run a real Apache Cassandra 5.0 single node on loopback for tests.
#
#   scripts/cassandra.sh start    install if needed, start in the background, wait until the CQL
#                                 native port answers a real CQL query, print CASSANDRA_CQL=host:port
#   scripts/cassandra.sh stop     stop the node started by `start` (pid file), wait for it to exit
#   scripts/cassandra.sh status   print whether it runs and answers (exit 0 if it answers, 3 if not)
#   scripts/cassandra.sh install  only fetch the jars (Maven Central) into the cache
#
# Needs: Java 17 (or 11), mvn, python3, flock; when run as root on Debian, missing ones are installed
# with apt-get. Network: Maven Central only (through mvn; honours MAVEN_OPTS / ~/.m2 settings).
# Environment (all optional):
#   CASSANDRA_PORT          CQL native transport port          (default 9042)
#   CASSANDRA_STORAGE_PORT  inter-node storage port            (default 7000)
#   CASSANDRA_JMX_PORT      local JMX port                     (default 7199)
#   CASSANDRA_HEAP          -Xms/-Xmx value                    (default 1g)
#   CASSANDRA_START_TIMEOUT seconds to wait for CQL            (default 180)
#   CASSANDRA_JVM_OPTS      extra JVM options, appended        (default none)
#   CASSANDRA_KEEP_DATA     1: start with the data of the last run (default: a fresh node)
#   MUNITY_CACHE            jar cache root                     (default ~/.cache/munity)
#   MUNITY_RUN_DIR          runtime state root                 (default ~/.cache/munity/run)
# See docs/cassandra.md.
set -euo pipefail

CASSANDRA_VERSION=5.0.9   # newest 5.0.x of org.apache.cassandra:cassandra-all on Maven Central

HOST=127.0.0.1
CQL_PORT=${CASSANDRA_PORT:-9042}
STORAGE_PORT=${CASSANDRA_STORAGE_PORT:-7000}
JMX_PORT=${CASSANDRA_JMX_PORT:-7199}
HEAP=${CASSANDRA_HEAP:-1g}
START_TIMEOUT=${CASSANDRA_START_TIMEOUT:-180}

CACHE_DIR=${MUNITY_CACHE:-$HOME/.cache/munity}/cassandra/$CASSANDRA_VERSION
LIB_DIR=$CACHE_DIR/lib
RUN_DIR=${MUNITY_RUN_DIR:-$HOME/.cache/munity/run}/cassandra
DATA_DIR=$RUN_DIR/data
LOG_DIR=$RUN_DIR/logs
CONF_DIR=$RUN_DIR/conf
PID_FILE=$RUN_DIR/cassandra.pid
LOCK_FILE=$RUN_DIR/.lock

log() { echo "cassandra.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

need() { command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH${2:+ ($2)}"; }

java_major() {  # major version of the java binary $1 (e.g. 17)
  "$1" -version 2>&1 | awk -F'"' '/version/ {print $2; exit}' | awk -F. '{print ($1 == "1") ? $2 : $1}'
}

# Cassandra 5.0 runs on Java 11 or 17 only: prefer $JAVA_HOME, then `java` on PATH, then any
# installed JDK 17.
java_bin() {
  local c
  for c in "${JAVA_HOME:+$JAVA_HOME/bin/java}" "$(command -v java 2>/dev/null || true)" /usr/lib/jvm/java-17-*/bin/java; do
    [[ -n "$c" && -x "$c" ]] || continue
    case "$(java_major "$c")" in 17|11) echo "$c"; return 0 ;; esac
  done
  return 1
}

# On a fresh Debian machine, install what is missing (root + apt only; otherwise just report it).
ensure_tools() {
  local pkgs=()
  java_bin >/dev/null || pkgs+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null 2>&1 || [[ -f "$LIB_DIR/.complete" ]] || pkgs+=(maven)
  command -v python3 >/dev/null 2>&1 || pkgs+=(python3)
  command -v flock >/dev/null 2>&1 || pkgs+=(util-linux)
  ((${#pkgs[@]})) || return 0
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "installing ${pkgs[*]} with apt-get..."
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2
  else
    die "missing: ${pkgs[*]} (Cassandra 5.0 needs Java 17 or 11, plus maven, python3, flock)"
  fi
  java_bin >/dev/null || die "no Java 17 or 11 found (set JAVA_HOME)"
}

# ---------------------------------------------------------------------------------------------
# install: jars from Maven Central into $LIB_DIR (skipped when already cached)
# ---------------------------------------------------------------------------------------------
install() {
  if [[ -f "$LIB_DIR/.complete" ]]; then return 0; fi
  need mvn "apt-get install maven"
  mkdir -p "$CACHE_DIR"
  # Serialise concurrent installs of the same version.
  exec 8>"$CACHE_DIR/.install.lock"
  flock 8
  if [[ -f "$LIB_DIR/.complete" ]]; then exec 8>&-; return 0; fi
  log "fetching org.apache.cassandra:cassandra-all:$CASSANDRA_VERSION and its dependencies with Maven..."
  local work; work=$(mktemp -d "$CACHE_DIR/.mvn.XXXXXX")
  cat >"$work/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0 http://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>munity.local</groupId>
  <artifactId>cassandra-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>$CASSANDRA_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
  local start=$SECONDS
  if ! (cd "$work" && mvn -q -B dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$work/lib" >"$work/mvn.log" 2>&1); then
    tail -n 40 "$work/mvn.log" >&2
    rm -rf "$work"
    die "maven could not fetch cassandra-all $CASSANDRA_VERSION"
  fi
  [[ -f "$work/lib/cassandra-all-$CASSANDRA_VERSION.jar" ]] || { rm -rf "$work"; die "cassandra-all jar missing after maven"; }
  touch "$work/lib/.complete"
  rm -rf "$LIB_DIR"
  mv "$work/lib" "$LIB_DIR"
  rm -rf "$work"
  local jars=("$LIB_DIR"/*.jar)
  log "installed ${#jars[@]} jars into $LIB_DIR in $((SECONDS - start)) s"
  exec 8>&-
}

# ---------------------------------------------------------------------------------------------
# CQL probe: raw CQL native protocol v4 over a socket (no cqlsh / driver needed).
# OPTIONS -> SUPPORTED, STARTUP -> READY, QUERY "SELECT release_version FROM system.local" -> ROWS.
# Prints the release_version and exits 0 when the node really serves CQL.
# ---------------------------------------------------------------------------------------------
cql_probe() {
  python3 - "$HOST" "$CQL_PORT" <<'PY'
import socket, struct, sys

host, port = sys.argv[1], int(sys.argv[2])

def frame(stream, opcode, body):
    return struct.pack(">BBhBi", 0x04, 0, stream, opcode, len(body)) + body

def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return buf

def read_frame(s):
    version, flags, stream, opcode, length = struct.unpack(">BBhBi", recv_exact(s, 9))
    return version, opcode, recv_exact(s, length)

def string(b):
    return struct.pack(">H", len(b)) + b

def error_text(body):
    code = struct.unpack(">i", body[:4])[0]
    (n,) = struct.unpack(">H", body[4:6])
    return "error 0x%04x: %s" % (code, body[6:6 + n].decode("utf-8", "replace"))

try:
    s = socket.create_connection((host, port), timeout=5)
    s.settimeout(10)
    s.sendall(frame(0, 0x05, b""))                                  # OPTIONS
    v, op, body = read_frame(s)
    if op != 0x06:                                                  # SUPPORTED
        raise RuntimeError("OPTIONS answered with opcode 0x%02x" % op)
    s.sendall(frame(1, 0x01, struct.pack(">H", 1) + string(b"CQL_VERSION") + string(b"3.0.0")))  # STARTUP
    v, op, body = read_frame(s)
    if op == 0x00:
        raise RuntimeError("STARTUP " + error_text(body))
    if op != 0x02:                                                  # READY
        raise RuntimeError("STARTUP answered with opcode 0x%02x (not READY)" % op)
    q = b"SELECT release_version FROM system.local"
    s.sendall(frame(2, 0x07, struct.pack(">i", len(q)) + q + struct.pack(">HB", 0x0001, 0)))  # QUERY, ONE
    v, op, body = read_frame(s)
    if op == 0x00:
        raise RuntimeError("QUERY " + error_text(body))
    if op != 0x08:                                                  # RESULT
        raise RuntimeError("QUERY answered with opcode 0x%02x" % op)
    kind, flags, ncols = struct.unpack(">iii", body[:12])
    if kind != 2:
        raise RuntimeError("QUERY result kind %d, expected ROWS" % kind)
    p = 12
    def rd_string():
        global p
        (n,) = struct.unpack(">H", body[p:p + 2]); out = body[p + 2:p + 2 + n]; p += 2 + n
        return out
    if flags & 0x0002:                                              # has_more_pages: skip paging state
        (n,) = struct.unpack(">i", body[p:p + 4]); p += 4 + max(n, 0)
    if not flags & 0x0004:                                          # metadata present
        if flags & 0x0001:
            rd_string(); rd_string()                                # global keyspace, table
        for _ in range(ncols):
            if not flags & 0x0001:
                rd_string(); rd_string()
            rd_string()                                             # column name
            p += 2                                                  # type id (varchar, no params)
    (rows,) = struct.unpack(">i", body[p:p + 4]); p += 4
    if rows < 1:
        raise RuntimeError("system.local returned no row")
    (n,) = struct.unpack(">i", body[p:p + 4]); p += 4
    print(body[p:p + n].decode("utf-8", "replace") if n >= 0 else "?")
    s.close()
except Exception as e:  # noqa: BLE001 - any failure means "not ready"
    print("%s:%d: %s" % (host, port, e), file=sys.stderr)
    sys.exit(1)
PY
}

alive() {  # process $1 exists and is not a zombie
  kill -0 "$1" 2>/dev/null || return 1
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)
  [[ "$state" != Z ]]
}

port_open() {  # true when something accepts TCP connections on $HOST:$1
  (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

# pid of our running node, or nothing
running_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid; pid=$(cat "$PID_FILE" 2>/dev/null || true)
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  alive "$pid" || return 1
  # Make sure the pid was not reused by some other process.
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "CassandraDaemon" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$CONF_DIR/cassandra.yaml" || return 1
  echo "$pid"
}

show_log_tail() {
  local f
  for f in "$LOG_DIR/system.log" "$LOG_DIR/stdout.log"; do
    if [[ -s "$f" ]]; then
      log "---- last lines of $f ----"
      tail -n 40 "$f" >&2
    fi
  done
}

# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
write_config() {
  mkdir -p "$CONF_DIR/triggers"
  cat >"$CONF_DIR/cassandra.yaml" <<EOF
# Generated by scripts/cassandra.sh: single test node on loopback. Do not edit; regenerated on start.
cluster_name: munity-test
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "$HOST:$STORAGE_PORT"
listen_address: $HOST
rpc_address: $HOST
storage_port: $STORAGE_PORT
native_transport_port: $CQL_PORT
start_native_transport: true
auto_bootstrap: false

data_file_directories:
  - $DATA_DIR/data
commitlog_directory: $DATA_DIR/commitlog
saved_caches_directory: $DATA_DIR/saved_caches
hints_directory: $DATA_DIR/hints
cdc_raw_directory: $DATA_DIR/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10000ms

# fresh 5.0 node: no 4.x compatibility needed
storage_compatibility_mode: NONE

authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
role_manager: CassandraRoleManager
network_authorizer: AllowAllNetworkAuthorizer

# small test node (2 cores, 1 GB heap, other things running beside it)
concurrent_reads: 8
concurrent_writes: 8
concurrent_counter_writes: 4
concurrent_materialized_view_writes: 2
concurrent_compactors: 1
memtable_flush_writers: 1
memtable_heap_space: 128MiB
memtable_offheap_space: 128MiB
key_cache_size: 16MiB
counter_cache_size: 8MiB
native_transport_max_threads: 32
auto_snapshot: false
incremental_backups: false
snapshot_before_compaction: false
hinted_handoff_enabled: false
dynamic_snitch: false

# generous timeouts: the machine is small and shared
read_request_timeout: 10000ms
range_request_timeout: 10000ms
write_request_timeout: 10000ms
counter_write_request_timeout: 10000ms
cas_contention_timeout: 5000ms
truncate_request_timeout: 60000ms
request_timeout: 20000ms
EOF

  cat >"$CONF_DIR/logback.xml" <<EOF
<configuration scan="false">
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>$LOG_DIR/system.log</file>
    <append>false</append>
    <encoder>
      <pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <filter class="ch.qos.logback.classic.filter.ThresholdFilter">
      <level>WARN</level>
    </filter>
    <encoder>
      <pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <root level="INFO">
    <appender-ref ref="FILE" />
    <appender-ref ref="STDOUT" />
  </root>
</configuration>
EOF
}

jvm_opts() {
  local opts=(
    "-Xms$HEAP" "-Xmx$HEAP"
    -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1 -XX:G1HeapRegionSize=16m
    -XX:G1RSetUpdatingPauseTimePercent=5 -XX:MaxGCPauseMillis=300 -XX:InitiatingHeapOccupancyPercent=70
    -ea -da:net.openhft...
    -Xss256k -XX:+UseThreadPriorities -XX:+UseTLAB -XX:+ResizeTLAB -XX:+PerfDisableSharedMem
    -XX:+ExitOnOutOfMemoryError
    -Djava.net.preferIPv4Stack=true
    # JPMS (Cassandra's conf/jvm17-server.options)
    -Djdk.attach.allowAttachSelf=true
    --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
    --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
    --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
    --add-exports java.sql/java.sql=ALL-UNNAMED
    --add-exports java.base/java.lang.ref=ALL-UNNAMED
    --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
    --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
    --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
    --add-opens java.base/java.lang.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
    --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
    --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
    --add-opens java.base/jdk.internal.math=ALL-UNNAMED
    --add-opens java.base/jdk.internal.module=ALL-UNNAMED
    --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
    --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
    --add-opens java.base/sun.nio.ch=ALL-UNNAMED
    --add-opens java.base/java.io=ALL-UNNAMED
    --add-opens java.base/java.lang.reflect=ALL-UNNAMED
    --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
    --add-opens java.base/java.lang=ALL-UNNAMED
    --add-opens java.base/java.util=ALL-UNNAMED
    --add-opens java.base/java.nio=ALL-UNNAMED
    # Netty
    -Dio.netty.tryReflectionSetAccessible=true
    -Dio.netty.allocator.useCacheForAllThreads=true
    -Dio.netty.allocator.maxOrder=11
    # Cassandra
    -Dcassandra-foreground=yes
    "-Dcassandra.config=file://$CONF_DIR/cassandra.yaml"
    "-Dcassandra.storagedir=$DATA_DIR"
    "-Dcassandra.logdir=$LOG_DIR"
    "-Dlogback.configurationFile=file://$CONF_DIR/logback.xml"
    "-Dcassandra.jmx.local.port=$JMX_PORT"
    # fast single-node start
    -Dcassandra.skip_wait_for_gossip_to_settle=0
    -Dcassandra.ring_delay_ms=1000
    -Dcassandra.load_ring_state=false
    "-Dcassandra.triggers_dir=$CONF_DIR/triggers"
    -Dcassandra.superuser_setup_delay_ms=0
    # fast stop (the data is thrown away on the next start anyway) and no fsync on a throwaway node
    -Dcassandra.shutdown_announce_in_ms=0
    -Dcassandra.test.messagingService.nonGracefulShutdown=true
    -Dcassandra.skip_sync=true
  )
  # jamm measures object sizes (bin/cassandra.in.sh loads it as an agent too)
  local jamm
  for jamm in "$LIB_DIR"/jamm-*.jar; do
    [[ -f "$jamm" ]] && opts+=("-javaagent:$jamm")
    break
  done
  # extra options from the environment (word-split on purpose)
  # shellcheck disable=SC2206
  [[ -n "${CASSANDRA_JVM_OPTS:-}" ]] && opts+=($CASSANDRA_JVM_OPTS)
  printf '%s\n' "${opts[@]}"
}

# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------
print_addr() { echo "CASSANDRA_CQL=$HOST:$CQL_PORT"; }

wait_ready() {  # $1 = pid; waits until CQL answers, the process dies, or the timeout passes
  local pid=$1 deadline=$((SECONDS + START_TIMEOUT)) t0=$SECONDS version
  while (( SECONDS < deadline )); do
    if ! alive "$pid"; then
      rm -f "$PID_FILE"
      show_log_tail
      die "cassandra (pid $pid) exited during start-up; logs in $LOG_DIR"
    fi
    if port_open "$CQL_PORT" && version=$(cql_probe 2>/dev/null); then
      log "Cassandra $version answers CQL on $HOST:$CQL_PORT (pid $pid, ready after $((SECONDS - t0)) s)"
      return 0
    fi
    sleep 1
  done
  show_log_tail
  log "cassandra (pid $pid) did not answer CQL on $HOST:$CQL_PORT within ${START_TIMEOUT}s; stopping it"
  stop_pid "$pid" 10 || true
  die "cassandra did not come up within ${START_TIMEOUT}s (CASSANDRA_START_TIMEOUT); logs in $LOG_DIR"
}

cmd_start() {
  ensure_tools
  local java; java=$(java_bin)
  mkdir -p "$RUN_DIR"
  exec 9>"$LOCK_FILE"
  flock 9

  local pid
  if pid=$(running_pid); then
    local running_port
    running_port=$(awk '/^native_transport_port:/ {print $2}' "$CONF_DIR/cassandra.yaml" 2>/dev/null || true)
    [[ "$running_port" == "$CQL_PORT" ]] ||
      die "already running (pid $pid) with CQL port ${running_port:-?}, not $CQL_PORT; run '$0 stop' first"
    wait_ready "$pid"
    print_addr
    return 0
  fi
  rm -f "$PID_FILE"

  local port
  for port in "$CQL_PORT" "$STORAGE_PORT" "$JMX_PORT"; do
    if port_open "$port"; then
      die "port $HOST:$port is already in use by another process (not our Cassandra; see CASSANDRA_PORT / CASSANDRA_STORAGE_PORT / CASSANDRA_JMX_PORT)"
    fi
  done

  install

  # fresh node each time a new process starts, unless CASSANDRA_KEEP_DATA=1
  # (the fault suite's outage: the same node, stopped and started again)
  if [[ ${CASSANDRA_KEEP_DATA:-0} != 1 ]]; then
    rm -rf "$DATA_DIR" "$LOG_DIR"
  fi
  mkdir -p "$DATA_DIR"/{data,commitlog,saved_caches,hints,cdc_raw} "$LOG_DIR"
  write_config

  local opts=()
  mapfile -t opts < <(jvm_opts)
  log "starting Cassandra $CASSANDRA_VERSION on $HOST:$CQL_PORT (storage $STORAGE_PORT, jmx $JMX_PORT, heap $HEAP); logs in $LOG_DIR"
  # The lock fd must not leak into the long-running JVM.
  nohup "$java" "${opts[@]}" -cp "$LIB_DIR/*" org.apache.cassandra.service.CassandraDaemon \
    </dev/null >"$LOG_DIR/stdout.log" 2>&1 9>&- 8>&- &
  pid=$!
  echo "$pid" >"$PID_FILE"
  wait_ready "$pid"
  print_addr
}

stop_pid() {  # $1 = pid, $2 = seconds to wait after SIGTERM before SIGKILL
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < $2 * 4; i++)); do
    alive "$pid" || break
    sleep 0.25
  done
  if alive "$pid"; then
    log "pid $pid still running after $2 s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 40; i++)); do
      alive "$pid" || break
      sleep 0.25
    done
  fi
  alive "$pid" && return 1
  rm -f "$PID_FILE"
}

cmd_stop() {
  mkdir -p "$RUN_DIR"
  exec 9>"$LOCK_FILE"
  flock 9
  local pid
  if ! pid=$(running_pid); then
    rm -f "$PID_FILE"
    log "not running"
    return 0
  fi
  log "stopping Cassandra (pid $pid)..."
  stop_pid "$pid" 30 || die "could not stop pid $pid"
  log "stopped"
}

cmd_status() {
  local pid version
  if pid=$(running_pid); then
    if version=$(cql_probe 2>/dev/null); then
      echo "running: Cassandra $version, pid $pid, answering CQL"
      print_addr
      return 0
    fi
    echo "running: pid $pid, but not (yet) answering CQL on $HOST:$CQL_PORT"
    return 3
  fi
  echo "not running"
  return 3
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  install) ensure_tools; install; log "jars in $LIB_DIR" ;;
  *) echo "usage: $0 {start|stop|status|install}" >&2; exit 2 ;;
esac
