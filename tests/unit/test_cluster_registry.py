"""The local registry (the cluster config's ``registry:``): validation, plan, the containerd hosts.toml,
the KEP-1755 ConfigMap, the container's arguments, the nested hop and the port checks. No engine."""

import io
import json
import socket
import tomllib
from dataclasses import replace

import jsonschema
import pytest
import yaml

from dindind.base import clusterconfig
from dindind.base.errors import ConfigError, DindindError
from dindind.build import images
from dindind.cluster import create, host, passthrough, plan, registry
from dindind.cluster.actions import registry as registry_action
from dindind.cluster.actions import registryhosting
from dindind.cluster.context import Context
from dindind.cluster.status import Status

HEAD = "apiVersion: dindind.dev/v1alpha1\nkind: Cluster\n"
TOKEN = "abcdef.0123456789abcdef"


def parse(text):
    return clusterconfig.parse(HEAD + text, "c.yaml")


def problems(text):
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value.problems


def settings(**kw):
    base = plan.Settings(name="demo", workers=1, node_image="dindind/node:x", kubernetes_version="v1.37.2",
                         pod_subnet="10.244.0.0/16", service_subnet="10.96.0.0/16", node_subnet="172.30.0.0/24",
                         registry=True)
    return replace(base, **kw)


# ------------------------------------------------------------------ the config

def test_registry_is_off_unless_asked_for_and_true_means_the_defaults():
    off = {"enabled": False, "hostPort": 5001, "listenAddress": "127.0.0.1"}
    assert parse("")["registry"] == off
    assert parse("registry: false\n")["registry"] == off
    assert parse("registry: null\n")["registry"] == off
    assert parse("registry: true\n")["registry"] == {**off, "enabled": True}
    # a mapping asks for it; enabled: false keeps the settings but turns it off
    assert parse("registry: {hostPort: 5050}\n")["registry"] == {**off, "enabled": True, "hostPort": 5050}
    assert parse("registry: {enabled: false, hostPort: 5050, listenAddress: '::1'}\n")["registry"] == \
        {"enabled": False, "hostPort": 5050, "listenAddress": "::1"}


def test_every_registry_problem_is_reported_at_once():
    found = problems("registry: {hostPort: 70000, listenAddress: localhost, secure: true}\n"
                     "networking: {nodeSubnet: 172.30.0.0/29}\n")
    assert found == [
        "registry.secure: unknown key (known: enabled, hostPort, listenAddress)",
        "registry.hostPort: 70000 is above the maximum 65535",
        "registry.listenAddress: 'localhost' is not an IP address",
    ]
    assert problems("registry: {hostPort: 0}\n") == ["registry.hostPort: 0 is below the minimum 1"]
    assert problems("registry: 'yes'\n") == ["registry: expected true, false or a mapping (enabled, hostPort, "
                                             "listenAddress), got str 'yes'"]


def test_a_registry_port_the_cluster_already_uses_is_refused_whatever_the_address_and_mode():
    text = ("registry: {hostPort: PORT}\n"
            "networking: {apiServerPort: 7000, apiServerAddress: 127.0.0.2}\n"
            "nodes:\n- role: control-plane\n  extraPortMappings:\n"
            "  - {containerPort: 80, hostPort: 8080, listenAddress: 0.0.0.0}\n"
            "  - {containerPort: 53, hostPort: 5353, protocol: UDP}\n"
            "- role: worker\n")
    assert problems(text.replace("PORT", "6443")) == [
        "registry.hostPort: 6443 is the API server's port in the nodes and the cluster container; choose "
        "another (the default is 5001)"]
    assert problems(text.replace("PORT", "7000")) == ["registry.hostPort: 7000 is networking.apiServerPort already"]
    assert problems(text.replace("PORT", "8080")) == [
        "registry.hostPort: 8080 is nodes[0].extraPortMappings[0].hostPort already"]
    # nested, the cluster container forwards the k-th mapping on its port 40000 + k
    assert problems(text.replace("PORT", "40001")) == [
        "registry.hostPort: 40001 is where the cluster container forwards nodes[0].extraPortMappings[1] "
        "(ports 40000 and up, one per mapping); choose another"]
    # a UDP mapping of the same number, or a port beyond the mappings' forwards, is no collision
    assert parse(text.replace("PORT", "5353"))["registry"]["hostPort"] == 5353
    assert parse(text.replace("PORT", "40002"))["registry"]["hostPort"] == 40002
    # turned off: nothing to collide
    assert parse("registry: {enabled: false, hostPort: 6443}\n")["registry"]["enabled"] is False


