"""IP families and kube-proxy modes: the config's checks, the plan, kubeadm, the pod network, the host check."""

import gzip
import io
import json

import pytest
import yaml

from dindind.base import clusterconfig, netfamily
from dindind.base.errors import ConfigError, DindindError
from dindind.cluster import host, hostcheck, incluster, kubeadm, plan
from dindind.cluster.actions import cni, config as config_action, provision
from dindind.cluster.context import Context
from dindind.cluster.status import Status

HEAD = "apiVersion: dindind.dev/v1alpha1\nkind: Cluster\n"
BASE = plan.Settings(name="nf", workers=2, node_image="img", kubernetes_version="v1.37.2",
                     pod_subnet="10.244.0.0/16", service_subnet="10.96.0.0/16", node_subnet="172.30.0.0/24")


def parse(networking, nodes="nodes: [{role: control-plane}, {role: worker}]\n"):
    return clusterconfig.parse(HEAD + nodes + f"networking: {networking}\n", "c.yaml")


def problems(networking):
    with pytest.raises(ConfigError) as info:
        parse(networking)
    return info.value.problems


def settings_of(networking, nodes="nodes: [{role: control-plane}, {role: worker}]\n"):
    return plan.from_cluster_config(parse(networking, nodes), BASE)


def docs(p, node):
    return {d["kind"]: d for d in yaml.safe_load_all(kubeadm.render_config(p, node, node.ip, p.control_plane.ip))
            if d}


def args(doc):
    return {a["name"]: a["value"] for a in doc["nodeRegistration"]["kubeletExtraArgs"]}


# ------------------------------------------------------------------ the cluster config

@pytest.mark.parametrize("family, pod, svc", [
    ("ipv4", "10.244.0.0/16", "10.96.0.0/16"),
    ("ipv6", "fd00:10:244::/56", "fd00:10:96::/112"),
    ("dual", "10.244.0.0/16,fd00:10:244::/56", "10.96.0.0/16,fd00:10:96::/112"),
])
def test_the_subnet_defaults_follow_the_family(family, pod, svc):
    net = parse(f"{{ipFamily: {family}}}")["networking"]
    assert (net["podSubnet"], net["serviceSubnet"], net["kubeProxyMode"]) == (pod, svc, "iptables")
    assert net["nodeSubnetIPv6"] == "fd00:172:30::/64"


def test_ipv6_primary_dual_stack_is_accepted():
    net = parse('{ipFamily: dual, podSubnet: "fd00:1::/56,10.1.0.0/16", serviceSubnet: "fd00:2::/112,10.2.0.0/16"}')
    assert net["networking"]["podSubnet"] == "fd00:1::/56,10.1.0.0/16"


def test_every_subnet_problem_is_reported_at_once_with_its_key_path():
    found = problems('{ipFamily: dual, podSubnet: "10.1.0.0/16", serviceSubnet: "fd00:2::/100,10.2.0.0/16", '
                     'nodeSubnetIPv6: "fd00:2::/64", kubeProxyMode: userspace, nodeSubnet: "10.2.3.0/24"}')
    assert found == [
        "networking.kubeProxyMode: 'userspace' is not one of iptables, nftables, ipvs, none",
        "networking.podSubnet: 10.1.0.0/16 is single stack; ipFamily dual takes one IPv4 and one IPv6 CIDR, "
        "comma-separated (e.g. 10.244.0.0/16,fd00:10:244::/56)",
        "networking.serviceSubnet: fd00:2::/100 is too large: kube-apiserver takes at most 20 host bits "
        "(a /108 or smaller)",
        "networking.serviceSubnet: 10.2.0.0/16 overlaps networking.nodeSubnet 10.2.3.0/24",
        "networking.serviceSubnet: fd00:2::/100 overlaps networking.nodeSubnetIPv6 fd00:2::/64",
    ]


@pytest.mark.parametrize("value, problem", [
    ("10.0.0.0/8,fd00::/56,fd01::/56", "has more than two CIDRs"),
    ("10.0.0.0/8,10.1.0.0/16", "has two CIDRs of the same family"),
    ("10.0.0.1/8", "is not a valid CIDR"),
    ("10.0.0.0/8,fd00::1/56", "has 'fd00::1/56', not a valid CIDR"),
])
def test_a_subnet_value_is_one_cidr_or_one_of_each_family(value, problem):
    assert problem in netfamily.cidr_list_problem(value)


