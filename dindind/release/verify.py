"""``doit release:verify``: check a release directory without an engine.

Checksums, manifest.json's consistency with SHA256SUMS and the files, and
every image archive read end to end. Every problem is named, with its file.
"""

import concurrent.futures
import itertools
import json
import os
import re
import stat
from pathlib import Path, PurePosixPath

from dindind.base import fsutil
from dindind.base.errors import DindindError
from dindind.docker.archive import MAX_JSON
from dindind.release.export import read_image_file
from dindind.release.manifest import _DIGEST, FORMAT, IMAGES, MANIFEST, SUMS, check_version


MAX_SHOWN = 20                     # verification problems listed; the rest are counted


MAX_ENTRIES = 10000                # files and folders verify looks at; a release holds a few


class _Problems(list):
    """Verification problems: (the files involved, what is wrong)."""

    def add(self, files, text):
        self.append(((files,) if isinstance(files, str) else tuple(files), text))

    def files(self):
        return list(dict.fromkeys(f for files, _ in self for f in files))

    def error(self, dest):
        files = self.files()
        shown = ", ".join(files[:5]) + (f" and {len(files) - 5} more" if len(files) > 5 else "")
        lines = [f"  - {' / '.join(f)}: {text}" for f, text in self[:MAX_SHOWN]]
        if len(self) > MAX_SHOWN:
            lines.append(f"  ... and {len(self) - MAX_SHOWN} more")
        return DindindError(f"release {dest} failed verification: {shown}",
                            detail="\n".join(lines),
                            hint="do not use this release; write it again with `doit release` "
                                 "(or fetch it again)")


def _parse_sums(path, problems):
    sums = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        problems.add(SUMS, "missing")
        return sums
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(SUMS, f"unreadable ({exc})")
        return sums
    lines = text.split("\n")
    if lines[-1] != "":
        problems.add(SUMS, "does not end with a newline (truncated or altered)")
    for n, line in enumerate(lines[:-1], 1):
        m = re.fullmatch(r"([0-9a-f]{64}) [ *](.+)", line)
        rel = m.group(2) if m else None
        if not m or rel.startswith("/") or ".." in PurePosixPath(rel).parts or rel in sums or rel == SUMS:
            problems.add(SUMS, f"line {n} is malformed: {line[:100]!r}")
            continue
        sums[rel] = m.group(1)
    return sums


def _present(dest, problems):
    files = set()
    entries = list(itertools.islice(dest.rglob("*"), MAX_ENTRIES + 1))
    if len(entries) > MAX_ENTRIES:
        problems.add(".", f"holds more than {MAX_ENTRIES} files and folders; a release holds a few "
                          "(not a release directory?)")
        return files
    for p in sorted(entries):
        rel = p.relative_to(dest).as_posix()
        if p.is_symlink() or not (p.is_file() or p.is_dir()):
            problems.add(rel, "not a regular file")
        elif p.is_file() and rel != SUMS:
            files.add(rel)
    return files


def _hash_all(dest, rels):
    with concurrent.futures.ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        futures = {rel: pool.submit(fsutil.sha256_file, dest / rel) for rel in rels}
        return {rel: f.result() for rel, f in futures.items()}


def _check_checksums(sums, actual, art, problems):
    """Each file against SHA256SUMS; when they disagree, manifest.json tells which one was altered."""
    for rel, sha in actual.items():
        if sha == sums[rel]:
            continue
        recorded = art.get(rel, {}).get("sha256") if isinstance(art.get(rel), dict) else None
        if rel == MANIFEST:
            problems.add((MANIFEST, SUMS), f"{MANIFEST} has sha256 {sha}, {SUMS} says {sums[rel]} "
                                           "(one of the two was altered)")
        elif recorded == sha:
            problems.add(SUMS, f"says {sums[rel][:16]}... for {rel}, but the file and {MANIFEST} agree on "
                               f"{sha[:16]}... ({SUMS} was altered)")
        else:
            problems.add(rel, f"sha256 {sha} does not match {SUMS} ({sums[rel]})")


