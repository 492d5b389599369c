"""The Kubernetes node packages: kubelet, kubectl, kubeadm, kubernetes-cni (+ cri-tools).

Each package is a :class:`DebSpec`, computed without I/O from the Kubernetes
tree's paths and the layout: its input files (each with the path and mode it
gets in the package), its template tree ``templates/debs/<package>/`` (which
mirrors the package's filesystem, ``DEBIAN/control.j2`` included) and the
template context. Versions are *not* in the spec: they are read at build time
from a file that is itself a ``file_dep`` (``kubernetes/version``, or
``artifacts/cni/VERSION`` for kubernetes-cni), because that file may not exist
yet when doit loads its tasks.

:func:`build_deb` (the doit action) stages the package with explicit modes
and every mtime set to the build epoch, then runs ``dpkg-deb --build`` with
SOURCE_DATE_EPOCH, so the same inputs give byte-identical .debs in any
checkout, on any day, under any umask.

The packages follow upstream's (kubernetes/release) layout: binaries in
/usr/bin, CNI plugins in /opt/cni/bin; kubelet carries kubelet.service and
the kubeadm drop-in (10-kubeadm.conf), so a node with kubelet alone already
runs it the way kubeadm expects.
"""

import hashlib
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from dindind.build import cni
from dindind.base import fsutil, proc, render
from dindind.base.config import VERSION_RE
from dindind.base.errors import CommandError, InputError
from dindind.base.layout import DEBS, deb_version

ARCH = "amd64"
MAINTAINER = "dindind <dindind@localhost>"
HOMEPAGE = "https://kubernetes.io"
# Bump when build_deb makes different bytes from the same inputs (it is part of spec_key).
FORMAT = 1

# Upstream's (kubernetes/release) runtime dependencies, without version bounds.
DEPENDS = {
    "kubernetes-cni": ("iptables",),
    "cri-tools": (),
    "kubelet": ("iptables", "iproute2", "socat", "util-linux", "mount", "ebtables", "ethtool",
                "conntrack", "kubernetes-cni"),
    "kubectl": (),
    "kubeadm": ("kubelet", "kubectl", "kubernetes-cni"),      # + cri-tools when it is built
}

# The package built only when the tree has a crictl, and who depends on it then.
OPTIONAL = "cri-tools"
OPTIONAL_DEPENDS = ("kubeadm",)

# How a package's version is derived from its version file at build time.
#   kubernetes: v1.31.2-rc.1+x -> 1.31.2~rc.1+x-1 (layout.deb_version)
#   upstream:   1.1.1 -> 1.1.1-1
#   minor:      v1.31.2 -> 1.31.0-1 (cri-tools is released once per Kubernetes minor;
#               its binary is never run at build time, it may be for another machine)
VERSION_SCHEMES = ("kubernetes", "upstream", "minor")
_MAINTSCRIPTS = {"preinst", "postinst", "prerm", "postrm", "config"}


@dataclass(frozen=True)
class DebSpec:
    """One package to build: everything :func:`build_deb` needs but the version's value."""

    name: str
    inputs: tuple                   # ((src Path, dest path inside the package, mode), ...)
    template_dir: Path
    version_file: Path
    version_scheme: str             # one of VERSION_SCHEMES
    context: dict = field(default_factory=dict, hash=False)

    @property
    def files(self):
        """Input paths that must exist at build time, in spec order."""
        return tuple(src for src, _, _ in self.inputs) + (self.version_file,)


# ---------------------------------------------------------------- pure

def _context(name, has_crictl):
    depends = list(DEPENDS[name])
    if name in OPTIONAL_DEPENDS and has_crictl:
        depends.append(OPTIONAL)
    return {
        "package": name,
        "architecture": ARCH,
        "maintainer": MAINTAINER,
        "homepage": HOMEPAGE,
        "depends": depends,
    }


