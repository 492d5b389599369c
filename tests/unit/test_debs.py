"""dindind.debs: kubelet, kubectl, kubeadm, kubernetes-cni and cri-tools as reproducible .debs.

Golden files live in tests/golden/debs/; ``UPDATE_GOLDEN=1 pytest tests/unit/test_debs.py``
rewrites them from the current templates (review the diff before committing).
"""

import hashlib
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from dindind.build import cni, debs
from dindind.build.sources import tree as sources
from dindind.base.errors import CommandError, DindindError, InputError
from dindind.base.layout import DEBS, Layout

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "debs"
VERSION = "v1.31.2"
EPOCH = 1700000000
KUBELET_DEPENDS = "iptables, iproute2, socat, util-linux, mount, ebtables, ethtool, conntrack, kubernetes-cni"



def _project(base, *, crictl=False, version=VERSION):
    """A project root with the real templates, a fake Kubernetes tree and fake CNI plugins."""
    root = Path(base)
    shutil.copytree(ROOT / "templates" / "debs", root / "templates" / "debs")
    layout = Layout(root)
    tree = root / "tree"
    sbin = tree / "kubernetes" / "server" / "bin"
    sbin.mkdir(parents=True)
    (tree / "kubernetes" / "version").write_text(version + "\n")
    names = ("kubelet", "kubeadm", "kubectl") + (("crictl",) if crictl else ())
    for name in names:
        (sbin / name).write_text(f"#!/bin/sh\necho fake {name}\n")
        os.chmod(sbin / name, 0o755)
    (layout.cni / "bin").mkdir(parents=True)
    for p in cni.CNI_PLUGINS:
        (layout.cni / "bin" / p).write_text(f"#!/bin/sh\necho fake {p}\n")
        os.chmod(layout.cni / "bin" / p, 0o755)
    (layout.cni / "VERSION").write_text("1.1.1\n")
    return layout, sources.tree_paths(tree)


def _build_all(layout, paths, crictl=False, epoch=EPOCH):
    specs = debs.deb_specs(paths, layout, has_crictl=crictl)
    for name, spec in specs.items():
        debs.build_deb(spec, layout.deb(name), epoch)
    return specs


def _fields(deb):
    out = subprocess.run(["dpkg-deb", "-I", deb], check=True, capture_output=True, text=True).stdout
    fields = {}
    for line in out.splitlines():
        m = re.match(r"^ ([A-Za-z-]+): (.*)$", line)
        if m:
            fields[m.group(1)] = m.group(2)
    return fields


def _listing(deb):
    """dpkg-deb -c as {path: (mode string, owner)}."""
    out = subprocess.run(["dpkg-deb", "-c", deb], check=True, capture_output=True, text=True,
                         env=dict(os.environ, TZ="UTC")).stdout
    entries = {}
    for line in out.splitlines():
        perms, owner, _size, _date, _time, path = line.split(None, 5)
        entries[path] = (perms, owner)
    return entries


def _tar_members(deb, which="--fsys-tarfile"):
    data = subprocess.run(["dpkg-deb", which, deb], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name: (m, tf.extractfile(m).read() if m.isfile() else None) for m in tf.getmembers()}


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------- specs (pure)

def test_specs_are_pure_ordered_and_picklable(tmp_path):
    layout = Layout(tmp_path / "nowhere")                      # nothing exists: specs do no I/O
    paths = sources.tree_paths(tmp_path / "nowhere" / "tree")
    specs = debs.deb_specs(paths, layout)
    assert list(specs) == [n for n in DEBS if n != "cri-tools"]
    assert list(debs.deb_specs(paths, layout, has_crictl=True)) == list(DEBS)

    kubelet = specs["kubelet"]
    assert kubelet.inputs == ((paths.binaries["kubelet"], "usr/bin/kubelet", 0o755),)
    assert kubelet.template_dir == layout.templates / "debs" / "kubelet"
    assert kubelet.version_file == paths.version
    assert "version" not in kubelet.context                     # read at build time
    cni_spec = specs["kubernetes-cni"]
    assert [src for src, _, _ in cni_spec.inputs] == cni.cni_files(layout)[:-1]
    assert all(dest.startswith("opt/cni/bin/") for _, dest, _ in cni_spec.inputs)
    assert cni_spec.version_file == layout.cni / "VERSION"
    assert pickle.loads(pickle.dumps(specs)) == specs
    json.dumps(debs.spec_key(kubelet))


