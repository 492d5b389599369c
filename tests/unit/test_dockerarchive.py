"""dindind.dockerarchive: deterministic docker-archives, and their validation."""

import io
import os
import json
import tarfile
import uuid
from pathlib import PurePosixPath

import pytest

from dindind.docker import archive as dockerarchive
from dindind.base.errors import InputError

EPOCH = 1700000000
SCRIPT = b"#!/bin/sh\necho hello from a dindind test image\n"


def _write(path, tags=("example.invalid/test:v1",), epoch=EPOCH, **kw):
    files = {"/usr/local/bin/hello": (SCRIPT, 0o755), "/etc/hello.conf": (b"x=1\n", 0o644)}
    return dockerarchive.write_image(path, list(tags), files, epoch=epoch, **kw)


def _members(path):
    with tarfile.open(path) as tf:
        return {m.name: (m, tf.extractfile(m).read() if m.isreg() else None) for m in tf}


def _tar(path, entries):
    """A tar of {name: bytes | ("symlink", target)}, names taken literally."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for name, value in entries.items():
            ti = tarfile.TarInfo(name)
            if isinstance(value, tuple):
                ti.type, ti.linkname = tarfile.SYMTYPE, value[1]
                tf.addfile(ti)
            else:
                ti.size = len(value)
                tf.addfile(ti, io.BytesIO(value))
    return path


def _parts(good):
    """The entries of a valid archive, as {name: bytes}, to be tampered with."""
    return {name: data for name, (m, data) in _members(good).items() if m.isreg()}


@pytest.fixture
def good(tmp_path):
    return _write(tmp_path / "good.tar")


# ---------------------------------------------------------------- writing

def test_write_is_deterministic(tmp_path):
    a = _write(tmp_path / "a.tar").read_bytes()
    b = _write(tmp_path / "b.tar").read_bytes()
    assert a == b
    assert _write(tmp_path / "c.tar", epoch=EPOCH + 1).read_bytes() != a


def test_written_archive_has_docker_save_layout(good):
    members = _members(good)
    manifest = json.loads(members["manifest.json"][1])
    assert manifest[0]["RepoTags"] == ["example.invalid/test:v1"]
    config_name, (layer_name,) = manifest[0]["Config"], manifest[0]["Layers"]
    assert layer_name.endswith("/layer.tar") and config_name.endswith(".json")
    assert set(json.loads(members["repositories"][1])) == {"example.invalid/test"}
    config = json.loads(members[config_name][1])
    assert config["os"] == "linux" and config["rootfs"]["type"] == "layers"
    assert config["config"]["Env"][0].startswith("PATH=")
    for m, _ in members.values():
        assert (m.uid, m.gid, m.mtime) == (0, 0, EPOCH)
    names = [n for n in _members(good)]
    assert names == sorted(names)
    with tarfile.open(fileobj=io.BytesIO(members[layer_name][1])) as layer:
        hello = layer.getmember("usr/local/bin/hello")
        assert layer.extractfile(hello).read() == SCRIPT
        assert (hello.mode, hello.uid, hello.gid, hello.mtime) == (0o755, 0, 0, EPOCH)
        assert layer.getmember("usr/local/bin").isdir()


def test_entrypoint_and_env(tmp_path):
    path = _write(tmp_path / "i.tar", entrypoint=["/usr/local/bin/hello"], env={"B": "2", "A": "1"})
    members = _members(path)
    entry = dockerarchive.read_manifest(path)[0]
    config = json.loads(members[entry["Config"]][1])
    assert config["config"]["Entrypoint"] == ["/usr/local/bin/hello"]
    assert config["config"]["Env"] == ["A=1", "B=2"]


def test_write_refuses_relative_paths(tmp_path):
    with pytest.raises(ValueError):
        dockerarchive.write_image(tmp_path / "x.tar", ["a:b"], {"usr/bin/x": (b"", 0o755)}, epoch=EPOCH)
    with pytest.raises(ValueError):
        dockerarchive.write_image(tmp_path / "x.tar", ["a:b"], {"/usr/../x": (b"", 0o755)}, epoch=EPOCH)
    assert not (tmp_path / "x.tar").exists()


def test_read_manifest_accepts_and_verifies(good):
    entries = dockerarchive.read_manifest(good, verify_layers=True)
    assert entries[0]["RepoTags"] == ["example.invalid/test:v1"]
    assert dockerarchive.repo_tags(good) == ["example.invalid/test:v1"]


def test_read_manifest_follows_in_archive_layer_links(tmp_path, good):
    # older `docker save` links shared layers: <id2>/layer.tar -> ../<id1>/layer.tar
    parts = _parts(good)
    manifest = json.loads(parts["manifest.json"])
    layer = manifest[0]["Layers"][0]
    parts["other/layer.tar"] = ("symlink", f"../{layer}")
    manifest[0]["Layers"] = ["other/layer.tar"]
    parts["manifest.json"] = json.dumps(manifest).encode()
    path = _tar(tmp_path / "linked.tar", parts)
    assert dockerarchive.read_manifest(path, verify_layers=True)[0]["Layers"] == ["other/layer.tar"]


# ---------------------------------------------------------------- refusing

def _expect(path, *words):
    with pytest.raises(InputError) as info:
        dockerarchive.read_manifest(path, verify_layers=True)
    text = str(info.value)
    assert str(path) in text
    for word in words:
        assert word in text
    assert info.value.hint
    return text


def test_truncated_in_a_layer(tmp_path, good):
    data = good.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])
    _expect(cut, "truncated")


def test_truncated_at_a_header_boundary(tmp_path, good):
    # drop the last entry and the end-of-archive blocks: tarfile alone reports nothing
    with tarfile.open(good) as tf:
        last = tf.getmembers()[-1]
    cut = tmp_path / "cut.tar"
    cut.write_bytes(good.read_bytes()[: last.offset])
    _expect(cut, "truncated")


def test_truncated_mid_header(tmp_path, good):
    with tarfile.open(good) as tf:
        last = tf.getmembers()[-1]
    cut = tmp_path / "cut.tar"
    cut.write_bytes(good.read_bytes()[: last.offset + 100])
    _expect(cut, "truncated")


@pytest.mark.parametrize("content", [b"", b"hello, not a tar\n" * 100, None])
def test_not_a_tar(tmp_path, good, content):
    path = tmp_path / "bad.tar"
    if content is None:   # a gzip-compressed docker-archive is not what release tarballs hold
        import gzip
        content = gzip.compress(good.read_bytes())
    path.write_bytes(content)
    _expect(path, "not a readable tar")


def test_missing_file(tmp_path):
    _expect(tmp_path / "nope.tar", "does not exist")


def test_no_manifest(tmp_path, good):
    parts = _parts(good)
    del parts["manifest.json"]
    _expect(_tar(tmp_path / "m.tar", parts), "manifest.json")


def test_missing_config(tmp_path, good):
    parts = _parts(good)
    config = json.loads(parts["manifest.json"])[0]["Config"]
    del parts[config]
    _expect(_tar(tmp_path / "m.tar", parts), "config", config)


def test_missing_layer(tmp_path, good):
    parts = _parts(good)
    layer = json.loads(parts["manifest.json"])[0]["Layers"][0]
    del parts[layer]
    _expect(_tar(tmp_path / "m.tar", parts), "layer", layer)


@pytest.mark.parametrize("tags", [[], None, "missing"])
def test_no_repo_tags(tmp_path, good, tags):
    parts = _parts(good)
    manifest = json.loads(parts["manifest.json"])
    if tags == "missing":
        del manifest[0]["RepoTags"]
    else:
        manifest[0]["RepoTags"] = tags
    parts["manifest.json"] = json.dumps(manifest).encode()
    _expect(_tar(tmp_path / "m.tar", parts), "RepoTags")


def test_layer_digest_mismatch(tmp_path, good):
    parts = _parts(good)
    layer = json.loads(parts["manifest.json"])[0]["Layers"][0]
    parts[layer] = parts[layer][:-1] + b"\x01"
    _expect(_tar(tmp_path / "m.tar", parts), "digest")


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "/etc/evil"])
def test_escaping_entry(tmp_path, good, name):
    parts = _parts(good)
    parts[name] = b"boom"
    _expect(_tar(tmp_path / "m.tar", parts), "escapes")


@pytest.mark.parametrize("target", ["../../etc/passwd", "/etc/passwd"])
def test_escaping_link(tmp_path, good, target):
    parts = _parts(good)
    parts["sub/link"] = ("symlink", target)
    _expect(_tar(tmp_path / "m.tar", parts), "escapes")


def test_manifest_reference_escaping(tmp_path, good):
    parts = _parts(good)
    manifest = json.loads(parts["manifest.json"])
    manifest[0]["Layers"] = ["../outside/layer.tar"]
    parts["manifest.json"] = json.dumps(manifest).encode()
    _expect(_tar(tmp_path / "m.tar", parts), "escapes")


def test_manifest_not_json(tmp_path, good):
    parts = _parts(good)
    parts["manifest.json"] = b"{not json"
    _expect(_tar(tmp_path / "m.tar", parts), "JSON")


# ---------------------------------------------------------------- the engine

@pytest.mark.engine
def test_docker_load_accepts_written_archive(tmp_path):
    import docker

    client = docker.from_env(version="auto")       # an engine test fails without an engine; it never skips
    ref = f"dindind-test/dockerarchive:{uuid.uuid4().hex[:12]}"
    path = _write(tmp_path / "load.tar", tags=[ref], entrypoint=["/usr/local/bin/hello"])
    config_name = dockerarchive.read_manifest(path)[0]["Config"]
    container = None
    try:
        with open(path, "rb") as f:
            loaded = client.images.load(f)
        assert [ref] in [img.tags for img in loaded]
        image = client.images.get(ref)
        assert image.id == "sha256:" + config_name[: -len(".json")]
        assert image.attrs["Config"]["Entrypoint"] == ["/usr/local/bin/hello"]
        container = client.containers.create(ref)
        stream, _ = container.get_archive("/usr/local/bin/hello")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tf:
            member = tf.getmember("hello")
            assert tf.extractfile(member).read() == SCRIPT
            assert member.mode & 0o777 == 0o755
    finally:
        if container is not None:
            container.remove(force=True)
        try:
            client.images.remove(ref, force=True)
        except docker.errors.ImageNotFound:
            pass
        client.close()


# ---------------------------------------------------------------- both layouts, both APIs
#
# Archives built by hand as each engine writes them: legacy (dockerd < 25, as
# write_image does) and the OCI image layout of dockerd >= 25 (oci-layout,
# index.json, blobs/sha256/<hex>, and manifest.json pointing into blobs/),
# with uncompressed or gzip layers (the containerd image store keeps pulled
# layers gzip-compressed), one image or several.

import gzip as _gzip

from ociarchive import OCI_MANIFEST, TAR, TAR_GZIP, TAR_ZSTD
from ociarchive import oci as _oci, sha as _sha, tar_bytes as _tar_bytes

LAYER_FILES = [{"etc/os-release": b"VERSION_CODENAME=trixie\n", "usr/bin/a": b"a" * 3000},
               {"usr/bin/b": b"b" * 100}]


def _legacy(tmp_path):
    return _write(tmp_path / "legacy.tar").read_bytes()


LAYOUTS = {
    "legacy": _legacy,
    "oci": lambda tmp_path: _oci([(["example.invalid/oci:v1"], LAYER_FILES)]),
    "oci, manifest.json first": lambda tmp_path: _oci([(["example.invalid/oci:v1"], LAYER_FILES)],
                                                      manifest_first=True),
    "oci, gzip layers": lambda tmp_path: _oci([(["example.invalid/oci:v1"], LAYER_FILES)], compress="gzip"),
    "oci, multi-platform index, one platform saved": lambda tmp_path: _oci(
        [(["example.invalid/oci:v1"], LAYER_FILES)], nested=True),
    "oci, two images": lambda tmp_path: _oci([(["example.invalid/a:1", "example.invalid/a:2"], LAYER_FILES),
                                             (["example.invalid/b:1"], LAYER_FILES[1:])], compress="gzip"),
}


class _Recorder:
    """A stand-in for the secret scanner: records every file it is shown."""

    def __init__(self):
        self.seen = []

    def scan(self, key, path, read, size):
        data = b"".join(iter(lambda: read(1024), b""))
        assert len(data) == size
        self.seen.append((key, path))

    def scan_bytes(self, key, path, data):
        self.seen.append((key, path))


def _stream(data, where="test archive", **kw):
    contents = dockerarchive.read_stream(io.BytesIO(data), where, **kw)
    return contents, dockerarchive.images(contents, where)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_both_apis_read_every_layout_alike(tmp_path, layout):
    data = LAYOUTS[layout](tmp_path)
    path = tmp_path / "a.tar"
    path.write_bytes(data)
    by_file = dockerarchive.read_manifest(path, verify_layers=True)
    recorder = _Recorder()
    contents, by_stream = _stream(data, scanner=recorder, extract=("etc/os-release",))
    assert [(e["RepoTags"], e["Config"], e["Layers"]) for e in by_file] == \
        [(e["repo_tags"], e["config_name"], e["layer_names"]) for e in by_stream]
    assert dockerarchive.repo_tags(path) == [t for e in by_file for t in e["RepoTags"]]
    for image in by_stream:
        config = json.loads(image["config"])
        assert image["id"] == f"sha256:{_sha(image['config'])}"
        assert image["layers"] == config["rootfs"]["diff_ids"]
        assert all(key in {k for k, _ in recorder.seen} for key in image["layer_keys"])
    if layout != "legacy":
        assert by_stream[0]["labels"] == {"org.opencontainers.image.title": by_stream[0]["repo_tags"][0]}
        assert contents.extracted[(by_stream[0]["layer_keys"][0], "etc/os-release")] == \
            b"VERSION_CODENAME=trixie\n"
        assert ("usr/bin/a" in {p for _, p in recorder.seen})


def test_gzip_layers_are_checked_against_the_uncompressed_digest(tmp_path):
    data = _oci([(["example.invalid/oci:v1"], LAYER_FILES)], compress="gzip")
    contents, (image,) = _stream(data)
    for key, diff_id in zip(image["layer_keys"], image["layers"]):
        blob = contents.blobs[key]
        assert blob.compression == "gzip"
        assert blob.diff_id == diff_id != blob.digest == f"sha256:{PurePosixPath(key).name}"


def test_a_zstd_layer_is_listed_but_refused_where_it_must_be_read(tmp_path):
    fake_zstd = lambda plain: b"\x28\xb5\x2f\xfd" + plain     # the magic is all the reader looks at
    data = _oci([(["example.invalid/oci:v1"], LAYER_FILES)], compress=fake_zstd, media_type=TAR_ZSTD)
    path = tmp_path / "z.tar"
    path.write_bytes(data)
    assert dockerarchive.repo_tags(path) == ["example.invalid/oci:v1"]
    text = _refused(data, path, "zstd")
    assert "layer 1 (blobs/sha256/" in text


def _refused(data, path, *words):
    """Both APIs refuse ``data`` (written to ``path``) with one InputError holding ``words``."""
    path.write_bytes(data)
    texts = []
    with pytest.raises(InputError) as by_file:
        dockerarchive.read_manifest(path, verify_layers=True)
    with pytest.raises(InputError) as by_stream:
        _stream(data, where="the stream")
    for err, where in ((by_file.value, str(path)), (by_stream.value, "the stream")):
        text = str(err)
        assert where in text and err.hint
        for word in words:
            assert word in text, text
        texts.append(text)
    return texts[0]


def _flip_last_byte_of(prefix):
    def tamper(name, data):
        return data[:-1] + bytes([data[-1] ^ 1]) if name.startswith(prefix) else data
    return tamper


def test_oci_blob_that_does_not_hash_to_its_name(tmp_path):
    clean = _oci([(["example.invalid/oci:v1"], LAYER_FILES)])
    layer = json.loads(dict(_entries(clean))["manifest.json"])[0]["Layers"][0]
    data = _oci([(["example.invalid/oci:v1"], LAYER_FILES)], tamper=_flip_last_byte_of(layer))
    _refused(data, tmp_path / "t.tar", layer, "does not hash to its name")


def _entries(data):
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf]


def test_gzip_layer_whose_media_type_says_uncompressed(tmp_path):
    data = _oci([(["example.invalid/oci:v1"], LAYER_FILES)], compress="gzip", media_type=TAR)
    _refused(data, tmp_path / "t.tar", "layer 1 (blobs/sha256/", "stored as gzip", TAR)


def test_truncated_gzip_layer(tmp_path):
    cut = lambda plain: _gzip.compress(plain, mtime=0)[:-40]
    data = _oci([(["example.invalid/oci:v1"], LAYER_FILES)], compress=cut, media_type=TAR_GZIP)
    _refused(data, tmp_path / "t.tar", "layer 1 (blobs/sha256/", "gzip")


def test_oci_layer_missing_from_the_archive(tmp_path):
    clean = _oci([(["example.invalid/oci:v1"], LAYER_FILES)])
    layer = json.loads(dict(_entries(clean))["manifest.json"])[0]["Layers"][1]
    data = _oci([(["example.invalid/oci:v1"], LAYER_FILES)], drop=(layer,))
    _refused(data, tmp_path / "t.tar", "manifest.json entry 0", layer, "not in the archive")


def test_index_json_referencing_a_missing_manifest(tmp_path):
    ghost = {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "d" * 64, "size": 10}
    data = _oci([(["example.invalid/oci:v1"], LAYER_FILES)], extra_index=[ghost])
    _refused(data, tmp_path / "t.tar", "index.json", "blobs/sha256/" + "d" * 64, "not in the archive")


def test_manifest_json_entry_that_index_json_does_not_list(tmp_path):
    a = dict(_entries(_oci([(["example.invalid/a:1"], LAYER_FILES)])))
    b = dict(_entries(_oci([(["example.invalid/b:1"], LAYER_FILES[1:])])))
    merged = dict(b, **a)
    merged["manifest.json"] = json.dumps(json.loads(a["manifest.json"]) + json.loads(b["manifest.json"])).encode()
    data = _tar_bytes(sorted(merged.items()))          # index.json is a's: it does not list b
    _refused(data, tmp_path / "t.tar", "manifest.json entry 1", "index.json")


def test_oci_config_that_was_altered(tmp_path):
    clean = _oci([(["example.invalid/oci:v1"], LAYER_FILES)])
    config = json.loads(dict(_entries(clean))["manifest.json"])[0]["Config"]
    data = _oci([(["example.invalid/oci:v1"], LAYER_FILES)],
                tamper=lambda n, d: d.replace(b'"os": "linux"', b'"os": "linuX"') if n == config else d)
    _refused(data, tmp_path / "t.tar", config, "altered")


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.9])
def test_truncated_oci_archive(tmp_path, cut):
    data = _oci([(["example.invalid/oci:v1"], LAYER_FILES)], compress="gzip")
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        tf.getmembers()
        end = tf.offset                     # where the end-of-archive blocks start
    path = tmp_path / "t.tar"
    path.write_bytes(data[:int(end * cut)])
    with pytest.raises(InputError, match="truncated"):
        dockerarchive.read_manifest(path, verify_layers=True)
    with pytest.raises(InputError, match="the stream"):
        _stream(data[:int(end * cut)], where="the stream")


def test_streaming_never_holds_a_layer_in_memory():
    """A layer is read in chunks: the biggest single read handed out is bounded, whatever the layer's size."""
    big = {"usr/bin/big": os.urandom(6 << 20)}
    data = _oci([(["example.invalid/oci:v1"], [big])], compress="gzip")

    class Watch(io.BytesIO):
        biggest = 0

        def read(self, n=-1):
            out = super().read(n)
            Watch.biggest = max(Watch.biggest, len(out))
            return out

    contents = dockerarchive.read_stream(Watch(data), "big", scanner=_Recorder())
    assert dockerarchive.images(contents, "big")[0]["repo_tags"] == ["example.invalid/oci:v1"]
    assert Watch.biggest <= dockerarchive.CHUNK
    assert all(len(v) < 1 << 16 for v in contents.small.values())
