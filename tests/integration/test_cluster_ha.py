"""High availability on the sample: 3 control planes + 1 worker behind the external load balancer.

A nested cluster from a cluster config: the load balancer container (haproxy
from the node image, unprivileged, at the node subnet's last address, with
every control plane in its configuration and the API port published through
it), the control planes joined one at a time with the uploaded certificates
(the sample's etcd members record when each was added and started), the
certificate key nowhere to be found afterwards, ``cluster:nodes`` /
``cluster:status`` / ``cluster:logs``, and ``cluster:down`` removing all of
it. Then the same on the host's engine (non-nested), stopped and started
again; a control-plane join that fails takes everything with it, the load
balancer included; and control-plane counts etcd cannot use are refused
before anything is created.
"""

import json
import os
import re
import stat
import subprocess

import pytest

from dindind.cluster import api, host
from dindind.docker import containers

from conftest import doit
from integration.test_cluster import assert_gone, kubeconfig

pytestmark = pytest.mark.engine

NAME = f"t-ha-{os.getpid()}"
DIRECT = f"t-ha-direct-{os.getpid()}"
BROKEN = f"t-ha-broken-{os.getpid()}"
TOP = f"dindind-{NAME}"
SAMPLE_STATE = "/var/lib/dindind-sample"


def config(name, extra=""):
    return (f"apiVersion: dindind.dev/v1alpha1\nkind: Cluster\nname: {name}\nnodes:\n"
            "- role: worker\n- role: control-plane\n- role: control-plane\n- role: control-plane\n" + extra)


def names(name):
    return [f"{name}-control-plane", f"{name}-control-plane2", f"{name}-control-plane3"], f"{name}-worker"


