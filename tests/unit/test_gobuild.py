"""Kubernetes from Go (dindind.build.sources.gobuild, module, checkout): derivations and bad input."""

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from dindind.base import config, fsutil
from dindind.base.errors import ConfigError, DindindError, InputError
from dindind.base.layout import Layout
from dindind.build import sources
from dindind.build.sources import checkout, gobuild, module, tree
from dindind.docker import archive

UPSTREAM_GOMOD = """\
// This is a generated file. Do not edit directly.

module k8s.io/kubernetes

go 1.26.0

godebug default=go1.26

require (
\tgithub.com/onsi/ginkgo/v2 v2.32.0
\tgo.etcd.io/etcd/client/v3 v3.7.0
\tk8s.io/api v0.0.0
\tk8s.io/client-go v0.0.0
\tgolang.org/x/net v0.40.0 // indirect
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
\tk8s.io/sample-controller => ./staging/src/k8s.io/sample-controller
\tgithub.com/example/broken v1.0.0 => github.com/example/fixed v1.0.1
)
"""

CONSTANTS_GO = """\
const (
\t// CoreDNSImageName specifies the name of the image for CoreDNS add-on
\tCoreDNSImageName = "coredns"
\t// CoreDNSVersion is the version of CoreDNS to be deployed if it is used
\tCoreDNSVersion = "v1.14.6"
\t// DefaultEtcdVersion indicates the default etcd version that kubeadm uses
\tDefaultEtcdVersion = "3.7.0-0"
\t// PauseVersion indicates the default pause image version for kubeadm
\tPauseVersion = "3.10.2"
)
"""


def _cfg(tmp_path, **kube):
    lines = ["kubernetes:"] + [f"  {k}: {v}" for k, v in kube.items()]
    lines += ["node:", "  repository: k9test/node", "cluster:", "  repository: k9test/cluster"]
    path = tmp_path / "c.yaml"
    path.write_text("\n".join(lines) + "\n")
    return config.parse(path.read_text(), path)


# ---------------------------------------------------------------- pure derivations

def test_work_gomod_derives_staging_replaces_and_copies_godebug():
    text, skipped = gobuild.work_gomod("kubernetes", "k8s.io/kubernetes", "v1.37.2",
                                       gobuild.parse_gomod(UPSTREAM_GOMOD), "v0.37.2")
    parsed = gobuild.parse_gomod(text)
    assert parsed["module"] == "dindind.local/kubernetes"
    assert parsed["go"] == "1.26.0"
    assert parsed["godebug"] == ["default=go1.26"]
    reqs = {m: v for m, v, _ in parsed["require"]}
    assert reqs["k8s.io/kubernetes"] == "v1.37.2"
    assert reqs["k8s.io/api"] == reqs["k8s.io/client-go"] == "v0.37.2"
    assert reqs["github.com/onsi/ginkgo/v2"] == "v2.32.0"
    assert ("golang.org/x/net", "v0.40.0", True) in parsed["require"]
    assert ("k8s.io/api", None, "k8s.io/api", "v0.37.2") in parsed["replace"]
    assert ("github.com/example/broken", "v1.0.0", "github.com/example/fixed", "v1.0.1") in parsed["replace"]
    # replaced upstream but not required (and not published): no replace, no require
    assert skipped == ["k8s.io/sample-controller"]
    assert "sample-controller" not in text


def test_work_gomod_is_deterministic():
    up = gobuild.parse_gomod(UPSTREAM_GOMOD)
    assert gobuild.work_gomod("k", "k8s.io/kubernetes", "v1.37.2", up, "v0.37.2") == \
        gobuild.work_gomod("k", "k8s.io/kubernetes", "v1.37.2", up, "v0.37.2")


