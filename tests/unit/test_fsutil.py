"""fsutil: atomic writes, stale-temp cleanup, and safe extraction (crafted escapes and fuzzing)."""

import base64
import hashlib
import io
import os
import stat
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from dindind.base import fsutil
from dindind.base.errors import InputError


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "a" / "out.bin"
    with pytest.raises(RuntimeError):
        with fsutil.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert not target.exists()
    assert list((tmp_path / "a").iterdir()) == []


def test_write_if_changed_keeps_mtime_on_same_content(tmp_path):
    p = tmp_path / "f"
    assert fsutil.write_if_changed(p, b"x") is True
    os.utime(p, (1, 1))
    assert fsutil.write_if_changed(p, b"x") is False
    assert p.stat().st_mtime == 1
    assert fsutil.write_if_changed(p, b"y") is True


def test_remove_stale_removes_only_temporaries(tmp_path):
    keep = [tmp_path / ".doit.db", tmp_path / ".lock", tmp_path / "images" / "node.json",
            tmp_path / "debs" / "kubelet.deb"]
    stale = [tmp_path / "images" / ".node-image.tar.zst.abc123.tmp", tmp_path / "debs" / ".kubelet.deb.x.deb.tmp"]
    stale_dirs = [tmp_path / "cni" / ".cni.k2j3.tmp", tmp_path / "debs" / ".kubelet.staging.abc", tmp_path / ".kubernetes.old"]
    for p in keep + stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    for d in stale_dirs:
        (d / "inner").mkdir(parents=True)
        (d / "inner" / "f").write_text("x")
    removed = fsutil.remove_stale(tmp_path)
    assert sorted(removed) == sorted(str(p) for p in stale + stale_dirs)
    assert all(p.exists() for p in keep)
    assert not any(p.exists() for p in stale + stale_dirs)


def test_stamp_is_stale_when_its_image_or_a_tag_is_gone(tmp_path, monkeypatch):
    import json

    from dindind.docker import engine

    images = {"sha256:abc": "sha256:abc", "repo/node:v1": "sha256:abc"}
    monkeypatch.setattr(engine, "image_id", lambda ref: images.get(ref))
    stamp = tmp_path / "node.json"
    stamp.write_text(json.dumps({"id": "sha256:abc", "tags": ["repo/node:v1"]}))
    assert engine.stamp_uptodate(stamp) is True
    images["repo/node:v1"] = "sha256:other"          # retagged behind dindind's back
    assert engine.stamp_uptodate(stamp) is False
    del images["repo/node:v1"]                        # tag removed
    assert engine.stamp_uptodate(stamp) is False
    assert engine.stamp_uptodate(tmp_path / "missing.json") is False


# ---------------------------------------------------------------- safe extraction

def _entry(name, kind="file", data=b"boom", link="", mode=0o644, **attrs):
    return dict(name=name, kind=kind, data=data, link=link, mode=mode, **attrs)


_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
          "fifo": tarfile.FIFOTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE}


def _tar_bytes(entries, gz=False):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e["name"])
            ti.type, ti.mode, ti.linkname = _TYPES[e["kind"]], e["mode"], e["link"]
            ti.mtime = e.get("mtime", 1_700_000_000)
            ti.uid = ti.gid = e.get("uid", 0)
            ti.pax_headers = e.get("pax", {})
            if e["kind"] == "char":
                ti.devmajor, ti.devminor = 1, 3          # /dev/null
            if e["kind"] == "file":
                ti.size = len(e["data"])
                tf.addfile(ti, io.BytesIO(e["data"]))
            else:
                tf.addfile(ti)
    return buf.getvalue()


def _tar(path, entries, gz=False):
    Path(path).write_bytes(_tar_bytes(entries, gz))
    return Path(path)


