#!/usr/bin/env bash
# `munity dev` with Prometheus and Jaeger beside it, no Docker: traces go to
# Jaeger (OTLP), Prometheus scrapes the gateway and the services with the
# project's scrape config and rules (observability/prometheus), and the logs
# are JSON lines carrying trace_id and span_id. Prints where to look, then
# runs until Ctrl-C (or for $MUNITY_OBSERVE_SECONDS), and stops everything
# it started.
#
#   bash scripts/observe.sh
#
# Needs: Rust (builds munity), Go (builds Jaeger once, ~4.5 min, cached in
# ~/.cache/munity-tools), Debian's prometheus (apt-get when root). Ports:
# munity dev's defaults (8080, admin 9090, 50051-50054), Prometheus on
# $PROMETHEUS_PORT (9091: 9090 is the gateway's admin port), Jaeger on 4317
# (OTLP) and 16686 (query API; the UI assets are not in a source build).
set -euo pipefail
cd "$(dirname "$0")/.."

PROMETHEUS_PORT=${PROMETHEUS_PORT:-9091}
run=${MUNITY_RUN_DIR:-$HOME/.cache/munity/run}/observe
data=${MUNITY_OBSERVE_DATA:-$run/munity-data}
log() { echo "observe.sh: $*" >&2; }

pids=()
jaeger_started=false
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if $jaeger_started; then bash scripts/jaeger.sh stop || true; fi
}
trap cleanup EXIT
trap 'exit 0' INT TERM

# --- tools ---
if ! command -v prometheus >/dev/null; then
  [[ $(id -u) -eq 0 ]] || { log "prometheus missing: install Debian's prometheus"; exit 1; }
  log "installing prometheus with apt-get"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi
log "building munity"
cargo build -q -p munity
munity=${CARGO_TARGET_DIR:-target}/debug/munity

mkdir -p "$run"
# --- Jaeger ---
if ! bash scripts/jaeger.sh status; then jaeger_started=true; fi
eval "$(bash scripts/jaeger.sh start)"

# --- munity dev, exporting traces to Jaeger, JSON logs ---
rm -f "$run/ready.json"
MUNITY_READY_FILE=$run/ready.json \
  MUNITY_TELEMETRY__OTLP_ENDPOINT=$JAEGER_OTLP \
  MUNITY_TELEMETRY__LOG_FORMAT=json \
  "$munity" dev --data-dir "$data" >"$run/munity.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 600); do [[ -f $run/ready.json ]] && break; sleep 0.1; done
[[ -f $run/ready.json ]] || { log "munity dev did not start"; tail -20 "$run/munity.log" >&2; exit 1; }

# --- Prometheus: the project's config and rules, targets from the ready file ---
rm -rf "$run/prometheus" && mkdir -p "$run/prometheus"
cp -r observability/prometheus/prometheus.yml observability/prometheus/rules "$run/prometheus/"
mkdir -p "$run/prometheus/targets"
python3 - "$run/ready.json" "$run/prometheus/targets" <<'PY'
import json, sys
ready = json.load(open(sys.argv[1]))
out = sys.argv[2]
json.dump([{"targets": [ready["gateway_admin"]], "labels": {"component": "gateway"}}], open(f"{out}/gateway.json", "w"))
# One process, one registry: one service port shows every service.
json.dump([{"targets": [ready["users"]], "labels": {"component": "services"}}], open(f"{out}/services.json", "w"))
PY
prometheus --config.file="$run/prometheus/prometheus.yml" \
  --storage.tsdb.path="$run/prometheus/data" \
  --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" >"$run/prometheus.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PROMETHEUS_PORT/-/ready" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$PROMETHEUS_PORT/-/ready" >/dev/null || { log "Prometheus did not start"; tail -20 "$run/prometheus.log" >&2; exit 1; }

gateway=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["gateway"])' "$run/ready.json")
admin=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["gateway_admin"])' "$run/ready.json")
cat <<TEXT
Munity is running with Prometheus and Jaeger beside it.

  web app and API     http://$gateway/
  gateway metrics     http://$admin/metrics
  Prometheus          http://127.0.0.1:$PROMETHEUS_PORT/   (targets: /targets, alerts: /alerts)
                        e.g. http://127.0.0.1:$PROMETHEUS_PORT/graph?g0.expr=munity%3Agateway_requests%3Arate5m
  Jaeger query API    $JAEGER_QUERY/api/services, $JAEGER_QUERY/api/traces?service=munity (munity dev is one process: one service)
  JSON logs           $run/munity.log   (trace_id, span_id on each line inside a call)
  Grafana dashboards  observability/grafana/dashboards/*.json (import with the provisioning there)

Ctrl-C stops everything started here.
TEXT

if [[ -n ${MUNITY_OBSERVE_SECONDS:-} ]]; then
  sleep "$MUNITY_OBSERVE_SECONDS"
else
  wait "${pids[0]}"
fi
