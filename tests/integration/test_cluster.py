"""Cluster lifecycles against the real engine, with the sample Kubernetes (issue 3).

One nested cluster with two workers is brought up once for the module and
examined from every side; other tests bring up their own small clusters.
Everything is torn down, and the engine must hold no container, volume or
network with the cluster label afterwards, and no new dangling volume.
"""

import json
import socket
import stat
import subprocess

import pytest

from dindind.docker import containers
from dindind.cluster import api, host
from dindind.cluster.actions import cni
from dindind.cluster.plan import CLUSTER_LABEL

from conftest import doit

pytestmark = pytest.mark.engine

NESTED = "t-nested"


def labelled(name):
    flt = f"label={CLUSTER_LABEL}={name}"
    out = {}
    for kind, cmd in (("containers", ["docker", "ps", "-aq", "--filter", flt]),
                      ("volumes", ["docker", "volume", "ls", "-q", "--filter", flt]),
                      ("networks", ["docker", "network", "ls", "-q", "--filter", flt])):
        out[kind] = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True).stdout.split()
    return out


def assert_gone(name):
    assert labelled(name) == {"containers": [], "volumes": [], "networks": []}


@pytest.fixture(scope="module")
def dangling_before():
    return containers.dangling_volumes()


@pytest.fixture(scope="module")
def nested(built, dangling_before):
    """A nested cluster: one control plane and two workers."""
    run = built.doit("cluster:up", "--name", NESTED, "--workers", "2", timeout=600, check=False)
    try:
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
        yield run
    finally:
        built.doit("cluster:down", "--name", NESTED, check=False)


def kubeconfig(built, name):
    return built.path / "artifacts" / "clusters" / name / "kubeconfig"


def test_up_prints_one_status_line_per_action(nested):
    for title in ("Preparing nodes", "Writing configuration", "Starting control-plane", "Installing CNI",
                  "Joining worker nodes", "Waiting for nodes to be Ready"):
        assert f" ✓ {title}" in nested.stdout, nested.stdout


def test_three_nodes_with_systemd_and_every_component_image(built, nested):
    sh = host.Shell(NESTED)
    assert sh.top == f"dindind-{NESTED}"
    assert sh.nodes == [f"{NESTED}-control-plane", f"{NESTED}-worker", f"{NESTED}-worker2"]
    tree = json.loads((built.path / "artifacts" / "kubernetes" / "tree.json").read_text())
    refs = {ref for img in tree["images"] for ref in img["refs"]}
    for node in sh.nodes:
        _, state = sh.run(node, ["systemctl", "is-system-running"], check=False)
        assert state.strip() in ("running", "degraded"), (node, state)
        _, active = sh.run(node, ["systemctl", "is-active", "containerd", "kubelet"], check=False)
        assert active.split() == ["active", "active"], (node, active)
        _, images = sh.run(node, ["ctr", "-n", "k8s.io", "images", "ls", "-q"])
        assert refs <= set(images.split()), (node, refs - set(images.split()))


def test_kubeadm_ran_with_the_rendered_config(nested):
    sh = host.Shell(NESTED)
    cp, worker = sh.nodes[0], sh.nodes[1]
    _, conf = sh.run(cp, ["cat", "/etc/dindind/kubeadm.conf"])
    assert "apiVersion: kubeadm.k8s.io/v1beta4" in conf       # the sample is v1.31.2
    assert f'name: "{cp}"' in conf and "maxPerCore: 0" in conf
    assert '"127.0.0.1"' in conf and '"localhost"' in conf     # API certificate SANs
    code, _ = sh.run(cp, ["test", "-s", "/etc/kubernetes/admin.conf"], check=False)
    assert code == 0
    code, _ = sh.run(worker, ["test", "-s", "/etc/kubernetes/kubelet.conf"], check=False)
    assert code == 0
    # the bootstrap token is per cluster and lives only in the running nodes
    _, token_line = sh.run(cp, ["grep", "-A1", "bootstrapTokens", "/etc/dindind/kubeadm.conf"])
    assert "token:" in token_line


def test_routes_and_a_ping_across_nodes_through_the_real_cni_plugins(nested):
    sh = host.Shell(NESTED)
    a, b = sh.nodes[0], sh.nodes[2]
    _, routes = sh.run(a, ["ip", "route"])
    assert "10.244.1.0/24 via" in routes and "10.244.2.0/24 via" in routes
    addrs = {}
    for node in (a, b):
        _, raw = sh.run(node, ["cat", cni.CONFLIST])
        conf = json.loads(raw)
        first = dict(conf["plugins"][0], cniVersion=conf["cniVersion"], name=conf["name"])
        script = ("ip netns add ptest && echo '" + json.dumps(first) + "' | CNI_COMMAND=ADD CNI_CONTAINERID=ptest "
                  "CNI_NETNS=/var/run/netns/ptest CNI_IFNAME=eth0 CNI_PATH=/opt/cni/bin /opt/cni/bin/bridge")
        _, out = sh.run(node, ["sh", "-c", script])
        addrs[node] = json.loads(out)["ips"][0]["address"].split("/")[0]
    assert addrs[a].startswith("10.244.0.") and addrs[b].startswith("10.244.2.")
    code, out = sh.run(a, ["ip", "netns", "exec", "ptest", "ping", "-c", "2", "-W", "3", addrs[b]], check=False)
    assert code == 0 and " 0% packet loss" in out, out
    # and a pod-like namespace resolves node names: the engine's DNS is served on the node's address
    code, out = sh.run(a, ["ip", "netns", "exec", "ptest", "getent", "hosts", b], check=False)
    assert code == 0 and out.split()[0] == host.Shell(NESTED).run(b, ["hostname", "-i"])[1].split()[0], out


