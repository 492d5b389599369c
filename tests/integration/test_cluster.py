"""Cluster lifecycles against the real engine, with the sample Kubernetes (issue 3).

One nested cluster with two workers is brought up once for the module and
examined from every side; other tests bring up their own small clusters.
Everything is torn down, and the engine must hold no container, volume or
network with the cluster label afterwards, and no new dangling volume.
"""

import base64
import ipaddress
import json
import os
import socket
import stat
import subprocess

import pytest

from dindind.base import config
from dindind.docker import archive, containers
from dindind.cluster import api, host, load
from dindind.cluster import kubeconfig as userkc
from dindind.cluster.actions import cni
from dindind.cluster.plan import CLUSTER_LABEL

from conftest import doit
from ociarchive import oci, tar_bytes

pytestmark = pytest.mark.engine

# per test session: two sessions on one engine (CI beside a developer's run) never take each other's clusters
NESTED = f"t-nested-{os.getpid()}"
SECOND = f"t-second-{os.getpid()}"
FAIL = f"t-fail-{os.getpid()}"
DIRECT = f"t-direct-{os.getpid()}"


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


# a user's kubeconfig with an entry of its own, for cluster:kubeconfig --merge (never the real ~/.kube/config)
USER_KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- name: other
  cluster: {server: "https://other.invalid:443", insecure-skip-tls-verify: yes}
contexts:
- name: other
  context: {cluster: other, user: other, namespace: "007"}
current-context: other
users:
- name: other
  user: {token: 'on'}
"""


def user_kubeconfig(directory):
    path = directory / "kube" / "config"
    path.parent.mkdir(parents=True)
    path.write_text(USER_KUBECONFIG)
    return path


def node_rows(stdout):
    """{name: (role, address, state, ready)} from cluster:nodes."""
    rows = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[1] in ("control-plane", "worker"):
            rows[parts[0]] = tuple(parts[1:])
    return rows


def node_address(sh, node):
    _, out = sh.run(node, ["ip", "-4", "-o", "addr", "show", "eth0"])
    return out.split()[3].split("/")[0]


# the nodes carry no HTTP client (and the sample's kubectl is a stand-in): the request is made with dindind's
# own client, in the cluster image's Python, from a network namespace beside the nodes
READINESS = ("import base64, json, sys\nfrom dindind.cluster import api\n"
             "print(json.dumps(api.node_readiness(base64.b64decode(sys.argv[1]))))")


def readiness_from(argv_prefix, data):
    """{node: Ready} as the API at the kubeconfig ``data``'s server answers a python3 run by ``argv_prefix``."""
    cmd = [*argv_prefix, "python3", "-c", READINESS, base64.b64encode(data).decode()]
    run = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert run.returncode == 0, run.stdout[-3000:]
    return json.loads(run.stdout)


def one_error(run, message):
    assert run.returncode != 0
    assert message in run.stderr, run.stderr
    assert "Traceback" not in run.stdout + run.stderr


@pytest.fixture(scope="module")
def merged(built, nested, tmp_path_factory):
    """t-nested merged into a user's kubeconfig with an entry of its own (KUBECONFIG, the merge's env)."""
    path = user_kubeconfig(tmp_path_factory.mktemp("merged"))
    env = {"KUBECONFIG": f"{path}{os.pathsep}{path.parent / 'second'}"}
    run = built.doit("cluster:kubeconfig", "--name", NESTED, "--merge", env=env)
    return path, env, run


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


def test_nodes_lists_role_address_state_and_ready(built, nested):
    out = built.doit("cluster:nodes", "--name", NESTED).stdout
    assert f"cluster {NESTED}, nested in container dindind-{NESTED}:" in out, out
    rows = node_rows(out)
    sh = host.Shell(NESTED)
    subnet = ipaddress.ip_network(config.load(built.config).cluster["node_subnet"])
    assert list(rows) == sh.nodes         # control plane first, then the workers in order
    for node, (role, address, state, ready) in rows.items():
        assert role == ("control-plane" if node.endswith("control-plane") else "worker")
        assert address == node_address(sh, node) and ipaddress.ip_address(address) in subnet
        assert (state, ready) == ("running", "Ready")