def test_the_node_subnet_must_leave_room_for_the_registry_and_a_load_balancer():
    # a /29: hosts .1 - .6; the gateway, nodes from .2, the registry .5, the load balancer .6
    four = "nodes: [{role: control-plane}, {role: worker}, {role: worker}, {role: worker}]\n"
    assert problems(four + "registry: true\nnetworking: {nodeSubnet: 172.30.0.0/29}\n") == [
        "networking.nodeSubnet: 172.30.0.0/29 has no room for the gateway, 4 node(s), the registry and a load "
        "balancer address; use a larger one (e.g. a /24)"]
    assert parse("registry: true\nnetworking: {nodeSubnet: 172.30.0.0/29}\n")     # three nodes fit
    assert parse(four + "registry: true\nnetworking: {nodeSubnet: 172.30.0.0/28}\n")
    assert parse(four + "networking: {nodeSubnet: 172.30.0.0/29}\n")     # no registry: no such rule


def test_the_schema_takes_the_shorthand_and_the_mapping_and_refuses_what_the_validator_refuses():
    schema = json.loads(clusterconfig.SCHEMA_PATH.read_text())
    for good in (True, False, None, {}, {"enabled": True, "hostPort": 5001, "listenAddress": "127.0.0.1"}):
        jsonschema.validate({"apiVersion": "dindind.dev/v1alpha1", "kind": "Cluster", "registry": good}, schema)
    for bad in ("yes", 1, {"hostPort": 0}, {"hostPort": 70000}, {"secure": True}, {"enabled": "yes"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"apiVersion": "dindind.dev/v1alpha1", "kind": "Cluster", "registry": bad}, schema)


def test_the_constants_the_config_rules_repeat_are_the_clusters():
    assert clusterconfig.API_PORT == plan.API_PORT
    assert clusterconfig.INNER_PORTS == passthrough.INNER_PORTS
    assert clusterconfig.REGISTRY_PORT == plan.Settings.registry_port


# ------------------------------------------------------------------ the plan

def test_the_config_becomes_settings_and_back():
    doc = parse("registry: {hostPort: 5050, listenAddress: 0.0.0.0}\n")
    s = plan.from_cluster_config(doc, replace(settings(), registry=False))
    assert (s.registry, s.registry_port, s.registry_address) == (True, 5050, "0.0.0.0")
    assert plan.Settings.from_json(s.to_json()) == s
    back = plan.to_cluster_config(s)
    assert back["registry"] == {"enabled": True, "hostPort": 5050, "listenAddress": "0.0.0.0"}
    assert plan.from_cluster_config(clusterconfig.parse(json.dumps(back), "j"), s) == s
    assert plan.from_cluster_config(parse(""), settings()).registry is False


@pytest.mark.parametrize("subnet, expected", [("172.30.0.0/24", "172.30.0.253"), ("10.1.0.0/16", "10.1.255.253"),
                                              ("172.30.0.0/28", "172.30.0.13"), ("fd00:1::/64",
                                                                                 "fd00:1::ffff:ffff:ffff:fffe")])
def test_the_registry_takes_the_second_to_last_host_never_a_nodes_address_nor_the_last(subnet, expected):
    assert plan.registry_ip(subnet) == expected
    if ":" not in subnet:
        p = plan.make_plan(settings(node_subnet=subnet, workers=10),
                           token=TOKEN)
        assert p.registry_ip == expected
        assert expected not in [n.ip for n in p.nodes]
        assert p.registry_name == "demo-registry"


def test_the_registry_runs_only_when_asked_and_before_kubeadm_its_configmap_after_init():
    titles = [a.TITLE for a in create.actions(settings())]
    assert titles[:3] == ["Preparing nodes", "Writing configuration", "Starting the local registry"]
    assert titles.index("Publishing the local registry") == titles.index("Starting control-plane") + 1
    titles = [a.TITLE for a in create.actions(settings(registry=False))]
    assert not [t for t in titles if "registry" in t]