def test_api_port_is_bound_on_loopback_only(nested):
    info = containers.inspect_container(f"dindind-{NESTED}")
    bindings = info["NetworkSettings"]["Ports"]["6443/tcp"]
    assert [b["HostIp"] for b in bindings] == ["127.0.0.1"]
    port = int(bindings[0]["HostPort"])
    with socket.create_connection(("127.0.0.1", port), timeout=3):
        pass
    # another address of this host does not answer
    other = subprocess.run(["hostname", "-I"], stdout=subprocess.PIPE, text=True).stdout.split()
    for addr in [a for a in other if ":" not in a][:1]:
        with pytest.raises(OSError):
            socket.create_connection((addr, port), timeout=2).close()


def test_kubeconfig_is_0600_and_works_through_the_published_port(built, nested):
    path = kubeconfig(built, NESTED)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    server, *_ = api.parse_kubeconfig(path.read_bytes())
    assert server.startswith("https://127.0.0.1:")
    ready = api.node_readiness(path.read_bytes())
    assert ready == {f"{NESTED}-control-plane": True, f"{NESTED}-worker": True, f"{NESTED}-worker2": True}
    out = built.doit("cluster:kubeconfig", "--name", NESTED).stdout
    assert str(path) in out


def test_status_logs_load_e2e(built, nested, tmp_path):
    status = built.doit("cluster:status").stdout
    line = next(l for l in status.splitlines() if l.startswith(NESTED))
    assert " 3 " in line and "https://127.0.0.1:" in line and "nested" in line
    built.doit("cluster:logs", "--name", NESTED)
    logs = built.path / "artifacts" / "clusters" / NESTED / "logs"
    assert "kubelet" in (logs / f"{NESTED}-worker" / "kubelet.log").read_text()
    assert (logs / f"{NESTED}-control-plane" / "inspect.json").exists()
    assert (logs / "dockerd.log").exists()
    # load: a tiny image into every node
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "hello").write_text("hi\n")
    subprocess.run(f"tar -C {tmp_path / 'root'} -c . | docker import - dindind-test/load:1", shell=True,
                   check=True, stdout=subprocess.DEVNULL)
    try:
        built.doit("cluster:load", "--name", NESTED, "--image", "dindind-test/load:1")
        sh = host.Shell(NESTED)
        for node in sh.nodes:
            _, images = sh.run(node, ["ctr", "-n", "k8s.io", "images", "ls", "-q"])
            assert "docker.io/dindind-test/load:1" in images.split(), node
    finally:
        subprocess.run(["docker", "rmi", "dindind-test/load:1"], stdout=subprocess.DEVNULL)
    e2e = built.doit("cluster:e2e", "--name", NESTED, "--focus", "Conformance", "--parallel", "2")
    junit = built.path / "artifacts" / "clusters" / NESTED / "e2e" / "junit_01.xml"
    assert 'failures="0"' in junit.read_text()
    assert "focus='Conformance'" in e2e.stdout


def test_name_in_use_is_refused(built, nested):
    run = built.doit("cluster:up", "--name", NESTED, check=False)
    assert run.returncode != 0
    assert f"a cluster named '{NESTED}' already exists" in run.stderr
    assert "Traceback" not in run.stdout + run.stderr


def test_two_clusters_side_by_side(built, nested):
    run = built.doit("cluster:up", "--name", "t-second", "--workers", "0", timeout=600, check=False)
    try:
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        names = [r["name"] for r in host.clusters()]
        assert NESTED in names and "t-second" in names
        assert api.node_readiness(kubeconfig(built, "t-second").read_bytes()) == {"t-second-control-plane": True}
        assert all(api.node_readiness(kubeconfig(built, NESTED).read_bytes()).values())
    finally:
        built.doit("cluster:down", "--name", "t-second")
    assert_gone("t-second")


def test_stopped_top_level_container_restarts(built, nested):
    top = f"dindind-{NESTED}"
    subprocess.run(["docker", "stop", top], check=True, stdout=subprocess.DEVNULL)
    assert containers.inspect_container(top)["State"]["ExitCode"] == 0
    subprocess.run(["docker", "start", top], check=True, stdout=subprocess.DEVNULL)
    from dindind.cluster.actions import waitready

    waitready.wait(kubeconfig(built, NESTED).read_bytes(),
                   [f"{NESTED}-control-plane", f"{NESTED}-worker", f"{NESTED}-worker2"], timeout=120)
    assert "restarting 3 existing node(s)" in containers.logs(top)


