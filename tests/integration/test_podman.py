"""Engines besides the host's dockerd, for real: Debian's Podman serving its Docker-compatible API
(``podman system service``), rootful and rootless, each on a socket of its own with storage of its own.

dindind tells them apart (dindind.docker.engine.kind) and refuses cluster:up on a rootless engine in
one line, before the build it depends on and before anything is created.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from dindind.docker import engine

from conftest import copy_project, doit

pytestmark = pytest.mark.engine

NOBODY = 65534


def _serve(argv, sock, env, log, preexec=None):
    """``podman system service`` on ``sock``, in its own process group; the process once it answers."""
    with open(log, "w") as out:
        proc = subprocess.Popen(argv + ["system", "service", "--time=0", f"unix://{sock}"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=preexec)
    for _ in range(300):
        if Path(sock).exists() and subprocess.run(["curl", "-sf", "--unix-socket", sock, "http://d/_ping"],
                                                  stdout=subprocess.DEVNULL).returncode == 0:
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGTERM)
    raise AssertionError(f"podman system service did not answer on {sock}:\n{Path(log).read_text()[-2000:]}")


def _as_nobody():
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


@pytest.fixture(scope="module")
def podman():
    """{"rootful": socket, "rootless": socket} of two Podman services (rootless: run as nobody)."""
    assert shutil.which("podman"), "podman is missing: ./bootstrap installs it (Debian's podman)"
    # not under pytest's 0700 temporary directory: the rootless service's user must reach its own files
    top = Path(tempfile.mkdtemp(prefix="dindind-podman-"))
    top.chmod(0o755)
    procs = []
    try:
        rootful = top / "rootful.sock"
        procs.append(_serve(["podman", "--root", str(top / "root"), "--runroot", str(top / "run")], str(rootful),
                            dict(os.environ), top / "rootful.log"))
        home = top / "home"
        home.mkdir()
        os.chown(home, NOBODY, NOBODY)
        rootless = home / "rootless.sock"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "XDG_RUNTIME_DIR": str(home)}
        procs.append(_serve(["podman"], str(rootless), env, top / "rootless.log", preexec=_as_nobody))
        yield {"rootful": str(rootful), "rootless": str(rootless), "pid": procs[0].pid,
               "cli": ["podman", "--root", str(top / "root"), "--runroot", str(top / "run")]}
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=60)
        # rootless Podman leaves a pause process holding its user namespace, outside the service's group
        pause = top / "home" / "libpod" / "tmp" / "pause.pid"
        if pause.exists():
            try:
                os.kill(int(pause.read_text().strip()), signal.SIGKILL)
            except (ValueError, ProcessLookupError):
                pass
        # the rootful store's overlay mounts go first, or its directories cannot be removed
        subprocess.run(["podman", "--root", str(top / "root"), "--runroot", str(top / "run"), "system", "reset",
                        "--force"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(top, ignore_errors=True)


def podman_version():
    return subprocess.run(["podman", "version", "--format", "{{.Client.Version}}"], stdout=subprocess.PIPE,
                          text=True, check=True).stdout.strip()


def test_the_host_engine_is_rootful_docker():
    k = engine.kind()
    assert k.name == "docker" and not k.rootless
    assert k.version == json.loads(subprocess.run(["docker", "version", "--format", "{{json .Server.Version}}"],
                                                  stdout=subprocess.PIPE, check=True).stdout)


@pytest.mark.parametrize("which", ["rootful", "rootless"])
def test_podman_is_told_apart_rootful_and_rootless(podman, monkeypatch, which):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{podman[which]}")
    assert engine.kind() == engine.Kind("podman", podman_version(), which == "rootless")


@pytest.mark.parametrize("which, says", [
    ("rootless", "_cluster:engine: ERROR: cluster:up needs a rootful engine; the one at unix://{sock} is rootless Podman "),
    ("rootful", "_cluster:engine: ERROR: cluster:up needs Docker; the engine at unix://{sock} is Podman "),
], ids=["rootless", "rootful"])
def test_cluster_up_on_podman_is_refused_before_the_build_and_creates_nothing(podman, tmp_path, which, says):
    project = copy_project(tmp_path / "project")
    sock = podman[which]
    run = doit(project, "cluster:up", "--name", "t-podman", env={"DOCKER_HOST": f"unix://{sock}"}, check=False)
    assert run.returncode != 0 and "Traceback" not in run.stdout + run.stderr
    errors = [line for line in run.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and errors[0].startswith(says.format(sock=sock)), run.stderr
    assert "podman run --privileged" in run.stderr if which == "rootful" else "rootful engine" in run.stderr
    assert ".  build" not in run.stdout                     # refused before the build it depends on
    for what in ("containers/json?all=1", "images/json", "volumes"):
        out = subprocess.run(["curl", "-sf", "--unix-socket", sock, f"http://d/{what}"], stdout=subprocess.PIPE,
                             check=True).stdout
        assert json.loads(out) in ([], {"Volumes": [], "Warnings": []}, {"Volumes": None, "Warnings": None}), what
    # nothing built: doit's database and the build lock (cluster:up depends on the build) only
    assert {p.name for p in (project / "artifacts").iterdir()} <= {".doit.db", ".lock"}


def _limits(pid):
    """{"nofile": hard, "nproc": hard} of process ``pid`` (/proc/PID/limits)."""
    rows = {"Max open files": "nofile", "Max processes": "nproc"}
    found = {}
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        for label, name in rows.items():
            if line.startswith(label):
                found[name] = line[len(label):].split()[1]
    return found


def test_the_cluster_image_runs_under_rootful_podman(built, podman, tmp_path):
    """The working path on Podman: the cluster image Docker built, loaded into Podman and run by hand
    (one `podman run` is a whole cluster), its node Ready from inside and through the published port."""
    image = built.stamp("cluster")["tags"][0]
    cli = podman["cli"]
    subprocess.run(["docker", "save", "-o", tmp_path / "cluster.tar", image], check=True)
    subprocess.run(cli + ["load", "-q", "-i", tmp_path / "cluster.tar"], check=True, stdout=subprocess.DEVNULL)
    # Podman raises nofile and nproc to its defaults (over a million); where the host withholds
    # CAP_SYS_RESOURCE (this VM) that fails, so the container gets the service's own limits
    ulimits = [f"--ulimit={k}={v}:{v}" for k, v in _limits(podman["pid"]).items() if v != "unlimited"]
    name = f"t-podman-{os.getpid()}"
    try:
        subprocess.run(cli + ["run", "-d", "--name", name, "--privileged", "--tmpfs", "/run", "--tmpfs", "/run/lock",
                              "--tmpfs", "/tmp", "-v", f"{name}:/var/lib/docker", "-p", "127.0.0.1::6443", *ulimits,
                              built.stamp("cluster")["id"], "--name", "t-podman", "--workers", "0"],
                       check=True, stdout=subprocess.DEVNULL)
        logs = ""
        for _ in range(600):
            logs = subprocess.run(cli + ["logs", name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True).stdout
            if "dindind: cluster ready" in logs or "dindind: cluster failed" in logs:
                break
            time.sleep(1)
        assert "dindind: cluster ready" in logs, logs[-3000:]
        port = subprocess.run(cli + ["port", name, "6443/tcp"], stdout=subprocess.PIPE, text=True,
                              check=True).stdout.split(":")[-1].strip()
        kubeconfig = subprocess.run(cli + ["exec", name, "dindind", "kubeconfig", "--server",
                                           f"https://127.0.0.1:{port}"], stdout=subprocess.PIPE, check=True).stdout
        from dindind.cluster import api

        assert api.node_readiness(kubeconfig) == {"t-podman-control-plane": True}
    finally:
        subprocess.run(cli + ["rm", "-f", "-v", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(cli + ["volume", "rm", "-f", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