def _check_manifest(manifest, sums, actual, sizes, problems):
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        problems.add(MANIFEST, f"not a {FORMAT} manifest")
        return
    art = manifest.get("artifacts")
    if not isinstance(art, dict):
        problems.add(MANIFEST, "no artifacts")
        return
    listed = set(sums) - {MANIFEST}
    for rel in sorted(set(art) - listed):
        problems.add((MANIFEST, rel), f"{MANIFEST} lists {rel!r}, {SUMS} does not")
    for rel in sorted(listed - set(art)):
        problems.add((MANIFEST, rel), f"{SUMS} lists {rel!r}, {MANIFEST} does not")
    for rel in sorted(set(art) & listed & set(actual)):
        a = art[rel] if isinstance(art[rel], dict) else {}
        if a.get("sha256") != actual[rel] and sums.get(rel) == actual[rel]:
            problems.add(MANIFEST, f"records sha256 {str(a.get('sha256'))[:16]}... for {rel}, "
                                   f"which has {actual[rel][:16]}... ({MANIFEST} was altered)")
        if a.get("size") != sizes.get(rel):
            problems.add((rel, MANIFEST), f"{rel} has {sizes.get(rel)} bytes, {MANIFEST} says {a.get('size')}")
    try:
        check_version(manifest.get("version"))
    except DindindError:
        problems.add(MANIFEST, f"version {manifest.get('version')!r} is not a docker tag")
    images = manifest.get("images")
    if not isinstance(images, dict) or set(images) != set(IMAGES):
        problems.add(MANIFEST, f"images must be exactly {', '.join(IMAGES)}")
        return
    for name, img in images.items():
        if not isinstance(img, dict) or img.get("file") not in art:
            problems.add(MANIFEST, f"the {name} image's file is not an artifact")
        elif not _DIGEST.match(str(img.get("id"))) or not img.get("layers") \
                or not all(_DIGEST.match(str(x)) for x in img["layers"]):
            problems.add(MANIFEST, f"the {name} image's id or layers are not sha256 digests")
    for reg, recs in (manifest.get("registry") or {}).items():
        for name in IMAGES:
            r = recs.get(name) if isinstance(recs, dict) else None
            if not isinstance(r, dict) or not _DIGEST.match(str(r.get("digest"))) \
                    or r.get("id") != (images[name] or {}).get("id"):
                problems.add(MANIFEST, f"the push record of {name} for {reg} is incomplete or inconsistent")


def _check_archive(dest, img):
    """Read one image archive end to end against its manifest entry; return problems."""
    rel = img["file"]
    out = _Problems()
    try:
        summary = read_image_file(dest / rel, rel)
    except DindindError as exc:
        out.add(rel, exc.message.removeprefix(f"{rel}: "))
        return out
    if summary["id"] != img["id"]:
        out.add((rel, MANIFEST), f"{rel} holds image {summary['id'][:19]}, {MANIFEST} says {img['id'][:19]}")
    if summary["layers"] != img.get("layers"):
        out.add((rel, MANIFEST), f"the layers of {rel} differ from those {MANIFEST} lists")
    return out


def _not_a_release(dest, why):
    return DindindError(f"{dest} is not a release directory: {why}",
                        hint="pass a directory `doit release` wrote: doit release:verify --dir "
                             "artifacts/release/<version> (if it is one, it is damaged: do not use it; "
                             "write it again with `doit release`)")


def _read_manifest(dest):
    """The parsed manifest.json of ``dest``, read before anything else; DindindError if it is not one."""
    path = dest / MANIFEST
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise _not_a_release(dest, f"it has no {MANIFEST}") from None
    except OSError as exc:
        raise _not_a_release(dest, f"cannot read {MANIFEST} ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise _not_a_release(dest, f"{MANIFEST} is not a regular file")
    if st.st_size > MAX_JSON:
        raise _not_a_release(dest, f"{MANIFEST} is implausibly large ({st.st_size} bytes)")
    try:
        manifest = json.loads(path.read_bytes())
    except OSError as exc:
        raise _not_a_release(dest, f"cannot read {MANIFEST} ({exc.strerror or exc})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _not_a_release(dest, f"{MANIFEST} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _not_a_release(dest, f"{MANIFEST} is not a {FORMAT} manifest")
    return manifest


def verify(dest, echo=print):
    """``doit release:verify``: check a release directory; DindindError naming every bad file.

    Checks, in order: manifest.json exists and is a release manifest (before
    anything else is read: any other directory is refused at once);
    SHA256SUMS lists exactly the files present and every
    checksum holds; manifest.json agrees with SHA256SUMS and the files
    (names, sizes, digests) and is well formed; then reads each image archive
    end to end (gzip, tar, every layer against the config's digests, the
    image id against the manifest). No side effects; the engine is not used.
    """
    dest = Path(dest).absolute()
    if not dest.is_dir():
        raise DindindError(f"{dest} is not a release directory (it does not exist)",
                           hint="pass one: doit release:verify --dir artifacts/release/<version>")
    manifest = _read_manifest(dest)
    problems = _Problems()
    sums = _parse_sums(dest / SUMS, problems)
    present = _present(dest, problems)
    for rel in sorted(set(sums) - present):
        problems.add((rel, SUMS), f"{SUMS} lists {rel!r}, which is missing")
    for rel in sorted(present - set(sums)):
        problems.add((rel, SUMS), f"{rel} is present but not listed in {SUMS}")
    check = sorted(present & set(sums))
    actual = _hash_all(dest, check)
    sizes = {rel: (dest / rel).stat().st_size for rel in check}
    art = manifest.get("artifacts")
    _check_checksums(sums, actual, art if isinstance(art, dict) else {}, problems)
    _check_manifest(manifest, sums, actual, sizes, problems)
    if problems:
        raise problems.error(dest)
    with concurrent.futures.ThreadPoolExecutor(len(IMAGES)) as pool:
        for found in pool.map(lambda n: _check_archive(dest, manifest["images"][n]), IMAGES):
            problems += found
    if problems:
        raise problems.error(dest)
    echo(f"  {dest}: {len(check) + 1} files, checksums, manifest and {len(IMAGES)} image archives ok")
    return manifest
