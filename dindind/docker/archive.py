"""docker-archives (what ``docker save`` writes and ``docker load`` reads): the one writer and reader.

**Layouts.** Both layouts ``docker save`` has written are read:

- legacy (dockerd < 25): ``manifest.json`` (a list of ``{"Config",
  "RepoTags", "Layers"}``), the image config ``<hex>.json``, one
  ``<dir>/layer.tar`` per layer (a layer shared with an earlier image may be a
  link to it) and the ``repositories`` file;
- the OCI image layout (dockerd >= 25, and the containerd image store):
  ``oci-layout``, ``index.json`` and ``blobs/sha256/<hex>``, with
  ``manifest.json`` still written and its Config/Layers pointing into
  ``blobs/``. index.json leads (through an image index, for a multi-platform
  image, of which ``docker save`` may hold only one platform) to the OCI
  manifests; every manifest.json entry must be one of them, with the same
  layers, and each layer's media type says how it is stored.

**Compression.** A layer is an uncompressed tar, or gzip-compressed (the
containerd image store keeps pulled layers as they came): the bytes are
sniffed, must agree with the media type, and the config's diff_id is checked
against the uncompressed tar. zstd layers (``...tar+zstd``): Python has no
zstd decoder before 3.14 and dindind adds no dependency for it, so they are
accepted where layers are only listed (:func:`repo_tags`,
:func:`read_manifest` without ``verify_layers``) and refused, naming the
layer, wherever their content must be checked (verify, export, the scan).
A blob's name is its digest: a blob that hashes otherwise is refused.

**Two ways to read**, ending in the same checks (:func:`_images`):

- the file API, :func:`read_manifest` and :func:`repo_tags`: an uncompressed
  tar on disk, read by random access (headers, the JSON documents, and the
  layers only with ``verify_layers``), with truncation detected;
- the streaming API, :func:`read_stream` then :func:`images`: one pass, front
  to back, over any stream (``docker save`` output through
  :class:`ChunkReader`, a gunzipped release file). Member order is not
  assumed (blobs may come before manifest.json), so every possible layer is
  hashed, decompressed and optionally scanned as it passes and only what it
  yields is kept; no layer is ever held in memory, only the JSON documents
  (each at most ``MAX_JSON``, ``MAX_SMALL`` in all). A stream that ends
  without the end-of-archive blocks is refused as truncated.

**Writing.** :func:`write_image` makes a one-layer image (legacy layout,
which every dockerd loads) from in-memory files, byte for byte the same for
the same inputs. Every archive is hostile input: an entry or link escaping
the archive, a device, a reference leaving it, or absurd sizes are refused
with one InputError naming the entry.

Why one module of ~700 lines: it is the one reader and writer of the
format, and both APIs share one validator (:func:`_images`) over two small
sources; cut in two, the layouts' rules would be read in one file and
checked in another, which is how the two readers it replaces came to differ.
"""

import gzip
import hashlib
import io
import json
import os
import posixpath
import re
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dindind.base import fsutil
from dindind.base.errors import InputError
from dindind.base.layout import rfc3339
from dindind.docker import reference

DEFAULT_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
MAX_JSON = 16 << 20          # manifest.json and configs are small; refuse absurd ones
CHUNK = fsutil.CHUNK
_HINT = "the image tarball is truncated or not a docker-archive; rebuild or download it again"


# ---------------------------------------------------------------- writing

