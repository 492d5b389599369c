"""The CNI plugins: from Debian's containernetworking-plugins or a release tgz.

:func:`fetch_cni` leaves exactly this behind (:func:`cni_files`)::

    artifacts/cni/bin/<plugin>     one per name in CNI_PLUGINS, mode 0755
    artifacts/cni/VERSION          the upstream version, one line (e.g. 1.1.1)

The kubernetes-cni .deb (:mod:`dindind.debs`) packages those files into
/opt/cni/bin. Both sources go through one path: get the plugins into a
temporary folder, compare them with what is already there, and swap the
folder in whole only if something differs, so a repeated run writes nothing
and doit sees no change.
"""

import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from dindind.base import download, extract, fsutil, proc
from dindind.base.errors import CommandError, DindindError, InputError
from dindind.build import debfields

# What kubernetes-cni ships: the plugins of containernetworking/plugins that
# both Debian's package (usr/lib/cni/) and the upstream release tgz (1.x) hold.
CNI_PLUGINS = (
    "bandwidth", "bridge", "dhcp", "firewall", "host-device", "host-local", "ipvlan", "loopback",
    "macvlan", "portmap", "ptp", "sbr", "static", "tuning", "vlan", "vrf",
)
DEBIAN_PLUGIN_DIR = "usr/lib/cni"
# What a version must look like before it reaches a .deb control file.
_VERSION_OK = re.compile(r"^[0-9][0-9A-Za-z.+~]*$")
_URL_VERSION = re.compile(r"v([0-9]+\.[0-9]+\.[0-9]+)(?![0-9])")
_APT_NO_LISTS = ("Unable to locate package", "has no installation candidate",
                 "Can't select candidate version", "No packages found", "Can't find a source to download")


# ---------------------------------------------------------------- pure

def cni_files(layout):
    """Every file :func:`fetch_cni` writes, sorted as CNI_PLUGINS then VERSION (for doit targets)."""
    return [layout.cni / "bin" / p for p in CNI_PLUGINS] + [layout.cni / "VERSION"]


def upstream_version(deb_version):
    """1:1.1.1+ds1-3+b5 -> 1.1.1: drop the epoch, the Debian revision and a +ds/+dfsg repack suffix."""
    v = deb_version.strip()
    if ":" in v:
        v = v.split(":", 1)[1]
    if "-" in v:
        v = v.rsplit("-", 1)[0]
    return re.sub(r"[+~](ds|dfsg)[0-9.]*$", "", v)


def url_version(url, sha256):
    """The ``vX.Y.Z`` in a release URL without its ``v``, else ``0.0.0+<sha256[:12]>``."""
    path = urllib.parse.urlsplit(url).path
    m = _URL_VERSION.search(path.rsplit("/", 1)[-1]) or _URL_VERSION.search(path)
    return m.group(1) if m else f"0.0.0+{sha256[:12]}"


def check_version(version, where):
    """Refuse a version that cannot go into a .deb Version field."""
    if not _VERSION_OK.match(version or ""):
        raise InputError(f"{where}: {version!r} is not a usable version",
                         hint="a version starts with a digit and holds only letters, digits and . + ~")
    return version


# ---------------------------------------------------------------- the step

def fetch_cni(cfg, layout):
    """Put the configured CNI plugins and their version into ``layout.cni``.

    Side effects: may download into ``layout.cache/debs`` (debian) or
    ``layout.cache/downloads`` (tgz); works in a temporary folder under
    ``layout.tmp`` (always removed); replaces ``layout.cni`` whole, and only
    when its content differs. Returns ``{"changed": bool, "version": str}``.
    """
    c = cfg.cni
    layout.tmp.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cni.", dir=layout.tmp))
    try:
        if c["source"] == "debian":
            plugin_dir, version = _from_debian(c["package"], layout, work)
        elif c["source"] == "tgz":
            plugin_dir, version = _from_tgz(c["url"], c["sha256"], layout, work, download.limits(cfg))
        else:
            raise ValueError(f"unknown cni.source {c['source']!r}")
        check_version(version, f"the CNI plugins' version ({c['source']})")
        plugins = _pick_plugins(plugin_dir, c)
        if _installed_matches(layout, plugins, version):
            return {"changed": False, "version": version}
        with fsutil.atomic_dir(layout.cni) as tmp:
            os.chmod(tmp, 0o755)
            (tmp / "bin").mkdir(mode=0o755)
            os.chmod(tmp / "bin", 0o755)
            for name, src in plugins.items():
                fsutil.copy_file(src, tmp / "bin" / name, mode=0o755)
            (tmp / "VERSION").write_text(version + "\n")
            os.chmod(tmp / "VERSION", 0o644)
        return {"changed": True, "version": version}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _pick_plugins(plugin_dir, c):
    where = c["package"] if c["source"] == "debian" else c["url"]
    missing = [p for p in CNI_PLUGINS if not (plugin_dir / p).is_file()]
    if missing:
        raise InputError(f"the CNI plugins from {where} lack {', '.join(missing)}",
                         hint="use a containernetworking-plugins package or cni-plugins release "
                              "that ships all of: " + " ".join(CNI_PLUGINS))
    return {p: plugin_dir / p for p in CNI_PLUGINS}