def _snapshot(top, volatile=("a/b",)):
    """Everything under ``top`` (links not followed): any create, write, chmod or delete changes it.

    Walks by descriptor (deep trees pass PATH_MAX). The mtime of ``volatile`` folders is left out: the
    destination's parent holds its temporary folder.
    """
    out = []
    for dirpath, dirnames, filenames, dirfd in os.fwalk(top):
        for name in dirnames + filenames:
            st_ = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            content = None
            if stat.S_ISREG(st_.st_mode):
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dirfd)
                with open(fd, "rb") as f:
                    content = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st_.st_mode):
                content = os.readlink(name, dir_fd=dirfd)
            rel = os.path.relpath(os.path.join(dirpath, name), top)
            mtime = None if rel in volatile else st_.st_mtime_ns
            out.append((rel, stat.S_IFMT(st_.st_mode), stat.S_IMODE(st_.st_mode), mtime, st_.st_ino, content))
    return sorted(out)


class Box:
    """A sentinel tree around the destination: ``sentinel/keep``, ``sentinel/x/``, ``sentinel/a/b/dest/old``.

    '..' climbs from the destination's temporary folder land in sentinel/a/b, sentinel/a and sentinel; absolute
    names and link targets point at sentinel/x. Nothing may change anywhere under sentinel but dest.
    """

    def __init__(self, base):
        self.sentinel = Path(base) / "sentinel"
        self.outside = self.sentinel / "x"
        self.outside.mkdir(parents=True)
        (self.sentinel / "keep").write_text("keep")
        (self.outside / "keep").write_text("keep")
        self.dest = self.sentinel / "a" / "b" / "dest"
        self.dest.mkdir(parents=True)
        (self.dest / "old").write_text("old")
        self.before = _snapshot(self.sentinel)
        self.etc_passwd = _stat_or_none("/etc/passwd")

    def unchanged(self):
        return _snapshot(self.sentinel) == self.before and _stat_or_none("/etc/passwd") == self.etc_passwd

    def outside_unchanged(self):
        """Unchanged but for dest itself (after a successful extraction)."""
        def keep(row):
            return not (row[0] == "a/b/dest" or row[0].startswith("a/b/dest/"))
        return [r for r in _snapshot(self.sentinel) if keep(r)] == [r for r in self.before if keep(r)]


def _stat_or_none(p):
    try:
        st_ = os.stat(p)
    except OSError:
        return None
    return (st_.st_mode, st_.st_size, st_.st_mtime_ns, st_.st_nlink)


@pytest.fixture
def box(tmp_path):
    return Box(tmp_path)


def _cve_2025_4517(outside):
    """The public proof of concept's shape: a chain of symlinks to long nested directory names, whose lexical
    path stays inside while the resolved path, past PATH_MAX, does not; then a link "escape" climbing out
    through it, and a file written through that link."""
    comp = "d" * 247
    steps = "abcdefghijklmnop"
    entries, path = [], ""
    for step in steps:
        entries.append(_entry(os.path.join(path, comp), "dir", mode=0o755))
        entries.append(_entry(os.path.join(path, step), "symlink", link=comp))
        path = os.path.join(path, comp)
    linkpath = os.path.join(*steps, "l" * 254)
    entries.append(_entry(linkpath, "symlink", link="../" * len(steps)))
    # lexically "a/.../p" + one folder up: inside; really the root's parent's parent's parent: sentinel/
    entries.append(_entry("escape", "symlink", link=linkpath + "/.." * 3 + "/x"))
    entries.append(_entry("escape/pwned", "file", data=b"pwned"))
    return entries


def _real_dirs_chain(outside):
    """The same trick without the links in the path: real nested directories, a link at the bottom that
    climbs back to the root (lexically fine), then a link through it with '..' after names."""
    comp = "d" * 247
    deep = "/".join([comp] * 16)
    return [_entry(deep, "dir", mode=0o755),
            _entry(f"{deep}/up", "symlink", link="../" * 16),
            _entry("escape", "symlink", link=f"{deep}/up/" + "../" * 8 + "sentinel/x"),
            _entry("escape/pwned", "file", data=b"pwned")]