def deb_specs(paths, layout, has_crictl=False):
    """The :class:`DebSpec` of every package, by name in ``layout.DEBS`` order (pure).

    ``paths`` is the tree's :class:`dindind.sources.TreePaths`; cri-tools is
    built only when ``has_crictl``.
    """
    bins = paths.binaries
    inputs = {
        "kubernetes-cni": tuple((layout.cni / "bin" / p, f"opt/cni/bin/{p}", 0o755) for p in cni.CNI_PLUGINS),
        "kubelet": ((bins["kubelet"], "usr/bin/kubelet", 0o755),),
        "kubectl": ((bins["kubectl"], "usr/bin/kubectl", 0o755),),
        "kubeadm": ((bins["kubeadm"], "usr/bin/kubeadm", 0o755),),
        "cri-tools": ((paths.crictl, "usr/bin/crictl", 0o755),),
    }
    out = {}
    for name in DEBS:
        if name == "cri-tools" and not has_crictl:
            continue
        if name == "kubernetes-cni":
            version_file, scheme = layout.cni / "VERSION", "upstream"
        else:
            version_file, scheme = paths.version, ("minor" if name == "cri-tools" else "kubernetes")
        out[name] = DebSpec(
            name=name,
            inputs=inputs[name],
            template_dir=layout.templates / "debs" / name,
            version_file=version_file,
            version_scheme=scheme,
            context=_context(name, has_crictl),
        )
    return out


def specs(cfg, layout, has_crictl=None):
    """:func:`deb_specs` for the configured Kubernetes source.

    ``has_crictl=None`` looks for ``kubernetes/server/bin/crictl`` in the tree
    (one stat; the only I/O here).
    """
    from dindind.build.sources import tree as sources

    paths = sources.tree_paths(sources.tree_root(cfg, layout))
    if has_crictl is None:
        has_crictl = paths.crictl.is_file()
    return deb_specs(paths, layout, has_crictl)


def spec_inputs(spec, layout=None):
    """Every file a package is built from, sorted (doit ``file_dep``): inputs, version file, templates."""
    return sorted(set(spec.files) | set(render.template_files(spec.template_dir)))


def spec_key(spec):
    """The non-file part of a spec, JSON-able (doit ``config_changed``)."""
    return {
        "format": FORMAT,
        "name": spec.name,
        "inputs": [[str(src), dest, f"{mode:o}"] for src, dest, mode in spec.inputs],
        "version_file": str(spec.version_file),
        "version_scheme": spec.version_scheme,
        "context": spec.context,
    }


def package_version(scheme, raw, where="the version file"):
    """The .deb Version of a package from the raw content of its version file."""
    v = raw.strip()
    if scheme in ("kubernetes", "minor"):
        if not re.match(VERSION_RE, v):
            raise InputError(f"{where} holds {v!r}, not a Kubernetes version like v1.31.2",
                             hint="rebuild the Kubernetes tree (doit build:kubernetes) or fix kubernetes/version")
        if scheme == "kubernetes":
            return deb_version(v)
        major, minor = v[1:].split(".")[:2]
        return f"{major}.{minor}.0-1"
    if scheme == "upstream":
        return cni.check_version(v, where) + "-1"
    raise ValueError(f"unknown version scheme {scheme!r}")


def read_version(spec):
    """The package's .deb Version, from its version file (build-time I/O)."""
    try:
        raw = spec.version_file.read_text()
    except OSError as exc:
        raise InputError(f"cannot read the version of {spec.name} from {spec.version_file}: {exc.strerror}",
                         hint=_input_hint(spec)) from None
    return package_version(spec.version_scheme, raw, str(spec.version_file))


def _input_hint(spec):
    if spec.name == "kubernetes-cni":
        return "fetch the CNI plugins first: doit build:cni"
    return "prepare the Kubernetes tree first (doit build:kubernetes), or check kubernetes.source/path"


# ---------------------------------------------------------------- building

def _check_inputs(spec):
    missing = [str(p) for p in spec.files if not p.is_file()]
    if missing:
        raise InputError(f"cannot build {spec.name}.deb: missing input(s): {', '.join(missing)}",
                         hint=_input_hint(spec))


def _dest(rel):
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise ValueError(f"bad path inside a package: {rel!r}")
    return p


def _render(spec, template, context):
    rel = template.relative_to(spec.template_dir)
    if template.suffix == ".j2":
        data = render.render_string(spec.template_dir, rel.as_posix(), context).encode()
    else:
        data = template.read_bytes()
    return _dest(render.output_name(rel.as_posix())), data


def _installed_size(entries):
    """KiB, as dpkg-gencontrol counts: files rounded up to 1 KiB, 1 KiB per directory."""
    dirs = {d for p in entries for d in p.parents if d != PurePosixPath(".")}
    size = 0
    for kind, payload, _ in entries.values():
        n = payload.stat().st_size if kind == "file" else len(payload)
        size += max(1, math.ceil(n / 1024))
    return size + len(dirs)