def test_up_runs_the_image_with_arguments_and_a_restart_policy_and_stop_start_verbs(built, nested):
    top = f"dindind-{NESTED}"
    info = containers.inspect_container(top)
    assert info["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert info["Config"]["Cmd"] == ["--name", NESTED, "--workers", "2", "--wait", "180"]
    assert not [e for e in info["Config"]["Env"] if e.startswith("DINDIND_CLUSTER=")]
    built.doit("cluster:stop", "--name", NESTED)
    assert containers.inspect_container(top)["State"]["Running"] is False
    start = built.doit("cluster:start", "--name", NESTED, timeout=600)
    assert f"cluster {NESTED} is Ready again" in start.stdout, start.stdout
    assert all(api.node_readiness(kubeconfig(built, NESTED).read_bytes()).values())
    missing = built.doit("cluster:stop", "--name", "t-none", check=False)
    assert missing.returncode != 0 and "no cluster named 't-none'" in missing.stderr


def test_down_leaves_nothing_behind(built, nested, dangling_before):
    built.doit("cluster:down", "--name", NESTED)
    assert_gone(NESTED)
    assert not (built.path / "artifacts" / "clusters" / NESTED).exists()
    assert containers.dangling_volumes() - dangling_before == set()


def test_failed_up_cleans_up_unless_retained(built, tmp_path, dangling_before):
    # a patch that renames the control plane's node: it never reports Ready under its own name
    cfg = tmp_path / "fail.yaml"
    cfg.write_text(built.config.read_text() + "  kubeadm_patches:\n"
                   "  - kind: InitConfiguration\n    nodeRegistration: {name: not-the-node}\n")

    failed = doit(built.path, f"config={cfg}", "cluster:up", "--name", "t-fail", "--workers", "0", "--wait", "8",
                  check=False, timeout=600)
    assert failed.returncode != 0
    assert "ERROR: cluster t-fail failed to come up" in failed.stderr or "not ready" in failed.stderr, failed.stderr
    assert "Traceback" not in failed.stdout + failed.stderr
    assert_gone("t-fail")
    retained = doit(built.path, f"config={cfg}", "cluster:up", "--name", "t-fail", "--workers", "0", "--wait", "8",
                    "--retain", check=False, timeout=600)
    try:
        assert retained.returncode != 0
        assert labelled("t-fail")["containers"], "--retain keeps the top-level container for inspection"
    finally:
        doit(built.path, "cluster:down", "--name", "t-fail")
    assert_gone("t-fail")
    assert containers.dangling_volumes() - dangling_before == set()


def test_non_nested_mode(built, tmp_path, dangling_before):
    cfg = tmp_path / "direct.yaml"
    cfg.write_text(built.config.read_text().replace("cluster:\n", "cluster:\n  nested: false\n", 1))
    up = doit(built.path, f"config={cfg}", "cluster:up", "--name", "t-direct", "--workers", "1", timeout=600,
              check=False)
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        found = labelled("t-direct")
        assert len(found["containers"]) == 2 and len(found["networks"]) == 1 and len(found["volumes"]) == 6
        cp = containers.inspect_container("t-direct-control-plane")
        assert [b["HostIp"] for b in cp["NetworkSettings"]["Ports"]["6443/tcp"]] == ["127.0.0.1"]
        kc = kubeconfig(built, "t-direct")
        assert stat.S_IMODE(kc.stat().st_mode) == 0o600
        assert api.node_readiness(kc.read_bytes()) == {"t-direct-control-plane": True, "t-direct-worker": True}
        row = next(r for r in host.clusters() if r["name"] == "t-direct")
        assert row["nodes"] == 2 and not row["nested"]
        # stop and start run the image's own restart (create.stop/restart) here, on the host's engine
        stop = doit(built.path, f"config={cfg}", "cluster:stop", "--name", "t-direct")
        assert "stopped cluster t-direct" in stop.stdout
        for node in ("t-direct-control-plane", "t-direct-worker"):
            assert containers.inspect_container(node)["State"]["Running"] is False
        kc.unlink()         # start reads admin.conf from the control plane and exports it again
        start = doit(built.path, f"config={cfg}", "cluster:start", "--name", "t-direct", timeout=600)
        assert " ✓ Starting nodes" in start.stdout and " ✓ Installing CNI" in start.stdout, start.stdout
        assert "cluster t-direct is Ready again in " in start.stdout, start.stdout
        assert stat.S_IMODE(kc.stat().st_mode) == 0o600
        assert api.node_readiness(kc.read_bytes()) == {"t-direct-control-plane": True, "t-direct-worker": True}
        assert len(labelled("t-direct")["containers"]) == 2     # the same containers, nothing new
    finally:
        doit(built.path, f"config={cfg}", "cluster:down", "--name", "t-direct")
    assert_gone("t-direct")
    assert containers.dangling_volumes() - dangling_before == set()
