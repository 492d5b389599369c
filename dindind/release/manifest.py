"""Releases: versioned, verifiable image artifacts, pushed to a registry on request.

    doit release [--version V] [--push REGISTRY] [--dir DIR]
    doit release:verify [--dir DIR]

A release directory (``artifacts/release/<version>/`` unless ``--dir``)::

    images/node.tar.gz        docker-archive, gzip: `docker load -i` takes it as it is
    images/cluster.tar.gz
    debs/<package>_<version>_<arch>.deb
    manifest.json             every artifact's sha256 and size, the image ids and layers,
                              registry digests (only after a verified push), provenance
    SHA256SUMS                every other file, manifest.json included (`sha256sum -c SHA256SUMS`)

Every image is exported once (dindind.release.export: ``docker save``,
streamed, gzipped, checked and scanned for secrets).

Nothing half-written is ever a release: the directory is assembled beside
its final name and renamed into place (:func:`dindind.base.fsutil.atomic_dir`);
unchanged image archives of an earlier run of the same version are reused
(hard links) instead of exported again. A push runs after the local release
is complete; its digests are recorded (by a second atomic swap) only when
every image has been pushed and the registry serves exactly the digest the
push reported. A push that fails records nothing and running the release
again completes it.
"""

import json
import os
import re
import shutil
from pathlib import Path

from dindind.base import fsutil
from dindind.base.config import TAG_RE
from dindind.base.errors import DindindError, EngineError
from dindind.base.layout import docker_tag
from dindind.build import debfields
from dindind.release.export import GZIP_BLOCK, GZIP_LEVEL, export_image
from dindind.release.scan import SCAN_RULES

FORMAT = "dindind-release/1"
IMAGES = ("node", "cluster")
SUMS = "SHA256SUMS"
MANIFEST = "manifest.json"
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_VERSION_HINT = ("a release version is a docker tag: 1 to 128 letters, digits, '_', '.' and '-', "
                 "not starting with '.' or '-' (a '+' becomes '_')")


# ================================================================== values (no I/O)

def check_version(version):
    """The release version as a docker tag ('+' becomes '_'); DindindError if it cannot be one."""
    if not isinstance(version, str) or not version:
        raise DindindError("the release version is empty", hint=_VERSION_HINT)
    tag = docker_tag(version)
    if not re.fullmatch(TAG_RE, tag):
        raise DindindError(f"invalid release version {version!r}: not a valid docker tag", hint=_VERSION_HINT)
    return tag


def default_dir(layout, version):
    return layout.release / version


# ================================================================== writing a release

def _read_json(path, what="file"):
    return fsutil.read_json(path, what, hint="run `doit build` (or `doit release`) again")


def load_manifest(dest):
    """The manifest of an existing release in ``dest``; None if ``dest`` is absent or empty.

    Refuses (DindindError) a non-empty folder that is not a dindind release,
    so that a mistyped --dir never replaces someone's files.
    """
    dest = Path(dest)
    if not dest.exists():
        return None
    if not dest.is_dir():
        raise DindindError(f"{dest} exists and is not a directory", hint="choose another --dir")
    if not any(dest.iterdir()):
        return None
    try:
        manifest = json.loads((dest / MANIFEST).read_text())
        if manifest.get("format") == FORMAT:
            return manifest
    except (OSError, ValueError, AttributeError):
        pass
    raise DindindError(f"{dest} is not empty and not a dindind release; refusing to replace it",
                       hint="choose a new or empty --dir, or remove the folder yourself")


def _clean_stale(dest):
    """Remove what an interrupted earlier run left beside ``dest`` (temporary folders)."""
    import glob

    for p in glob.glob(os.path.join(glob.escape(str(dest.parent)), f".{glob.escape(dest.name)}.*.tmp")) + \
            [str(dest.parent / f".{dest.name}.old")]:
        shutil.rmtree(p, ignore_errors=True)