def test_spec_inputs_list_binaries_version_file_and_templates(tmp_path):
    layout, paths = _project(tmp_path / "p")
    specs = debs.deb_specs(paths, layout)
    deps = debs.spec_inputs(specs["kubelet"], layout)
    assert deps == sorted(deps)
    assert paths.binaries["kubelet"] in deps and paths.version in deps
    assert layout.templates / "debs/kubelet/DEBIAN/control.j2" in deps
    assert layout.templates / "debs/kubelet/lib/systemd/system/kubelet.service.j2" in deps
    cni_deps = debs.spec_inputs(specs["kubernetes-cni"], layout)
    assert set(cni.cni_files(layout)) <= set(cni_deps)


def test_specs_from_config_detect_crictl(tmp_path):
    layout, paths = _project(tmp_path / "p")
    cfg = SimpleNamespace(kubernetes={"source": "dir", "path": "tree"},
                          resolve=lambda rel: (layout.root / rel).resolve())
    assert "cri-tools" not in debs.specs(cfg, layout)
    (paths.crictl).write_text("crictl")
    specs = debs.specs(cfg, layout)
    assert "cri-tools" in specs
    assert specs["kubeadm"].context["depends"][-1] == "cri-tools"


@pytest.mark.parametrize("scheme, raw, expected", [
    ("kubernetes", "v1.31.2\n", "1.31.2-1"),
    ("kubernetes", "v1.32.0-rc.1+abc", "1.32.0~rc.1+abc-1"),
    ("kubernetes", "v1.31.2+sample", "1.31.2+sample-1"),
    ("minor", "v1.31.2", "1.31.0-1"),
    ("upstream", "1.1.1\n", "1.1.1-1"),
    ("upstream", "0.0.0+0123456789ab", "0.0.0+0123456789ab-1"),
])
def test_package_version(scheme, raw, expected):
    assert debs.package_version(scheme, raw) == expected


@pytest.mark.parametrize("scheme, raw", [("kubernetes", "1.31.2"), ("kubernetes", "v1.31\nDepends: x"),
                                         ("upstream", "1.1.1 evil"), ("upstream", "")])
def test_bad_versions_are_refused(scheme, raw):
    with pytest.raises(InputError):
        debs.package_version(scheme, raw)


# ---------------------------------------------------------------- the packages

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    layout, paths = _project(tmp_path_factory.mktemp("built"), crictl=True)
    specs = _build_all(layout, paths, crictl=True)
    return layout, paths, specs


def test_control_fields(built):
    layout, _, _ = built
    expected = {
        "kubelet": ("1.31.2-1", KUBELET_DEPENDS),
        "kubectl": ("1.31.2-1", None),
        "kubeadm": ("1.31.2-1", "kubelet, kubectl, kubernetes-cni, cri-tools"),
        "kubernetes-cni": ("1.1.1-1", "iptables"),
        "cri-tools": ("1.31.0-1", None),
    }
    for name, (version, depends) in expected.items():
        f = _fields(layout.deb(name))
        assert f["Package"] == name
        assert f["Version"] == version
        assert f.get("Depends") == depends, name
        assert f["Architecture"] == "amd64"
        assert f["Maintainer"] == "dindind <dindind@localhost>"
        assert f["Homepage"] == "https://kubernetes.io"
        assert "built by dindind" in f["Description"]
        assert int(f["Installed-Size"]) > 0


def test_kubeadm_without_crictl_does_not_depend_on_cri_tools(tmp_path):
    layout, paths = _project(tmp_path / "p")
    spec = debs.deb_specs(paths, layout)["kubeadm"]
    debs.build_deb(spec, layout.deb("kubeadm"), EPOCH)
    assert _fields(layout.deb("kubeadm"))["Depends"] == "kubelet, kubectl, kubernetes-cni"