ESCAPES = {
    "absolute": lambda box: ([_entry(str(box.outside / "pwned"))], str(box.outside / "pwned")),
    "dotdot": lambda box: ([_entry("ok"), _entry("../../../x/pwned")], "../../../x/pwned"),
    "dotdot-inside-name": lambda box: ([_entry("a/../../x")], "a/../../x"),
    "symlink-dir-then-file": lambda box: ([_entry("dir", "symlink", link=str(box.outside)),
                                           _entry("dir/pwned")], "dir"),
    "cve-2025-4517": lambda box: (_cve_2025_4517(box.outside), "a"),
    "hardlink-out": lambda box: ([_entry("h", "hardlink", link="../../../keep")], "h"),
    "hardlink-etc-passwd": lambda box: ([_entry("passwd", "hardlink", link="/etc/passwd")], "passwd"),
    "hardlink-not-earlier": lambda box: ([_entry("h", "hardlink", link="later"), _entry("later")], "h"),
    "char-device": lambda box: ([_entry("null", "char")], "null"),
    "block-device": lambda box: ([_entry("sda", "block")], "sda"),
    "fifo": lambda box: ([_entry("ok"), _entry("pipe", "fifo")], "pipe"),
    "nul-in-name": lambda box: ([_entry("a", pax={"path": "a\0b"})], "a\0b"),
    "empty-file-name": lambda box: ([_entry("./")], "./"),
    "file-over-directory": lambda box: ([_entry("d", "dir"), _entry("d/f"), _entry("d")], "d"),
}


@pytest.mark.parametrize("shape", sorted(ESCAPES))
def test_escaping_archives_are_refused_and_nothing_is_written(box, tmp_path, shape):
    entries, offender = ESCAPES[shape](box)
    if shape == "empty-file-name":          # tarfile writes "./" as a directory: make it a file by hand
        data = bytearray(_tar_bytes([_entry("x")]))
        data[0:512] = _header("./", b"0")
        archive = tmp_path / "evil.tar"
        archive.write_bytes(bytes(data))
    else:
        archive = _tar(tmp_path / "evil.tar", entries)
    with pytest.raises(InputError) as info:
        fsutil.safe_extract(archive, box.dest, what="test tarball")
    message = info.value.message
    assert message.startswith(f"refusing test tarball {archive}: entry {offender!r}"), message
    assert box.unchanged()
    assert not list(box.sentinel.glob("a/b/.dest.*"))


def _header(name, typeflag, size=0):
    """A raw ustar header (tarfile would normalise what we want to keep)."""
    ti = tarfile.TarInfo(name)
    ti.size = size
    buf = bytearray(ti.tobuf(format=tarfile.USTAR_FORMAT))
    buf[156:157] = typeflag
    buf[148:156] = b" " * 8
    buf[148:156] = b"%06o\0 " % sum(buf)
    return bytes(buf)


@pytest.mark.parametrize("shape", ["symlink-dir-then-file", "cve-2025-4517", "real-dirs-chain", "link-through-link",
                                   "absolute-link", "climbing-link", "dotdot-after-name"])
def test_escaping_symlinks_are_refused_where_symlinks_are_allowed(box, tmp_path, shape):
    entries, offender = {
        "symlink-dir-then-file": ESCAPES["symlink-dir-then-file"](box),
        "cve-2025-4517": (_cve_2025_4517(box.outside), "/".join("abcdefghijklmnop") + "/" + "l" * 254),
        "real-dirs-chain": (_real_dirs_chain(box.outside), "escape"),
        # inside the root, but an entry under a link is never written through it
        "link-through-link": ([_entry("sub", "dir"), _entry("sub/up", "symlink", link=".."),
                               _entry("sub/up/f")], "sub/up/f"),
        "absolute-link": ([_entry("l", "symlink", link="/etc")], "l"),
        "climbing-link": ([_entry("sub/l", "symlink", link="../..")], "sub/l"),
        "dotdot-after-name": ([_entry("p", "symlink", link="."), _entry("l", "symlink", link="p/p/../..")], "l"),
    }[shape]
    archive = _tar(tmp_path / "evil.tar", entries)
    with pytest.raises(InputError) as info:
        fsutil.safe_extract(archive, box.dest, what="test tarball", symlinks=True)
    assert info.value.message.startswith(f"refusing test tarball {archive}: entry {offender!r}"), info.value.message
    assert box.unchanged()


