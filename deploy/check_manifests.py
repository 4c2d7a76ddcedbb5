#!/usr/bin/env python3
"""Checks deploy/k8s against the real server, so a rename in hkv breaks this test, not a rollout.

Static part, for every overlay: renders it with `kubectl kustomize`, lints sources and output
with yamllint, runs `hkv serve --print-config --config <the overlay's ConfigMap file>` and checks
  - every container's args are flags the binary accepts (print-config with the same args);
  - container ports, Service ports, probe ports and the Prometheus annotation match the
    server's port / metrics_port / http_port (the OpenAI-compatible API), and metrics listen on
    every interface (metrics_host);
  - probes are native gRPC probes: liveness on the liveness service (""), startup and readiness
    on the readiness service ("hkv.v1.Generation"), the startup probe allowing >= 10 min;
  - terminationGracePeriodSeconds exceeds drain_timeout_s;
  - GPU pods request nvidia.com/gpu (requests == limits) with device cuda: 1 for single-gpu,
    tensor_parallel_size for multi-gpu, and for multi-node pods x GPUs per pod ==
    tensor_parallel_size with the rendezvous address taken from LWS_LEADER_ADDRESS; CPU pods
    use device cpu with num_threads within the CPU limit;
  - /dev/shm is a memory emptyDir; the model, tokenizer and score files lie under /models or in
    the image, and /models is mounted read-only from a PVC or hostPath whenever the config
    reads from it; requests and limits are set; the config file is mounted where --config
    points;
  - a PodDisruptionBudget and a ServiceMonitor select the serving pods, and an HPA scales the
    rendered workload on a metric the server exports.
  - with TLS (the tls overlay): cert, key and API key files come from Secret volumes mounted
    read-only, every probe targets the plaintext health_port (a declared containerPort), and
    Prometheus is told to scrape over HTTPS;
  - multi-node: a NetworkPolicy admits the group's pods on every port and others only on the
    API (gRPC and HTTP) and metrics ports, and every node reads HKV_DIST_TOKEN from the same Secret;
  - deploy/k8s/gateway renders; its InferencePool selects the serving pods, targets their HTTP
    API port (http_port), and its endpoint
    picker names queue and KV-cache metrics the server exports; every PromQL expression of
    deploy/grafana/hkv-dashboard.json names only exported metrics.
Live part (the cpu overlay, unless --no-live): starts `hkv serve` with that overlay's config on
free loopback ports, then checks that the probes' services answer SERVING through
grpc.health.v1, that an unknown service answers NOT_FOUND, that /metrics (the annotated path)
exports the HPA's metric as a gauge, and that SIGTERM drains and exits 0 within the pod's
terminationGracePeriodSeconds.
Usage: check_manifests.py --hkv build/bin/hkv [--no-live]
Exits 0 when everything holds, 1 listing each failure otherwise.
"""
import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# Overlay -> GPUs per serving pod (None: tensor_parallel_size; "lws": from the LeaderWorkerSet).
OVERLAYS = {"cpu": 0, "single-gpu": 1, "multi-gpu": None, "multi-node": "lws", "tls": 1}
# Overlays that must serve TLS (with probes on the plaintext health-only port).
TLS_OVERLAYS = {"tls"}
CONFIG_DIR, CONFIG_FILE, MODELS_DIR = "/etc/hkv", "/etc/hkv/hkv.yaml", "/models"
# Where deploy/Dockerfile puts the embedded model (checked against the Dockerfile below).
IMAGE_MODEL_DIR = "/opt/hkv/models/stories260K"

errors = []
IMAGES = set()  # Every container image of every overlay; they must all be one.


def check(cond, msg):
    if not cond:
        errors.append(msg)
    return bool(cond)


def run(cmd, **kwargs):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    except FileNotFoundError:
        print(f"{cmd[0]} is not installed (scripts/setup installs it)")
        sys.exit(1)