def test_a_single_family_refuses_a_subnet_of_the_other():
    assert problems('{ipFamily: ipv4, serviceSubnet: "fd00:10:96::/112"}') == [
        "networking.serviceSubnet: fd00:10:96::/112 is not IPv4: ipFamily ipv4 takes one IPv4 CIDR "
        "(or set ipFamily: dual for both families)"]
    assert problems('{ipFamily: ipv6, podSubnet: "10.0.0.0/16,fd00::/56"}')[0].startswith(
        "networking.podSubnet: 10.0.0.0/16,fd00::/56 is not IPv6")


def test_the_nodes_ipv6_subnet_is_judged_only_when_the_family_uses_it():
    assert parse('{nodeSubnetIPv6: "fd00:10:244::/64"}')["networking"]["ipFamily"] == "ipv4"
    assert problems('{ipFamily: ipv6, nodeSubnetIPv6: "fd00:10:244::/64"}') == [
        "networking.podSubnet: fd00:10:244::/56 overlaps networking.nodeSubnetIPv6 fd00:10:244::/64"]
    assert problems('{ipFamily: ipv6, nodeSubnetIPv6: "fd00:9::/124"}') == [
        "networking.nodeSubnetIPv6: fd00:9::/124 is too small for the nodes (a /120 or larger)"]


def test_the_config_round_trips_through_settings():
    s = settings_of("{ipFamily: dual, kubeProxyMode: nftables, nodeSubnetIPv6: 'fd00:9::/64'}")
    assert (s.ip_family, s.kube_proxy_mode, s.node_subnet_v6, s.ip_versions) == ("dual", "nftables",
                                                                               "fd00:9::/64", (4, 6))
    again = plan.from_cluster_config(clusterconfig.from_json(clusterconfig.to_json(plan.to_cluster_config(s))), BASE)
    assert again == s
    assert plan.Settings.from_json(s.to_json()) == s
    # a settings label written before these keys existed reads as IPv4 and iptables
    old = json.loads(BASE.to_json())
    for key in ("ip_family", "kube_proxy_mode", "node_subnet_v6"):
        old.pop(key)
    assert plan.Settings.from_json(json.dumps(old)) == BASE


# ------------------------------------------------------------------ the plan and kubeadm

def test_a_dual_stack_plan_gives_each_node_both_addresses_and_slices():
    p = plan.make_plan(settings_of("{ipFamily: dual}"), token="abcdef.0123456789abcdef")
    assert [(n.ip, n.ip6, n.pod_cidrs, n.pod_cidr) for n in p.nodes] == [
        ("172.30.0.2", "fd00:172:30::2", ("10.244.0.0/24", "fd00:10:244::/64"), "10.244.0.0/24"),
        ("172.30.0.3", "fd00:172:30::3", ("10.244.1.0/24", "fd00:10:244:1::/64"), "10.244.1.0/24"),
    ]
    ipv4 = plan.make_plan(BASE)
    assert all(n.ip6 == "" and n.pod_cidrs == (n.pod_cidr,) for n in ipv4.nodes)


def test_kubeadm_gets_both_families_in_the_primary_order():
    p = plan.make_plan(settings_of("{ipFamily: dual}"))
    cp, worker = p.nodes
    d = docs(p, cp)
    assert d["ClusterConfiguration"]["networking"] == {"podSubnet": "10.244.0.0/16,fd00:10:244::/56",
                                                       "serviceSubnet": "10.96.0.0/16,fd00:10:96::/112"}
    assert d["InitConfiguration"]["localAPIEndpoint"]["advertiseAddress"] == "172.30.0.2"
    assert {"::1", "fd00:172:30::2", "172.30.0.2"} <= set(d["ClusterConfiguration"]["apiServer"]["certSANs"])
    assert args(d["InitConfiguration"])["node-ip"] == "172.30.0.2,fd00:172:30::2"
    assert args(docs(p, worker)["JoinConfiguration"])["node-ip"] == "172.30.0.3,fd00:172:30::3"
    v6first = plan.make_plan(settings_of('{ipFamily: dual, podSubnet: "fd00:1::/56,10.1.0.0/16", '
                                         'serviceSubnet: "fd00:2::/112,10.2.0.0/16"}'))
    d = docs(v6first, v6first.control_plane)
    assert d["InitConfiguration"]["localAPIEndpoint"]["advertiseAddress"] == "fd00:172:30::2"
    assert args(d["InitConfiguration"])["node-ip"] == "fd00:172:30::2,172.30.0.2"