# ------------------------------------------------------------------ what the nodes and the API get

def test_containerd_pulls_localhost_port_from_the_registry_over_http():
    p = plan.make_plan(settings(registry_port=5050), token=TOKEN)
    assert registry.hosts_path(p.settings) == "/etc/containerd/certs.d/localhost:5050/hosts.toml"
    doc = tomllib.loads(registry.hosts_toml(p))
    assert doc == {"server": "http://172.30.0.253:5000",
                   "host": {"http://172.30.0.253:5000": {"capabilities": ["pull", "resolve"]}}}


def test_the_configmap_is_keps_local_registry_hosting():
    p = plan.make_plan(settings(), token=TOKEN)
    cm = json.loads(registry.configmap_json(p))
    assert cm["metadata"]["name"] == "local-registry-hosting" and cm["metadata"]["namespace"] == "kube-public"
    assert cm["kind"] == "ConfigMap" and cm["apiVersion"] == "v1"
    assert yaml.safe_load(cm["data"]["localRegistryHosting.v1"]) == {
        "host": "localhost:5001", "hostFromClusterNetwork": "172.30.0.253:5000"}


def test_the_registry_container_is_locked_down():
    p = plan.make_plan(settings(), token=TOKEN)
    kw = registry.run_args(p, "127.0.0.1")
    assert kw["privilege"] == {"cap_drop": ["ALL"], "security_opt": ["no-new-privileges"], "read_only": True}
    assert kw["user"] == "docker-registry"
    assert kw["volumes"] == {"demo-registry": "/var/lib/docker-registry"}
    assert kw["ports"] == {"5000/tcp": ("127.0.0.1", 5001)}
    assert (kw["network"], kw["ip"]) == ("dindind-demo", "172.30.0.253")
    assert kw["entrypoint"] == ["/usr/bin/docker-registry"] and kw["command"] == ["serve", registry.CONFIG]
    assert kw["labels"] == {plan.CLUSTER_LABEL: "demo", plan.ROLE_LABEL: "registry"}
    # the node image's VOLUMEs get no anonymous volume here
    assert set(kw["tmpfs"]) == set(registry.NODE_VOLUMES)
    assert "docker-registry" in images.NODE_PACKAGES
    assert (images.ROOT / "templates" / "node" / "files" / "etc" / "dindind" / "registry.yml").is_file()


class FakeEngine:
    def __init__(self, probe_ok=True):
        self.calls, self.files, self.probe_ok = [], {}, probe_ok

    def create_volume(self, name, labels):
        self.calls.append(("volume", name, labels))

    def run_container(self, image, name, **kw):
        self.calls.append(("run", image, name, kw))

    def exec_in(self, container, cmd, check=True):
        self.calls.append(("exec", container, cmd[:3]))
        return (0, "") if self.probe_ok else (1, "connection refused")

    def put_file(self, container, path, data, mode=0o644):
        self.files[(container, path)] = data

    def logs(self, name, tail="all"):
        return "registry log line\n"

    def remove_container(self, name, volumes=True):
        self.calls.append(("rm", name, volumes))

    def remove_volume(self, name):
        self.calls.append(("rmvol", name))

    def remove_network(self, name):
        self.calls.append(("rmnet", name))


def test_the_action_starts_the_registry_waits_for_it_and_tells_every_node(monkeypatch):
    p = plan.make_plan(settings(), token=TOKEN)
    ctx = Context(plan=p, node_image="dindind/node:x", status=Status(out=io.StringIO()), engine=FakeEngine())
    registry_action.execute(ctx)
    kinds = [c[0] for c in ctx.engine.calls]
    assert kinds[:3] == ["volume", "run", "exec"]
    assert ctx.engine.calls[1][2] == "demo-registry"
    assert ctx.created == [("volume", "demo-registry"), ("container", "demo-registry")]
    path = "/etc/containerd/certs.d/localhost:5001/hosts.toml"
    assert sorted(ctx.engine.files) == [("demo-control-plane", path), ("demo-worker", path)]
    # a registry that never answers: one error with its log, and the rollback removes it
    monkeypatch.setattr(registry, "WAIT", 0)
    ctx = Context(plan=p, node_image="dindind/node:x", status=Status(out=io.StringIO()),
                  engine=FakeEngine(probe_ok=False))
    with pytest.raises(DindindError, match="did not answer at http://172.30.0.253:5000/v2/") as info:
        registry_action.wait(ctx, p.control_plane, timeout=0)
    assert "registry log line" in info.value.detail


