"""High availability without an engine: the config rule, the plan, kubeadm's files, haproxy's, the actions."""

import io
import os
import re

import pytest
import yaml

from dindind.base import clusterconfig
from dindind.base.errors import ConfigError, DindindError
from dindind.cluster import create, kubeadm, plan
from dindind.cluster.actions import config as config_action
from dindind.cluster.actions import joincontrolplanes, kubeadminit, loadbalancer, provision
from dindind.cluster.context import Context
from dindind.cluster.status import Status

TOKEN = "abcdef.0123456789abcdef"
KEY = "0f" * 32


def settings(planes=3, workers=1, **kw):
    base = dict(name="demo", workers=workers, node_image="dindind/node:v1.37.2",
                kubernetes_version="v1.37.2", pod_subnet="10.244.0.0/16", service_subnet="10.96.0.0/16",
                node_subnet="172.30.0.0/24",
                nodes=(plan.NodeSpec("control-plane"),) * planes + (plan.NodeSpec("worker"),) * workers)
    base.update(kw)
    return plan.Settings(**base)


def ha_plan(**kw):
    return plan.make_plan(settings(**kw), token=TOKEN, cert_key=KEY)


def doc(planes, workers=1, extra=""):
    return ("apiVersion: dindind.dev/v1alpha1\nkind: Cluster\nnodes:\n" + "- role: control-plane\n" * planes
            + "- role: worker\n" * workers + extra)


# ------------------------------------------------------------------ the cluster config

@pytest.mark.parametrize("planes", [1, 3, 5, 7])
def test_odd_control_plane_counts_up_to_seven_are_accepted(planes):
    v = clusterconfig.parse(doc(planes), "c.yaml")
    assert [n["role"] for n in v["nodes"]].count("control-plane") == planes


@pytest.mark.parametrize("planes, example, why", [
    (2, 1, "an even count survives no more failures than 1 (a majority of 2 is 2)"),
    (4, 3, "an even count survives no more failures than 3 (a majority of 4 is 3)"),
    (6, 5, "an even count survives no more failures than 5"),
    (8, 7, "an even count survives no more failures than 7"),
    (9, 7, "more than 7 members only slow every write down"),
])
def test_other_control_plane_counts_are_one_error_naming_etcd_quorum(planes, example, why):
    with pytest.raises(ConfigError) as info:
        clusterconfig.parse(doc(planes), "c.yaml")
    problems = [p for p in info.value.problems if p.startswith("nodes:")]
    assert len(problems) == 1, info.value.problems
    assert problems[0].startswith(f"nodes: {planes} control-plane nodes: give 1, 3, 5 or 7 (e.g. {example}). ")
    assert "etcd" in problems[0] and "quorum" in problems[0] and why in problems[0]


def test_every_problem_at_once_with_ha():
    with pytest.raises(ConfigError) as info:
        clusterconfig.parse(doc(4, 11), "c.yaml")
    text = "\n".join(info.value.problems)
    assert "4 control-plane nodes" in text and "11 workers: at most 10" in text


@pytest.mark.parametrize("family", ["ipv6", "dual"])
def test_ha_with_an_ipv6_family_is_refused_naming_both_keys(family):
    clusterconfig.parse(doc(1, 1, f"networking: {{ipFamily: {family}}}\n"), "c.yaml")    # one control plane: fine
    clusterconfig.parse(doc(3, 1, "networking: {ipFamily: ipv4}\n"), "c.yaml")
    with pytest.raises(ConfigError) as info:
        clusterconfig.parse(doc(3, 1, f"networking: {{ipFamily: {family}}}\n"), "c.yaml")
    assert [p for p in info.value.problems if "high availability" in p] == [
        f"nodes: 3 control planes with networking.ipFamily: {family}: high availability is built for ipFamily "
        "ipv4 only so far; use one control plane, or ipFamily: ipv4"], info.value.problems


def test_the_node_subnet_must_hold_the_load_balancer_too():
    small = "networking: {nodeSubnet: 172.30.0.0/29}\n"      # 6 addresses: the gateway and 5 more
    clusterconfig.parse(doc(1, 4, small), "c.yaml")            # gateway + 5 nodes
    clusterconfig.parse(doc(3, 1, small), "c.yaml")            # gateway + 4 nodes + the load balancer
    with pytest.raises(ConfigError) as info:
        clusterconfig.parse(doc(3, 2, small), "c.yaml")
    assert any("networking.nodeSubnet: 172.30.0.0/29 has room for 6 addresses, the cluster needs 7 "
               "(the gateway, 5 nodes, the load balancer)" in p for p in info.value.problems), info.value.problems


