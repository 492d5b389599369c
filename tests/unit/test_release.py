"""dindind.release without an engine: versions, gzip, the secret scanner, writing and verifying
a release of synthetic images, pushing against a fake engine, the doit interface, and
reproducible .debs and rendered files."""

import base64
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from dindind.build import debs
from dindind.docker import archive as dockerarchive, engine
from dindind.docker import registry as docker_registry
from dindind.docker import images as docker_images
from dindind.build import provenance
from dindind.release import export, make, push, verify
from dindind.release import scan as release_scan
from dindind.release import manifest as release_manifest
from dindind.base import render
from dindind.base.errors import DindindError, EngineError
from dindind.base.layout import Layout

ROOT = Path(__file__).resolve().parents[2]
EPOCH = 1700000000


def pem_key():
    """A private-key-shaped PEM block (random bytes, not a key), made at run time."""
    body = base64.b64encode(os.urandom(96)).decode()
    return ("-----BEGIN " + "RSA PRIVATE KEY-----\n" + "\n".join(body[i:i + 64] for i in range(0, len(body), 64))
            + "\n-----END RSA PRIVATE KEY-----\n").encode()


def archive(tmp_path, name, files, tag=None, env=None):
    path = tmp_path / f"{name}.tar"
    dockerarchive.write_image(path, [tag or f"dindind-test/{name}:1"], files, epoch=EPOCH, env=env)
    return path


def image_id(path):
    return "sha256:" + Path(dockerarchive.read_manifest(path)[0]["Config"]).stem


def chunked(data, size=4096):
    return [data[i:i + size] for i in range(0, len(data), size)]


def scan(tmp_path, files, env=None):
    path = archive(tmp_path, "scanned", files, env=env)
    _, findings = export.export_image("node", "x", tmp_path / "out.tar.gz",
                                       save=lambda ref: chunked(path.read_bytes()), echo=lambda *a: None)
    return findings


# ------------------------------------------------------------------ versions and names

@pytest.mark.parametrize("given, tag", [("v1.31.2+sample", "v1.31.2_sample"), ("1.0", "1.0"),
                                        ("v1.31.2_sample-c2a4f24-dirty", "v1.31.2_sample-c2a4f24-dirty"),
                                        ("_x", "_x"), ("a" * 128, "a" * 128)])
def test_version_is_a_docker_tag(given, tag):
    assert release_manifest.check_version(given) == tag


@pytest.mark.parametrize("bad", ["", "-x", ".x", "a b", "a/b", "v1:2", "x" * 129, "é", "a\nb"])
def test_invalid_version_is_one_clear_error(bad):
    with pytest.raises(DindindError) as err:
        release_manifest.check_version(bad)
    assert "docker tag" in err.value.render()


@pytest.mark.parametrize("ok", ["127.0.0.1:5000", "localhost:5000", "registry.example.com/team", "ghcr.io"])
def test_registry_ok(ok):
    assert push.check_registry(ok) == ok


@pytest.mark.parametrize("bad", ["http://127.0.0.1:5000", "127.0.0.1:5000/", "", "Reg.io", "a b"])
def test_registry_invalid(bad):
    with pytest.raises(DindindError, match="invalid --push registry"):
        push.check_registry(bad)


def test_push_ref():
    assert push.push_ref("127.0.0.1:5000", "node", "v1_x") == "127.0.0.1:5000/dindind/node:v1_x"


def test_default_version_outside_git_is_nogit(tmp_path):
    assert make.default_version("v1.31.2+sample", tmp_path) == "v1.31.2_sample-nogit"
    assert provenance.git_commit(tmp_path) == "unknown"
    assert provenance.source_url(tmp_path) is None


