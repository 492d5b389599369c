"""The node runtime: containerd/runc pins, the containerd config per major version, cgroup v1 handling (no engine)."""

import re

import pytest
import yaml

from dindind.base import config, render
from dindind.base.config import ROOT
from dindind.base.errors import ConfigError, DindindError
from dindind.build import images
from dindind.cluster import kubeadm, plan

TREE = {"version": "v1.37.2", "images": [{"refs": ["registry.k8s.io/pause:3.10.2"]}]}
BASE = {"tags": ["dindind/base:trixie-x"]}


def cfg(text=""):
    return config.parse(text, "t.yaml", base_dir=ROOT)


def render_node(c, tree=TREE, tmp=None):
    ctx = images.node_context(c, tree, BASE, ["kubelet", "kubeadm"])
    render.render_tree(ROOT / "templates" / "node", ctx, tmp)
    return ctx


def test_default_runtime_is_forkys_containerd_2_and_runc_pinned_by_version_and_sha256(tmp_path):
    ctx = render_node(cfg(), tmp=tmp_path)
    pkgs = {p["name"]: p for p in ctx["runtime"]["packages"]}
    assert pkgs["containerd"]["version"] == "2.1.9+ds1-5" and pkgs["runc"]["version"] == "1.3.6+ds1-1"
    assert pkgs["containerd"]["file"] == "containerd_2.1.9+ds1-5_amd64.deb"
    assert "containerd" not in ctx["packages"] and "runc" not in ctx["packages"]
    dockerfile = (tmp_path / "Dockerfile").read_text()
    assert " forky main" in dockerfile
    assert "apt-get download -qq containerd=2.1.9+ds1-5 runc=1.3.6+ds1-1" in dockerfile
    assert f"{pkgs['containerd']['sha256']} containerd_2.1.9+ds1-5_amd64.deb" in dockerfile
    assert "sha256sum -c --strict" in dockerfile
    assert "RUN /usr/local/libexec/dindind/check-cri" in dockerfile
    toml = (tmp_path / "files/etc/containerd/config.toml").read_text()
    assert toml.startswith("# containerd 2") and "version = 3" in toml
    assert "sandbox = 'registry.k8s.io/pause:3.10.2'" in toml
    assert "restrict_oom_score_adj = true" in toml and "SystemdCgroup = true" in toml
    assert not (tmp_path / "_containerd").exists()          # partials are included, never rendered alone


def test_the_suites_own_containerd_gets_the_version_2_config(tmp_path):
    ctx = render_node(cfg("node:\n  runtime_suite: null\n"), tree={**TREE, "version": "v1.31.2"}, tmp=tmp_path)
    assert ctx["runtime"] is None and {"containerd", "runc"} <= set(ctx["packages"])
    toml = (tmp_path / "files/etc/containerd/config.toml").read_text()
    assert "version = 2" in toml and 'sandbox_image = "registry.k8s.io/pause:3.10.2"' in toml
    assert "forky" not in (tmp_path / "Dockerfile").read_text()


def test_kubernetes_that_needs_containerd_2_is_refused_before_anything_is_built():
    with pytest.raises(DindindError, match="needs containerd 2"):
        images.node_context(cfg("node:\n  runtime_suite: null\n"), TREE, BASE, [])


def test_forkys_runc_on_bookworm_is_refused_by_the_config():
    with pytest.raises(ConfigError, match=r"node.runtime_suite: runc 1.3.6\+ds1-1 from forky needs glibc >= 2.38"):
        cfg("base:\n  suite: bookworm\n")
    cfg("base:\n  suite: bookworm\nnode:\n  runtime_suite: null\n")      # the suite's own runtime is fine


@pytest.mark.parametrize("key,value", [("containerd_version", "'2.1.9\\nRUN x'"), ("runc_sha256", "abc"),
                                       ("runtime_suite", "'forky main contrib'")])
def test_runtime_pins_are_validated(key, value):
    with pytest.raises(ConfigError, match=f"node.{key}"):
        cfg(f"node:\n  {key}: {value}\n")


def _kubelet(cgroup_v1):
    s = plan.Settings(name="demo", workers=0, node_image="n", kubernetes_version="v1.37.2",
                      pod_subnet="10.244.0.0/16", service_subnet="10.96.0.0/16", node_subnet="172.30.0.0/24")
    p = plan.make_plan(s, token="abcdef.0123456789abcdef")
    text = kubeadm.render_config(p, p.nodes[0], "172.30.0.2", "172.30.0.2", cgroup_v1=cgroup_v1)
    return next(d for d in yaml.safe_load_all(text) if d and d["kind"] == "KubeletConfiguration")


def test_cgroup_v1_hosts_tell_kubelet_not_to_fail_and_v2_hosts_get_the_plain_configuration():
    assert _kubelet(True)["failCgroupV1"] is False
    assert "failCgroupV1" not in _kubelet(False)


def test_entrypoint_and_scripts_are_posix_sh():
    import subprocess

    for rel in ("files/usr/local/bin/dindind-node-entrypoint", "files/usr/local/libexec/dindind/check-cri",
                "files/usr/local/libexec/dindind/import-images"):
        path = ROOT / "templates" / "node" / rel
        assert subprocess.run(["sh", "-n", str(path)]).returncode == 0, rel
        assert path.stat().st_mode & 0o111, f"{rel} is not executable"


def test_import_script_adds_the_tag_kubeadm_asks_for():
    text = (ROOT / "templates/node/files/usr/local/libexec/dindind/import-images").read_text()
    sed = re.search(r"sed -n '([^']+)'", text).group(1)
    import subprocess

    out = subprocess.run(["sed", "-n", sed], input="registry.k8s.io/kube-proxy-amd64:v1.37.2\n"
                         "registry.k8s.io/pause:3.10.2\n", text=True, stdout=subprocess.PIPE).stdout
    assert out == "registry.k8s.io/kube-proxy-amd64:v1.37.2 registry.k8s.io/kube-proxy:v1.37.2\n"