@pytest.mark.parametrize("version", ["v1.30.5", "v1.37.2"])
def test_an_ipv6_cluster_advertises_and_registers_its_ipv6_addresses(version):
    p = plan.make_plan(plan.replace(settings_of("{ipFamily: ipv6}"), kubernetes_version=version))
    assert p.nodes[1].pod_cidr == "fd00:10:244:1::/64" and p.nodes[1].pod_cidrs == ("fd00:10:244:1::/64",)
    d = docs(p, p.control_plane)
    assert d["InitConfiguration"]["localAPIEndpoint"]["advertiseAddress"] == "fd00:172:30::2"
    init_args = d["InitConfiguration"]["nodeRegistration"]["kubeletExtraArgs"]
    node_ip = init_args["node-ip"] if isinstance(init_args, dict) else args(d["InitConfiguration"])["node-ip"]
    assert node_ip == "fd00:172:30::2"
    assert d["ClusterConfiguration"]["networking"]["podSubnet"] == "fd00:10:244::/56"


@pytest.mark.parametrize("mode", ["iptables", "nftables", "ipvs"])
def test_kube_proxy_runs_in_the_configured_mode(mode):
    p = plan.make_plan(settings_of(f"{{kubeProxyMode: {mode}}}"))
    assert docs(p, p.control_plane)["KubeProxyConfiguration"]["mode"] == mode
    assert config_action.skip_phases(p.settings, "init") == "preflight"


def test_kube_proxy_mode_none_skips_its_addon_and_its_configuration():
    p = plan.make_plan(settings_of("{kubeProxyMode: none}"))
    assert "KubeProxyConfiguration" not in docs(p, p.control_plane)
    assert config_action.skip_phases(p.settings, "init") == "preflight,addon/kube-proxy"
    assert config_action.skip_phases(p.settings, "join") == "preflight"


class Engine:
    def __init__(self):
        self.calls = []

    def put_file(self, name, path, data, mode=0o644):
        self.calls.append(("put", name, path, data))

    def exec_in(self, name, cmd, check=True):
        self.calls.append(("exec", name, cmd))
        return (1, "") if cmd[1] == "-C" else (0, "")

    def create_network(self, name, subnet, labels, **kw):
        self.calls.append(("network", name, subnet, kw))


