"""dindind.sources: locating, validating and fetching the Kubernetes tree."""

import functools
import http.server
import io
import os
import shutil
import tarfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import pytest

from dindind.base import config, fsutil
from dindind.build.sources import release as release_source, sample, tree as sources
from dindind.base.errors import InputError
from dindind.base.layout import COMPONENT_IMAGES, SERVER_BINARIES, Layout

VERSION = "v1.31.2+sample"
EPOCH = 1700000000


@dataclass
class FakeConfig:
    """The slice of dindind.config.Config that sources uses."""

    base_dir: Path
    kubernetes: dict = field(default_factory=dict)
    source_date_epoch: int = EPOCH
    build: dict = field(default_factory=lambda: {"download_timeout": 1800, "download_stall_timeout": 60})

    def resolve(self, rel):
        return (self.base_dir / rel).resolve()


def _kube(**kw):
    k = {"source": "sample", "version": VERSION, "path": None, "server_url": None, "server_sha256": None,
         "test_url": None, "test_sha256": None, "extra_images": ()}
    k.update(kw)
    return MappingProxyType(k)


@pytest.fixture
def tree(tmp_path):
    """A fresh sample tree at tmp_path/src (writable: tests break it)."""
    root = tmp_path / "src"
    sample.generate(root, VERSION, EPOCH)
    return root


def _extras(root):
    return [root / "kubernetes/extra-images" / f"{n}.tar" for n in sample.EXTRA_IMAGES]


def _error(root, *words, extras=()):
    with pytest.raises(InputError) as info:
        sources.read_tree(root, extras)
    text = str(info.value)
    for word in words:
        assert word in text, text
    assert info.value.hint
    return text


# ---------------------------------------------------------------- pure parts

def test_tree_root_for_each_source(tmp_path):
    layout = Layout(tmp_path)
    assert sources.tree_root(FakeConfig(tmp_path, _kube()), layout) == layout.sample_root
    cfg = FakeConfig(tmp_path / "conf", _kube(source="dir", path="../k8s"))
    assert sources.tree_root(cfg, layout) == tmp_path / "k8s"
    sha = "ab" * 32
    cfg = FakeConfig(tmp_path, _kube(source="release", server_sha256=sha))
    assert sources.tree_root(cfg, layout) == layout.release_root(sha)


def test_tree_paths(tmp_path):
    p = sources.tree_paths(tmp_path)
    kube = tmp_path / "kubernetes"
    assert p.version == kube / "version"
    assert set(p.binaries) == set(SERVER_BINARIES)
    assert p.binaries["kubelet"] == kube / "server/bin/kubelet"
    assert p.image_tars["kube-proxy"] == kube / "server/bin/kube-proxy.tar"
    assert p.docker_tags["kube-proxy"] == kube / "server/bin/kube-proxy.docker_tag"
    assert (p.e2e_test, p.ginkgo) == (kube / "test/bin/e2e.test", kube / "test/bin/ginkgo")
    assert p.crictl == kube / "server/bin/crictl"
    assert p.crictl not in p.required()
    assert len(p.required()) == 3 + len(SERVER_BINARIES) + 2 * len(COMPONENT_IMAGES)


def test_extra_images(tmp_path):
    layout = Layout(tmp_path)
    assert sources.extra_images(FakeConfig(tmp_path, _kube()), layout) == \
        tuple(_extras(layout.sample_root))
    cfg = FakeConfig(tmp_path / "conf", _kube(source="dir", path=".", extra_images=("img/etcd.tar",)))
    assert sources.extra_images(cfg, layout) == (tmp_path / "conf/img/etcd.tar",)


def test_works_with_the_real_config(tmp_path, tree):
    text = "kubernetes:\n  source: dir\n  path: src\n  extra_images: [src/kubernetes/extra-images/etcd.tar]\n"
    cfg = config.parse(text, tmp_path / "c.yaml", base_dir=tmp_path)
    layout = Layout(tmp_path)
    root = sources.tree_root(cfg, layout)
    assert root == tree
    assert sources.read_tree(root, sources.extra_images(cfg, layout)).extra_images[0].name == "etcd"


