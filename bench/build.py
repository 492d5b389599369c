#!/usr/bin/env python3
"""Benchmark of `doit build`: prints figures and a Markdown table. Not a test.

    .venv/bin/python bench/build.py                 # fresh checkout, warm docker layer cache
    .venv/bin/python bench/build.py --cold-engine   # also a cold build with an empty layer cache

Works in a temporary copy of the project with its own image repositories
(dindind-bench/build-*), on the sample Kubernetes tree (the kubelet case on a
copy of it as a ``dir`` source). Measures: the cold build; the no-op (median
of 5); a one-template edit and a kubelet-only change (median of --runs, each
run a distinct change, so every one is a real cache miss); peak RSS of the doit
process (VmHWM, sampled from /proc) and of doit with its children (wait4's
ru_maxrss: dpkg-deb/xz, zstd ...); node and cluster image sizes. Removes what
it built when done (the shared dindind/base image stays).

"Cold" without --cold-engine means: a fresh checkout (no artifacts, no doit
db) and no bench images, but the shared base image and the engine's layer
cache (the intermediate images of any other dindind build on this engine) may
be warm; the output says how many build steps came from the cache. With
--cold-engine the bench uses its own base repository, so debootstrap runs and
no build step can come from the cache (``docker builder prune`` would do
nothing here: the SDK's builds use the classic builder, whose cache is the
intermediate images themselves).
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import copy_project  # noqa: E402  (one project copier for tests and benchmarks)
REPOS = {"node": "dindind-bench/build-node", "cluster": "dindind-bench/build-cluster"}
BASE_REPO = "dindind-bench/build-base"
TEMPLATE = Path("templates/node/files/etc/systemd/system/dindind-preload.service")
GOALS = {"noop_s": 0.5, "template_ratio": 0.20, "kubelet_ratio": 0.30, "rss_mb": 150.0, "cluster_factor": 1.1}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def docker(*args, check=True):
    r = subprocess.run(["docker", *args], text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if check and r.returncode != 0:
        raise SystemExit(f"docker {' '.join(args)} failed: {r.stderr.strip()}")
    return r


def doit_exe():
    exe = Path(sys.executable).parent / "doit"
    return str(exe) if exe.exists() else (shutil.which("doit") or "doit")


class Run:
    """One timed `doit` run: wall seconds, VmHWM of doit itself, ru_maxrss incl. children."""

    def __init__(self, project, *args):
        env = dict(os.environ)
        env.pop("DINDIND_CONFIG", None)
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            t0 = time.perf_counter()
            p = subprocess.Popen([doit_exe(), *args], cwd=project, env=env, stdout=out, stderr=err,
                                 stdin=subprocess.DEVNULL)
            self.hwm_kb = 0
            done = threading.Event()

            def sample():
                while not done.is_set():
                    try:
                        with open(f"/proc/{p.pid}/status") as f:
                            for line in f:
                                if line.startswith("VmHWM:"):
                                    self.hwm_kb = max(self.hwm_kb, int(line.split()[1]))
                    except (OSError, ValueError):
                        pass
                    done.wait(0.02)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            _, status, ru = os.wait4(p.pid, 0)       # reap it ourselves: its rusage comes with it
            self.wall = time.perf_counter() - t0
            done.set()
            sampler.join()
            p.returncode = os.waitstatus_to_exitcode(status)
            self.maxrss_kb = ru.ru_maxrss
            out.seek(0)
            err.seek(0)
            self.stdout, self.stderr, self.returncode = out.read(), err.read(), p.returncode
        self.executed = [line[3:].strip() for line in self.stdout.splitlines() if line.startswith(".  ")]
        if self.returncode != 0:
            raise SystemExit(f"doit {' '.join(args)} failed ({self.returncode}):\n{self.stdout[-3000:]}\n"
                             f"{self.stderr[-3000:]}")




def config_text(base_repo=None, kubernetes=""):
    text = (f"node:\n  repository: {REPOS['node']}\n"
            f"cluster:\n  repository: {REPOS['cluster']}\n")
    if base_repo:
        text += f"base:\n  repository: {base_repo}\n"
    return text + (kubernetes or "kubernetes:\n  source: sample\n  version: v1.31.2+sample\n")


class Tracker:
    """Image ids the bench made (from the stamps), removed at the end if nothing tags them."""

    def __init__(self):
        self.ids, self.refs = [], list(REPOS.values())

    def note(self, project):
        for name in ("node", "cluster"):
            try:
                stamp = json.loads((project / "artifacts" / "images" / f"{name}.json").read_text())
            except (OSError, ValueError):
                continue
            self.ids.append(stamp["id"])
            self.refs.extend(stamp["tags"])

    def clean(self, base_ref=None):
        for ref in dict.fromkeys(self.refs):
            if ref.startswith("dindind-bench/"):
                docker("rmi", "-f", ref, check=False)
        for image in dict.fromkeys(self.ids):
            r = docker("image", "inspect", "-f", "{{len .RepoTags}}", image, check=False)
            if r.returncode == 0 and r.stdout.strip() == "0":
                docker("rmi", image, check=False)
        if base_ref:
            base_id = docker("image", "inspect", "-f", "{{.Id}}", base_ref, check=False).stdout.strip()
            if base_id:
                # the dangling stage images (the node's preload stage) built on the bench's own base
                for image in docker("images", "-q", "--no-trunc", "-f", "dangling=true").stdout.split():
                    if _descends(image, base_id):
                        docker("rmi", image, check=False)
            docker("rmi", base_ref, check=False)


def _descends(image, ancestor):
    seen = 0
    while image and seen < 200:
        if image == ancestor:
            return True
        image = docker("image", "inspect", "-f", "{{.Parent}}", image, check=False).stdout.strip()
        seen += 1
    return False


def cache_hits(project):
    """(cached, total) RUN/COPY steps over the node and cluster build logs of the last builds."""
    cached = total = 0
    for name in ("node", "cluster"):
        log_path = project / "artifacts" / "images" / f"{name}.build.log"
        if not log_path.exists():
            continue
        step = None
        for line in log_path.read_text().splitlines():
            if line.startswith("Step "):
                step = bool(re.search(r" : (RUN|COPY|ADD) ", line))
                total += step
            elif step and "Using cache" in line:
                cached += 1
                step = False
    return cached, total


def image_sizes(project):
    stamps = {n: json.loads((project / "artifacts" / "images" / f"{n}.json").read_text()) for n in ("node", "cluster")}
    node = json.loads(docker("image", "inspect", stamps["node"]["id"]).stdout)[0]["Size"]
    cluster = json.loads(docker("image", "inspect", stamps["cluster"]["id"]).stdout)[0]["Size"]
    # the cluster image's own payload: every layer after its base + packages (the apt-get RUN)
    hist = docker("history", "--no-trunc", "--human=false", "--format", "{{.Size}}\t{{.CreatedBy}}",
                  stamps["cluster"]["id"]).stdout.splitlines()
    payload = 0
    for line in hist:                               # newest first
        size, created_by = line.split("\t", 1)
        if "apt-get install" in created_by:
            break
        payload += int(size)
    tree = json.loads((project / "artifacts" / "kubernetes" / "tree.json").read_text())
    kube = Path(tree["root"]) / "kubernetes"
    test_bins = sum((kube / p).stat().st_size for p in ("test/bin/e2e.test", "test/bin/ginkgo",
                                                         "server/bin/kubectl"))
    archive = (project / "artifacts" / "images" / "node-image.tar.zst").stat().st_size
    return {"node": node, "cluster": cluster, "payload": payload, "test_bins": test_bins, "archive": archive}


def median(runs):
    return statistics.median(r.wall for r in runs)


def cold_build(base_repo, tracker, label):
    project = copy_project(Path(tempfile.mkdtemp(prefix="dindind-bench-build-")) / "project")
    cfg = project / "bench.yaml"
    cfg.write_text(config_text(base_repo))
    for ref in (f"{REPOS['node']}", f"{REPOS['cluster']}"):
        for tagged in docker("images", "-q", "--format", "{{.Repository}}:{{.Tag}}", ref).stdout.split():
            docker("rmi", "-f", tagged, check=False)
    log(f"{label}: doit build in {project}")
    run = Run(project, f"config={cfg}", "build")
    tracker.note(project)
    hits = cache_hits(project)
    log(f"  {run.wall:.1f} s; {hits[0]} of {hits[1]} RUN/COPY steps from the layer cache")
    return project, cfg, run, hits


def timed_edits(project, cfg, path, runs, tracker, expected, restore=True):
    """``runs`` builds, each after a distinct comment appended to ``path``; ``expected(executed)`` must hold."""
    original = path.read_text()
    done = []
    for i in range(runs):
        path.write_text(original + f"# bench edit {i} {time.time_ns()}\n")
        r = Run(project, f"config={cfg}", "build")
        tracker.note(project)
        assert expected(r.executed), r.executed
        done.append(r)
        log(f"  {r.wall:.1f} s  {' '.join(r.executed)}")
    if restore:
        path.write_text(original)
    return done


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs of each incremental case (median)")
    ap.add_argument("--noop-runs", type=int, default=5)
    ap.add_argument("--cold-engine", action="store_true",
                    help="also build once with an empty layer cache (own base image: debootstrap, apt)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary project and the images")
    args = ap.parse_args(argv)
    tracker = Tracker()
    base_ref = None
    projects = []
    all_runs = []
    try:
        rows = []
        cold_empty = None
        if args.cold_engine:
            p0, _, cold_empty, hits0 = cold_build(BASE_REPO, tracker, "cold build, empty layer cache")
            projects.append(p0)
            all_runs.append(cold_empty)
            base_ref = json.loads((p0 / "artifacts" / "images" / "base.json").read_text())["tags"][0]
            tracker.note(p0)
        project, cfg, cold, hits = cold_build(None, tracker, "cold build, fresh checkout")
        projects.append(project)
        all_runs.append(cold)

        log("no-op")
        noops = [Run(project, f"config={cfg}", "build") for _ in range(args.noop_runs)]
        all_runs += noops
        assert all(not r.executed for r in noops), [r.executed for r in noops]

        log("one-template edit")
        edits = timed_edits(project, cfg, project / TEMPLATE, args.runs, tracker,
                            lambda ran: "build:node" in ran and not any(t.startswith("build:deb") for t in ran))
        all_runs += edits

        log("kubelet change (dir source)")
        tree = project.parent / "k8s-build"
        shutil.copytree(project / "artifacts" / "kubernetes" / "sample", tree, symlinks=True)
        extras = sorted((tree / "kubernetes" / "extra-images").glob("*.tar"))
        dcfg = project / "bench-dir.yaml"
        dcfg.write_text(config_text(None, "kubernetes:\n  source: dir\n"
                                          f"  path: {tree}\n  extra_images: [{', '.join(map(str, extras))}]\n"))
        settle = Run(project, f"config={dcfg}", "build")        # switch source, template reverted: untimed
        tracker.note(project)
        all_runs.append(settle)
        kchanges = timed_edits(project, dcfg, tree / "kubernetes" / "server" / "bin" / "kubelet", args.runs,
                               tracker, lambda ran: "build:deb-kubelet" in ran and "build:deb-kubectl" not in ran,
                               restore=False)
        all_runs += kchanges
        sizes = image_sizes(project)

        # ---------------------------------------------------------------- the table
        ref_cold = cold_empty.wall if cold_empty else cold.wall
        ref_name = "empty-cache cold" if cold_empty else "cold"
        noop_m, edit_m, kub_m = median(noops), median(edits), median(kchanges)
        hwm = max(r.hwm_kb for r in all_runs) / 1024
        maxrss = max(r.maxrss_kb for r in all_runs) / 1024
        mb = 1e6
        cluster_goal = sizes["node"] * GOALS["cluster_factor"] + sizes["test_bins"]

        def ok(flag):
            return "✅" if flag else "❌"

        if cold_empty:
            rows.append(("cold build, empty layer cache (own base: debootstrap + apt)", f"{cold_empty.wall:.1f} s",
                         "—", f"{hits0[0]}/{hits0[1]} steps cached"))
        rows.append(("cold build, fresh checkout, warm layer cache", f"{cold.wall:.1f} s", "—",
                     f"{hits[0]}/{hits[1]} RUN/COPY steps from the cache"))
        rows.append((f"no-op `doit build` (median of {len(noops)})", f"{noop_m:.2f} s",
                     f"≤ {GOALS['noop_s']} s", ok(noop_m <= GOALS["noop_s"])))
        rows.append((f"one-template edit (median of {len(edits)})", f"{edit_m:.1f} s",
                     "≤ 20 % of cold", f"{edit_m / ref_cold:.0%} of {ref_name} {ok(edit_m / ref_cold <= GOALS['template_ratio'])}"
                     + ("" if not cold_empty else f"; {edit_m / cold.wall:.0%} of warm cold")))
        rows.append((f"kubelet-only change (median of {len(kchanges)})", f"{kub_m:.1f} s",
                     "≤ 30 % of cold", f"{kub_m / ref_cold:.0%} of {ref_name} {ok(kub_m / ref_cold <= GOALS['kubelet_ratio'])}"
                     + ("" if not cold_empty else f"; {kub_m / cold.wall:.0%} of warm cold")))
        rows.append(("peak RSS, the doit process (VmHWM)", f"{hwm:.0f} MB", f"≤ {GOALS['rss_mb']:.0f} MB",
                     ok(hwm <= GOALS["rss_mb"])))
        rows.append(("peak RSS, doit or any child (ru_maxrss)", f"{maxrss:.0f} MB", "—", "children: dpkg-deb + xz, zstd"))
        rows.append(("node image (virtual size)", f"{sizes['node'] / mb:.0f} MB", "—", "—"))
        rows.append(("cluster image (virtual size)", f"{sizes['cluster'] / mb:.0f} MB", "—",
                     f"of which {(sizes['cluster'] - sizes['payload']) / mb:.0f} MB base + engine packages"))
        rows.append(("cluster payload (node archive + test binaries + dindind)", f"{sizes['payload'] / mb:.0f} MB",
                     f"≤ node × 1.1 + test binaries = {cluster_goal / mb:.0f} MB",
                     f"{ok(sizes['payload'] <= cluster_goal)} (node archive {sizes['archive'] / mb:.0f} MB zstd)"))
        print()
        print(f"dindind `doit build` benchmark — {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
              f"sample Kubernetes tree, docker {docker('version', '-f', '{{.Server.Version}}').stdout.strip()}")
        print()
        print("| measure | value | goal | result |")
        print("|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        print()
        print("Cold (warm cache) = a fresh checkout whose images were removed; the shared base image and "
              "the engine's layer cache were present (see the cached-steps count). Each incremental run is a "
              "distinct change (a real cache miss), not an edit/revert pair.")
        return 0
    finally:
        if not args.keep:
            tracker.clean(base_ref)
            for p in projects:
                shutil.rmtree(p.parent, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