def _json_bytes(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _layer(files, epoch, from_disk=False):
    """The deterministic layer tar of ``files`` ({"/abs/path": (bytes or a path on disk, mode)})."""
    layer = fsutil.DeterministicTar(epoch)
    for path, (src, mode) in files.items():
        p = PurePosixPath(path)
        if not p.is_absolute() or ".." in p.parts or p == PurePosixPath("/"):
            raise ValueError(f"image file path must be absolute and plain: {path!r}")
        (layer.add_file if from_disk else layer.add_bytes)(str(p), src, mode)
    return layer


def _env_list(env):
    if env is None:
        return list(DEFAULT_ENV)
    if hasattr(env, "items"):
        return [f"{k}={v}" for k, v in sorted(env.items())]
    return list(env)


def _one_layer(repo_tags, diff_id, epoch, entrypoint, env):
    """The archive of a one-layer image, all but its layer, and the name the layer goes under."""
    repo_tags = list(repo_tags)
    if not repo_tags:
        raise ValueError("an image needs at least one repo tag")
    created = rfc3339(epoch)
    container_config = {"Env": _env_list(env)}
    if entrypoint:
        container_config["Entrypoint"] = list(entrypoint)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": container_config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": "dindind dockerarchive.write_image"}],
    }
    config_blob = _json_bytes(config)
    config_name = hashlib.sha256(config_blob).hexdigest() + ".json"
    layer_dir = diff_id.split(":", 1)[1]
    manifest = [{"Config": config_name, "RepoTags": repo_tags, "Layers": [f"{layer_dir}/layer.tar"]}]
    repositories = {}
    for ref in repo_tags:
        r = reference.parse(ref)
        repositories.setdefault(r.name, {})[r.tag or "latest"] = layer_dir
    archive = fsutil.DeterministicTar(epoch)
    archive.add_bytes("manifest.json", _json_bytes(manifest))
    archive.add_bytes(config_name, config_blob)
    archive.add_bytes("repositories", _json_bytes(repositories))
    return archive, f"{layer_dir}/layer.tar"


def image_bytes(repo_tags, files, *, epoch, entrypoint=None, env=None):
    """The docker-archive bytes of a one-layer image (pure; no I/O).

    ``files`` maps absolute in-image paths to ``(bytes, mode)``; parent
    directories are added with mode 0755. Everything is owned by root and
    stamped with ``epoch``, so equal inputs give equal bytes.
    """
    buf = io.BytesIO()
    _layer(files, epoch).write(buf)
    layer = buf.getvalue()
    archive, name = _one_layer(repo_tags, "sha256:" + hashlib.sha256(layer).hexdigest(), epoch, entrypoint, env)
    archive.add_bytes(name, layer)
    out = io.BytesIO()
    archive.write(out)
    return out.getvalue()


def write_image(path, repo_tags, files, *, epoch, entrypoint=None, env=None):
    """Write a one-layer docker-archive to ``path`` atomically; return the path.

    Side effect: creates or replaces ``path`` (via a temp file beside it).
    See :func:`image_bytes` for the arguments.
    """
    data = image_bytes(repo_tags, files, epoch=epoch, entrypoint=entrypoint, env=env)
    return fsutil.write_bytes(path, data, 0o644)