def inner(*cmd, check=True):
    run = subprocess.run(["docker", "exec", TOP, "docker", *cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    assert not check or run.returncode == 0, run.stdout
    return run.stdout


def rows(stdout):
    """{name: [role, address, state, ready]} of cluster:nodes."""
    return {p[0]: p[1:] for p in (line.split() for line in stdout.splitlines()) if len(p) == 5
            and p[1] in ("control-plane", "worker", "external-load-balancer")}


@pytest.fixture(scope="module")
def ha(built, tmp_path_factory):
    path = tmp_path_factory.mktemp("ha") / "cluster.yaml"
    path.write_text(config(NAME))
    run = built.doit("cluster:up", "--config", str(path), timeout=900, check=False)
    try:
        assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-3000:]
        yield run
    finally:
        built.doit("cluster:down", "--name", NAME, check=False)
        assert_gone(NAME)


def test_the_steps_and_the_order_of_the_joins(built, ha):
    out = ha.stdout
    steps = [line.split(" (")[0] for line in out.splitlines() if line.startswith(" ✓ ")]
    assert steps == [" ✓ Preparing nodes", " ✓ Starting the external load balancer", " ✓ Writing configuration",
                     " ✓ Starting control-plane", " ✓ Installing CNI", " ✓ Joining more control-plane nodes",
                     " ✓ Joining worker nodes", " ✓ Waiting for nodes to be Ready"], out
    cps, worker = names(NAME)
    assert re.search(rf"{cps[1]} joined in [\d.]+s\n.*{cps[2]} joined in [\d.]+s", out), out
    # the sample's etcd: one member per control plane, each added only after the one before had started
    members = json.loads(inner("exec", cps[0], "cat", f"{SAMPLE_STATE}/members.json"))
    assert [m["name"] for m in members] == cps
    for before, after in zip(members, members[1:]):
        assert before["started"] <= after["added"], members
    # every API server behind the load balancer answers from that one store: all four nodes Ready
    assert api.node_readiness(kubeconfig(built, NAME).read_bytes()) == dict.fromkeys(cps + [worker], True)


def test_the_load_balancer_container(ha):
    cps, worker = names(NAME)
    lb = f"{NAME}-external-load-balancer"
    info = json.loads(inner("inspect", lb))[0]
    assert info["Config"]["Labels"]["io.dindind.role"] == "external-load-balancer"
    assert info["Config"]["User"] == "haproxy" and info["Path"] == "haproxy"
    assert info["HostConfig"]["CapDrop"] == ["ALL"] and not info["HostConfig"]["Privileged"]
    assert "no-new-privileges" in info["HostConfig"]["SecurityOpt"]
    assert info["NetworkSettings"]["Networks"][f"dindind-{NAME}"]["IPAddress"] == "172.30.0.254"
    # the API port of the cluster container goes to the load balancer, and no control plane publishes one
    assert info["HostConfig"]["PortBindings"] == {"6443/tcp": [{"HostIp": "0.0.0.0", "HostPort": "6443"}]}
    for cp in cps:
        assert json.loads(inner("inspect", cp))[0]["HostConfig"]["PortBindings"] in ({}, None)
    cfg = inner("exec", lb, "cat", "/etc/haproxy/haproxy.cfg")
    servers = re.findall(r"(?m)^  server (\S+) (\S+)$", cfg)
    assert servers == [(cp, f"{json.loads(inner('inspect', cp))[0]['NetworkSettings']['Networks'][f'dindind-{NAME}']['IPAddress']}:6443")
                       for cp in cps]
    assert "mode tcp" in cfg and "uri /readyz" in cfg and "check-ssl" in cfg
    assert inner("exec", lb, "id", "-un").strip() == "haproxy"
    assert inner("exec", lb, "grep", "CapEff", "/proc/1/status").split()[1] == "0000000000000000"
    # the kubeconfigs every node uses name the load balancer
    for node in cps + [worker]:
        assert "server: https://172.30.0.254:6443" in inner("exec", node, "cat", "/etc/kubernetes/kubelet.conf")
    for node in cps:
        kc = inner("exec", node, "cat", "/etc/kubernetes/admin.conf")
        assert "server: https://172.30.0.254:6443" in kc
    conf = inner("exec", cps[0], "cat", "/etc/dindind/kubeadm.conf")
    assert 'controlPlaneEndpoint: "172.30.0.254:6443"' in conf
    assert '"172.30.0.254"' in conf.split("certSANs:")[1].splitlines()[0]


def test_the_certificate_key_is_kept_nowhere(built, ha):
    cps, worker = names(NAME)
    for node in cps + [worker]:
        assert "certificateKey" not in inner("exec", node, "cat", "/etc/dindind/kubeadm.conf")
        assert inner("exec", node, "sh", "-c", "ls -A /run/dindind 2>/dev/null; true").strip() == ""
    # the upload happened: the sample keeps it encrypted, as the kubeadm-certs Secret is
    assert inner("exec", cps[0], "stat", "-c", "%a", f"{SAMPLE_STATE}/kubeadm-certs.enc").strip() == "600"
    found = subprocess.run(["grep", "-rl", "certificateKey", str(built.path / "artifacts" / "clusters")],
                           stdout=subprocess.PIPE, text=True)
    assert found.stdout == ""
    labels = json.dumps([c.get("Labels") for c in containers.containers({"io.dindind.cluster": NAME})])
    labels += inner("inspect", "--format", "{{json .Config.Labels}}", cps[0])
    assert "certificate" not in labels.lower()
    assert "certificateKey" not in ha.stdout + ha.stderr


def test_nodes_status_and_logs_show_the_load_balancer(built, ha):
    cps, worker = names(NAME)
    lb = f"{NAME}-external-load-balancer"
    listed = rows(built.doit("cluster:nodes", "--name", NAME).stdout)
    assert list(listed) == cps + [worker, lb]
    assert listed[lb] == ["external-load-balancer", "172.30.0.254", "running", "-"]
    assert all(listed[n][2:] == ["running", "Ready"] for n in cps + [worker])
    row = next(r for r in host.clusters() if r["name"] == NAME)
    assert row["nodes"] == 4 and row["nested"] and row["api"].startswith("https://127.0.0.1:")
    built.doit("cluster:logs", "--name", NAME)
    logs = built.path / "artifacts" / "clusters" / NAME / "logs"
    assert "Proxy kube-apiserver started" in (logs / lb / "haproxy.log").read_text() or \
        (logs / lb / "haproxy.log").read_text().strip()
    assert (logs / cps[2] / "kubelet.log").exists() and not (logs / lb / "kubelet.log").exists()


def test_nested_stop_and_start_bring_the_load_balancer_back(built, ha):
    cps, worker = names(NAME)
    lb = f"{NAME}-external-load-balancer"
    built.doit("cluster:stop", "--name", NAME, timeout=300)
    listed = built.doit("cluster:nodes", "--name", NAME).stdout
    assert list(rows(listed)) == cps + [worker], listed           # stopped: from the top container's labels
    start = built.doit("cluster:start", "--name", NAME, timeout=600)
    assert f"cluster {NAME} is Ready again in " in start.stdout, start.stdout
    assert inner("inspect", "-f", "{{.State.Running}}", lb).strip() == "true"
    assert api.node_readiness(kubeconfig(built, NAME).read_bytes()) == dict.fromkeys(cps + [worker], True)


def test_control_plane_counts_etcd_cannot_use_are_refused(built, tmp_path):
    for planes, example in ((2, 1), (4, 3), (8, 7)):
        path = tmp_path / f"planes-{planes}.yaml"
        path.write_text(f"apiVersion: dindind.dev/v1alpha1\nkind: Cluster\nname: {BROKEN}\nnodes:\n"
                        + "- role: control-plane\n" * planes)
        run = built.doit("cluster:up", "--config", str(path), check=False, timeout=300)
        assert run.returncode != 0
        err = run.stdout + run.stderr
        assert f"nodes: {planes} control-plane nodes: give 1, 3, 5 or 7 (e.g. {example})" in err, err
        assert "quorum" in err and "Traceback" not in err
        assert_gone(BROKEN)


def test_non_nested_ha_stop_start_and_down(built, tmp_path):
    cfg = tmp_path / "direct.yaml"
    cfg.write_text(built.config.read_text().replace("cluster:\n", "cluster:\n  nested: false\n", 1))
    path = tmp_path / "cluster.yaml"
    path.write_text(config(DIRECT) + "networking: {nodeSubnet: 172.31.7.0/24}\n")
    cps, worker = names(DIRECT)
    lb = f"{DIRECT}-external-load-balancer"
    up = doit(built.path, f"config={cfg}", "cluster:up", "--config", str(path), timeout=900, check=False)
    try:
        assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-3000:]
        info = containers.inspect_container(lb)
        assert [b["HostIp"] for b in info["NetworkSettings"]["Ports"]["6443/tcp"]] == ["127.0.0.1"]
        assert info["NetworkSettings"]["Networks"][f"dindind-{DIRECT}"]["IPAddress"] == "172.31.7.254"
        for cp in cps:
            assert not containers.inspect_container(cp)["NetworkSettings"]["Ports"].get("6443/tcp")
        kc = kubeconfig(built, DIRECT)
        assert stat.S_IMODE(kc.stat().st_mode) == 0o600
        port = info["NetworkSettings"]["Ports"]["6443/tcp"][0]["HostPort"]
        assert api.parse_kubeconfig(kc.read_bytes())[0] == f"https://127.0.0.1:{port}"
        assert api.node_readiness(kc.read_bytes()) == dict.fromkeys(cps + [worker], True)
        doit(built.path, f"config={cfg}", "cluster:kubeconfig", "--name", DIRECT, "--internal")
        internal = (built.path / "artifacts" / "clusters" / DIRECT / "kubeconfig-internal").read_bytes()
        assert api.parse_kubeconfig(internal)[0] == "https://172.31.7.254:6443"
        row = next(r for r in host.clusters() if r["name"] == DIRECT)
        assert row["nodes"] == 4 and not row["nested"] and row["api"] == f"https://127.0.0.1:{port}"
        stop = doit(built.path, f"config={cfg}", "cluster:stop", "--name", DIRECT)
        assert f"stopped cluster {DIRECT}" in stop.stdout
        for c in cps + [worker, lb]:
            assert containers.inspect_container(c)["State"]["Running"] is False, c
        start = doit(built.path, f"config={cfg}", "cluster:start", "--name", DIRECT, timeout=600)
        assert f"cluster {DIRECT} is Ready again in " in start.stdout, start.stdout
        assert containers.inspect_container(lb)["State"]["Running"] is True
        assert api.node_readiness(kc.read_bytes()) == dict.fromkeys(cps + [worker], True)
    finally:
        down = doit(built.path, f"config={cfg}", "cluster:down", "--name", DIRECT, check=False)
    assert down.returncode == 0, down.stdout + down.stderr
    assert_gone(DIRECT)


