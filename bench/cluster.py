#!/usr/bin/env python3
"""Benchmark cluster bring-up: prints figures, asserts nothing.

    .venv/bin/python bench/cluster.py [--runs 3] [--scale 1.0] [--skip-realistic]

Measures, in throwaway project copies with `dindind-bench*` repositories:
  1. the sample as it is (tiny images): `doit cluster:up` wall time to every
     node Ready (1 control plane + 2 workers, nested) and `cluster:down`;
  2. preload vs load-at-boot with component images padded to realistic
     sizes (about v1.31's: apiserver 90 MB, controller-manager 85, scheduler
     65, proxy 90, etcd 150, coredns 60 MB; random, incompressible bytes),
     because with the sample's few-KB images there is nothing to preload.
Goals (issue 3): preload >= 2x faster to ready than load-at-boot; up <= 60 s.
Medians of --runs runs.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import copy_project  # noqa: E402

from dindind.docker import archive as dockerarchive  # noqa: E402

SIZES_MB = {"kube-apiserver": 90, "kube-controller-manager": 85, "kube-scheduler": 65, "kube-proxy": 90,
            "etcd": 150, "coredns": 60, "pause": 1}
DOIT = str(Path(sys.executable).parent / "doit")


def run(project, *args, check=True):
    t = time.monotonic()
    p = subprocess.run([DOIT, *args], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check and p.returncode:
        sys.exit(f"doit {' '.join(args)} failed:\n{p.stdout[-4000:]}")
    return time.monotonic() - t, p.stdout


def pad_tree(src_root, dest_root, scale):
    """Copy a sample tree, replacing every image tarball with a realistic-size one."""
    shutil.copytree(src_root, dest_root)
    kube = Path(dest_root) / "kubernetes"
    tars = list((kube / "server" / "bin").glob("*.tar")) + list((kube / "extra-images").glob("*.tar"))
    for tar in tars:
        manifest = dockerarchive.read_manifest(tar)[0]
        name = tar.stem
        size = int(SIZES_MB.get(name, 50) * scale * 1e6)
        files = {f"/usr/local/bin/{name}": (f"#!/bin/sh\necho {name}\n".encode(), 0o755),
                 f"/usr/share/dindind-bench/{name}.bin": (os.urandom(size), 0o644)}
        dockerarchive.write_image(tar, manifest["RepoTags"], files, epoch=1700000000)
    return dest_root


def cycle(project, cfg, name, runs):
    ups, downs = [], []
    for i in range(runs):
        t_up, out = run(project, f"config={cfg}", "cluster:up", "--name", name)
        t_down, _ = run(project, f"config={cfg}", "cluster:down", "--name", name)
        ups.append(t_up)
        downs.append(t_down)
        print(f"  {name} run {i + 1}: up {t_up:.1f} s, down {t_down:.1f} s", flush=True)
    return statistics.median(ups), statistics.median(downs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0, help="image size factor for the realistic case")
    ap.add_argument("--skip-realistic", action="store_true")
    ap.add_argument("--skip-sample", action="store_true")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dindind-bench-cluster-"))
    rows = []
    try:
        project = copy_project(work / "project")
        base = "node:\n  repository: dindind-bench/node\ncluster:\n  repository: dindind-bench/cluster\n"
        (project / "sample.yaml").write_text("kubernetes:\n  source: sample\n  version: v1.31.2+sample\n" + base)
        print("building the sample images ...", flush=True)
        run(project, "config=sample.yaml", "build:kubernetes")
        if not a.skip_sample:
            run(project, "config=sample.yaml", "build")
            up, down = cycle(project, "sample.yaml", "bench-sample", a.runs)
            rows.append(("sample (few-KB images), preload", up, down))
        if not a.skip_realistic:
            tree = pad_tree(project / "artifacts" / "kubernetes" / "sample", work / "padded", a.scale)
            extras = "".join(f"    - {tree}/kubernetes/extra-images/{n}.tar\n" for n in ("etcd", "coredns", "pause"))
            for preload in (True, False):
                tag = "preload" if preload else "boot"
                cfg = project / f"{tag}.yaml"
                cfg.write_text(f"kubernetes:\n  source: dir\n  path: {tree}\n  extra_images:\n{extras}"
                               f"node:\n  repository: dindind-bench/node-{tag}\n  preload: {str(preload).lower()}\n"
                               f"cluster:\n  repository: dindind-bench/cluster-{tag}\n")
                print(f"building realistic-size images, preload={preload} ...", flush=True)
                t, _ = run(project, f"config={cfg}", "build")
                print(f"  built in {t:.0f} s", flush=True)
                up, down = cycle(project, cfg, f"bench-{tag}", a.runs)
                rows.append((f"realistic sizes ({sum(SIZES_MB.values()) * a.scale:.0f} MB of images), "
                             f"{'preload' if preload else 'load at boot'}", up, down))
    finally:
        for line in subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"],
                                   stdout=subprocess.PIPE, text=True).stdout.split():
            if line.startswith("dindind-bench"):
                subprocess.run(["docker", "rmi", "-f", line], stdout=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"cluster:up / cluster:down, 1 control plane + 2 workers, nested, median of {a.runs} "
          f"({os.cpu_count()} cores)")
    print()
    print("| case | up to Ready (s) | down (s) |")
    print("|---|---:|---:|")
    for label, up, down in rows:
        print(f"| {label} | {up:.1f} | {down:.1f} |")
    real = {r[0].split(", ")[-1]: r[1] for r in rows if r[0].startswith("realistic")}
    if len(real) == 2:
        print(f"\nload-at-boot / preload = {real['load at boot'] / real['preload']:.2f}x (goal >= 2x); "
              f"goal up <= 60 s: {'met' if max(r[1] for r in rows) <= 60 else 'NOT met'}")


if __name__ == "__main__":
    main()