def _installed_matches(layout, plugins, version):
    """True if ``layout.cni`` already holds exactly these plugins (bytes and mode) and version."""
    bin_dir = layout.cni / "bin"
    try:
        if (layout.cni / "VERSION").read_text() != version + "\n":
            return False
        if sorted(os.listdir(bin_dir)) != sorted(plugins):
            return False
        for name, src in plugins.items():
            dst = bin_dir / name
            if dst.stat().st_mode & 0o777 != 0o755 or dst.stat().st_size != src.stat().st_size:
                return False
            if fsutil.sha256_file(dst) != fsutil.sha256_file(src):
                return False
    except OSError:
        return False
    return True


# ---------------------------------------------------------------- debian

def _apt_hint(package):
    return (f"run apt-get update (the package lists do not know {package}), "
            "or set cni.source: tgz with a cni-plugins release URL")


def _candidate(package):
    """The version apt would download for ``package``."""
    try:
        out = proc.run(["apt-cache", "policy", package], env={"LC_ALL": "C"},
                       hint="apt is needed for cni.source: debian; or set cni.source: tgz")
    except CommandError as exc:
        if exc.returncode == 127:
            raise
        raise DindindError(f"cannot ask apt about {package}", hint=_apt_hint(package),
                           detail=exc.output.strip() or None) from None
    m = re.search(r"^\s*Candidate:\s*(\S+)\s*$", out, re.M)
    if not m or m.group(1) == "(none)":
        raise DindindError(f"apt has no candidate version of {package}: the package lists are missing "
                           "or do not have it", hint=_apt_hint(package), detail=out.strip() or None)
    return m.group(1)


def _deb_name_glob(package, version):
    # apt-get download names files <package>_<version, ':' quoted as %3a>_<arch>.deb
    return f"{package}_{version.replace(':', '%3a')}_*.deb"


def _download_deb(package, version, layout):
    """The cached .deb of ``package`` at ``version``: reused if present, else fetched with apt-get download."""
    cache = layout.cache / "debs"
    cache.mkdir(parents=True, exist_ok=True)
    for hit in sorted(cache.glob(_deb_name_glob(package, version))):
        try:
            if debfields.read(hit, "Package", "Version") == {"Package": package, "Version": version}:
                return hit
        except InputError:
            pass
        hit.unlink()        # corrupt or not what its name says: fetch it again
    # download into a private folder, then rename into the cache: no partial file is ever cached
    tmp = Path(tempfile.mkdtemp(prefix=f".{package}.", suffix=".tmp", dir=cache))
    try:
        try:
            proc.run(["apt-get", "download", f"{package}={version}"], cwd=tmp, env={"LC_ALL": "C"})
        except CommandError as exc:
            if exc.returncode == 127:
                raise
            if any(s in exc.output for s in _APT_NO_LISTS):
                raise DindindError(f"apt-get cannot download {package}: the package lists are missing "
                                   "or do not have it", hint=_apt_hint(package),
                                   detail=exc.output.strip() or None) from None
            exc.hint = exc.hint or ("check the network and the apt sources, "
                                    "or set cni.source: tgz with a cni-plugins release URL")
            raise
        debs = sorted(tmp.glob("*.deb"))
        if len(debs) != 1:
            raise InputError(f"apt-get download {package} left {len(debs)} .deb files, expected one",
                             hint="run apt-get download by hand to see what it does")
        dest = cache / debs[0].name
        os.replace(debs[0], dest)
        return dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _from_debian(package, layout, work):
    version = _candidate(package)
    deb = _download_deb(package, version, layout)
    root = work / "deb"
    try:
        proc.run(["dpkg-deb", "-x", deb, root])
    except CommandError as exc:
        if exc.returncode == 127:
            raise
        raise InputError(f"cannot extract {deb}", detail=exc.output.strip() or None,
                         hint=f"delete {deb} and run again") from None
    return root / DEBIAN_PLUGIN_DIR, upstream_version(debfields.read(deb, "Version")["Version"])


# ---------------------------------------------------------------- tgz

def fetch_tgz(url, sha256, layout, limits=None):
    """The verified cached copy of ``url``: ``layout.cache/downloads/<sha256>.tgz``.

    A cached file whose digest no longer matches is deleted and fetched again;
    a verified cache hit makes no request.
    """
    return download.cached(url, sha256, layout.cache / "downloads" / f"{sha256}.tgz", "cni.url / cni.sha256",
                           limits)


def _from_tgz(url, sha256, layout, work, limits=None):
    archive = fetch_tgz(url, sha256, layout, limits)
    root = work / "tgz"
    extract.safe_extract(archive, root, what="CNI plugins tarball")
    # the release tgz holds the plugins at its top; accept one wrapping folder too
    candidates = sorted({p.parent for p in root.rglob("bridge") if p.is_file()},
                        key=lambda d: (len(d.relative_to(root).parts), str(d)))
    plugin_dir = candidates[0] if candidates else root
    return plugin_dir, url_version(url, sha256)


__all__ = ["CNI_PLUGINS", "cni_files", "fetch_cni", "fetch_tgz", "upstream_version", "url_version"]
