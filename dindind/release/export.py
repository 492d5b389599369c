"""Exporting an image: ``docker save`` once, streamed, gzipped on every core, checked and scanned.

Why gzip and not zstd: dockerd 20.10's ``docker load`` detects gzip, bzip2
and xz but fails on zstd ("invalid tar header"); gzip -1 is the fastest of
the three. It is written as independent 16 MiB gzip members compressed on
every core (:class:`GzipBlocks`; a multi-member gzip file is still one valid
.gz), the same bytes for the same input. The one pass over ``docker save``
(dindind.docker.archive's streaming reader, either layout) also hashes every
layer against its digest, keeps the dpkg status and os-release, and scans
every file (dindind.release.scan); no layer is held in memory.
:func:`read_image_file` reads such an archive back (release:verify).
"""

import collections
import concurrent.futures
import gzip
import hashlib
import io
import json
import os
import zlib

from dindind.base.errors import InputError
from dindind.build import debfields
from dindind.docker import archive, images
from dindind.release.scan import SCAN_RULES, Finding, Scanner


GZIP_LEVEL = 1


GZIP_BLOCK = 16 << 20


CHUNK = archive.CHUNK


def _gzip_member(data, level):
    z = zlib.compressobj(level, zlib.DEFLATED, 31)      # 31: a gzip header, mtime 0, no name
    return z.compress(data) + z.flush()


class GzipBlocks:
    """Compress a byte stream into ``out`` as independent gzip members, on several threads.

    zlib releases the GIL, so the members compress in parallel while the
    caller keeps reading. The output depends only on the input, the level
    and the block size. ``close()`` returns (sha256 hex, size) of what was written.
    """

    def __init__(self, out, level=GZIP_LEVEL, block=GZIP_BLOCK, workers=None):
        self.out = out
        self.level = level
        self.block = block
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        self._pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="gzip")
        self._pending = collections.deque()
        self._parts = []
        self._n = 0
        self._members = 0
        self._sha = hashlib.sha256()
        self.size = 0

    def write(self, data):
        self._parts.append(data)
        self._n += len(data)
        if self._n < self.block:
            return
        buf = b"".join(self._parts)
        view = memoryview(buf)
        off = 0
        while len(buf) - off >= self.block:         # members cut at fixed offsets: same input, same bytes
            self._submit(view[off:off + self.block])
            off += self.block
        rest = buf[off:]
        self._parts, self._n = ([rest] if rest else []), len(rest)

    def _submit(self, data):
        self._pending.append(self._pool.submit(_gzip_member, data, self.level))
        self._members += 1
        while len(self._pending) > 2 * self.workers:
            self._write_one()

    def _write_one(self):
        data = self._pending.popleft().result()
        self.out.write(data)
        self._sha.update(data)
        self.size += len(data)

    def close(self):
        if self._n or not self._members:
            self._submit(b"".join(self._parts))
            self._parts, self._n = [], 0
        while self._pending:
            self._write_one()
        self._pool.shutdown()
        return self._sha.hexdigest(), self.size

    def abort(self):
        self._pool.shutdown(wait=True, cancel_futures=True)


EXTRACT = ("var/lib/dpkg/status", "etc/os-release", "usr/lib/os-release")


def summarize(contents, where):
    """Check :class:`dindind.docker.archive.Contents` as one image; return :func:`archive.images`' entry for it."""
    found = archive.images(contents, where)
    if len(found) != 1:
        raise InputError(f"{where}: manifest.json does not describe exactly one image",
                                 hint=archive.STREAM_HINT)
    return found[0]


def _latest(info, keys, path):
    """The content of ``path`` in the topmost layer that has it."""
    for key in reversed(keys):
        if (key, path) in info.extracted:
            return info.extracted[(key, path)]
    return None


def dpkg_packages(status):
    """{package: version} of every installed package in a dpkg status file."""
    packages = {}
    for fields in debfields.paragraphs(status.decode("utf-8", "replace")) if status else []:
        if fields.get("Package") and fields.get("Status", "").endswith(" installed"):
            arch = fields.get("Architecture", "")
            name = fields["Package"] if arch in ("", "all", "amd64") else f"{fields['Package']}:{arch}"
            packages[name] = fields.get("Version", "")
    return dict(sorted(packages.items()))


def os_release(content):
    out = {}
    for line in (content or b"").decode("utf-8", "replace").splitlines():
        k, sep, v = line.partition("=")
        if sep:
            out[k.strip()] = v.strip().strip('"')
    return out


def _findings(name, scanner, summary):
    index = {k: i for i, k in enumerate(summary["layer_keys"], 1)}
    out = []
    for key, path, what in scanner.hits:
        i = index.get(key)
        if i is None:
            continue                # a layer.tar the image does not use
        out.append(Finding(name, summary["layers"][i - 1], i, path, what))
    return out


def export_image(name, ref, out_path, *, save=None, echo=print):
    """``docker save ref`` once: gzip it to ``out_path``, check it, scan it.

    Returns (record, findings): the record is what the manifest says about
    the image (file digest and size, id, tags, layers, OCI labels, packages,
    scan counts); findings are the secrets found (an empty list when clean).
    """
    save = save or images.save_chunks
    scanner = Scanner()
    with open(out_path, "wb") as out:
        gz = GzipBlocks(out)
        try:
            reader = archive.ChunkReader(save(ref), sink=gz.write)
            info = archive.read_stream(reader, f"docker save {ref}", scanner=scanner, extract=EXTRACT)
            reader.drain()
            sha, size = gz.close()
        except BaseException:
            gz.abort()
            raise
    summary = summarize(info, f"docker save {ref}")
    config = json.loads(summary["config"])
    cfg_scan = Scanner()
    cfg_text = json.dumps({"env": (config.get("config") or {}).get("Env"), "labels": summary["labels"],
                           "history": config.get("history")}, indent=1).encode()
    cfg_scan.scan_bytes("config", "", cfg_text)
    findings = _findings(name, scanner, summary)
    findings += [Finding(name, "config", 0, "", f"{what} (in Env, labels or build history)")
                 for _, _, what in cfg_scan.hits]
    release_ = os_release(_latest(info, summary["layer_keys"], "etc/os-release")
                          or _latest(info, summary["layer_keys"], "usr/lib/os-release"))
    record = {
        "sha256": sha,
        "size": size,
        "id": summary["id"],
        "repo_tags": summary["repo_tags"],
        "layers": summary["layers"],
        "labels": {k: v for k, v in sorted(summary["labels"].items()) if k.startswith("org.opencontainers.")},
        "debian": release_.get("VERSION_CODENAME") or release_.get("VERSION_ID") or "unknown",
        "packages": dpkg_packages(_latest(info, summary["layer_keys"], "var/lib/dpkg/status")),
        "scan": {"rules": SCAN_RULES, "files": scanner.files, "bytes": scanner.bytes, "findings": len(findings)},
        "uncompressed_size": reader.size,
    }
    echo(f"  {name}: {len(summary['layers'])} layers, {scanner.files} files scanned, "
         f"{reader.size / 1e6:.0f} MB -> {size / 1e6:.0f} MB gzip")
    return record, findings


def read_image_file(path, where=None):
    """Read a release's .tar.gz image archive end to end; return :func:`summarize` of it."""
    where = where or str(path)
    try:
        with open(path, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz:
            stream = io.BufferedReader(gz, CHUNK)
            info = archive.read_stream(stream, where)
            while stream.read(CHUNK):
                pass
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{where}: is not a complete gzip stream ({exc})", hint=archive.STREAM_HINT) from None
    return summarize(info, where)
