#!/usr/bin/env bash
# Validates the Kubernetes manifests in deploy/ (and deploy/examples/):
#   1. kubernetes-validate --strict (PyPI; JSON schemas of each Kubernetes version, unknown
#      fields rejected) for every Kubernetes version we support;
#   2. weft's own consistency checks (below): selector vs. template labels, the Secret key
#      the DaemonSet consumes, the ServiceAccount and its binding, RBAC verbs exactly the
#      least-privilege list, volumes, namespaces, nothing non-Kubernetes in deploy/.
#      The checks first prove on broken copies of the manifests that they catch each fault.
#
# Needs python3 with venv and network access to PyPI on the first run (Debian: apt-get
# install python3-venv). The venv is kept in target/manifest-venv (WEFT_VALIDATE_VENV).
# WEFT_KUBE_VERSIONS overrides the Kubernetes versions ("1.33.0 1.34.0 1.35.0 1.36.0 1.37.0").
set -euo pipefail
cd "$(dirname "$0")/.."

KV_VERSION=1.37.0
# The oldest is the API the router is built against (k8s-openapi feature v1_33).
VERSIONS=${WEFT_KUBE_VERSIONS:-"1.33.0 1.34.0 1.35.0 1.36.0 1.37.0"}
VENV=${WEFT_VALIDATE_VENV:-target/manifest-venv}

if ! "$VENV/bin/python" -c "import kubernetes_validate, yaml" 2>/dev/null \
    || [ "$("$VENV/bin/python" -c 'import kubernetes_validate.version as v; print(v.__version__)' 2>/dev/null)" != "$KV_VERSION" ]; then
  echo "validate-manifests: creating $VENV with kubernetes-validate==$KV_VERSION"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
fi