def test_contents_paths_modes_owners_and_mtimes(built):
    layout, _, _ = built
    expected_files = {
        "kubelet": {"./usr/bin/kubelet": "-rwxr-xr-x", "./lib/systemd/system/kubelet.service": "-rw-r--r--",
                    "./etc/systemd/system/kubelet.service.d/10-kubeadm.conf": "-rw-r--r--"},
        "kubectl": {"./usr/bin/kubectl": "-rwxr-xr-x"},
        "kubeadm": {"./usr/bin/kubeadm": "-rwxr-xr-x"},
        "kubernetes-cni": {f"./opt/cni/bin/{p}": "-rwxr-xr-x" for p in cni.CNI_PLUGINS},
        "cri-tools": {"./usr/bin/crictl": "-rwxr-xr-x"},
    }
    for name, files in expected_files.items():
        listing = _listing(layout.deb(name))
        assert {p: m for p, (m, _) in listing.items() if not m.startswith("d")} == files, name
        assert all(m == "drwxr-xr-x" for m, _ in listing.values() if m.startswith("d")), name
        assert {owner for _, owner in listing.values()} == {"root/root"}, name
        for which in ("--fsys-tarfile", "--ctrl-tarfile"):
            for m, _ in _tar_members(layout.deb(name), which).values():
                assert m.mtime == EPOCH, (name, m.name)
                assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "root", "root"), (name, m.name)
    # the binaries are the inputs, byte for byte
    members = _tar_members(layout.deb("kubelet"))
    assert members["./usr/bin/kubelet"][1] == b"#!/bin/sh\necho fake kubelet\n"


def test_control_archive_has_md5sums_and_conffiles(built):
    layout, _, _ = built
    ctrl = _tar_members(layout.deb("kubelet"), "--ctrl-tarfile")
    assert sorted(ctrl) == [".", "./conffiles", "./control", "./md5sums"]
    assert ctrl["./conffiles"][1] == b"/etc/systemd/system/kubelet.service.d/10-kubeadm.conf\n"
    data = _tar_members(layout.deb("kubelet"))
    sums = dict(reversed(line.split("  ", 1)) for line in ctrl["./md5sums"][1].decode().splitlines())
    assert set(sums) == {"etc/systemd/system/kubelet.service.d/10-kubeadm.conf", "usr/bin/kubelet",
                         "lib/systemd/system/kubelet.service"}
    for path, digest in sums.items():
        assert hashlib.md5(data[f"./{path}"][1]).hexdigest() == digest
    assert "./conffiles" not in _tar_members(layout.deb("kubectl"), "--ctrl-tarfile")


@pytest.mark.parametrize("deb, member, golden", [
    ("kubelet", "./lib/systemd/system/kubelet.service", "kubelet.service"),
    ("kubelet", "./etc/systemd/system/kubelet.service.d/10-kubeadm.conf", "10-kubeadm.conf"),
    ("kubelet", "control", "kubelet.control"),
])
def test_rendered_files_match_golden(built, deb, member, golden):
    layout, _, _ = built
    if member == "control":
        content = _tar_members(layout.deb(deb), "--ctrl-tarfile")["./control"][1]
    else:
        content = _tar_members(layout.deb(deb))[member][1]
    path = GOLDEN / golden
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    assert content.decode() == path.read_text(), f"{golden} differs; UPDATE_GOLDEN=1 rewrites it"


def test_kubelet_units_say_what_upstream_says(built):
    """The directives that matter, checked independently of the golden files."""
    layout, _, _ = built
    unit = _tar_members(layout.deb("kubelet"))["./lib/systemd/system/kubelet.service"][1].decode()
    for line in ("ExecStart=/usr/bin/kubelet", "Restart=always", "StartLimitInterval=0", "RestartSec=1s",
                 "WantedBy=multi-user.target"):
        assert line in unit.splitlines()
    dropin = _tar_members(layout.deb("kubelet"))[
        "./etc/systemd/system/kubelet.service.d/10-kubeadm.conf"][1].decode().splitlines()
    assert ('Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf '
            '--kubeconfig=/etc/kubernetes/kubelet.conf"') in dropin
    assert 'Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"' in dropin
    assert "EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env" in dropin
    assert "EnvironmentFile=-/etc/default/kubelet" in dropin
    execs = [line for line in dropin if line.startswith("ExecStart=")]
    assert execs == ["ExecStart=", "ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS "
                                   "$KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS"]


# ---------------------------------------------------------------- reproducibility

def _age_everything(root, mtime):
    for p in [root, *root.rglob("*")]:
        os.utime(p, (mtime, mtime), follow_symlinks=False)


