#!/usr/bin/env python3
"""hadolint-style checks of deploy/Dockerfile (no Docker engine is needed).

Rules (hadolint ids where one exists):
  DL3006/DL3007  every FROM names a pinned tag, never `latest` or none
  multi-stage    a named builder stage, and the final stage copies from it (COPY --from);
                 the final stage is a CUDA runtime (not devel) image
  builder        the builder stage runs scripts/setup (the same build CI runs)
  DL3015         apt-get install uses --no-install-recommends
  DL3009         a RUN that installs apt packages also removes /var/lib/apt/lists
  DL3004         no sudo
  DL4006         a RUN with a pipe follows SHELL [..., "-o", "pipefail", ...] in its stage
  DL3002/user    the final stage switches to a non-root USER before ENTRYPOINT
  DL3025         ENTRYPOINT and CMD use the exec (JSON) form; ENTRYPOINT is `hkv serve`
  DL3020         COPY, not ADD, for local files
  ld-path        ENV LD_LIBRARY_PATH never drops the base image's value
  model          CMD's --model lies under a path the final stage COPYs into the image
  context        Dockerfile.dockerignore keeps .git and local build trees out of the context
  ports          EXPOSE lists exactly the server's default gRPC, metrics and HTTP API ports
                 (`hkv serve --print-config`)
Usage: check_dockerfile.py --hkv build/bin/hkv [Dockerfile]
Exits 0 when every rule holds, 1 naming each broken rule otherwise.
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
        if stripped.startswith("#") or (not current and not stripped):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, arg = current.partition(" ")
        out.append((keyword.upper(), arg.strip()))
        current = ""
    if current:
        keyword, _, arg = current.partition(" ")
        out.append((keyword.upper(), arg.strip()))
    return out


def exec_form(arg):
    """The JSON array of an exec-form instruction, or None for the shell form."""
    try:
        value = json.loads(arg)
    except ValueError:
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def check_stage(index, stage, errors):
    """Rules that hold inside every stage."""
    pipefail = False
    for k, a in stage:
        if k == "SHELL":
            shell = exec_form(a) or []
            pipefail = "pipefail" in shell and "-o" in shell
        if k == "RUN":
            if "apt-get install" in a and "--no-install-recommends" not in a:
                errors.append(f"DL3015: stage {index}: apt-get install without "
                              "--no-install-recommends")
            if re.search(r"apt-get (update|install)|scripts/setup", a) and \
                    "rm -rf /var/lib/apt/lists" not in a:
                errors.append(f"DL3009: stage {index}: apt lists are not removed in the RUN that "
                              "installs packages")
            if re.search(r"(^|[;&|]\s*)sudo\s", a):
                errors.append(f"DL3004: stage {index}: do not use sudo")
            if re.search(r"[^|]\|[^|]", a) and not pipefail:
                errors.append(f"DL4006: stage {index}: RUN with a pipe needs SHELL with "
                              "-o pipefail first")
        if k == "ADD":
            errors.append(f"DL3020: stage {index}: use COPY instead of ADD")
        if k == "ENV" and "LD_LIBRARY_PATH=" in a and "$LD_LIBRARY_PATH" not in a and \
                "${LD_LIBRARY_PATH}" not in a:
            errors.append(f"ld-path: stage {index}: ENV LD_LIBRARY_PATH drops the base image's "
                          "value (use /etc/ld.so.conf.d + ldconfig)")


def check_dockerignore(path, errors):
    if not os.path.exists(path):
        errors.append(f"context: {os.path.basename(path)} is missing")
        return
    with open(path) as f:
        patterns = {line.strip() for line in f if line.strip() and not line.startswith("#")}
    for needed in (".git", "build", "build-*"):
        if needed not in patterns:
            errors.append(f"context: {os.path.basename(path)} does not exclude {needed}")


def server_defaults(hkv, errors):
    out = subprocess.run([hkv, "serve", "--print-config"], capture_output=True, text=True)
    if out.returncode != 0:
        errors.append(f"hkv serve --print-config failed: {out.stderr.strip()}")
        return None
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hkv", required=True, help="the hkv binary (for the default ports)")
    ap.add_argument("dockerfile", nargs="?", default=os.path.join(HERE, "Dockerfile"))
    args = ap.parse_args()
    if not os.access(args.hkv, os.X_OK):
        print(f"hkv binary {args.hkv} not found (build the hkv target first)")
        return 1
    with open(args.dockerfile) as f:
        ins = instructions(f.read())
    errors = []
    starts = [i for i, (k, _) in enumerate(ins) if k == "FROM"]
    if len(starts) < 2:
        errors.append("multi-stage: need a builder stage and a runtime stage")
    if not starts or starts[0] != 0:
        errors.append("the Dockerfile must start with FROM")
        starts = [0] + starts
    stages = [ins[s:e] for s, e in zip(starts, starts[1:] + [len(ins)])]
    names = []
    for i, stage in enumerate(stages):
        arg = stage[0][1]
        image = arg.split()[0] if arg else ""
        m = re.search(r"\s+AS\s+(\S+)", arg, re.IGNORECASE)
        names.append(m.group(1) if m else None)
        if ":" not in image.split("/")[-1] or image.endswith(":latest"):
            errors.append(f"DL3006/DL3007: FROM {image} must pin a tag other than latest")
        check_stage(i, stage, errors)
    final, builder = stages[-1], stages[0] if len(stages) > 1 else []
    if "devel" in final[0][1] or "runtime" not in final[0][1]:
        errors.append(f"multi-stage: the final stage must be a CUDA runtime image, not "
                      f"{final[0][1]}")
    if not names or names[0] is None:
        errors.append("multi-stage: the builder stage needs a name (FROM ... AS builder)")
    elif not any(k == "COPY" and f"--from={names[0]}" in a for k, a in final):
        errors.append(f"multi-stage: the final stage never copies --from={names[0]}")
    if not any(k == "RUN" and "scripts/setup" in a for k, a in builder):
        errors.append("builder: the builder stage must build with scripts/setup")

    users = [(i, a) for i, (k, a) in enumerate(final) if k == "USER"]
    entry = [(i, a) for i, (k, a) in enumerate(final) if k == "ENTRYPOINT"]
    if not users or users[-1][1].split(":")[0] in ("root", "0"):
        errors.append("DL3002: the final stage must run as a non-root USER")
    if not entry:
        errors.append("the final stage has no ENTRYPOINT")
    else:
        if not users or users[-1][0] > entry[-1][0]:
            errors.append("DL3002: USER must come before ENTRYPOINT")
        if exec_form(entry[-1][1]) != ["hkv", "serve"]:
            errors.append('DL3025: ENTRYPOINT must be the exec form ["hkv", "serve"]')
    for k, a in final:
        if k == "CMD" and exec_form(a) is None:
            errors.append("DL3025: CMD must use the exec (JSON array) form")
    cmd = next((exec_form(a) for k, a in reversed(final) if k == "CMD"), None) or []
    if "--model" in cmd[:-1]:
        model = cmd[cmd.index("--model") + 1]
        dests = [a.split()[-1].rstrip("/") for k, a in final if k == "COPY"]
        if not any(model.startswith(d + "/") for d in dests):
            errors.append(f"model: CMD's --model {model} is not under any COPY destination")
    check_dockerignore(args.dockerfile + ".dockerignore", errors)

    exposed = sorted(int(p.split("/")[0]) for k, a in final if k == "EXPOSE" for p in a.split())
    cfg = server_defaults(args.hkv, errors)
    if cfg is not None:
        want = sorted([cfg["port"], cfg["metrics_port"], cfg["http_port"]])
        if exposed != want:
            errors.append(f"ports: EXPOSE {exposed} != the server's default ports {want}")
    if errors:
        print("Dockerfile checks FAILED:")
        for e in errors:
            print(" -", e)
        return 1
    print(f"Dockerfile checks passed ({len(ins)} instructions, {len(stages)} stages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