def write_image_from_files(path, repo_tags, files, *, epoch, entrypoint=None, env=None):
    """:func:`write_image` for big files: ``files`` maps in-image paths to ``(path on disk, mode)``.

    Streams: the layer goes to a temporary file beside ``path`` (removed
    afterwards), then into the archive, which replaces ``path`` only when
    complete. The same inputs give the same bytes as :func:`image_bytes`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, layer_tmp = tempfile.mkstemp(prefix=f".{path.name}.layer.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with open(layer_tmp, "wb") as f:
            _layer(files, epoch, from_disk=True).write(f)
        archive, name = _one_layer(repo_tags, "sha256:" + fsutil.sha256_file(layer_tmp), epoch, entrypoint, env)
        archive.add_file(name, layer_tmp)
        with fsutil.atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                archive.write(f)
            os.chmod(tmp, 0o644)
    finally:
        Path(layer_tmp).unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------- reading: shared

class _Bad(Exception):
    """What is wrong with an archive; the API functions turn it into one InputError naming the archive."""


_HEX64 = re.compile(r"[0-9a-f]{64}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
MAX_SMALL = 64 << 20         # all JSON documents of one archive together
MAX_DEPTH = 4                # nested image indexes followed
GZIP_MAGIC, ZSTD_MAGIC = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")
STREAM_HINT = "the image archive is corrupt or not a docker-archive; export it again (doit release)"


def _entry_problem(m):
    """Why a tar entry is unacceptable in a docker-archive, or None."""
    name = PurePosixPath(m.name)
    if m.name.startswith("/") or ".." in name.parts:
        return f"entry {m.name!r} escapes the archive (absolute path or '..')"
    if m.issym() or m.islnk():
        base = posixpath.dirname(m.name) if m.issym() else ""
        target = posixpath.normpath(posixpath.join(base, m.linkname))
        if m.linkname.startswith("/") or target == ".." or target.startswith("../"):
            return f"link {m.name!r} -> {m.linkname!r} escapes the archive"
    if m.isdev():
        return f"entry {m.name!r} is a device file"
    return None


def _norm(name):
    return posixpath.normpath(name.lstrip("/")) if name else name


def _link_target(m):
    name = _norm(m.name)
    return _norm(posixpath.join(posixpath.dirname(name), m.linkname)) if m.issym() else _norm(m.linkname)


def _follow(name, exists, links):
    """The member ``name`` refers to after in-archive links, if ``exists`` says it is there; else None."""
    name = _norm(name)
    for _ in range(16):
        if exists(name):
            return name
        if name not in links:
            return None
        name = links[name]
    return None


def _blob_digest(name):
    """'sha256:<hex>' for a name ``blobs/sha256/<hex>`` (content-addressed), else None."""
    p = PurePosixPath(name)
    if len(p.parts) == 3 and p.parts[:2] == ("blobs", "sha256") and _HEX64.fullmatch(p.parts[2]):
        return f"sha256:{p.parts[2]}"
    return None


def _is_small(name):
    """Members known by name to be JSON documents (the rest of blobs/ is sniffed)."""
    return name in ("manifest.json", "index.json", "oci-layout", "repositories") \
        or name.endswith(".json") or name.endswith("/json")


class _Hashing:
    """A reader that hashes and counts what is read through it; ``peek`` looks ahead without consuming."""

    def __init__(self, f):
        self._f = f
        self._head = b""
        self.sha = hashlib.sha256()
        self.size = 0

    def peek(self, n):
        while len(self._head) < n:
            more = self._f.read(n - len(self._head))
            if not more:
                break
            self._head += more
        return self._head[:n]

    def read(self, n=-1):
        if self._head:
            if n is None or n < 0:
                data, self._head = self._head + self._f.read(), b""
            else:
                data, self._head = self._head[:n], self._head[n:]
        else:
            data = self._f.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data

    def drain(self):
        while self.read(CHUNK):
            pass

    def digest(self):
        return "sha256:" + self.sha.hexdigest()


class ChunkReader:
    """``read(n)`` over an iterator of byte chunks (``docker save``); each chunk also goes to ``sink``."""

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


@dataclass
class Blob:
    """What reading one possible layer learnt."""

    size: int                       # stored bytes
    digest: str                     # sha256 of the stored bytes
    compression: str                # "tar" (uncompressed), "gzip" or "zstd"
    diff_id: str = None             # sha256 of the uncompressed tar; None if it could not be read
    problem: str = None             # why it is not a usable layer, if it is not


def _walk_layer(plain, key, scanner, extract, extracted):
    """Stream the layer tar ``plain``: scan each file, keep the ``extract`` paths; a problem or None."""
    try:
        with tarfile.open(fileobj=plain, mode="r|", bufsize=CHUNK) as tf:
            for m in tf:
                if not m.isreg():
                    continue
                path = _norm(m.name)
                data = tf.extractfile(m)
                if path in extract and m.size <= MAX_JSON:
                    content = data.read()
                    extracted[(key, path)] = content
                    if scanner is not None:
                        scanner.scan_bytes(key, path, content)
                elif scanner is not None:
                    scanner.scan(key, path, data.read, m.size)
    except tarfile.ReadError as exc:
        if plain.size > 0:          # 0 bytes: an empty layer
            return f"is not a readable tar ({exc})"
    return None


def _read_layer(raw, key, scanner=None, extract=(), extracted=None):
    """Read the possible layer behind ``raw`` (a :class:`_Hashing`) to its end; return its :class:`Blob`.

    Its digest always; decompressed (gzip) and hashed for the diff_id; with
    a ``scanner`` or ``extract`` paths its files are walked too. Holds at
    most a chunk (or one extracted file) in memory.
    """
    head = raw.peek(4)
    compression = "gzip" if head[:2] == GZIP_MAGIC else "zstd" if head == ZSTD_MAGIC else "tar"
    if compression == "zstd":
        raw.drain()
        return Blob(raw.size, raw.digest(), compression,
                    problem="is zstd-compressed, which dindind cannot read (uncompressed and gzip layers only)")
    plain = _Hashing(gzip.GzipFile(fileobj=raw, mode="rb")) if compression == "gzip" else raw
    problem = None
    try:
        if scanner is not None or extract:
            problem = _walk_layer(plain, key, scanner, extract, extracted if extracted is not None else {})
        plain.drain()
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        if compression != "gzip":
            raise
        raw.drain()
        return Blob(raw.size, raw.digest(), compression, problem=f"is not a complete gzip stream ({exc})")
    raw.drain()
    return Blob(raw.size, raw.digest(), compression, plain.digest(), problem)


def _compression_of(media_type):
    """What an OCI/docker layer media type says about the bytes: "tar", "gzip", "zstd" or None."""
    if not isinstance(media_type, str):
        return None
    if media_type.endswith(("+gzip", ".gzip")) or media_type.endswith("rootfs.diff.tar.gzip"):
        return "gzip"
    if media_type.endswith(("+zstd", ".zstd")):
        return "zstd"
    if media_type.endswith((".tar", "rootfs.diff.tar")):
        return "tar"
    return None


def _parse_json(data, name):
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Bad(f"{name} is not valid JSON ({exc})") from None


def _json(src, name, missing):
    key = src.resolve(name)
    if key is None:
        raise _Bad(missing)
    return _parse_json(src.data(key), name)


IMAGE_NAME = "io.containerd.image.name"     # the annotation containerd's importer names an index.json entry by


def platform_of(doc):
    """``os/architecture[/variant]`` of an OCI platform object or an image config, or None without both."""
    if not isinstance(doc, dict):
        return None
    os_, arch, variant = doc.get("os"), doc.get("architecture"), doc.get("variant")
    if not (isinstance(os_, str) and os_ and isinstance(arch, str) and arch):
        return None
    return f"{os_}/{arch}" + (f"/{variant}" if isinstance(variant, str) and variant else "")


def _oci_walk(src):
    """Yield ``(j, leaf descriptor, manifest blob, manifest doc)`` for every OCI image manifest that
    index.json's entry ``j`` leads to (through nested image indexes), checking each document on the way.

    A manifest or index an image index lists but the archive lacks is a platform this save left
    out: skipped. One index.json itself lists must be there.
    """

    def walk(doc, where, depth, top):
        manifests = doc.get("manifests") if isinstance(doc, dict) else None
        if not isinstance(manifests, list):
            raise _Bad(f"{where} lists no manifests")
        for j, desc in enumerate(manifests):
            digest = desc.get("digest") if isinstance(desc, dict) else None
            if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
                raise _Bad(f"{where}: manifest {j} has no sha256 digest")
            blob = f"blobs/sha256/{digest[7:]}"
            key = src.resolve(blob)
            if key is None:
                if depth:           # a platform this save left out
                    continue
                raise _Bad(f"{where} references {blob}, which is not in the archive")
            data = src.data(key)
            if f"sha256:{hashlib.sha256(data).hexdigest()}" != digest:
                raise _Bad(f"{blob} does not hash to its name (altered or corrupt)")
            doc2 = _parse_json(data, blob)
            kind = desc.get("mediaType") or (doc2.get("mediaType") if isinstance(doc2, dict) else None)
            here = j if top is None else top
            if kind in INDEX_TYPES:
                if depth >= MAX_DEPTH:
                    raise _Bad(f"{blob}: image indexes nested deeper than {MAX_DEPTH}")
                yield from walk(doc2, blob, depth + 1, here)
            elif kind in MANIFEST_TYPES:
                layers = doc2.get("layers") if isinstance(doc2, dict) else None
                if not isinstance(layers, list) or not all(isinstance(x, dict) for x in layers):
                    raise _Bad(f"{blob} is an image manifest without a list of layers")
                yield here, desc, blob, doc2

    yield from walk(_json(src, "index.json", "it has oci-layout but no index.json"), "index.json", 0, None)


def _config_digest(manifest):
    """The config digest an image manifest names, or None."""
    config = manifest.get("config")
    return config.get("digest") if isinstance(config, dict) else None


def _oci_manifests(src):
    """{config digest: (manifest blob, layer descriptors)} of every OCI manifest index.json reaches."""
    found = {}
    for _, _, blob, doc in _oci_walk(src):
        found.setdefault(_config_digest(doc), (blob, doc["layers"]))
    return found


def _image(i, entry, src, oci, verify):
    """Check manifest.json entry ``i`` against the archive; return what it describes."""
    where = f"manifest.json entry {i}"
    if not isinstance(entry, dict):
        raise _Bad(f"{where} is not an object")
    tags, config, layers = entry.get("RepoTags"), entry.get("Config"), entry.get("Layers")
    if not tags or not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise _Bad(f"{where} has no RepoTags (the image would load untagged)")
    if not isinstance(config, str) or not isinstance(layers, list) or not layers \
            or not all(isinstance(x, str) for x in layers):
        raise _Bad(f"{where} lacks Config or Layers")
    for ref in [config] + layers:
        p = PurePosixPath(ref)
        if p.is_absolute() or ".." in p.parts:
            raise _Bad(f"{where} references {ref!r}, which escapes the archive")
    config_key = src.resolve(config)
    if config_key is None:
        raise _Bad(f"{where} references the config {config!r}, which is not in the archive")
    blob = src.data(config_key)
    image_id = "sha256:" + hashlib.sha256(blob).hexdigest()
    stem = PurePosixPath(config).name.removesuffix(".json")
    if _HEX64.fullmatch(stem) and stem != image_id[7:]:
        raise _Bad(f"the config {config} has digest {image_id}: it was altered")
    cfg = _parse_json(blob, config)
    diff_ids = (cfg.get("rootfs") or {}).get("diff_ids") if isinstance(cfg, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
        raise _Bad(f"config {config} lists {len(diff_ids) if isinstance(diff_ids, list) else 0} layer "
                   f"digest(s) for {len(layers)} layer(s)")
    types = [None] * len(layers)
    if oci is not None:
        if image_id not in oci:
            raise _Bad(f"{where} (config {config}) is not an image index.json lists")
        manifest_blob, descs = oci[image_id]
        if len(descs) != len(layers) \
                or any(_blob_digest(x) not in (None, d.get("digest")) for x, d in zip(layers, descs)):
            raise _Bad(f"{where} and {manifest_blob} list different layers")
        types = [d.get("mediaType") for d in descs]
    keys = []
    for n, (layer, diff_id, media_type) in enumerate(zip(layers, diff_ids, types), 1):
        key = src.resolve(layer)
        if key is None:
            raise _Bad(f"{where} references the layer {layer!r}, which is not in the archive")
        keys.append(key)
        if not verify:
            continue
        b = src.layer(key)
        named, want = _blob_digest(layer), _compression_of(media_type)
        if named and b.digest != named:
            raise _Bad(f"layer {n} ({layer}) has digest {b.digest}: it does not hash to its name")
        if want and b.compression != want:
            raise _Bad(f"layer {n} ({layer}) is stored as {b.compression}, its media type {media_type} says {want}")
        if b.problem:
            raise _Bad(f"layer {n} ({layer}) {b.problem}")
        if b.diff_id != diff_id:
            raise _Bad(f"layer {n} ({layer}) has digest {b.diff_id}, the config says {diff_id}")
    history = [h.get("created_by", "") for h in cfg.get("history") or []
               if isinstance(h, dict) and not h.get("empty_layer")]
    return {
        "id": image_id,
        "repo_tags": list(tags),
        "config_name": config,
        "layer_names": list(layers),
        "layers": list(diff_ids),
        "layer_keys": keys,
        "media_types": types,
        "labels": dict((cfg.get("config") or {}).get("Labels") or {}),
        "history": history if len(history) == len(keys) else [""] * len(keys),
        "config": blob,
        "platform": platform_of(cfg),
    }


def _images(src, verify):
    manifest = _json(src, "manifest.json", "no manifest.json (not a docker-archive made by docker save)")
    if not isinstance(manifest, list) or not manifest:
        raise _Bad("manifest.json is not a non-empty list")
    oci = _oci_manifests(src) if src.resolve("index.json") or src.resolve("oci-layout") else None
    return [_image(i, e, src, oci, verify) for i, e in enumerate(manifest)]


# ---------------------------------------------------------------- reading: the file API

class _FileSource:
    """An uncompressed tar on disk, read by random access."""

    def __init__(self, tf, members, verify):
        self._tf, self._members, self._verify = tf, members, verify
        self._links = {n: _link_target(m) for n, m in members.items() if m.issym() or m.islnk()}

    def resolve(self, name):
        return _follow(name, lambda n: n in self._members and self._members[n].isreg(), self._links)

    def data(self, key):
        m = self._members[key]
        if m.size > MAX_JSON:
            raise _Bad(f"{m.name} is implausibly large ({m.size} bytes)")
        return self._tf.extractfile(m).read()

    def layer(self, key):
        return _read_layer(_Hashing(self._tf.extractfile(self._members[key])), key)


def _scan(tf, size):
    """Every member by normalized name; refuses unsafe entries and truncation."""
    members = {}
    for m in tf:
        problem = _entry_problem(m)
        if problem:
            raise _Bad(problem)
        if m.isreg() and m.offset_data + m.size > size:
            raise _Bad(f"truncated: {m.name} needs {m.size} bytes, the file ends {size - m.offset_data} bytes in")
        members[_norm(m.name)] = m
    # tarfile treats a short or garbled header after the first one as the end;
    # a complete archive ends with a block of zeros exactly there.
    tf.fileobj.seek(tf.offset)
    if tf.fileobj.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
        raise _Bad(f"truncated or corrupt after byte {tf.offset} (no end-of-archive marker)")
    return members


def _read_file(path, verify_layers, then):
    """``then(source, images)`` over the validated docker-archive at ``path``; one InputError naming it."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with tarfile.open(path, "r:") as tf:
            src = _FileSource(tf, _scan(tf, size), verify_layers)
            return then(src, _images(src, verify_layers))
    except _Bad as exc:
        raise InputError(f"image tarball {path}: {exc}", hint=_HINT) from None
    except FileNotFoundError:
        raise InputError(f"image tarball {path} does not exist", hint=_HINT) from None
    except (tarfile.TarError, EOFError) as exc:
        raise InputError(f"image tarball {path}: not a readable tar archive ({exc})", hint=_HINT) from None
    except OSError as exc:
        raise InputError(f"image tarball {path}: cannot be read ({exc.strerror or exc})", hint=_HINT) from None