# ---------------------------------------------------------------- read_tree

def test_read_tree_on_the_sample(tree):
    t = sources.read_tree(tree, _extras(tree))
    assert t.version == VERSION and t.tag == "v1.31.2_sample"
    assert [i.name for i in t.component_images] == list(COMPONENT_IMAGES)
    assert t.component_images[0].ref == "registry.k8s.io/kube-apiserver-amd64:v1.31.2_sample"
    assert t.component_images[0].tarball == tree / "kubernetes/server/bin/kube-apiserver.tar"
    assert {i.name: i.ref for i in t.extra_images} == {
        "etcd": "registry.k8s.io/etcd:3.5.15-0",
        "coredns": "registry.k8s.io/coredns/coredns:v1.11.3",
        "pause": "registry.k8s.io/pause:3.10",
    }
    assert t.crictl is None
    (tree / "kubernetes/server/bin/crictl").write_text("#!/bin/sh\n")
    assert sources.read_tree(tree).crictl == tree / "kubernetes/server/bin/crictl"


def test_no_kubernetes_folder(tmp_path):
    _error(tmp_path, str(tmp_path / "kubernetes"), "not a folder")


# every file the pipeline reads from the tree: the version, binaries, image tarballs and their tags,
# the test binaries, the optional crictl and the stand-in tree's declaration
TREE_FILES = (["version", "server/bin/kubelet", "server/bin/kubeadm", "server/bin/kubectl",
               "server/bin/kube-apiserver.tar", "server/bin/kube-proxy.docker_tag",
               "test/bin/e2e.test", "test/bin/ginkgo", "server/bin/crictl", "dindind-sample.json"])


def _host_file(tmp_path):
    secret = tmp_path / "host" / "secret"
    secret.parent.mkdir()
    secret.write_text("v1.31.2\n")                      # would even pass as a version file
    return secret


@pytest.mark.parametrize("rel", TREE_FILES)
@pytest.mark.parametrize("how", ["absolute", "relative"])
def test_a_symlink_out_of_the_tree_is_refused(tmp_path, tree, rel, how):
    secret = _host_file(tmp_path)
    link = tree / "kubernetes" / rel
    link.unlink(missing_ok=True)
    link.symlink_to(secret if how == "absolute" else os.path.relpath(secret, link.parent))
    text = _error(tree, str(link), "leads outside the tree", str(secret))
    assert text.count("outside the tree,") == 1


def test_a_symlinked_folder_out_of_the_tree_is_refused(tmp_path, tree):
    outside = tmp_path / "host" / "bin"
    shutil.copytree(tree / "kubernetes/test/bin", outside)
    shutil.rmtree(tree / "kubernetes/test/bin")
    (tree / "kubernetes/test/bin").symlink_to(outside)
    text = _error(tree, "e2e.test", "ginkgo", "leads outside the tree")
    assert "2 file(s)" in text


def test_a_symlink_chain_that_ends_outside_is_refused(tmp_path, tree):
    secret = _host_file(tmp_path)
    kube = tree / "kubernetes"
    (kube / "hop").symlink_to(secret)                   # inside, pointing out
    (kube / "version").unlink()
    (kube / "version").symlink_to("hop")                # lexically inside, resolves outside
    _error(tree, str(kube / "version"), str(secret))


def test_a_dangling_symlink_out_of_the_tree_is_refused(tmp_path, tree):
    kubelet = tree / "kubernetes/server/bin/kubelet"
    kubelet.unlink()
    kubelet.symlink_to("/nonexistent/dindind/kubelet")
    _error(tree, str(kubelet), "leads outside the tree")


