"""dindind.sample_kube: the kubelet/kubeadm stand-in, run for real on this host (no docker).

Each node is a temporary root ($DINDIND_SAMPLE_ROOT) and ``systemctl`` is a
small script that starts the kubelet stand-in in the background the way
kubelet.service and 10-kubeadm.conf do, so kubeadm init and join run whole.
"""

import base64
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from dindind.build.sources import sample, sample_kube

VERSION = "v1.31.2+sample"
EPOCH = 1700000000
TOKEN = "abcdef.0123456789abcdef"


FAKE_SYSTEMCTL = """\
# systemctl for the tests: "restart kubelet" (re)starts the stand-in in the background
# with kubeadm's flags, as kubelet.service + 10-kubeadm.conf do; "stop kubelet" stops it.
pidfile="$DINDIND_SAMPLE_ROOT/kubelet.pid"
if [ -f "$pidfile" ]; then
  pid=$(cat "$pidfile"); kill "$pid" 2>/dev/null
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  rm -f "$pidfile"
fi
[ "$1" = restart ] || exit 0
KUBELET_KUBEADM_ARGS=
. "$DINDIND_SAMPLE_ROOT/var/lib/kubelet/kubeadm-flags.env"
"$SAMPLE_PYTHON" "$SAMPLE_KUBELET" $KUBELET_KUBEADM_ARGS >>"$DINDIND_SAMPLE_ROOT/kubelet.log" 2>&1 &
echo $! >"$pidfile"
"""

INIT = {
    "v1beta3": """\
apiVersion: kubeadm.k8s.io/v1beta3
kind: ClusterConfiguration
clusterName: sample
kubernetesVersion: v1.30.6
apiServer:
  certSANs: [localhost, "127.0.0.1", api.example.test]
  extraArgs:
    runtime-config: ""
networking:
  podSubnet: 10.244.0.0/16
---
apiVersion: kubeadm.k8s.io/v1beta3
kind: InitConfiguration
bootstrapTokens:
- groups:
  - system:bootstrappers:kubeadm:default-node-token
  token: "@TOKEN@"   # per cluster
localAPIEndpoint:
  advertiseAddress: 127.0.0.1
  bindPort: @PORT@
nodeRegistration:
  criSocket: unix:///run/containerd/containerd.sock
  kubeletExtraArgs:
    node-ip: 127.0.0.1
    node-labels: "name=not-this-one"
  name: "sample-cp"
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: systemd
""",
    "v1beta4": """\
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
clusterName: sample
kubernetesVersion: v1.31.2
apiServer:
  certSANs:
  - localhost
  - "127.0.0.1"
  - api.example.test
  extraArgs:
  - name: runtime-config
    value: ""
---
# the node's own settings
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
bootstrapTokens:
- token: '@TOKEN@'
  ttl: 24h0m0s
localAPIEndpoint:
  advertiseAddress: "127.0.0.1"
  bindPort: @PORT@
nodeRegistration:
  kubeletExtraArgs:
  - name: node-ip
    value: 127.0.0.1
  - name: provider-id
    value: dindind://sample-cp
  - name: node-labels
    value: "example.com/tier=front,zone=a"
  name: sample-cp
  taints: []
---
kind: KubeProxyConfiguration
apiVersion: kubeproxy.config.k8s.io/v1alpha1
conntrack:
  maxPerCore: 0
""",
}