def render(overlay):
    return render_dir(os.path.join(HERE, "k8s/overlays", overlay), overlay)


def render_dir(path, label):
    out = run(["kubectl", "kustomize", path])
    if out.returncode != 0:
        errors.append(f"{label}: kubectl kustomize failed: {out.stderr.strip()}")
        return "", []
    return out.stdout, [d for d in yaml.safe_load_all(out.stdout) if d]


# kustomize writes block sequences unindented; everything else as for the sources.
RENDERED_RULES = ("{extends: default, rules: {line-length: {max: 160}, document-start: disable, "
                  "indentation: {spaces: 2, indent-sequences: consistent}}}")


def yamllint_files(paths):
    out = run(["yamllint", "-f", "parsable", "-c", os.path.join(HERE, ".yamllint")] + paths)
    check(out.returncode == 0, f"yamllint deploy/k8s sources:\n{out.stdout}{out.stderr}")


def yamllint_text(text, label):
    out = run(["yamllint", "-f", "parsable", "-d", RENDERED_RULES, "-"], input=text)
    check(out.returncode == 0, f"yamllint {label}:\n{out.stdout}{out.stderr}")


def print_config(hkv, config_text, args=(), where="ConfigMap"):
    """`hkv serve --print-config` of a config file plus container args, or None (error noted)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(config_text)
        path = f.name
    try:
        args = [a.replace(f"--config={CONFIG_FILE}", f"--config={path}") for a in args]
        if not any(a.startswith("--config=") for a in args):
            args.append(f"--config={path}")
        # Kubernetes expands $(VAR) from the container's environment; any value parses.
        args = [re.sub(r"\$\((\w+)\)", "placeholder", a) for a in args]
        out = run([hkv, "serve", "--print-config"] + args)
    finally:
        os.unlink(path)
    if out.returncode != 0:
        errors.append(f"{where}: hkv serve --print-config {' '.join(args)} failed: "
                      f"{out.stderr.strip()}")
        return None
    return json.loads(out.stdout)


def pod_templates(docs):
    """(where, pod spec, metadata, serves gRPC) of every pod template."""
    for d in docs:
        if d["kind"] == "Deployment":
            t = d["spec"]["template"]
            yield f"Deployment/{d['metadata']['name']}", t["spec"], t["metadata"], True
        elif d["kind"] == "LeaderWorkerSet":
            lwt = d["spec"]["leaderWorkerTemplate"]
            for role, serves in (("leader", True), ("worker", False)):
                t = lwt[f"{role}Template"]
                yield f"LWS {role}", t["spec"], t["metadata"], serves


def check_probe(where, probe, name, port, service):
    if not check(probe is not None, f"{where}: no {name}"):
        return
    g = probe.get("grpc")
    if check(g is not None, f"{where}: {name} is not a native gRPC probe"):
        check(g.get("port") == port, f"{where}: {name} port {g.get('port')} != server port {port}")
        check(g.get("service", "") == service,
              f"{where}: {name} service {g.get('service')!r} != {service!r}")


def cpu_cores(quantity):
    q = str(quantity)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def in_image_or_volume(path):
    return path.startswith(MODELS_DIR + "/") or path.startswith(IMAGE_MODEL_DIR + "/")


def check_pod(hkv, overlay, where, spec, meta, serving, cm, cfg, gpus_expected):
    """Checks one pod template; returns its GPU count."""
    cm_text = cm["data"]["hkv.yaml"]
    c = next((c for c in spec["containers"] if c["name"] == "hkv"), None)
    if not check(c is not None, f"{where}: no container named hkv"):
        return 0
    args = list(c.get("args", []))
    check(f"--config={CONFIG_FILE}" in args, f"{where}: not started with --config={CONFIG_FILE}")
    pod_cfg = print_config(hkv, cm_text, args, where)  # What this container really runs with.
    if pod_cfg is None:
        return 0
    mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    check(mounts.get("config", {}).get("mountPath") == CONFIG_DIR,
          f"{where}: config not mounted at {CONFIG_DIR}")
    cm_ref = volumes.get("config", {}).get("configMap", {}).get("name")
    check(cm_ref == cm["metadata"]["name"],
          f"{where}: the config volume names ConfigMap {cm_ref}, not the rendered "
          f"{cm['metadata']['name']} (kustomize did not rewrite the generated name)")
    image = c.get("image", "")
    check(re.fullmatch(r"[\w.-]+(:\d+)?/[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"),
          f"{where}: image {image!r} is not a registry path with a pinned tag")
    IMAGES.add(image)
    check(volumes.get("dshm", {}).get("emptyDir", {}).get("medium") == "Memory",
          f"{where}: /dev/shm is not a memory emptyDir")
    check(mounts.get("dshm", {}).get("mountPath") == "/dev/shm", f"{where}: dshm not at /dev/shm")
    models = mounts.get("models", {})
    check(models.get("mountPath") == MODELS_DIR and models.get("readOnly") is True,
          f"{where}: models not mounted read-only at {MODELS_DIR}")
    files = [pod_cfg[k] for k in ("model", "tokenizer", "head_scores") if pod_cfg[k]]
    for path in files:
        check(in_image_or_volume(path), f"{where}: {path} is neither under {MODELS_DIR} nor in "
              f"the image ({IMAGE_MODEL_DIR})")
    model_volume = volumes.get("models", {})
    if any(path.startswith(MODELS_DIR + "/") for path in files):
        check("persistentVolumeClaim" in model_volume or "hostPath" in model_volume,
              f"{where}: the model volume is neither a PVC nor a hostPath")
    else:  # Everything ships in the image; the volume is only a mount point.
        check(model_volume, f"{where}: no models volume")
    if pod_cfg["default_kv_policy"] == "headkv":
        check(bool(pod_cfg["head_scores"]), f"{where}: default policy headkv without head_scores")
    res = c.get("resources", {})
    requests, limits = res.get("requests", {}), res.get("limits", {})
    check(requests.get("cpu") and requests.get("memory") and limits.get("cpu") and
          limits.get("memory"), f"{where}: cpu/memory requests and limits must all be set")
    gpus = limits.get("nvidia.com/gpu", 0)
    check(requests.get("nvidia.com/gpu", 0) == gpus,
          f"{where}: nvidia.com/gpu request {requests.get('nvidia.com/gpu', 0)} != limit {gpus}")
    if gpus_expected is not None:
        check(gpus == gpus_expected, f"{where}: nvidia.com/gpu limit {gpus} != {gpus_expected}")
    if gpus:
        check(pod_cfg["device"] == "cuda",
              f"{where}: GPUs requested but device is {pod_cfg['device']}")
        check(any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", [])),
              f"{where}: no toleration for nvidia.com/gpu taints")
    else:
        check(pod_cfg["device"] == "cpu",
              f"{where}: no GPU requested but device is {pod_cfg['device']}")
        if limits.get("cpu"):
            check(1 <= pod_cfg["num_threads"] <= cpu_cores(limits["cpu"]),
                  f"{where}: num_threads {pod_cfg['num_threads']} must be 1..the CPU limit "
                  f"{limits['cpu']} (0 means every core of the node)")
    grace = spec.get("terminationGracePeriodSeconds", 30)
    check(grace > pod_cfg["drain_timeout_s"],
          f"{where}: terminationGracePeriodSeconds {grace} <= drain_timeout_s "
          f"{pod_cfg['drain_timeout_s']}")
    check(spec.get("securityContext", {}).get("runAsNonRoot") is True, f"{where}: may run as root")
    csc = c.get("securityContext", {})
    check(csc.get("allowPrivilegeEscalation") is False and
          "ALL" in csc.get("capabilities", {}).get("drop", []),
          f"{where}: the container must drop all capabilities and privilege escalation")
    if not serving:
        return gpus
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    check(ports.get("grpc") == pod_cfg["port"],
          f"{where}: grpc containerPort {ports.get('grpc')} != server port {pod_cfg['port']}")
    check(ports.get("metrics") == pod_cfg["metrics_port"],
          f"{where}: metrics containerPort {ports.get('metrics')} != {pod_cfg['metrics_port']}")
    if pod_cfg["http_port"] > 0:
        check(ports.get("http") == pod_cfg["http_port"],
              f"{where}: http containerPort {ports.get('http')} != http_port "
              f"{pod_cfg['http_port']}")
    check(pod_cfg["metrics_host"] in ("0.0.0.0", "::"),
          f"{where}: metrics_host {pod_cfg['metrics_host']} is not every interface: Prometheus "
          f"scrapes the pod IP")
    live, ready = pod_cfg["health"]["liveness_service"], pod_cfg["health"]["readiness_service"]
    # With a health-only port the probes go there (the API port may speak only TLS).
    probe_port = pod_cfg["health_port"] or pod_cfg["port"]
    if pod_cfg["health_port"]:
        check(ports.get("health") == pod_cfg["health_port"],
              f"{where}: health containerPort {ports.get('health')} != health_port "
              f"{pod_cfg['health_port']}")
    check_probe(where, c.get("livenessProbe"), "livenessProbe", probe_port, live)
    check_probe(where, c.get("readinessProbe"), "readinessProbe", probe_port, ready)
    check_probe(where, c.get("startupProbe"), "startupProbe", probe_port, ready)
    check_tls(where, overlay, pod_cfg, mounts, volumes, meta)
    sp = c.get("startupProbe") or {}
    check(sp.get("periodSeconds", 10) * sp.get("failureThreshold", 3) >= 600,
          f"{where}: startupProbe allows under 10 minutes for model loading")
    ann = meta.get("annotations", {})
    check(ann.get("prometheus.io/scrape") == "true", f"{where}: no prometheus.io/scrape annotation")
    check(ann.get("prometheus.io/port") == str(pod_cfg["metrics_port"]),
          f"{where}: prometheus.io/port {ann.get('prometheus.io/port')} != "
          f"{pod_cfg['metrics_port']}")
    check(ann.get("prometheus.io/path") == "/metrics",
          f"{where}: prometheus.io/path is not /metrics")
    return gpus


def secret_dir(path, mounts, volumes):
    """The Secret volume mounted read-only at the directory of `path`, or None."""
    for name, m in mounts.items():
        if os.path.dirname(path) == m["mountPath"].rstrip("/") and m.get("readOnly") is True:
            return volumes.get(name, {}).get("secret")
    return None


def check_tls(where, overlay, cfg, mounts, volumes, meta):
    if overlay in TLS_OVERLAYS:
        check(cfg["tls_cert"] and cfg["tls_key"], f"{where}: the {overlay} overlay serves no TLS")
    if not cfg["tls_cert"]:
        return
    check(cfg["health_port"] > 0,
          f"{where}: TLS without health_port: the kubelet's gRPC probes cannot speak TLS")
    for key in ("tls_cert", "tls_key", "tls_client_ca", "api_key_file"):
        if cfg[key]:
            check(secret_dir(cfg[key], mounts, volumes) is not None,
                  f"{where}: {key} {cfg[key]} is not in a Secret volume mounted read-only")
    check(meta.get("annotations", {}).get("prometheus.io/scheme") == "https",
          f"{where}: TLS metrics but no prometheus.io/scheme: https annotation")


def check_multi_node_security(docs, cfg):
    lws = next(d for d in docs if d["kind"] == "LeaderWorkerSet")
    group = {"leaderworkerset.sigs.k8s.io/name": lws["metadata"]["name"]}
    pols = [d for d in docs if d["kind"] == "NetworkPolicy"]
    pol = next((p for p in pols if p["spec"].get("podSelector", {}).get("matchLabels") == group),
               None)
    if not check(pol is not None, f"multi-node: no NetworkPolicy selecting the group {group}"):
        return
    check("Ingress" in pol["spec"].get("policyTypes", []), "multi-node: NetworkPolicy not Ingress")
    open_ports = set()
    group_admitted = False
    for rule in pol["spec"].get("ingress", []):
        sources = rule.get("from")
        if sources is None:  # any source: only on the listed ports
            ports = rule.get("ports")
            if not check(ports, "multi-node: a NetworkPolicy rule admits anyone on every port"):
                continue
            open_ports |= {p["port"] for p in ports}
        elif any(src.get("podSelector", {}).get("matchLabels") == group for src in sources):
            group_admitted = group_admitted or "ports" not in rule
    check(group_admitted, "multi-node: the group's pods are not admitted on every port (NCCL)")
    api_ports = {cfg["port"], cfg["metrics_port"]} | ({cfg["http_port"]} - {0})
    check(open_ports == api_ports,
          f"multi-node: others are admitted on {sorted(open_ports)}, expected only the API and "
          f"metrics ports {sorted(api_ports)}")
    secrets = []
    for role in ("leaderTemplate", "workerTemplate"):
        c = next(c for c in lws["spec"]["leaderWorkerTemplate"][role]["spec"]["containers"]
                 if c["name"] == "hkv")
        env = {e["name"]: e for e in c.get("env", [])}
        ref = env.get("HKV_DIST_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef")
        check(ref is not None, f"multi-node {role}: HKV_DIST_TOKEN does not come from a Secret")
        secrets.append((ref or {}).get("name"))
    check(len(set(secrets)) == 1, f"multi-node: nodes read the token from different Secrets {secrets}")


def exported_families():
    """Every metric family the server's source names (hkv_* and vllm:*)."""
    with open(os.path.join(ROOT, "server/metrics.cc")) as f:
        return set(re.findall(r'[" ]((?:hkv_|vllm:)[a-z0-9_]+)[" {]', f.read()))


