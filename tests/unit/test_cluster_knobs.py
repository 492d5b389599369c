"""The cluster config's Kubernetes knobs: featureGates, runtimeConfig and containerdConfigPatches - what is
refused, what each component's configuration gets, the drop-in files and containerd's restart. No engine."""

import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from dindind.base import clusterconfig, config
from dindind.base.errors import ConfigError, DindindError
from dindind.base.yamlsafe import show
from dindind.build import images
from dindind.cluster import create, kubeadm, options, plan
from dindind.cluster.actions import containerd
from dindind.cluster.context import Context
from dindind.cluster.status import Status

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cluster"
NODE_STAMP = {"tags": ["dindind/node:v1.31.2_sample"], "kubernetes_version": "v1.31.2+sample", "id": "sha256:0"}
TOKEN = "abcdef.0123456789abcdef"
HEAD = "apiVersion: dindind.dev/v1alpha1\nkind: Cluster\n"
KNOBS = HEAD + """\
featureGates: {Zeta: true, AllAlpha: false, InPlacePodVerticalScaling: true}
runtimeConfig: {"v1": "true", "api/alpha": "false", "batch/v2alpha1": "true"}
"""
GATES = "AllAlpha=false,InPlacePodVerticalScaling=true,Zeta=true"
RUNTIME = "api/alpha=false,batch/v2alpha1=true,v1=true"


def problems(text):
    with pytest.raises(ConfigError) as info:
        clusterconfig.parse(text, "c.yaml")
    return info.value.problems


def settings(tmp_path, text, version=None):
    p = tmp_path / "build.yaml"
    p.write_text("kubernetes: {source: sample, version: v1.31.2+sample}\n")
    defaults = options.load_defaults(images.cluster_defaults(config.load(p), NODE_STAMP))
    s = plan.from_cluster_config(clusterconfig.parse(text, "c.yaml"), defaults)
    return replace(s, kubernetes_version=version) if version else s


def rendered(s):
    p = plan.make_plan(s, TOKEN)
    return [{d["kind"]: d for d in yaml.safe_load_all(kubeadm.render_config(p, n, n.ip, p.control_plane.ip)) if d}
            for n in p.nodes]


def args_of(section, v1beta3):
    raw = section.get("extraArgs", {} if v1beta3 else [])
    return dict(raw) if v1beta3 else {a["name"]: a["value"] for a in raw}


# ------------------------------------------------------------------ validation

@pytest.mark.parametrize("name, ok", [
    ("InPlacePodVerticalScaling", True), ("AllAlpha", True), ("CSIMigration", True), ("A1", True),
    ("inPlace", False), ("Has-Dash", False), ("Has_Underscore", False), ("", False), ("A B", False),
    ("Gate=true", False), ("A,B", False), ("É", False), ("A" * 101, False),
])
def test_feature_gate_names_are_camelcase_identifiers(name, ok):
    text = HEAD + f"featureGates: {{{name!r}: true}}\n"
    if ok:
        assert clusterconfig.parse(text, "c.yaml")["featureGates"] == {name: True}
    else:
        assert problems(text) == [f"featureGates: key {show(name)} is not {clusterconfig.GATE_FMT}"]


@pytest.mark.parametrize("value", ['"true"', "1", "yes_please", "null", "[true]"])
def test_feature_gate_values_are_booleans_only(value):
    (problem,) = problems(HEAD + f"featureGates: {{AllAlpha: {value}}}\n")
    assert problem.startswith("featureGates.AllAlpha: ") and ("expected boolean" in problem or "empty" in problem)


