"""High availability on a real Kubernetes: 3 control planes + 1 worker behind the external load balancer.

The issue's acceptance test. A nested cluster from a cluster config with three
control planes and a worker comes up with every node Ready; the kubeconfig's
server (the port published on 127.0.0.1) reaches the API servers through the
load balancer. Then one control-plane node container is stopped (``docker
stop`` inside the cluster container's engine) and the API keeps answering
through the load balancer: ``kubectl get nodes`` and a ConfigMap created and
read back. The cluster also has the local registry: an image pushed from the
host runs as a pod on the worker. ``cluster:down`` leaves nothing.

The times (kubeadm init, each control-plane join, the worker join, Ready, the
first answer after the stop) are printed (``-s``). A failed bring-up keeps the
cluster (``--retain``) long enough to export its logs (``cluster:logs``) to a
folder the failure names.
"""

import json
import os
import re
import shutil
import subprocess
import time

import pytest


from integration.test_kubernetes import kubectl_bin, labelled
from integration.test_registry import busybox, free_port, push_and_run   # noqa: F401 (busybox: a fixture)

pytestmark = [pytest.mark.engine, pytest.mark.kubernetes]

NAME = f"t-ha-{os.getpid()}"
TOP = f"dindind-{NAME}"
LB = f"{NAME}-external-load-balancer"
CPS = [f"{NAME}-control-plane", f"{NAME}-control-plane2", f"{NAME}-control-plane3"]
WORKER = f"{NAME}-worker"
CONFIG = """\
apiVersion: dindind.dev/v1alpha1
kind: Cluster
name: {name}
nodes:
- role: control-plane
- role: control-plane
- role: control-plane
- role: worker
registry: {{hostPort: {port}}}
"""


