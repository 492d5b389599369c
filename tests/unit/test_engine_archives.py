"""The one docker-archive reader on archives that real engines wrote (tests/fixtures/archives/).

Each fixture is `docker save` of the same two tiny images, made by one engine
(tests/fixtures/archives/README.md says how): ``one`` (FROM scratch, one
file) and ``two`` (FROM one, a second file), so the archive holds a layer
shared by two images. Beside each, ``<name>.tar.json`` records what that
engine's own `docker image inspect` said (ids, layer digests, labels). The
reader must agree with the engine, through both of its APIs.
"""

import hashlib
import json
import tarfile
from pathlib import Path

import pytest

from dindind.base.errors import InputError
from dindind.docker import archive

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "archives"
REPO = "dindind-fixture/tiny"
FILES = {"hello.txt": b"hello from a dindind fixture\n", "world.txt": b"world\n"}

# fixture -> (the layout its engine's `docker save` writes, whether the engine's image id is the config digest)
CASES = {
    "docker-20.10": ("legacy", True),             # Debian bookworm's docker.io 20.10, overlay2
    "docker-26": ("oci", True),                   # Debian trixie's docker.io 26.1, overlay2
    "docker-28": ("oci", True),                   # Debian forky's docker.io 28.5, overlay2
    "docker-28-containerd": ("oci", False),       # the same 28.5 with the containerd image store
}


def _facts(name):
    return json.loads((FIXTURES / f"{name}.tar.json").read_text())


def _names(path):
    with tarfile.open(path) as tf:
        return {m.name.removeprefix("./") for m in tf}


def test_every_engine_of_the_matrix_has_a_fixture():
    assert sorted(p.name for p in FIXTURES.glob("*.tar")) == sorted(f"{n}.tar" for n in CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_layout_is_the_one_that_engine_writes(name):
    layout, _ = CASES[name]
    names = _names(FIXTURES / f"{name}.tar")
    assert "manifest.json" in names
    if layout == "legacy":
        assert "index.json" not in names and "oci-layout" not in names
        assert any(n.endswith("/layer.tar") for n in names)
    else:
        assert {"index.json", "oci-layout"} <= names
        assert not any(n.endswith("/layer.tar") for n in names)
        entries = archive.read_manifest(FIXTURES / f"{name}.tar")
        assert all(x.startswith("blobs/sha256/") for e in entries for x in [e["Config"], *e["Layers"]])


@pytest.mark.parametrize("name", sorted(CASES))
def test_file_api_reads_tags_and_layers(name):
    path = FIXTURES / f"{name}.tar"
    facts = _facts(name)
    entries = archive.read_manifest(path, verify_layers=True)
    tags = {t: e for e in entries for t in e["RepoTags"]}
    assert sorted(tags) == [f"{REPO}:one", f"{REPO}:two"]
    assert sorted(archive.repo_tags(path)) == sorted(tags)
    for ref, e in tags.items():
        assert len(e["Layers"]) == len(facts["images"][ref]["layers"])     # the layer count the engine reported


@pytest.mark.parametrize("name", sorted(CASES))
def test_stream_api_agrees_with_the_engine(name):
    path = FIXTURES / f"{name}.tar"
    facts = _facts(name)
    _, id_is_config = CASES[name]
    with open(path, "rb") as f:
        contents = archive.read_stream(f, name, extract=tuple(FILES))
    found = {t: img for img in archive.images(contents, name) for t in img["repo_tags"]}
    assert sorted(found) == [f"{REPO}:one", f"{REPO}:two"]
    for ref, img in found.items():
        want = facts["images"][ref]
        assert img["layers"] == want["layers"]                      # diff_ids, as the engine has them
        assert img["labels"] == want["labels"] == {"io.dindind.fixture": ref.rsplit(":", 1)[1]}
        assert img["id"] == "sha256:" + hashlib.sha256(img["config"]).hexdigest()
        config = json.loads(img["config"])
        assert config["rootfs"]["diff_ids"] == want["layers"]
        if id_is_config:
            assert img["id"] == want["id"]
        else:
            # the containerd image store names an image by its manifest (or index): index.json leads there
            assert want["id"] != img["id"]
            assert want["id"][7:] in {n.rsplit("/", 1)[-1] for n in _names(path) if n.startswith("blobs/sha256/")}
    one, two = found[f"{REPO}:one"], found[f"{REPO}:two"]
    assert two["layers"][0] == one["layers"][0] and len(two["layers"]) == 2 and len(one["layers"]) == 1
    assert two["layer_keys"][0] == one["layer_keys"][0]         # the shared layer is stored once (links followed)
    # the files themselves, from the layers the reader picked for each image
    assert contents.extracted[(one["layer_keys"][0], "hello.txt")] == FILES["hello.txt"]
    assert contents.extracted[(two["layer_keys"][1], "world.txt")] == FILES["world.txt"]
    assert (two["layer_keys"][0], "world.txt") not in contents.extracted


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_flipped_byte_in_a_layer_is_named(name, tmp_path):
    src = FIXTURES / f"{name}.tar"
    with open(src, "rb") as f:
        key = archive.images(archive.read_stream(f, name), name)[0]["layer_keys"][0]
    with tarfile.open(src) as tf:
        member = next(m for m in tf if m.isreg() and m.name.removeprefix("./") == key)
    data = bytearray(src.read_bytes())
    data[member.offset_data + member.size // 2] ^= 0x01
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError) as err:
        archive.read_manifest(bad, verify_layers=True)
    assert f"image tarball {bad}: layer 1 ({key}" in err.value.message or f"({key})" in err.value.message
