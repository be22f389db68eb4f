#!/usr/bin/env bash
# Check the deployment assets in deploy/:
#   - Prometheus rules: promtool check rules, and their unit tests (promtool test rules)
#   - every YAML file parses; Kubernetes manifests have apiVersion/kind/metadata.name, the
#     kustomization lists files that exist, the ConfigMap's portico.yaml is YAML
#   - the Grafana dashboard is JSON with the expected structure
#   - the systemd unit passes `systemd-analyze verify` (skipped where systemd-analyze is absent)
#   - the Containerfile copies only paths that exist
# Installs what is missing (python3-yaml from Debian; promtool with scripts/promtool.sh,
# extracted from Debian's prometheus package into a cache directory).
# Quiet when everything is present; exits non-zero on the first failing check.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=/usr/bin/python3
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive

fail() { echo "check-deploy: $*" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# ---- tools ----
if ! "$PYTHON" -c 'import yaml' 2>/dev/null; then
    echo "check-deploy: installing python3-yaml" >&2
    $SUDO apt-get update -qq >/dev/null
    $SUDO apt-get install -y -qq --no-install-recommends python3-yaml >/dev/null
fi

PROMTOOL="$(scripts/promtool.sh)" || fail "no promtool (scripts/promtool.sh)"

# ---- Prometheus rules ----
"$PROMTOOL" check rules deploy/prometheus/portico-alerts.yml
(cd deploy/prometheus && "$PROMTOOL" test rules portico-alerts.test.yml)

# ---- YAML, Kubernetes manifests, Grafana JSON, Containerfile ----
DASH_EXPRS="$work/dashboard-exprs.yml" "$PYTHON" - <<'PY'
import glob, json, os, re, sys
import yaml

errors = []
def err(msg): errors.append(msg)

files = sorted(glob.glob("deploy/**/*.yml", recursive=True) + glob.glob("deploy/**/*.yaml", recursive=True))
docs = {}
for f in files:
    try:
        with open(f) as fh:
            docs[f] = [d for d in yaml.safe_load_all(fh) if d is not None]
    except yaml.YAMLError as e:
        err(f"{f}: {e}")

k8s = "deploy/kubernetes/"
kinds = {}
for f, ds in docs.items():
    if not f.startswith(k8s) or f.endswith("kustomization.yaml"):
        continue
    for d in ds:
        for key in ("apiVersion", "kind"):
            if not isinstance(d, dict) or key not in d:
                err(f"{f}: missing {key}")
        name = (d.get("metadata") or {}).get("name")
        if not name:
            err(f"{f}: missing metadata.name")
        if "namespace" in (d.get("metadata") or {}):
            err(f"{f}: manifests are namespace-agnostic; drop metadata.namespace")
        kinds[(d.get("kind"), name)] = d

kust = docs.get(k8s + "kustomization.yaml", [{}])[0]
listed = kust.get("resources", [])
for r in listed:
    if not os.path.exists(k8s + r):
        err(f"{k8s}kustomization.yaml: resource {r} does not exist")
for f in docs:
    if f.startswith(k8s) and not f.endswith("kustomization.yaml") and os.path.basename(f) not in listed:
        err(f"{k8s}kustomization.yaml: {os.path.basename(f)} is not listed")

want = [("Deployment", "portico"), ("Service", "portico"), ("Service", "portico-admin"),
        ("ConfigMap", "portico-config"), ("HorizontalPodAutoscaler", "portico"),
        ("PodDisruptionBudget", "portico")]
for w in want:
    if w not in kinds:
        err(f"{k8s}: no {w[0]} named {w[1]}")

cm = kinds.get(("ConfigMap", "portico-config"))
if cm:
    try:
        conf = yaml.safe_load(cm["data"]["portico.yaml"])
        for key in ("listen", "upstreams", "routes", "admin"):
            if key not in conf:
                err(f"{k8s}configmap.yaml: portico.yaml has no {key}")
    except Exception as e:
        err(f"{k8s}configmap.yaml: portico.yaml: {e}")

dep = kinds.get(("Deployment", "portico"))
if dep:
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
        g = c.get(probe, {}).get("httpGet", {})
        if g.get("path") != path or g.get("port") not in ports:
            err(f"{k8s}deployment.yaml: {probe} should GET {path} on a declared port")
    for (kind, name), d in kinds.items():
        if kind == "Service":
            for p in d["spec"]["ports"]:
                if p["targetPort"] not in ports and p["targetPort"] not in ports.values():
                    err(f"{k8s}: Service {name} targets unknown port {p['targetPort']}")
    sel = dep["spec"]["selector"]["matchLabels"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    if any(labels.get(k) != v for k, v in sel.items()):
        err(f"{k8s}deployment.yaml: selector does not match the pod labels")

dash_path = "deploy/grafana/portico-dashboard.json"
try:
    with open(dash_path) as fh:
        dash = json.load(fh)
    ids = set()
    for p in dash.get("panels", []):
        if p.get("type") == "row":
            continue
        if p.get("id") in ids:
            err(f"{dash_path}: duplicate panel id {p.get('id')}")
        ids.add(p.get("id"))
        if "gridPos" not in p:
            err(f"{dash_path}: panel {p.get('title')!r} has no gridPos")
        if not p.get("targets") or not all(t.get("expr") for t in p["targets"]):
            err(f"{dash_path}: panel {p.get('title')!r} has a target without expr")
        if (p.get("datasource") or {}).get("uid") != "${datasource}":
            err(f"{dash_path}: panel {p.get('title')!r} does not use the datasource variable")
    vars_ = [v.get("name") for v in dash.get("templating", {}).get("list", [])]
    if "datasource" not in vars_:
        err(f"{dash_path}: no datasource variable")
    if not ids:
        err(f"{dash_path}: no panels")
    # Every query, with the dashboard's variables filled in, as recording rules for promtool.
    subst = {"$__rate_interval": "5m", "$job": "portico", "$instance": ".*"}
    rules = []
    for p in dash.get("panels", []):
        for t in p.get("targets", []):
            e = t.get("expr", "")
            for k, v in subst.items():
                e = e.replace(k, v)
            rules.append({"record": f"dashboard:panel{p.get('id')}:{t.get('refId')}", "expr": e})
    with open(os.environ["DASH_EXPRS"], "w") as fh:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, fh)
except (OSError, ValueError) as e:
    err(f"{dash_path}: {e}")

cf = "deploy/container/Containerfile"
for line in open(cf):
    m = re.match(r"\s*COPY\s+(?!--from)(.*)", line)
    if m:
        for src in m.group(1).split()[:-1]:
            if not os.path.exists(src):
                err(f"{cf}: COPY source {src} does not exist (build context is the repository root)")

for e in errors:
    print("check-deploy:", e, file=sys.stderr)
if errors:
    sys.exit(1)
print(f"YAML: {len(files)} files parse; Kubernetes manifests, Grafana dashboard "
      f"({len(ids)} panels) and Containerfile look consistent")
PY

echo "Grafana queries (variables filled in):"
"$PROMTOOL" check rules "$work/dashboard-exprs.yml" | sed -n 's/^ *SUCCESS/  SUCCESS/p'

# ---- systemd unit ----
if command -v systemd-analyze >/dev/null 2>&1; then
    # verify insists that ExecStart= exists: point it at the built binary (or any executable).
    bin="$PWD/build/portico"
    [ -x "$bin" ] || bin=/bin/true
    unit="$(mktemp -d)"
    sed "s#/usr/local/bin/portico#$bin#g" deploy/systemd/portico.service > "$unit/portico.service"
    out="$(systemd-analyze verify "$unit/portico.service" 2>&1)" || true
    rm -rf "$unit"
    [ -z "$out" ] || fail "systemd-analyze verify deploy/systemd/portico.service:"$'\n'"$out"
    echo "systemd: deploy/systemd/portico.service verifies"
else
    echo "systemd: systemd-analyze not available, unit not verified"
fi
echo "check-deploy: OK"
