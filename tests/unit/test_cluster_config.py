"""The versioned cluster config (dindind.dev/v1alpha1 Cluster): parsing, validation, schema, and what
it becomes (Settings, kubeadm configs, node run arguments, the cluster image's arguments). No engine."""

import json
import re
import socket
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest
import yaml

from dindind import __main__ as cli
from dindind.base import clusterconfig, config
from dindind.base.errors import ConfigError, DindindError
from dindind.build import images
from dindind.cluster import host, incluster, kubeadm, options, passthrough, plan
from dindind.cluster.actions import provision
from dindind.cluster.context import Context
from dindind.cluster.status import Status
from dindind.docker.containers import PRIVILEGED

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cluster"
EXAMPLE = config.ROOT / "config" / "cluster" / "example.yaml"
VALID = sorted(FIXTURES.glob("valid-*.yaml")) + [EXAMPLE]
NODE_STAMP = {"tags": ["dindind/node:v1.31.2_sample"], "kubernetes_version": "v1.31.2+sample", "id": "sha256:0"}
TOKEN = "abcdef.0123456789abcdef"
HEAD = "apiVersion: dindind.dev/v1alpha1\nkind: Cluster\n"


def problems(text, base_dir=None):
    with pytest.raises(ConfigError) as info:
        clusterconfig.parse(text, "c.yaml", base_dir=base_dir)
    return info.value.problems


def defaults(tmp_path):
    p = tmp_path / "build.yaml"
    p.write_text("kubernetes: {source: sample, version: v1.31.2+sample}\n")
    return options.load_defaults(images.cluster_defaults(config.load(p), NODE_STAMP))


# ------------------------------------------------------------------ files, versions, schema

@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_files_load_and_match_the_committed_schema(path):
    doc = clusterconfig.load(path)
    assert (doc["apiVersion"], doc["kind"]) == ("dindind.dev/v1alpha1", "Cluster")
    schema = json.loads(clusterconfig.SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    jsonschema.validate(doc, schema)            # the defaulted, normalized form too (what --config-json carries)


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("invalid-*.yaml")), ids=lambda p: p.name)
def test_invalid_files_report_every_problem_at_once(path):
    expected = re.findall(r"^# expect: (.*)$", path.read_text(), re.M)
    assert expected, f"{path.name} names no expected problem"
    with pytest.raises(ConfigError) as info:
        clusterconfig.load(path)
    text = info.value.render()
    assert text.startswith(f"ERROR: invalid cluster config {path}: ")
    assert "config/cluster.schema.json" in text
    for needle in expected:
        assert needle in text, f"{needle!r} missing from:\n{text}"
    assert len(info.value.problems) == len(expected), info.value.problems


def test_committed_schema_is_generated_from_spec(capsys):
    committed = json.loads(clusterconfig.SCHEMA_PATH.read_text())
    assert committed == clusterconfig.json_schema(), "run: python -m dindind schema cluster > config/cluster.schema.json"
    assert cli.main(["schema", "cluster"]) == 0
    assert json.loads(capsys.readouterr().out) == committed
    assert cli.main(["schema", "nope"]) == 1