def test_same_inputs_give_byte_identical_debs(tmp_path):
    old_umask = os.umask(0o022)
    try:
        a, a_paths = _project(tmp_path / "a", crictl=True)
        _age_everything(tmp_path / "a", 1_000_000_000)
        os.umask(0o077)
        b, b_paths = _project(tmp_path / "checkout b", crictl=True)
        for p in cni.CNI_PLUGINS:                      # other permission bits on the inputs
            os.chmod(b.cni / "bin" / p, 0o700)
        os.chmod(b_paths.binaries["kubelet"], 0o500)
        _age_everything(tmp_path / "checkout b", 1_900_000_000)
        os.umask(0o022)
        _build_all(a, a_paths, crictl=True)
        os.umask(0o077)
        _build_all(b, b_paths, crictl=True)
    finally:
        os.umask(old_umask)
    for name in DEBS:
        assert _sha(a.deb(name)) == _sha(b.deb(name)), name
        assert b.deb(name).stat().st_mode & 0o777 == 0o644
    # and rebuilding in place gives the same bytes again
    before = _sha(a.deb("kubelet"))
    debs.build_deb(debs.deb_specs(a_paths, a)["kubelet"], a.deb("kubelet"), EPOCH)
    assert _sha(a.deb("kubelet")) == before
    # the epoch is an input
    debs.build_deb(debs.deb_specs(a_paths, a)["kubelet"], a.deb("kubelet"), EPOCH + 1)
    assert _sha(a.deb("kubelet")) != before


# ---------------------------------------------------------------- failures

def _leftovers(layout):
    return sorted(p.name for p in layout.debs.iterdir()) if layout.debs.exists() else []


def test_missing_input_binary_is_a_clear_input_error(tmp_path):
    layout, paths = _project(tmp_path / "p")
    paths.binaries["kubelet"].unlink()
    spec = debs.deb_specs(paths, layout)["kubelet"]
    with pytest.raises(InputError) as err:
        debs.build_deb(spec, layout.deb("kubelet"), EPOCH)
    assert str(paths.binaries["kubelet"]) in err.value.message
    assert "kubelet.deb" in err.value.message
    assert "doit build:kubernetes" in err.value.hint
    assert _leftovers(layout) == []


def test_missing_cni_plugins_and_version_name_every_file(tmp_path):
    layout, paths = _project(tmp_path / "p")
    (layout.cni / "bin" / "portmap").unlink()
    (layout.cni / "VERSION").unlink()
    spec = debs.deb_specs(paths, layout)["kubernetes-cni"]
    with pytest.raises(InputError) as err:
        debs.build_deb(spec, layout.deb("kubernetes-cni"), EPOCH)
    assert str(layout.cni / "bin" / "portmap") in err.value.message
    assert str(layout.cni / "VERSION") in err.value.message
    assert "doit build:cni" in err.value.hint


def test_cni_version_is_read_at_build_time(tmp_path):
    layout, paths = _project(tmp_path / "p")
    spec = debs.deb_specs(paths, layout)["kubernetes-cni"]
    (layout.cni / "VERSION").write_text("1.4.0\n")
    debs.build_deb(spec, layout.deb("kubernetes-cni"), EPOCH)
    assert _fields(layout.deb("kubernetes-cni"))["Version"] == "1.4.0-1"


def test_dpkg_deb_failure_leaves_nothing_behind(tmp_path):
    layout, paths = _project(tmp_path / "p")
    spec = debs.deb_specs(paths, layout)["kubectl"]
    good = debs.build_deb(spec, layout.deb("kubectl"), EPOCH)
    good_sha = _sha(good)
    control = layout.templates / "debs" / "kubectl" / "DEBIAN" / "control.j2"
    control.write_text(control.read_text().replace("Package: {{ package }}", "Package: Not_A_Valid_Name"))
    with pytest.raises(CommandError) as err:
        debs.build_deb(spec, layout.deb("kubectl"), EPOCH)
    assert "dpkg-deb" in err.value.message and "templates/debs/kubectl" in err.value.hint
    assert _leftovers(layout) == ["kubectl.deb"]              # the old one, untouched
    assert _sha(layout.deb("kubectl")) == good_sha


def test_a_value_with_a_newline_never_reaches_a_template(tmp_path):
    layout, paths = _project(tmp_path / "p")
    spec = debs.deb_specs(paths, layout)["kubectl"]
    spec.context["maintainer"] = "x\nDepends: evil"
    with pytest.raises(DindindError, match="newline"):
        debs.build_deb(spec, layout.deb("kubectl"), EPOCH)
    assert _leftovers(layout) == []