def test_internal_kubeconfig_is_the_address_the_nodes_use(built, nested):
    run = built.doit("cluster:kubeconfig", "--name", NESTED, "--internal")
    path = built.path / "artifacts" / "clusters" / NESTED / "kubeconfig-internal"
    assert str(path) in run.stdout and stat.S_IMODE(path.stat().st_mode) == 0o600
    sh = host.Shell(NESTED)
    cp, worker = sh.nodes[0], sh.nodes[2]
    server, *_ = api.parse_kubeconfig(path.read_bytes())
    address = node_address(sh, cp)
    assert server == f"https://{address}:6443"
    # the name a worker's kubelet talks to resolves there to that address
    _, kubelet_conf = sh.run(worker, ["cat", "/etc/kubernetes/kubelet.conf"])
    assert f"server: https://{cp}:6443" in kubelet_conf
    assert sh.run(worker, ["getent", "hosts", cp])[1].split()[0] == address
    # inside the top-level container (on the nodes' network), TLS checks that address against the certificate
    assert readiness_from(["docker", "exec", f"dindind-{NESTED}"], path.read_bytes()) == dict.fromkeys(sh.nodes, True)


def test_merge_into_the_users_kubeconfig(built, nested, merged):
    path, env, run = merged
    assert f"merged cluster {NESTED} into {path} as context dindind-{NESTED}" in run.stdout, run.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and not os.path.exists(f"{path}.lock")
    doc = userkc.read(path)
    assert [c["name"] for c in doc["clusters"]] == ["other", f"dindind-{NESTED}"]
    assert doc["current-context"] == f"dindind-{NESTED}"
    before = userkc.meaning(userkc.parse(path, USER_KUBECONFIG.encode()))
    # the other user's token 'on' stays a string
    assert userkc.meaning(doc)[(userkc.STR, "users")][0] == before[(userkc.STR, "users")][0]
    # the merged context works from here: its server is the published address
    assert api.parse_kubeconfig(path.read_bytes())[0].startswith("https://127.0.0.1:")
    assert all(api.node_readiness(path.read_bytes()).values())


def test_bad_input_to_the_new_verbs_is_one_error(built):
    one_error(built.doit("cluster:nodes", "--name", "t-none", check=False), "no cluster named 't-none'")
    one_error(built.doit("cluster:kubeconfig", "--name", "t-none", "--internal", check=False),
              "no cluster named 't-none'")
    one_error(built.doit("cluster:kubeconfig", "--internal", "--merge", check=False),
              "--internal and --merge cannot be combined")
    one_error(built.doit("cluster:down", "--all", "--name", "t-none", check=False),
              "--all and --name cannot be combined")
    one_error(built.doit("cluster:nodes", "--name", "Bad_Name", check=False), "invalid --name 'Bad_Name'")


def test_status_logs_e2e(built, nested):
    status = built.doit("cluster:status").stdout
    line = next(l for l in status.splitlines() if l.startswith(NESTED))
    assert " 3 " in line and "https://127.0.0.1:" in line and "nested" in line
    built.doit("cluster:logs", "--name", NESTED)
    logs = built.path / "artifacts" / "clusters" / NESTED / "logs"
    assert "kubelet" in (logs / f"{NESTED}-worker" / "kubelet.log").read_text()
    assert (logs / f"{NESTED}-control-plane" / "inspect.json").exists()
    assert (logs / "dockerd.log").exists()
    e2e = built.doit("cluster:e2e", "--name", NESTED, "--focus", "Conformance", "--parallel", "2")
    junit = built.path / "artifacts" / "clusters" / NESTED / "e2e" / "junit_01.xml"
    assert 'failures="0"' in junit.read_text()
    assert "focus='Conformance'" in e2e.stdout


# ------------------------------------------------------------------ cluster:load

# per test session: two sessions on one engine never load or remove each other's images
TAG = f"t{os.getpid()}"
IMAGE, SINGLE, MULTI = (f"dindind-test/{what}:{TAG}" for what in ("load", "single", "multi"))
LOADED = [f"docker.io/{ref}" for ref in (IMAGE, SINGLE, MULTI)]


def node_images(sh, node):
    return set(sh.run(node, ["ctr", "-n", "k8s.io", "images", "ls", "-q"])[1].split())


def no_load_files(sh):
    """Whether no copy of cluster:load is left where it copies to (the top-level container or each node)."""
    targets = [sh.top] if sh.top else sh.nodes
    return all(containers.exec_in(t, ["sh", "-c", "ls /var/cache | grep dindind-load || true"])[1].strip() == ""
               for t in targets)