@pytest.mark.parametrize("key, ok", [
    ("api/all", True), ("api/alpha", True), ("v1", True), ("batch/v1", True), ("resource.k8s.io/v1beta1", True),
    ("apps/v1/deployments", True), ("API/alpha", False), ("api/alpha,api/beta", False), ("api/alpha=true", False),
    ("/v1", False), ("a/b/c/d", False), ("", False),
])
def test_runtime_config_keys(key, ok):
    text = HEAD + f'runtimeConfig: {{"{key}": "true"}}\n'
    if ok:
        assert clusterconfig.parse(text, "c.yaml")["runtimeConfig"] == {key: "true"}
    else:
        assert problems(text) == [f"runtimeConfig: key {show(key)} is not {clusterconfig.RUNTIME_KEY_FMT}"]


def test_runtime_config_values_are_the_strings_true_and_false():
    assert problems(HEAD + 'runtimeConfig: {"api/alpha": "on", v1: false}\n') == [
        "runtimeConfig.'api/alpha': 'on' is not one of true, false",
        "runtimeConfig.v1: expected string, got bool False (quote it in YAML)"]


def test_containerd_patches_are_checked_as_toml_one_error_each_naming_the_patch():
    doc = HEAD + "containerdConfigPatches:\n" + "".join(f"- {p}\n" for p in (
        '"[debug]\\n  level = \\"debug\\"\\n"',     # fine
        '"a = 1\\na = 2\\n"',                      # a key twice
        '"[plugins\\n"',                           # no closing bracket
        '"version = 4\\n"', '"version = \\"3\\"\\n"', '"imports = []\\n"',
        '"version = 2\\n[plugins.\\"io.containerd.grpc.v1.cri\\"]\\n  x = 1\\n"',   # fine: migrated by containerd
        '"a\\u0000b"'))
    nul, *got = problems(doc)            # a string's own check first, then the TOML of every patch
    assert nul == "containerdConfigPatches[7]: 'a\\x00b' must not contain NUL"
    assert got[0].startswith("containerdConfigPatches[1]: is not valid TOML: Cannot overwrite a value"), got
    assert got[1].startswith("containerdConfigPatches[2]: is not valid TOML: "), got
    assert got[2] == ("containerdConfigPatches[3]: has version = 4: containerd config versions are 2 and 3 "
                      "(or leave it out: the node's own is used)")
    assert got[3].startswith("containerdConfigPatches[4]: has version = '3'"), got
    assert got[4].startswith("containerdConfigPatches[5]: sets imports"), got
    assert len(got) == 5


def test_the_knobs_default_to_nothing_and_ride_through_the_images_json_argument(tmp_path):
    doc = clusterconfig.parse(HEAD, "c.yaml")
    assert (doc["featureGates"], doc["runtimeConfig"], doc["containerdConfigPatches"]) == ({}, {}, [])
    s = settings(tmp_path, KNOBS + 'containerdConfigPatches: ["[debug]\\n  level = \\"debug\\"\\n"]\n')
    assert s.feature_gates == (("AllAlpha", False), ("InPlacePodVerticalScaling", True), ("Zeta", True))
    assert s.runtime_config == (("api/alpha", "false"), ("batch/v2alpha1", "true"), ("v1", "true"))
    back = plan.from_cluster_config(clusterconfig.from_json(clusterconfig.to_json(plan.to_cluster_config(s))),
                                    replace(s, feature_gates=(), runtime_config=(), containerd_patches=()))
    assert back == s and plan.Settings.from_json(s.to_json()) == s


# ------------------------------------------------------------------ rendering

def test_the_arguments_are_sorted_and_the_same_whatever_the_order_given():
    assert kubeadm.feature_gates_arg((("Zeta", True), ("AllAlpha", False))) == "AllAlpha=false,Zeta=true"
    assert kubeadm.runtime_config_arg((("v1", "true"), ("api/alpha", "false"))) == "api/alpha=false,v1=true"