def test_the_schema_documents_the_counts():
    schema = clusterconfig.json_schema()
    assert "1, 3, 5 or 7" in schema["properties"]["nodes"]["description"]


# ------------------------------------------------------------------ the plan

def test_names_addresses_and_the_load_balancer():
    p = ha_plan(workers=2)
    assert [(n.name, n.role, n.ip) for n in p.nodes] == [
        ("demo-control-plane", "control-plane", "172.30.0.2"),
        ("demo-control-plane2", "control-plane", "172.30.0.3"),
        ("demo-control-plane3", "control-plane", "172.30.0.4"),
        ("demo-worker", "worker", "172.30.0.5"),
        ("demo-worker2", "worker", "172.30.0.6")]
    assert [n.name for n in p.control_planes] == ["demo-control-plane", "demo-control-plane2", "demo-control-plane3"]
    assert [n.name for n in p.workers] == ["demo-worker", "demo-worker2"]
    assert p.control_plane.name == "demo-control-plane"
    assert p.load_balancer == plan.LoadBalancer("demo-external-load-balancer", "172.30.0.254")
    assert p.api_ip == "172.30.0.254" and p.load_balancer.endpoint == "172.30.0.254:6443"
    assert plan.load_balancer_ip("10.9.0.0/16") == "10.9.255.254"
    assert p.settings.control_planes == 3
    assert p.settings.node_names() == [(n.name, n.role) for n in p.nodes]


def test_one_control_plane_has_no_load_balancer_and_no_certificate_key():
    p = plan.make_plan(settings(planes=1, workers=2), token=TOKEN)
    assert p.load_balancer is None and p.certificate_key is None
    assert p.settings.nodes == ()           # nothing of their own: just a worker count, as before
    assert p.api_ip == p.control_plane.ip


def test_certificate_keys_are_fresh_32_byte_hex_and_never_in_the_settings():
    keys = {plan.certificate_key() for _ in range(10)}
    assert len(keys) == 10 and all(re.fullmatch(r"[0-9a-f]{64}", k) for k in keys)
    p = plan.make_plan(settings())
    assert re.fullmatch(r"[0-9a-f]{64}", p.certificate_key)
    assert p.certificate_key not in repr(p) and p.certificate_key not in p.settings.to_json()
    assert plan.Settings.from_json(p.settings.to_json()) == p.settings


def test_ha_settings_round_trip_through_the_cluster_config():
    s = settings(planes=5, workers=2)
    doc_ = plan.to_cluster_config(s)
    assert [n["role"] for n in doc_["nodes"]] == ["control-plane"] * 5 + ["worker"] * 2
    back = plan.from_cluster_config(clusterconfig.parse(clusterconfig.to_json(doc_), "j"), s)
    assert back == s and back.control_planes == 5


# ------------------------------------------------------------------ kubeadm

def docs(text):
    return {d["kind"]: d for d in yaml.safe_load_all(text) if d}


@pytest.mark.parametrize("version", ["v1.37.2", "v1.30.6"])
def test_kubeadm_configs_name_the_load_balancer_and_carry_the_key_only_when_asked(version):
    p = ha_plan(kubernetes_version=version)
    cp1, cp2, _, worker = p.nodes
    first = docs(kubeadm.render_config(p, cp1, cp1.ip, cp1.ip))
    cc = first["ClusterConfiguration"]
    assert cc["controlPlaneEndpoint"] == "172.30.0.254:6443"
    assert {"172.30.0.254", "demo-external-load-balancer", "127.0.0.1"} <= set(cc["apiServer"]["certSANs"])
    assert "certificateKey" not in first["InitConfiguration"]
    assert first["InitConfiguration"]["localAPIEndpoint"]["advertiseAddress"] == cp1.ip
    assert "controlPlane" not in first["JoinConfiguration"]         # the first control plane never joins
    with_key = docs(kubeadm.render_config(p, cp1, cp1.ip, cp1.ip, certificate_key=KEY))
    assert with_key["InitConfiguration"]["certificateKey"] == KEY
    # a further control plane: controlPlane with its own address; the key only in the copy kubeadm reads
    second = docs(kubeadm.render_config(p, cp2, cp2.ip, cp1.ip))
    join = second["JoinConfiguration"]
    assert join["controlPlane"] == {"localAPIEndpoint": {"advertiseAddress": cp2.ip, "bindPort": 6443}}
    assert join["discovery"]["bootstrapToken"]["apiServerEndpoint"] == "172.30.0.254:6443"
    keyed = docs(kubeadm.render_config(p, cp2, cp2.ip, cp1.ip, certificate_key=KEY))["JoinConfiguration"]
    assert keyed["controlPlane"]["certificateKey"] == KEY
    # a worker: no controlPlane, no key, even when one is passed
    w = docs(kubeadm.render_config(p, worker, worker.ip, cp1.ip, certificate_key=KEY))
    assert "controlPlane" not in w["JoinConfiguration"] and KEY not in yaml.safe_dump(w)
    assert w["JoinConfiguration"]["discovery"]["bootstrapToken"]["apiServerEndpoint"] == "172.30.0.254:6443"