JOIN = {
    "v1beta3": """\
apiVersion: kubeadm.k8s.io/v1beta3
kind: JoinConfiguration
nodeRegistration:
  kubeletExtraArgs:
    node-ip: 127.0.0.1
    node-labels: example.com/tier=back
  name: @NAME@
discovery:
  bootstrapToken:
    apiServerEndpoint: "127.0.0.1:@PORT@"
    token: @TOKEN@
    unsafeSkipCAVerification: true
""",
    "v1beta4": """\
apiVersion: kubeadm.k8s.io/v1beta4
kind: JoinConfiguration
discovery:
  bootstrapToken:
    apiServerEndpoint: 127.0.0.1:@PORT@
    token: "@TOKEN@"
    unsafeSkipCAVerification: true
nodeRegistration:
  kubeletExtraArgs:
  - name: node-ip
    value: 127.0.0.1
  - name: node-labels
    value: 'example.com/tier=back'
  name: "@NAME@"
""",
}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """One node: a root directory and the kubeadm/kubelet stand-in run against it."""

    def __init__(self, tmp, name, bin_dir):
        self.name, self.root, self.bin = name, tmp / name, bin_dir
        self.root.mkdir()
        (tmp / "systemctl.sh").write_text(FAKE_SYSTEMCTL)
        self.env = {**os.environ, "DINDIND_SAMPLE_ROOT": str(self.root), "SAMPLE_PYTHON": sys.executable,
                    "SAMPLE_KUBELET": str(bin_dir / "kubelet"),
                    "DINDIND_SAMPLE_SYSTEMCTL": f"sh {tmp / 'systemctl.sh'}"}

    def run(self, tool, *args, check=True):
        proc = subprocess.run([sys.executable, str(self.bin / tool), *args], env=self.env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert not check or proc.returncode == 0, (proc, self.log())
        return proc

    def kubeadm(self, command, config, check=True):
        path = self.root / f"{command}.yaml"
        path.write_text(config)
        return self.run("kubeadm", command, f"--config={path}", "--skip-phases=preflight", "--v=5", check=check)

    def path(self, absolute):
        return self.root / absolute.lstrip("/")

    def log(self):
        log = self.root / "kubelet.log"
        return log.read_text() if log.exists() else ""

    def stop(self):
        pidfile = self.root / "kubelet.pid"
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGTERM)
            except ProcessLookupError:
                pass


def _kubeconfig(node, file):
    return sample_kube.read_kubeconfig(node.path(f"/etc/kubernetes/{file}").read_text())


def _client(tmp_path, kc=None, ca=None):
    """An SSL context trusting the cluster CA, presenting the kubeconfig's client cert if given."""
    ctx = ssl.create_default_context(cadata=(ca or kc["ca"]).decode())
    if kc:
        pem = tmp_path / f"client-{time.monotonic_ns()}.pem"
        pem.write_bytes(kc["cert"] + kc["key"])
        ctx.load_cert_chain(pem)
    return ctx


def _call(url, ctx, method="GET", body=None, headers=None):
    return sample_kube.call(url, ctx, method, body, headers)


@pytest.fixture(scope="module", params=["v1beta3", "v1beta4"])
def cluster(request, tmp_path_factory):
    """A control plane and one worker, each with its kubelet stand-in running."""
    api = request.param
    tmp = tmp_path_factory.mktemp(f"cluster-{api}")
    sample.generate(tmp / "tree", VERSION, EPOCH)
    bin_dir = tmp / "tree/kubernetes/server/bin"
    port = _free_port()
    nodes = []
    request.addfinalizer(lambda: [n.stop() for n in nodes])
    cp = Node(tmp, "sample-cp", bin_dir)
    nodes.append(cp)
    init = cp.kubeadm("init", INIT[api].replace("@PORT@", str(port)).replace("@TOKEN@", TOKEN))
    worker = Node(tmp, "sample-w1", bin_dir)
    nodes.append(worker)
    join = worker.kubeadm("join", JOIN[api].replace("@PORT@", str(port)).replace("@TOKEN@", TOKEN)
                          .replace("@NAME@", "sample-w1"))
    return {"api": api, "port": port, "cp": cp, "worker": worker, "init": init, "join": join, "tmp": tmp,
            "bin": bin_dir, "url": f"https://127.0.0.1:{port}", "nodes": nodes}


def test_init_succeeds(cluster):
    assert "Your Kubernetes control-plane has initialized successfully!" in cluster["init"].stdout
    assert "This node has joined the cluster" in cluster["join"].stdout


@pytest.mark.parametrize("file", ["admin.conf", "kubelet.conf", "pki/ca.key", "pki/apiserver.key",
                                  "pki/sample-bootstrap-token"])
def test_secrets_are_0600(cluster, file):
    assert cluster["cp"].path(f"/etc/kubernetes/{file}").stat().st_mode & 0o777 == 0o600
    if file == "kubelet.conf":
        assert cluster["worker"].path("/etc/kubernetes/kubelet.conf").stat().st_mode & 0o777 == 0o600


def _subject(pem):
    return subprocess.run(["openssl", "x509", "-noout", "-subject", "-ext", "subjectAltName", "-nameopt", "RFC2253"],
                          input=pem, capture_output=True, check=True).stdout.decode()