def test_the_pod_network_has_a_range_and_a_route_per_family():
    p = plan.make_plan(settings_of("{ipFamily: dual}"))
    cp, worker = p.nodes
    conf = json.loads(cni.conflist(worker))
    ipam = conf["plugins"][0]["ipam"]
    assert ipam["ranges"] == [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]]
    assert ipam["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
    ips = {n.name: n.ip for n in p.nodes}
    assert cni.routes(p, worker, ips) == [("10.244.0.0/24", "172.30.0.2"), ("fd00:10:244::/64", "fd00:172:30::2")]
    eng = Engine()
    cni.execute(Context(plan=p, node_image="img", status=Status(out=io.StringIO()), node_ips=ips, engine=eng))
    inserted = [c[2] for c in eng.calls if c[0] == "exec" and c[2][1] == "-I" and c[1] == cp.name]
    assert [(c[0], c[2], c[5]) for c in inserted] == [
        ("iptables", "FORWARD", "10.96.0.0/16"), ("iptables", "OUTPUT", "10.96.0.0/16"),
        ("ip6tables", "FORWARD", "fd00:10:96::/112"), ("ip6tables", "OUTPUT", "fd00:10:96::/112")]


def test_ipv6_nodes_get_an_ipv6_network_address_and_kernel_settings():
    p = plan.make_plan(settings_of("{ipFamily: ipv6}"))
    ctx = Context(plan=p, node_image="img", status=Status(out=io.StringIO()), privilege={})
    kw = provision.node_run_args(ctx, p.nodes[1])
    assert kw["ip"] == "172.30.0.3" and kw["ip6"] == "fd00:172:30::3"
    assert kw["sysctls"]["net.ipv6.conf.all.disable_ipv6"] == "0"
    assert kw["sysctls"]["net.ipv6.conf.all.forwarding"] == "1"
    v4 = plan.make_plan(BASE)
    kw = provision.node_run_args(Context(plan=v4, node_image="img", status=Status(), privilege={}), v4.nodes[1])
    assert kw["ip6"] is None and not any("ipv6" in k for k in kw["sysctls"])


# ------------------------------------------------------------------ the host check

def fake_root(tmp_path, release="6.1.0", config=None, modules=None, module_files=(), inet6=True, disabled="0"):
    (tmp_path / "proc/sys/kernel").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/osrelease").write_text(release + "\n")
    (tmp_path / "proc/net").mkdir(parents=True)
    if inet6:
        (tmp_path / "proc/net/if_inet6").write_text("")
        (tmp_path / "proc/sys/net/ipv6/conf/all").mkdir(parents=True)
        (tmp_path / "proc/sys/net/ipv6/conf/all/disable_ipv6").write_text(disabled + "\n")
    if config is not None:
        with gzip.open(tmp_path / "proc/config.gz", "wt") as f:
            f.write(config)
    if modules is not None:
        (tmp_path / "proc/modules").write_text("".join(f"{m} 16384 0 - Live 0x0\n" for m in modules))
    for path in module_files:
        f = tmp_path / "lib/modules" / release / path
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("")
    return hostcheck.Kernel(str(tmp_path))


FULL = "CONFIG_IPV6=y\nCONFIG_NF_TABLES=y\nCONFIG_NFT_NAT=y\nCONFIG_IP6_NF_NAT=m\nCONFIG_IP_VS=m\n"
BARE = "CONFIG_IPV6=y\n# CONFIG_NF_TABLES is not set\n# CONFIG_NFT_NAT is not set\n# CONFIG_IP6_NF_NAT is not set\n" \
       "# CONFIG_IP_VS is not set\n"


def test_a_kernel_with_everything_passes(tmp_path):
    k = fake_root(tmp_path, config=FULL)
    for mode in netfamily.KUBE_PROXY_MODES:
        assert hostcheck.problems("dual", mode, k) == []


def test_a_bare_kernel_is_refused_with_every_reason(tmp_path):
    k = fake_root(tmp_path, config=BARE)
    found = hostcheck.problems("ipv6", "ipvs", k)
    assert len(found) == 2
    assert found[0].startswith("networking.ipFamily ipv6: the kernel 6.1.0 cannot NAT IPv6")
    assert "modprobe ip6table_nat" in found[0]
    assert found[1].startswith("networking.kubeProxyMode ipvs: the kernel 6.1.0 has no IP_VS")
    assert hostcheck.problems("ipv4", "nftables", k) == [
        "networking.kubeProxyMode nftables: the kernel 6.1.0 has no nf_tables; use kubeProxyMode: iptables"]
    assert hostcheck.problems("ipv4", "iptables", k) == []


def test_a_loaded_or_installed_module_counts_when_the_config_says_no(tmp_path):
    k = fake_root(tmp_path, config=BARE, modules=["ip6table_nat"], module_files=["kernel/net/ip_vs.ko.xz"])
    assert k.has("ipv6 nat") and k.has("ipvs")
    assert hostcheck.problems("dual", "ipvs", k) == []


def test_with_nothing_to_read_the_check_cannot_tell_and_lets_it_pass(tmp_path):
    k = fake_root(tmp_path)
    assert k.has("ipvs") is None and k.has("ipv6 nat") is None
    assert hostcheck.problems("dual", "ipvs", k) == []


def test_an_empty_module_list_without_a_config_says_no(tmp_path):
    k = fake_root(tmp_path, modules=[])
    assert k.has("ipvs") is False


def test_no_ipv6_is_refused_and_nested_says_which_flags(tmp_path):
    k = fake_root(tmp_path / "a", inet6=False, config=FULL)
    assert hostcheck.problems("ipv6", "iptables", k) == [
        "networking.ipFamily ipv6: the kernel has no IPv6 (no /proc/net/if_inet6); enable IPv6 on this host "
        "(sysctl net.ipv6.conf.all.disable_ipv6=0), or use ipFamily: ipv4"]
    k = fake_root(tmp_path / "b", disabled="1", config=FULL)
    found = hostcheck.problems("dual", "iptables", k, nested=True)
    assert found == ["networking.ipFamily dual: IPv6 is disabled (net.ipv6.conf.all.disable_ipv6 = 1); run the "
                     "cluster container with --sysctl net.ipv6.conf.all.disable_ipv6=0 --sysctl "
                     "net.ipv6.conf.default.disable_ipv6=0 --sysctl net.ipv6.conf.all.forwarding=1, "
                     "or use ipFamily: ipv4"]
    assert hostcheck.problems("ipv4", "iptables", k) == []


@pytest.mark.parametrize("release, refused", [("5.10.0-28-amd64", True), ("5.12.19", True), ("5.13.0", False),
                                              ("6.1.0-18-cloud-amd64", False)])
def test_nftables_mode_needs_kernel_5_13(tmp_path, release, refused):
    found = hostcheck.problems("ipv4", "nftables", fake_root(tmp_path, release=release, config=FULL))
    assert bool(found) == refused
    if refused:
        assert f"needs a kernel of 5.13 or newer, this one is {release}" in found[0]


def test_the_boot_config_is_read_when_proc_has_none(tmp_path):
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot/config-5.15.0").write_text(BARE)
    k = fake_root(tmp_path, release="5.15.0")
    assert k.has("ipvs") is False


def test_require_raises_one_error_with_every_problem(tmp_path):
    fake_root(tmp_path, release="5.4.0", config=BARE, disabled="1")
    s = plan.replace(BASE, ip_family="dual", kube_proxy_mode="nftables")
    with pytest.raises(DindindError) as info:
        hostcheck.require(s, root=str(tmp_path))
    text = info.value.render()
    assert text.startswith("ERROR: this host cannot run cluster nf as configured: 2 problem(s)")
    assert "IPv6 is disabled" in text and "needs a kernel of 5.13" in text and "hint: " in text
    hostcheck.require(BASE, root=str(tmp_path))      # IPv4 with iptables needs nothing


def test_cluster_up_refuses_before_anything_is_created(monkeypatch, tmp_path):
    fake_root(tmp_path, config=BARE)
    real_kernel = hostcheck.Kernel
    monkeypatch.setattr(hostcheck, "Kernel", lambda root="/": real_kernel(str(tmp_path)))
    monkeypatch.setattr(host, "settings_for", lambda *a, **kw: plan.replace(BASE, kube_proxy_mode="ipvs"))
    touched = []
    for name in ("containers", "volumes", "networks", "create_volume", "run_container", "privilege_opts"):
        monkeypatch.setattr(host.containers, name, lambda *a, _n=name, **kw: touched.append(_n))
    monkeypatch.setattr(host, "_publish", lambda s: touched.append("publish"))

    class Cfg:
        cluster = {k: f.default for k, f in __import__("dindind.base.config", fromlist=["SPEC"]).SPEC["cluster"].items()}
    with pytest.raises(DindindError) as info:
        host.up(Cfg(), None, out=lambda line: None)
    assert "kubeProxyMode ipvs" in info.value.render()
    assert touched == []


def test_the_image_entry_point_refuses_before_its_engine_starts(monkeypatch, tmp_path, capsys):
    fake_root(tmp_path, config=FULL, disabled="1")
    real_kernel = hostcheck.Kernel
    monkeypatch.setattr(hostcheck, "Kernel", lambda root="/": real_kernel(str(tmp_path)))

    class Args:
        help = False
        settings = plan.replace(BASE, ip_family="ipv6", pod_subnet="fd00:10:244::/56",
                                service_subnet="fd00:10:96::/112")
    monkeypatch.setattr(incluster, "read_args", lambda argv: Args())
    monkeypatch.setattr(incluster, "check_privileges", lambda: None)
    monkeypatch.setattr(incluster.engine, "start_dockerd", lambda *a, **kw: pytest.fail("dockerd must not start"))
    monkeypatch.setattr(incluster, "set_phase", lambda phase: pytest.fail("no phase before the check"))
    assert incluster.main([]) == 3
    out = capsys.readouterr().out
    assert "IPv6 is disabled" in out and "--sysctl net.ipv6.conf.all.disable_ipv6=0" in out


def test_the_node_entry_point_moves_the_engines_dns_to_the_nodes_ipv4_address(tmp_path):
    # on an IPv6-enabled network `hostname -i` lists the IPv6 address first; iptables takes only IPv4
    import re
    import subprocess
    from pathlib import Path

    entry = (Path(__file__).resolve().parents[2] / "templates/node/files/usr/local/bin/dindind-node-entrypoint")
    line = next(l for l in entry.read_text().splitlines() if re.match(r"^\s*ip=\$\(hostname -i", l))
    (tmp_path / "hostname").write_text("#!/bin/sh\necho 'fd00:172:30::2 172.30.0.2 '\n")
    (tmp_path / "hostname").chmod(0o755)
    out = subprocess.run(["sh", "-c", line.strip() + '\necho "$ip"'], env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
                         stdout=subprocess.PIPE, text=True, check=True).stdout
    assert out == "172.30.0.2\n"
