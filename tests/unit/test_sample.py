"""dindind.sample: the generated stand-in Kubernetes tree."""

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from dindind.docker import archive as dockerarchive
from dindind.build.sources import sample

VERSION = "v1.31.2"
EPOCH = 1700000000


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    sample.generate(root, VERSION, EPOCH)
    return root


def _files(root):
    return {p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mode & 0o777)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _run(tree, rel, *args):
    path = tree / "kubernetes" / rel
    interpreter = sys.executable if path.read_bytes().startswith(b"#!/usr/bin/python3\n") else "sh"
    proc = subprocess.run([interpreter, str(path), *args], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc
    return proc


def test_writes_exactly_the_manifest(tree):
    assert tuple(sorted(_files(tree))) == sample.MANIFEST
    assert "kubernetes/server/bin/kube-apiserver.tar" in sample.MANIFEST
    assert "kubernetes/extra-images/pause.tar" in sample.MANIFEST


def test_deterministic(tree, tmp_path):
    sample.generate(tmp_path, VERSION, EPOCH)
    assert _files(tmp_path) == _files(tree)
    other = tmp_path / "other"
    sample.generate(other, VERSION, EPOCH + 60)
    assert _files(other)["kubernetes/server/bin/kube-proxy.tar"] != \
        _files(tree)["kubernetes/server/bin/kube-proxy.tar"]


def test_modes(tree):
    files = _files(tree)
    for name in ("kubelet", "kubeadm", "kubectl", "kube-apiserver"):
        assert files[f"kubernetes/server/bin/{name}"][1] == 0o755
    assert files["kubernetes/test/bin/e2e.test"][1] == 0o755
    assert files["kubernetes/server/bin/kube-proxy.tar"][1] == 0o644
    assert (tree / "kubernetes").stat().st_mode & 0o777 == 0o755


def test_version_and_tags(tree, tmp_path):
    assert (tree / "kubernetes/version").read_text() == f"{VERSION}\n"
    assert (tree / "kubernetes/server/bin/kube-apiserver.docker_tag").read_text() == f"{VERSION}\n"
    sample.generate(tmp_path, "v1.31.2+sample", EPOCH)
    bin_ = tmp_path / "kubernetes/server/bin"
    assert (bin_ / "kube-scheduler.docker_tag").read_text() == "v1.31.2_sample\n"
    assert dockerarchive.repo_tags(bin_ / "kube-scheduler.tar") == \
        ["registry.k8s.io/kube-scheduler-amd64:v1.31.2_sample"]


def test_stand_ins_say_what_they_are(tree):
    for rel in sample.MANIFEST:
        if "/bin/" in rel and not rel.endswith((".tar", ".docker_tag")):
            text = (tree / rel).read_text()
            python = rel.rsplit("/", 1)[1] in sample.PYTHON_STANDINS
            assert text.startswith("#!/usr/bin/python3\n" if python else "#!/bin/sh\n")
            assert "dindind sample stand-in" in text and "NOT Kubernetes" in text


def test_kubelet_and_kubeadm_are_the_python_program(tree):
    bin_ = tree / "kubernetes/server/bin"
    program = (bin_ / "kubelet").read_text()
    assert (bin_ / "kubeadm").read_text() == program
    source = (Path(sample.__file__).with_name("sample_kube.py")).read_text()
    differ = [(a, b) for a, b in zip(source.splitlines(), program.splitlines()) if a != b]
    assert len(program.splitlines()) == len(source.splitlines()) and len(differ) == 1
    build = json.loads(differ[0][1].split("=", 1)[1].split("  #")[0])
    assert build == {"apiserver_image": f"registry.k8s.io/kube-apiserver-amd64:{VERSION}", "arch": "amd64",
                     "date": "2023-11-14T22:13:20Z", "go": sample.GO_VERSION, "version": VERSION}
    compile(program, "kubelet", "exec")


def test_node_requirements(tree):
    needs = json.loads((tree / "kubernetes/dindind-sample.json").read_text())
    assert needs["node_packages"] == ["python3", "openssl"] and "NOT Kubernetes" in needs["note"]
    assert "kubernetes/dindind-sample.json" in sample.MANIFEST


@pytest.mark.parametrize("rel,args,expected", [
    ("server/bin/kubelet", ["--version"], f"Kubernetes {VERSION}\n"),
    ("server/bin/kubelet", ["--version=true"], f"Kubernetes {VERSION}\n"),
    ("server/bin/kube-apiserver", ["--version"], f"Kubernetes {VERSION}\n"),
    ("server/bin/kube-proxy", ["--version"], f"Kubernetes {VERSION}\n"),
    ("server/bin/kubeadm", ["version", "-o", "short"], f"{VERSION}\n"),
    ("server/bin/kubeadm", ["version", "--output=short"], f"{VERSION}\n"),
    ("server/bin/kubectl", ["version", "--client"],
     f"Client Version: {VERSION}\nKustomize Version: {sample.KUSTOMIZE_VERSION}\n"),
    ("test/bin/e2e.test", ["--version"], f"{VERSION}\n"),
    ("test/bin/ginkgo", ["version"], f"Ginkgo Version {sample.GINKGO_VERSION}\n"),
])
def test_version_answers(tree, rel, args, expected):
    assert _run(tree, rel, *args).stdout == expected


def test_kubeadm_long_version(tree):
    out = _run(tree, "server/bin/kubeadm", "version").stdout
    assert out.startswith('kubeadm version: &version.Info{Major:"1", Minor:"31", GitVersion:"v1.31.2"')


def test_kubectl_json_version(tree):
    out = json.loads(_run(tree, "server/bin/kubectl", "version", "--client", "-o", "json").stdout)
    assert out["clientVersion"]["gitVersion"] == VERSION
    assert out["clientVersion"]["minor"] == "31"
    assert out["kustomizeVersion"] == sample.KUSTOMIZE_VERSION


@pytest.mark.parametrize("rel,args", [
    ("server/bin/kubeadm", ["token", "list"]),
    ("server/bin/kubectl", ["get", "pods"]),
    ("server/bin/kube-proxy", ["--config=/x.yaml"]),
])
def test_other_calls_are_reported_and_succeed(tree, rel, args):
    proc = _run(tree, rel, *args)
    assert proc.stdout == ""
    assert proc.stderr == f"dindind sample stand-in: {rel.rsplit('/', 1)[1]} {' '.join(args)}\n"


def _image_file(tarball, inner):
    entry = dockerarchive.read_manifest(tarball, verify_layers=True)[0]
    with tarfile.open(tarball) as outer:
        layer = outer.extractfile(entry["Layers"][0]).read()
    with tarfile.open(fileobj=io.BytesIO(layer)) as tf:
        m = tf.getmember(inner.lstrip("/"))
        return tf.extractfile(m).read(), m.mode


@pytest.mark.parametrize("name", ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy"])
def test_component_images(tree, name):
    tarball = tree / f"kubernetes/server/bin/{name}.tar"
    assert tarball.stat().st_size < 64 * 1024
    assert dockerarchive.repo_tags(tarball) == [f"registry.k8s.io/{name}-amd64:{VERSION}"]
    data, mode = _image_file(tarball, f"/usr/local/bin/{name}")
    assert data == (tree / f"kubernetes/server/bin/{name}").read_bytes()
    assert mode == 0o755


@pytest.mark.parametrize("name,ref,inner", [
    ("etcd", "registry.k8s.io/etcd:3.5.15-0", "/usr/local/bin/etcd"),
    ("coredns", "registry.k8s.io/coredns/coredns:v1.11.3", "/coredns"),
    ("pause", "registry.k8s.io/pause:3.10", "/pause"),
])
def test_extra_images(tree, name, ref, inner):
    tarball = tree / f"kubernetes/extra-images/{name}.tar"
    assert dockerarchive.repo_tags(tarball) == [ref]
    data, _ = _image_file(tarball, inner)
    assert b"dindind sample stand-in" in data


def test_generate_replaces_the_old_tree(tmp_path):
    sample.generate(tmp_path, VERSION, EPOCH)
    stale = tmp_path / "kubernetes/server/bin/stale"
    stale.write_text("left over")
    sample.generate(tmp_path, "v1.32.0", EPOCH)
    assert not stale.exists()
    assert (tmp_path / "kubernetes/version").read_text() == "v1.32.0\n"
    assert not [p for p in tmp_path.iterdir() if p.name != "kubernetes"]   # no temp dirs left


@pytest.mark.parametrize("bad", ["1.31.2", "v1.31", "v1.31.2'; rm -rf /", "v1.31.2\n"])
def test_refuses_bad_version(tmp_path, bad):
    with pytest.raises(ValueError):
        sample.generate(tmp_path, bad, EPOCH)
    assert not (tmp_path / "kubernetes").exists()