def test_cve_2025_4517_shape_is_refused_at_its_first_link_by_default(box, tmp_path):
    archive = _tar(tmp_path / "evil.tar", _cve_2025_4517(box.outside))
    with pytest.raises(InputError) as info:
        fsutil.safe_extract(archive, box.dest)
    assert f"archive {archive}: entry 'a' is a symbolic link; this archive may hold only files" in info.value.message
    assert box.unchanged()


def test_too_many_entries_and_too_many_bytes_are_refused(box, tmp_path):
    archive = _tar(tmp_path / "big.tar", [_entry(f"f{i}", data=b"12345678") for i in range(6)])
    with pytest.raises(InputError) as info:
        fsutil.safe_extract(archive, box.dest, max_entries=5)
    assert "entry 'f5' is one too many: at most 5 entries" in info.value.message
    assert box.unchanged()
    with pytest.raises(InputError) as info:
        fsutil.safe_extract(archive, box.dest, max_bytes=20)
    assert "entry 'f2' takes the extracted size past the limit of 20 bytes" in info.value.message
    assert box.unchanged()
    # hard links are copies: they count too
    archive = _tar(tmp_path / "links.tar", [_entry("f", data=b"12345678")] +
                   [_entry(f"h{i}", "hardlink", link="f") for i in range(3)])
    with pytest.raises(InputError) as info:
        fsutil.safe_extract(archive, box.dest, max_bytes=30)
    assert "entry 'h2' takes the extracted size past" in info.value.message
    assert box.unchanged()
    assert fsutil.MAX_EXTRACT_BYTES == 20 << 30 and fsutil.MAX_EXTRACT_ENTRIES == 200_000


def test_limits_span_every_archive_of_one_extraction(box, tmp_path):
    one = _tar(tmp_path / "one.tar", [_entry("a", data=b"x" * 8)])
    two = _tar(tmp_path / "two.tar", [_entry("b", data=b"x" * 8)])
    with pytest.raises(InputError) as info:
        fsutil.safe_extract([one, two], box.dest, max_bytes=12)
    assert info.value.message.startswith(f"refusing archive {two}: entry 'b' takes")
    assert box.unchanged()


def test_modes_owner_and_mtimes(box, tmp_path):
    archive = _tar(tmp_path / "ok.tar.gz", [
        _entry("./bin", "dir", mode=0o3777, mtime=1_000_000),
        _entry("./bin/tool", data=b"#!/bin/sh\n", mode=0o6777, uid=1234, mtime=2_000_000),
        _entry("bin/ro", mode=0o400),
        _entry("bin/copy", "hardlink", link="./bin/tool"),
        _entry("./", "dir", mode=0o777),
    ], gz=True)
    fsutil.safe_extract(archive, box.dest)
    assert box.outside_unchanged()
    assert sorted(p.name for p in box.dest.iterdir()) == ["bin"]          # dest replaced whole
    tool, copy, bindir = box.dest / "bin/tool", box.dest / "bin/copy", box.dest / "bin"
    assert stat.S_IMODE(tool.stat().st_mode) == 0o755                       # no setuid, setgid, group/other write
    assert stat.S_IMODE(bindir.stat().st_mode) == 0o755                     # no sticky or setgid
    assert stat.S_IMODE((box.dest / "bin/ro").stat().st_mode) == 0o600     # the owner can always read and write
    assert stat.S_IMODE(box.dest.stat().st_mode) == 0o755
    assert tool.stat().st_uid == os.getuid() and tool.stat().st_mtime == 2_000_000
    assert bindir.stat().st_mtime == 1_000_000
    assert copy.read_bytes() == b"#!/bin/sh\n" and copy.stat().st_nlink == 1 and tool.stat().st_nlink == 1
    assert stat.S_IMODE(copy.stat().st_mode) == 0o755


