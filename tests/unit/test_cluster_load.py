"""cluster:load without an engine: the platform choice, what an archive brings, argument checks, and the
order of the verb (validate, then copy once per target, import for the node's platform, always clean up),
against a stand-in for the cluster's shell. The engine tests load into real nodes (test_cluster.py)."""

import os
from types import SimpleNamespace

import pytest

from dindind.base.errors import CommandError, DindindError, InputError
from dindind.cluster import load
from dindind.docker import archive, containers, reference

from ociarchive import oci

# `ctr plugins ls` of containerd 2.1.9 (Debian forky) in a node of the sample cluster, amd64, as recorded
# (its first 27 rows, through the runtime's)
PLUGINS = """\
TYPE                                      ID                       PLATFORMS      STATUS
io.containerd.content.v1                  content                  -              ok
io.containerd.image-verifier.v1           bindir                   -              ok
io.containerd.internal.v1                 opt                      -              ok
io.containerd.warning.v1                  deprecations             -              ok
io.containerd.event.v1                    exchange                 -              ok
io.containerd.snapshotter.v1              blockfile                linux/amd64    skip
io.containerd.snapshotter.v1              btrfs                    linux/amd64    skip
io.containerd.snapshotter.v1              devmapper                linux/amd64    skip
io.containerd.snapshotter.v1              erofs                    linux/amd64    ok
io.containerd.snapshotter.v1              native                   linux/amd64    ok
io.containerd.snapshotter.v1              overlayfs                linux/amd64    ok
io.containerd.monitor.task.v1             cgroups                  linux/amd64    ok
io.containerd.metadata.v1                 bolt                     -              ok
io.containerd.gc.v1                       scheduler                -              ok
io.containerd.differ.v1                   erofs                    -              skip
io.containerd.differ.v1                   walking                  linux/amd64    ok
io.containerd.lease.v1                    manager                  -              ok
io.containerd.service.v1                  containers-service       -              ok
io.containerd.service.v1                  content-service          -              ok
io.containerd.service.v1                  diff-service             -              ok
io.containerd.service.v1                  images-service           -              ok
io.containerd.service.v1                  introspection-service    -              ok
io.containerd.service.v1                  namespaces-service       -              ok
io.containerd.service.v1                  snapshots-service        -              ok
io.containerd.shim.v1                     manager                  -              ok
io.containerd.runtime.v2                  task                     linux/amd64    ok
"""

FILES = [{"etc/hello": b"hello\n"}]


# ------------------------------------------------------------------ platforms

@pytest.mark.parametrize("node, image, match", [
    ("linux/amd64", "linux/amd64", True),
    ("linux/amd64", "linux/x86_64", True),
    ("linux/amd64", "linux/arm64", False),
    ("linux/amd64", "linux/386", False),              # strict, as ctr import --platform
    ("linux/amd64", "linux/amd64/v3", False),
    ("linux/amd64", "windows/amd64", False),
    ("linux/arm64/v8", "linux/arm64", True),          # arm64's only variant, written or not
    ("linux/arm64", "linux/aarch64/v8", True),
    ("linux/arm/v7", "linux/arm", True),              # arm without a variant is v7
    ("linux/arm/v7", "linux/arm/v6", False),
    ("linux/arm/v6", "linux/arm/6", True),
    ("Linux/AMD64", "linux/amd64", True),
    ("linux/amd64", "amd64", False),
    ("linux/amd64", "", False),
    ("linux/amd64", None, False),
    ("linux/amd64", "linux//v7", False),
])
def test_platform_match_is_containerds_strict_one(node, image, match):
    assert load.platform_matches(node, image) is match


