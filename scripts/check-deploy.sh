#!/usr/bin/env bash
# Checks everything deployable that is not Rust (scripts/test.sh runs it):
#
#   - `kustomize build` of every overlay in k8s/overlays;
#   - kubeconform -strict on each build, offline, against the Kubernetes
#     v1.35 JSON schemas (from PyPI's kubernetes-validate) and the
#     ScyllaCluster CRD of scylla-operator v1.17.0 (from its Go module);
#   - k8s/tests/policy.py: probes, resources, security context, PDBs...;
#   - the deliberately broken fixtures in k8s/tests/broken-* must fail
#     (kubeconform, then the policy), for the reason they were broken for;
#   - promtool check config / check rules / test rules on observability/;
#   - every Grafana dashboard parsed strictly (scripts/dashcheck, Grafana
#     Foundation SDK);
#   - the OpenTelemetry collector and Jaeger configs (`jaeger validate`,
#     when scripts/jaeger.sh has built Jaeger);
#   - the Dockerfile's stages name binaries that exist.
#
# Tools are installed once into ~/.cache/munity-tools (Go module proxy,
# PyPI download, Debian's prometheus for promtool); then this takes a few
# seconds. Non-interactive and idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

KUSTOMIZE_VERSION=v5.8.1
KUBECONFORM_VERSION=v0.8.0
KUBERNETES_VALIDATE_VERSION=1.37.0
KUBERNETES_SCHEMA=v1.35.0-local-strict
SCYLLA_OPERATOR_VERSION=v1.17.0

tools=$HOME/.cache/munity-tools
bin=$tools/bin
mkdir -p "$bin"
export PATH="$bin:$PATH"
log() { echo "check-deploy.sh: $*" >&2; }
started=$SECONDS

# --- tools -------------------------------------------------------------------
if [[ $("$bin/kustomize" version 2>/dev/null) != "$KUSTOMIZE_VERSION" ]]; then
  log "installing kustomize $KUSTOMIZE_VERSION (Go module proxy)"
  GOBIN=$bin go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
fi
# go install leaves kubeconform reporting "development": a marker says which.
if [[ ! -x $bin/kubeconform || ! -f $bin/.kubeconform-$KUBECONFORM_VERSION ]]; then
  log "installing kubeconform $KUBECONFORM_VERSION (Go module proxy)"
  GOBIN=$bin go install "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
  touch "$bin/.kubeconform-$KUBECONFORM_VERSION"
fi

# Kubernetes JSON schemas: kubernetes-validate's wheel ships them; kubeconform
# wants plain files whose $refs it can open, so they are rewritten to file://.
schemas=$tools/k8s-schemas/$KUBERNETES_VALIDATE_VERSION/$KUBERNETES_SCHEMA
if [[ ! -f $schemas/.complete ]]; then
  log "fetching kubernetes-validate $KUBERNETES_VALIDATE_VERSION from PyPI for its $KUBERNETES_SCHEMA schemas"
  download=$(mktemp -d)
  venv=$tools/venv
  [[ -x $venv/bin/pip ]] || python3 -m venv "$venv"
  "$venv/bin/pip" download -q --disable-pip-version-check --no-deps \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" -d "$download"
  rm -rf "$schemas" && mkdir -p "$schemas"
  python3 - "$download"/kubernetes_validate-*.whl "$KUBERNETES_SCHEMA" "$schemas" <<'PY'
import sys, zipfile, os
wheel, version, out = sys.argv[1:]
prefix = f"kubernetes_validate/kubernetes-json-schema/{version}/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and name.endswith(".json"):
            text = z.read(name).decode()
            text = text.replace('"/api/_definitions.json#', f'"file://{out}/_definitions.json#')
            with open(os.path.join(out, name[len(prefix):]), "w") as f:
                f.write(text)
PY
  rm -rf "$download"
  touch "$schemas/.complete"
fi

