"""A cluster from a versioned cluster config, against the real engine, with the sample Kubernetes.

One nested cluster of a control plane and a worker, each with labels, kubelet arguments and a
kubeadm patch of its own, the worker with a host folder mounted and a host port forwarded to it
(both through the cluster container), feature gates, runtime-config and two containerd patches: what
kubeadm was given, what the kubelet was started with, what the Nodes carry, the mount and the port,
from the host, and what containerd runs with. Then configs that must be refused
before anything is created.
"""

import json
import socket
import time
import tomllib

import pytest
import yaml

from dindind.cluster import api, host
from dindind.docker import containers

from integration.test_cluster import assert_gone, kubeconfig, labelled

pytestmark = pytest.mark.engine

NAME = "t-config"
CONFIG = """\
apiVersion: dindind.dev/v1alpha1
kind: Cluster
name: {name}
nodes:
- role: worker
  labels: {{example.com/tier: back, topology.kubernetes.io/zone: zone-b}}
  kubeletExtraArgs: ["--v=3"]
  kubeadmConfigPatches:
  - {{kind: KubeletConfiguration, maxPods: 42}}
  extraMounts:
  - {{hostPath: shared, containerPath: /srv/shared, readOnly: true}}
  extraPortMappings:
  - {{containerPort: 8000}}
- role: control-plane
  labels: {{example.com/tier: front}}
  kubeletExtraArgs: ["--v=4"]
kubeletExtraArgs: ["--v=2", "--max-pods=30"]
featureGates: {{InPlacePodVerticalScaling: true, AllAlpha: false}}
runtimeConfig: {{"api/alpha": "false"}}
containerdConfigPatches:
- |
  [debug]
    level = "debug"
- |
  [plugins.'io.containerd.cri.v1.runtime']
    max_container_log_line_size = 32768
"""
GATES = {"AllAlpha": False, "InPlacePodVerticalScaling": True}


@pytest.fixture(scope="module")
def up(built, tmp_path_factory):
    d = tmp_path_factory.mktemp("cluster-config")
    (d / "shared").mkdir()
    (d / "shared" / "hello.txt").write_text("hello from the host\n")
    path = d / "cluster.yaml"
    path.write_text(CONFIG.format(name=NAME))
    run = built.doit("cluster:up", "--config", str(path), timeout=600, check=False)
    try:
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
        yield {"run": run, "dir": d}
    finally:
        built.doit("cluster:down", "--name", NAME, check=False)
        assert_gone(NAME)


def test_the_image_is_given_the_config_not_a_host_path(up):
    info = containers.inspect_container(f"dindind-{NAME}")
    cmd = info["Config"]["Cmd"]
    assert cmd[0].startswith("--config-json={") and cmd[1:] == ["--name", NAME, "--wait", "180"]
    assert str(up["dir"]) not in " ".join(cmd)
    doc = json.loads(cmd[0].partition("=")[2])
    assert doc["nodes"][1]["extraMounts"] == [{"hostPath": "/mnt/dindind/0", "containerPath": "/srv/shared",
                                               "readOnly": True}]
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    assert mounts["/mnt/dindind/0"]["Source"] == str(up["dir"] / "shared") and mounts["/mnt/dindind/0"]["RW"] is False
    assert "DEPRECATED" not in up["run"].stdout


def test_kubeadm_and_the_kubelet_get_each_nodes_labels_and_arguments(up):
    sh = host.Shell(NAME)
    cp, worker = f"{NAME}-control-plane", f"{NAME}-worker"
    assert sh.nodes == [cp, worker]
    wanted = {cp: "--node-labels=example.com/tier=front",
              worker: "--node-labels=example.com/tier=back,topology.kubernetes.io/zone=zone-b"}
    for node, labels in wanted.items():
        _, conf = sh.run(node, ["cat", "/etc/dindind/kubeadm.conf"])
        docs = {d["kind"]: d for d in yaml.safe_load_all(conf) if d}
        for kind in ("InitConfiguration", "JoinConfiguration"):
            given = {a["name"]: a["value"] for a in docs[kind]["nodeRegistration"]["kubeletExtraArgs"]}
            assert given["node-labels"] == labels.partition("=")[2], (kind, given)
        # what kubeadm wrote for the kubelet (the sample does as the real kubeadm: its kubeletExtraArgs)
        _, flags = sh.run(node, ["cat", "/var/lib/kubelet/kubeadm-flags.env"])
        args = flags.strip().partition("=")[2].strip('"').split()
        assert labels in args and "--max-pods=30" in args, flags
        assert [a for a in args if a.startswith("--v=")] == ["--v=4" if node == cp else "--v=3"], flags
        # and what the kubelet runs with
        _, ps = sh.run(node, ["sh", "-c", "tr '\\0' ' ' < /proc/$(systemctl show -p MainPID --value kubelet)/cmdline"])
        assert labels in ps.split(), ps
    _, worker_conf = sh.run(worker, ["cat", "/etc/dindind/kubeadm.conf"])
    _, cp_conf = sh.run(cp, ["cat", "/etc/dindind/kubeadm.conf"])
    # the worker's own KubeletConfiguration patch: kubeadm's kubeletconfiguration patch target, on it alone
    assert "maxPods" not in worker_conf and "maxPods" not in cp_conf
    assert "directory: /etc/dindind/patches" in worker_conf and "/etc/dindind/patches" not in cp_conf
    _, patch = sh.run(worker, ["cat", "/etc/dindind/patches/kubeletconfiguration+merge.json"])
    assert json.loads(patch) == {"maxPods": 42}