def test_the_nodes_platform_is_containerds_own_snapshotter_row():
    assert load.platform_from_plugins(PLUGINS) == "linux/amd64"
    arm = PLUGINS.replace("linux/amd64", "linux/arm64/v8")
    assert load.platform_from_plugins(arm) == "linux/arm64/v8"
    # the overlayfs row leads; the runtime's row (which may list emulated platforms) is never read
    mixed = PLUGINS.replace("native                   linux/amd64", "native                   linux/s390x") \
        .replace("blockfile                linux/amd64", "blockfile                linux/s390x") \
        .replace("task                     linux/amd64", "task                     linux/riscv64,linux/amd64")
    assert load.platform_from_plugins(mixed) == "linux/amd64"
    assert load.platform_from_plugins("TYPE ID PLATFORMS STATUS\nio.containerd.grpc.v1 cri - ok\n") is None
    assert load.platform_from_plugins("") is None


@pytest.mark.parametrize("name, full", [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36"),
    ("dindind-test/load:1", "docker.io/dindind-test/load:1"),
    ("docker.io/library/debian:trixie", "docker.io/library/debian:trixie"),
    ("index.docker.io/me/app:v1", "docker.io/me/app:v1"),
    ("localhost:5000/app", "localhost:5000/app:latest"),
    ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
    ("app:v1@sha256:" + "a" * 64, "docker.io/library/app@sha256:" + "a" * 64),
    ("[::1]:5000/a/b:c", "[::1]:5000/a/b:c"),
])
def test_names_as_containerd_gives_them(name, full):
    assert reference.parse(name).full == full == load.containerd_name(name)


# ------------------------------------------------------------------ what an archive brings