def _link(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _sums_text(files):
    return "".join(f"{sha}  {rel}\n" for rel, sha in sorted(files.items()))


def _finish(tmp, manifest):
    """Write manifest.json and SHA256SUMS (over every file, manifest.json included) into ``tmp``."""
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    (tmp / MANIFEST).write_bytes(data)
    sums = {rel: a["sha256"] for rel, a in manifest["artifacts"].items()}
    sums[MANIFEST] = fsutil.sha256_bytes(data)
    (tmp / SUMS).write_text(_sums_text(sums))
    for p in [tmp, *tmp.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)


def _reusable(old, dest, name, spec):
    """(record, artifact entry) of image ``name`` in the release ``old`` in ``dest``, if its
    archive is intact, holds the image ``spec`` describes and was scanned by today's rules."""
    try:
        rec = dict(old["images"][name])
        art = dict(old["artifacts"][rec["file"]])
        rec["packages"] = old["provenance"]["base"]["packages"][name]
        rec["debian"] = old["provenance"]["base"]["debian"][name]
    except (TypeError, KeyError):
        return None
    if rec.get("id") != spec["id"] or spec["ref"] not in rec.get("repo_tags", ()) \
            or (rec.get("scan") or {}).get("rules") != SCAN_RULES:
        return None
    path = dest / rec["file"]
    try:
        if path.stat().st_size != art.get("size") or fsutil.sha256_file(path) != art.get("sha256"):
            return None
    except OSError:
        return None
    return rec, art


def write_release(dest, version, images, debs, provenance, *, save=None, echo=print):
    """Write (or update) the release in ``dest``; return its manifest.

    ``images``: {"node": {"ref": tag to save, "id": image id}, "cluster": ...};
    ``debs``: .deb paths; ``provenance``: a JSON-able dict. Image archives of
    an earlier release in ``dest`` with the same image ids are reused; push
    records of the same images and version are kept. The new directory
    replaces ``dest`` only when complete. Raises DindindError (and writes
    nothing) if an image holds a secret.
    """
    dest = Path(dest).absolute()
    old = load_manifest(dest)
    _clean_stale(dest)
    with fsutil.atomic_dir(dest) as tmp:
        (tmp / "images").mkdir()
        (tmp / "debs").mkdir()
        artifacts, records, findings = {}, {}, []
        packages, debian = {}, {}
        for name, spec in images.items():
            rel = f"images/{name}.tar.gz"
            reuse = _reusable(old, dest, name, spec)
            if reuse is not None:
                rec, art = reuse
                echo(f"  {rel}: reusing the archive of {spec['id'][:19]} from the earlier release")
                _link(dest / rec["file"], tmp / rel)
            else:
                echo(f"  docker save {spec['ref']} | check, scan | gzip -{GZIP_LEVEL} > {rel}")
                rec, found = export_image(name, spec["ref"], tmp / rel, save=save, echo=echo)
                findings += found
                if rec["id"] != spec["id"]:
                    raise EngineError(f"{spec['ref']} is {rec['id'][:19]}, not the built {name} image "
                                      f"{spec['id'][:19]}", hint="run `doit build` again")
                art = {"sha256": rec.pop("sha256"), "size": rec.pop("size")}
            artifacts[rel] = dict(art, kind="image")
            packages[name] = rec.pop("packages")
            debian[name] = rec.pop("debian")
            records[name] = dict(rec, file=rel)
        if findings:
            raise DindindError(f"refusing to release: {len(findings)} secret(s) found in the images",
                               detail="\n".join(f"  - {f}" for f in findings),
                               hint="remove them from the templates or inputs that put them there, "
                                    "rebuild (doit build) and release again; nothing was written")
        deb_records = {}
        for path in sorted(debs, key=str):
            fields = debfields.read(path, "Package", "Version", "Architecture", hint="rebuild it: doit build")
            package, deb_version, arch = fields["Package"], fields["Version"], fields["Architecture"]
            rel = f"debs/{package}_{deb_version}_{arch}.deb"
            fsutil.copy_file(path, tmp / rel)
            artifacts[rel] = {"sha256": fsutil.sha256_file(tmp / rel), "size": (tmp / rel).stat().st_size,
                              "kind": "deb"}
            deb_records[package] = {"file": rel, "version": deb_version, "architecture": arch}
        registry = {}
        if old is not None and old.get("version") == version:
            for reg, recs in (old.get("registry") or {}).items():
                if all(recs.get(n, {}).get("id") == images[n]["id"] for n in images):
                    registry[reg] = recs
        manifest = {
            "format": FORMAT,
            "version": version,
            "artifacts": artifacts,
            "images": records,
            "debs": deb_records,
            "compression": {"format": "gzip", "level": GZIP_LEVEL, "member_size": GZIP_BLOCK},
            "registry": registry,
            "provenance": dict(provenance, base=dict(provenance["base"], debian=debian, packages=packages)),
        }
        _finish(tmp, manifest)
    return manifest