def test_ldflags_set_the_version_and_keep_gos_build_id():
    flags = gobuild.k8s_ldflags("v1.37.2", "abc", "clean", "2026-10-27T12:01:04Z")
    assert "-buildid" not in flags
    assert flags.startswith("-s -w ")
    for pkg in ("k8s.io/client-go/pkg/version", "k8s.io/component-base/version"):
        for kv in ("gitVersion=v1.37.2", "gitCommit=abc", "gitTreeState=clean",
                   "buildDate=2026-10-27T12:01:04Z", "gitMajor=1", "gitMinor=37"):
            assert f"-X {pkg}.{kv}" in flags
    assert gobuild.go_flags(flags)[:5] == ["-p", "2", "-trimpath", "-tags", "selinux,notest,grpcnotrace"]


def test_image_tags_come_from_kubeadms_constants():
    images = gobuild.kubeadm_images(CONSTANTS_GO)
    assert images == {
        "etcd": {"ref": "registry.k8s.io/etcd:3.7.0-0", "version": "v3.7.0"},
        "coredns": {"ref": "registry.k8s.io/coredns/coredns:v1.14.6", "version": "v1.14.6"},
        "pause": {"ref": "registry.k8s.io/pause:3.10.2", "version": "3.10.2"},
    }
    other = CONSTANTS_GO.replace("3.7.0-0", "3.6.5-0").replace("v1.14.6", "v1.12.1")
    assert gobuild.kubeadm_images(other)["etcd"]["ref"] == "registry.k8s.io/etcd:3.6.5-0"
    assert gobuild.kubeadm_images(other)["coredns"]["version"] == "v1.12.1"
    assert gobuild.component_refs("kube-apiserver", "v1.37.2") == [
        "registry.k8s.io/kube-apiserver-amd64:v1.37.2", "registry.k8s.io/kube-apiserver:v1.37.2"]


def test_constants_without_a_version_are_refused():
    with pytest.raises(InputError, match="PauseVersion"):
        gobuild.kubeadm_images(CONSTANTS_GO.replace("PauseVersion", "Other"))


def test_go_version_m_is_parsed():
    text = ("/x/kubectl: go1.26.8\n\tpath\tk8s.io/kubernetes/cmd/kubectl\n"
            "\tmod\tdindind.local/kubernetes\t(devel)\t\n"
            "\tdep\tk8s.io/api\tv0.37.2\th1:aaa=\n"
            "\tdep\tgithub.com/example/broken\tv1.0.0\n\t=>\tgithub.com/example/fixed\tv1.0.1\th1:bbb=\n"
            "\tbuild\t-trimpath=true\n\tbuild\tCGO_ENABLED=0\n")
    info = gobuild.parse_version_m(text)
    assert info["go"] == "go1.26.8"
    assert info["path"] == "k8s.io/kubernetes/cmd/kubectl"
    assert info["deps"][0] == {"path": "k8s.io/api", "version": "v0.37.2", "sum": "h1:aaa="}
    assert info["deps"][1]["replace"] == {"path": "github.com/example/fixed", "version": "v1.0.1", "sum": "h1:bbb="}
    assert info["build"] == {"-trimpath": "true", "CGO_ENABLED": "0"}


def test_go_version_order():
    key = gobuild.go_version_key
    assert key("go1.26.8") > key("1.26.0") == key("1.26") > key("go1.25.9")
    assert key("go1.27rc1") < key("go1.27.0")


def test_streamed_archive_is_byte_identical_to_the_in_memory_writer(tmp_path):
    src = tmp_path / "bin"
    src.write_bytes(b"\x7fELF pretend" * 1000)
    ours = archive.write_image_from_files(tmp_path / "a.tar", ["r/x-amd64:v1", "r/x:v1"],
                                          {"/usr/local/bin/x": (src, 0o755)}, epoch=1700000000, entrypoint=["/x"])
    theirs = archive.image_bytes(["r/x-amd64:v1", "r/x:v1"], {"/usr/local/bin/x": (src.read_bytes(), 0o755)},
                                 epoch=1700000000, entrypoint=["/x"])
    assert ours.read_bytes() == theirs
    assert archive.repo_tags(ours) == ["r/x-amd64:v1", "r/x:v1"]
    assert [p.name for p in tmp_path.iterdir()] != [] and not list(tmp_path.glob(".*.tmp"))


