"""One `docker run` of the cluster image is a whole cluster (issue 14), done by hand as a user would.

No cluster:up here: the flags come from `python -m dindind run-flags`, the cluster from the image's
baked defaults (or the arguments after it), and everything else through `docker exec C dindind ...`.
The figures (docker run -> healthy, docker start -> healthy) are printed (pytest -s).
"""

import json
import os
import shlex
import subprocess
import sys
import time

import pytest

from dindind.cluster import api, host
from dindind.cluster.actions import waitready

pytestmark = pytest.mark.engine

TOP = f"t14-run-{os.getpid()}"     # per test session: a run beside CI's never removes its container
DEFAULT_NODES = ["dindind-control-plane", "dindind-worker", "dindind-worker2"]   # the config's defaults
FIGURES = {}
KUBELET_V4 = "  - name: v\n    value: \"4\"\n"     # --kubelet-arg=--v=4 in the rendered kubeadm config


def docker(*args, check=True):
    r = subprocess.run(["docker", *args], text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if check and r.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({r.returncode}):\n{r.stdout}")
    return r


def dindind_cli(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "dindind", *args], text=True, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE)
    if check and r.returncode != 0:
        raise AssertionError(f"python -m dindind {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
    return r


def health(name):
    return json.loads(docker("inspect", name).stdout)[0]["State"].get("Health", {}).get("Status")


def wait_health(name, want, timeout=600):
    """Seconds until the container's health is ``want`` (fails if it exits or the time runs out)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        state = json.loads(docker("inspect", name).stdout)[0]["State"]
        if state.get("Health", {}).get("Status") == want:
            return time.monotonic() - t0
        assert state["Running"], f"{name} exited ({state['ExitCode']}):\n{docker('logs', name).stdout[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"{name} not {want} within {timeout}s:\n{docker('logs', name).stdout[-3000:]}")


def inner_nodes(name):
    out = docker("exec", name, "docker", "ps", "-a", "--format", "{{.Names}} {{.State}}").stdout.split("\n")
    return dict(line.split() for line in out if line.strip())


@pytest.fixture(scope="module")
def image(built):
    return built.stamp("cluster")["tags"][0]


@pytest.fixture(scope="module")
def flags(image):
    return shlex.split(dindind_cli("run-flags", image).stdout)


@pytest.fixture(scope="module")
def running(image, flags):
    """`docker run -d --name t14-run-PID FLAGS -p 127.0.0.1::6443 IMAGE`: no arguments after the image."""
    docker("rm", "-f", "-v", TOP, check=False)
    t0 = time.monotonic()
    docker("run", "-d", "--name", TOP, *flags, "-p", "127.0.0.1::6443", image)
    early = docker("exec", TOP, "dindind", "kubeconfig", check=False)   # the node image alone loads for seconds
    try:
        wait_health(TOP, "healthy")
        FIGURES["docker run -> healthy"] = time.monotonic() - t0
        yield {"early": early}
    finally:
        docker("rm", "-f", "-v", TOP, check=False)


def test_flags_fit_this_engine(flags):
    assert flags[-1] == "--stop-timeout=60" and "--tmpfs" in flags
    assert "--privileged" in flags or "--cap-add=ALL" in flags


def test_no_arguments_bring_up_the_default_cluster_and_it_turns_healthy(running):
    assert health(TOP) == "healthy"
    assert sorted(inner_nodes(TOP)) == DEFAULT_NODES
    logs = docker("logs", TOP).stdout
    assert "dindind: cluster ready" in logs and " ✓ Joining worker nodes" in logs
    print(f"\nFIGURE docker run -> healthy: {FIGURES['docker run -> healthy']:.1f}s")


def test_commands_before_ready_say_so(running):
    early = running["early"]
    assert early.returncode != 0
    assert "ERROR: the cluster is not ready (phase: starting)" in early.stdout, early.stdout


def test_kubeconfig_from_the_host_reaches_the_api(running, tmp_path):
    text = dindind_cli("kubeconfig", TOP).stdout
    server, *_ = api.parse_kubeconfig(text.encode())
    port = json.loads(docker("inspect", TOP).stdout)[0]["NetworkSettings"]["Ports"]["6443/tcp"][0]["HostPort"]
    assert server == f"https://127.0.0.1:{port}"          # found from the container's published port
    waitready.wait(text.encode(), DEFAULT_NODES, timeout=60)
    # and by hand inside, with the address given
    by_hand = docker("exec", TOP, "dindind", "kubeconfig", "--server", f"https://127.0.0.1:{port}").stdout
    assert api.node_readiness(by_hand.encode()) == dict.fromkeys(DEFAULT_NODES, True)
    bad = docker("exec", TOP, "dindind", "kubeconfig", "--server", "http://x", check=False)
    assert bad.returncode == 1 and bad.stdout.count("\n") == 1


def test_status_e2e_and_logs_through_exec(running, tmp_path):
    status = docker("exec", TOP, "dindind", "status").stdout
    assert all(f"{n}" in status for n in DEFAULT_NODES) and " no\n" not in status
    # kubectl is on PATH with KUBECONFIG preset
    assert docker("exec", TOP, "sh", "-c", "command -v kubectl && echo $KUBECONFIG").stdout.split() == [
        "/usr/local/bin/kubectl", "/var/lib/dindind/kubeconfig"]
    e2e = docker("exec", TOP, "dindind", "e2e", "--focus", "Conformance")
    assert "JUnit XML: junit_01.xml" in e2e.stdout
    docker("cp", f"{TOP}:/var/lib/dindind/e2e", str(tmp_path / "e2e"))
    assert 'failures="0"' in (tmp_path / "e2e" / "junit_01.xml").read_text()
    assert docker("exec", TOP, "dindind", "e2e", "--focus", "(", check=False).returncode == 1
    docker("exec", TOP, "dindind", "logs")
    docker("cp", f"{TOP}:/var/lib/dindind/logs", str(tmp_path / "logs"))
    assert "kubelet" in (tmp_path / "logs" / "dindind-worker" / "kubelet.log").read_text()
    assert (tmp_path / "logs" / "dockerd.log").exists()


def test_unhealthy_when_the_api_stops_answering_and_healthy_again(running):
    docker("exec", TOP, "docker", "stop", "dindind-control-plane")
    try:
        wait_health(TOP, "unhealthy", timeout=120)
        assert docker("exec", TOP, "dindind", "health", check=False).returncode == 1
    finally:
        docker("exec", TOP, "docker", "start", "dindind-control-plane")
    wait_health(TOP, "healthy", timeout=120)


def test_stop_and_start_bring_the_same_cluster_back(running):
    before = docker("exec", TOP, "cat", "/var/lib/dindind/kubeconfig").stdout
    docker("stop", TOP)                         # the grace period is run-flags' --stop-timeout
    state = json.loads(docker("inspect", TOP).stdout)[0]["State"]
    logs = docker("logs", TOP).stdout
    assert state["ExitCode"] == 0 and "dindind: stopped 3 node(s)" in logs, logs[-2000:]
    t0 = time.monotonic()
    docker("start", TOP)
    wait_health(TOP, "healthy", timeout=300)
    FIGURES["docker start -> healthy"] = time.monotonic() - t0
    assert "restarting 3 existing node(s)" in docker("logs", TOP).stdout
    assert sorted(inner_nodes(TOP)) == DEFAULT_NODES
    # the same certificates: the kubeconfig from before the stop still works
    after = docker("exec", TOP, "cat", "/var/lib/dindind/kubeconfig").stdout
    assert after == before
    kc = host.container_kubeconfig(TOP).encode()
    assert api.node_readiness(kc) == dict.fromkeys(DEFAULT_NODES, True)
    print(f"\nFIGURE docker start -> healthy: {FIGURES['docker start -> healthy']:.1f}s "
          f"(first start {FIGURES['docker run -> healthy']:.1f}s)")


def test_rm_f_v_leaves_nothing_on_the_host(running):
    info = json.loads(docker("inspect", TOP).stdout)[0]
    volumes = [m["Name"] for m in info["Mounts"] if m["Type"] == "volume"]
    assert volumes
    # the nodes, their volumes and network live in the inner engine, on that volume: the host has
    # only the container (on the default bridge) and the volume
    assert list(info["NetworkSettings"]["Networks"]) == ["bridge"]
    docker("rm", "-f", "-v", TOP)
    assert docker("inspect", TOP, check=False).returncode != 0
    assert not set(volumes) & set(docker("volume", "ls", "-q").stdout.split())


def test_arguments_after_the_image_change_the_cluster(image, flags):
    name = f"t14-args-{os.getpid()}"
    docker("rm", "-f", "-v", name, check=False)
    try:
        docker("run", "-d", "--name", name, *flags, image, "--name", "t14-small", "--workers", "0",
               "--kubelet-arg=--v=4")
        wait_health(name, "healthy")
        assert sorted(inner_nodes(name)) == ["t14-small-control-plane"]
        conf = docker("exec", name, "docker", "exec", "t14-small-control-plane",
                      "cat", "/etc/dindind/kubeadm.conf").stdout
        assert KUBELET_V4 in conf, conf
    finally:
        docker("rm", "-f", "-v", name, check=False)


def test_bad_arguments_exit_at_once_with_one_line(image, flags):
    name = f"t14-bad-{os.getpid()}"
    docker("rm", "-f", "-v", name, check=False)
    try:
        r = docker("run", "--name", name, *flags, image, "--workers", "many", check=False)
        assert r.returncode == 2
        logs = docker("logs", name).stdout
        assert logs == ("ERROR: --workers: 'many' is not a whole number from 0 to 10 "
                        "(see `docker run --rm IMAGE --help`)\n"), logs
        unknown = docker("run", "--rm", image, "--bogus", check=False)
        assert unknown.returncode == 2 and unknown.stdout.startswith('ERROR: unknown argument "--bogus"')
        h = docker("run", "--rm", image, "--help")
        assert "--workers N" in h.stdout and "(default: 2)" in h.stdout
    finally:
        docker("rm", "-f", "-v", name, check=False)


def test_without_the_flags_it_names_what_is_missing_and_exits(image):
    r = docker("run", "--rm", image, check=False)
    assert r.returncode == 3
    assert r.stdout.startswith("ERROR: this container lacks CAP_SYS_ADMIN, CAP_NET_ADMIN"), r.stdout
    assert r.stdout.count("\n") == 1 and "run-flags" in r.stdout


def test_e2e_mode_exits_with_the_e2e_result_as_the_pod_manifest_runs_it(image, flags):
    name = f"t14-e2e-{os.getpid()}"
    docker("rm", "-f", "-v", name, check=False)
    try:
        r = docker("run", "--name", name, *flags, image, "--workers", "0", "--e2e", "--e2e-focus", "Conformance",
                   check=False)
        logs = docker("logs", name).stdout
        assert r.returncode == 0, logs[-3000:]
        assert "dindind: e2e finished: exit 0" in logs and "dindind: stopped 1 node(s)" in logs
        assert "JUnit XML: junit_01.xml" in logs
    finally:
        docker("rm", "-f", "-v", name, check=False)
