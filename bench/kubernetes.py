#!/usr/bin/env python3
"""Benchmark the real Kubernetes build and cluster: prints figures, asserts nothing.

    .venv/bin/python bench/kubernetes.py [--version v1.37.2] [--runs 3] [--cold]

In a throwaway project copy with `dindind-bench-real/*` repositories:
  1. `doit build` from modules (with --cold: empty Go build and module caches
     in a temporary GOPATH/GOCACHE, module download timed apart from the
     compile; without: Go's caches as they are);
  2. the no-op `doit build` (median of --runs), and doit's peak RSS;
  3. `cluster:up` of 1 control plane + 2 workers (nested) to every node
     Ready, `cluster:stop`, `cluster:start` to every node Ready again (as
     reported by kubelets after the start) and `cluster:down` (medians of
     --runs);
  4. the node and cluster image sizes.
Goals (issue 9): up <= 60 s nested on 2 cores; doit <= 150 MB. Issue 14:
restart <= 50 % of the first start.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import copy_project  # noqa: E402

DOIT = str(Path(sys.executable).parent / "doit")


def run(project, *args, env=None):
    t = time.monotonic()
    p = subprocess.run([DOIT, *args], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       env={**os.environ, **(env or {})})
    if p.returncode:
        sys.exit(f"doit {' '.join(args)} failed:\n{p.stdout[-4000:]}")
    return time.monotonic() - t, p.stdout


def doit_rss(project, cfg):
    """Peak RSS (MB) of the doit process of one no-op build, read from /proc as it runs."""
    p = subprocess.Popen([DOIT, f"config={cfg}", "build"], cwd=project, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    peak = 0
    while p.poll() is None:
        try:
            for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.01)
    return peak / 1024


def size_mb(ref):
    out = subprocess.run(["docker", "image", "inspect", "-f", "{{.Size}}", ref], stdout=subprocess.PIPE, text=True)
    return int(out.stdout.strip()) / 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--version", default="v1.37.2")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cold", action="store_true", help="empty Go caches (about 25 min on 2 cores)")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dindind-bench-real-"))
    env = {}
    try:
        project = copy_project(work / "project")
        cfg = project / "real.yaml"
        cfg.write_text(f"kubernetes:\n  source: module\n  version: {a.version}\n"
                       "node:\n  repository: dindind-bench-real/node\n"
                       "cluster:\n  repository: dindind-bench-real/cluster\n")
        if a.cold:
            env = {"GOPATH": str(work / "gopath"), "GOCACHE": str(work / "gocache"),
                   "GOMODCACHE": str(work / "gopath" / "pkg" / "mod")}
        t_build, _ = run(project, f"config={cfg}", "build", env=env)
        print(f"build from modules ({'cold' if a.cold else 'Go caches as they were'}): {t_build:.1f} s", flush=True)
        record = json.loads(next((project / "artifacts" / "kubernetes").glob("module-*/go-build.json")).read_text())
        print(f"  built with {' '.join(record['go'])}: {len(record['modules'])} modules")
        noops = [run(project, f"config={cfg}", "build", env=env)[0] for _ in range(a.runs)]
        print(f"no-op build: median {statistics.median(noops):.2f} s of {a.runs}; "
              f"doit's own peak RSS in it {doit_rss(project, cfg):.0f} MB")
        ups, stops, starts, downs = [], [], [], []
        for i in range(a.runs):
            t_up, _ = run(project, f"config={cfg}", "cluster:up", "--name", "bench-real", "--workers", "2")
            t_stop, _ = run(project, f"config={cfg}", "cluster:stop", "--name", "bench-real")
            t_start, _ = run(project, f"config={cfg}", "cluster:start", "--name", "bench-real")
            t_down, _ = run(project, f"config={cfg}", "cluster:down", "--name", "bench-real")
            for figures, t in ((ups, t_up), (stops, t_stop), (starts, t_start), (downs, t_down)):
                figures.append(t)
            print(f"  run {i + 1}: up {t_up:.1f} s, stop {t_stop:.1f} s, start {t_start:.1f} s, down {t_down:.1f} s",
                  flush=True)
        up, start = statistics.median(ups), statistics.median(starts)
        print(f"cluster:up 1+2 nested to Ready: median {up:.1f} s; "
              f"cluster:down: median {statistics.median(downs):.1f} s")
        print(f"cluster:stop: median {statistics.median(stops):.1f} s; cluster:start to Ready again: median "
              f"{start:.1f} s = {100 * start / up:.0f} % of up (goal <= 50 %)")
        stamps = {n: json.loads((project / "artifacts" / "images" / f"{n}.json").read_text()) for n in ("node", "cluster")}
        print("images: " + ", ".join(f"{n} {size_mb(s['tags'][0]):.0f} MB" for n, s in stamps.items()))
        for s in stamps.values():
            subprocess.run(["docker", "rmi", "-f", *s["tags"]], stdout=subprocess.DEVNULL)
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(work)])      # Go's module cache is read-only
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