# The ScyllaCluster CRD, from the operator's own Go module, as a strict schema.
crds=$tools/crd-schemas/scylla-operator-$SCYLLA_OPERATOR_VERSION
if [[ ! -f $crds/.complete ]]; then
  log "converting the ScyllaCluster CRD of scylla-operator $SCYLLA_OPERATOR_VERSION"
  operator=$(cd /tmp && go mod download -json "github.com/scylladb/scylla-operator@$SCYLLA_OPERATOR_VERSION" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
  rm -rf "$crds" && mkdir -p "$crds"
  python3 k8s/tests/crd_to_jsonschema.py \
    "$operator/pkg/api/scylla/v1/scylla.scylladb.com_scyllaclusters.yaml" "$crds" >/dev/null
  touch "$crds/.complete"
fi

# promtool: Debian's prometheus package (not started as a service here).
if ! command -v promtool >/dev/null; then
  [[ $(id -u) -eq 0 ]] || { log "promtool missing: install Debian's prometheus"; exit 1; }
  log "installing prometheus (for promtool) with apt-get"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # Where systemd runs, the package starts a server on :9090; not wanted.
  if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi

# The dashboard checker (Go, Grafana Foundation SDK); go build caches it.
(cd scripts/dashcheck && go build -o "$bin/dashcheck" .)

# --- Kubernetes manifests ---------------------------------------------------
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
kubeconform_args=(
  -strict -summary -output text
  -schema-location "$schemas/{{.ResourceKind}}{{.KindSuffix}}.json"
  -schema-location "$crds/{{.Group}}/{{.ResourceKind}}_{{.ResourceAPIVersion}}.json"
)
overlays=()
for dir in k8s/overlays/*/; do overlays+=("$(basename "$dir")"); done
((${#overlays[@]})) || { log "no overlays in k8s/overlays"; exit 1; }
for overlay in "${overlays[@]}"; do
  log "overlay $overlay: kustomize build, kubeconform -strict, policy"
  kustomize build "k8s/overlays/$overlay" >"$out/$overlay.yaml"
  kubeconform "${kubeconform_args[@]}" "$out/$overlay.yaml"
  python3 k8s/tests/policy.py <"$out/$overlay.yaml"
done

# The broken fixtures must fail, each for its own reason.
log "k8s/tests/broken-schema must fail kubeconform"
kustomize build k8s/tests/broken-schema >"$out/broken-schema.yaml"
if kubeconform "${kubeconform_args[@]}" "$out/broken-schema.yaml" >"$out/broken-schema.log" 2>&1; then
  cat "$out/broken-schema.log" >&2
  log "FAIL: kubeconform accepted k8s/tests/broken-schema"
  exit 1
fi
for reason in readinesProbe "ScyllaCluster munity-scylla is invalid"; do
  grep -q "$reason" "$out/broken-schema.log" || {
    cat "$out/broken-schema.log" >&2
    log "FAIL: broken-schema was refused, but not for $reason"
    exit 1
  }
done
log "k8s/tests/broken-policy must fail the policy"
kustomize build k8s/tests/broken-policy >"$out/broken-policy.yaml"
kubeconform "${kubeconform_args[@]}" "$out/broken-policy.yaml" >/dev/null
if python3 k8s/tests/policy.py <"$out/broken-policy.yaml" 2>"$out/broken-policy.log"; then
  log "FAIL: the policy accepted k8s/tests/broken-policy"
  exit 1
fi
for reason in "Deployment/events container events: no livenessProbe" \
  "Deployment/events container events: readOnlyRootFilesystem is not true" \
  "Deployment/events: pod securityContext.runAsNonRoot is not true"; do
  grep -qF "$reason" "$out/broken-policy.log" || {
    cat "$out/broken-policy.log" >&2
    log "FAIL: broken-policy was refused, but not for: $reason"
    exit 1
  }
done

# --- observability ------------------------------------------------------------
log "promtool check config, check rules, test rules"
(
  cd observability/prometheus
  promtool check config --syntax-only prometheus.yml prometheus-k8s.yml >/dev/null
  promtool check config prometheus.yml >/dev/null
  promtool check rules rules/*.yml >/dev/null
  promtool test rules tests/*.yml
)
log "Grafana dashboards, strictly"
dashcheck observability/grafana/dashboards/*.json
# The collector config uses only components Jaeger v2's distribution has:
# validated by the Jaeger binary when scripts/jaeger.sh has built it.
jaeger=$bin/jaeger-v1.76.0
if [[ -x $jaeger ]]; then
  log "jaeger validate: the OpenTelemetry collector and Jaeger configs"
  TRACES_ENDPOINT=127.0.0.1:4317 "$jaeger" validate --config observability/otel/collector.yml >/dev/null 2>&1 ||
    { TRACES_ENDPOINT=127.0.0.1:4317 "$jaeger" validate --config observability/otel/collector.yml; exit 1; }
  "$jaeger" validate --config observability/jaeger/jaeger.yml >/dev/null 2>&1 ||
    { "$jaeger" validate --config observability/jaeger/jaeger.yml; exit 1; }
else
  log "Jaeger not built (bash scripts/jaeger.sh build): collector config only parsed as YAML"
fi
python3 - <<'PY'
import glob, yaml
for path in glob.glob("observability/**/*.yml", recursive=True):
    with open(path) as f:
        yaml.safe_load(f)
PY

# --- Dockerfile -----------------------------------------------------------------
log "Dockerfile builds every binary the manifests run"
for binary in $(grep -ho '/usr/local/bin/[a-z-]*' k8s/base/*.yaml | sort -u); do
  grep -q "${binary}" Dockerfile || { log "FAIL: the Dockerfile does not install $binary"; exit 1; }
done

log "all deploy checks passed in $((SECONDS - started)) s"
