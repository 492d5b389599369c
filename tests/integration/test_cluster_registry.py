"""The local registry (the cluster config's ``registry:``) against the real engine, with the sample Kubernetes.

A nested cluster (control plane only) with a registry on a free host port:
the registry container runs locked down beside the node, at the node
subnet's .253, ``docker push localhost:PORT/...`` from the host reaches it
through both hops, the node's containerd pulls ``localhost:PORT/...`` from
it through hosts.toml, and the ConfigMap kube-public/local-registry-hosting
says where it is. A non-nested one: the registry on the host's engine,
kept over cluster:stop/start with what was pushed. ``cluster:down`` removes
the container and its volume; refused and failed ups leave nothing.
(A pod running a pushed image: tests/integration/test_registry.py, on a
real cluster.)
"""

import io
import json
import os
import socket
import subprocess
import tarfile
import urllib.request

import pytest
import yaml

from dindind.cluster import api, host
from dindind.docker import containers

from conftest import doit
from integration.test_cluster import assert_gone, kubeconfig, labelled

pytestmark = pytest.mark.engine

NESTED = f"t-reg-{os.getpid()}"
DIRECT = f"t-reg-direct-{os.getpid()}"
BAD = f"t-reg-bad-{os.getpid()}"
TINY = f"dindind-test/tiny-{os.getpid()}:1"
CONFIG = """\
apiVersion: dindind.dev/v1alpha1
kind: Cluster
name: {name}
nodes: [{{role: control-plane}}]
registry: {{hostPort: {port}}}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def docker(*args, check=True):
    r = subprocess.run(["docker", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check:
        assert r.returncode == 0, f"docker {' '.join(args)}: {r.stdout[-3000:]}"
    return r


@pytest.fixture(scope="module")
def tiny():
    """A one-file image made on the host (docker import: no registry, no base)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        data = b"pushed from the host\n"
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    r = subprocess.run(["docker", "import", "-", TINY], input=buf.getvalue(), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT)
    assert r.returncode == 0, r.stdout
    yield TINY
    docker("rmi", "-f", TINY, check=False)


def push(tiny, port, repo):
    """docker push of the tiny image as localhost:PORT/REPO:1 (the local tag removed again)."""
    ref = f"localhost:{port}/{repo}:1"
    docker("tag", tiny, ref)
    try:
        return docker("push", ref, check=False)
    finally:
        docker("rmi", ref, check=False)


