"""dindind.cni: the CNI plugins from Debian's package or a release tgz."""

import functools
import hashlib
import http.server
import io
import os
import shutil
import subprocess
import tarfile
import threading

import pytest

from dindind.build import cni
from dindind.base import config, proc
from dindind.base.errors import DindindError, InputError
from dindind.base.layout import Layout

PACKAGE = "containernetworking-plugins"


def _cfg(tmp_path, **cni_keys):
    lines = "".join(f"  {k}: \"{v}\"\n" for k, v in cni_keys.items())
    path = tmp_path / "config.yaml"
    text = f"cni:\n{lines}" if lines else ""
    path.write_text(text)
    return config.parse(text, path)


def _tree_state(layout):
    """(name, mode, mtime_ns, inode, sha256) of everything under layout.cni: any write changes it."""
    out = [("cni", os.stat(layout.cni).st_ino)]
    for p in sorted(layout.cni.rglob("*")):
        st = p.stat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
        out.append((str(p.relative_to(layout.cni)), st.st_mode, st.st_mtime_ns, st.st_ino, digest))
    return out


def _make_tgz(path, plugins=cni.CNI_PLUGINS, prefix="./", extra=()):
    with tarfile.open(path, "w:gz") as tf:
        for name in plugins:
            data = f"#!/bin/sh\necho {name}\n".encode()
            ti = tarfile.TarInfo(prefix + name)
            ti.size, ti.mode = len(data), 0o755
            tf.addfile(ti, io.BytesIO(data))
        for name, data in extra:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- pure helpers

def test_cni_files_lists_every_plugin_and_the_version(tmp_path):
    layout = Layout(tmp_path)
    files = cni.cni_files(layout)
    assert files[-1] == layout.cni / "VERSION"
    assert [p.name for p in files[:-1]] == list(cni.CNI_PLUGINS)
    assert {"bridge", "host-local", "portmap", "loopback"} <= set(cni.CNI_PLUGINS)
    assert all(p.parent == layout.cni / "bin" for p in files[:-1])


@pytest.mark.parametrize("deb_version, upstream", [
    ("1.1.1+ds1-3+b5", "1.1.1"),
    ("1:1.1.1+ds1-3", "1.1.1"),
    ("1.4.0-1", "1.4.0"),
    ("1.2.0+dfsg-2", "1.2.0"),
    ("0.9.1", "0.9.1"),
])
def test_upstream_version_strips_epoch_revision_and_repack(deb_version, upstream):
    assert cni.upstream_version(deb_version) == upstream


def test_url_version():
    sha = "ab" * 32
    assert cni.url_version("https://github.com/containernetworking/plugins/releases/download/v1.5.1/"
                           "cni-plugins-linux-amd64-v1.5.1.tgz", sha) == "1.5.1"
    assert cni.url_version("http://127.0.0.1:8000/plugins.tgz", sha) == f"0.0.0+{sha[:12]}"
    assert cni.url_version("file:///srv/v1.2.3/plugins.tgz", sha) == "1.2.3"


# ---------------------------------------------------------------- debian

@pytest.fixture(scope="session")
def debian_version():
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        pytest.fail("apt-get and dpkg-deb are needed for the Debian CNI source")
    out = subprocess.run(["apt-cache", "policy", PACKAGE], capture_output=True, text=True,
                         env=dict(os.environ, LC_ALL="C")).stdout
    cand = [line.split(":", 1)[1].strip() for line in out.splitlines() if "Candidate:" in line]
    assert cand and cand[0] != "(none)", f"no candidate for {PACKAGE}: run apt-get update"
    return cand[0]


def test_debian_source_fetches_the_real_plugins(tmp_path, debian_version, monkeypatch):
    layout = Layout(tmp_path / "proj")
    cfg = _cfg(tmp_path)                                     # the default: source debian
    assert cfg.cni["source"] == "debian" and cfg.cni["package"] == PACKAGE

    result = cni.fetch_cni(cfg, layout)

    assert result == {"changed": True, "version": cni.upstream_version(debian_version)}
    assert (layout.cni / "VERSION").read_text() == cni.upstream_version(debian_version) + "\n"
    assert sorted(os.listdir(layout.cni / "bin")) == sorted(cni.CNI_PLUGINS)
    for p in cni.cni_files(layout):
        assert p.is_file()
    bridge = layout.cni / "bin" / "bridge"
    assert bridge.stat().st_mode & 0o777 == 0o755
    assert bridge.read_bytes()[:4] == b"\x7fELF"              # the real thing, not a stand-in
    cached = list((layout.cache / "debs").iterdir())
    assert [p.name for p in cached] == [f"{PACKAGE}_{debian_version.replace(':', '%3a')}_amd64.deb"]
    assert list(layout.tmp.iterdir()) == []                    # the work folder is gone

    # again: the cached .deb is reused (no apt-get download) and nothing is written
    calls = []
    real_run = proc.run

    def spy(argv, **kw):
        calls.append([str(a) for a in argv])
        return real_run(argv, **kw)

    monkeypatch.setattr(cni.proc, "run", spy)
    before = _tree_state(layout)
    assert cni.fetch_cni(cfg, layout)["changed"] is False
    assert _tree_state(layout) == before
    assert not [c for c in calls if c[:2] == ["apt-get", "download"]]

    # a damaged cached .deb is fetched again, and the same plugins land unchanged
    cached[0].write_bytes(b"not a deb")
    calls.clear()
    assert cni.fetch_cni(cfg, layout)["changed"] is False
    assert [c for c in calls if c[:2] == ["apt-get", "download"]]
    assert _tree_state(layout) == before