def test_credentials(cluster):
    cp, port = cluster["cp"], cluster["port"]
    admin = _kubeconfig(cp, "admin.conf")
    assert admin["server"] == f"https://127.0.0.1:{port}"
    assert "subject=CN=kubernetes-admin,O=system:masters" in _subject(admin["cert"])
    assert "CN=system:node:sample-cp,O=system:nodes" in _subject(_kubeconfig(cp, "kubelet.conf")["cert"])
    worker = _kubeconfig(cluster["worker"], "kubelet.conf")
    assert "CN=system:node:sample-w1,O=system:nodes" in _subject(worker["cert"])
    assert worker["ca"] == admin["ca"] == cp.path("/etc/kubernetes/pki/ca.crt").read_bytes()
    assert worker["server"] == admin["server"]
    sans = _subject(cp.path("/etc/kubernetes/pki/apiserver.crt").read_bytes())
    for san in ("IP Address:127.0.0.1", "DNS:localhost", "DNS:api.example.test", "DNS:sample-cp",
                "DNS:kubernetes", "DNS:kubernetes.default"):
        assert san in sans
    assert cp.path("/etc/kubernetes/pki/sample-bootstrap-token").read_text() == f"{TOKEN}\n"


def test_manifest_and_flags(cluster):
    manifest = cluster["cp"].path("/etc/kubernetes/manifests/kube-apiserver.yaml").read_text()
    assert f"image: {sample.component_ref('kube-apiserver', VERSION)}\n" in manifest
    assert f"--secure-port={cluster['port']}," in manifest
    # the names are not the hostname: kubeadm overrides it; then nodeRegistration.kubeletExtraArgs, in order
    extra = {"v1beta3": ({"node-ip": "127.0.0.1", "node-labels": "name=not-this-one"},
                         {"node-ip": "127.0.0.1", "node-labels": "example.com/tier=back"}),
             "v1beta4": ({"node-ip": "127.0.0.1", "provider-id": "dindind://sample-cp",
                          "node-labels": "example.com/tier=front,zone=a"},
                         {"node-ip": "127.0.0.1", "node-labels": "example.com/tier=back"})}[cluster["api"]]
    for node, args in zip((cluster["cp"], cluster["worker"]), extra):
        flags = node.path("/var/lib/kubelet/kubeadm-flags.env").read_text()
        wanted = " ".join([f"--hostname-override={node.name}"] + [f"--{k}={v}" for k, v in args.items()])
        assert flags == f'KUBELET_KUBEADM_ARGS="{wanted}"\n'


def _nodes(cluster, tmp_path, wait=10):
    ctx = _client(tmp_path, _kubeconfig(cluster["cp"], "admin.conf"))
    deadline = time.monotonic() + wait
    while True:
        code, body = _call(f"{cluster['url']}/api/v1/nodes?limit=500", ctx)
        assert code == 200, body
        ready = {n["metadata"]["name"]: n["status"]["conditions"][0]["status"] for n in body["items"]}
        if set(ready.values()) == {"True"} or time.monotonic() > deadline:
            return body, ready
        time.sleep(0.2)


