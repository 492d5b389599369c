"""The release pipeline against the real engine and a real registry (Debian's docker-registry on 127.0.0.1).

One module-scoped release of the shared ``built`` images, made the hard way: the registry is
stopped just before the cluster image is pushed (the node push has gone through), then
started again and `doit release --push` run again, which must complete the push. The tests
then check what that produced: the directory, the recorded digests against the registry, the
provenance, `doit release:verify`, a tampered copy, and one plain `docker load`.
"""

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from dindind.base import config
from dindind.docker import engine
from dindind.docker import registry as docker_registry
from dindind.docker import images as docker_images
from dindind.release import make, push, verify
from dindind.release import manifest as release_manifest
from dindind.base.errors import EngineError
from dindind.base.layout import Layout

pytestmark = pytest.mark.engine

REGISTRY_CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
http:
  addr: 127.0.0.1:{port}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """Debian's docker-registry on 127.0.0.1, filesystem storage in a temp dir; start/stop at will."""

    def __init__(self, workdir):
        self.exe = shutil.which("docker-registry") or "/usr/bin/docker-registry"
        assert os.access(self.exe, os.X_OK), "docker-registry is not installed (./bootstrap installs it)"
        self.workdir = Path(workdir)
        self.port = free_port()
        self.config = self.workdir / "registry.yml"
        (self.workdir / "storage").mkdir(parents=True, exist_ok=True)
        self.config.write_text(REGISTRY_CONFIG.format(root=self.workdir / "storage", port=self.port))
        self.proc = None

    @property
    def host(self):
        return f"127.0.0.1:{self.port}"

    def start(self, timeout=30):
        log = open(self.workdir / "registry.log", "ab")
        self.proc = subprocess.Popen([self.exe, "serve", str(self.config)], stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            assert self.proc.poll() is None, (self.workdir / "registry.log").read_text()[-2000:]
            time.sleep(0.1)
        raise AssertionError(f"docker-registry did not answer on {self.host} within {timeout}s")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def untag(*refs):
    for ref in refs:
        subprocess.run(["docker", "rmi", ref], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def released(built, tmp_path_factory):
    """A release of the built images whose push was cut midway by a stopped registry, then completed."""
    work = tmp_path_factory.mktemp("release")
    reg = Registry(work).start()
    version = f"itest-{os.getpid()}"
    dest = work / "out" / version
    refs = [push.push_ref(reg.host, n, version) for n in release_manifest.IMAGES]
    cfg = config.load(built.config)
    layout = Layout(built.path)
    real_push = docker_registry.push
    pushed = []

    def push_stopping_the_registry_before_the_cluster(ref, echo=print):
        if "/dindind/cluster:" in ref:
            reg.stop()
        pushed.append(ref)
        return real_push(ref, echo=echo)

    try:
        t0 = time.monotonic()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(docker_registry, "push", push_stopping_the_registry_before_the_cluster)
            with pytest.raises(EngineError) as failure:
                make.make(cfg, layout, version=version, registry=reg.host, out_dir=dest, echo=lambda *a: None)
        first = time.monotonic() - t0
        after_failure = json.loads((dest / "manifest.json").read_text())
        reg.start()
        t0 = time.monotonic()
        rerun = built.doit("release", "--version", version, "--push", reg.host, "--dir", str(dest))
        second = time.monotonic() - t0
        yield SimpleNamespace(dest=dest, version=version, registry=reg, refs=dict(zip(release_manifest.IMAGES, refs)),
                              failure=failure.value, pushed=pushed, after_failure=after_failure, rerun=rerun,
                              manifest=json.loads((dest / "manifest.json").read_text()),
                              times=(first, second))
    finally:
        untag(*refs)
        reg.stop()


def test_a_push_cut_midway_records_no_success(released):
    assert released.pushed == [released.refs["node"], released.refs["cluster"]]      # the node went through
    assert released.refs["cluster"] in released.failure.message
    assert released.after_failure["registry"] == {}
    verify.verify(released.dest, echo=lambda *a: None)                              # still a sound local release


def test_the_rerun_completes_the_push_with_verified_digests(released):
    out = released.rerun.stdout
    assert "reusing the archive" in out and "docker save" not in out                # nothing exported again
    recs = released.manifest["registry"][released.registry.host]
    for name in release_manifest.IMAGES:
        rec = recs[name]
        assert rec["ref"] == released.refs[name]
        assert rec["id"] == released.manifest["images"][name]["id"]
        assert rec["verified_by"] == "registry manifest"
        assert docker_registry.registry_manifest_digest(rec["ref"]) == rec["digest"]
    assert "image archives ok" in out                                                # `doit release` verified it


def test_release_directory_and_provenance(released, built):
    dest, m = released.dest, released.manifest
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert files == sorted(["SHA256SUMS", "manifest.json", "images/node.tar.gz", "images/cluster.tar.gz"]
                           + [a for a in m["artifacts"] if a.startswith("debs/")])
    assert {d.split("/")[1].split("_")[0] for d in files if d.startswith("debs/")} >= \
        {"kubelet", "kubeadm", "kubectl", "kubernetes-cni"}
    assert not [p for p in dest.parent.iterdir() if p.name != dest.name]            # no temp dirs left behind
    subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=dest, check=True)
    assert m["version"] == released.version
    for name in release_manifest.IMAGES:
        img = m["images"][name]
        assert img["id"] == built.stamp(name)["id"]
        assert img["labels"]["org.opencontainers.image.created"] == "2023-11-14T22:13:20Z"
        assert img["labels"]["org.opencontainers.image.version"] == built.stamp(name)["kubernetes_version"]
        assert img["labels"]["org.opencontainers.image.revision"] == "unknown"      # a copy, not a git checkout
        assert img["scan"]["findings"] == 0 and img["scan"]["files"] > 1000        # the real images are clean
        assert docker_images.inspect_image(img["id"])["RootFS"]["Layers"] == img["layers"]
    p = m["provenance"]
    assert p["kubernetes"]["version"] == built.stamp("node")["kubernetes_version"]
    assert p["inputs"]["node"] == built.stamp("node")["inputs"]
    assert p["inputs"]["cluster"] == built.stamp("cluster")["inputs"]
    assert p["base"]["id"] == built.stamp("base")["id"] and p["base"]["suite"] == "trixie"
    assert p["base"]["debian"] == {"node": "trixie", "cluster": "trixie"}
    node_pkgs, cluster_pkgs = p["base"]["packages"]["node"], p["base"]["packages"]["cluster"]
    assert node_pkgs["containerd"] and node_pkgs["systemd"] and cluster_pkgs["docker.io"]
    # the pinned runtime is what the node holds, and the provenance says where it came from
    assert node_pkgs["containerd"] == p["node_runtime"]["containerd"]["version"] == "2.1.9+ds1-5"
    assert node_pkgs["runc"] == p["node_runtime"]["runc"]["version"] and p["node_runtime"]["suite"] == "forky"
    assert p["go_build"] is None                     # the sample is not built from Go
    assert p["git"] == {"commit": "unknown", "describe": None}
    assert p["source_date_epoch"] == 1700000000
    assert p["config"]["file"] == "test.yaml" and len(p["config"]["sha256"]) == 64


def test_doit_release_verify_passes_and_a_flipped_byte_is_named(released, built, tmp_path):
    ok = built.doit("release:verify", "--dir", str(released.dest))
    assert "image archives ok" in ok.stdout
    # a copy sharing every file but the one tampered with
    copy = tmp_path / "tampered"
    for p in released.dest.rglob("*"):
        if p.is_file():
            (copy / p.relative_to(released.dest)).parent.mkdir(parents=True, exist_ok=True)
            os.link(p, copy / p.relative_to(released.dest))
    victim = copy / "images" / "cluster.tar.gz"
    data = victim.read_bytes()
    victim.unlink()
    pos = len(data) // 2
    victim.write_bytes(data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1:])
    bad = built.doit("release:verify", "--dir", str(copy), check=False)
    assert bad.returncode != 0
    assert "ERROR: release" in bad.stderr and "images/cluster.tar.gz" in bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr
    verify.verify(released.dest, echo=lambda *a: None)                             # the original is untouched


def test_plain_docker_load_accepts_the_image_archive(released, built):
    proc = subprocess.run(["docker", "load", "-i", str(released.dest / "images" / "node.tar.gz")],
                          text=True, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    tag = released.manifest["images"]["node"]["repo_tags"][0]
    assert f"Loaded image: {tag}" in proc.stdout
    assert engine.image_id(tag) == released.manifest["images"]["node"]["id"]