def test_one_control_plane_renders_as_before():
    p = plan.make_plan(settings(planes=1), token=TOKEN)
    d = docs(kubeadm.render_config(p, p.control_plane, p.control_plane.ip, p.control_plane.ip))
    assert d["ClusterConfiguration"]["controlPlaneEndpoint"] == "demo-control-plane:6443"
    assert "certificateKey" not in d["InitConfiguration"] and "controlPlane" not in d["JoinConfiguration"]


# ------------------------------------------------------------------ haproxy

def test_haproxy_config_balances_tcp_over_every_control_plane_with_readyz_checks():
    p = ha_plan()
    text = loadbalancer.config_text(p)
    assert re.findall(r"(?m)^  server (\S+) (\S+)$", text) == [
        ("demo-control-plane", "172.30.0.2:6443"), ("demo-control-plane2", "172.30.0.3:6443"),
        ("demo-control-plane3", "172.30.0.4:6443")]
    assert "  mode tcp\n" in text and "  bind *:6443\n" in text
    assert "  option httpchk\n  http-check send meth GET uri /readyz\n  http-check expect status 200\n" in text
    assert re.search(r"(?m)^  default-server check check-ssl verify none inter 1s fall 2 rise 1", text)
    assert "option redispatch" in text
    assert "172.30.0.5" not in text          # the worker is no backend


def test_load_balancer_run_arguments_are_unprivileged_and_take_the_api_port():
    p = ha_plan()
    ctx = Context(plan=p, node_image="img", status=Status(), publish=("0.0.0.0", 6443))
    kw = loadbalancer.run_args(ctx)
    assert kw["labels"] == {"io.dindind.cluster": "demo", "io.dindind.role": "external-load-balancer"}
    assert kw["ip"] == "172.30.0.254" and kw["network"] == "dindind-demo"
    assert kw["entrypoint"] == ["haproxy"] and kw["command"] == ["-db", "-f", "/etc/haproxy/haproxy.cfg"]
    assert kw["user"] == "haproxy"
    assert kw["privilege"] == {"cap_drop": ["ALL"], "security_opt": ["no-new-privileges"]}
    assert kw["files"] == {"/etc/haproxy/haproxy.cfg": (loadbalancer.config_text(p), 0o644)}
    assert kw["ports"] == {6443: ("0.0.0.0", 6443)}
    # the control planes publish nothing: the API port is the load balancer's
    for node in p.nodes:
        assert "ports" not in provision.node_run_args(ctx, node)
    single = plan.make_plan(settings(planes=1), token=TOKEN)
    ctx1 = Context(plan=single, node_image="img", status=Status(), publish=("0.0.0.0", 6443))
    assert provision.node_run_args(ctx1, single.control_plane)["ports"] == {6443: ("0.0.0.0", 6443)}


def test_ha_actions_start_the_load_balancer_before_kubeadm_and_join_control_planes_before_workers():
    titles = [a.TITLE for a in create.actions(settings())]
    assert titles == ["Preparing nodes", "Starting the external load balancer", "Writing configuration",
                      "Starting control-plane", "Installing CNI", "Joining more control-plane nodes",
                      "Joining worker nodes", "Waiting for nodes to be Ready"]
    assert "Starting the external load balancer" not in [a.TITLE for a in create.actions(settings(planes=1))]


# ------------------------------------------------------------------ kubeadm runs, with the key on tmpfs only

class Engine:
    """Records files and commands; ``fail``: node names whose kubeadm fails, printing the secrets."""

    def __init__(self, plan_, fail=()):
        self.plan, self.fail, self.files, self.ran = plan_, set(fail), {}, []

    def put_file(self, name, path, data, mode=0o644):
        self.files[(name, path)] = (data, mode)

    def exec_in(self, name, cmd, check=True):
        self.ran.append((name, cmd))
        if cmd[:2] == ["rm", "-f"]:
            self.files.pop((name, cmd[2]), None)
            return 0, ""
        if cmd[0] == "kubeadm" and name in self.fail:
            return 1, f"[upload-certs] Using certificate key:\n{self.plan.certificate_key}\ntoken {self.plan.token}\n"
        return 0, "ok"

    def get_file(self, name, path):
        return b"admin.conf"