def test_a_symlink_loop_is_refused(tree):
    kubelet = tree / "kubernetes/server/bin/kubelet"
    kubelet.unlink()
    kubelet.symlink_to("kubelet")
    _error(tree, str(kubelet), "cannot be resolved")


def test_nothing_is_read_from_a_tree_with_an_escaping_link(tmp_path, tree, monkeypatch):
    secret = tmp_path / "host" / "secret"
    secret.parent.mkdir()
    secret.write_text("the host's secret line\n")
    (tree / "kubernetes/version").unlink()
    (tree / "kubernetes/version").symlink_to(secret)
    read = []
    monkeypatch.setattr(sources.dockerarchive, "repo_tags", lambda p: read.append(p) or [])
    text = _error(tree, "leads outside the tree")
    assert "the host's secret line" not in text and read == []


def test_a_fifo_in_the_tree_is_refused_not_read(tree):
    tar = tree / "kubernetes/server/bin/kube-proxy.tar"
    tar.unlink()
    os.mkfifo(tar)                                      # reading it blocks until someone writes

    def writer():                                       # the other end: opened once a reader comes
        with open(tar, "wb") as f:
            f.write(b"not a tarball")

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        _error(tree, str(tar), "not a regular file")
    finally:
        fd = os.open(tar, os.O_RDONLY | os.O_NONBLOCK)  # let the writer finish if nobody read it
        thread.join(10)
        os.close(fd)


def test_symlinks_inside_the_tree_are_fine(tree):
    kube = tree / "kubernetes"
    (kube / "real").mkdir()
    for rel in ("server/bin/kubelet", "test/bin/e2e.test"):
        shutil.move(kube / rel, kube / "real" / rel.replace("/", "_"))
        (kube / rel).symlink_to(os.path.relpath(kube / "real" / rel.replace("/", "_"), (kube / rel).parent))
    (kube / "server/bin/crictl").symlink_to(kube / "server/bin/kubectl")        # absolute, but inside
    t = sources.read_tree(tree, _extras(tree))
    assert t.version == VERSION and t.crictl == kube / "server/bin/crictl"
    assert (kube / "server/bin/kubelet").is_symlink()                          # left as it is


def test_the_kubernetes_folder_itself_may_be_a_link(tmp_path, tree):
    elsewhere = tmp_path / "build"
    shutil.move(tree / "kubernetes", elsewhere)
    (tree / "kubernetes").symlink_to(elsewhere)
    assert sources.read_tree(tree, _extras(tree)).version == VERSION


def test_no_version_file(tree):
    (tree / "kubernetes/version").unlink()
    _error(tree, str(tree / "kubernetes/version"), "missing")


@pytest.mark.parametrize("text,words", [
    ("1.31.2\n", "not a Kubernetes version"),
    ("v1.31.2\nv1.31.3\n", "exactly one line"),
    ("", "exactly one line"),
])
def test_bad_version_file(tree, text, words):
    (tree / "kubernetes/version").write_text(text)
    _error(tree, str(tree / "kubernetes/version"), words)


@pytest.mark.parametrize("text,words", [
    ("v1.30.0\n", "does not match the version"),
    ("v1.31.2+sample\n", "not a valid docker tag"),
    ("v1.31.2_sample\nagain\n", "exactly one line"),
])
def test_bad_docker_tag(tree, text, words):
    path = tree / "kubernetes/server/bin/kube-scheduler.docker_tag"
    path.write_text(text)
    _error(tree, str(path), words)


def test_missing_docker_tag(tree):
    path = tree / "kubernetes/server/bin/kube-proxy.docker_tag"
    path.unlink()
    _error(tree, str(path), "missing")


def test_truncated_image_tarball(tree):
    path = tree / "kubernetes/server/bin/kube-apiserver.tar"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    _error(tree, str(path), "truncated")