shopt -s nullglob
files=(deploy/*.yaml deploy/*.yml deploy/*.json deploy/examples/*.yaml)
if [ ${#files[@]} -eq 0 ]; then
  echo "validate-manifests: no manifests found" >&2
  exit 1
fi

for v in $VERSIONS; do
  "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "${files[@]}"
  echo "validate-manifests: kubernetes-validate --strict $v: ${#files[@]} files passed"
done

"$VENV/bin/python" - "${files[@]}" <<'PY'
"""weft's own checks on the manifests (beyond schema validation)."""
import copy
import os
import sys

import yaml

# The ClusterRole must grant exactly this: (apiGroup, resource, verb).
LEAST_PRIVILEGE = {
    (g, r, v)
    for g, rs in (("", ("nodes", "pods", "namespaces")), ("networking.k8s.io", ("networkpolicies",)))
    for r in rs
    for v in ("get", "list", "watch")
} | {("", "nodes/status", "patch")}


def load(paths):
    docs = []
    for p in paths:
        with open(p) as f:
            for d in yaml.safe_load_all(f):
                if d is not None:
                    docs.append((p, d))
    return docs


def find(docs, kind):
    return [d for _, d in docs if d.get("kind") == kind]


def key(d):
    m = d.get("metadata", {})
    return (d.get("kind"), m.get("namespace"), m.get("name"))


def check(docs):
    """Returns a list of problems (empty: all good)."""
    errs = []
    by_key = {key(d): d for _, d in docs}
    namespaces = {d["metadata"]["name"] for d in find(docs, "Namespace")}

    # only Kubernetes objects in deploy/ proper: `kubectl apply -f deploy/` applies them all,
    # and never a Secret (it would overwrite the real password on every upgrade)
    for path, d in docs:
        if os.path.dirname(path) != "deploy":
            continue
        if not (isinstance(d, dict) and d.get("apiVersion") and d.get("kind")):
            errs.append(f"{path}: not a Kubernetes object")
        elif d["kind"] in ("Kustomization", "Secret"):
            errs.append(f"{path}: a {d['kind']} must not be in deploy/ (kubectl apply -f deploy/ applies it)")

    for _, d in docs:
        ns = d.get("metadata", {}).get("namespace")
        if ns and ns not in namespaces:
            errs.append(f"{d['kind']}/{d['metadata']['name']}: namespace {ns} is not defined")

    daemonsets = find(docs, "DaemonSet")
    if not daemonsets:
        errs.append("no DaemonSet")
    for ds in daemonsets:
        name, ns = ds["metadata"]["name"], ds["metadata"]["namespace"]
        where = f"DaemonSet {ns}/{name}"
        sel = ds["spec"]["selector"]
        tmpl = ds["spec"]["template"]
        labels = tmpl.get("metadata", {}).get("labels", {})
        if sel.get("matchExpressions"):
            errs.append(f"{where}: selector uses matchExpressions; keep it to matchLabels")
        match = sel.get("matchLabels", {})
        if not match:
            errs.append(f"{where}: empty selector")
        for k, v in match.items():
            if labels.get(k) != v:
                errs.append(f"{where}: selector {k}={v} does not match the template labels {labels}")
        spec = tmpl["spec"]

        sa = spec.get("serviceAccountName")
        if not sa:
            errs.append(f"{where}: no serviceAccountName")
        elif ("ServiceAccount", ns, sa) not in by_key:
            errs.append(f"{where}: ServiceAccount {ns}/{sa} is not defined")
        else:
            bound = [
                b for b in find(docs, "ClusterRoleBinding")
                if any(s.get("kind") == "ServiceAccount" and s.get("name") == sa
                       and s.get("namespace") == ns for s in b.get("subjects", []))
            ]
            if not bound:
                errs.append(f"{where}: ServiceAccount {ns}/{sa} is bound to no ClusterRole")
            for b in bound:
                role = by_key.get(("ClusterRole", None, b["roleRef"]["name"]))
                if role is None:
                    errs.append(f"ClusterRoleBinding {b['metadata']['name']}: ClusterRole {b['roleRef']['name']} is not defined")
                    continue
                granted = {
                    (g, r, v)
                    for rule in role.get("rules", [])
                    for g in rule.get("apiGroups", [])
                    for r in rule.get("resources", [])
                    for v in rule.get("verbs", [])
                }
                if any("*" in t for t in granted):
                    errs.append(f"ClusterRole {role['metadata']['name']}: wildcards are not least privilege")
                extra = sorted(granted - LEAST_PRIVILEGE)
                missing = sorted(LEAST_PRIVILEGE - granted)
                if extra:
                    errs.append(f"ClusterRole {role['metadata']['name']}: grants more than needed: {extra}")
                if missing:
                    errs.append(f"ClusterRole {role['metadata']['name']}: lacks {missing}")
                if any(rule.get("resourceNames") or rule.get("nonResourceURLs") for rule in role.get("rules", [])):
                    errs.append(f"ClusterRole {role['metadata']['name']}: unexpected resourceNames/nonResourceURLs")

        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        containers = spec.get("initContainers", []) + spec.get("containers", [])
        for c in containers:
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    errs.append(f"{where}: container {c['name']} mounts undefined volume {m['name']}")
        images = {c.get("image") for c in containers}
        if len(images) != 1:
            errs.append(f"{where}: containers use different images {sorted(map(str, images))}")

        # the password: every Secret volume names an existing Secret and keys it has, and the
        # router reads the mounted file
        router = next((c for c in spec.get("containers", []) if c["name"] == "weft"), None)
        if router is None:
            errs.append(f"{where}: no container named weft")
            continue
        env = {e["name"]: e.get("value") for e in router.get("env", [])}
        args = router.get("command", []) + router.get("args", [])
        pw_file = env.get("WEFT_PASSWORD_FILE")
        if "--password-file" in args:
            pw_file = args[args.index("--password-file") + 1]
        if "WEFT_PASSWORD" in env:
            errs.append(f"{where}: WEFT_PASSWORD in env; mount the Secret as a file instead")
        if "NODE_NAME" not in env:
            errs.append(f"{where}: NODE_NAME is not set (downward API spec.nodeName)")
        if "--kube" not in args and env.get("WEFT_KUBE") != "true":
            errs.append(f"{where}: the router does not run with --kube")
        consumed = set()
        for m in router.get("volumeMounts", []):
            v = volumes.get(m["name"], {})
            sec = v.get("secret")
            if not sec:
                continue
            secret = by_key.get(("Secret", ns, sec["secretName"]))
            if secret is None:
                errs.append(f"{where}: Secret {ns}/{sec['secretName']} has no example manifest")
                continue
            have = set(secret.get("data", {}) or {}) | set(secret.get("stringData", {}) or {})
            items = sec.get("items") or [{"key": k, "path": k} for k in sorted(have)]
            for it in items:
                if it["key"] not in have:
                    errs.append(f"{where}: Secret {sec['secretName']} has no key {it['key']}")
                consumed.add(os.path.join(m["mountPath"], it["path"]))
        # probes: the status API on the node's loopback; startup and liveness /healthz
        # (alive, whatever peers or the API server do); readiness `weft status ready`
        # (/readyz: in the mesh; an exec probe, so that the reason reaches the pod's events)
        for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz")):
            get = (router.get(probe) or {}).get("httpGet") or {}
            if (get.get("host"), get.get("port"), get.get("path")) != ("127.0.0.1", 6784, path):
                errs.append(f"{where}: {probe} must GET http://127.0.0.1:6784{path}, not {get}")
        ready = ((router.get("readinessProbe") or {}).get("exec") or {}).get("command")
        if ready != ["weft", "status", "ready"]:
            errs.append(f"{where}: readinessProbe must run [weft, status, ready], not {ready}")
        if not pw_file:
            errs.append(f"{where}: the router gets no --password-file / WEFT_PASSWORD_FILE")
        elif pw_file not in consumed:
            errs.append(f"{where}: password file {pw_file} is not a mounted Secret key ({sorted(consumed)})")
    return errs


def self_test(docs):
    """Each check must catch its fault on a broken copy."""
    def ds(d):
        return next(x for _, x in d if x.get("kind") == "DaemonSet")

    def role(d):
        return next(x for _, x in d if x.get("kind") == "ClusterRole")

    def secret(d):
        return next(x for _, x in d if x.get("kind") == "Secret")

    faults = {
        "selector": lambda d: ds(d)["spec"]["template"]["metadata"]["labels"].update({"app.kubernetes.io/name": "other"}),
        "service account": lambda d: ds(d)["spec"]["template"]["spec"].update({"serviceAccountName": "nobody"}),
        "extra verb": lambda d: role(d)["rules"][0]["verbs"].append("delete"),
        "missing verb": lambda d: role(d)["rules"][-1]["verbs"].clear(),
        "secret key": lambda d: secret(d).update({"stringData": {"pass": "x"}}),
        "password path": lambda d: [e.update({"value": "/elsewhere"}) for e in ds(d)["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] == "WEFT_PASSWORD_FILE"],
        "readiness probe": lambda d: ds(d)["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["exec"].update({"command": ["weft", "status"]}),
        "liveness probe": lambda d: ds(d)["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"].update({"path": "/readyz"}),
        "secret in deploy/": lambda d: d.append(("deploy/99-secret.yaml", copy.deepcopy(secret(d)))),
    }
    for name, fault in faults.items():
        broken = copy.deepcopy(docs)
        fault(broken)
        if not check(broken):
            sys.exit(f"validate-manifests: self-test: the check for '{name}' did not catch its fault")


docs = load(sys.argv[1:])
self_test(docs)
problems = check(docs)
for p in problems:
    print(f"validate-manifests: {p}", file=sys.stderr)
if problems:
    sys.exit(1)
print(f"validate-manifests: weft checks passed ({len(docs)} objects)")
PY