def promql_metrics(expr):
    names = set(re.findall(r"\b((?:hkv_|vllm:)[a-z0-9_]+)", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def check_gateway_and_dashboard(serving_labels, http_port, families):
    _, docs = render_dir(os.path.join(HERE, "k8s/gateway"), "gateway")
    kinds = {}
    for d in docs:
        kinds.setdefault(d["kind"], []).append(d)
    pool = kinds.get("InferencePool", [])
    if check(len(pool) == 1, "gateway: expected one InferencePool"):
        sel = pool[0]["spec"].get("selector", {})
        check(serving_labels and all(selects(sel, labels) for labels in serving_labels),
              f"gateway: the InferencePool selector {sel} does not select the serving pods")
        target = pool[0]["spec"].get("targetPortNumber")
        check(http_port and target == http_port,
              f"gateway: the InferencePool targets port {target}, not the pods' HTTP API port "
              f"{http_port}")
        ext = pool[0]["spec"].get("extensionRef", {}).get("name")
        check(any(d["metadata"]["name"] == ext for d in kinds.get("Deployment", [])),
              f"gateway: extensionRef {ext} names no endpoint-picker Deployment")
    epp_args = [a for d in kinds.get("Deployment", [])
                for c in d["spec"]["template"]["spec"]["containers"] for a in c.get("args", [])]
    for flag in ("-totalQueuedRequestsMetric=", "-kvCacheUsagePercentageMetric="):
        value = next((a[len(flag):] for a in epp_args if a.startswith(flag)), None)
        check(value in families, f"gateway: EPP {flag}{value} is not a metric hkv exports")
    with open(os.path.join(HERE, "grafana/hkv-dashboard.json")) as f:
        try:
            dash = json.load(f)
        except ValueError as e:
            errors.append(f"grafana: hkv-dashboard.json is not JSON: {e}")
            return set()
    used = set()
    for panel in dash.get("panels", []):
        for t in panel.get("targets", []):
            names = promql_metrics(t.get("expr", ""))
            check(names, f"grafana: panel {panel.get('title')!r} queries no hkv metric")
            for n in names - families:
                errors.append(f"grafana: panel {panel.get('title')!r} queries {n}, which hkv "
                              f"does not export")
            used |= names
    return used


def check_multi_node(docs, cfg):
    lws = next(d for d in docs if d["kind"] == "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]
    pods, gpus = [], []
    for t in (lws["leaderTemplate"], lws["workerTemplate"]):
        c = next(c for c in t["spec"]["containers"] if c["name"] == "hkv")
        pods.append(c)
        gpus.append(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
    check(gpus[0] == gpus[1] and gpus[0] > 0, f"multi-node: leader/worker GPUs {gpus} differ")
    check(lws["size"] * gpus[0] == cfg["tensor_parallel_size"],
          f"multi-node: {lws['size']} pods x {gpus[0]} GPUs != tensor_parallel_size "
          f"{cfg['tensor_parallel_size']}")
    leader_ports = {p["name"]: p["containerPort"] for p in pods[0].get("ports", [])}
    for where, c in zip(("leader", "worker"), pods):
        dist = [a for a in c.get("args", []) if a.startswith("--dist-addr=")]
        check(len(dist) == 1 and dist[0].startswith("--dist-addr=$(LWS_LEADER_ADDRESS):"),
              f"multi-node {where}: --dist-addr must come from $(LWS_LEADER_ADDRESS)")
        if dist:
            port = dist[0].rsplit(":", 1)[-1]
            check(port.isdigit() and int(port) == leader_ports.get("dist"),
                  f"multi-node {where}: --dist-addr port {port} is not the leader's dist port "
                  f"{leader_ports.get('dist')}")
        # World size and rank come from LWS_GROUP_SIZE / LWS_WORKER_INDEX, never hard-coded.
        check(not any(a.startswith(("--world-size", "--world_size", "--rank")) for a in c["args"]),
              f"multi-node {where}: --world-size/--rank must come from the LWS environment")


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_overlay(hkv, overlay, exported):
    text, docs = render(overlay)
    if not docs:
        return None
    yamllint_text(text, f"rendered {overlay}")
    kinds = {}
    for d in docs:
        kinds.setdefault(d["kind"], []).append(d)
    cm = [d for d in kinds.get("ConfigMap", []) if d["metadata"]["name"].startswith("hkv-config")]
    if not check(len(cm) == 1 and "hkv.yaml" in cm[0].get("data", {}),
                 f"{overlay}: no hkv-config ConfigMap with hkv.yaml"):
        return None
    cm_text = cm[0]["data"]["hkv.yaml"]
    cfg = print_config(hkv, cm_text, where=f"{overlay} ConfigMap")
    if cfg is None:
        return None
    gpus = OVERLAYS[overlay]
    if gpus is None:
        gpus = cfg["tensor_parallel_size"]
        check(gpus > 1, f"{overlay}: tensor_parallel_size must be > 1")
    elif gpus == "lws":
        gpus = None
        check_multi_node(docs, cfg)
        check_multi_node_security(docs, cfg)
    else:
        check(cfg["tensor_parallel_size"] == max(gpus, 1),
              f"{overlay}: tensor_parallel_size {cfg['tensor_parallel_size']} for {gpus} GPUs")
    templates = list(pod_templates(docs))
    check(any(serving for *_, serving in templates), f"{overlay}: no pod serves gRPC")
    serving_labels = []
    for where, spec, meta, serving in templates:
        check_pod(hkv, overlay, f"{overlay} {where}", spec, meta, serving, cm[0], cfg, gpus)
        if serving:
            serving_labels.append(meta.get("labels", {}))
    svc = kinds.get("Service", [{}])[0]
    sports = {p["name"]: p for p in svc.get("spec", {}).get("ports", [])}
    check(sports.get("grpc", {}).get("port") == cfg["port"],
          f"{overlay}: Service grpc port mismatch")
    check(sports.get("metrics", {}).get("port") == cfg["metrics_port"],
          f"{overlay}: Service metrics port mismatch")
    if cfg["http_port"] > 0:
        check(sports.get("http", {}).get("port") == cfg["http_port"],
              f"{overlay}: Service http port {sports.get('http', {}).get('port')} != http_port "
              f"{cfg['http_port']}")
    check(all(selects(svc.get("spec", {}).get("selector"), labels) for labels in serving_labels),
          f"{overlay}: the Service does not select the serving pods")
    pdb = kinds.get("PodDisruptionBudget", [])
    check(pdb and all(selects(pdb[0]["spec"]["selector"]["matchLabels"], labels)
                      for labels in serving_labels),
          f"{overlay}: no PodDisruptionBudget selecting the serving pods")
    sm = kinds.get("ServiceMonitor", [])
    check(sm and sm[0]["spec"]["endpoints"][0]["port"] == "metrics" and
          selects(sm[0]["spec"]["selector"]["matchLabels"],
                  svc.get("metadata", {}).get("labels", {})),
          f"{overlay}: no ServiceMonitor on the Service's metrics port")
    hpa = kinds.get("HorizontalPodAutoscaler", [])
    check(len(hpa) == 1, f"{overlay}: expected one HorizontalPodAutoscaler")
    workloads = {(d["kind"], d["metadata"]["name"]) for d in docs}
    hpa_metrics = set()
    for h in hpa:
        ref = h["spec"]["scaleTargetRef"]
        check((ref["kind"], ref["name"]) in workloads,
              f"{overlay}: the HPA scales {ref['kind']}/{ref['name']}, which is not rendered")
        for m in h["spec"]["metrics"]:
            name = m.get("pods", {}).get("metric", {}).get("name")
            hpa_metrics.add(name)
            check(name in exported, f"{overlay}: HPA metric {name} is not a gauge hkv exports")
    return {"cm_text": cm_text, "spec": templates[0][1] if templates else {},
            "hpa_metrics": hpa_metrics, "serving_labels": serving_labels,
            "http_port": cfg["http_port"]}


def check_dockerfile_model_dir():
    with open(os.path.join(HERE, "Dockerfile")) as f:
        text = f.read()
    check(re.search(rf"^COPY --from=\S+ /src/models/stories260K/ {IMAGE_MODEL_DIR}/?$", text, re.M),
          f"deploy/Dockerfile does not ship the embedded model at {IMAGE_MODEL_DIR}")


# --- live part -----------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health_check(channel, service, timeout=2.0):
    """grpc.health.v1.Health/Check by hand (no generated code): status number or gRPC code."""
    import grpc
    field = service.encode()
    request = (b"\x0a" + bytes([len(field)]) + field) if field else b""
    call = channel.unary_unary("/grpc.health.v1.Health/Check")
    try:
        reply = call(request, timeout=timeout, wait_for_ready=True)
    except grpc.RpcError as e:
        return e.code()
    # HealthCheckResponse { ServingStatus status = 1; } -> b"\x08<status>" (absent = UNKNOWN).
    return reply[1] if reply[:1] == b"\x08" else 0


SERVING = 1


def check_live(hkv, cpu):
    import grpc
    port, mport = free_port(), free_port()
    live_cfg = print_config(hkv, cpu["cm_text"], where="live")
    if live_cfg is None:
        return
    grace = cpu["spec"].get("terminationGracePeriodSeconds", 30)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(cpu["cm_text"])
        path = f.name
    # The image's model path is the repository's embedded model; ports are free loopback ports.
    model = live_cfg["model"].replace(IMAGE_MODEL_DIR, os.path.join(ROOT, "models/stories260K"))
    cmd = [hkv, "serve", f"--config={path}", f"--model={model}", "--host=127.0.0.1",
           "--metrics-host=127.0.0.1", f"--port={port}", f"--metrics-port={mport}", "--http-port=0"]
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        health = live_cfg["health"]
        live, ready = health["liveness_service"], health["readiness_service"]
        deadline, status = time.time() + 60, None
        while time.time() < deadline and proc.poll() is None:
            status = health_check(channel, ready)
            if status == SERVING:
                break
            time.sleep(0.2)
        check(status == SERVING, f"live: readiness service {ready!r} never SERVING ({status})")
        check(health_check(channel, live) == SERVING,
              f"live: liveness service {live!r} not SERVING")
        check(health_check(channel, "hkv.v1.NoSuchService") == grpc.StatusCode.NOT_FOUND,
              "live: an unknown health service does not answer NOT_FOUND")
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read()
            text = body.decode()
        except OSError as e:
            text = ""
            errors.append(f"live: GET /metrics failed: {e}")
        for name in cpu["hpa_metrics"]:
            check(re.search(rf"^# TYPE {name} gauge$", text, re.M),
                  f"live: /metrics has no gauge {name} (the HPA's metric)")
        for name in sorted(cpu.get("dashboard_metrics", set())):
            check(re.search(rf"^# TYPE {re.escape(name)} ", text, re.M),
                  f"live: /metrics has no {name} (named by the dashboard or the gateway)")
        channel.close()
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=grace)
            check(rc == 0, f"live: hkv serve exited {rc} after SIGTERM, not 0")
        except subprocess.TimeoutExpired:
            errors.append(f"live: hkv serve still running {grace} s after SIGTERM")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.unlink(path)
        if any(e.startswith("live:") for e in errors):
            log.seek(0)
            errors.append("live: server log:\n" + log.read().decode(errors="replace")[-3000:])
        log.close()


def exported_gauges():
    """Gauge names in the server's metrics source (check_live confirms them on /metrics)."""
    with open(os.path.join(ROOT, "server/metrics.cc")) as f:
        return set(re.findall(r'Gauge\(&out, "(hkv_[a-z_]+)"', f.read()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hkv", required=True, help="the hkv binary")
    ap.add_argument("--no-live", action="store_true", help="skip starting the cpu overlay's server")
    args = ap.parse_args()
    if not os.access(args.hkv, os.X_OK):
        print(f"hkv binary {args.hkv} not found (build the hkv target first)")
        return 1
    sources = []
    for base, _, files in os.walk(os.path.join(HERE, "k8s")):
        sources += [os.path.join(base, f) for f in files if f.endswith(".yaml")]
    yamllint_files(sorted(sources))
    check_dockerfile_model_dir()
    exported = exported_gauges()
    results = {overlay: check_overlay(args.hkv, overlay, exported) for overlay in OVERLAYS}
    check(len(IMAGES) == 1, f"overlays run different images: {sorted(IMAGES)}")
    families = exported_families()
    serving = (results.get("cpu") or {}).get("serving_labels", [])
    http_port = (results.get("cpu") or {}).get("http_port", 0)
    used = check_gateway_and_dashboard(serving, http_port, families)
    if results.get("cpu"):
        results["cpu"]["dashboard_metrics"] = used | {"vllm:num_requests_waiting",
                                                      "vllm:kv_cache_usage_perc"}
    if not args.no_live and results.get("cpu"):
        check_live(args.hkv, results["cpu"])
    if errors:
        print("deploy checks FAILED:")
        for e in errors:
            print(" -", e)
        return 1
    live = "" if args.no_live else " (cpu overlay served live)"
    print(f"deploy checks passed for overlays: {', '.join(OVERLAYS)}, gateway, grafana{live}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