def test_every_node_ready(cluster, tmp_path):
    body, ready = _nodes(cluster, tmp_path)
    assert body["kind"] == "NodeList"
    assert ready == {"sample-cp": "True", "sample-w1": "True"}, (cluster["cp"].log(), cluster["worker"].log())
    by_name = {n["metadata"]["name"]: n for n in body["items"]}
    assert by_name["sample-cp"]["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] == ""
    assert "node-role.kubernetes.io/control-plane" not in by_name["sample-w1"]["metadata"]["labels"]
    # the kubelet's --node-labels (kubeadm's kubeletExtraArgs) are on its Node, beside the well-known ones
    cp_labels = {"v1beta3": {"name": "not-this-one"},
                 "v1beta4": {"example.com/tier": "front", "zone": "a"}}[cluster["api"]]
    assert by_name["sample-cp"]["metadata"]["labels"] == {
        **cp_labels, "kubernetes.io/hostname": "sample-cp", "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
        "node-role.kubernetes.io/control-plane": ""}
    assert by_name["sample-w1"]["metadata"]["labels"]["example.com/tier"] == "back"
    assert {n["status"]["nodeInfo"]["kubeletVersion"] for n in body["items"]} == {VERSION}
    ctx = _client(tmp_path, _kubeconfig(cluster["cp"], "admin.conf"))
    code, node = _call(f"{cluster['url']}/api/v1/nodes/sample-w1", ctx)
    assert code == 200 and node["kind"] == "Node" and node["metadata"]["name"] == "sample-w1"
    assert node["status"]["conditions"][0] == {**node["status"]["conditions"][0], "type": "Ready", "status": "True"}
    assert _call(f"{cluster['url']}/api/v1/nodes/nope", ctx)[0] == 404


def test_a_stale_heartbeat_is_unknown(cluster, tmp_path):
    nodes_dir = cluster["cp"].path("/var/lib/dindind-sample/nodes")
    (nodes_dir / "sample-gone.json").write_text(json.dumps({"name": "sample-gone", "heartbeat": time.time() - 41}))
    try:
        _, ready = _nodes(cluster, tmp_path, wait=0)
        assert ready["sample-gone"] == "Unknown"
    finally:
        (nodes_dir / "sample-gone.json").unlink()


def test_anonymous_calls(cluster, tmp_path):
    url, ctx = cluster["url"], _client(tmp_path, ca=cluster["cp"].path("/etc/kubernetes/pki/ca.crt").read_bytes())
    for path in ("/readyz", "/livez", "/healthz"):
        with urllib.request.urlopen(url + path, context=ctx) as resp:
            assert (resp.status, resp.read()) == (200, b"ok")
    code, version = _call(url + "/version", ctx)
    assert code == 200 and version["gitVersion"] == VERSION and version["minor"] == "31"
    code, info = _call(url + "/api/v1/namespaces/kube-public/configmaps/cluster-info", ctx)
    assert code == 200 and f"server: {url}\n" in info["data"]["kubeconfig"]
    code, status = _call(url + "/api/v1/nodes", ctx)
    assert code == 403 and status["kind"] == "Status" and "system:anonymous" in status["message"]
    assert _call(url + "/api/v1/nodes/sample-cp", ctx)[0] == 403
    code, status = _call(url + "/api/v1/pods", ctx)
    assert code == 404 and status["reason"] == "NotFound"


def test_a_node_sees_no_nodes_and_updates_only_itself(cluster, tmp_path):
    ctx = _client(tmp_path, _kubeconfig(cluster["worker"], "kubelet.conf"))
    assert _call(cluster["url"] + "/api/v1/nodes", ctx)[0] == 403
    assert _call(cluster["url"] + "/api/v1/nodes/sample-cp/status", ctx, "PUT", {})[0] == 403
    assert _call(cluster["url"] + "/api/v1/nodes/sample-w1/status", ctx, "PUT", {})[0] == 200


def test_a_wrong_bootstrap_token_is_refused(cluster, tmp_path):
    ctx = _client(tmp_path, ca=cluster["cp"].path("/etc/kubernetes/pki/ca.crt").read_bytes())
    _, csr = sample_kube.new_key_csr([("O", "system:nodes"), ("CN", "system:node:intruder")])
    body = {"spec": {"request": base64.b64encode(csr).decode()}}
    for headers in ({}, {"Authorization": "Bearer abcdef.0000000000000000"}):
        code, status = _call(cluster["url"] + sample_kube.CSR_PATH, ctx, "POST", body, headers)
        assert (code, status["kind"], status["reason"]) == (401, "Status", "Unauthorized")
    intruder = Node(cluster["tmp"], f"intruder-{cluster['api']}", cluster["bin"])
    proc = intruder.kubeadm("join", JOIN[cluster["api"]].replace("@PORT@", str(cluster["port"]))
                            .replace("@TOKEN@", "abcdef.0000000000000000").replace("@NAME@", "intruder"), check=False)
    assert proc.returncode == 1 and "TLS bootstrap refused (401)" in proc.stderr
    assert not intruder.path("/etc/kubernetes/kubelet.conf").exists()


def test_the_token_signs_only_node_certificates(cluster, tmp_path):
    ctx = _client(tmp_path, ca=cluster["cp"].path("/etc/kubernetes/pki/ca.crt").read_bytes())
    _, csr = sample_kube.new_key_csr([("O", "system:masters"), ("CN", "kubernetes-admin")])
    code, _ = _call(cluster["url"] + sample_kube.CSR_PATH, ctx, "POST",
                    {"spec": {"request": base64.b64encode(csr).decode()}}, {"Authorization": f"Bearer {TOKEN}"})
    assert code == 403


def test_reset(cluster):
    node = Node(cluster["tmp"], f"sample-w2-{cluster['api']}", cluster["bin"])
    cluster["nodes"].append(node)
    node.kubeadm("join", JOIN[cluster["api"]].replace("@PORT@", str(cluster["port"])).replace("@TOKEN@", TOKEN)
                 .replace("@NAME@", "sample-w2"))
    pid = int(node.path("/kubelet.pid").read_text())
    assert "dindind sample" in node.run("kubeadm", "reset", "-f").stdout
    assert not node.path("/kubelet.pid").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    for gone in ("/etc/kubernetes/kubelet.conf", "/etc/kubernetes/pki", "/var/lib/kubelet/kubeadm-flags.env",
                 "/var/lib/dindind-sample"):
        assert not node.path(gone).exists()


def test_kubelet_waits_for_kubeadm(tmp_path):
    sample.generate(tmp_path / "tree", VERSION, EPOCH)
    node = Node(tmp_path, "fresh", tmp_path / "tree/kubernetes/server/bin")
    proc = node.run("kubelet", "--config=/var/lib/kubelet/config.yaml", "--unknown-flag=x", check=False)
    assert proc.returncode == 1 and "waiting for kubeadm" in proc.stderr
    proc = node.run("kubeadm", "init", check=False)
    assert proc.returncode == 1 and "--config" in proc.stderr


def test_config_fields():
    for api in ("v1beta3", "v1beta4"):
        docs = sample_kube.split_config(INIT[api].replace("@PORT@", "6443").replace("@TOKEN@", TOKEN))
        ic, cc = docs["InitConfiguration"], docs["ClusterConfiguration"]
        assert sample_kube.field(ic, "name", "nodeRegistration") == "sample-cp"
        assert sample_kube.field(ic, "token") == TOKEN
        assert sample_kube.field(ic, "bindPort", "localAPIEndpoint") == "6443"
        assert sample_kube.items(sample_kube.under(cc, "apiServer"), "certSANs") == \
            ["localhost", "127.0.0.1", "api.example.test"]
        join = sample_kube.split_config(JOIN[api].replace("@PORT@", "6443").replace("@TOKEN@", TOKEN)
                                               .replace("@NAME@", "w1"))["JoinConfiguration"]
        assert sample_kube.field(join, "apiServerEndpoint", "bootstrapToken") == "127.0.0.1:6443"
        assert sample_kube.field(join, "token", "bootstrapToken") == TOKEN
        assert sample_kube.field(join, "name", "nodeRegistration") == "w1"


# ------------------------------------------------------------------ high availability

KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
JOIN_CP = JOIN["v1beta4"] + """\
controlPlane:
  localAPIEndpoint:
    advertiseAddress: "127.0.0.1"
    bindPort: @OWN@
  certificateKey: "@KEY@"
"""


def test_control_planes_join_with_the_uploaded_certificates_one_at_a_time(tmp_path):
    """init --upload-certs, control-plane joins (wrong key refused, a second member refused while one
    added has not started), a worker joined through another control plane: every API server answers
    from the one store."""
    sample.generate(tmp_path / "tree", VERSION, EPOCH)
    bin_dir = tmp_path / "tree/kubernetes/server/bin"
    ports = [_free_port() for _ in range(3)]
    nodes = []
    try:
        cp1 = Node(tmp_path, "sample-cp", bin_dir)
        nodes.append(cp1)
        init = INIT["v1beta4"].replace("@PORT@", str(ports[0])).replace("@TOKEN@", TOKEN) \
            .replace("bootstrapTokens:", f'certificateKey: "{KEY}"\nbootstrapTokens:')
        path = cp1.root / "init.yaml"
        path.write_text(init)
        out = cp1.run("kubeadm", "init", f"--config={path}", "--upload-certs", "--skip-certificate-key-print")
        assert KEY not in out.stdout + out.stderr
        assert cp1.path(sample_kube.CERTS).stat().st_mode & 0o777 == 0o600
        assert KEY.encode() not in cp1.path(sample_kube.CERTS).read_bytes()

        def join_cp(name, port, key=KEY, check=True):
            node = Node(tmp_path, name, bin_dir)
            nodes.append(node)
            cfg = (JOIN_CP.replace("@PORT@", str(ports[0])).replace("@TOKEN@", TOKEN).replace("@NAME@", name)
                   .replace("@OWN@", str(port)).replace("@KEY@", key))
            return node, node.kubeadm("join", cfg, check=check)

        _, wrong = join_cp("sample-wrong", ports[1], key="ff" * 32, check=False)
        assert wrong.returncode == 1 and "does not decrypt" in wrong.stderr
        cp2, _ = join_cp("sample-cp2", ports[1])
        # a member added that has not started yet: etcd takes no other
        admin = _client(tmp_path, _kubeconfig(cp1, "admin.conf"))
        store = f"https://127.0.0.1:{ports[0]}{sample_kube.STORE_PATH}/members"
        assert _call(store, admin, "POST", {"name": "sample-ghost"})[0] == 201
        _, refused = join_cp("sample-cp3", ports[2], check=False)
        assert refused.returncode == 1 and "has not started yet" in refused.stderr, refused.stderr
        assert _call(f"{store}/sample-ghost", admin, "PUT", {})[0] == 200
        nodes.pop().stop()
        cp3, _ = join_cp("sample-cp3b", ports[2])
        members = _call(store, admin)[1]
        assert [m["name"] for m in members] == ["sample-cp", "sample-cp2", "sample-ghost", "sample-cp3b"]
        for before, after in zip(members, members[1:]):
            assert before["started"] <= after["added"]
        # a worker joined through the second control plane; every API server lists every node
        worker = Node(tmp_path, "sample-w1", bin_dir)
        nodes.append(worker)
        worker.kubeadm("join", JOIN["v1beta4"].replace("@PORT@", str(ports[1])).replace("@TOKEN@", TOKEN)
                       .replace("@NAME@", "sample-w1"))
        for port in ports:
            answer = _call(f"https://127.0.0.1:{port}/api/v1/nodes", admin)[1]
            ready = {n["metadata"]["name"]: n["status"]["conditions"][0]["status"] for n in answer["items"]}
            assert {k: v for k, v in ready.items() if k != "sample-ghost"} == {
                "sample-cp": "True", "sample-cp2": "True", "sample-cp3b": "True", "sample-w1": "True"}, port
            roles = {n["metadata"]["name"] for n in answer["items"]
                     if "node-role.kubernetes.io/control-plane" in n["metadata"]["labels"]}
            assert {"sample-cp", "sample-cp2", "sample-cp3b"} <= roles
    finally:
        for n in nodes:
            n.stop()


def test_kube_public_configmaps_for_the_admin_only(cluster, tmp_path):
    """What the local registry's ConfigMap (local-registry-hosting) needs: create, replace, get; 409 once made."""
    url = cluster["url"] + "/api/v1/namespaces/kube-public/configmaps"
    admin = _client(tmp_path, _kubeconfig(cluster["cp"], "admin.conf"))
    node = _client(tmp_path, _kubeconfig(cluster["worker"], "kubelet.conf"))
    name = f"hosting-{cluster['api']}"
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v1"}}
    assert _call(url, node, "POST", cm)[0] == 403
    assert _call(f"{url}/{name}", admin)[0] == 404
    assert _call(f"{url}/{name}", admin, "PUT", cm)[0] == 404
    assert _call(url, admin, "POST", cm)[0] == 201
    assert _call(url, admin, "POST", cm)[0] == 409
    assert _call(f"{url}/{name}", admin, "PUT", {**cm, "data": {"k": "v2"}})[0] == 200
    code, got = _call(f"{url}/{name}", admin)
    assert code == 200 and got["data"] == {"k": "v2"} and got["metadata"]["namespace"] == "kube-public"
    assert _call(f"{url}/{name}", node)[0] == 403
    for bad in ({**cm, "data": {"k": 1}}, {**cm, "kind": "Secret"}, {**cm, "metadata": {"name": "Bad/Name"}}):
        assert _call(url, admin, "POST", bad)[0] == 400
    assert _call(f"{url}/other", admin, "PUT", cm)[0] == 400       # the name in the path is the object's
    assert _call(f"{url}/{name}", admin, "DELETE")[0] == 405
