"""IPv6 and dual-stack clusters of a real Kubernetes, nested (networking.ipFamily, kubeProxyMode).

A dual-stack cluster (one control plane, one worker; kube-proxy in nftables
mode where the kernel allows it, which kube-proxy needs 5.13 for) must give
every node an address of each family and every pod an IPv4 and an IPv6
address; pods on different nodes reach each other over both, and a
RequireDualStack Service answers on its IPv4 and its IPv6 ClusterIP and by
its DNS name. An IPv6-only cluster (a control plane alone) must give nodes,
pods and Services IPv6 addresses only, and the Service must answer by its
address and its name. A control plane with disableDefaultCNI and
kubeProxyMode none must come up without a pod network or kube-proxy, and
become Ready once the user installs a network. ``cluster:down`` must leave
nothing. Bring-up
times are printed (pytest -s or -rA shows them).
"""

import ipaddress
import json
import os
import subprocess
import time

import pytest

from dindind.cluster import host, hostcheck

from integration.test_kubernetes import labelled

pytestmark = [pytest.mark.engine, pytest.mark.kubernetes]

TOOLBOX = f"dindind-test/net-toolbox-{os.getpid()}:1"    # busybox-static: httpd, wget, sh
KERNEL = hostcheck.Kernel()
NFTABLES = KERNEL.version() is not None and KERNEL.version() >= hostcheck.NFTABLES_KERNEL


@pytest.fixture(scope="module")
def toolbox(real):
    base = real.stamp("base")["tags"][0]
    dockerfile = (f"FROM {base}\nRUN apt-get update -qq && apt-get install -y -qq --no-install-recommends "
                  "busybox-static && rm -rf /var/lib/apt/lists/*\n")
    r = subprocess.run(["docker", "build", "-q", "-t", TOOLBOX, "-"], input=dockerfile, text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert r.returncode == 0, r.stderr
    yield TOOLBOX
    subprocess.run(["docker", "rmi", "-f", TOOLBOX], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Cluster:
    def __init__(self, real, name, seconds, up):
        self.real, self.name, self.seconds, self.up = real, name, seconds, up
        kubectl = sorted(real.path.glob("artifacts/kubernetes/*/kubernetes/server/bin/kubectl"))
        assert kubectl, "the real build has no kubectl"
        self.kc = kubectl[0]
        self.kubeconfig = real.path / "artifacts" / "clusters" / name / "kubeconfig"

    def kubectl(self, *args, input=None, timeout=300, check=True):
        r = subprocess.run([str(self.kc), f"--kubeconfig={self.kubeconfig}", *args], input=input, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
        if check:
            assert r.returncode == 0, f"kubectl {' '.join(args)}: {r.stdout[-3000:]}{r.stderr[-3000:]}"
        return r

    def json(self, *args):
        return json.loads(self.kubectl(*args, "-o", "json").stdout)


def bring_up(real, toolbox, tmp_path_factory, name, config):
    path = tmp_path_factory.mktemp(name) / "cluster.yaml"
    path.write_text(config)
    start = time.monotonic()
    up = real.doit("cluster:up", "--name", name, "--config", str(path), timeout=1200, check=False)
    seconds = time.monotonic() - start
    print(f"\n{name}: cluster:up took {seconds:.1f}s")
    assert up.returncode == 0, up.stdout[-5000:] + up.stderr[-5000:]
    if toolbox:
        real.doit("cluster:load", "--name", name, "--image", toolbox, timeout=600)
    return Cluster(real, name, seconds, up)


def tear_down(real, name):
    down = real.doit("cluster:down", "--name", name, check=False)
    assert down.returncode == 0, down.stdout + down.stderr
    assert labelled(name) == {"containers": [], "volumes": [], "networks": []}


def web_pod(name, node):
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: web}}}}
spec:
  nodeName: {node}
  tolerations: [{{key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}}]
  containers:
  - name: web
    image: {TOOLBOX}
    imagePullPolicy: Never
    command: [sh, -c, 'mkdir -p /www && hostname > /www/index.html && exec busybox httpd -f -p 8080 -h /www']
    ports: [{{containerPort: 8080}}]
    readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