@pytest.mark.parametrize("version", ["v1.31.2+sample", "v1.30.5"], ids=["v1beta4", "v1beta3"])
def test_every_component_of_every_node_gets_the_gates_and_the_api_server_the_runtime_config(tmp_path, version):
    v1beta3 = version == "v1.30.5"
    s = settings(tmp_path, KNOBS + "nodes: [{role: control-plane}, {role: worker}, {role: worker}]\n", version)
    docs = rendered(s)
    assert len(docs) == 3
    for d in docs:
        cc = d["ClusterConfiguration"]
        assert cc["apiVersion"] == f"kubeadm.k8s.io/{'v1beta3' if v1beta3 else 'v1beta4'}"
        assert args_of(cc["apiServer"], v1beta3) == {"feature-gates": GATES, "runtime-config": RUNTIME}
        assert args_of(cc["controllerManager"], v1beta3) == {"enable-hostpath-provisioner": "true",
                                                             "feature-gates": GATES}
        assert args_of(cc["scheduler"], v1beta3) == {"feature-gates": GATES}
        wanted = {"AllAlpha": False, "InPlacePodVerticalScaling": True, "Zeta": True}
        assert d["KubeletConfiguration"]["featureGates"] == wanted
        assert d["KubeProxyConfiguration"]["featureGates"] == wanted
        assert d["KubeletConfiguration"]["cgroupDriver"] == "systemd"        # the rest is still there
        assert d["KubeProxyConfiguration"]["mode"] == "iptables"


def test_runtime_config_alone_touches_only_the_api_server(tmp_path):
    (d,) = rendered(settings(tmp_path, HEAD + 'runtimeConfig: {"api/all": "true"}\nnodes: [{role: control-plane}]\n'))
    cc = d["ClusterConfiguration"]
    assert args_of(cc["apiServer"], False) == {"runtime-config": "api/all=true"}
    assert args_of(cc["controllerManager"], False) == {"enable-hostpath-provisioner": "true"}
    assert "scheduler" not in cc
    assert "featureGates" not in d["KubeletConfiguration"] and "featureGates" not in d["KubeProxyConfiguration"]


def test_without_knobs_the_rendering_has_none_of_them(tmp_path):
    for version in ("v1.31.2+sample", "v1.30.5"):
        (d,) = rendered(settings(tmp_path, HEAD + "nodes: [{role: control-plane}]\n", version))
        cc = d["ClusterConfiguration"]
        assert "extraArgs" not in cc["apiServer"] and "scheduler" not in cc
        assert "featureGates" not in d["KubeletConfiguration"] and "featureGates" not in d["KubeProxyConfiguration"]


def test_a_kubelet_patch_adds_to_the_gates(tmp_path):
    text = KNOBS + "kubeadmConfigPatches: [{kind: KubeletConfiguration, featureGates: {Extra: true}}]\n" \
                   "nodes: [{role: control-plane}]\n"
    (d,) = rendered(settings(tmp_path, text))
    assert d["KubeletConfiguration"]["featureGates"] == {"AllAlpha": False, "InPlacePodVerticalScaling": True,
                                                         "Zeta": True, "Extra": True}


# ------------------------------------------------------------------ containerd drop-ins

V3_CONFIG = "# containerd\nversion = 3\n\n[plugins.'io.containerd.cri.v1.runtime']\n  restrict_oom_score_adj = true\n"


def test_the_drop_ins_are_numbered_and_get_the_nodes_version_unless_they_say_their_own():
    files = containerd.dropins(["[debug]\n  level = 'debug'", "version = 2\n[plugins.x]\n  a = 1\n"], 3)
    assert [p for p, _ in files] == ["/etc/containerd/conf.d/01-dindind-patch.toml",
                                     "/etc/containerd/conf.d/02-dindind-patch.toml"]
    first, second = (tomllib.loads(t) for _, t in files)
    assert first == {"version": 3, "debug": {"level": "debug"}}
    assert second == {"version": 2, "plugins": {"x": {"a": 1}}}
    assert files[0][1].startswith("# containerdConfigPatches[0] of the cluster config") and files[0][1].endswith("\n")
    assert containerd.dropins(["[debug]\n"], None)[0][1].count("version") == 0
    assert containerd.dropin_path(11) == "/etc/containerd/conf.d/12-dindind-patch.toml"


