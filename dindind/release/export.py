"""Exporting an image: ``docker save`` once, streamed, gzipped on every core, checked and scanned.

Why gzip and not zstd: dockerd 20.10's ``docker load`` detects gzip, bzip2
and xz but fails on zstd ("invalid tar header"); gzip -1 is the fastest of
the three. It is written as independent 16 MiB gzip members compressed on
every core (:class:`GzipBlocks`; a multi-member gzip file is still one valid
.gz), the same bytes for the same input. The one pass over ``docker save``
also hashes every layer against its digest, keeps the dpkg status and
os-release, and scans every file (dindind.release.scan); no layer is held in
memory. :func:`read_image_file` reads such an archive back (release:verify).
"""

import collections
import concurrent.futures
import gzip
import hashlib
import io
import json
import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import PurePosixPath

from dindind.base.errors import DindindError
from dindind.docker import images
from dindind.release.scan import SCAN_RULES, Finding, Scanner


GZIP_LEVEL = 1


GZIP_BLOCK = 16 << 20


CHUNK = 1 << 20


MAX_JSON = 16 << 20


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


class _ChunkReader:
    """``read(n)`` over an iterator of byte chunks; each chunk also goes to ``sink`` as it arrives."""

    def __init__(self, chunks, sink=None):
        self._it = iter(chunks)
        self._buf = b""
        self._pos = 0
        self._sink = sink
        self.size = 0

    def _next(self):
        chunk = next(self._it, None)
        if chunk is None:
            return False
        chunk = bytes(chunk)
        if self._sink:
            self._sink(chunk)
        self.size += len(chunk)
        self._buf, self._pos = chunk, 0
        return True

    def read(self, n=-1):
        parts = []
        want = float("inf") if n is None or n < 0 else n
        while want > 0:
            if self._pos >= len(self._buf) and not self._next():
                break
            take = self._buf[self._pos:self._pos + want] if want != float("inf") else self._buf[self._pos:]
            self._pos += len(take)
            want -= len(take)
            parts.append(take)
        return b"".join(parts)

    def drain(self):
        """Consume the rest (the archive's trailing blocks) so the sink sees every byte."""
        self._pos = len(self._buf)
        while self._next():
            self._pos = len(self._buf)


class _Hashing:
    """A reader that hashes everything read through it."""

    def __init__(self, f):
        self._f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, n=-1):
        data = self._f.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data

    def drain(self):
        while self.read(CHUNK):
            pass


@dataclass
class ArchiveInfo:
    """What one streaming pass over a docker-archive learnt."""

    small: dict                     # name -> bytes: manifest.json, configs, repositories
    layers: dict                    # layer.tar name -> "sha256:<digest of its bytes>"
    links: dict                     # name -> the name it links to
    extracted: dict                 # (layer name, path) -> bytes, for EXTRACT paths


EXTRACT = ("var/lib/dpkg/status", "etc/os-release", "usr/lib/os-release")


def _norm(name):
    return str(PurePosixPath(name.lstrip("/"))) if name not in ("", ".", "./") else "."


def _fail(where, what):
    return DindindError(f"{where}: {what}",
                        hint="the image archive is corrupt or not a docker-archive; export it again (doit release)")


def _outer_member_problem(m):
    p = PurePosixPath(m.name)
    if m.name.startswith("/") or ".." in p.parts:
        return f"entry {m.name!r} escapes the archive"
    if m.isdev():
        return f"entry {m.name!r} is a device file"
    return None


def _scan_layer(f, layer_name, where, scanner, extracted):
    """Stream one layer.tar: scan its files, keep EXTRACT paths, and return its digest."""
    h = _Hashing(f)
    if scanner is None:             # checking only: the digest is the whole proof
        h.drain()
        return "sha256:" + h.sha.hexdigest()
    try:
        with tarfile.open(fileobj=h, mode="r|", bufsize=CHUNK) as tf:
            for m in tf:
                if not m.isreg():
                    continue
                path = _norm(m.name)
                data = tf.extractfile(m)
                if path in EXTRACT and m.size <= MAX_JSON:
                    content = data.read()
                    extracted[(layer_name, path)] = content
                    if scanner:
                        scanner.scan_bytes(layer_name, path, content)
                elif scanner:
                    scanner.scan(layer_name, path, data.read, m.size)
    except tarfile.ReadError as exc:
        if h.size > 0:              # 0 bytes: an empty layer
            raise _fail(where, f"layer {layer_name} is not a readable tar ({exc})") from None
    h.drain()
    return "sha256:" + h.sha.hexdigest()


