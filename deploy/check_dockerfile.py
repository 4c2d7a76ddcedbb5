#!/usr/bin/env python3
"""hadolint-style checks of deploy/Dockerfile (no Docker engine is needed).

Rules (hadolint ids where one exists):
  DL3006/DL3007  every FROM names a pinned tag, never `latest` or none
  multi-stage    a named builder stage, and the final stage copies from it (COPY --from)
  builder        the builder stage runs scripts/setup (the same build CI runs)
  DL3015         apt-get install uses --no-install-recommends
  DL3009         apt lists are removed in the same RUN as apt-get update
  DL3002/user    the final stage switches to a non-root USER before ENTRYPOINT
  DL3025         ENTRYPOINT and CMD use the exec (JSON) form; ENTRYPOINT is `hkv serve`
  DL3020         COPY, not ADD, for local files
  ports          EXPOSE lists exactly the server's default gRPC and metrics ports
                 (`hkv serve --print-config`, when --hkv is given)
Usage: check_dockerfile.py [--hkv build/bin/hkv] [Dockerfile]
"""
import argparse
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def instructions(text):
    """(keyword, argument) pairs, with continuation lines joined and comments dropped."""
    out, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, arg = current.partition(" ")
        out.append((keyword.upper(), arg.strip()))
        current = ""
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hkv")
    ap.add_argument("dockerfile", nargs="?", default=os.path.join(HERE, "Dockerfile"))
    args = ap.parse_args()
    with open(args.dockerfile) as f:
        ins = instructions(f.read())
    errors = []
    stages = [i for i, (k, _) in enumerate(ins) if k == "FROM"]
    if len(stages) < 2:
        errors.append("multi-stage: need a builder stage and a runtime stage")
    names = []
    for i in stages:
        arg = ins[i][1]
        image = arg.split()[0]
        m = re.search(r"\s+AS\s+(\S+)", arg, re.IGNORECASE)
        names.append(m.group(1) if m else None)
        if ":" not in image or image.endswith(":latest"):
            errors.append(f"DL3006/DL3007: FROM {image} must pin a tag other than latest")
    final = ins[stages[-1]:] if stages else ins
    builder = ins[stages[0]:stages[-1]] if len(stages) > 1 else []
    if not names or names[0] is None:
        errors.append("multi-stage: the builder stage needs a name (FROM ... AS builder)")
    elif not any(k == "COPY" and f"--from={names[0]}" in a for k, a in final):
        errors.append(f"multi-stage: the final stage never copies --from={names[0]}")
    if not any(k == "RUN" and "scripts/setup" in a for k, a in builder):
        errors.append("builder: the builder stage must build with scripts/setup")
    for k, a in ins:
        if k == "RUN" and "apt-get install" in a and "--no-install-recommends" not in a:
            errors.append("DL3015: apt-get install without --no-install-recommends")
        if k == "RUN" and "apt-get update" in a and "rm -rf /var/lib/apt/lists" not in a:
            errors.append("DL3009: apt-get update without removing /var/lib/apt/lists")
        if k == "ADD":
            errors.append("DL3020: use COPY instead of ADD")
    users = [a for k, a in final if k == "USER"]
    entry = [i for i, (k, _) in enumerate(final) if k == "ENTRYPOINT"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        errors.append("DL3002: the final stage must run as a non-root USER")
    if not entry:
        errors.append("the final stage has no ENTRYPOINT")
    else:
        user_at = max((i for i, (k, _) in enumerate(final) if k == "USER"), default=10**9)
        if user_at > entry[-1]:
            errors.append("DL3002: USER must come before ENTRYPOINT")
        for k, a in final:
            if k in ("ENTRYPOINT", "CMD"):
                try:
                    json.loads(a)
                except ValueError:
                    errors.append(f"DL3025: {k} must use the exec (JSON array) form")
        try:
            if json.loads(final[entry[-1]][1])[:2] != ["hkv", "serve"]:
                errors.append("ENTRYPOINT must be [\"hkv\", \"serve\"]")
        except ValueError:
            pass
    exposed = sorted(int(p.split("/")[0]) for k, a in final if k == "EXPOSE" for p in a.split())
    if args.hkv:
        out = subprocess.run([args.hkv, "serve", "--print-config"], capture_output=True, text=True)
        if out.returncode != 0:
            errors.append(f"hkv serve --print-config failed: {out.stderr.strip()}")
        else:
            cfg = json.loads(out.stdout)
            want = sorted([cfg["port"], cfg["metrics_port"]])
            if exposed != want:
                errors.append(f"EXPOSE {exposed} != the server's default ports {want}")
    if errors:
        print("Dockerfile checks FAILED:")
        for e in errors:
            print(" -", e)
        return 1
    print(f"Dockerfile checks passed ({len(ins)} instructions, {len(stages)} stages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