def read_manifest(path, *, verify_layers=False):
    """Validate the docker-archive (either layout) at ``path``; return its manifest entries.

    Each entry is ``{"RepoTags": [...], "Config": name, "Layers": [names]}``.
    Raises InputError naming ``path`` when the file is missing, truncated, not
    an (uncompressed) tar, lacks manifest.json, references a config or layer
    that is not there, disagrees with its index.json, has an entry without
    RepoTags, or holds an entry or link escaping the archive. Reads only
    headers and the JSON documents; with ``verify_layers`` each layer is also
    streamed and checked against its name and the config's digest. No side
    effects.
    """
    entries = _read_file(path, verify_layers, lambda src, images: images)
    return [{"RepoTags": e["repo_tags"], "Config": e["config_name"], "Layers": e["layer_names"]} for e in entries]


def _complete_platforms(src):
    """{index.json entry: [platform, ...]}: the platforms whose manifest, config and layers are all there."""
    found = {}
    for j, desc, _, doc in _oci_walk(src):
        digests = [_config_digest(doc)] + [d.get("digest") for d in doc["layers"]]
        keys = [src.resolve(f"blobs/sha256/{d[7:]}") if isinstance(d, str) and _DIGEST.fullmatch(d) else None
                for d in digests]
        if None in keys:
            continue                # a platform this save left out in part
        platform = platform_of(desc.get("platform")) or platform_of(_parse_json(src.data(keys[0]), keys[0]))
        if platform and platform not in found.setdefault(j, []):
            found[j].append(platform)
    return found