def test_default_version_in_a_git_checkout(tmp_path):
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t.invalid"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f").write_text("x\n")
    subprocess.run(git + ["add", "f"], check=True)
    subprocess.run(git + ["commit", "-qm", "one"], check=True)
    commit = provenance.git_commit(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{40}", commit)
    assert make.default_version("v1.31.2+sample", tmp_path) == f"v1.31.2_sample-{commit[:7]}"
    (tmp_path / "f").write_text("changed\n")
    assert make.default_version("v1.31.2", tmp_path) == f"v1.31.2-{commit[:7]}-dirty"


def test_oci_labels(tmp_path):
    labels = provenance.oci_labels("v1.31.2+sample", tmp_path, EPOCH)
    assert labels == {
        "org.opencontainers.image.version": "v1.31.2+sample",
        "org.opencontainers.image.revision": "unknown",
        "org.opencontainers.image.created": "2023-11-14T22:13:20Z",
    }


@pytest.mark.parametrize("remote,url", [
    # the forms git accepts for a hosted repository: the web URL
    ("https://github.com/org/repo", "https://github.com/org/repo"),
    ("https://github.com/org/repo.git", "https://github.com/org/repo"),
    ("https://github.com/org/repo/", "https://github.com/org/repo"),
    ("git@github.com:org/repo.git", "https://github.com/org/repo"),
    ("github.com:org/repo", "https://github.com/org/repo"),
    ("git@gitlab.example.com:group/sub/repo.git", "https://gitlab.example.com/group/sub/repo"),
    ("ssh://git@github.com/org/repo.git", "https://github.com/org/repo"),
    ("ssh://git@git.example.com:2222/org/repo.git", "https://git.example.com/org/repo"),
    ("git+ssh://git@github.com/org/repo", "https://github.com/org/repo"),
    ("git://git.kernel.org/pub/scm/git/git.git", "https://git.kernel.org/pub/scm/git/git"),
    ("https://GitHub.com/org/repo", "https://github.com/org/repo"),
    ("https://git.example.com:8443/org/repo.git", "https://git.example.com:8443/org/repo"),
    ("http://git.example.com/org/repo", "http://git.example.com/org/repo"),
    # credentials, queries and fragments never reach the label
    ("https://user:ghp_t0ken@github.com/org/repo.git", "https://github.com/org/repo"),
    ("https://x-access-token:abc@github.com/org/repo", "https://github.com/org/repo"),
    ("https://oauth2@gitlab.com/org/repo", "https://gitlab.com/org/repo"),
    ("https://github.com/org/repo.git?token=abc#frag", "https://github.com/org/repo"),
    # no public URL: the label is left out
    (None, None),
    ("", None),
    ("/work/main", None),
    ("../dindind", None),
    ("./repo:with-colon", None),
    ("file:///work/main", None),
    ("file://localhost/work/main", None),
    ("C:/src/repo", None),
    ("myalias:org/repo", None),                 # an ssh alias from ~/.ssh/config: no public host
    ("https://localhost/org/repo", None),
    ("https://github.com", None),
    ("https://github.com/org/../../etc", None),
    ("ext::ssh -p 22 host.example.com %S repo", None),
    ("https://github.com/org/repo\nInjected: x", None),
    ("https://github.com/org/re po", None),
    ("ftp://ftp.example.com/repo.git", None),
])
def test_public_url(remote, url):
    assert provenance.public_url(remote) == url


@pytest.mark.parametrize("remote,label", [
    ("git@github.com:org/dindind.git", "https://github.com/org/dindind"),
    ("https://me:s3cret@github.com/org/dindind.git", "https://github.com/org/dindind"),
    ("/work/main", None),
])
def test_oci_source_label_of_a_clone(tmp_path, remote, label):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "remote", "add", "origin", remote], check=True)
    labels = provenance.oci_labels("v1.31.2", tmp_path, EPOCH)
    assert labels.get("org.opencontainers.image.source") == label
    assert "s3cret" not in json.dumps(labels) and "/work/main" not in json.dumps(labels)


# ------------------------------------------------------------------ gzip

def test_gzip_blocks_round_trip_deterministic_multi_member(tmp_path):
    data = os.urandom(300_000) + b"a" * 500_000 + os.urandom(123)
    outs = []
    for i in range(2):
        path = tmp_path / f"{i}.gz"
        with open(path, "wb") as f:
            gz = export.GzipBlocks(f, block=64 * 1024, workers=2)
            for piece in chunked(data, 10_000):
                gz.write(piece)
            sha, size = gz.close()
        assert sha == hashlib.sha256(path.read_bytes()).hexdigest() and size == path.stat().st_size
        outs.append(path.read_bytes())
    assert outs[0] == outs[1]
    assert gzip.decompress(outs[0]) == data
    assert outs[0].count(b"\x1f\x8b\x08") >= len(data) // (64 * 1024)        # many members
    if shutil.which("gzip"):
        subprocess.run(["gzip", "-t", tmp_path / "0.gz"], check=True)


def test_gzip_blocks_empty_input_is_valid_gzip(tmp_path):
    with open(tmp_path / "e.gz", "wb") as f:
        export.GzipBlocks(f).close()
    assert gzip.decompress((tmp_path / "e.gz").read_bytes()) == b""


# ------------------------------------------------------------------ the secret scanner

def test_scanner_finds_a_planted_private_key_and_names_image_layer_path(tmp_path):
    findings = scan(tmp_path, {"/etc/kubernetes/pki/sa.key": (pem_key(), 0o600),
                               "/usr/bin/tool": (b"\x7fELF\0" + b"x" * 100, 0o755)})
    assert len(findings) == 1
    text = str(findings[0])
    assert "node image" in text and "layer 1 (sha256:" in text
    assert "/etc/kubernetes/pki/sa.key" in text and "private key" in text
    assert b"PRIVATE" not in text.encode()[text.index("private key") + 11:]      # the key itself is not shown


def test_scanner_skips_ca_bundles(tmp_path):
    assert scan(tmp_path, {"/etc/ssl/certs/x.pem": (pem_key(), 0o644),
                           "/usr/share/ca-certificates/mozilla/y.crt": (pem_key(), 0o644)}) == []


