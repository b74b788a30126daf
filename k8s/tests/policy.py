"""Policy over a `kustomize build` output (stdin): what every workload must
have. Exits 1 naming each violation.

- every container of every Deployment and StatefulSet: readiness and
  liveness probes, CPU and memory requests, a memory limit, no privilege
  escalation, a read-only root filesystem, every capability dropped;
- every pod: runAsNonRoot, seccomp RuntimeDefault, no service-account
  token mounted, a ServiceAccount of its own that the build defines;
- every Deployment and StatefulSet: a PodDisruptionBudget selecting it;
- no image left at the `latest` tag (the overlays pin one);
- Munity's Deployments mount the ConfigMap the build generates.
"""

import sys

import yaml

docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
names = lambda kind: {d["metadata"]["name"] for d in by_kind.get(kind, [])}
problems = []
workloads = by_kind.get("Deployment", []) + by_kind.get("StatefulSet", [])
if not workloads:
    problems.append("no workloads in the build")


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


for w in workloads:
    where = f'{w["kind"]}/{w["metadata"]["name"]}'
    pod = w["spec"]["template"]["spec"]
    labels = w["spec"]["template"]["metadata"].get("labels", {})
    psc = pod.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True:
        problems.append(f"{where}: pod securityContext.runAsNonRoot is not true")
    if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{where}: pod seccompProfile is not RuntimeDefault")
    if pod.get("automountServiceAccountToken") is not False:
        problems.append(f"{where}: automountServiceAccountToken is not false")
    sa = pod.get("serviceAccountName")
    if not sa or sa not in names("ServiceAccount"):
        problems.append(f"{where}: serviceAccountName {sa!r} is not a ServiceAccount of the build")
    if not any(selects(p["spec"]["selector"], labels) for p in by_kind.get("PodDisruptionBudget", [])):
        problems.append(f"{where}: no PodDisruptionBudget selects it")
    for c in pod.get("initContainers", []) + pod["containers"]:
        cw = f"{where} container {c['name']}"
        for probe in ("readinessProbe", "livenessProbe"):
            if probe not in c:
                problems.append(f"{cw}: no {probe}")
        res = c.get("resources", {})
        for key in ("cpu", "memory"):
            if key not in res.get("requests", {}):
                problems.append(f"{cw}: no {key} request")
        if "memory" not in res.get("limits", {}):
            problems.append(f"{cw}: no memory limit")
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{cw}: allowPrivilegeEscalation is not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{cw}: readOnlyRootFilesystem is not true")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.append(f"{cw}: capabilities are not all dropped")
        if sc.get("privileged"):
            problems.append(f"{cw}: privileged")
        image = c.get("image", "")
        if image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1]:
            problems.append(f"{cw}: image {image!r} has no pinned tag")
    if labels.get("app.kubernetes.io/part-of") == "munity":
        mounted = {v.get("configMap", {}).get("name") for v in pod.get("volumes", [])}
        if not mounted & names("ConfigMap") or not any(m and m.startswith("munity-config") for m in mounted):
            problems.append(f"{where}: does not mount the generated munity-config ConfigMap")

for p in problems:
    print(f"policy: {p}", file=sys.stderr)
if problems:
    sys.exit(1)
print(f"policy: {len(workloads)} workloads pass")