def test_a_failed_control_plane_join_removes_everything_and_shows_no_key(built, tmp_path):
    # the third control plane's join gets a certificate key kubeadm cannot take
    cfg = tmp_path / "direct.yaml"
    cfg.write_text(built.config.read_text().replace("cluster:\n", "cluster:\n  nested: false\n", 1))
    path = tmp_path / "cluster.yaml"
    path.write_text(f"apiVersion: dindind.dev/v1alpha1\nkind: Cluster\nname: {BROKEN}\nnodes:\n"
                    "- role: control-plane\n- role: control-plane\n- role: control-plane\n"
                    "  kubeadmConfigPatches:\n  - {kind: JoinConfiguration, controlPlane: {certificateKey: nope}}\n"
                    "networking: {nodeSubnet: 172.31.8.0/24}\n")
    run = doit(built.path, f"config={cfg}", "cluster:up", "--config", str(path), "--wait", "30", timeout=900,
               check=False)
    err = run.stdout + run.stderr
    assert run.returncode != 0
    assert f"failed to join node {BROKEN}-control-plane3 with kubeadm" in err, err
    assert "64 hexadecimal characters" in err and "Traceback" not in err
    assert not re.search(r"\b[0-9a-f]{64}\b", err), "a certificate key (or a digest) in the error output"
    assert_gone(BROKEN)