def test_publish_replaces_only_changed_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    files = {"kubernetes/version": (b"v1.37.2\n", 0o644), "kubernetes/server/bin/a": (a, 0o755),
             "kubernetes/server/bin/b": (b, 0o755)}
    root = tmp_path / "root"
    assert gobuild.publish(root, files) == sorted(files)
    mtimes = {p: p.stat().st_mtime_ns for p in (root / "kubernetes").rglob("*") if p.is_file()}
    assert gobuild.publish(root, files) == []
    b.write_bytes(b"TWO")
    assert gobuild.publish(root, files) == ["kubernetes/server/bin/b"]
    assert (root / "kubernetes/server/bin/b").read_bytes() == b"TWO"
    assert (root / "kubernetes/server/bin/a").stat().st_mtime_ns == mtimes[root / "kubernetes/server/bin/a"]
    assert (root / "kubernetes/server/bin/a").stat().st_mode & 0o777 == 0o755


def test_the_table_lists_every_configurable_source():
    assert set(sources.SOURCES) == set(config.SPEC["kubernetes"]["source"].enum)
    for mod in sources.SOURCES.values():
        for fn in ("tree_root", "extra_images", "task_io", "prepare"):
            assert callable(getattr(mod, fn)), (mod, fn)


def test_task_io_of_the_go_sources(tmp_path):
    lay = Layout(tmp_path)
    cfg = _cfg(tmp_path, source="module", version="v1.37.2")
    io_ = tree.task_io(cfg, lay)
    root = tmp_path / "artifacts/kubernetes/module-v1.37.2"
    assert tree.tree_root(cfg, lay) == root
    assert io_["config"]["version"] == "v1.37.2" and not io_["always"]
    assert lay.stamp("base") in io_["file_dep"]
    assert root / "kubernetes/server/bin/crictl" in io_["targets"]
    assert root / "kubernetes/extra-images/etcd.tar" in io_["targets"]
    assert tree.extra_images(cfg, lay) == tuple(root / f"kubernetes/extra-images/{n}.tar"
                                                for n in ("etcd", "coredns", "pause"))
    src = _fake_checkout(tmp_path / "k8s")
    cfg = _cfg(tmp_path, source="checkout", version="v1.37.0", path="k8s")
    assert tree.task_io(cfg, lay)["always"] is True
    assert tree.tree_root(cfg, lay) == tmp_path / "artifacts/kubernetes/checkout-v1.37.0"
    assert str(src) in tree.task_io(cfg, lay)["config"]["path"]


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("version", ["v1.33.9", "v1.31.2"])
def test_versions_below_1_34_are_refused(tmp_path, version):
    with pytest.raises(ConfigError, match="older than v1.34"):
        _cfg(tmp_path, source="module", version=version)
    with pytest.raises(InputError, match="older than v1.34") as info:
        gobuild.check_version(version)
    assert info.value.hint


def test_a_build_version_is_refused_for_module(tmp_path):
    with pytest.raises(ConfigError, match="not a release version"):
        _cfg(tmp_path, source="module", version="v1.37.2+abc")


def test_a_version_the_proxy_does_not_serve(tmp_path):
    """Calls the real Go module proxy (it answers a missing version in about a second)."""
    lay = Layout(tmp_path)
    cfg = _cfg(tmp_path, source="module", version="v1.99.0")
    with pytest.raises(InputError) as info:
        module.plan(cfg, lay)
    assert "k8s.io/kubernetes v1.99.0 is not available from the Go module proxy" in info.value.message
    assert "go list -m -versions" in info.value.hint
    assert not (tmp_path / "artifacts/kubernetes/module-v1.99.0/kubernetes").exists()
    assert not (tmp_path / "artifacts/cache/go/kubernetes-v1.99.0").exists()


