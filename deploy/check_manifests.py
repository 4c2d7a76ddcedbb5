#!/usr/bin/env python3
"""Checks deploy/k8s against the real server, so a rename in hkv breaks this test, not a rollout.

For every overlay: renders it with `kubectl kustomize`, lints sources and output with yamllint,
runs `hkv serve --print-config --config <the overlay's ConfigMap file>` and checks that
  - container ports, Service ports, probe ports and the Prometheus annotation match the
    server's port / metrics_port;
  - probes are native gRPC probes: liveness on the liveness service (""), startup and readiness
    on the readiness service ("hkv.v1.Generation");
  - terminationGracePeriodSeconds exceeds drain_timeout_s;
  - GPU overlays request nvidia.com/gpu (1 for single-gpu, tensor_parallel_size for multi-gpu,
    8 per pod for multi-node) and configure device cuda;
  - /dev/shm is a memory emptyDir, the model volume is mounted read-only, requests and limits
    are set, and the config file is mounted where --config points;
  - a PodDisruptionBudget, a ServiceMonitor on the metrics port, and (single-pod variants) an
    HPA on hkv_requests_waiting exist, and that metric name is one the server exports.
Usage: check_manifests.py --hkv build/bin/hkv
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OVERLAYS = {"cpu": 0, "single-gpu": 1, "multi-gpu": None, "multi-node": 8}

errors = []


def check(cond, msg):
    if not cond:
        errors.append(msg)


def render(overlay):
    out = subprocess.run(["kubectl", "kustomize", os.path.join(HERE, "k8s/overlays", overlay)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        errors.append(f"{overlay}: kubectl kustomize failed: {out.stderr.strip()}")
        return "", []
    return out.stdout, [d for d in yaml.safe_load_all(out.stdout) if d]


# kustomize writes block sequences unindented; everything else as for the sources.
RENDERED_RULES = ("{extends: default, rules: {line-length: {max: 160}, document-start: disable, "
                  "indentation: {spaces: 2, indent-sequences: consistent}}}")


def yamllint(paths_or_text, label):
    if isinstance(paths_or_text, list):
        out = subprocess.run(["yamllint", "-f", "parsable", "-c", os.path.join(HERE, ".yamllint")]
                             + paths_or_text, capture_output=True, text=True)
    else:
        out = subprocess.run(["yamllint", "-f", "parsable", "-d", RENDERED_RULES, "-"],
                             input=paths_or_text, capture_output=True, text=True)
    check(out.returncode == 0, f"yamllint {label}:\n{out.stdout}{out.stderr}")


def server_config(hkv, config_text):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(config_text)
        path = f.name
    try:
        out = subprocess.run([hkv, "serve", "--print-config", "--config", path],
                             capture_output=True, text=True)
    finally:
        os.unlink(path)
    if out.returncode != 0:
        errors.append(f"hkv serve --print-config rejected the ConfigMap: {out.stderr.strip()}")
        return None
    return json.loads(out.stdout)


def pod_templates(docs):
    """(where, pod spec, metadata) of every pod template, and whether it serves gRPC."""
    for d in docs:
        if d["kind"] == "Deployment":
            t = d["spec"]["template"]
            yield f"Deployment/{d['metadata']['name']}", t["spec"], t["metadata"], True
        elif d["kind"] == "LeaderWorkerSet":
            lwt = d["spec"]["leaderWorkerTemplate"]
            yield "LWS leader", lwt["leaderTemplate"]["spec"], lwt["leaderTemplate"]["metadata"], True
            yield "LWS worker", lwt["workerTemplate"]["spec"], lwt["workerTemplate"]["metadata"], False


def check_probe(where, probe, name, port, service):
    check(probe is not None, f"{where}: no {name}")
    if probe is None:
        return
    g = probe.get("grpc")
    check(g is not None, f"{where}: {name} is not a native gRPC probe")
    if g:
        check(g.get("port") == port, f"{where}: {name} port {g.get('port')} != server port {port}")
        check(g.get("service", "") == service,
              f"{where}: {name} service {g.get('service')!r} != {service!r}")


def check_pod(overlay, where, spec, meta, serving, cfg, gpus_expected):
    c = next((c for c in spec["containers"] if c["name"] == "hkv"), None)
    check(c is not None, f"{where}: no container named hkv")
    if c is None:
        return
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    check(f"--config=/etc/hkv/hkv.yaml" in c.get("args", []), f"{where}: not started with --config")
    mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    check(mounts.get("config", {}).get("mountPath") == "/etc/hkv", f"{where}: config not at /etc/hkv")
    check("configMap" in volumes.get("config", {}), f"{where}: config volume is not the ConfigMap")
    check(volumes.get("dshm", {}).get("emptyDir", {}).get("medium") == "Memory",
          f"{where}: /dev/shm is not a memory emptyDir")
    check(mounts.get("dshm", {}).get("mountPath") == "/dev/shm", f"{where}: dshm not at /dev/shm")
    check(mounts.get("models", {}).get("readOnly") is True, f"{where}: models not mounted read-only")
    check("persistentVolumeClaim" in volumes.get("models", {}) or "hostPath" in volumes.get("models", {}),
          f"{where}: the model volume is neither a PVC nor a hostPath")
    res = c.get("resources", {})
    check(res.get("requests") and res.get("limits"), f"{where}: resource requests/limits missing")
    gpus = res.get("limits", {}).get("nvidia.com/gpu", 0)
    check(gpus == gpus_expected, f"{where}: nvidia.com/gpu limit {gpus} != {gpus_expected}")
    if gpus_expected:
        check(cfg["device"] == "cuda", f"{overlay}: GPUs requested but device is {cfg['device']}")
    else:
        check(cfg["device"] == "cpu", f"{overlay}: no GPU requested but device is {cfg['device']}")
    grace = spec.get("terminationGracePeriodSeconds", 30)
    check(grace > cfg["drain_timeout_s"],
          f"{where}: terminationGracePeriodSeconds {grace} <= drain_timeout_s {cfg['drain_timeout_s']}")
    check(spec.get("securityContext", {}).get("runAsNonRoot") is True, f"{where}: may run as root")
    if not serving:
        return
    check(ports.get("grpc") == cfg["port"], f"{where}: grpc port {ports.get('grpc')} != {cfg['port']}")
    check(ports.get("metrics") == cfg["metrics_port"],
          f"{where}: metrics port {ports.get('metrics')} != {cfg['metrics_port']}")
    live, ready = cfg["health"]["liveness_service"], cfg["health"]["readiness_service"]
    check_probe(where, c.get("livenessProbe"), "livenessProbe", cfg["port"], live)
    check_probe(where, c.get("readinessProbe"), "readinessProbe", cfg["port"], ready)
    check_probe(where, c.get("startupProbe"), "startupProbe", cfg["port"], ready)
    sp = c.get("startupProbe") or {}
    check(sp.get("periodSeconds", 10) * sp.get("failureThreshold", 3) >= 600,
          f"{where}: startupProbe allows under 10 minutes for model loading")
    ann = meta.get("annotations", {})
    check(ann.get("prometheus.io/scrape") == "true", f"{where}: no prometheus.io/scrape annotation")
    check(ann.get("prometheus.io/port") == str(cfg["metrics_port"]),
          f"{where}: prometheus.io/port {ann.get('prometheus.io/port')} != {cfg['metrics_port']}")


def check_overlay(hkv, overlay, exported_metrics):
    text, docs = render(overlay)
    if not docs:
        return
    yamllint(text, f"rendered {overlay}")
    kinds = {}
    for d in docs:
        kinds.setdefault(d["kind"], []).append(d)
    cm = [d for d in kinds.get("ConfigMap", []) if d["metadata"]["name"].startswith("hkv-config")]
    check(len(cm) == 1 and "hkv.yaml" in cm[0].get("data", {}), f"{overlay}: no hkv-config ConfigMap")
    if not cm:
        return
    cfg = server_config(hkv, cm[0]["data"]["hkv.yaml"])
    if cfg is None:
        return
    gpus = OVERLAYS[overlay] if OVERLAYS[overlay] is not None else cfg["tensor_parallel_size"]
    if overlay == "multi-gpu":
        check(cfg["tensor_parallel_size"] > 1, "multi-gpu: tensor_parallel_size must be > 1")
    templates = list(pod_templates(docs))
    check(any(s for _, _, _, s in templates), f"{overlay}: no pod serves gRPC")
    for where, spec, meta, serving in templates:
        check_pod(overlay, f"{overlay} {where}", spec, meta, serving, cfg, gpus)
    if overlay == "multi-node":
        lws = kinds["LeaderWorkerSet"][0]["spec"]["leaderWorkerTemplate"]
        check(lws["size"] * 8 == cfg["tensor_parallel_size"],
              f"multi-node: {lws['size']} pods x 8 GPUs != tensor_parallel_size {cfg['tensor_parallel_size']}")
    svc = kinds.get("Service", [{}])[0]
    sports = {p["name"]: p for p in svc.get("spec", {}).get("ports", [])}
    check(sports.get("grpc", {}).get("port") == cfg["port"], f"{overlay}: Service grpc port mismatch")
    check(sports.get("metrics", {}).get("port") == cfg["metrics_port"],
          f"{overlay}: Service metrics port mismatch")
    check("PodDisruptionBudget" in kinds, f"{overlay}: no PodDisruptionBudget")
    sm = kinds.get("ServiceMonitor", [])
    check(sm and sm[0]["spec"]["endpoints"][0]["port"] == "metrics",
          f"{overlay}: no ServiceMonitor on the metrics port")
    if overlay != "multi-node":
        hpa = kinds.get("HorizontalPodAutoscaler", [])
        check(bool(hpa), f"{overlay}: no HorizontalPodAutoscaler")
        for h in hpa:
            for m in h["spec"]["metrics"]:
                name = m.get("pods", {}).get("metric", {}).get("name")
                check(name in exported_metrics, f"{overlay}: HPA metric {name} is not exported by hkv")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hkv", required=True)
    args = ap.parse_args()
    if not os.access(args.hkv, os.X_OK):
        print(f"hkv binary {args.hkv} not found")
        return 1
    sources = []
    for base, _, files in os.walk(os.path.join(HERE, "k8s")):
        sources += [os.path.join(base, f) for f in files if f.endswith(".yaml")]
    yamllint(sorted(sources), "deploy/k8s sources")
    with open(os.path.join(ROOT, "server/metrics.cc")) as f:
        exported = set(re.findall(r'"(hkv_[a-z_]+)"', f.read()))
    for overlay in OVERLAYS:
        check_overlay(args.hkv, overlay, exported)
    if errors:
        print("deploy checks FAILED:")
        for e in errors:
            print(" -", e)
        return 1
    print(f"deploy checks passed for overlays: {', '.join(OVERLAYS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