def loadable(path, *, verify_layers=False):
    """What loading the docker-archive at ``path`` into containerd brings, after validating it as
    :func:`read_manifest` does: ``[{"names": [...], "platforms": [...]}]``, one per image.

    Legacy layout: one per manifest.json entry, named by its RepoTags, of its
    config's platform. OCI layout: one per index.json entry named by its
    ``io.containerd.image.name`` annotation (containerd's importer names
    images by it and by nothing else there), with each platform whose
    manifest, config and layers are all in the archive (``docker save`` may
    keep one platform of a multi-platform index). A platform is
    ``os/architecture[/variant]``. No side effects.
    """

    def collect(src, images):
        if src.resolve("index.json") is None and src.resolve("oci-layout") is None:
            return [{"names": list(e["repo_tags"]), "platforms": [e["platform"]] if e["platform"] else []}
                    for e in images]
        index = _json(src, "index.json", "it has oci-layout but no index.json")
        complete = _complete_platforms(src)
        out = []
        for j, desc in enumerate(index["manifests"]):
            annotations = desc.get("annotations")
            name = annotations.get(IMAGE_NAME) if isinstance(annotations, dict) else None
            if isinstance(name, str) and name:
                out.append({"names": [name], "platforms": complete.get(j, [])})
        return out

    return _read_file(path, verify_layers, collect)