def _md5sums(entries):
    lines = []
    for path in sorted(entries, key=str):
        kind, payload, _ = entries[path]
        if kind == "file":
            h = hashlib.md5(usedforsecurity=False)
            with open(payload, "rb") as f:
                for block in iter(lambda: f.read(fsutil.CHUNK), b""):
                    h.update(block)
            digest = h.hexdigest()
        else:
            digest = hashlib.md5(payload, usedforsecurity=False).hexdigest()
        lines.append(f"{digest}  {path}\n")
    return "".join(lines).encode()


def _entries(spec, version):
    """Everything the package holds: {path in package: (kind, bytes or src Path, mode)}."""
    context = dict(spec.context, version=version)
    templates = render.template_files(spec.template_dir)
    if not any(t.relative_to(spec.template_dir).as_posix() == "DEBIAN/control.j2" for t in templates):
        raise InputError(f"cannot build {spec.name}.deb: {spec.template_dir}/DEBIAN/control.j2 is missing",
                         hint="restore templates/debs/ from the repository")
    data, control = {}, []
    for t in templates:
        if t.relative_to(spec.template_dir).parts[0] == "DEBIAN":
            control.append(t)
            continue
        path, content = _render(spec, t, context)
        data[path] = ("bytes", content, 0o644)
    for src, dest, mode in spec.inputs:
        path = _dest(dest)
        if path in data:
            raise ValueError(f"{spec.name}: {dest} comes from both an input and a template")
        data[path] = ("file", Path(src), mode)
    context["installed_size"] = _installed_size(data)
    meta = {}
    for t in control:
        path, content = _render(spec, t, context)
        meta[path] = ("bytes", content, 0o755 if path.name in _MAINTSCRIPTS else 0o644)
    meta[PurePosixPath("DEBIAN/md5sums")] = ("bytes", _md5sums(data), 0o644)
    conffiles = sorted(f"/{p}" for p in data if p.parts[0] == "etc")
    if conffiles and PurePosixPath("DEBIAN/conffiles") not in meta:
        meta[PurePosixPath("DEBIAN/conffiles")] = ("bytes", "".join(f"{c}\n" for c in conffiles).encode(), 0o644)
    return {**data, **meta}


def _stage(entries, root, epoch):
    """Write ``entries`` under ``root`` with explicit modes; stamp every mtime with ``epoch``."""
    root.mkdir(mode=0o755)
    dirs = {root}
    for path, (kind, payload, mode) in sorted(entries.items(), key=lambda kv: str(kv[0])):
        dst = root / path
        for d in reversed(dst.parents):
            if d not in dirs and (d == root or root in d.parents):
                d.mkdir(exist_ok=True)
                dirs.add(d)
        if kind == "file":
            with open(payload, "rb") as fi, open(dst, "wb") as fo:
                shutil.copyfileobj(fi, fo, fsutil.CHUNK)
        else:
            dst.write_bytes(payload)
        os.chmod(dst, mode)
        os.utime(dst, (epoch, epoch))
    # directories last, deepest first: filling a directory changes its mtime
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        os.chmod(d, 0o755)
        os.utime(d, (epoch, epoch))


def build_deb(spec, out_path, epoch):
    """Build ``spec`` into ``out_path`` (the doit action); return ``out_path``.

    Side effects: a staging folder beside ``out_path`` (always removed) and
    ``out_path`` itself, renamed into place only when dpkg-deb succeeded.
    Raises InputError naming any missing input.
    """
    out_path = Path(out_path)
    epoch = int(epoch)
    _check_inputs(spec)
    version = read_version(spec)
    entries = _entries(spec, version)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}.staging.", dir=out_path.parent))
    try:
        root = staging / "pkg"
        _stage(entries, root, epoch)
        with fsutil.atomic_path(out_path, suffix=".deb") as tmp:
            try:
                # gzip -6: deterministic on any machine (unlike multi-threaded xz/zstd) and 10x
                # faster than xz on the 45 MB of CNI plugins; the .deb is an intermediate artifact
                proc.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z6", "--build", root, tmp],
                         env={"SOURCE_DATE_EPOCH": str(epoch), "LC_ALL": "C"})
            except CommandError as exc:
                if exc.returncode != 127:
                    exc.hint = f"dpkg-deb refused {spec.name}: check templates/debs/{spec.name}/"
                raise
            os.chmod(tmp, 0o644)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_path


__all__ = ["DEPENDS", "DebSpec", "build_deb", "deb_specs", "package_version", "read_version",
           "spec_inputs", "spec_key", "specs"]