def test_symlinks_inside_the_root_are_kept_when_asked(box, tmp_path):
    archive = _tar(tmp_path / "links.tar", [
        _entry("lib/tool", data=b"bin"), _entry("bin/tool", "symlink", link="../lib//./tool"),
        _entry("bin/self", "symlink", link="."), _entry("bin/later", "symlink", link="tool"),
        _entry("bin/later", data=b"a later entry replaces the link"),
    ])
    with pytest.raises(InputError) as info:
        fsutil.safe_extract(archive, box.dest)
    assert "entry 'bin/tool' is a symbolic link; this archive may hold only files and directories" \
        in info.value.message
    fsutil.safe_extract(archive, box.dest, symlinks=True)
    assert os.readlink(box.dest / "bin/tool") == "../lib/tool"
    assert (box.dest / "bin/tool").read_bytes() == b"bin"
    assert os.readlink(box.dest / "bin/self") == "."
    assert not (box.dest / "bin/later").is_symlink()
    assert box.outside_unchanged()


def test_corrupt_archives_are_named(box, tmp_path):
    good = _tar_bytes([_entry("big", data=b"x" * 10000)], gz=True)
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good[: len(good) // 2])
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 64)
    for archive in (cut, junk, tmp_path / "missing.tar"):
        with pytest.raises(InputError) as info:
            fsutil.safe_extract(archive, box.dest, what="test tarball")
        assert info.value.message.startswith(f"cannot read test tarball {archive}"), info.value.message
        assert box.unchanged()


def test_extract_tar_never_writes_through_a_link_already_in_the_root(box, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "sub").symlink_to(box.outside)
    with tarfile.open(fileobj=io.BytesIO(_tar_bytes([_entry("sub/pwned"), _entry("sub", "dir")]))) as tf:
        with pytest.raises(InputError) as info:
            fsutil.extract_tar(tf, root, "test archive")
    assert "entry 'sub/pwned' lies under 'sub', which is a link" in info.value.message
    assert box.unchanged()