def repo_tags(path):
    """Every RepoTag in the docker-archive at ``path`` (validated; no side effects)."""
    return [t for entry in read_manifest(path) for t in entry["RepoTags"]]


# ---------------------------------------------------------------- reading: the streaming API

@dataclass
class Contents:
    """What one streaming pass over a docker-archive learnt (:func:`read_stream`)."""

    small: dict                     # name -> bytes: the JSON documents (manifest.json, index.json, configs, ...)
    blobs: dict                     # name -> Blob: every possible layer, read as it passed
    links: dict                     # name -> the name it links to
    extracted: dict                 # (layer name, path) -> bytes, for the ``extract`` paths


class _StreamSource:
    def __init__(self, contents):
        self._c = contents

    def resolve(self, name):
        return _follow(name, lambda n: n in self._c.small or n in self._c.blobs, self._c.links)

    def data(self, key):
        if key not in self._c.small:
            raise _Bad(f"{key} is not a JSON document")
        return self._c.small[key]

    def layer(self, key):
        if key not in self._c.blobs:
            return Blob(0, "", "tar", problem="is a JSON document, not a tar")
        return self._c.blobs[key]


def _recording_info():
    """A TarInfo class of its own that keeps the last header block read: tarfile takes a
    short or garbled header after the first as the end; a complete archive ends with zeros."""

    class _Info(tarfile.TarInfo):
        last = None

        @classmethod
        def frombuf(cls, buf, encoding, errors):
            cls.last = buf
            return super().frombuf(buf, encoding, errors)

    return _Info


