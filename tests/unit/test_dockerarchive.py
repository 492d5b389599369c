"""dindind.dockerarchive: deterministic docker-archives, and their validation."""

import io
import json
import tarfile
import uuid

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