def test_image_tagged_for_another_version(tree, tmp_path):
    other = tmp_path / "other"
    sample.generate(other, "v1.30.0", EPOCH)
    path = tree / "kubernetes/server/bin/kube-proxy.tar"
    shutil.copy(other / "kubernetes/server/bin/kube-proxy.tar", path)
    _error(tree, str(path), "registry.k8s.io/kube-proxy-amd64:v1.30.0",
           "expected registry.k8s.io/kube-proxy-amd64:v1.31.2_sample")


def test_image_tarball_with_escaping_entry(tree):
    path = tree / "kubernetes/server/bin/kube-controller-manager.tar"
    with tarfile.open(path) as tf:
        parts = {m.name: tf.extractfile(m).read() for m in tf if m.isreg()}
    parts["../../evil"] = b"boom"
    with tarfile.open(path, "w") as tf:
        for name, data in parts.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    _error(tree, str(path), "escapes")


def test_bad_extra_image(tree, tmp_path):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not a tar at all" * 64)
    _error(tree, str(bad), "not a readable tar", extras=[bad])


@pytest.mark.parametrize("rel", ["server/bin/kubelet", "server/bin/kubeadm", "test/bin/e2e.test",
                                 "test/bin/ginkgo"])
def test_missing_binary(tree, rel):
    (tree / "kubernetes" / rel).unlink()
    _error(tree, str(tree / "kubernetes" / rel), "missing")


def test_problems_are_collected(tree):
    (tree / "kubernetes/server/bin/kubelet").unlink()
    (tree / "kubernetes/test/bin/ginkgo").unlink()
    (tree / "kubernetes/server/bin/kube-proxy.docker_tag").write_text("nope\n")
    text = _error(tree, "3 problems", "kubelet", "ginkgo", "kube-proxy.docker_tag")
    assert text.count("\n  - ") == 3


# ---------------------------------------------------------------- generate_sample

def _snapshot(root):
    return {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in root.rglob("*")}


def test_generate_sample_is_a_no_op_when_up_to_date(tmp_path):
    layout = Layout(tmp_path)
    cfg = FakeConfig(tmp_path, _kube())
    assert sample.generate_sample(cfg, layout) == {"changed": True}
    assert sources.read_tree(layout.sample_root, sources.extra_images(cfg, layout)).version == VERSION
    before = _snapshot(layout.sample_root)
    assert sample.generate_sample(cfg, layout) == {"changed": False}
    assert _snapshot(layout.sample_root) == before


@pytest.mark.parametrize("tamper", ["content", "mode", "extra", "missing"])
def test_generate_sample_repairs_a_changed_tree(tmp_path, tamper):
    layout = Layout(tmp_path)
    cfg = FakeConfig(tmp_path, _kube())
    sample.generate_sample(cfg, layout)
    kubelet = layout.sample_root / "kubernetes/server/bin/kubelet"
    expected = kubelet.read_bytes()
    if tamper == "content":
        kubelet.write_text("#!/bin/sh\n")
    elif tamper == "mode":
        kubelet.chmod(0o644)
    elif tamper == "extra":
        (layout.sample_root / "kubernetes/junk").write_text("x")
    else:
        kubelet.unlink()
    assert sample.generate_sample(cfg, layout) == {"changed": True}
    assert kubelet.read_bytes() == expected and kubelet.stat().st_mode & 0o777 == 0o755
    assert not (layout.sample_root / "kubernetes/junk").exists()


def test_generate_sample_follows_the_config(tmp_path):
    layout = Layout(tmp_path)
    sample.generate_sample(FakeConfig(tmp_path, _kube()), layout)
    cfg = FakeConfig(tmp_path, _kube(version="v1.32.0"))
    assert sample.generate_sample(cfg, layout) == {"changed": True}
    assert sources.read_tree(layout.sample_root).version == "v1.32.0"
    cfg = FakeConfig(tmp_path, _kube(version="v1.32.0"), source_date_epoch=EPOCH + 1)
    assert sample.generate_sample(cfg, layout) == {"changed": True}