def test_the_nodes_config_gets_imports_once_before_any_table():
    text, version = containerd.with_imports(V3_CONFIG, "n")
    doc = tomllib.loads(text)
    assert doc["imports"] == ["/etc/containerd/conf.d/*.toml"] and version == 3
    assert doc["plugins"]["io.containerd.cri.v1.runtime"]["restrict_oom_score_adj"] is True
    assert containerd.with_imports(text, "n") == (text, 3)        # a second run (a restart) changes nothing
    with pytest.raises(DindindError, match=r"imports \['/x.toml'\] but not '/etc/containerd/conf.d/\*.toml'"):
        containerd.with_imports('imports = ["/x.toml"]\n' + V3_CONFIG, "n")
    with pytest.raises(DindindError, match="is not valid TOML"):
        containerd.with_imports("[plugins\n", "n")


class Engine:
    """A fake engine: files in a dict per node, commands recorded, containerd answering (or not)."""

    def __init__(self, restart_code=0, answers=True):
        self.files, self.ran, self.restart_code, self.answers = {}, [], restart_code, answers

    def put_file(self, name, path, text, mode=0o644):
        self.files[(name, path)] = text
        self.ran.append((name, ["put", path]))

    def exec_in(self, name, cmd, check=True):
        self.ran.append((name, cmd))
        if cmd == ["cat", containerd.CONFIG]:
            return 0, self.files.get((name, containerd.CONFIG), V3_CONFIG)
        if cmd[:2] == ["systemctl", "restart"]:
            return self.restart_code, "Job for containerd.service failed" if self.restart_code else ""
        if cmd == ["ctr", "version"]:
            return (0, "Server: v2.1.9") if self.answers else (1, "connection refused")
        if cmd[0] == "journalctl":
            return 0, "containerd: failed to load TOML: toml: line 2: bad"
        return 0, ""


def context(tmp_path, engine, patches=("[debug]\n  level = 'debug'\n",)):
    s = replace(settings(tmp_path, HEAD), containerd_patches=tuple(patches))
    return Context(plan=plan.make_plan(s, TOKEN), node_image="img", status=Status(), engine=engine)


def test_every_node_gets_the_files_then_containerd_restarts_and_answers(tmp_path):
    eng = Engine()
    ctx = context(tmp_path, eng)
    containerd.execute(ctx)
    names = [n.name for n in ctx.plan.nodes]
    for name in names:
        assert tomllib.loads(eng.files[(name, containerd.CONFIG)])["imports"] == ["/etc/containerd/conf.d/*.toml"]
        assert tomllib.loads(eng.files[(name, "/etc/containerd/conf.d/01-dindind-patch.toml")]) == \
            {"version": 3, "debug": {"level": "debug"}}
        mine = [c for n, c in eng.ran if n == name]
        put, restart = mine.index(["put", "/etc/containerd/conf.d/01-dindind-patch.toml"]), \
            mine.index(["systemctl", "restart", "containerd"])
        assert put < restart < mine.index(["ctr", "version"])


def test_a_containerd_that_does_not_come_back_is_one_error_with_its_journal(tmp_path):
    with pytest.raises(DindindError) as info:
        containerd.execute(context(tmp_path, Engine(restart_code=1)))
    assert "did not start again after containerdConfigPatches were applied" in info.value.message
    assert "failed to load TOML" in info.value.detail and "containerdConfigPatches" in info.value.hint
    with pytest.raises(DindindError) as info:
        containerd.restart_containerd(context(tmp_path, Engine(answers=False)), context(tmp_path, Engine()).plan.nodes[0],
                                      timeout=0)
    assert "did not answer within 0s" in info.value.message


def test_the_action_runs_only_with_patches_and_before_kubeadm(tmp_path):
    s = settings(tmp_path, HEAD)
    assert containerd not in create.actions(s)
    steps = create.actions(replace(s, containerd_patches=("[debug]\n",)))
    assert steps.index(containerd) < steps.index(create.kubeadminit)