def inner(*cmd, check=True):
    """A docker command in the cluster container's own engine."""
    r = subprocess.run(["docker", "exec", TOP, "docker", *cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=120)
    if check:
        assert r.returncode == 0, f"docker {' '.join(cmd)} in {TOP}: {r.stdout}"
    return r.stdout


def keep_logs(real, keep):
    """Export the cluster's logs (cluster:logs) into ``keep``; the path, or why not."""
    r = real.doit("cluster:logs", "--name", NAME, check=False, timeout=600)
    src = real.path / "artifacts" / "clusters" / NAME / "logs"
    if r.returncode != 0 or not src.is_dir():
        return f"(cluster:logs failed: {r.stdout[-1000:]}{r.stderr[-1000:]})"
    shutil.copytree(src, keep, dirs_exist_ok=True)
    return str(keep)


def describe_nodes():
    """``kubectl describe nodes`` and the kube-system pods, asked inside the first control plane (works while
    the host has no kubeconfig yet: a failed bring-up)."""
    kubectl = ["exec", CPS[0], "kubectl", "--kubeconfig=/etc/kubernetes/admin.conf", "--request-timeout=10s"]
    return (inner(*kubectl, "describe", "nodes", check=False)
            + inner(*kubectl, "get", "pods", "-A", "-o", "wide", check=False))


def timings(output):
    """{what: seconds} from cluster:up's status lines."""
    found = {}
    for pattern, key in ((r"✓ Starting control-plane \(([\d.]+)s\)", "init"),
                         (r"✓ Joining more control-plane nodes \(([\d.]+)s\)", "control-plane joins"),
                         (r"✓ Joining worker nodes \(([\d.]+)s\)", "worker join"),
                         (r"(\d+) nodes Ready after ([\d.]+)s", "Ready"),
                         (r"✓ Starting the external load balancer \(([\d.]+)s\)", "load balancer")):
        m = re.search(pattern, output)
        if m:
            found[key] = float(m.groups()[-1])
    for node, secs in re.findall(r"(\S+-control-plane\d) joined in ([\d.]+)s", output):
        found[f"join {node}"] = float(secs)
    return found


@pytest.fixture(scope="module")
def ha(real, tmp_path_factory, request):
    failed_before = request.session.testsfailed
    d = tmp_path_factory.mktemp("ha")
    path = d / "cluster.yaml"
    registry_port = free_port()
    path.write_text(CONFIG.format(name=NAME, port=registry_port))
    start = time.monotonic()
    up = real.doit("cluster:up", "--config", str(path), "--retain", timeout=1800, check=False)
    took = time.monotonic() - start
    kubeconfig = real.path / "artifacts" / "clusters" / NAME / "kubeconfig"
    kc = kubectl_bin(real)

    def kubectl(*args, check=True, timeout=60, input=None):
        r = subprocess.run([str(kc), f"--kubeconfig={kubeconfig}", "--request-timeout=10s", *args], text=True,
                           input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
        if check:
            assert r.returncode == 0, f"kubectl {' '.join(args)}: {r.stdout[-3000:]}{r.stderr[-3000:]}"
        return r

    state = {"kubectl": kubectl, "registry_port": registry_port, "up": up, "up_seconds": took, "timings": timings(up.stdout), "logs": d / "logs"}
    print(f"\nHA cluster:up took {took:.1f}s; {state['timings']}")
    try:
        if up.returncode != 0:
            where = keep_logs(real, d / "logs")
            described = describe_nodes()
            (d / "describe-nodes.txt").write_text(described)
            conditions = re.findall(r"(?m)^Name:\s+(\S+)|^\s+Ready\s+(\S+.*)$", described)
            pytest.fail(f"cluster:up failed (logs: {where}; {d / 'describe-nodes.txt'}; Ready: {conditions}):\n"
                        f"{up.stdout[-5000:]}{up.stderr[-3000:]}")
        yield state
    finally:
        if request.session.testsfailed > failed_before and up.returncode == 0:
            print(f"\nlogs of the cluster a test failed on: {keep_logs(real, d / 'logs')}")
        down = real.doit("cluster:down", "--name", NAME, check=False)
        assert down.returncode == 0, down.stdout + down.stderr
        assert labelled(NAME) == {"containers": [], "volumes": [], "networks": []}


def test_every_node_is_ready_behind_the_load_balancer(ha):
    nodes = json.loads(ha["kubectl"]("get", "nodes", "-o", "json").stdout)["items"]
    ready = {n["metadata"]["name"]: {c["type"]: c["status"] for c in n["status"]["conditions"]}["Ready"]
             for n in nodes}
    assert ready == {n: "True" for n in CPS + [WORKER]}, ready
    roles = {n["metadata"]["name"] for n in nodes if "node-role.kubernetes.io/control-plane" in n["metadata"]["labels"]}
    assert roles == set(CPS)
    # three etcd members, one per control plane; kube-apiserver on each (their mirror pods may lag a little)
    deadline = time.monotonic() + 60
    while True:
        pods = json.loads(ha["kubectl"]("get", "pods", "-n", "kube-system", "-o", "json").stdout)["items"]
        running = [((p["metadata"].get("labels") or {}).get("component"), p["spec"].get("nodeName"))
                   for p in pods if p["status"].get("phase") == "Running"]
        placed = {c: sorted(n for k, n in running if k == c) for c in ("etcd", "kube-apiserver")}
        if all(v == sorted(CPS) for v in placed.values()) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert placed == {"etcd": sorted(CPS), "kube-apiserver": sorted(CPS)}, running
    # the kubeconfig's server is the port published on 127.0.0.1, which reaches the load balancer
    server = ha["kubectl"]("config", "view", "-o", "jsonpath={.clusters[0].cluster.server}").stdout
    assert re.fullmatch(r"https://127\.0\.0\.1:\d+", server), server
    assert inner("port", LB, "6443/tcp").split()[0] == "0.0.0.0:6443"
    for cp in CPS:
        assert inner("port", cp).strip() == "", f"{cp} publishes a port: the API must go through {LB}"
    print(f"\nHA timings: {ha['timings']}")


def test_the_load_balancer_is_unprivileged_haproxy(ha):
    info = json.loads(inner("inspect", LB))[0]
    assert info["Config"]["User"] == "haproxy"
    assert info["HostConfig"]["CapDrop"] == ["ALL"] and not info["HostConfig"]["Privileged"]
    cfg = inner("exec", LB, "cat", "/etc/haproxy/haproxy.cfg")
    addresses = {cp: json.loads(inner("inspect", cp))[0]["NetworkSettings"]["Networks"][f"dindind-{NAME}"]["IPAddress"]
                 for cp in CPS}
    for cp, ip in addresses.items():
        assert f"server {cp} {ip}:6443" in cfg
    assert "uri /readyz" in cfg
    lb_ip = json.loads(inner("inspect", LB))[0]["NetworkSettings"]["Networks"][f"dindind-{NAME}"]["IPAddress"]
    assert lb_ip.endswith(".254")
    # every node's kubelet and kube-proxy talk to the load balancer, not to one control plane
    assert f"server: https://{lb_ip}:6443" in inner("exec", WORKER, "cat", "/etc/kubernetes/kubelet.conf")
    proxy = ha["kubectl"]("get", "configmap", "-n", "kube-system", "kube-proxy", "-o",
                          "jsonpath={.data.kubeconfig\\.conf}").stdout
    assert f"https://{lb_ip}:6443" in proxy


def test_an_image_pushed_to_the_registry_runs_on_the_worker(ha, busybox):
    # every node has the registry's hosts.toml; the hosting ConfigMap went in through the load balancer
    push_and_run(ha["kubectl"], ha["registry_port"], busybox, WORKER)


def test_the_api_keeps_answering_with_a_control_plane_stopped(ha):
    kubectl = ha["kubectl"]
    victim = CPS[0]            # the one that ran kubeadm init
    t0 = time.monotonic()
    inner("stop", "-t", "20", victim)
    stopped = time.monotonic()
    first = None
    last = ""
    while time.monotonic() - stopped < 90:
        r = kubectl("get", "nodes", "-o", "json", check=False)
        if r.returncode == 0:
            first = time.monotonic() - stopped
            break
        last = r.stderr
        time.sleep(1)
    assert first is not None, f"the API did not answer within 90 s of stopping {victim}: {last}"
    names = {n["metadata"]["name"] for n in json.loads(r.stdout)["items"]}
    assert names == set(CPS + [WORKER])
    # writes too: etcd keeps its quorum with two of three members
    deadline = time.monotonic() + 60
    while True:
        r = kubectl("create", "configmap", "ha-proof", "--from-literal=survived=yes", check=False)
        if r.returncode == 0 or "AlreadyExists" in r.stderr or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert r.returncode == 0 or "AlreadyExists" in r.stderr, r.stderr
    write = time.monotonic() - stopped
    got = kubectl("get", "configmap", "ha-proof", "-o", "jsonpath={.data.survived}").stdout
    assert got == "yes"
    assert inner("inspect", "-f", "{{.State.Running}}", victim).strip() == "false"
    print(f"\nstopped {victim} in {stopped - t0:.1f}s; API answered {first:.1f}s after, "
          f"a ConfigMap was written {write:.1f}s after")