# ---------------------------------------------------------------- release

class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www; ``.requests`` lists the paths asked for."""
    www = tmp_path / "www"
    www.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(www)))
    httpd.requests = []
    httpd.www = www
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _tarball(path, base, names):
    with tarfile.open(path, "w:gz") as tf:
        for name in names:
            tf.add(base / name, arcname=name)
    return path


@pytest.fixture
def release(tmp_path, server, tree):
    """Server and test tarballs made from the sample tree, served over HTTP, and a config for them."""
    _tarball(server.www / "kubernetes-server-linux-amd64.tar.gz", tree,
             ["kubernetes/version", "kubernetes/server"])
    _tarball(server.www / "kubernetes-test-linux-amd64.tar.gz", tree, ["kubernetes/test"])
    return _release_cfg(tmp_path, server)


def _release_cfg(tmp_path, server, **kw):
    k = dict(
        source="release",
        server_url=f"{server.url}/kubernetes-server-linux-amd64.tar.gz",
        server_sha256=fsutil.sha256_file(server.www / "kubernetes-server-linux-amd64.tar.gz"),
        test_url=f"{server.url}/kubernetes-test-linux-amd64.tar.gz",
        test_sha256=fsutil.sha256_file(server.www / "kubernetes-test-linux-amd64.tar.gz"),
        extra_images=tuple(f"src/kubernetes/extra-images/{n}.tar" for n in sample.EXTRA_IMAGES),
    )
    k.update(kw)
    return FakeConfig(tmp_path, _kube(**k))


def _cache_files(layout):
    return sorted(p for p in layout.cache.rglob("*") if not p.is_dir()) if layout.cache.exists() else []


def test_fetch_release(tmp_path, server, release):
    layout = Layout(tmp_path / "proj")
    t = release_source.fetch_release(release, layout)
    root = layout.release_root(release.kubernetes["server_sha256"])
    assert t.root == root == sources.tree_root(release, layout)
    assert t.version == VERSION and len(t.images) == 7
    assert (root / "kubernetes/server/bin/kubelet").stat().st_mode & 0o777 == 0o755
    assert (root / "kubernetes/test/bin/e2e.test").is_file()
    assert sorted(server.requests) == ["/kubernetes-server-linux-amd64.tar.gz",
                                       "/kubernetes-test-linux-amd64.tar.gz"]
    assert [p.name for p in _cache_files(layout)] == sorted(
        f"{release.kubernetes[k]}.tar.gz" for k in ("server_sha256", "test_sha256"))
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]   # no temp dirs left


def test_second_fetch_is_served_from_cache(tmp_path, server, release):
    layout = Layout(tmp_path / "proj")
    release_source.fetch_release(release, layout)
    kubelet = layout.release_root(release.kubernetes["server_sha256"]) / "kubernetes/server/bin/kubelet"
    mtime = kubelet.stat().st_mtime_ns
    assert release_source.fetch_release(release, layout).version == VERSION
    assert len(server.requests) == 2
    assert kubelet.stat().st_mtime_ns == mtime          # not extracted again
    # the extracted tree gone: extracted again from the cached downloads, no request
    shutil.rmtree(layout.release_root(release.kubernetes["server_sha256"]))
    assert release_source.fetch_release(release, layout).version == VERSION
    assert len(server.requests) == 2


def test_corrupt_cache_entry_is_downloaded_again(tmp_path, server, release):
    layout = Layout(tmp_path / "proj")
    cached = release_source.fetch(release.kubernetes["server_url"], release.kubernetes["server_sha256"], layout)
    cached.write_bytes(b"bit rot")
    assert release_source.fetch(release.kubernetes["server_url"], release.kubernetes["server_sha256"], layout) == cached
    assert fsutil.sha256_file(cached) == release.kubernetes["server_sha256"]
    assert len(server.requests) == 2


def test_bad_checksum_is_refused_and_nothing_cached(tmp_path, server, release):
    wrong = "0" * 64
    cfg = _release_cfg(tmp_path, server, server_sha256=wrong)
    layout = Layout(tmp_path / "proj")
    with pytest.raises(InputError) as info:
        release_source.fetch_release(cfg, layout)
    text = str(info.value)
    actual = fsutil.sha256_file(server.www / "kubernetes-server-linux-amd64.tar.gz")
    assert cfg.kubernetes["server_url"] in text and wrong in text and actual in text
    assert _cache_files(layout) == []
    assert not layout.release_root(wrong).exists()


def test_http_error_is_an_input_error(tmp_path, server, release):
    cfg = _release_cfg(tmp_path, server, test_url=f"{server.url}/nope.tar.gz")
    layout = Layout(tmp_path / "proj")
    with pytest.raises(InputError) as info:
        release_source.fetch_release(cfg, layout)
    assert "nope.tar.gz" in str(info.value) and "404" in str(info.value)
    assert not layout.release_root(cfg.kubernetes["server_sha256"]).exists()


def test_file_urls(tmp_path, server, release):
    cfg = _release_cfg(
        tmp_path, server,
        server_url=(server.www / "kubernetes-server-linux-amd64.tar.gz").as_uri(),
        test_url=(server.www / "kubernetes-test-linux-amd64.tar.gz").as_uri())
    assert release_source.fetch_release(cfg, Layout(tmp_path / "proj")).version == VERSION
    assert server.requests == []


def _evil_tarball(path, entries):
    with tarfile.open(path, "w:gz") as tf:
        for name, kind, target in entries:
            ti = tarfile.TarInfo(name)
            if kind == "file":
                ti.size = 4
                tf.addfile(ti, io.BytesIO(b"boom"))
            elif kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            else:
                ti.type, ti.linkname = tarfile.SYMTYPE, target
                tf.addfile(ti)
    return path


@pytest.mark.parametrize("entries", [
    [("kubernetes/../../evil", "file", None)],
    [("/tmp/dindind-evil", "file", None)],
    [("kubernetes/link", "symlink", "../../..")],
    # a link chain only the real-path check sees: p -> . ; l -> p/p/../.. (lexically inside)
    [("kubernetes", "dir", None), ("kubernetes/p", "symlink", "."),
     ("kubernetes/l", "symlink", "p/p/../.."), ("kubernetes/l/evil", "file", None)],
], ids=["dotdot", "absolute", "symlink", "symlink-chain"])
def test_escaping_release_entries_are_refused(tmp_path, server, release, entries):
    _evil_tarball(server.www / "kubernetes-test-linux-amd64.tar.gz", entries)
    cfg = _release_cfg(tmp_path, server)
    layout = Layout(tmp_path / "proj")
    with pytest.raises(InputError) as info:
        release_source.fetch_release(cfg, layout)
    assert "refusing release tarball" in str(info.value)
    assert not layout.release_root(cfg.kubernetes["server_sha256"]).exists()
    assert not (tmp_path / "evil").exists() and not (tmp_path / "proj/evil").exists()
    assert not os.path.exists("/tmp/dindind-evil")
    leftovers = list(layout.kubernetes.iterdir()) if layout.kubernetes.exists() else []
    assert leftovers == []                              # no temp dirs either


def test_broken_release_tree_is_reported(tmp_path, server, tree):
    (tree / "kubernetes/server/bin/kubeadm").unlink()
    _tarball(server.www / "kubernetes-server-linux-amd64.tar.gz", tree,
             ["kubernetes/version", "kubernetes/server"])
    _tarball(server.www / "kubernetes-test-linux-amd64.tar.gz", tree, ["kubernetes/test"])
    with pytest.raises(InputError) as info:
        release_source.fetch_release(_release_cfg(tmp_path, server), Layout(tmp_path / "proj"))
    assert "kubeadm" in str(info.value) and "missing" in str(info.value)