def read_archive(fileobj, where, scanner=None):
    """Read a docker-archive from a stream, once, front to back; return an :class:`ArchiveInfo`.

    Every layer is hashed (its diff_id) and, with a ``scanner``, every file in
    it scanned; the JSON files are kept. Nothing larger than one chunk (or
    one small JSON file) is held in memory. Raises DindindError naming
    ``where`` if the stream is not a readable tar.
    """
    small, layers, links, extracted = {}, {}, {}, {}
    try:
        with tarfile.open(fileobj=fileobj, mode="r|", bufsize=CHUNK) as tf:
            for m in tf:
                problem = _outer_member_problem(m)
                if problem:
                    raise _fail(where, problem)
                name = _norm(m.name)
                if m.issym():
                    links[name] = _norm(str(PurePosixPath(name).parent / m.linkname))
                elif m.islnk():
                    links[name] = _norm(m.linkname)
                elif not m.isreg():
                    continue
                elif name.endswith("/layer.tar"):
                    layers[name] = _scan_layer(tf.extractfile(m), name, where, scanner, extracted)
                elif name.endswith(".json") or name == "repositories":
                    if m.size > MAX_JSON:
                        raise _fail(where, f"{name} is implausibly large ({m.size} bytes)")
                    small[name] = tf.extractfile(m).read()
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise _fail(where, f"not a readable docker-archive ({exc})") from None
    except OSError as exc:
        raise _fail(where, f"cannot be read ({exc.strerror or exc})") from None
    return ArchiveInfo(small, layers, links, extracted)


def _resolve(info, name, table):
    name = _norm(name)
    for _ in range(16):
        if name in table:
            return name
        if name not in info.links:
            return None
        name = info.links[name]
    return None


def _json(info, name, where):
    try:
        return json.loads(info.small[name])
    except (ValueError, UnicodeDecodeError) as exc:
        raise _fail(where, f"{name} is not valid JSON ({exc})") from None


def summarize(info, where):
    """Check an :class:`ArchiveInfo` as one image; return its id, tags, layers, labels and history.

    The config must be named by its own digest (the image id) and every
    layer must hash to the config's diff_id for it.
    """
    if "manifest.json" not in info.small:
        raise _fail(where, "no manifest.json (not a docker-archive made by docker save)")
    manifest = _json(info, "manifest.json", where)
    if not isinstance(manifest, list) or len(manifest) != 1 or not isinstance(manifest[0], dict):
        raise _fail(where, "manifest.json does not describe exactly one image")
    entry = manifest[0]
    tags, config_name, layer_names = entry.get("RepoTags"), entry.get("Config"), entry.get("Layers")
    if not tags or not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise _fail(where, "manifest.json has no RepoTags (the image would load untagged)")
    if not isinstance(config_name, str) or not isinstance(layer_names, list) \
            or not all(isinstance(x, str) for x in layer_names):
        raise _fail(where, "manifest.json lacks Config or Layers")
    config_key = _resolve(info, config_name, info.small)
    if config_key is None:
        raise _fail(where, f"the config {config_name} is not in the archive")
    blob = info.small[config_key]
    image_id = "sha256:" + hashlib.sha256(blob).hexdigest()
    if PurePosixPath(config_name).stem != image_id.split(":", 1)[1]:
        raise _fail(where, f"the config {config_name} has digest {image_id}: it was altered")
    config = _json(info, config_key, where)
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") if isinstance(config, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(layer_names):
        raise _fail(where, f"the config lists {len(diff_ids or [])} layer digest(s) for {len(layer_names)} layer(s)")
    keys = []
    for i, (layer, diff_id) in enumerate(zip(layer_names, diff_ids), 1):
        key = _resolve(info, layer, info.layers)
        if key is None:
            raise _fail(where, f"layer {i} ({layer}) is not in the archive")
        if info.layers[key] != diff_id:
            raise _fail(where, f"layer {i} ({layer}) has digest {info.layers[key]}, the config says {diff_id}")
        keys.append(key)
    history = [h.get("created_by", "") for h in config.get("history") or [] if not h.get("empty_layer")]
    return {
        "id": image_id,
        "repo_tags": list(tags),
        "layers": list(diff_ids),
        "layer_keys": keys,
        "labels": dict((config.get("config") or {}).get("Labels") or {}),
        "history": history if len(history) == len(keys) else [""] * len(keys),
        "config": blob,
    }


def _latest(info, keys, path):
    """The content of ``path`` in the topmost layer that has it."""
    for key in reversed(keys):
        if (key, path) in info.extracted:
            return info.extracted[(key, path)]
    return None


def dpkg_packages(status):
    """{package: version} of every installed package in a dpkg status file."""
    packages = {}
    if not status:
        return packages
    for para in status.decode("utf-8", "replace").split("\n\n"):
        fields = {}
        for line in para.splitlines():
            if line and not line[0].isspace() and ":" in line:
                k, _, v = line.partition(":")
                fields[k] = v.strip()
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
            reader = _ChunkReader(save(ref), sink=gz.write)
            info = read_archive(reader, f"docker save {ref}", scanner)
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
            info = read_archive(stream, where)
            while stream.read(CHUNK):
                pass
    except (OSError, EOFError, zlib.error) as exc:
        raise _fail(where, f"is not a complete gzip stream ({exc})") from None
    return summarize(info, where)