def ha_ctx(fail=()):
    p = ha_plan()
    ctx = Context(plan=p, node_image="img", status=Status(out=io.StringIO()), node_ips={n.name: n.ip for n in p.nodes})
    ctx.engine = Engine(p, fail)
    return ctx


def test_init_uploads_the_certificates_and_joins_run_one_at_a_time_with_the_key_only_on_tmpfs():
    ctx = ha_ctx()
    kubeadminit.execute(ctx)
    joincontrolplanes.execute(ctx)
    kubeadm_runs = [(n, c) for n, c in ctx.engine.ran if c[0] == "kubeadm"]
    assert [(n, c[1]) for n, c in kubeadm_runs] == [("demo-control-plane", "init"), ("demo-control-plane2", "join"),
                                                    ("demo-control-plane3", "join")]
    init = kubeadm_runs[0][1]
    assert "--upload-certs" in init and "--skip-certificate-key-print" in init
    assert all(c[2] == f"--config={config_action.SECRET_PATH}" for _, c in kubeadm_runs)
    assert config_action.SECRET_PATH.startswith("/run/")          # the nodes' tmpfs
    assert all(KEY not in " ".join(c) for _, c in ctx.engine.ran)   # never on a command line
    # each copy was written 0600 and removed again right after its kubeadm
    assert not [k for k in ctx.engine.files if k[1] == config_action.SECRET_PATH]
    for i, (node, cmd) in enumerate(ctx.engine.ran):
        if cmd[0] == "kubeadm":
            assert ctx.engine.ran[i + 1] == (node, ["rm", "-f", config_action.SECRET_PATH])
    assert set(ctx.timings) == {"init demo-control-plane", "join demo-control-plane2", "join demo-control-plane3"}


def test_a_failed_join_masks_the_token_and_the_key_and_removes_the_copy():
    ctx = ha_ctx(fail={"demo-control-plane2"})
    kubeadminit.execute(ctx)
    with pytest.raises(DindindError) as info:
        joincontrolplanes.execute(ctx)
    text = info.value.render()
    assert "failed to join node demo-control-plane2 with kubeadm (exit 1)" in text
    assert KEY not in text and TOKEN not in text
    assert "<certificate key>" in text and "<bootstrap token>" in text
    assert not [k for k in ctx.engine.files if k[1] == config_action.SECRET_PATH]
    assert not any(n == "demo-control-plane3" and c[0] == "kubeadm" for n, c in ctx.engine.ran)


def test_workers_run_kubeadm_with_the_file_on_disk():
    ctx = ha_ctx()
    config_action.run_kubeadm(ctx, ctx.plan.workers[0], "join")
    assert ctx.engine.ran[0][1][2] == f"--config={config_action.PATH}"
    assert not ctx.engine.files


# ------------------------------------------------------------------ the host's inotify instances

def test_an_inotify_shortage_is_one_warning_line_naming_the_fix():
    from dindind.cluster import inotify

    s = settings(planes=3, workers=1)
    assert inotify.need(s) == 3 * 24 + 14
    assert inotify.warning(s, 1024, 40) is None
    line = inotify.warning(s, 128, 100)
    assert line.startswith("WARNING: fs.inotify.max_user_instances is 128 and 100 are in use: the 4 nodes of demo "
                           "take about 86 more")
    assert "inotify_init: too many open files" in line and line.endswith("sysctl -w fs.inotify.max_user_instances=1024")
    assert inotify.warning(s, None, 0) is None         # no such file: nothing to say
    sample = settings(planes=3, workers=1, kubernetes_version="v1.31.2+sample")
    assert inotify.need(sample) == 32


def test_inotify_instances_in_use_are_counted_from_proc(tmp_path):
    from dindind.cluster import inotify

    for pid, links in (("1", ["anon_inode:inotify", "anon_inode:inotify", "/dev/null"]), ("22", ["pipe:[1]"]),
                       ("33", ["anon_inode:inotify"])):
        fd = tmp_path / pid / "fd"
        fd.mkdir(parents=True)
        for i, target in enumerate(links):
            (fd / str(i)).symlink_to(target)
    (tmp_path / "self").mkdir()
    assert inotify.in_use(str(tmp_path)) == 3
    assert inotify.in_use(str(tmp_path), uid=os.geteuid() + 1) == 0
    assert inotify.limit(str(tmp_path / "nothing")) is None
    (tmp_path / "limit").write_text("128\n")
    assert inotify.limit(str(tmp_path / "limit")) == 128