def test_the_configmap_goes_to_the_control_planes_address_created_or_replaced(monkeypatch):
    from dindind.cluster import api

    sent = []
    answers = iter([(409, {"message": "exists"}), (200, {})])
    monkeypatch.setattr(api, "request", lambda kc, method, path, body=None, server=None, timeout=5:
                        sent.append((method, path, server)) or next(answers))
    p = plan.make_plan(settings(), token=TOKEN)
    ctx = Context(plan=p, node_image="x", status=Status(out=io.StringIO()), kubeconfig=b"kc",
                  node_ips={"demo-control-plane": "172.30.0.2"})
    registryhosting.execute(ctx)
    assert sent == [("POST", "/api/v1/namespaces/kube-public/configmaps", "https://172.30.0.2:6443"),
                    ("PUT", "/api/v1/namespaces/kube-public/configmaps/local-registry-hosting",
                     "https://172.30.0.2:6443")]
    monkeypatch.setattr(api, "request", lambda *a, **k: (403, {"message": "forbidden"}))
    with pytest.raises(DindindError, match="refused .*local-registry-hosting .403: forbidden"):
        registryhosting.execute(ctx)


# ------------------------------------------------------------------ the host side

def test_nested_the_cluster_container_publishes_the_port_and_the_registry_listens_on_all_of_it():
    s = settings(registry_port=5050, nodes=(plan.NodeSpec("control-plane", extra_port_mappings=(
        plan.PortMapping(80, 8080),)),))
    inner, _, top_ports = passthrough.nested(s)
    assert top_ports == {"40000/tcp": ("127.0.0.1", 8080), "5050/tcp": ("127.0.0.1", 5050)}
    assert (inner.registry, inner.registry_port, inner.registry_address) == (True, 5050, "0.0.0.0")
    # the cluster image is given the same name port, so pods pull localhost:5050 inside too
    arg = next(a for a in host.image_args(inner, versioned=True) if a.startswith("--config-json="))
    doc = clusterconfig.from_json(arg.partition("=")[2])
    assert doc["registry"] == {"enabled": True, "hostPort": 5050, "listenAddress": "0.0.0.0"}
    assert passthrough.nested(settings(registry=False))[2] == {}


def test_a_registry_port_in_use_is_refused_before_anything_is_created():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(DindindError, match=f"registry: 127.0.0.1:{port}: the host port is not free"):
            passthrough.hold_registry_port(settings(registry_port=port))
    held = passthrough.hold_registry_port(settings(registry_port=port))
    try:
        assert held.getsockname()[1] == port
    finally:
        held.close()
    assert passthrough.hold_registry_port(settings(registry=False)) is None


def test_cluster_up_says_where_to_push_and_warns_beyond_loopback():
    assert registry.describe(settings()) == [
        "  registry 127.0.0.1:5001: docker push localhost:5001/IMAGE; pods pull localhost:5001/IMAGE"]
    assert registry.describe(settings(registry_address="10.0.0.5")) == [
        "  registry 10.0.0.5:5001: docker push 10.0.0.5:5001/IMAGE; pods pull localhost:5001/IMAGE"]
    assert registry.describe(settings(registry=False)) == []
    assert registry.warnings(settings()) == []
    assert registry.warnings(settings(registry_address="0.0.0.0")) == [
        "WARNING: the registry listens on 0.0.0.0:5001, reachable from other machines, without authentication "
        "(registry.listenAddress)"]


def test_a_nested_shell_runs_commands_in_the_nodes_not_in_the_registry(monkeypatch):
    listing = "demo-control-plane control-plane\ndemo-registry registry\ndemo-worker worker\n"
    monkeypatch.setattr(host.containers, "containers", lambda labels, all=True: [{"Id": "t"}])
    monkeypatch.setattr(host.containers, "exec_in", lambda c, cmd, check=True: (0, listing))
    assert host.Shell("demo").nodes == ["demo-control-plane", "demo-worker"]