def catalog(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/_catalog", timeout=10) as resp:
        return json.load(resp)["repositories"]


@pytest.fixture(scope="module")
def nested(built, tmp_path_factory):
    d = tmp_path_factory.mktemp("registry")
    port = free_port()
    path = d / "cluster.yaml"
    path.write_text(CONFIG.format(name=NESTED, port=port))
    run = built.doit("cluster:up", "--config", str(path), timeout=600, check=False)
    try:
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
        yield {"run": run, "port": port}
    finally:
        down = built.doit("cluster:down", "--name", NESTED, check=False)
        assert down.returncode == 0, down.stdout + down.stderr
        assert_gone(NESTED)


def inner_inspect(top, name):
    _, text = containers.exec_in(top, ["docker", "inspect", name])
    return json.loads(text)[0]


def test_up_says_where_to_push(nested):
    port = nested["port"]
    assert " ✓ Starting the local registry" in nested["run"].stdout
    assert " ✓ Publishing the local registry" in nested["run"].stdout
    assert f"  registry 127.0.0.1:{port}: docker push localhost:{port}/IMAGE; pods pull localhost:{port}/IMAGE" \
        in nested["run"].stdout, nested["run"].stdout


def test_the_registry_runs_locked_down_beside_the_node_at_the_253(nested):
    top = f"dindind-{NESTED}"
    info = inner_inspect(top, f"{NESTED}-registry")
    assert info["State"]["Running"]
    hc = info["HostConfig"]
    assert hc["ReadonlyRootfs"] is True and hc["CapDrop"] == ["ALL"] and "no-new-privileges" in hc["SecurityOpt"]
    assert not hc.get("Privileged") and not hc.get("CapAdd")
    assert info["Config"]["User"] == "docker-registry"
    assert info["NetworkSettings"]["Networks"][f"dindind-{NESTED}"]["IPAddress"] == "172.30.0.253"
    volumes = {m["Destination"]: m for m in info["Mounts"]}
    assert volumes["/var/lib/docker-registry"]["Name"] == f"{NESTED}-registry"
    assert {m["Type"] for m in info["Mounts"]} == {"volume"}     # no anonymous volumes of the node image
    # the registry's own process, as its own user, without capabilities
    _, status = containers.exec_in(top, ["docker", "exec", f"{NESTED}-registry", "cat", "/proc/1/status"])
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["CapEff"].strip() == "0" * 16 and fields["Uid"].split()[0] != "0"
    # the host publishes the port on loopback only
    bindings = containers.inspect_container(top)["NetworkSettings"]["Ports"][f"{nested['port']}/tcp"]
    assert [b["HostIp"] for b in bindings] == ["127.0.0.1"]


def test_a_push_from_the_host_reaches_it_and_the_node_pulls_it_by_the_same_name(nested, tiny):
    port = nested["port"]
    r = push(tiny, port, "dindind-test/tiny")
    assert r.returncode == 0, r.stdout
    assert "dindind-test/tiny" in catalog(port)
    sh = host.Shell(NESTED)
    node = f"{NESTED}-control-plane"
    _, hosts = sh.run(node, ["cat", f"/etc/containerd/certs.d/localhost:{port}/hosts.toml"])
    assert 'server = "http://172.30.0.253:5000"' in hosts
    # containerd resolves localhost:PORT through hosts.toml (as the CRI does for the kubelet) over http
    ref = f"localhost:{port}/dindind-test/tiny:1"
    code, out = sh.run(node, ["ctr", "-n", "k8s.io", "images", "pull", "--hosts-dir", "/etc/containerd/certs.d",
                              ref], check=False)
    assert code == 0, out
    _, listed = sh.run(node, ["ctr", "-n", "k8s.io", "images", "ls", "-q"])
    assert ref in listed.split()


def test_the_local_registry_hosting_configmap_says_where_it_is(built, nested):
    status, cm = api.get(kubeconfig(built, NESTED).read_bytes(),
                         "/api/v1/namespaces/kube-public/configmaps/local-registry-hosting")
    assert status == 200, cm
    assert yaml.safe_load(cm["data"]["localRegistryHosting.v1"]) == {
        "host": f"localhost:{nested['port']}", "hostFromClusterNetwork": "172.30.0.253:5000"}


def test_cluster_logs_keep_the_registrys_log_and_treat_it_as_no_node(built, nested):
    built.doit("cluster:logs", "--name", NESTED)
    logs = built.path / "artifacts" / "clusters" / NESTED / "logs"
    assert "listening on" in (logs / f"{NESTED}-registry" / "registry.log").read_text()
    assert not (logs / f"{NESTED}-registry" / "kubelet.log").exists()
    assert (logs / f"{NESTED}-control-plane" / "kubelet.log").is_file()


def test_non_nested_the_registry_is_on_the_hosts_engine_kept_over_stop_and_start_and_removed_by_down(
        built, tmp_path, tiny):
    cfg = tmp_path / "direct.yaml"
    cfg.write_text(built.config.read_text().replace("cluster:\n", "cluster:\n  nested: false\n", 1))
    port = free_port()
    path = tmp_path / "cluster.yaml"
    path.write_text(CONFIG.format(name=DIRECT, port=port))
    up = doit(built.path, f"config={cfg}", "cluster:up", "--config", str(path), timeout=600, check=False)
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        info = containers.inspect_container(f"{DIRECT}-registry")
        assert info["HostConfig"]["ReadonlyRootfs"] and info["HostConfig"]["CapDrop"] == ["ALL"]
        assert [b["HostIp"] for b in info["NetworkSettings"]["Ports"]["5000/tcp"]] == ["127.0.0.1"]
        assert info["NetworkSettings"]["Networks"][f"dindind-{DIRECT}"]["IPAddress"] == "172.30.0.253"
        r = push(tiny, port, "dindind-test/direct")
        assert r.returncode == 0, r.stdout
        found = labelled(DIRECT)
        assert len(found["containers"]) == 2 and f"{DIRECT}-registry" in docker(
            "volume", "ls", "-q", "--filter", f"label=io.dindind.cluster={DIRECT}").stdout.split()
        # stop stops it with the nodes; start brings it back with what was pushed
        doit(built.path, f"config={cfg}", "cluster:stop", "--name", DIRECT)
        assert containers.inspect_container(f"{DIRECT}-registry")["State"]["Running"] is False
        doit(built.path, f"config={cfg}", "cluster:start", "--name", DIRECT, timeout=600)
        assert containers.inspect_container(f"{DIRECT}-registry")["State"]["Running"] is True
        assert "dindind-test/direct" in catalog(port)
    finally:
        down = doit(built.path, f"config={cfg}", "cluster:down", "--name", DIRECT, check=False)
    assert down.returncode == 0, down.stdout + down.stderr
    assert_gone(DIRECT)
    assert docker("volume", "inspect", f"{DIRECT}-registry", check=False).returncode != 0
    assert docker("inspect", f"{DIRECT}-registry", check=False).returncode != 0


def test_refused_and_failed_ups_leave_nothing(built, tmp_path):
    path = tmp_path / "bad.yaml"
    # the API server's port: refused when the option is parsed, before the build runs
    path.write_text(CONFIG.format(name=BAD, port=6443))
    run = built.doit("cluster:up", "--config", str(path), check=False, timeout=300)
    assert run.returncode != 0
    out = run.stdout + run.stderr
    assert "registry.hostPort: 6443 is the API server's port" in out and "Traceback" not in out
    assert_gone(BAD)
    # a port in use on the host: one line naming it, nothing created
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path.write_text(CONFIG.format(name=BAD, port=port))
        run = built.doit("cluster:up", "--config", str(path), check=False, timeout=300)
    assert run.returncode != 0
    assert f"registry: 127.0.0.1:{port}: the host port is not free" in run.stderr, run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    assert_gone(BAD)
    # a bring-up failing after the registry started (containerd refuses a patch): rolled back, non-nested too
    cfg = tmp_path / "direct.yaml"
    cfg.write_text(built.config.read_text().replace("cluster:\n", "cluster:\n  nested: false\n", 1))
    path.write_text(CONFIG.format(name=BAD, port=free_port()) + "containerdConfigPatches: ['oom_score = \"high\"']\n")
    for args in ((), (f"config={cfg}",)):
        run = doit(built.path, *(args or (f"config={built.config}",)), "cluster:up", "--config", str(path),
                   check=False, timeout=600)
        assert run.returncode != 0, run.stdout
        assert " ✓ Starting the local registry" in run.stdout, run.stdout + run.stderr
        assert "Traceback" not in run.stdout + run.stderr
        assert_gone(BAD)
        assert docker("volume", "inspect", f"{BAD}-registry", check=False).returncode != 0