def test_debian_source_without_package_lists_says_run_apt_get_update(tmp_path, monkeypatch):
    lists = tmp_path / "lists"
    (lists / "partial").mkdir(parents=True)
    apt_conf = tmp_path / "apt.conf"
    apt_conf.write_text(f'Dir::State::Lists "{lists}/";\nDir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n')
    monkeypatch.setenv("APT_CONFIG", str(apt_conf))
    layout = Layout(tmp_path / "proj")

    for package in (PACKAGE, "no-such-package-dindind"):
        cfg = _cfg(tmp_path, package=package)
        with pytest.raises(DindindError) as err:
            cni.fetch_cni(cfg, layout)
        assert "run apt-get update" in err.value.hint
        assert package in err.value.message
    assert not layout.cni.exists()
    assert not list((layout.cache / "debs").glob("*.deb"))


# ---------------------------------------------------------------- tgz

class _Quiet(http.server.SimpleHTTPRequestHandler):
    requests = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).requests.append(self.path)
        super().do_GET()


@pytest.fixture
def http_dir(tmp_path, monkeypatch):
    """A folder served on 127.0.0.1 (ephemeral port); yields (folder, base URL, request log)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    served = tmp_path / "served"
    served.mkdir()
    log = []
    handler = type("Handler", (_Quiet,), {"requests": log})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_tgz_source_downloads_verifies_caches_and_extracts(tmp_path, http_dir):
    served, base, log = http_dir
    sha = _make_tgz(served / "cni-plugins-linux-amd64-v1.5.1.tgz")
    url = f"{base}/cni-plugins-linux-amd64-v1.5.1.tgz"
    cfg = _cfg(tmp_path, source="tgz", url=url, sha256=sha)
    layout = Layout(tmp_path / "proj")

    assert cni.fetch_cni(cfg, layout) == {"changed": True, "version": "1.5.1"}

    assert (layout.cni / "VERSION").read_text() == "1.5.1\n"
    assert sorted(os.listdir(layout.cni / "bin")) == sorted(cni.CNI_PLUGINS)
    assert (layout.cni / "bin" / "portmap").read_text() == "#!/bin/sh\necho portmap\n"
    assert (layout.cni / "bin" / "portmap").stat().st_mode & 0o777 == 0o755
    assert os.listdir(layout.cache / "downloads") == [f"{sha}.tgz"]
    assert len(log) == 1

    # up to date: no request, nothing written
    before = _tree_state(layout)
    assert cni.fetch_cni(cfg, layout)["changed"] is False
    assert _tree_state(layout) == before
    assert len(log) == 1

    # a plugin changed by hand is put back
    (layout.cni / "bin" / "bridge").write_text("tampered")
    assert cni.fetch_cni(cfg, layout)["changed"] is True
    assert (layout.cni / "bin" / "bridge").read_text() == "#!/bin/sh\necho bridge\n"
    assert len(log) == 1


def test_tgz_with_a_bad_checksum_is_refused_and_nothing_is_cached(tmp_path, http_dir):
    served, base, log = http_dir
    actual = _make_tgz(served / "cni.tgz")
    expected = "0" * 64
    url = f"{base}/cni.tgz"
    cfg = _cfg(tmp_path, source="tgz", url=url, sha256=expected)
    layout = Layout(tmp_path / "proj")

    with pytest.raises(InputError) as err:
        cni.fetch_cni(cfg, layout)

    msg = err.value.message
    assert url in msg and expected in msg and actual in msg
    assert log == ["/cni.tgz"]
    assert list((layout.cache / "downloads").iterdir()) == []
    assert not layout.cni.exists()
    assert list(layout.tmp.iterdir()) == []


def test_tgz_without_a_version_in_its_url_and_in_a_folder(tmp_path):
    archive = tmp_path / "plugins.tgz"
    sha = _make_tgz(archive, prefix="cni-plugins/")
    cfg = _cfg(tmp_path, source="tgz", url=archive.as_uri(), sha256=sha)
    layout = Layout(tmp_path / "proj")
    assert cni.fetch_cni(cfg, layout)["version"] == f"0.0.0+{sha[:12]}"
    assert sorted(os.listdir(layout.cni / "bin")) == sorted(cni.CNI_PLUGINS)


def test_tgz_missing_a_plugin_is_refused(tmp_path):
    archive = tmp_path / "plugins-v1.0.0.tgz"
    sha = _make_tgz(archive, plugins=[p for p in cni.CNI_PLUGINS if p != "portmap"])
    cfg = _cfg(tmp_path, source="tgz", url=archive.as_uri(), sha256=sha)
    layout = Layout(tmp_path / "proj")
    with pytest.raises(InputError, match="lack portmap"):
        cni.fetch_cni(cfg, layout)
    assert not layout.cni.exists()


def test_tgz_escaping_entry_is_refused(tmp_path):
    archive = tmp_path / "evil-v1.0.0.tgz"
    sha = _make_tgz(archive, extra=[("../escaped", b"x")])
    cfg = _cfg(tmp_path, source="tgz", url=archive.as_uri(), sha256=sha)
    layout = Layout(tmp_path / "proj")
    with pytest.raises(InputError, match="escape"):
        cni.fetch_cni(cfg, layout)
    assert not layout.cni.exists()
    assert not (tmp_path / "proj" / "artifacts" / "escaped").exists()


def test_unreachable_url_is_an_input_error(tmp_path, http_dir):
    _, base, _ = http_dir
    cfg = _cfg(tmp_path, source="tgz", url=f"{base}/missing-v1.0.0.tgz", sha256="1" * 64)
    layout = Layout(tmp_path / "proj")
    with pytest.raises(InputError, match="HTTP 404"):
        cni.fetch_cni(cfg, layout)
    assert list((layout.cache / "downloads").iterdir()) == []