"""


def service(policy):
    return f"""
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  ipFamilyPolicy: {policy}
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
"""


def url(ip, port):
    return f"http://[{ip}]:{port}/" if ":" in ip else f"http://{ip}:{port}/"


def wget(c, pod, ip, port):
    return c.kubectl("exec", pod, "--", "busybox", "wget", "-q", "-T", "5", "-O", "-", url(ip, port)).stdout.strip()


def families(ips):
    return sorted(6 if ":" in ip else 4 for ip in ips)


# ------------------------------------------------------------------ dual stack

DUAL = "t-dual-{}".format(os.getpid())


@pytest.fixture(scope="module")
def dual(real, toolbox, tmp_path_factory):
    config = ("apiVersion: dindind.dev/v1alpha1\nkind: Cluster\nnodes:\n- role: control-plane\n- role: worker\n"
              f"networking:\n  ipFamily: dual\n  kubeProxyMode: {'nftables' if NFTABLES else 'iptables'}\n")
    try:
        c = bring_up(real, toolbox, tmp_path_factory, DUAL, config)
        c.kubectl("apply", "-f", "-", input=web_pod("a", f"{DUAL}-control-plane") + "---" +
                  web_pod("b", f"{DUAL}-worker") + "---" + service("RequireDualStack"))
        c.kubectl("wait", "--for=condition=Ready", "pod/a", "pod/b", "--timeout=240s", timeout=300)
        yield c
    finally:
        tear_down(real, DUAL)


def test_dual_stack_nodes_have_both_families(dual):
    nodes = dual.json("get", "nodes")["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == [f"{DUAL}-control-plane", f"{DUAL}-worker"]
    for n in nodes:
        internal = [a["address"] for a in n["status"]["addresses"] if a["type"] == "InternalIP"]
        assert families(internal) == [4, 6], internal
        assert families(n["spec"]["podCIDRs"]) == [4, 6], n["spec"]
        assert {c["type"]: c["status"] for c in n["status"]["conditions"]}["Ready"] == "True"


def test_dual_stack_kube_proxy_runs_in_the_configured_mode(dual):
    mode = "nftables" if NFTABLES else "iptables"
    conf = dual.kubectl("get", "configmap", "-n", "kube-system", "kube-proxy",
                        "-o", "jsonpath={.data.config\\.conf}").stdout
    assert f"mode: {mode}" in conf, conf
    if NFTABLES:
        tables = dual.kubectl("exec", "-n", "kube-system", "ds/kube-proxy", "--", "nft", "list", "tables").stdout
        assert "table ip kube-proxy" in tables and "table ip6 kube-proxy" in tables, tables


def test_dual_stack_pods_get_both_families_and_reach_each_other_over_both(dual):
    pods = {p["metadata"]["name"]: p for p in dual.json("get", "pods", "-l", "app=web")["items"]}
    ips = {name: [a["ip"] for a in p["status"]["podIPs"]] for name, p in pods.items()}
    for name, addresses in ips.items():
        assert families(addresses) == [4, 6], (name, addresses)
    for client, server in (("a", "b"), ("b", "a")):
        for ip in ips[server]:
            assert wget(dual, client, ip, 8080) == server, (client, server, ip)


def test_a_dual_stack_service_answers_over_ipv4_and_ipv6(dual):
    svc = dual.json("get", "service", "web")
    cluster_ips = svc["spec"]["clusterIPs"]
    assert families(cluster_ips) == [4, 6], cluster_ips
    assert svc["spec"]["ipFamilies"] == ["IPv4", "IPv6"]       # IPv4 first: kind's default order
    for ip in cluster_ips:
        for client in ("a", "b"):
            assert wget(dual, client, ip, 80) in ("a", "b"), (client, ip)
    dual.kubectl("wait", "--for=condition=Ready", "pod", "-n", "kube-system", "-l", "k8s-app=kube-dns",
                 "--timeout=120s", timeout=150)
    assert wget(dual, "a", "web.default.svc.cluster.local", 80) in ("a", "b")      # by name, through CoreDNS


# ------------------------------------------------------------------ IPv6 only

V6 = "t-v6-{}".format(os.getpid())


@pytest.fixture(scope="module")
def ipv6(real, toolbox, tmp_path_factory):
    config = ("apiVersion: dindind.dev/v1alpha1\nkind: Cluster\nnodes:\n- role: control-plane\n"
              "networking:\n  ipFamily: ipv6\n")
    try:
        c = bring_up(real, toolbox, tmp_path_factory, V6, config)
        c.kubectl("apply", "-f", "-", input=web_pod("a", f"{V6}-control-plane") + "---" +
                  web_pod("b", f"{V6}-control-plane") + "---" + service("SingleStack"))
        c.kubectl("wait", "--for=condition=Ready", "pod/a", "pod/b", "--timeout=240s", timeout=300)
        yield c
    finally:
        tear_down(real, V6)


def test_an_ipv6_cluster_has_ipv6_nodes_pods_and_services(ipv6):
    node = ipv6.json("get", "node", f"{V6}-control-plane")
    internal = [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"]
    assert families(internal) == [6], internal
    pods = ipv6.json("get", "pods", "-l", "app=web")["items"]
    for p in pods:
        assert families([a["ip"] for a in p["status"]["podIPs"]]) == [6], p["status"]
    b = next(p for p in pods if p["metadata"]["name"] == "b")
    assert wget(ipv6, "a", b["status"]["podIP"], 8080) == "b"
    svc = ipv6.json("get", "service", "web")
    assert families(svc["spec"]["clusterIPs"]) == [6]
    assert wget(ipv6, "a", svc["spec"]["clusterIP"], 80) in ("a", "b")
    default = ipv6.json("get", "service", "kubernetes")
    assert ":" in default["spec"]["clusterIP"], default["spec"]
    ipv6.kubectl("wait", "--for=condition=Ready", "pod", "-n", "kube-system", "-l", "k8s-app=kube-dns",
                 "--timeout=120s", timeout=150)
    # by name, through CoreDNS on its IPv6 ClusterIP
    assert wget(ipv6, "a", "web.default.svc.cluster.local", 80) in ("a", "b")


# ------------------------------------------------------------------ bring your own network

OWN = "t-ownnet-{}".format(os.getpid())
OWN_CP = f"{OWN}-control-plane"


def own_conflist(pod_cidr):
    """What a user's own pod network would install: the node's CNI bridge on its podCIDR (a name of its own)."""
    return json.dumps({"cniVersion": "0.4.0", "name": "users-own", "plugins": [
        {"type": "bridge", "bridge": "own0", "isGateway": True, "ipMasq": True,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": pod_cidr}]], "routes": [{"dst": "0.0.0.0/0"}]}},
        {"type": "portmap", "capabilities": {"portMappings": True}}]})


def test_without_the_default_network_and_kube_proxy_the_users_own_network_takes_over(real, toolbox, tmp_path_factory):
    """disableDefaultCNI + kubeProxyMode none (what a kube-proxy-replacing CNI asks for): the control plane
    comes up with neither, cluster:up stops waiting once the node has registered, the node is NotReady for
    want of a network; a network installed by hand makes it Ready, and a pod without any toleration runs
    on the lone control plane (untainted, as kind leaves a cluster without workers)."""
    config = ("apiVersion: dindind.dev/v1alpha1\nkind: Cluster\nnodes:\n- role: control-plane\n"
              "networking:\n  kubeProxyMode: none\n  disableDefaultCNI: true\n")
    try:
        c = bring_up(real, toolbox, tmp_path_factory, OWN, config)
        assert "1 nodes registered after" in c.up.stdout and "no pod network (disableDefaultCNI)" in c.up.stdout, \
            c.up.stdout
        assert "Installing CNI" not in c.up.stdout
        node = c.json("get", "node", OWN_CP)
        ready = {x["type"]: x for x in node["status"]["conditions"]}["Ready"]
        assert ready["status"] == "False" and "NetworkReady=false" in ready["message"], ready
        # kubeadm's control-plane taint is gone; only the node controller's not-ready one may be there
        assert [t["key"] for t in node["spec"].get("taints") or []
                if t["key"] == "node-role.kubernetes.io/control-plane"] == [], node["spec"]
        sh = host.Shell(OWN)
        assert sh.run(OWN_CP, ["ls", "-A", "/etc/cni/net.d"])[1].strip() == ""
        for kind in ("daemonset", "configmap"):
            r = c.kubectl("get", kind, "-n", "kube-system", "kube-proxy", check=False)
            assert r.returncode != 0 and "NotFound" in r.stderr, (kind, r.stdout, r.stderr)
        pods = c.json("get", "pods", "-n", "kube-system")["items"]
        assert not [p for p in pods if p["metadata"]["name"].startswith("kube-proxy")], pods

        # the user's own network: a conflist on the node's podCIDR (the node controller assigns it a moment after
        # the node registers); containerd picks the file up and the kubelet reports Ready
        deadline = time.monotonic() + 120
        while not node["spec"].get("podCIDR") and time.monotonic() < deadline:
            time.sleep(1)
            node = c.json("get", "node", OWN_CP)
        pod_cidr = node["spec"]["podCIDR"]
        sh.run(OWN_CP, ["sh", "-c", f"echo '{own_conflist(pod_cidr)}' > /etc/cni/net.d/10-own.conflist"])
        c.kubectl("wait", "--for=condition=Ready", f"node/{OWN_CP}", "--timeout=120s", timeout=150)
        c.kubectl("run", "own", f"--image={TOOLBOX}", "--image-pull-policy=Never", "--restart=Never", "--",
                  "sh", "-c", "echo on-my-own-network")
        phase = ""
        for _ in range(180):
            phase = c.kubectl("get", "pod", "own", "-o", "jsonpath={.status.phase}").stdout
            if phase in ("Succeeded", "Failed"):
                break
            time.sleep(1)
        assert phase == "Succeeded", c.kubectl("describe", "pod", "own").stdout[-3000:]
        assert c.kubectl("logs", "own").stdout.strip() == "on-my-own-network"
        pod = c.json("get", "pod", "own")
        assert not [t for t in pod["spec"].get("tolerations", []) if "control-plane" in t.get("key", "")], pod["spec"]
        assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(pod_cidr), pod["status"]
    finally:
        tear_down(real, OWN)
