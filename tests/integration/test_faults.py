"""Faults and bad input through `doit` (issue 2, item 10): interrupted builds, two builds at once,
bad configs, an unreachable engine, a malformed Kubernetes tree, a failing docker build."""

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (SAMPLE, Background, artifact_mtimes, copy_project, copy_sample_tree, dir_source_yaml, doit,
                      executed, project_config)

pytestmark = pytest.mark.engine

TAG = "v1.31.2_sample"
DEBS = ("kubernetes-cni", "kubelet", "kubectl", "kubeadm")
BOOKKEEPING = (".doit.db", ".lock", ".dindind-release.json")    # dot names that are not temp files


def no_traceback(r):
    assert "Traceback" not in r.stdout + r.stderr, r.stdout[-3000:] + r.stderr[-3000:]


def error_lines(text):
    return [line for line in text.splitlines() if "ERROR:" in line]


def assert_no_accepted_partial(project):
    """Every artifact under artifacts/ is whole; anything half-written carries a dot-prefixed .tmp name."""
    art = Path(project) / "artifacts"
    for p in sorted(art.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(art).as_posix()
        if p.name.startswith(".") and not p.name.startswith(BOOKKEEPING):
            assert p.name.endswith(".tmp"), f"{rel}: a hidden file that is not a temp name"
            continue
        if any(part.startswith(".") for part in p.relative_to(art).parts[:-1]):
            continue                # inside a temporary folder (.<name>.staging.*, .<dir>.*.tmp)
        if p.suffix == ".deb":
            r = subprocess.run(["dpkg-deb", "-I", p], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            assert r.returncode == 0, f"{rel} is broken: {r.stderr}"
        elif p.suffix == ".json":
            data = json.loads(p.read_text())        # a stamp or tree.json: complete JSON
            if rel.startswith("images/"):
                assert data["id"].startswith("sha256:") and data["tags"], rel
        elif p.name.endswith(".zst"):
            r = subprocess.run(["zstd", "-tq", p], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            assert r.returncode == 0, f"{rel} is truncated: {r.stderr}"
        elif p.name.endswith(".tar"):
            r = subprocess.run(["tar", "-tf", p], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            assert r.returncode == 0, f"{rel} is truncated: {r.stderr}"


def image_exists(ref):
    return subprocess.run(["docker", "image", "inspect", ref], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


def wait_for_partial(run, target, size, since=0.0, timeout=300):
    """Wait until ``target`` is being written (its temp file, or itself, has ``size`` bytes, newer than
    ``since``), so a signal lands in the middle of the write."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in target.parent.iterdir():
            if target.name in p.name:
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue
                if st.st_size >= size and st.st_mtime > since:
                    return
        assert run.proc.poll() is None, f"doit ended first:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        time.sleep(0.02)
    raise AssertionError(f"{target} was not written within {timeout}s")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A project copy whose engine-free tasks (tree, CNI, debs) and base image are done, shared by the
    tests below that only need that much (each writes its own config; packaging kubernetes-cni with xz
    alone takes ~25 s, so it is done once)."""
    proj = copy_project(tmp_path_factory.mktemp("prepared") / "project")
    cfg = proj / "prepared.yaml"
    cfg.write_text(project_config("dindind-inc/prep-node", "dindind-inc/prep-cluster"))
    doit(proj, f"config={cfg}", "build:base", *(f"build:deb-{d}" for d in DEBS))
    return proj


# ------------------------------------------------------------------ 6. interrupted builds

def test_killed_build_leaves_nothing_truncated_and_the_next_run_recovers(tmp_path, janitor):
    proj = copy_project(tmp_path / "kill")
    cfg = proj / "kill.yaml"
    cfg.write_text(project_config("dindind-inc/kill-node", "dindind-inc/kill-cluster"))
    janitor.image(f"dindind-inc/kill-node:{TAG}", f"dindind-inc/kill-cluster:{TAG}")
    archive = proj / "artifacts" / "images" / "node-image.tar.zst"

    # kill -9 the whole process group (doit, zstd) while it writes the node archive
    run = Background(proj, f"config={cfg}", "build", name="killed")
    try:
        run.wait_for(".  build:node-archive")
        wait_for_partial(run, archive, 1 << 20)
        run.signal_group(signal.SIGKILL)
        assert run.wait(60) == -signal.SIGKILL
    finally:
        run.kill()
    janitor.stamps(proj)
    assert not (proj / "artifacts" / "images" / "cluster.json").exists()
    assert_no_accepted_partial(proj)
    assert len(list((proj / "artifacts" / "debs").glob("*.deb"))) == len(DEBS)

    debs = {p.name: p.read_bytes() for p in (proj / "artifacts" / "debs").glob("*.deb")}
    r = doit(proj, f"config={cfg}", "build")
    janitor.stamps(proj)
    ran = executed(r.stdout)
    assert "build:node-archive" in ran and "build:cluster" in ran
    # doit's sqlite backend records task results only when a run ends, so after kill -9 the next run
    # repeats the finished tasks too; what they made before the kill was whole and is made again the same
    assert {p.name: p.read_bytes() for p in (proj / "artifacts" / "debs").glob("*.deb")} == debs
    assert_no_accepted_partial(proj)
    assert subprocess.run(["zstd", "-tq", archive]).returncode == 0
    assert image_exists(f"dindind-inc/kill-cluster:{TAG}")
    assert executed(doit(proj, f"config={cfg}", "build").stdout) == []

    # Ctrl-C (SIGINT to the group) during the same step, after a template edit
    unit = proj / "templates" / "node" / "files" / "etc" / "systemd" / "journald.conf.d" / "10-dindind.conf"
    unit.write_text(unit.read_text() + "# interrupted edit\n")
    old_archive = archive.read_bytes()
    stale = {p.name for p in (proj / "artifacts" / "images").iterdir() if p.name.endswith(".tmp")}   # kill -9's
    run = Background(proj, f"config={cfg}", "build", name="interrupted")
    try:
        run.wait_for(".  build:node-archive")
        wait_for_partial(run, archive, 1 << 20, since=archive.stat().st_mtime)
        run.signal_group(signal.SIGINT)
        assert run.wait(120) != 0
    finally:
        run.kill()
    janitor.stamps(proj)
    assert_no_accepted_partial(proj)
    leftovers = [p.name for p in (proj / "artifacts" / "images").iterdir()
                 if p.name.endswith(".tmp") and p.name not in stale]
    assert not leftovers, f"Ctrl-C left temp files behind: {leftovers}"
    assert "KeyboardInterrupt" in run.stderr or "ERROR:" in run.stderr, run.stderr
    assert archive.read_bytes() == old_archive          # the old archive, whole, or ...
    r = doit(proj, f"config={cfg}", "build")            # ... replaced by the next run
    janitor.stamps(proj)
    assert {"build:node-archive", "build:cluster"} <= set(executed(r.stdout))
    assert archive.read_bytes() != old_archive
    assert subprocess.run(["zstd", "-tq", archive]).returncode == 0
    assert executed(doit(proj, f"config={cfg}", "build").stdout) == []


# ------------------------------------------------------------------ 7. two builds at once

def test_two_builds_at_once_second_waits_and_both_succeed(prepared, janitor):
    proj = prepared
    cfg = proj / "two.yaml"
    cfg.write_text(project_config("dindind-inc/lock-node", "dindind-inc/lock-cluster"))
    janitor.image(f"dindind-inc/lock-node:{TAG}", f"dindind-inc/lock-cluster:{TAG}")
    first = Background(proj, f"config={cfg}", "build", name="first")
    second = None
    try:
        first.wait_for(".  build:")               # the first run holds the lock and is working
        second = Background(proj, f"config={cfg}", "build", name="second")
        # read-only tasks never wait behind the build
        for ro in (["cluster:status"], ["release:verify", "--dir", str(proj)]):
            r = doit(proj, f"config={cfg}", *ro, check=False, timeout=60)
            assert "waiting for it to finish" not in r.stderr, r.stderr
        status = doit(proj, f"config={cfg}", "cluster:status", timeout=60)
        # other clusters may exist on a shared engine: either answer is a status listing
        assert any(line == "no dindind clusters" or line.startswith("NAME ") for line in status.stdout.splitlines()), status.stdout
        assert first.proc.poll() is None          # ... and they answered while the build was still running
        assert first.wait() == 0, first.stdout[-3000:] + first.stderr[-3000:]
        assert second.wait() == 0, second.stdout[-3000:] + second.stderr[-3000:]
    finally:
        first.kill()
        if second:
            second.kill()
    janitor.stamps(proj)
    waiting = [line for line in second.stderr.splitlines() if "waiting for it to finish" in line]
    assert len(waiting) == 1, second.stderr
    assert f"another doit run (pid {first.pid})" in waiting[0]
    assert "artifacts/.lock" in waiting[0]
    assert "build:cluster" in executed(first.stdout)
    assert executed(second.stdout) == []          # it saw the first run's finished work
    third = doit(proj, f"config={cfg}", "build")  # and the dependency database is intact
    assert executed(third.stdout) == []
    db = subprocess.run(["python3", "-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]);"
                         "print(c.execute('pragma integrity_check').fetchone()[0])",
                         proj / "artifacts" / ".doit.db"], text=True, stdout=subprocess.PIPE)
    assert db.stdout.strip() == "ok"


# ------------------------------------------------------------------ 8. bad configs

BAD_CONFIG = """\
kubernetes:
  source: dir
  versoin: v1.31.2
node:
  repository: Not A Repo
  tag: one
  preload: maybe
  tag: two
cluster:
  workers: 99
  pod_subnet: 10.244.0.0/33
bogus: {}
"""
BAD_KEYS = ("kubernetes.versoin: unknown key", "kubernetes.path: required", "node.repository: 'Not A Repo'",
            "node.preload: expected boolean", "cluster.workers: 99", "cluster.pod_subnet: '10.244.0.0/33'",
            "bogus: unknown key", "node.tag: duplicate key (line 8)")


def _check_bad_config_run(r, name):
    assert r.returncode != 0
    no_traceback(r)
    assert r.stderr.startswith(f"ERROR: invalid config {name}"), r.stderr
    assert len(error_lines(r.stderr)) == 1
    for key in BAD_KEYS:
        assert key in r.stderr, key
    assert r.stdout.strip() == ""                  # no task ran


def test_bad_config_through_doit_lists_every_problem_and_builds_nothing(tmp_path, built):
    proj = copy_project(tmp_path / "badcfg")
    (proj / "bad.yaml").write_text(BAD_CONFIG)
    _check_bad_config_run(doit(proj, "config=bad.yaml", "build", check=False), "bad.yaml")
    _check_bad_config_run(doit(proj, "build", env={"DINDIND_CONFIG": "bad.yaml"}, check=False), "bad.yaml")
    left = [p.relative_to(proj).as_posix() for p in (proj / "artifacts").rglob("*")]
    assert left in ([], ["artifacts/.lock"]), left      # no debs, no stamps, no tree, no doit db
    # in a built checkout: nothing touched
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_CONFIG)
    before = artifact_mtimes(built.path)
    _check_bad_config_run(doit(built.path, "build", env={"DINDIND_CONFIG": str(bad)}, check=False), str(bad))
    assert artifact_mtimes(built.path) == before


# ------------------------------------------------------------------ 9. engine unreachable

def test_engine_unreachable_one_line_saying_how_to_start_one(prepared):
    proj = prepared
    cfg = proj / "noengine.yaml"
    cfg.write_text(project_config("dindind-inc/noengine-node", "dindind-inc/noengine-cluster"))
    # the tree, CNI, debs and the base stamp are done (fixture); then the engine goes away
    assert executed(doit(proj, f"config={cfg}", "build:base", *(f"build:deb-{d}" for d in DEBS)).stdout) == []
    gone = {"DOCKER_HOST": "unix:///nonexistent.sock"}
    for args in (["build:base"], ["build"]):
        r = doit(proj, f"config={cfg}", *args, env=gone, check=False)
        assert r.returncode != 0
        no_traceback(r)
        errors = error_lines(r.stderr)
        assert len(errors) == 1, r.stderr
        assert "cannot reach the Docker engine at unix:///nonexistent.sock" in errors[0]
        assert "start one" in r.stderr and "dockerd" in r.stderr
        assert executed(r.stdout) == ["build:base"], r.stdout     # kubernetes, cni, debs: up to date
    base = (proj / "artifacts" / "images" / "base.json").read_text()
    doit(proj, f"config={cfg}", "build:base")                       # the engine is back: fine again
    assert (proj / "artifacts" / "images" / "base.json").read_text() == base


# ------------------------------------------------------------------ 10. a malformed Kubernetes tree

def test_malformed_dir_tree_names_every_bad_file(tmp_path, built):
    tree = copy_sample_tree(built.path, tmp_path / "broken")
    sbin = tree / "kubernetes" / "server" / "bin"
    (tree / "kubernetes" / "version").unlink()
    (sbin / "kube-proxy.docker_tag").write_text("not a tag!\n")
    data = (sbin / "kube-scheduler.tar").read_bytes()
    (sbin / "kube-scheduler.tar").write_bytes(data[: len(data) // 3])           # truncated docker-archive
    proj = copy_project(tmp_path / "malformed")
    cfg = proj / "c.yaml"
    cfg.write_text(project_config("dindind-inc/bad-node", "dindind-inc/bad-cluster", dir_source_yaml(tree)))
    r = doit(proj, f"config={cfg}", "build", check=False)
    assert r.returncode != 0
    no_traceback(r)
    errors = error_lines(r.stderr)
    assert len(errors) == 1 and "bad Kubernetes tree" in errors[0], r.stderr
    assert f"{tree}/kubernetes/version: missing" in r.stderr
    assert f"{sbin}/kube-proxy.docker_tag: 'not a tag!'" in r.stderr
    assert f"{sbin}/kube-scheduler.tar" in r.stderr
    assert executed(r.stdout) == ["build:kubernetes"]
    assert not (proj / "artifacts" / "kubernetes" / "tree.json").exists()
    assert not list((proj / "artifacts").rglob("*.deb"))


# ------------------------------------------------------------------ 11. a failing docker build

def test_docker_build_failure_shows_the_failing_step_and_the_log_tail(prepared, janitor):
    proj = prepared
    cfg = proj / "buildfail.yaml"
    cfg.write_text(SAMPLE + "node:\n  repository: dindind-inc/fail-node\n  packages: [dindind-no-such-package]\n"
                   "cluster:\n  repository: dindind-inc/fail-cluster\n")
    janitor.image(f"dindind-inc/fail-node:{TAG}", f"dindind-inc/fail-cluster:{TAG}")
    r = doit(proj, f"config={cfg}", "build", check=False)
    assert r.returncode != 0
    no_traceback(r)
    errors = error_lines(r.stderr)
    assert len(errors) == 1, r.stderr
    assert errors[0].startswith(f"build:node: ERROR: docker build of dindind-inc/fail-node:{TAG} failed at Step ")
    assert " : RUN apt-get update" in errors[0] and "returned a non-zero code: 100" in errors[0]
    assert "Unable to locate package dindind-no-such-package" in r.stderr      # the log's tail
    assert "node.build.log" in r.stderr
    assert "build:cluster" not in executed(r.stdout)
    node_stamp = proj / "artifacts" / "images" / "node.json"
    assert not node_stamp.exists() or "fail-node" not in node_stamp.read_text()
    assert not image_exists(f"dindind-inc/fail-node:{TAG}")
    leftover = subprocess.run(["docker", "ps", "-aq", "--filter", "ancestor=dindind-inc/fail-node"],
                              text=True, stdout=subprocess.PIPE).stdout.split()
    assert not leftover