def test_extract_tar_renames_and_skips(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    data = _tar_bytes([_entry("top", "dir"), _entry("top/a/f", data=b"f"), _entry("other/g"),
                       _entry("top/h", "hardlink", link="top/a/f")])
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        fsutil.extract_tar(tf, root, "test archive",
                           rename=lambda n: n.split("/", 1)[1] if n.startswith("top/") else None)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == ["a", "a/f", "h"]
    assert (root / "h").read_bytes() == b"f"


# ---------------------------------------------------------------- the other extracting callers

class _FakeClient:
    def __init__(self, data):
        self.data = data

    def get_archive(self, container, path):
        return iter([self.data[i:i + 700] for i in range(0, len(self.data), 700)]), {}


def test_get_dir_strips_the_folder_and_skips_links(box, tmp_path, monkeypatch):
    from dindind.docker import containers, engine

    data = _tar_bytes([_entry("e2e", "dir"), _entry("e2e/junit_01.xml", data=b"<xml/>"),
                       _entry("e2e/link", "symlink", link="/etc/passwd"), _entry("e2e/sub/f", data=b"f")])
    monkeypatch.setattr(engine, "client", lambda: _FakeClient(data))
    with fsutil.atomic_dir(box.dest) as tmp:
        containers.get_dir("top", "/var/lib/dindind/e2e", tmp)
    assert sorted(p.relative_to(box.dest).as_posix() for p in box.dest.rglob("*")) == ["junit_01.xml", "sub",
                                                                                          "sub/f"]
    assert box.outside_unchanged()


@pytest.mark.parametrize("shape", ["dotdot", "absolute", "hardlink-out", "fifo"])
def test_get_dir_refuses_escaping_entries(box, monkeypatch, shape):
    from dindind.docker import containers, engine

    entries, offender = {"dotdot": ([_entry("e2e/../../../x/pwned")], "e2e/../../../x/pwned"),
                         "absolute": ([_entry(str(box.outside / "pwned"))], str(box.outside / "pwned")),
                         "hardlink-out": ([_entry("e2e/f"), _entry("e2e/h", "hardlink", link="e2e/../../keep")],
                                          None),
                         "fifo": ([_entry("e2e/f"), _entry("e2e/p", "fifo")], None)}[shape]
    monkeypatch.setattr(engine, "client", lambda: _FakeClient(_tar_bytes(entries)))
    if offender is None:                     # not a file or directory: skipped, never written
        with fsutil.atomic_dir(box.dest) as tmp:
            containers.get_dir("top", "/var/lib/dindind/e2e", tmp)
        assert sorted(p.name for p in box.dest.iterdir()) == ["f"]
        assert box.outside_unchanged()
        return
    with pytest.raises(InputError) as info:
        with fsutil.atomic_dir(box.dest) as tmp:
            containers.get_dir("top", "/var/lib/dindind/e2e", tmp)
    assert info.value.message.startswith(f"refusing copy of /var/lib/dindind/e2e from top: entry {offender!r}")
    assert box.unchanged()


@pytest.mark.parametrize("shape", ["cve-2025-4517", "real-dirs-chain"])
def test_get_dir_never_writes_through_link_chains(box, monkeypatch, shape):
    from dindind.docker import containers, engine

    entries = {"cve-2025-4517": _cve_2025_4517, "real-dirs-chain": _real_dirs_chain}[shape](box.outside)
    entries = [dict(e, name=f"e2e/{e['name']}") for e in entries]
    monkeypatch.setattr(engine, "client", lambda: _FakeClient(_tar_bytes(entries)))
    with fsutil.atomic_dir(box.dest) as tmp:
        containers.get_dir("top", "/var/lib/dindind/e2e", tmp)
    # the links are skipped, so "escape" is a plain folder here
    assert (box.dest / "escape" / "pwned").read_bytes() == b"pwned"
    assert not any(p.is_symlink() for p in box.dest.rglob("*"))
    assert box.outside_unchanged()


def test_cluster_logs_unpack_only_inside_var_log(box, tmp_path, monkeypatch):
    from dindind.cluster import host
    from dindind.base.layout import Layout

    good = _tar_bytes([_entry("./", "dir"), _entry("./syslog", data=b"log"),
                       _entry("./containers/x.log", "symlink", link="/var/log/pods/x/0.log")], gz=True)
    evil = _tar_bytes([_entry("./", "dir"), _entry("./first", data=b"partial"), _entry("../../../../../x/pwned")],
                      gz=True)
    tars = {"node-1": good, "node-2": evil}

    class Shell:
        def __init__(self, name):
            self.top, self.nodes, self.load_balancers = None, sorted(tars), []

        def top_run(self, cmd, check=True):
            return 0, "[]"

        def run(self, node, cmd, check=True):
            return 0, (base64.b64encode(tars[node]).decode() if "tar -C" in cmd[-1] else "journal")

    monkeypatch.setattr(host, "Shell", Shell)
    layout = Layout(box.sentinel / "a" / "b" / "dest" / "proj")
    dest = host.logs(None, layout, "c1", out=lambda *a: None)
    assert (dest / "node-1/var-log/syslog").read_bytes() == b"log"
    assert not (dest / "node-1/var-log/containers/x.log").exists()
    assert not (dest / "node-2/var-log").exists()                       # no half-unpacked folder
    error = (dest / "node-2/var-log.error").read_text()
    assert "cannot unpack /var/log of node-2: refusing /var/log archive of node-2: entry " \
           "'../../../../../x/pwned' escapes" in error
    assert box.outside_unchanged()


# ---------------------------------------------------------------- fuzzing

_SAFE_PARTS = ["a", "b", "a", "b", ".", "", "c" * 120, "d" * 255]
_safe_names = st.lists(st.sampled_from(_SAFE_PARTS), min_size=1, max_size=4).map("/".join).filter(
    lambda n: any(p not in ("", ".") for p in n.split("/")))
_any_names = st.lists(st.sampled_from(_SAFE_PARTS + ["..", ".."]), min_size=1, max_size=5).map("/".join)
_odd_names = st.sampled_from(["/", "./", "/abs", "./a", "a/", "../x", "a/../b", "@outside/pwned"])
_names = st.one_of(_safe_names, _any_names, _odd_names)
_safe_targets = st.builds(lambda ups, name: "../" * ups + name, st.integers(0, 2), _safe_names | st.just("."))
_targets = st.one_of(_safe_targets, st.lists(st.sampled_from(["..", "a", "b", "."]), min_size=1, max_size=5)
                     .map("/".join), st.sampled_from(["@outside", "@outside/keep", "/etc/passwd", "../../..",
                                                      "a/" + "../" * 4, ".."]))
_SAFE_KINDS = ["file"] * 3 + ["dir"] * 3 + ["symlink"] * 3 + ["hardlink"] * 2
_ALL_KINDS = _SAFE_KINDS + ["fifo", "char"]


@st.composite
def _archives(draw):
    """Random archives: half of them plausible (symlinks allowed; may still be refused), half with hostile names,
    link targets and types."""
    hostile = draw(st.booleans())
    names, targets, kinds = (_names, _targets, _ALL_KINDS) if hostile else (_safe_names, _safe_targets, _SAFE_KINDS)
    entries = []
    for _ in range(draw(st.integers(1, 10))):
        kind = draw(st.sampled_from(kinds))
        link = ""
        if kind == "hardlink" and entries and not hostile:
            link = draw(st.sampled_from([e["name"] for e in entries]))
        elif kind in ("symlink", "hardlink"):
            link = draw(targets)
        entries.append(_entry(draw(names), kind, data=draw(st.binary(max_size=16)), link=link,
                              mode=draw(st.sampled_from([0o644, 0o755, 0o4755, 0o7777, 0o000]))))
    return entries, draw(st.booleans()) if hostile else True


_FUZZ = settings(max_examples=200, deadline=None, database=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(_archives())
def test_fuzzed_archives_extract_inside_the_root_or_raise_input_error(case):
    entries, symlinks = case
    with tempfile.TemporaryDirectory() as base:
        box = Box(base)
        entries = [dict(e, name=e["name"].replace("@outside", str(box.outside)),
                        link=e["link"].replace("@outside", str(box.outside))) for e in entries]
        archive = Path(base) / "fuzz.tar"
        _tar(archive, entries)
        try:
            fsutil.safe_extract(archive, box.dest, symlinks=symlinks)
        except InputError:
            assert box.unchanged()
            return
        assert box.outside_unchanged()
        real = os.path.realpath(box.dest)
        for dirpath, dirnames, filenames in os.walk(box.dest):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                assert os.path.islink(p) or stat.S_ISREG(os.lstat(p).st_mode) or stat.S_ISDIR(os.lstat(p).st_mode)
                assert stat.S_IMODE(os.lstat(p).st_mode) & ~0o755 == 0 or os.path.islink(p)
                resolved = os.path.realpath(p)
                assert resolved == real or resolved.startswith(real + os.sep), (p, resolved)