def read_stream(fileobj, where, *, scanner=None, extract=(), hint=STREAM_HINT):
    """Read a docker-archive (either layout) from a stream, once, front to back; return its :class:`Contents`.

    Every possible layer (``*/layer.tar`` and every non-JSON blob) is hashed,
    decompressed and hashed again (its diff_id) and, with a ``scanner``
    (anything with ``scan(key, path, read, size)`` and ``scan_bytes(key,
    path, data)``, e.g. dindind.release.scan.Scanner), every file in it
    scanned; files at the ``extract`` paths are kept. Check the result with
    :func:`images`. Raises InputError naming ``where`` if the stream is not a
    readable tar or holds an unsafe entry.
    """
    small, blobs, links, extracted = {}, {}, {}, {}
    total = 0
    info = _recording_info()
    try:
        with tarfile.open(fileobj=fileobj, mode="r|", bufsize=CHUNK, tarinfo=info) as tf:
            for m in tf:
                problem = _entry_problem(m)
                if problem:
                    raise _Bad(problem)
                name = _norm(m.name)
                if m.issym() or m.islnk():
                    links[name] = _link_target(m)
                    continue
                if not m.isreg() or not (_is_small(name) or name.startswith("blobs/")
                                         or name.endswith("/layer.tar")):
                    continue
                raw = _Hashing(tf.extractfile(m))
                if _is_small(name) or (m.size <= MAX_JSON and raw.peek(1) in (b"{", b"[")):
                    if m.size > MAX_JSON:
                        raise _Bad(f"{name} is implausibly large ({m.size} bytes)")
                    total += m.size
                    if total > MAX_SMALL:
                        raise _Bad(f"holds more than {MAX_SMALL} bytes of JSON documents (at {name})")
                    data = raw.read()
                    try:
                        json.loads(data)
                        small[name] = data
                        continue
                    except (ValueError, UnicodeDecodeError):
                        if _is_small(name):
                            small[name] = data      # refused by name if an image refers to it
                            continue
                    raw = _Hashing(io.BytesIO(data))
                blobs[name] = _read_layer(raw, name, scanner, extract, extracted)
            if info.last != bytes(tarfile.BLOCKSIZE):
                raise _Bad(f"truncated or corrupt after byte {tf.offset} (no end-of-archive marker)")
    except _Bad as exc:
        raise InputError(f"{where}: {exc}", hint=hint) from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise InputError(f"{where}: not a readable docker-archive ({exc})", hint=hint) from None
    except OSError as exc:
        raise InputError(f"{where}: cannot be read ({exc.strerror or exc})", hint=hint) from None
    return Contents(small, blobs, links, extracted)


def images(contents, where, *, hint=STREAM_HINT):
    """Check :class:`Contents` from :func:`read_stream`; return each image manifest.json lists.

    Each is a dict: ``id`` (the config's digest), ``repo_tags``,
    ``config_name``, ``layer_names``, ``layers`` (diff_ids), ``layer_keys``
    (the member each layer is, after links: the ``key`` given to the
    scanner), ``media_types``, ``labels``, ``history`` (one line per layer)
    and ``config`` (its bytes). Every layer must hash to its name (OCI) and
    to the config's diff_id. Raises InputError naming ``where`` and the entry.
    """
    try:
        return _images(_StreamSource(contents), True)
    except _Bad as exc:
        raise InputError(f"{where}: {exc}", hint=hint) from None