@pytest.fixture
def load_inputs(tmp_path):
    """(a host image, a plain single-platform archive written by this engine's docker save, a function giving a
    multi-platform OCI archive whose index lists a node's platform and another whose blobs are absent)."""
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "hello").write_text("hi\n")
    for ref in (IMAGE, SINGLE):
        subprocess.run(f"tar -C {tmp_path / 'root'} -c . | docker import - {ref}", shell=True, check=True,
                       stdout=subprocess.DEVNULL)
    single = tmp_path / "single.tar"
    try:
        subprocess.run(["docker", "save", "-o", single, SINGLE], check=True)
    finally:
        subprocess.run(["docker", "rmi", SINGLE], stdout=subprocess.DEVNULL)

    def multi(sh):
        platform = load.platform_from_plugins(sh.run(sh.nodes[0], ["ctr", "plugins", "ls"])[1])
        other = "linux/s390x" if platform != "linux/s390x" else "linux/arm64"
        path = tmp_path / "multi.tar"
        path.write_bytes(oci([([f"docker.io/{MULTI}"], [{"etc/multi": b"multi\n"}])], nested=True,
                             platform=platform, absent=other))
        assert archive.loadable(path) == [{"names": [f"docker.io/{MULTI}"], "platforms": [platform]}]
        return platform, path

    try:
        yield IMAGE, single, multi
    finally:
        subprocess.run(["docker", "rmi", IMAGE], stdout=subprocess.DEVNULL)