@pytest.mark.parametrize("bad", [
    {"apiVersion": "dindind.dev/v1alpha2", "kind": "Cluster"},
    {"kind": "Cluster"},
    {"apiVersion": "dindind.dev/v1alpha1", "kind": "Cluster", "nodes": [{"role": "master"}]},
    {"apiVersion": "dindind.dev/v1alpha1", "kind": "Cluster", "nodes": [{"labels": {}}]},
    {"apiVersion": "dindind.dev/v1alpha1", "kind": "Cluster", "nodes": [{"role": "worker", "labels": {"a b": "c"}}]},
    {"apiVersion": "dindind.dev/v1alpha1", "kind": "Cluster", "nodes": [{"role": "worker", "labels": {"a": "c d"}}]},
    {"apiVersion": "dindind.dev/v1alpha1", "kind": "Cluster", "nodes": [{"role": "worker", "extraMounts": [{}]}]},
    {"apiVersion": "dindind.dev/v1alpha1", "kind": "Cluster", "networking": {"ipFamily": "ipv5"}},
    {"apiVersion": "dindind.dev/v1alpha1", "kind": "Cluster", "workers": 3},
])
def test_the_schema_refuses_what_the_validator_refuses(bad):
    schema = json.loads(clusterconfig.SCHEMA_PATH.read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    with pytest.raises(ConfigError):
        clusterconfig.parse(json.dumps(bad), "c.json")


def test_an_unknown_version_is_refused_naming_the_known_ones_and_nothing_else_is_judged():
    found = problems("apiVersion: kind.x-k8s.io/v1alpha4\nkind: Cluster\nnodes: {bad: shape}\n")
    assert found == ["apiVersion: 'kind.x-k8s.io/v1alpha4' is not known "
                     "(known: apiVersion: dindind.dev/v1alpha1 with kind: Cluster)"]
    assert problems("") == [
        "(top level): no apiVersion and kind: a cluster config starts with apiVersion: dindind.dev/v1alpha1 and "
        "kind: Cluster"]
    assert problems("[1, 2]") == ["(top level): expected a mapping, got list"]


def test_defaults_fill_in_everything_the_file_does_not_say():
    doc = clusterconfig.parse(HEAD, "c.yaml")
    assert doc["nodes"] is None and doc["name"] is None
    assert doc["networking"] == {"apiServerAddress": "127.0.0.1", "apiServerPort": 0, "podSubnet": "10.244.0.0/16",
                                 "serviceSubnet": "10.96.0.0/16", "nodeSubnet": "172.30.0.0/24",
                                 "disableDefaultCNI": False, "ipFamily": "ipv4", "kubeProxyMode": "iptables",
                                 "nodeSubnetIPv6": "fd00:172:30::/64"}
    node = clusterconfig.parse(HEAD + "nodes: [{role: control-plane}]\n", "c.yaml")["nodes"][0]
    assert node == {"role": "control-plane", "labels": {}, "kubeletExtraArgs": [], "kubeadmConfigPatches": [],
                    "extraMounts": [], "extraPortMappings": []}


# ------------------------------------------------------------------ the rules

@pytest.mark.parametrize("key, ok", [
    ("tier", True), ("example.com/tier", True), ("a.b-c.d/x_y.z", True), ("x" * 63, True),
    ("node.kubernetes.io/pool", True), ("team.node.kubernetes.io/x", True), ("kubelet.kubernetes.io/x", True),
    ("topology.kubernetes.io/zone", True), ("kubernetes.io/hostname", True),
    ("node-role.kubernetes.io/worker", False), ("kubernetes.io/role", False), ("x.k8s.io/y", False),
    ("k8s.io/y", False), ("node-restriction.kubernetes.io/x", False),
    ("x" * 64, False), ("Example.com/x", False), ("-x", False), ("x/", False), ("/x", False), ("a/b/c", False),
    ("", False), ("tier\n", False),
])
def test_label_keys_follow_kubernetes_and_kubelet(key, ok):
    text = HEAD + "nodes:\n- role: control-plane\n  labels: " + json.dumps({key: "v"}) + "\n"
    if ok:
        assert clusterconfig.parse(text, "c.yaml")["nodes"][0]["labels"] == {key: "v"}
    else:
        (problem,) = problems(text)
        assert problem.startswith("nodes[0].labels: key "), problem


@pytest.mark.parametrize("value, ok", [("", True), ("a", True), ("A-b_c.9", True), ("x" * 63, True),
                                       ("x" * 64, False), ("-a", False), ("a b", False), ("a,b", False),
                                       ("a=b", False), ('a"', False)])
def test_label_values(value, ok):
    text = HEAD + "nodes:\n- role: control-plane\n  labels: " + json.dumps({"k": value}) + "\n"
    if ok:
        clusterconfig.parse(text, "c.yaml")
    else:
        assert problems(text)[0].startswith("nodes[0].labels.k: ")


@pytest.mark.parametrize("roles, message", [
    ([], "nodes: no node has role: control-plane; a cluster needs one"),
    (["worker"], "nodes: no node has role: control-plane; a cluster needs one"),
    (["control-plane", "control-plane", "worker"],
     "nodes: 2 control-plane nodes: give 1, 3, 5 or 7 (e.g. 1). Each control plane runs an etcd member, and etcd works only while a majority (quorum) of its members is up: an even count survives no more failures than 1 (a majority of 2 is 2)"),
    (["control-plane"] + ["worker"] * 11, "nodes: 11 workers: at most 10"),
])
def test_role_counts_that_cannot_work_are_refused(roles, message):
    assert problems(HEAD + "nodes: " + json.dumps([{"role": r} for r in roles]) + "\n") == [message]


def test_mounts_resolve_against_the_config_file_and_must_exist(tmp_path):
    (tmp_path / "data").mkdir()
    f = tmp_path / "c.yaml"
    f.write_text(HEAD + "nodes:\n- role: control-plane\n  extraMounts:\n"
                 "  - {hostPath: data, containerPath: /data/./x/}\n  - {hostPath: c.yaml, containerPath: /c.yaml}\n")
    mounts = clusterconfig.load(f)["nodes"][0]["extraMounts"]
    assert [(m["hostPath"], m["containerPath"], m["readOnly"]) for m in mounts] == [
        (str(tmp_path / "data"), "/data/x", False), (str(tmp_path / "c.yaml"), "/c.yaml", False)]
    (tmp_path / "data").rmdir()
    with pytest.raises(ConfigError, match=re.escape(f"nodes[0].extraMounts[0].hostPath: '{tmp_path / 'data'}' "
                                                    "does not exist")):
        clusterconfig.load(f)


def test_json_has_no_file_so_its_host_paths_are_absolute(tmp_path):
    doc = {"apiVersion": "dindind.dev/v1alpha1", "kind": "Cluster",
           "nodes": [{"role": "control-plane", "extraMounts": [{"hostPath": "rel", "containerPath": "/x"},
                                                                {"hostPath": str(tmp_path), "containerPath": "/y"}]}]}
    with pytest.raises(ConfigError) as info:
        clusterconfig.from_json(json.dumps(doc))
    assert info.value.problems == ["nodes[0].extraMounts[0].hostPath: 'rel' must be absolute (the config has no "
                                   "file to be relative to)"]
    with pytest.raises(ConfigError, match="more than the 100000 an argument may carry"):
        clusterconfig.from_json(" " * 100_001)


def test_hostile_text_is_refused_as_the_build_config_is():
    assert "aliases" in problems(HEAD + "name: &a x\nnodes: *a\n")[0]
    assert "tags" in problems(HEAD + "name: !!python/object:os.system x\n")[0]
    assert problems(HEAD + "kind: Cluster\n") == ["kind: duplicate key (line 3)"]


# ------------------------------------------------------------------ the build config's keys, deprecated

def test_the_build_configs_cluster_keys_keep_working_with_a_deprecation_notice(tmp_path, capsys):
    assert clusterconfig.deprecation(config.load(None)) is None           # the default file sets them all
    p = tmp_path / "build.yaml"
    p.write_text("kubernetes: {source: sample, version: v1.31.2+sample}\n"
                 "cluster: {workers: 3, kubelet_extra_args: [--v=4], name: other, wait: 30}\n")
    cfg = config.load(p)
    notice = clusterconfig.deprecation(cfg)
    assert notice == ("DEPRECATED: the build config's cluster.workers, cluster.kubelet_extra_args: write them in a "
                      "cluster config (dindind.dev/v1alpha1 Cluster: nodes, kubeletExtraArgs) and give it with "
                      "`doit cluster:up --config FILE`")
    assert "\n" not in notice
    assert clusterconfig.deprecation(cfg, with_config=True).startswith(
        "NOTE: the build config's cluster.workers, cluster.kubelet_extra_args are not used")
    assert cli.main(["check", str(p)]) == 0
    assert capsys.readouterr().out.startswith("DEPRECATED: ")


def test_check_tells_a_cluster_config_from_a_build_config(capsys):
    assert cli.main(["check", str(FIXTURES / "valid-roles.yaml")]) == 0
    assert "ok (dindind.dev/v1alpha1 Cluster: 1 control plane, 2 worker(s))" in capsys.readouterr().out
    assert cli.main(["check", str(FIXTURES / "invalid-kind.yaml")]) == 1
    assert "ERROR: invalid cluster config" in capsys.readouterr().err


# ------------------------------------------------------------------ into Settings, and back

def test_settings_from_a_config_order_the_control_plane_first_and_keep_each_nodes_own(tmp_path):
    doc = clusterconfig.load(FIXTURES / "valid-full.yaml")
    s = plan.from_cluster_config(doc, defaults(tmp_path))
    assert (s.name, s.workers, s.cni, s.api_port, s.pod_subnet) == ("full", 1, "none", 6443, "10.200.0.0/16")
    assert s.kubelet_extra_args == ("--v=3",)
    cp, worker = s.nodes
    assert cp.labels == (("example.com/tier", "front"), ("node.kubernetes.io/pool", ""),
                         ("topology.kubernetes.io/zone", "zone-a"))
    assert worker.extra_mounts[0] == plan.Mount(str(FIXTURES), "/fixtures", True)
    assert worker.extra_port_mappings == (plan.PortMapping(80, 8081, "127.0.0.1", "TCP"),)
    roles = plan.from_cluster_config(clusterconfig.load(FIXTURES / "valid-roles.yaml"), defaults(tmp_path))
    assert roles.nodes == () and roles.workers == 2          # nothing of their own: just a count
    assert [n.role for n in plan.make_plan(roles, TOKEN).nodes] == ["control-plane", "worker", "worker"]


@pytest.mark.parametrize("name", ["valid-full.yaml", "valid-minimal.yaml", "valid-roles.yaml"])
def test_settings_survive_the_trip_through_the_cluster_images_json_argument(tmp_path, name):
    s = plan.from_cluster_config(clusterconfig.load(FIXTURES / name), defaults(tmp_path))
    text = clusterconfig.to_json(plan.to_cluster_config(s))
    assert "\n" not in text
    back = plan.from_cluster_config(clusterconfig.from_json(text), defaults(tmp_path))
    assert back == s
    assert plan.Settings.from_json(s.to_json()) == s


def test_kubelet_gets_the_clusters_then_the_nodes_arguments_and_the_labels(tmp_path):
    s = plan.from_cluster_config(clusterconfig.load(FIXTURES / "valid-full.yaml"), defaults(tmp_path))
    p = plan.make_plan(s, TOKEN)
    cp, worker = p.nodes
    assert kubeadm.kubelet_args(p, worker, "172.31.0.3") == [
        ("node-ip", "172.31.0.3"), ("provider-id", "dindind://docker/full/full-worker"),
        ("max-pods", "50"), ("v", "2"), ("node-labels", "tier=back")]
    assert kubeadm.kubelet_args(p, cp, "172.31.0.2")[-2:] == [
        ("v", "4"), ("node-labels", "example.com/tier=front,node.kubernetes.io/pool=,topology.kubernetes.io/zone=zone-a")]
    for node, ip in ((cp, "172.31.0.2"), (worker, "172.31.0.3")):
        docs = {d["kind"]: d for d in yaml.safe_load_all(kubeadm.render_config(p, node, ip, "172.31.0.2"))}
        for kind in ("InitConfiguration", "JoinConfiguration"):
            args = {a["name"]: a["value"] for a in docs[kind]["nodeRegistration"]["kubeletExtraArgs"]}
            assert args == dict(kubeadm.kubelet_args(p, node, ip)), kind
        # the cluster's patch on every node, each node's own only on it
        assert docs["ClusterConfiguration"]["apiServer"]["extraArgs"] == [{"name": "v", "value": "2"}]
        # a node's own KubeletConfiguration patch is kubeadm's kubeletconfiguration patch target on that node
        # (`kubeadm join` reads the kubelet's configuration from the cluster, not from this document)
        assert "maxPods" not in docs["KubeletConfiguration"]
        patch = kubeadm.kubelet_patch(p, node)
        assert (json.loads(patch) if patch else None) == ({"maxPods": 50} if node is worker else None)
        for kind in ("InitConfiguration", "JoinConfiguration"):
            assert docs[kind].get("patches") == ({"directory": kubeadm.PATCH_DIR} if node is worker else None)
        assert docs["InitConfiguration"]["nodeRegistration"].get("taints", "unset") == ([] if node is cp else "unset")


def test_v1beta3_gets_the_same_arguments_as_a_mapping(tmp_path):
    s = plan.from_cluster_config(clusterconfig.load(FIXTURES / "valid-full.yaml"), defaults(tmp_path))
    p = plan.make_plan(replace(s, kubernetes_version="v1.30.5"), TOKEN)
    docs = {d["kind"]: d for d in yaml.safe_load_all(kubeadm.render_config(p, p.nodes[1], "172.31.0.3", "172.31.0.2"))}
    assert docs["JoinConfiguration"]["nodeRegistration"]["kubeletExtraArgs"]["node-labels"] == "tier=back"


def test_a_nodes_mounts_and_ports_reach_its_container(tmp_path):
    s = plan.from_cluster_config(clusterconfig.load(FIXTURES / "valid-full.yaml"), defaults(tmp_path))
    p = plan.make_plan(s, TOKEN)
    ctx = Context(plan=p, node_image="img", status=Status(), publish=("127.0.0.1", 41000), privilege=PRIVILEGED)
    cp, worker = (provision.node_run_args(ctx, n) for n in p.nodes)
    assert cp["ports"] == {6443: ("127.0.0.1", 41000), "80/tcp": ("127.0.0.1", 8080), "53/udp": ("::1", None)}
    assert "mounts" not in cp
    assert worker["ports"] == {"80/tcp": ("127.0.0.1", 8081)}
    assert worker["mounts"] == [(str(FIXTURES), "/fixtures", True),
                                (str(FIXTURES / "valid-full.yaml"), "/etc/example/config.yaml", False)]


# ------------------------------------------------------------------ the cluster image's arguments

def test_the_image_takes_a_config_as_json_or_as_a_file(tmp_path):
    d = defaults(tmp_path)
    text = (FIXTURES / "valid-roles.yaml").read_text()
    (tmp_path / "c.yaml").write_text(text + "name: from-file\n")
    by_file = options.parse(["--config", str(tmp_path / "c.yaml"), "--wait=5"], d).settings
    assert (by_file.name, by_file.workers, by_file.wait, by_file.node_image) == ("from-file", 2, 5, d.node_image)
    doc = clusterconfig.parse(text, "x")
    by_json = options.parse([f"--config-json={json.dumps(doc)}", "--name", "flag-wins", "--workers", "4"], d).settings
    assert (by_json.name, by_json.workers) == ("flag-wins", 4)


@pytest.mark.parametrize("argv, message", [
    (["--config-json={}"], "no apiVersion and kind"),
    (["--config-json", "{"], "not valid YAML"),
    (["--config", "/no/such/file.yaml"], "cannot read the cluster config"),
    ([f"--config-json={json.dumps({'apiVersion': 'dindind.dev/v1alpha1', 'kind': 'Cluster'})}", "--config-json={}"],
     "give one cluster config"),
])
def test_bad_config_arguments(tmp_path, argv, message):
    with pytest.raises(DindindError, match=re.escape(message)):
        options.parse(argv, defaults(tmp_path))


def test_workers_cannot_change_nodes_that_have_settings_of_their_own(tmp_path):
    doc = clusterconfig.load(FIXTURES / "valid-full.yaml")
    with pytest.raises(DindindError, match="--workers cannot change a cluster config"):
        options.parse([f"--config-json={clusterconfig.to_json(doc)}", "--workers", "2"], defaults(tmp_path))


def test_the_entry_point_prints_every_problem_of_a_config_and_exits_2(tmp_path, monkeypatch, capsys):
    path = tmp_path / "cluster.json"
    path.write_text(defaults(tmp_path).to_json())
    monkeypatch.setattr(options, "DEFAULTS", str(path))
    monkeypatch.setattr(incluster, "check_privileges", lambda: (_ for _ in ()).throw(AssertionError("no")))
    bad = {"apiVersion": "dindind.dev/v1alpha1", "kind": "Cluster", "nodes": [{"role": "worker"}, {"role": "x"}]}
    assert incluster.main([f"--config-json={json.dumps(bad)}"]) == 2
    out = capsys.readouterr().out
    assert out.startswith("ERROR: invalid cluster config --config-json: 2 problem(s)")
    assert "nodes[1].role: 'x' is not one of" in out and "no node has role: control-plane" in out


def test_cluster_up_passes_a_config_as_one_json_argument_that_parses_back(tmp_path):
    d = defaults(tmp_path)
    s = plan.from_cluster_config(clusterconfig.load(FIXTURES / "valid-full.yaml"), d)
    s = passthrough.reserve_ports(replace(s, nodes=tuple(
        replace(n, extra_port_mappings=tuple(replace(p, host_port=0) for p in n.extra_port_mappings))
        for n in s.nodes)))
    inner, top_mounts, top_ports = passthrough.nested(s)
    args = host.image_args(inner, versioned=True)
    assert args[0].startswith("--config-json={") and args[1:] == ["--name", "full", "--wait", str(d.wait)]
    assert str(FIXTURES) not in " ".join(args)          # no host path reaches the cluster image
    # the cluster container mounts and publishes what its nodes then take from it
    assert top_mounts == [(str(FIXTURES), "/mnt/dindind/0", True),
                          (str(FIXTURES / "valid-full.yaml"), "/mnt/dindind/1", False)]
    host_ports = [p.host_port for n in s.nodes for p in n.extra_port_mappings]
    assert all(host_ports) and top_ports == {"40000/tcp": ("127.0.0.1", host_ports[0]),
                                             "40001/udp": ("::1", host_ports[1]),
                                             "40002/tcp": ("127.0.0.1", host_ports[2])}
    doc = json.loads(args[0].partition("=")[2])
    assert [m["hostPath"] for m in doc["nodes"][1]["extraMounts"]] == ["/mnt/dindind/0", "/mnt/dindind/1"]
    assert doc["nodes"][0]["extraPortMappings"][0] == {"containerPort": 80, "hostPort": 40000,
                                                       "listenAddress": "0.0.0.0", "protocol": "TCP"}
    back = plan.from_cluster_config(clusterconfig.parse(args[0].partition("=")[2], "--config-json",
                                                        check_paths=False), d)
    assert back == replace(inner, wait=d.wait)


def test_legacy_clusters_keep_passing_the_old_flags(tmp_path):
    s = replace(defaults(tmp_path), workers=1, kubelet_extra_args=("--v=4",))
    assert host.image_args(s) == ["--name", s.name, "--workers", "1", "--wait", str(s.wait), "--kubelet-arg=--v=4"]


def test_ports_are_reserved_before_anything_is_created(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        s = replace(defaults(tmp_path), nodes=(plan.NodeSpec("control-plane", extra_port_mappings=(
            plan.PortMapping(80, port),)),))
        with pytest.raises(DindindError, match=f"127.0.0.1:{port}/TCP -> 80: the host port is not free"):
            passthrough.reserve_ports(s)
    s = replace(s, nodes=(plan.NodeSpec("control-plane", extra_port_mappings=(plan.PortMapping(80, 0),
                                                                                 plan.PortMapping(81, 0))),))
    picked = [p.host_port for p in passthrough.mappings(passthrough.reserve_ports(s))]
    assert all(picked) and len(set(picked)) == 2
    with pytest.raises(DindindError, match="the API server is published on that port"):
        passthrough.reserve_ports(replace(s, nodes=(plan.NodeSpec("control-plane", extra_port_mappings=(
            plan.PortMapping(80, 7777),)),)), taken=[("127.0.0.1", 7777)])
    wide = replace(s, nodes=(plan.NodeSpec("control-plane", extra_port_mappings=(
        plan.PortMapping(80, 1, "0.0.0.0"),)),))
    assert passthrough.warnings(wide) == ["WARNING: 0.0.0.0:1/TCP (extraPortMappings -> 80) is reachable from "
                                          "other machines"]


def test_cluster_up_refuses_a_bad_config_before_the_build_runs(tmp_path):
    from doit.cmdparse import CmdParseError

    from dindind.tasks import cluster as cluster_tasks

    with pytest.raises(CmdParseError) as info:
        cluster_tasks._cluster_config(str(FIXTURES / "invalid-nodes.yaml"))
    text = str(info.value)
    assert text.startswith("invalid cluster config") and text.count("\n  - ") == 15
    assert cluster_tasks._cluster_config(str(FIXTURES / "valid-roles.yaml")) == str(FIXTURES / "valid-roles.yaml")
    assert cluster_tasks._cluster_config("") == ""


def test_cluster_up_says_which_build_config_keys_are_deprecated_or_unused(tmp_path, monkeypatch):
    from dindind.base import layout as layout_mod

    p = tmp_path / "build.yaml"
    p.write_text("kubernetes: {source: sample, version: v1.31.2+sample}\ncluster: {pod_subnet: 10.200.0.0/16}\n")
    cfg, lay = config.load(p), layout_mod.Layout(tmp_path / "proj")
    lay.stamp("node").parent.mkdir(parents=True)
    lay.stamp("node").write_text(json.dumps(NODE_STAMP))
    monkeypatch.setattr(host, "_in_use", lambda name: (_ for _ in ()).throw(DindindError("stop here")))
    for config_file, first in ((None, "DEPRECATED: the build config's cluster.pod_subnet: write it"),
                               (FIXTURES / "valid-roles.yaml", "NOTE: the build config's cluster.pod_subnet is "
                                                               "not used")):
        lines = []
        with pytest.raises(DindindError, match="stop here"):
            host.up(cfg, lay, out=lines.append, config_file=config_file)
        assert lines[0].startswith(first) and len(lines) == 1
    # the file's cluster, the command line's name and count on top; a count cannot change nodes of their own
    s = host.settings_for(cfg, lay, name="cli", workers=4, config_file=FIXTURES / "valid-roles.yaml")
    assert (s.name, s.workers, s.pod_subnet) == ("cli", 4, "10.244.0.0/16")
    with pytest.raises(DindindError, match="--workers cannot change"):
        host.settings_for(cfg, lay, workers=1, config_file=FIXTURES / "valid-full.yaml")


def test_cluster_up_prints_where_each_port_mapping_listens(tmp_path):
    s = replace(defaults(tmp_path), name="demo", nodes=(
        plan.NodeSpec("control-plane"), plan.NodeSpec("worker"),
        plan.NodeSpec("worker", extra_port_mappings=(plan.PortMapping(80, 8080), plan.PortMapping(53, 5353, "::1",
                                                                                                  "UDP")))))
    assert passthrough.describe(s) == ["  port 127.0.0.1:8080/TCP -> demo-worker2:80",
                                       "  port [::1]:5353/UDP -> demo-worker2:53"]