def _fake_go(tmp_path, monkeypatch, version):
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    go = bindir / "go"
    go.write_text(f"#!/bin/sh\necho {version}\n")
    go.chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))


def test_no_go_on_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DindindError) as info:
        module.plan(_cfg(tmp_path, source="module", version="v1.37.2"), Layout(tmp_path))
    assert info.value.message.startswith("no Go: `go` is not on PATH")
    assert "https://go.dev/dl/" in info.value.hint


def test_a_go_too_old_for_the_checkout(tmp_path, monkeypatch):
    _fake_checkout(tmp_path / "k8s", go="1.26.0")
    _fake_go(tmp_path, monkeypatch, "go1.24.2")
    with pytest.raises(DindindError) as info:
        checkout.plan(_cfg(tmp_path, source="checkout", version="v1.37.0", path="k8s"), Layout(tmp_path))
    assert info.value.message.startswith("go1.24.2 is too old to build the checkout")
    assert "go 1.26.0" in info.value.message
    assert "export GOTOOLCHAIN=go1.27.3" in info.value.hint


def test_check_go_accepts_a_new_enough_go(tmp_path, monkeypatch):
    _fake_go(tmp_path, monkeypatch, "go1.26.8")
    assert gobuild.check_go("1.26.0", "x", gobuild.go_env()) == "go1.26.8"


def test_a_checkout_without_cmd_kubelet(tmp_path):
    (tmp_path / "k8s").mkdir()
    (tmp_path / "k8s/go.mod").write_text("module k8s.io/kubernetes\n\ngo 1.24.0\n")
    with pytest.raises(ConfigError, match="no cmd/kubelet"):
        _cfg(tmp_path, source="checkout", version="v1.37.0", path="k8s")
    cfg = _cfg(tmp_path, source="sample")
    cfg = cfg.__class__(**{**cfg.__dict__, "kubernetes": {**cfg.kubernetes, "source": "checkout",
                                                          "path": "k8s", "version": "v1.37.0"}})
    with pytest.raises(InputError, match="has no cmd/kubelet") as info:
        checkout.source_dir(cfg)
    assert "kubernetes.path" in info.value.hint


# ---------------------------------------------------------------- a tiny checkout, built for real

def _fake_checkout(src, go="1.24.0", kubelet_body='fmt.Println("kubelet")'):
    """The least a Kubernetes checkout needs here: go.mod, go.work, two commands."""
    src.mkdir(parents=True, exist_ok=True)
    (src / "go.mod").write_text(f"module k8s.io/kubernetes\n\ngo {go}\n")
    (src / "go.work").write_text(f"go {go}\n\nuse .\n")
    for name, body in (("kubelet", kubelet_body), ("kubeadm", 'fmt.Println("kubeadm")')):
        (src / "cmd" / name).mkdir(parents=True, exist_ok=True)
        (src / "cmd" / name / "main.go").write_text(f'package main\n\nimport "fmt"\n\nfunc main() {{ {body} }}\n')
    return src


def _snapshot(root):
    return {p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mode, p.stat().st_mtime_ns)
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_a_checkout_is_built_in_place_and_left_byte_identical(tmp_path, monkeypatch):
    monkeypatch.setenv("GOFLAGS", "-mod=mod")        # a user's GOFLAGS must not reach the checkout
    src = _fake_checkout(tmp_path / "k8s")
    before = _snapshot(src)
    cfg = _cfg(tmp_path, source="checkout", version="v1.37.0", path="k8s")
    plan, minor = checkout.plan(cfg, Layout(tmp_path))
    assert minor == 37
    built = gobuild.build_binaries(plan, ["kubelet", "kubeadm"])
    assert built["kubelet"].is_relative_to(tmp_path / "artifacts/kubernetes/checkout-v1.37.0")
    assert _snapshot(src) == before
    first = fsutil.sha256_file(built["kubelet"])
    gobuild.build_binaries(plan, ["kubelet", "kubeadm"])       # nothing changed: the same bytes (go only touches it)
    assert fsutil.sha256_file(built["kubelet"]) == first
    _fake_checkout(src, kubelet_body='fmt.Println("kubelet, edited")')
    gobuild.build_binaries(plan, ["kubelet", "kubeadm"])
    assert fsutil.sha256_file(built["kubelet"]) != first
    assert not any(p.name in ("go.sum", "go.work.sum") for p in src.rglob("*"))


