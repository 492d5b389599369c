#!/usr/bin/env python3
"""Run the whole [Conformance] suite offline on a real dindind cluster: prints figures, asserts nothing.

    .venv/bin/python bench/conformance.py [--version v1.37.2] [--parallel 2] [--flake-attempts 2] [--keep]

In a throwaway project copy with `dindind-bench-conf/*` repositories:
  1. `doit build` from modules (Go's caches as they are), the e2e images included;
  2. `cluster:up` of 1 control plane + 2 workers (nested);
  3. `cluster:e2e --conformance` (every [Conformance] test the preloaded images
     allow; pulls refused);
  4. prints the conformance total, how many ran, passed, failed, were skipped for a
     missing image or otherwise, the wall time, and the images built / missing.
The cluster is removed afterwards unless --keep. On 2 cores the run takes over an hour.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import copy_project  # noqa: E402

DOIT = str(Path(sys.executable).parent / "doit")
NAME = "bench-conf"


def run(project, *args, check=True):
    t = time.monotonic()
    p = subprocess.run([DOIT, *args], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if check and p.returncode:
        sys.exit(f"doit {' '.join(args)} failed:\n{p.stdout[-4000:]}")
    return time.monotonic() - t, p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--version", default="v1.37.2")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--flake-attempts", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the project copy and the cluster")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dindind-bench-conf-"))
    project = copy_project(work / "project")
    cfg = project / "bench.yaml"
    cfg.write_text(f"kubernetes:\n  source: module\n  version: {a.version}\n"
                   "node:\n  repository: dindind-bench-conf/node\n"
                   "cluster:\n  repository: dindind-bench-conf/cluster\n"
                   f"  e2e_parallel: {a.parallel}\n  e2e_flake_attempts: {a.flake_attempts}\n")
    c = f"config={cfg}"
    try:
        built, _ = run(project, c, "build")
        up, _ = run(project, c, "cluster:up", "--name", NAME)
        took, p = run(project, c, "cluster:e2e", "--name", NAME, "--conformance", check=False)
        dest = project / "artifacts" / "clusters" / NAME / "e2e"
        summary = json.loads((dest / "summary.json").read_text()) if (dest / "summary.json").is_file() else None
        images = json.loads((project / "artifacts/kubernetes/e2e-images/e2e-images.json").read_text())
        print(f"Kubernetes {a.version}, {os.cpu_count()} cores, --parallel {a.parallel}, "
              f"--flake-attempts {a.flake_attempts}")
        print(f"build {built / 60:.1f} min, cluster:up {up:.0f} s")
        print(f"e2e images: {images['counts']}")
        print(f"conformance tests: {images['conformance']['total']} in e2e.test, "
              f"{len(images['conformance']['skip_for_image'])} need a missing image")
        if summary is None:
            print(f"no summary (cluster:e2e exit {p.returncode}):\n{p.stdout[-4000:]}")
            return 1
        print(f"total {summary['total']}  ran {summary['ran']}  passed {summary['passed']}  failed {summary['failed']}  "
              f"skipped for an image {summary['skipped_for_image']}  skipped otherwise {summary['skipped_other']}")
        print(f"wall time {took / 60:.1f} min")
        for t in summary["failed_tests"]:
            print(f"  FAILED {t}")
        return 0
    finally:
        if not a.keep:
            run(project, c, "cluster:down", "--name", NAME, check=False)
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