def test_feature_gates_and_runtime_config_reach_every_component(up):
    sh = host.Shell(NAME)
    for node in sh.nodes:
        _, conf = sh.run(node, ["cat", "/etc/dindind/kubeadm.conf"])
        docs = {d["kind"]: d for d in yaml.safe_load_all(conf) if d}
        cc = docs["ClusterConfiguration"]
        args = {part: {a["name"]: a["value"] for a in cc[part]["extraArgs"]}
                for part in ("apiServer", "controllerManager", "scheduler")}
        for part in args:
            assert args[part]["feature-gates"] == "AllAlpha=false,InPlacePodVerticalScaling=true", (node, part)
        assert args["apiServer"]["runtime-config"] == "api/alpha=false"
        assert "runtime-config" not in args["controllerManager"] and "runtime-config" not in args["scheduler"]
        assert docs["KubeletConfiguration"]["featureGates"] == GATES, node
        assert docs["KubeProxyConfiguration"]["featureGates"] == GATES, node


def test_containerd_runs_with_the_patches_merged_into_its_own_config(up):
    sh = host.Shell(NAME)
    for node in sh.nodes:
        _, listing = sh.run(node, ["ls", "/etc/containerd/conf.d"])
        assert listing.split() == ["01-dindind-patch.toml", "02-dindind-patch.toml"], listing
        _, first = sh.run(node, ["cat", "/etc/containerd/conf.d/01-dindind-patch.toml"])
        assert "version = 3\n[debug]\n  level = \"debug\"\n" in first, first
        _, own = sh.run(node, ["cat", "/etc/containerd/config.toml"])
        assert 'imports = ["/etc/containerd/conf.d/*.toml"]' in own
        _, dump = sh.run(node, ["sh", "-c", "containerd config dump 2>/dev/null"])
        merged = tomllib.loads(dump)
        assert merged["debug"]["level"] == "debug", dump
        runtime = merged["plugins"]["io.containerd.cri.v1.runtime"]
        assert runtime["max_container_log_line_size"] == 32768, dump
        # merged key by key: the node's own settings of that table are still there
        assert runtime["restrict_oom_score_adj"] is True and runtime["cni"]["conf_dir"] == "/etc/cni/net.d", dump
        _, active = sh.run(node, ["systemctl", "is-active", "containerd"])
        assert active.strip() == "active"


def test_the_nodes_carry_their_labels(built, up):
    # through the published port, with the kubeconfig cluster:up wrote
    code, body = api.get(kubeconfig(built, NAME).read_bytes(), "/api/v1/nodes")
    assert code == 200, body
    nodes = {n["metadata"]["name"]: n["metadata"]["labels"] for n in body["items"]}
    assert nodes[f"{NAME}-worker"]["example.com/tier"] == "back"
    assert nodes[f"{NAME}-worker"]["topology.kubernetes.io/zone"] == "zone-b"
    assert nodes[f"{NAME}-control-plane"]["example.com/tier"] == "front"
    assert "node-role.kubernetes.io/control-plane" in nodes[f"{NAME}-control-plane"]


def test_a_host_folder_is_mounted_read_only_through_the_cluster_container(up):
    sh = host.Shell(NAME)
    _, text = sh.run(f"{NAME}-worker", ["cat", "/srv/shared/hello.txt"])
    assert text == "hello from the host\n"
    code, out = sh.run(f"{NAME}-worker", ["touch", "/srv/shared/new"], check=False)
    assert code != 0 and "Read-only file system" in out
    code, _ = sh.run(f"{NAME}-control-plane", ["test", "-e", "/srv/shared"], check=False)
    assert code != 0


def test_a_host_port_reaches_the_node_through_both_hops(up):
    line = next(l for l in up["run"].stdout.splitlines() if l.strip().startswith("port 127.0.0.1:"))
    assert line.endswith(f"/TCP -> {NAME}-worker:8000"), line
    port = int(line.split(":")[1].split("/")[0])
    sh = host.Shell(NAME)
    sh.top_run(["docker", "exec", "-d", f"{NAME}-worker", "socat", "TCP-LISTEN:8000,fork,reuseaddr",
                "SYSTEM:echo hello from the worker"])
    deadline, answer = time.monotonic() + 20, b""
    while time.monotonic() < deadline and not answer:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
                answer = s.recv(100)
        except OSError:
            time.sleep(0.3)
    assert answer == b"hello from the worker\n"


def test_bad_configs_are_refused_before_anything_is_created(built, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.format(name="t-config-bad").replace("role: worker", "role: master")
                   .replace("hostPath: shared", "hostPath: missing")
                   .replace("example.com/tier: back", "node-role.kubernetes.io/worker: ''"))
    run = built.doit("cluster:up", "--config", str(bad), check=False, timeout=300)
    assert run.returncode != 0
    out = run.stdout + run.stderr
    assert "invalid cluster config" in out and "Traceback" not in out
    for needle in ("nodes[0].role: 'master' is not one of control-plane, worker",
                   "nodes[0].labels: key 'node-role.kubernetes.io/worker'",
                   "missing' does not exist"):
        assert needle in out, out
    assert_gone("t-config-bad")
    # a host port in use: one line naming it, nothing created
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        (tmp_path / "shared").mkdir()
        taken = tmp_path / "taken.yaml"
        taken.write_text(CONFIG.format(name="t-config-bad").replace(
            "{containerPort: 8000}", f"{{containerPort: 8000, hostPort: {port}}}"))
        run = built.doit("cluster:up", "--config", str(taken), check=False, timeout=300)
    assert run.returncode != 0
    assert f"127.0.0.1:{port}/TCP -> 8000: the host port is not free" in run.stderr, run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    assert_gone("t-config-bad")
    assert labelled("t-config-bad") == {"containers": [], "volumes": [], "networks": []}