def _git(cwd, *args):
    env = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t.invalid"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, text=True,
                          stdout=subprocess.PIPE).stdout.strip()


def test_the_commit_stamped_is_head_in_a_clone_and_in_a_worktree(tmp_path):
    """Loose ref, packed ref, a worktree's own branch (.git is a file there), detached HEAD, no git."""
    src = _fake_checkout(tmp_path / "k8s")
    assert checkout._head_commit(src) == ""
    _git(src, "init", "-q", "-b", "master")
    _git(src, "add", "-A")
    _git(src, "commit", "-qm", "one")
    first = _git(src, "rev-parse", "HEAD")
    assert checkout._head_commit(src) == first                      # refs/heads/master, loose
    _git(src, "pack-refs", "--all")
    assert not (src / ".git/refs/heads/master").exists()
    assert checkout._head_commit(src) == first                      # packed-refs
    wt = tmp_path / "wt"
    _git(src, "worktree", "add", "-q", "-b", "topic", str(wt))
    (wt / "cmd/kubelet/main.go").write_text('package main\n\nfunc main() {}\n')
    _git(wt, "commit", "-qam", "two")
    second = _git(wt, "rev-parse", "HEAD")
    assert (wt / ".git").is_file() and second != first
    assert checkout._head_commit(wt) == second
    assert checkout._head_commit(src) == first
    cfg = _cfg(tmp_path, source="checkout", version="v1.37.0", path="wt")
    plan, _ = checkout.plan(cfg, Layout(tmp_path))
    assert f"k8s.io/component-base/version.gitCommit={second}" in plan.ldflags
    _git(wt, "checkout", "-q", "--detach")
    assert checkout._head_commit(wt) == second                      # detached: the hash in HEAD
    # a hostile ref never reaches the linker's flags; a binary HEAD is no traceback
    (src / ".git" / "refs" / "heads").mkdir(parents=True, exist_ok=True)
    (src / ".git" / "refs" / "heads" / "evil").write_text("abc -X main.x=y\n")
    (src / ".git" / "HEAD").write_text("ref: refs/heads/evil\n")
    assert checkout._head_commit(src) == ""
    (src / ".git" / "HEAD").write_bytes(b"\xff\xfe\x00")
    assert checkout._head_commit(src) == ""


def test_a_compile_failure_names_the_error_and_the_log(tmp_path):
    _fake_checkout(tmp_path / "k8s", kubelet_body="this is not go")
    cfg = _cfg(tmp_path, source="checkout", version="v1.37.0", path="k8s")
    plan, _ = checkout.plan(cfg, Layout(tmp_path))
    with pytest.raises(gobuild.GoBuildError) as info:
        gobuild.build_binaries(plan, ["kubelet"])
    err = info.value
    assert err.message == "building kubelet failed (exit 1)"
    assert "main.go" in err.detail and len(err.detail.splitlines()) <= 20
    log = tmp_path / "artifacts/kubernetes/checkout-v1.37.0/logs/go-build.log"
    assert f"full log: {log}" == err.hint
    assert "main.go" in log.read_text()
    assert not (tmp_path / "artifacts/kubernetes/checkout-v1.37.0/kubernetes").exists()
