"""Dual-stack plumbing against the real engine, with the sample Kubernetes (ipFamily, kubeProxyMode).

One nested dual-stack cluster (a control plane and a worker, kubeProxyMode
none): the cluster container runs with the IPv6 kernel settings its inner
engine needs, the node network has IPv6 with nodeSubnetIPv6, each node its
static IPv6 address, kubeadm's node-ip both addresses and no kube-proxy
configuration, the pod network a range per family and IPv6 routes between the
nodes, which reach each other over IPv6. Then configs the host or the config
rules refuse, before anything is created. What needs Kubernetes itself (pods
with both families, Services) is tests/integration/test_networking.py.
"""

import json

import pytest
import yaml

from dindind.cluster import host, hostcheck
from dindind.docker import containers

from integration.test_cluster import assert_gone

pytestmark = pytest.mark.engine

NAME = "t-netfamily"
CONFIG = """\
apiVersion: dindind.dev/v1alpha1
kind: Cluster
name: {name}
nodes: [{{role: control-plane}}, {{role: worker}}]
networking:
  ipFamily: dual
  kubeProxyMode: {mode}
  nodeSubnetIPv6: fd00:172:77::/64
"""


@pytest.fixture(scope="module")
def up(built, tmp_path_factory):
    path = tmp_path_factory.mktemp("netfamily") / "cluster.yaml"
    path.write_text(CONFIG.format(name=NAME, mode="none"))
    run = built.doit("cluster:up", "--config", str(path), timeout=600, check=False)
    try:
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
        yield run
    finally:
        built.doit("cluster:down", "--name", NAME, check=False)
        assert_gone(NAME)


def test_the_cluster_container_has_ipv6_on(up):
    info = containers.inspect_container(f"dindind-{NAME}")
    assert info["HostConfig"]["Sysctls"] == hostcheck.NESTED_SYSCTLS
    code, out = containers.exec_in(f"dindind-{NAME}", ["cat", "/proc/sys/net/ipv6/conf/all/disable_ipv6"])
    assert out.strip() == "0"


def test_the_node_network_and_the_nodes_have_ipv6(up):
    sh = host.Shell(NAME)
    _, text = sh.top_run(["docker", "network", "inspect", f"dindind-{NAME}"])
    net = json.loads(text)[0]
    assert net["EnableIPv6"] is True
    assert sorted(c["Subnet"] for c in net["IPAM"]["Config"]) == ["172.30.0.0/24", "fd00:172:77::/64"]
    for node, ip6 in ((f"{NAME}-control-plane", "fd00:172:77::2"), (f"{NAME}-worker", "fd00:172:77::3")):
        _, text = sh.top_run(["docker", "inspect", node])
        endpoint = json.loads(text)[0]["NetworkSettings"]["Networks"][f"dindind-{NAME}"]
        assert endpoint["GlobalIPv6Address"] == ip6, endpoint
    code, out = sh.run(f"{NAME}-control-plane", ["ping", "-6", "-c", "1", "-W", "5", "fd00:172:77::3"], check=False)
    assert code == 0, out
    # the engine's DNS moved to the node's IPv4 address (pods cannot reach 127.0.0.11)
    _, resolv = sh.run(f"{NAME}-worker", ["cat", "/etc/resolv.conf"])
    assert "nameserver 172.30.0.3" in resolv and "127.0.0.11" not in resolv, resolv


def test_kubeadm_gets_both_addresses_and_no_kube_proxy(up):
    sh = host.Shell(NAME)
    _, conf = sh.run(f"{NAME}-worker", ["cat", "/etc/dindind/kubeadm.conf"])
    docs = {d["kind"]: d for d in yaml.safe_load_all(conf) if d}
    args = {a["name"]: a["value"] for a in docs["JoinConfiguration"]["nodeRegistration"]["kubeletExtraArgs"]}
    assert args["node-ip"] == "172.30.0.3,fd00:172:77::3"
    assert docs["ClusterConfiguration"]["networking"]["podSubnet"] == "10.244.0.0/16,fd00:10:244::/56"
    assert "KubeProxyConfiguration" not in docs
    _, flags = sh.run(f"{NAME}-worker", ["cat", "/var/lib/kubelet/kubeadm-flags.env"])
    assert "--node-ip=172.30.0.3,fd00:172:77::3" in flags, flags


def test_the_pod_network_has_both_families(up):
    sh = host.Shell(NAME)
    cp = f"{NAME}-control-plane"
    _, text = sh.run(cp, ["cat", "/etc/cni/net.d/10-dindind.conflist"])
    ranges = json.loads(text)["plugins"][0]["ipam"]["ranges"]
    assert ranges == [[{"subnet": "10.244.0.0/24"}], [{"subnet": "fd00:10:244::/64"}]]
    _, routes = sh.run(cp, ["ip", "-6", "route", "show", "fd00:10:244:1::/64"])
    assert "via fd00:172:77::3" in routes, routes
    code, out = sh.run(cp, ["ip6tables", "-C", "OUTPUT", "-d", "fd00:10:96::/112", "-m", "comment", "--comment",
                            "dindind: unclaimed service port", "-j", "REJECT"], check=False)
    assert code == 0, out


def test_what_the_host_or_the_rules_cannot_do_is_refused_before_anything_is_created(built, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.format(name="t-netfamily-bad", mode="iptables")
                   + "  podSubnet: 10.244.0.0/16\n  serviceSubnet: fd00:172:77::/112,10.96.0.0/16\n")
    run = built.doit("cluster:up", "--config", str(bad), check=False, timeout=300)
    out = run.stdout + run.stderr
    assert run.returncode != 0 and "Traceback" not in out
    for needle in ("networking.podSubnet: 10.244.0.0/16 is single stack",
                   "networking.serviceSubnet: fd00:172:77::/112 overlaps networking.nodeSubnetIPv6 fd00:172:77::/64"):
        assert needle in out, out
    assert_gone("t-netfamily-bad")
    if hostcheck.Kernel().has("ipvs") is not False:
        pytest.skip("this kernel has IP_VS: nothing for the host check to refuse")
    ipvs = tmp_path / "ipvs.yaml"
    ipvs.write_text(CONFIG.format(name="t-netfamily-bad", mode="ipvs"))
    run = built.doit("cluster:up", "--config", str(ipvs), check=False, timeout=300)
    out = run.stdout + run.stderr
    assert run.returncode != 0 and "Traceback" not in out
    assert "this host cannot run cluster t-netfamily-bad as configured: 1 problem(s)" in out, out
    assert "networking.kubeProxyMode ipvs" in out and "no IP_VS" in out, out
    assert_gone("t-netfamily-bad")