def _archive(tmp_path, data, name="a.tar"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_legacy_archive_brings_its_repo_tags_of_its_configs_platform(tmp_path):
    path = archive.write_image(tmp_path / "l.tar", ["example.invalid/l:1", "example.invalid/l:2"],
                               {"/hello": (b"hi\n", 0o644)}, epoch=1700000000)
    entries = archive.loadable(path, verify_layers=True)
    assert entries == [{"names": ["example.invalid/l:1", "example.invalid/l:2"], "platforms": ["linux/amd64"]}]
    assert load.wanted(entries, "linux/amd64", "x") == ["example.invalid/l:1", "example.invalid/l:2"]
    with pytest.raises(DindindError) as err:
        load.wanted(entries, "linux/arm64", "--archive l.tar")
    assert "--archive l.tar: example.invalid/l:1 has linux/amd64; the nodes run linux/arm64" in err.value.message
    assert "--platform linux/arm64" in err.value.hint


def test_multi_platform_index_with_one_platform_saved_brings_that_platform_only(tmp_path):
    path = _archive(tmp_path, oci([(["docker.io/example/m:1"], FILES)], nested=True,
                                  platform="linux/amd64", absent="linux/arm64"))
    entries = archive.loadable(path, verify_layers=True)
    assert entries == [{"names": ["docker.io/example/m:1"], "platforms": ["linux/amd64"]}]
    assert load.wanted(entries, "linux/amd64", "x") == ["docker.io/example/m:1"]
    with pytest.raises(DindindError, match="m:1 has linux/amd64; the nodes run linux/arm64"):
        load.wanted(entries, "linux/arm64", "x")


def _two_platforms(arm_layer):
    """An index of linux/amd64 and linux/arm64, both manifests and configs there, arm64's layer only if
    ``arm_layer``; manifest.json lists amd64 (as docker save lists its own platform)."""
    import json

    from ociarchive import IMAGE_NAME, OCI_INDEX, OCI_MANIFEST, layer, sha, tar_bytes

    blobs = {}

    def put(data):
        blobs[f"blobs/sha256/{sha(data)}"] = data
        return f"sha256:{sha(data)}", len(data)

    manifests, tags = [], []
    for arch in ("amd64", "arm64"):
        plain = layer({f"etc/{arch}": arch.encode()})
        config = json.dumps({"os": "linux", "architecture": arch,
                             "rootfs": {"type": "layers", "diff_ids": [f"sha256:{sha(plain)}"]}}).encode()
        cdig, csize = put(config)
        ldig, lsize = put(plain)
        if arch == "arm64" and not arm_layer:
            del blobs[f"blobs/sha256/{ldig[7:]}"]
        manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                          "digest": cdig, "size": csize},
                               "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                           "digest": ldig, "size": lsize}]}).encode()
        mdig, msize = put(manifest)
        manifests.append({"mediaType": OCI_MANIFEST, "digest": mdig, "size": msize,
                          "platform": {"os": "linux", "architecture": arch}})
        if arch == "amd64":
            tags.append({"Config": f"blobs/sha256/{cdig[7:]}", "RepoTags": ["example.invalid/two:1"],
                         "Layers": [f"blobs/sha256/{ldig[7:]}"]})
    inner = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}).encode()
    idig, isize = put(inner)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
             "manifests": [{"mediaType": OCI_INDEX, "digest": idig, "size": isize,
                            "annotations": {IMAGE_NAME: "example.invalid/two:1"}}]}
    return tar_bytes(sorted(blobs.items()) + [("index.json", json.dumps(index).encode()),
                                              ("manifest.json", json.dumps(tags).encode()),
                                              ("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')])


def test_a_platform_counts_only_with_its_manifest_config_and_layers_all_there(tmp_path):
    partial = archive.loadable(_archive(tmp_path, _two_platforms(arm_layer=False)), verify_layers=True)
    assert partial == [{"names": ["example.invalid/two:1"], "platforms": ["linux/amd64"]}]
    whole = archive.loadable(_archive(tmp_path, _two_platforms(arm_layer=True), "b.tar"), verify_layers=True)
    assert whole == [{"names": ["example.invalid/two:1"], "platforms": ["linux/amd64", "linux/arm64"]}]
    assert load.wanted(whole, "linux/arm64", "x") == ["example.invalid/two:1"]


def test_oci_archive_without_image_names_brings_nothing_and_is_refused(tmp_path):
    path = _archive(tmp_path, oci([(["example.invalid/u:1"], FILES)], name=False))
    entries = archive.loadable(path)
    assert entries == []
    with pytest.raises(DindindError) as err:
        load.wanted(entries, "linux/amd64", "--archive u.tar")
    assert "names no image" in err.value.message


def test_loadable_validates_like_the_reader(tmp_path):
    import json

    from ociarchive import tar_bytes

    hostile = _archive(tmp_path, tar_bytes([("../escape", b"x"), ("manifest.json", b"[]")]))
    with pytest.raises(InputError, match="escapes the archive"):
        archive.loadable(hostile)
    good = oci([(["example.invalid/g:1"], FILES)])
    with pytest.raises(InputError, match="truncated"):
        archive.loadable(_archive(tmp_path, good[:len(good) // 2], "cut.tar"))
    # documents of the wrong shape: refused or ignored, never a traceback
    members = dict(_members_of(good))
    index = json.loads(members["index.json"])
    index["manifests"][0]["annotations"] = ["not", "a", "mapping"]
    odd = tar_bytes([(n, json.dumps(index).encode() if n == "index.json" else d) for n, d in _members_of(good)])
    assert archive.loadable(_archive(tmp_path, odd, "odd.tar")) == []
    # a manifest whose config is no descriptor (renamed to its new digest, index.json pointing at it)
    from ociarchive import sha

    old = index["manifests"][0]["digest"]
    doc = json.loads(members[f"blobs/sha256/{old[7:]}"])
    doc["config"] = "not a descriptor"
    bad = json.dumps(doc).encode()
    index = json.loads(members["index.json"])
    index["manifests"][0]["digest"] = f"sha256:{sha(bad)}"
    swapped = [(f"blobs/sha256/{sha(bad)}", bad) if n == f"blobs/sha256/{old[7:]}" else
               ("index.json", json.dumps(index).encode()) if n == "index.json" else (n, d) for n, d in _members_of(good)]
    with pytest.raises(InputError, match="is not an image index.json lists"):
        archive.loadable(_archive(tmp_path, tar_bytes(swapped), "cfg.tar"))


def _members_of(data):
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf]


# ------------------------------------------------------------------ arguments

def test_arguments(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = _archive(tmp_path, b"x", "a.tar")
    with pytest.raises(DindindError, match="nothing to load"):
        load.check_args([], [])
    with pytest.raises(DindindError, match="--image 'Bad:IMG' is not an image reference"):
        load.check_args(["busybox", "Bad:IMG"], [])
    with pytest.raises(DindindError, match=r"--archive nope.tar: no such file \(" + str(tmp_path)):
        load.check_args([], ["nope.tar"])
    with pytest.raises(DindindError, match="--archive .: not a regular file"):
        load.check_args([], ["."])
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(DindindError, match="not a regular file"):
        load.check_args([], ["fifo"])
    # each once, in the order given; relative paths are the working directory's
    assert load.check_args(["b:1", "a:1", "b:1"], ["a.tar", str(a)]) == (["b:1", "a:1"], [a])


# ------------------------------------------------------------------ the verb, against a stand-in shell

class FakeShell:
    """What dindind.cluster.host.Shell offers, recording every command; ``images`` is what ctr lists."""

    def __init__(self, nested, fail_import=False, plugins=PLUGINS, images=()):
        self.name = "t"
        self.top = "dindind-t" if nested else None
        self.nodes = ["t-control-plane", "t-worker"]
        self.fail_import = fail_import
        self.plugins = plugins
        self.images = list(images)
        self.calls = []

    def _cmd(self, where, cmd):
        self.calls.append((where, cmd))
        text = " ".join(cmd)
        if "plugins ls" in text:
            return 0, self.plugins
        if " import " in text:
            if self.fail_import:
                raise CommandError(cmd, 1, "ctr: content digest sha256:abc: not found")
            return 0, ""
        if "images ls -q" in text:
            return 0, "\n".join(self.images) + "\n"
        return 0, ""

    def run(self, node, cmd, check=True):
        return self._cmd(node, cmd)

    def top_run(self, cmd, check=True):
        return self._cmd(self.top, cmd)


@pytest.fixture
def engine_calls(monkeypatch):
    """Every copy into and command in a container, recorded (no engine)."""
    calls = []

    def put(container, directory, files):
        calls.append(("put", container, directory, [(n, str(p)) for n, p in files]))
        for _, p in files:
            assert os.path.exists(p)

    def exec_in(container, cmd, check=True):
        calls.append(("exec", container, cmd))
        return 0, ""

    monkeypatch.setattr(containers, "put_archive_files", put)
    monkeypatch.setattr(containers, "exec_in", exec_in)
    return calls


def _two_archives(tmp_path):
    legacy = archive.write_image(tmp_path / "legacy.tar", ["example.invalid/legacy:1"],
                                 {"/hello": (b"hi\n", 0o644)}, epoch=1700000000)
    multi = _archive(tmp_path, oci([(["docker.io/example/multi:1"], FILES)], nested=True), "multi.tar")
    return [legacy, multi]


@pytest.mark.parametrize("nested", [True, False], ids=["nested", "non-nested"])
def test_one_copy_per_target_import_for_the_nodes_platform_then_removed(tmp_path, engine_calls, nested):
    files = _two_archives(tmp_path)
    names = ["example.invalid/legacy:1", "docker.io/example/multi:1"]
    sh = FakeShell(nested, images=names + ["registry.k8s.io/pause:3.10"])
    lay = SimpleNamespace(tmp=tmp_path / "tmp")
    lines = []
    assert load.load(sh, lay, [], files, out=lines.append) == names
    targets = ["dindind-t"] if nested else sh.nodes
    puts = [c for c in engine_calls if c[0] == "put"]
    assert [c[1] for c in puts] == targets                      # one transfer per target, both files in it
    assert all(c[2] == "/var/cache" and [p for _, p in c[3]] == [str(f) for f in files] for c in puts)
    remote = [f"/var/cache/{n}" for n, _ in puts[0][3]]
    imports = [" ".join(cmd) for _, cmd in sh.calls if " import " in " ".join(cmd)]
    assert len(imports) == 2 * len(files)                       # each file into each node
    assert all("--platform linux/amd64" in i and "--all-platforms" not in i for i in imports)
    if nested:
        assert all(i.startswith("sh -c docker exec -i t-") and i.endswith(tuple(f"< {r}" for r in remote))
                   for i in imports)
    removed = [c for c in engine_calls if c[0] == "exec" and c[2][:2] == ["rm", "-f"]]
    assert [(c[1], c[2][2:]) for c in removed] == [(t, remote) for t in targets]
    assert not list((tmp_path / "tmp").iterdir())
    assert lines == [f"loaded 2 image(s) for linux/amd64 into 2 node(s) of t: {' '.join(names)}"]


def test_a_hostile_archive_is_refused_before_anything_is_copied(tmp_path, engine_calls):
    from ociarchive import tar_bytes

    good = _two_archives(tmp_path)
    bad = _archive(tmp_path, tar_bytes([("manifest.json", b'[{"Config": "c.json", "RepoTags": ["a:1"], '
                                                          b'"Layers": ["/etc/passwd"]}]'), ("c.json", b"{}")]),
                   "bad.tar")
    with pytest.raises(InputError) as err:
        load.load(FakeShell(True), SimpleNamespace(tmp=tmp_path / "tmp"), [], good + [bad])
    assert f"image tarball {bad}: manifest.json entry 0 references '/etc/passwd', which escapes" in err.value.message
    assert engine_calls == []


def test_an_archive_without_the_nodes_platform_is_refused_before_anything_is_copied(tmp_path, engine_calls):
    arm = _archive(tmp_path, oci([(["docker.io/example/arm:1"], FILES)], nested=True, platform="linux/arm64",
                                 absent="linux/amd64"), "arm.tar")
    with pytest.raises(DindindError) as err:
        load.load(FakeShell(False), SimpleNamespace(tmp=tmp_path / "tmp"), [], [arm])
    assert err.value.message == f"--archive {arm}: docker.io/example/arm:1 has linux/arm64; the nodes run linux/amd64"
    assert engine_calls == []


@pytest.mark.parametrize("nested", [True, False], ids=["nested", "non-nested"])
def test_a_failed_import_still_removes_every_copy(tmp_path, engine_calls, nested):
    files = _two_archives(tmp_path)
    sh = FakeShell(nested, fail_import=True)
    with pytest.raises(DindindError) as err:
        load.load(sh, SimpleNamespace(tmp=tmp_path / "tmp"), [], files)
    assert err.value.message == f"containerd in t-control-plane could not import --archive {files[0]}"
    assert "not found" in err.value.detail
    targets = ["dindind-t"] if nested else sh.nodes
    removed = [c[1] for c in engine_calls if c[0] == "exec" and c[2][:2] == ["rm", "-f"]]
    assert removed == targets


def test_an_image_that_did_not_arrive_is_an_error(tmp_path, engine_calls):
    sh = FakeShell(False, images=["example.invalid/legacy:1"])      # the multi-platform one is missing
    with pytest.raises(DindindError, match="docker.io/example/multi:1 did not arrive in t-control-plane"):
        load.load(sh, SimpleNamespace(tmp=tmp_path / "tmp"), [], _two_archives(tmp_path))


def test_a_node_whose_platform_cannot_be_told(tmp_path, engine_calls):
    sh = FakeShell(False, plugins="ctr: not found\n")
    with pytest.raises(DindindError, match="cannot tell the platform of t-control-plane"):
        load.load(sh, SimpleNamespace(tmp=tmp_path / "tmp"), [], _two_archives(tmp_path))
    assert engine_calls == []