def test_scanner_ignores_pem_type_names_without_a_key(tmp_path):
    text = b'fmt="-----BEGIN %s-----"; t="ENCRYPTED PRIVATE KEY-----" "-----BEGIN PRIVATE KEY-----\\n%s"\0'
    assert scan(tmp_path, {"/usr/lib/libcrypto.so": (text * 3, 0o644)}) == []


def test_scanner_leaves_keys_compiled_into_elf_binaries(tmp_path):
    """GnuTLS ships its FIPS self-test keys inside libgnutls.so: public test vectors, not secrets."""
    lib = b"\x7fELF\2\1\1" + b"\0" * 500 + pem_key() + b"\0" * 100
    assert scan(tmp_path, {"/usr/lib/x86_64-linux-gnu/libgnutls.so.30": (lib, 0o644)}) == []


def test_scanner_finds_a_key_inside_a_binary_across_a_chunk_boundary(tmp_path):
    key = pem_key()
    blob = b"\0" * (release_scan.CHUNK - 40) + key + b"\0" * 1000
    findings = scan(tmp_path, {"/opt/blob.bin": (blob, 0o644)})
    assert [f.path for f in findings] == ["opt/blob.bin"]


KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: {ca}
    server: https://127.0.0.1:6443
  name: k
users:
- name: admin
  user:
{user}
"""


@pytest.mark.parametrize("user, found", [
    ("    client-key-data: " + "QUJD" * 20, "client key"),
    ("    token: 0123456789abcdefXYZ", "kubeconfig with a token"),
    ("    client-certificate-data: " + "QUJD" * 20, None),
])
def test_scanner_kubeconfigs(tmp_path, user, found):
    text = KUBECONFIG.format(ca="QUJD" * 20, user=user).encode()
    findings = scan(tmp_path, {"/root/.kube/config": (text, 0o600)})
    if found:
        assert len(findings) == 1 and found in findings[0].what and findings[0].path == "root/.kube/config"
    else:
        assert findings == []


def test_scanner_bootstrap_tokens_in_kubeadm_files_only(tmp_path):
    token = b"k8s1ab.0123456789abcdef"
    findings = scan(tmp_path, {
        "/etc/kubernetes/kubeadm-join.yaml": (b"discovery:\n  bootstrapToken:\n    token: " + token + b"\n", 0o644),
        "/opt/x/config.yaml": (b"apiVersion: kubeadm.k8s.io/v1beta3\nkind: InitConfiguration\n"
                               b"bootstrapTokens:\n- token: " + token + b"\n", 0o644),
        "/usr/share/misc/words.txt": (b"see " + token + b" for details\n", 0o644),
    })
    assert sorted(f.path for f in findings) == ["etc/kubernetes/kubeadm-join.yaml", "opt/x/config.yaml"]
    assert all("bootstrap token" in f.what for f in findings)


def test_scanner_proxy_credentials(tmp_path):
    findings = scan(tmp_path, {
        "/etc/apt/apt.conf.d/01proxy": (b'Acquire::http::Proxy "http://bob:s3cret@proxy:3128";\n', 0o644),
        "/etc/environment": (b"https_proxy=http://u:p4ss@proxy.corp:8080\n", 0o644),
        "/etc/profile.d/ok.sh": (b"export http_proxy=http://proxy.corp:8080\n", 0o644),
        "/usr/lib/python3/socks.py": (b'proxy_url="socks5h://<username>:<password>@proxy-host"\n'
                                      b'proxy = "http://${USER}:${PASS}@proxy"\n', 0o644),
    })
    assert sorted(f.path for f in findings) == ["etc/apt/apt.conf.d/01proxy", "etc/environment"]


def test_scanner_checks_the_image_config_env(tmp_path):
    findings = scan(tmp_path, {"/hello": (b"hi", 0o644)},
                    env={"HTTP_PROXY": "http://alice:pw@proxy:3128", "PATH": "/usr/bin"})
    assert len(findings) == 1 and findings[0].index == 0 and "proxy" in findings[0].what
    assert "image config" in str(findings[0])


def test_clean_image_passes_and_reports_packages(tmp_path):
    status = (b"Package: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2.15-2+b2\n\n"
              b"Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n"
              b"Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.36-9\n")
    path = archive(tmp_path, "clean", {"/var/lib/dpkg/status": (status, 0o644),
                                       "/etc/os-release": (b'VERSION_CODENAME=bookworm\nID=debian\n', 0o644)})
    rec, findings = export.export_image("node", "x", tmp_path / "o.tar.gz",
                                         save=lambda ref: chunked(path.read_bytes()), echo=lambda *a: None)
    assert findings == []
    assert rec["packages"] == {"bash": "5.2.15-2+b2", "libc6": "2.36-9"}
    assert rec["debian"] == "bookworm"
    assert rec["id"] == image_id(path)
    assert gzip.decompress((tmp_path / "o.tar.gz").read_bytes()) == path.read_bytes()


def test_export_refuses_a_corrupt_stream(tmp_path):
    data = bytearray(archive(tmp_path, "c", {"/a": (b"x" * 5000, 0o644)}).read_bytes())
    data[3000] ^= 0xFF                      # inside the layer
    with pytest.raises(DindindError, match="layer 1 .* has digest"):
        export.export_image("node", "x", tmp_path / "o.tar.gz", save=lambda ref: [bytes(data)],
                             echo=lambda *a: None)


# ------------------------------------------------------------------ writing and verifying a release

def make_deb(tmp_path, name, version="1.0-1"):
    root = tmp_path / f"deb-{name}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: amd64\nMaintainer: t <t@t>\nDescription: t\n")
    (root / "usr" / "share").mkdir(parents=True)
    (root / "usr" / "share" / name).write_text(name)
    out = tmp_path / f"{name}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", root, out], check=True, capture_output=True,
                   env=dict(os.environ, SOURCE_DATE_EPOCH=str(EPOCH)))
    return out


PROVENANCE = {"kubernetes": {"version": "v1.31.2+sample"}, "base": {"image": "b", "suite": "bookworm"},
              "source_date_epoch": EPOCH}


class Fixture:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.archives = {
            "node": archive(tmp_path, "node", {"/etc/node": (b"node" * 1000, 0o644)}),
            "cluster": archive(tmp_path, "cluster", {"/etc/cluster": (os.urandom(200_000), 0o644)}),
        }
        self.images = {n: {"ref": f"dindind-test/{n}:1", "id": image_id(p)} for n, p in self.archives.items()}
        self.debs = [make_deb(tmp_path, "kubelet"), make_deb(tmp_path, "kubectl", "1.31.2+sample-1")]
        self.saved = []

    def save(self, ref):
        self.saved.append(ref)
        name = ref.split("/")[1].split(":")[0]
        return chunked(self.archives[name].read_bytes(), 65536)

    def write(self, dest, version="v1_test", **kw):
        return release_manifest.write_release(dest, version, kw.pop("images", self.images), self.debs, PROVENANCE,
                                     save=self.save, echo=lambda *a: None, **kw)


@pytest.fixture
def rel(tmp_path):
    return Fixture(tmp_path)


def files_of(dest):
    return sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())


def test_release_layout_and_manifest(rel, tmp_path):
    dest = tmp_path / "out" / "v1_test"
    manifest = rel.write(dest)
    assert files_of(dest) == ["SHA256SUMS", "debs/kubectl_1.31.2+sample-1_amd64.deb", "debs/kubelet_1.0-1_amd64.deb",
                              "images/cluster.tar.gz", "images/node.tar.gz", "manifest.json"]
    assert json.loads((dest / "manifest.json").read_text()) == manifest
    for rel_path, art in manifest["artifacts"].items():
        assert art["sha256"] == hashlib.sha256((dest / rel_path).read_bytes()).hexdigest()
        assert art["size"] == (dest / rel_path).stat().st_size
    assert manifest["images"]["node"]["id"] == rel.images["node"]["id"]
    assert manifest["images"]["node"]["scan"]["findings"] == 0
    assert manifest["debs"]["kubectl"]["version"] == "1.31.2+sample-1"
    assert manifest["registry"] == {}
    assert manifest["provenance"]["base"]["packages"] == {"node": {}, "cluster": {}}
    assert [p.name for p in dest.parent.iterdir()] == ["v1_test"]            # no temp dirs left
    if shutil.which("sha256sum"):
        subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=dest, check=True)
    assert verify.verify(dest, echo=lambda *a: None) == manifest


def test_every_flipped_byte_is_caught_and_named(rel, tmp_path):
    dest = tmp_path / "v1_test"
    rel.write(dest)
    for name in files_of(dest):
        for where in (0.1, 0.5, 0.97):
            copy = tmp_path / "copy"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(dest, copy)
            data = bytearray((copy / name).read_bytes())
            data[int(len(data) * where)] ^= 0x01
            (copy / name).write_bytes(bytes(data))
            with pytest.raises(DindindError) as err:
                verify.verify(copy, echo=lambda *a: None)
            assert name in err.value.message, (name, where, err.value.render())


def test_a_consistent_but_corrupt_image_archive_is_caught(rel, tmp_path):
    """Checksums and manifest made to agree with a broken archive: reading it still fails."""
    dest = tmp_path / "v1_test"
    rel.write(dest)
    gz = dest / "images" / "cluster.tar.gz"
    raw = bytearray(gzip.decompress(gz.read_bytes()))
    raw[len(raw) // 2] ^= 0xFF              # inside the random layer
    gz.write_bytes(gzip.compress(bytes(raw), mtime=0))
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["artifacts"]["images/cluster.tar.gz"].update(
        sha256=hashlib.sha256(gz.read_bytes()).hexdigest(), size=gz.stat().st_size)
    release_manifest._finish(dest, manifest)
    with pytest.raises(DindindError) as err:
        verify.verify(dest, echo=lambda *a: None)
    assert "images/cluster.tar.gz" in err.value.message
    assert "digest" in err.value.render()


def test_missing_and_extra_files_are_named(rel, tmp_path):
    dest = tmp_path / "v1_test"
    rel.write(dest)
    (dest / "debs" / "kubelet_1.0-1_amd64.deb").unlink()
    (dest / "notes.txt").write_text("hi")
    with pytest.raises(DindindError) as err:
        verify.verify(dest, echo=lambda *a: None)
    assert "kubelet_1.0-1_amd64.deb" in err.value.message and "notes.txt" in err.value.message


def test_verify_of_a_missing_dir(tmp_path):
    with pytest.raises(DindindError, match="not a release directory"):
        verify.verify(tmp_path / "nope")


@pytest.fixture
def no_walking(monkeypatch):
    """Any walk of a directory fails the test."""
    def walk(*args, **kw):
        raise AssertionError("the directory was walked")

    monkeypatch.setattr(Path, "rglob", walk)
    monkeypatch.setattr(Path, "iterdir", walk)
    monkeypatch.setattr(os, "scandir", walk)
    monkeypatch.setattr(os, "walk", walk)


def _junk(root, n):
    for i in range(n):
        (root / f"d{i % 10}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i % 10}" / f"f{i}").write_text("x")


@pytest.mark.parametrize("manifest", [
    None, b"", b"{not json", b"[]", b'{"format": "something/1"}', b'{"name": "a web app manifest"}',
    "directory", "symlink",
], ids=["missing", "empty", "not-json", "list", "other-format", "no-format", "directory", "symlink"])
def test_verify_refuses_a_directory_that_is_not_a_release_before_walking_it(tmp_path, manifest, no_walking):
    dest = tmp_path / "usr"
    _junk(dest, 300)
    if manifest == "directory":
        (dest / "manifest.json").mkdir()
    elif manifest == "symlink":
        (tmp_path / "real.json").write_text(json.dumps({"format": release_manifest.FORMAT}))
        (dest / "manifest.json").symlink_to(tmp_path / "real.json")
    elif manifest is not None:
        (dest / "manifest.json").write_bytes(manifest)
    with pytest.raises(DindindError) as err:
        verify.verify(dest, echo=lambda *a: None)
    assert err.value.message.startswith(f"{dest} is not a release directory: ")
    assert "manifest.json" in err.value.message and err.value.hint
    assert err.value.detail is None and len(err.value.render().splitlines()) == 2


def test_verify_of_a_big_fake_release_lists_at_most_20_problems(tmp_path):
    dest = tmp_path / "fake"
    _junk(dest, 500)
    (dest / "manifest.json").write_text(json.dumps({"format": release_manifest.FORMAT, "artifacts": {}}))
    with pytest.raises(DindindError) as err:
        verify.verify(dest, echo=lambda *a: None)
    lines = err.value.detail.splitlines()
    assert len(lines) == verify.MAX_SHOWN + 1
    assert lines[-1].startswith("  ... and ") and lines[-1].endswith(" more")
    assert int(lines[-1].split()[2]) > 500 - verify.MAX_SHOWN          # at least one problem per file
    assert len(err.value.render()) < 4000


def test_verify_stops_walking_a_huge_tree(tmp_path, monkeypatch):
    monkeypatch.setattr(verify, "MAX_ENTRIES", 100)
    dest = tmp_path / "fake"
    _junk(dest, 500)
    (dest / "manifest.json").write_text(json.dumps({"format": release_manifest.FORMAT, "artifacts": {}}))
    hashed = []
    monkeypatch.setattr(verify.fsutil, "sha256_file", lambda p: hashed.append(p) or "0" * 64)
    with pytest.raises(DindindError) as err:
        verify.verify(dest, echo=lambda *a: None)
    assert "more than 100 files and folders" in err.value.render()
    assert hashed == []


def test_rerun_reuses_archives_and_keeps_push_records(rel, tmp_path):
    dest = tmp_path / "v1_test"
    rel.write(dest)
    assert len(rel.saved) == 2
    records = {n: {"ref": f"r/dindind/{n}:v1_test", "digest": "sha256:" + "a" * 64, "id": rel.images[n]["id"],
                   "verified_by": "registry manifest"} for n in release_manifest.IMAGES}
    push.record_push(dest, "r", records)
    verify.verify(dest, echo=lambda *a: None)
    inode = (dest / "images" / "node.tar.gz").stat().st_ino
    manifest = rel.write(dest)
    assert len(rel.saved) == 2                                              # nothing exported again
    assert (dest / "images" / "node.tar.gz").stat().st_ino == inode         # linked, not copied
    assert manifest["registry"]["r"] == records
    verify.verify(dest, echo=lambda *a: None)
    # a new node image: exported again, and the old push records no longer describe the release
    rel.archives["node"] = archive(tmp_path, "node", {"/etc/node": (b"new", 0o644)})
    images = dict(rel.images, node={"ref": "dindind-test/node:1", "id": image_id(rel.archives["node"])})
    manifest = rel.write(dest, images=images)
    assert rel.saved[2:] == ["dindind-test/node:1"] and manifest["registry"] == {}


def test_secret_found_writes_nothing(rel, tmp_path):
    rel.archives["node"] = archive(tmp_path, "node", {"/root/.ssh/id_rsa": (pem_key(), 0o600)})
    images = dict(rel.images, node={"ref": "dindind-test/node:1", "id": image_id(rel.archives["node"])})
    dest = tmp_path / "out" / "v1_test"
    with pytest.raises(DindindError) as err:
        rel.write(dest, images=images)
    assert "secret" in err.value.message and "/root/.ssh/id_rsa" in err.value.render()
    assert list((tmp_path / "out").iterdir()) == []


def test_an_interrupted_release_leaves_no_release_dir(rel, tmp_path):
    def dying_save(ref):
        yield rel.archives["node"].read_bytes()[:5000]
        raise KeyboardInterrupt

    rel.save = dying_save
    dest = tmp_path / "out" / "v1_test"
    with pytest.raises(KeyboardInterrupt):
        rel.write(dest)
    assert list((tmp_path / "out").iterdir()) == []


def test_an_image_that_changed_behind_the_tag_is_refused(rel, tmp_path):
    images = dict(rel.images, node={"ref": "dindind-test/node:1", "id": "sha256:" + "0" * 64})
    with pytest.raises(EngineError, match="not the built node image"):
        rel.write(tmp_path / "v", images=images)
    assert not (tmp_path / "v").exists()


def test_refuses_to_replace_a_folder_that_is_not_a_release(rel, tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "precious.txt").write_text("keep me")
    with pytest.raises(DindindError, match="not a dindind release"):
        rel.write(tmp_path / "home")
    assert (tmp_path / "home" / "precious.txt").read_text() == "keep me"


# ------------------------------------------------------------------ pushing, with a fake engine

class FakeRegistry:
    def __init__(self, images):
        self.ids = {v["id"] for v in images.values()}
        self.served = {}
        self.tags = {}
        self.fail_on = None
        self.status = None

    def install(self, monkeypatch):
        monkeypatch.setattr(engine, "image_id", lambda ref: ref if ref in self.ids else None)
        monkeypatch.setattr(docker_images, "tag", lambda image, ref: self.tags.__setitem__(ref, image))
        monkeypatch.setattr(docker_registry, "push", self.push)
        monkeypatch.setattr(docker_registry, "registry_manifest_digest", self.head)
        monkeypatch.setattr(docker_registry, "pull_by_digest", lambda repo, digest: self.tags[f"{repo}:v1_test"])

    def push(self, ref, echo=print):
        if self.fail_on and self.fail_on in ref:
            raise EngineError(f"docker push {ref} failed: connection refused")
        digest = "sha256:" + hashlib.sha256(ref.encode()).hexdigest()
        self.served[ref] = digest
        return digest

    def head(self, ref):
        if self.status:
            err = EngineError(f"HTTP {self.status}")
            err.status = self.status if self.status != "unreachable" else None
            raise err
        return self.served.get(ref)


def test_a_failed_push_records_nothing_and_the_rerun_completes_it(rel, tmp_path, monkeypatch):
    dest = tmp_path / "v1_test"
    rel.write(dest)
    reg = FakeRegistry(rel.images)
    reg.install(monkeypatch)
    reg.fail_on = "/dindind/cluster:"
    with pytest.raises(EngineError, match="cluster"):
        push.push_release(dest, "127.0.0.1:5000", echo=lambda *a: None)
    assert "127.0.0.1:5000/dindind/node:v1_test" in reg.served                 # the node push went through ...
    assert json.loads((dest / "manifest.json").read_text())["registry"] == {}  # ... yet nothing is recorded
    verify.verify(dest, echo=lambda *a: None)
    reg.fail_on = None
    manifest = push.push_release(dest, "127.0.0.1:5000", echo=lambda *a: None)
    recs = manifest["registry"]["127.0.0.1:5000"]
    assert {n: r["digest"] for n, r in recs.items()} == \
        {n: reg.served[f"127.0.0.1:5000/dindind/{n}:v1_test"] for n in release_manifest.IMAGES}
    assert verify.verify(dest, echo=lambda *a: None)["registry"] == manifest["registry"]


def test_a_digest_the_registry_does_not_serve_is_not_recorded(rel, tmp_path, monkeypatch):
    dest = tmp_path / "v1_test"
    rel.write(dest)
    reg = FakeRegistry(rel.images)
    reg.install(monkeypatch)
    monkeypatch.setattr(docker_registry, "registry_manifest_digest", lambda ref: "sha256:" + "f" * 64)
    with pytest.raises(EngineError, match="the registry serves sha256:f+ for .*node"):
        push.push_release(dest, "127.0.0.1:5000", echo=lambda *a: None)
    assert json.loads((dest / "manifest.json").read_text())["registry"] == {}


@pytest.mark.parametrize("status", [401, None])
def test_a_registry_that_cannot_be_asked_directly_is_checked_by_pulling_by_digest(rel, tmp_path, monkeypatch,
                                                                                    status):
    dest = tmp_path / "v1_test"
    rel.write(dest)
    reg = FakeRegistry(rel.images)
    reg.install(monkeypatch)
    reg.status = status or "unreachable"
    manifest = push.push_release(dest, "registry.example.com", echo=lambda *a: None)
    assert {r["verified_by"] for r in manifest["registry"]["registry.example.com"].values()} == {"pull by digest"}


# ------------------------------------------------------------------ the doit interface (no engine needed)

def run_doit(project, *args):
    exe = shutil.which("doit") or str(Path(os.sys.executable).parent / "doit")
    env = dict(os.environ)
    env.pop("DINDIND_CONFIG", None)
    return subprocess.run([exe, *args], cwd=project, env=env, text=True, capture_output=True, timeout=300)


def test_doit_release_verify_takes_a_dir_and_names_the_bad_file(rel, project, tmp_path):
    dest = tmp_path / "v1_test"
    rel.write(dest)
    ok = run_doit(project, "release:verify", "--dir", str(dest))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "image archives ok" in ok.stdout
    data = bytearray((dest / "images" / "node.tar.gz").read_bytes())
    data[len(data) // 2] ^= 0x40
    (dest / "images" / "node.tar.gz").write_bytes(bytes(data))
    bad = run_doit(project, "release:verify", "--dir", str(dest))
    assert bad.returncode != 0
    assert "ERROR: release" in bad.stderr and "images/node.tar.gz" in bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr


def test_doit_release_verify_of_a_directory_that_is_not_a_release(project, tmp_path):
    junk = tmp_path / "usr"
    _junk(junk, 2000)
    proc = run_doit(project, "release:verify", "--dir", str(junk))
    assert proc.returncode != 0
    assert f"ERROR: {junk} is not a release directory: it has no manifest.json" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert len(proc.stdout + proc.stderr) < 2000


def test_doit_release_rejects_a_bad_version_before_building(project):
    proc = run_doit(project, "release", "--version", "not a tag!")
    assert proc.returncode != 0
    assert "ERROR: invalid release version 'not a tag!'" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (project / "artifacts" / "kubernetes").exists()          # nothing was built


def test_doit_lists_the_release_tasks_and_their_options(project):
    listed = run_doit(project, "list", "--all").stdout
    assert re.search(r"^release\s", listed, re.M) and re.search(r"^release:verify\s", listed, re.M)
    helped = run_doit(project, "help", "release").stdout
    assert "--version" in helped and "--push" in helped and "--dir" in helped


# ------------------------------------------------------------------ reproducible .debs and rendered files

def _checkout(base, stamp):
    """A project-like root: the real deb templates, a stand-in tree and CNI plugins, every file stamped ``stamp``."""
    from dindind.build import cni
    from dindind.build.sources import tree as sources

    root = Path(base)
    shutil.copytree(ROOT / "templates" / "debs", root / "templates" / "debs")
    layout = Layout(root)
    sbin = root / "tree" / "kubernetes" / "server" / "bin"
    sbin.mkdir(parents=True)
    (root / "tree" / "kubernetes" / "version").write_text("v1.31.2\n")
    for name in ("kubelet", "kubeadm", "kubectl"):
        (sbin / name).write_text(f"#!/bin/sh\necho {name}\n")
    (layout.cni / "bin").mkdir(parents=True)
    for name in cni.CNI_PLUGINS:
        (layout.cni / "bin" / name).write_text(f"#!/bin/sh\necho {name}\n")
    (layout.cni / "VERSION").write_text("1.1.1\n")
    for p in [root, *root.rglob("*")]:
        os.utime(p, (stamp, stamp))
    return layout, sources.tree_paths(root / "tree")


def test_two_clean_builds_give_identical_debs(tmp_path):
    built = []
    checkouts = [(tmp_path / "checkout-a", 1_600_000_000, 0o022),
                 (tmp_path / "elsewhere" / "checkout-b", 1_750_000_000, 0o077)]
    for where, stamp, umask in checkouts:
        layout, paths = _checkout(where, stamp)
        old = os.umask(umask)
        try:
            for name, spec in debs.deb_specs(paths, layout).items():
                debs.build_deb(spec, layout.deb(name), EPOCH)
        finally:
            os.umask(old)
        built.append({p.name: p.read_bytes() for p in sorted(layout.debs.glob("*.deb"))})
        time.sleep(1.1)                     # a different wall-clock second for the second build
    assert set(built[0]) == {f"{n}.deb" for n in ("kubernetes-cni", "kubelet", "kubectl", "kubeadm")}
    assert built[0] == built[1]


def test_rendered_node_files_are_identical_across_checkouts(tmp_path):
    from dindind.build import images

    tree = {"images": [{"name": "pause", "refs": ["registry.k8s.io/pause:3.10"], "tarball": "x"}],
            "version": "v1.31.2"}
    outs = []
    for i in range(2):
        checkout = tmp_path / f"c{i}"
        shutil.copytree(ROOT / "templates" / "node", checkout / "templates" / "node")
        ctx = {**images.node_context(_cfg(), tree, {"tags": ["dindind/base:x"]}, ["kubelet"])}
        render.render_tree(checkout / "templates" / "node", ctx, checkout / "out")
        outs.append({p.relative_to(checkout / "out").as_posix(): p.read_bytes()
                     for p in sorted((checkout / "out").rglob("*")) if p.is_file()})
    assert outs[0] and outs[0] == outs[1]


def _cfg():
    from dindind.base import config

    return config.parse("", "/tmp/x.yaml")


def test_the_layout_puts_releases_under_artifacts():
    assert release_manifest.default_dir(Layout(Path("/p")), "v1_x") == Path("/p/artifacts/release/v1_x")


def test_zlib_gzip_members_are_what_docker_load_sniffs():
    """docker load detects gzip by its magic (1f 8b 08); every member starts with it."""
    assert export._gzip_member(b"abc", 1)[:3] == b"\x1f\x8b\x08"
    assert zlib.decompress(export._gzip_member(b"abc", 1), 31) == b"abc"


# ------------------------------------------------------------------ the registry API check (a fake registry over HTTP)

@pytest.fixture
def fake_registry():
    """A HTTP server on 127.0.0.1 answering HEAD /v2/<name>/manifests/<tag> like a registry."""
    import http.server
    import threading

    seen = []
    served = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            seen.append((self.path, self.headers.get("Accept", "")))
            status, digest = served.get(self.path, (404, None))
            self.send_response(status)
            if digest:
                self.send_header("Docker-Content-Digest", digest)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield SimpleNamespace(host=f"127.0.0.1:{srv.server_address[1]}", served=served, seen=seen)
    srv.shutdown()
    srv.server_close()
    t.join(10)


def test_registry_manifest_digest_reads_the_header_with_manifest_accept_types(fake_registry):
    digest = "sha256:" + "b" * 64
    fake_registry.served["/v2/dindind/node/manifests/v1_x"] = (200, digest)
    assert docker_registry.registry_manifest_digest(f"{fake_registry.host}/dindind/node:v1_x") == digest
    path, accept = fake_registry.seen[-1]
    assert path == "/v2/dindind/node/manifests/v1_x"
    assert "application/vnd.docker.distribution.manifest.v2+json" in accept
    assert "application/vnd.oci.image.manifest.v1+json" in accept


def test_registry_manifest_digest_missing_and_refused(fake_registry):
    assert docker_registry.registry_manifest_digest(f"{fake_registry.host}/dindind/node:nope") is None
    fake_registry.served["/v2/dindind/node/manifests/locked"] = (401, None)
    with pytest.raises(EngineError) as err:
        docker_registry.registry_manifest_digest(f"{fake_registry.host}/dindind/node:locked")
    assert err.value.status == 401


def test_registry_manifest_digest_unreachable():
    import socket

    with socket.socket() as s:              # a port nothing listens on once this closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(EngineError, match="cannot reach the registry"):
        docker_registry.registry_manifest_digest(f"127.0.0.1:{port}/dindind/node:x", timeout=5)


@pytest.mark.parametrize("ref, host, name, tag", [
    ("127.0.0.1:5000/dindind/node:v1_x", "127.0.0.1:5000", "dindind/node", "v1_x"),
    ("registry.example.com/team/dindind/cluster:1.0", "registry.example.com", "team/dindind/cluster", "1.0"),
    ("docker.io/me/dindind/node:v1", "registry-1.docker.io", "me/dindind/node", "v1"),
    ("localhost:5000/dindind/node", "localhost:5000", "dindind/node", "latest"),
])
def test_ref_parsing(ref, host, name, tag):
    repo, t = docker_images.split_ref(ref)
    assert t == tag and docker_registry._registry_host(repo) == (host, name)


@pytest.mark.parametrize("host, loopback", [("127.0.0.1:5000", True), ("localhost:5000", True),
                                            ("[::1]:5000", True), ("127.8.9.1", True),
                                            ("10.0.0.1:5000", False), ("registry.example.com", False)])
def test_loopback_registries_use_plain_http(host, loopback):
    assert docker_registry._is_loopback(host) is loopback


def test_provenance_records_the_pinned_node_runtime_and_the_go_build(tmp_path):
    from dindind.base import config as config_mod
    from dindind.release import make

    cfg = config_mod.parse("", tmp_path / "c.yaml", base_dir=tmp_path)
    runtime = make._node_runtime(cfg)
    assert runtime["suite"] == "forky"
    assert runtime["containerd"] == {"version": cfg.node["containerd_version"], "sha256": cfg.node["containerd_sha256"]}
    assert runtime["runc"]["version"] == "1.3.6+ds1-1"
    assert make._node_runtime(config_mod.parse("node:\n  runtime_suite: null\n", tmp_path / "c.yaml",
                                               base_dir=tmp_path)) is None
    (tmp_path / "go-build.json").write_text('{"go": ["go1.26.8"], "modules": {"k8s.io/api": "v0.37.2"}}')
    assert make._go_build({"root": str(tmp_path)})["modules"] == {"k8s.io/api": "v0.37.2"}
    assert make._go_build({"root": str(tmp_path / "sample")}) is None