def test_load_images_and_archives_of_both_kinds_for_the_nodes_platform(built, nested, load_inputs, tmp_path):
    image, single, make_multi = load_inputs
    sh = host.Shell(NESTED)
    platform, multi = make_multi(sh)
    # what the old `--all-platforms` import does with such an archive: containerd looks for the absent platform
    containers.put_archive_files(sh.top, "/var/cache", [("t-multi.tar", multi)])
    code, out = sh.top_run(["sh", "-c", f"docker exec -i {sh.nodes[0]} ctr -n k8s.io images import --all-platforms "
                                        "- < /var/cache/t-multi.tar; s=$?; rm -f /var/cache/t-multi.tar; exit $s"],
                           check=False)
    assert code != 0 and "not found" in out, out
    # a hostile archive beside good ones: one error, nothing copied
    hostile = tmp_path / "hostile.tar"
    hostile.write_bytes(tar_bytes([("manifest.json", b"[]"), ("../../etc/cron.d/x", b"* * * * * root id\n")]))
    bad = built.doit("cluster:load", "--name", NESTED, "--image", image, "--archive", multi, "--archive", hostile,
                     check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stdout + bad.stderr
    assert [line for line in bad.stderr.splitlines() if "ERROR" in line] == \
        [f"cluster:load: ERROR: image tarball {hostile}: entry '../../etc/cron.d/x' escapes the archive "
         "(absolute path or '..')"]
    assert no_load_files(sh)
    for node in sh.nodes:
        assert not set(LOADED) & node_images(sh, node), node
    # the host image and both archives, in one go
    run = built.doit("cluster:load", "--name", NESTED, "--image", image, "--archive", single, "--archive", multi)
    assert f"loaded 3 image(s) for {platform} into 3 node(s) of {NESTED}" in run.stdout, run.stdout
    for node in sh.nodes:
        assert set(LOADED) <= node_images(sh, node), node
    _, out = sh.run(sh.nodes[2], ["ctr", "-n", "k8s.io", "images", "check"])
    assert all(any(line.split()[0] == ref and " complete " in line for line in out.splitlines()[1:])
               for ref in LOADED), out
    assert no_load_files(sh)
    assert not list((built.path / "artifacts" / "tmp").glob("load-*"))


def test_name_in_use_is_refused(built, nested):
    run = built.doit("cluster:up", "--name", NESTED, check=False)
    assert run.returncode != 0
    assert f"a cluster named '{NESTED}' already exists" in run.stderr
    assert "Traceback" not in run.stdout + run.stderr


def test_two_clusters_side_by_side(built, nested):
    run = built.doit("cluster:up", "--name", SECOND, "--workers", "0", timeout=600, check=False)
    try:
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        names = [r["name"] for r in host.clusters()]
        assert NESTED in names and SECOND in names
        assert api.node_readiness(kubeconfig(built, SECOND).read_bytes()) == {f"{SECOND}-control-plane": True}
        assert all(api.node_readiness(kubeconfig(built, NESTED).read_bytes()).values())
    finally:
        built.doit("cluster:down", "--name", SECOND)
    assert_gone(SECOND)


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
    stopped = built.doit("cluster:nodes", "--name", NESTED).stdout
    assert f"cluster {NESTED} is stopped (its container {top} is exited)" in stopped, stopped
    assert node_rows(stopped) == {f"{NESTED}-control-plane": ("control-plane", "-", "-", "-"),
                                  f"{NESTED}-worker": ("worker", "-", "-", "-"),
                                  f"{NESTED}-worker2": ("worker", "-", "-", "-")}
    start = built.doit("cluster:start", "--name", NESTED, timeout=600)
    assert f"cluster {NESTED} is Ready again" in start.stdout, start.stdout
    assert all(api.node_readiness(kubeconfig(built, NESTED).read_bytes()).values())
    missing = built.doit("cluster:stop", "--name", "t-none", check=False)
    assert missing.returncode != 0 and "no cluster named 't-none'" in missing.stderr


def test_down_all_on_an_engine_of_its_own(built, nested, merged):
    """cluster:down --all removes every cluster of the engine it talks to. The shared engine holds other
    people's clusters, so it talks to t-nested's inner engine: t-nested's nodes there (a cluster as
    non-nested mode makes it) and a stand-in for a nested cluster, labelled as cluster:up labels one
    (top-level container, its volume; a network too). t-nested's merged kubeconfig entries go as well."""
    top = f"dindind-{NESTED}"
    # /run, not /var/run: an absolute symlink under /proc/PID/root would lead back to this host's /run
    docker_host = f"unix:///proc/{containers.inspect_container(top)['State']['Pid']}/root/run/docker.sock"
    name = subprocess.run(["docker", "-H", docker_host, "info", "--format", "{{.Name}}"], stdout=subprocess.PIPE,
                          text=True, check=True).stdout.strip()
    assert name == top, f"{docker_host} is not the engine inside {top} but {name}"

    def inner(*cmd):
        return containers.exec_in(top, ["docker", *cmd])[1]

    image = inner("inspect", "-f", "{{.Config.Image}}", f"{NESTED}-control-plane").strip()
    fake = ["--label", f"{CLUSTER_LABEL}=t-allfake"]
    inner("network", "create", *fake, "t-allfake-net")
    inner("volume", "create", *fake, "t-allfake-docker")
    inner("run", "-d", "--name", "dindind-t-allfake", *fake, "--label", "io.dindind.role=cluster",
          "--label", "io.dindind.nested=true", "--network", "t-allfake-net", "-v", "t-allfake-docker:/var/lib/docker",
          "--entrypoint", "sleep", image, "infinity")
    path, env, _ = merged
    run = built.doit("cluster:down", "--all", env=dict(env, DOCKER_HOST=docker_host))
    assert "removed cluster t-allfake: 1 container(s), 1 volume(s), 1 network(s)" in run.stdout, run.stdout
    assert f"removed cluster {NESTED}: 3 container(s), " in run.stdout
    assert f"its kubeconfig entries from {path}" in run.stdout
    for what in (["ps", "-aq"], ["volume", "ls", "-q"], ["network", "ls", "-q"]):
        assert inner(*what, "--filter", f"label={CLUSTER_LABEL}").split() == [], what
    # the user's kubeconfig means again exactly what it meant before the merge (its current context too)
    assert userkc.meaning(userkc.read(path)) == userkc.meaning(userkc.parse(path, USER_KUBECONFIG.encode()))
    assert not (built.path / "artifacts" / "clusters" / NESTED).exists()
    assert labelled(NESTED)["containers"] == [containers.inspect_container(top)["Id"][:12]]   # the host's: kept


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

    failed = doit(built.path, f"config={cfg}", "cluster:up", "--name", FAIL, "--workers", "0", "--wait", "8",
                  check=False, timeout=600)
    assert failed.returncode != 0
    assert f"ERROR: cluster {FAIL} failed to come up" in failed.stderr or "not ready" in failed.stderr, failed.stderr
    assert "Traceback" not in failed.stdout + failed.stderr
    assert_gone(FAIL)
    retained = doit(built.path, f"config={cfg}", "cluster:up", "--name", FAIL, "--workers", "0", "--wait", "8",
                    "--retain", check=False, timeout=600)
    try:
        assert retained.returncode != 0
        assert labelled(FAIL)["containers"], "--retain keeps the top-level container for inspection"
    finally:
        doit(built.path, "cluster:down", "--name", FAIL)
    assert_gone(FAIL)
    assert containers.dangling_volumes() - dangling_before == set()


def test_non_nested_mode(built, tmp_path, dangling_before, load_inputs):
    cfg = tmp_path / "direct.yaml"
    cfg.write_text(built.config.read_text().replace("cluster:\n", "cluster:\n  nested: false\n", 1))
    user = user_kubeconfig(tmp_path)
    up = doit(built.path, f"config={cfg}", "cluster:up", "--name", DIRECT, "--workers", "1", timeout=600,
              check=False)
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        found = labelled(DIRECT)
        assert len(found["containers"]) == 2 and len(found["networks"]) == 1 and len(found["volumes"]) == 6
        cp = containers.inspect_container(f"{DIRECT}-control-plane")
        assert [b["HostIp"] for b in cp["NetworkSettings"]["Ports"]["6443/tcp"]] == ["127.0.0.1"]
        kc = kubeconfig(built, DIRECT)
        assert stat.S_IMODE(kc.stat().st_mode) == 0o600
        assert api.node_readiness(kc.read_bytes()) == {f"{DIRECT}-control-plane": True, f"{DIRECT}-worker": True}
        row = next(r for r in host.clusters() if r["name"] == DIRECT)
        assert row["nodes"] == 2 and not row["nested"]
        # cluster:nodes, --internal and --merge in non-nested mode
        rows = node_rows(doit(built.path, f"config={cfg}", "cluster:nodes", "--name", DIRECT).stdout)
        assert list(rows) == [f"{DIRECT}-control-plane", f"{DIRECT}-worker"]
        for node, (role, address, state, ready) in rows.items():
            ip = containers.inspect_container(node)["NetworkSettings"]["Networks"][f"dindind-{DIRECT}"]["IPAddress"]
            assert (address, state, ready) == (ip, "running", "Ready")
        doit(built.path, f"config={cfg}", "cluster:kubeconfig", "--name", DIRECT, "--internal")
        internal = (built.path / "artifacts" / "clusters" / DIRECT / "kubeconfig-internal").read_bytes()
        assert api.parse_kubeconfig(internal)[0] == f"https://{rows[f'{DIRECT}-control-plane'][1]}:6443"
        # from a container beside the nodes on their network (the cluster image's Python, thrown away)
        beside = ["docker", "run", "--rm", "--name", f"dindind-test-beside-{os.getpid()}", "--network",
                  f"dindind-{DIRECT}", "--entrypoint", "", built.stamp("cluster")["tags"][0]]
        assert readiness_from(beside, internal) == dict.fromkeys(rows, True)
        doit(built.path, f"config={cfg}", "cluster:kubeconfig", "--name", DIRECT, "--merge",
             env={"KUBECONFIG": str(user)})
        assert userkc.read(user)["current-context"] == f"dindind-{DIRECT}"
        assert all(api.node_readiness(user.read_bytes()).values())
        # cluster:load straight into each node
        image, single, make_multi = load_inputs
        sh = host.Shell(DIRECT)
        platform, multi = make_multi(sh)
        run = doit(built.path, f"config={cfg}", "cluster:load", "--name", DIRECT, "--image", image,
                   "--archive", single, "--archive", multi)
        assert f"loaded 3 image(s) for {platform} into 2 node(s) of {DIRECT}" in run.stdout, run.stdout
        for node in sh.nodes:
            assert set(LOADED) <= node_images(sh, node), node
        assert no_load_files(sh)
        # stop and start run the image's own restart (create.stop/restart) here, on the host's engine
        stop = doit(built.path, f"config={cfg}", "cluster:stop", "--name", DIRECT)
        assert f"stopped cluster {DIRECT}" in stop.stdout
        for node in (f"{DIRECT}-control-plane", f"{DIRECT}-worker"):
            assert containers.inspect_container(node)["State"]["Running"] is False
        kc.unlink()         # start reads admin.conf from the control plane and exports it again
        start = doit(built.path, f"config={cfg}", "cluster:start", "--name", DIRECT, timeout=600)
        assert " ✓ Starting nodes" in start.stdout and " ✓ Installing CNI" in start.stdout, start.stdout
        assert f"cluster {DIRECT} is Ready again in " in start.stdout, start.stdout
        assert stat.S_IMODE(kc.stat().st_mode) == 0o600
        assert api.node_readiness(kc.read_bytes()) == {f"{DIRECT}-control-plane": True, f"{DIRECT}-worker": True}
        assert len(labelled(DIRECT)["containers"]) == 2     # the same containers, nothing new
    finally:
        # without $KUBECONFIG: the merge was recorded, down finds the file by that
        down = doit(built.path, f"config={cfg}", "cluster:down", "--name", DIRECT)
    assert_gone(DIRECT)
    assert f"its kubeconfig entries from {user}" in down.stdout, down.stdout
    assert userkc.meaning(userkc.read(user)) == userkc.meaning(userkc.parse(user, USER_KUBECONFIG.encode()))
    assert containers.dangling_volumes() - dangling_before == set()
