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

Why gzip and not zstd: dockerd 20.10's ``docker load`` detects gzip, bzip2
and xz but fails on zstd ("invalid tar header"); gzip -1 is the fastest of
the three. It is written as independent 16 MiB gzip members compressed on
every core (a multi-member gzip file is still one valid .gz; Go's and
Python's readers take it), the same bytes for the same input.

Every image is exported once (``docker save``, streamed) and the one pass
compresses it, checks each layer against its digest and scans every file in
every layer for secrets (:class:`Scanner`); no layer is held in memory.

Nothing half-written is ever a release: the directory is assembled beside
its final name and renamed into place (:func:`dindind.fsutil.atomic_dir`);
unchanged image archives of an earlier run of the same version are reused
(hard links) instead of exported again. A push runs after the local release
is complete; its digests are recorded (by a second atomic swap) only when
every image has been pushed and the registry serves exactly the digest the
push reported. A push that fails records nothing and running the release
again completes it.
"""

import collections
import concurrent.futures
import gzip
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import stat
import tarfile
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from dindind.docker import engine
from dindind.base import fsutil, proc
from dindind.base.config import TAG_RE
from dindind.base.errors import CommandError, DindindError, EngineError
from dindind.base.layout import docker_tag

FORMAT = "dindind-release/1"
IMAGES = ("node", "cluster")
SUMS = "SHA256SUMS"
MANIFEST = "manifest.json"
GZIP_LEVEL = 1
GZIP_BLOCK = 16 << 20
CHUNK = 1 << 20
MAX_JSON = 16 << 20
MAX_SHOWN = 20                     # verification problems listed; the rest are counted
MAX_ENTRIES = 10000                # files and folders verify looks at; a release holds a few
SCAN_RULES = 1                     # bump when the scanner's rules change: archives are scanned again
REGISTRY_RE = r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?(/[a-z0-9]+([._-][a-z0-9]+)*)*$"
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


def check_registry(registry):
    """``host[:port][/path]`` without a scheme or trailing slash; DindindError otherwise."""
    if not isinstance(registry, str) or not re.fullmatch(REGISTRY_RE, registry):
        raise DindindError(f"invalid --push registry {registry!r}",
                           hint="give host[:port] (optionally /path), e.g. 127.0.0.1:5000 or "
                                "registry.example.com/team, without http:// or a trailing slash")
    return registry


def push_ref(registry, name, version):
    """``<registry>/dindind/<name>:<version>``."""
    return f"{registry}/dindind/{name}:{version}"


def rfc3339(epoch):
    return datetime.fromtimestamp(int(epoch), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_dir(layout, version):
    return layout.release / version


# ================================================================== the project's git state (read only)

def _git(root, *args):
    """The output of a read-only git command in ``root``; None without git or outside a repository."""
    try:
        out = proc.run(["git", "--no-optional-locks", "-C", root, *args])
    except CommandError:
        return None
    return out.strip() or None


def git_commit(root):
    """The project's commit (40 hex digits), or "unknown" outside a git checkout."""
    out = _git(root, "rev-parse", "--verify", "HEAD")
    return out if out and re.fullmatch(r"[0-9a-f]{40}", out) else "unknown"


def git_dirty(root):
    """True if tracked files differ from HEAD (what ``git describe --dirty`` means), without writing the index."""
    try:
        out = proc.run(["git", "--no-optional-locks", "-C", root, "status", "--porcelain", "--untracked-files=no"])
    except CommandError:
        return False
    return bool(out.strip())


def git_describe(root):
    """``git describe --always --dirty`` of the project, or None outside a git checkout.

    --dirty itself would refresh (write) the index; the dirty check uses
    ``git --no-optional-locks status`` instead, so nothing is written.
    """
    out = _git(root, "describe", "--always")
    if not out or "\n" in out or not re.fullmatch(r"[0-9A-Za-z._+-]+", out):
        return None
    return out + ("-dirty" if git_dirty(root) else "")


_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST = rf"(?:{_DNS_LABEL}(?:\.{_DNS_LABEL})*|\[[0-9A-Fa-f:.]+\])"     # a DNS name, an IPv4 or a [IPv6] address
_REPO_PATH = r"[A-Za-z0-9._~%+-]+(?:/[A-Za-z0-9._~%+-]+)*"


def public_url(remote):
    """The web URL of a git remote, or None when it has none (a local path, file://, anything odd).

    ``git@host:org/repo.git``, ``ssh://git@host:22/org/repo.git`` and
    ``git://host/org/repo`` become ``https://host/org/repo``; an http(s) URL
    keeps its scheme and port but loses its credentials, query and
    fragment. A trailing ``.git`` or ``/`` is dropped. Pure.
    """
    if not isinstance(remote, str) or not remote.isprintable() or " " in remote:
        return None
    m = re.fullmatch(r"(?P<scheme>https?)://(?:[^/@?#]*@)?(?P<host>" + _HOST + r")(?P<port>:[0-9]{1,5})?"
                     r"(?:/(?P<path>[^?#]*))?(?:[?#].*)?", remote) \
        or re.fullmatch(r"(?P<scheme>ssh|git|git\+ssh|ssh\+git)://(?:[^/@?#]*@)?(?P<host>" + _HOST + r")"
                        r"(?::[0-9]{1,5})?/(?P<path>[^?#]*)", remote) \
        or re.fullmatch(r"(?:[A-Za-z0-9._-]+@)?(?P<host>" + _HOST + r"):(?!//)/?(?P<path>[^?#]*)", remote)
    if not m or "." not in m["host"] and not m["host"].startswith("["):
        return None                     # no remote, a path, file://, a helper (ext::), a bare name
    path = (m["path"] or "").strip("/")
    path = path[:-4] if path.endswith(".git") else path
    if not re.fullmatch(_REPO_PATH, path) or ".." in path.split("/"):
        return None
    scheme = m.groupdict().get("scheme")
    prefix = f"{scheme}://" if scheme in ("http", "https") else "https://"
    port = m.groupdict().get("port") if scheme in ("http", "https") else None
    return f"{prefix}{m['host'].lower()}{port or ''}/{path}"


def source_url(root):
    """The web URL of the project's repository (:func:`public_url` of remote.origin.url), or None."""
    return public_url(_git(root, "config", "--get", "remote.origin.url"))


def default_version(kubernetes_version, root):
    """The Kubernetes version plus the project's ``git describe`` ("nogit" outside git), as a docker tag."""
    return check_version(f"{kubernetes_version}-{git_describe(root) or 'nogit'}")


def oci_labels(version, root, epoch):
    """The org.opencontainers.image.* labels of the node and cluster images.

    version: the Kubernetes version the image carries; revision: the
    project's git commit ("unknown" outside git); source: the repository's
    public URL, left out when origin is missing or a local path (a path on
    the build machine says nothing to whoever pulls the image); created:
    SOURCE_DATE_EPOCH as RFC 3339, so the label does not change from build
    to build.
    """
    labels = {
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.revision": git_commit(root),
        "org.opencontainers.image.source": source_url(root),
        "org.opencontainers.image.created": rfc3339(epoch),
    }
    return {k: v for k, v in labels.items() if v is not None}


# ================================================================== gzip on every core

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


# ================================================================== secrets

CA_DIRS = ("etc/ssl/certs/", "usr/share/ca-certificates/", "usr/local/share/ca-certificates/")
KUBEADM_DIRS = ("etc/kubernetes/", "var/lib/kubelet/", "run/kubeadm/")
OVERLAP = 8192                      # bytes kept from one chunk to the next: a match may straddle them

_PEM = re.compile(rb"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY-----[ \t]*\r?\n"
                  rb"(?:[A-Za-z-]+:[^\r\n]*\r?\n)*(?:[ \t]*\r?\n)?[A-Za-z0-9+/=]{32,}")
_CLIENT_KEY = re.compile(rb"client-key-data[\"']?[ \t]*:[ \t]*[\"']?[A-Za-z0-9+/=]{16,}")
# user:password in a proxy setting; placeholders (<user>, ${PASS}, %s, *) are not credentials
_PROXY = re.compile(rb"(?i)(?:\b[a-z_]{0,32}proxy[a-z_]{0,32}[\"']?[ \t]*[=:][ \t]*[\"']?|acquire::[a-z]+::proxy[ \t]+[\"']?)"
                    rb"[a-z][a-z0-9+.-]*://[^\s:/@\"'<>${}%*]+:[^\s/@\"'<>${}%*]+@")
_KUBECONFIG = re.compile(rb"(?m)^[ \t]*kind:[ \t]*[\"']?Config\b|\"kind\"[ \t]*:[ \t]*\"Config\"")
_KUBECONFIG_SECRET = re.compile(rb"(?m)^[ \t-]*[\"']?(?:token|password)[\"']?[ \t]*:[ \t]*[\"']?[^\s\"',}]{6,}")
_BOOTSTRAP_TOKEN = re.compile(rb"(?<![A-Za-z0-9])[a-z0-9]{6}\.[a-z0-9]{16}(?![A-Za-z0-9])")

# (what, prefilter substrings, pattern, also in ELF binaries): run on every file, streamed.
# PEM keys compiled into ELF binaries are public test vectors shipped by the distribution
# (GnuTLS's FIPS self-test keys in libgnutls.so), not secrets: a leaked key is a file.
_STREAM_RULES = (
    ("a private key", (b"PRIVATE KEY-----",), _PEM, False),
    ("a kubeconfig client key (client-key-data)", (b"client-key-data",), _CLIENT_KEY, True),
    ("a proxy URL with credentials", (b"roxy", b"ROXY"), _PROXY, True),
)


def _search(data, needles, pattern):
    """``pattern`` in ``data``, tried only in a window around each needle (regexes stay off big binaries)."""
    for needle in needles:
        i = data.find(needle)
        while i >= 0:
            if pattern.search(data, max(0, i - 64), i + 1024):
                return True
            i = data.find(needle, i + 1)
    return False


def _kubeadm_ish(path, data):
    name = PurePosixPath(path).name
    return "kubeadm" in name or path.startswith(KUBEADM_DIRS) or b"kubeadm.k8s.io" in data


def text_findings(path, data):
    """What the rules for small text files find in ``data`` (the whole file)."""
    found = []
    if _KUBECONFIG.search(data) and _KUBECONFIG_SECRET.search(data):
        found.append("a kubeconfig with a token or password")
    if _kubeadm_ish(path, data) and _BOOTSTRAP_TOKEN.search(data):
        found.append("a bootstrap token in a kubeadm file")
    return found


@dataclass(frozen=True)
class Finding:
    image: str
    layer: str                  # the layer's diff_id, or "config" for the image config
    index: int                  # 1-based layer number; 0 for the config
    path: str
    what: str

    def __str__(self):
        where = "image config" if self.index == 0 else f"layer {self.index} ({self.layer[:19]})"
        return f"{self.image} image, {where}: /{self.path}: {self.what}" if self.path else \
            f"{self.image} image, {where}: {self.what}"


class Scanner:
    """Scans files for private keys, kubeconfig credentials, bootstrap tokens and proxy credentials.

    Files under the well-known CA bundle folders (CA_DIRS) hold certificates,
    not secrets, and are skipped. The secrets themselves never appear in a
    finding: only where they are and what they look like.
    """

    def __init__(self):
        self.hits = []              # (layer key, path, what)
        self.files = 0
        self.bytes = 0

    def scan(self, key, path, read, size):
        """Scan one file whose content ``read(n)`` returns; ``key`` names its layer."""
        if path.startswith(CA_DIRS):
            return
        self.files += 1
        found = set()
        tail = b""
        first = True
        elf = False
        while True:
            chunk = read(CHUNK)
            if not chunk:
                break
            self.bytes += len(chunk)
            if first:
                elf = chunk.startswith(b"\x7fELF")
                if size <= CHUNK and b"\0" not in chunk:
                    found.update(text_findings(path, chunk))
            first = False
            data = tail + chunk if tail else chunk
            for what, needles, pattern, in_elf in _STREAM_RULES:
                if (in_elf or not elf) and what not in found and _search(data, needles, pattern):
                    found.add(what)
            tail = data[-OVERLAP:]
        for what in sorted(found):
            self.hits.append((key, path, what))

    def scan_bytes(self, key, path, data):
        view = io.BytesIO(data)
        self.scan(key, path, view.read, len(data))


# ================================================================== docker-archive streams

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


# ================================================================== writing a release

def _read_json(path, what="file"):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DindindError(f"cannot read the {what} {path}: {exc}", hint="run `doit build` (or `doit release`) again") \
            from None


def deb_fields(path):
    """(package, version, architecture) of a .deb."""
    out = proc.run(["dpkg-deb", "--field", path, "Package", "Version", "Architecture"],
                   hint="install dpkg (dpkg-deb)")
    fields = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    try:
        return fields["Package"], fields["Version"], fields["Architecture"]
    except KeyError:
        raise DindindError(f"{path} is not a valid .deb (no Package/Version/Architecture)",
                           hint="rebuild it: doit build") from None


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
            package, deb_version, arch = deb_fields(path)
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


def record_push(dest, registry, records):
    """Add verified push records for ``registry`` to the release in ``dest`` (atomic swap)."""
    dest = Path(dest).absolute()
    manifest = load_manifest(dest)
    manifest.setdefault("registry", {})[registry] = records
    with fsutil.atomic_dir(dest) as tmp:
        for rel in manifest["artifacts"]:
            _link(dest / rel, tmp / rel)
        _finish(tmp, manifest)
    return manifest


def verify_pushed(ref, digest, image_id):
    """Check that the registry serves ``digest`` for ``ref``; return how it was checked.

    Reads the manifest digest with the registry API (HEAD). Where that
    cannot be done from here (the registry wants credentials, or speaks
    plain HTTP to dockerd as an insecure registry) the engine, which just
    pushed to it, is asked instead: pull by digest, which must give back
    ``image_id``. A registry that answers with another digest is an error.
    """
    try:
        served = registry.registry_manifest_digest(ref)
    except EngineError:
        repo, _ = images.split_ref(ref)
        pulled = registry.pull_by_digest(repo, digest)
        if pulled != image_id:
            raise EngineError(f"{repo}@{digest} is image {pulled[:19]}, not the pushed {image_id[:19]}") from None
        return "pull by digest"
    if served != digest:
        raise EngineError(f"the registry serves {served or 'nothing'} for {ref}, but the push reported {digest}",
                          hint="push again: run the release again")
    return "registry manifest"


def push_release(dest, registry, echo=print):
    """Tag, push and verify the release's images; record the digests only when all are verified."""
    dest = Path(dest).absolute()
    manifest = load_manifest(dest)
    if manifest is None:
        raise DindindError(f"no release in {dest} to push")
    records = {}
    for name in IMAGES:
        img = manifest["images"][name]
        ref = push_ref(registry, name, manifest["version"])
        if engine.image_id(img["id"]) != img["id"]:
            raise EngineError(f"the {name} image {img['id'][:19]} of this release is no longer in the engine",
                              hint=f"load it (docker load -i {dest / img['file']}) or rebuild and release again")
        images.tag(img["id"], ref)
        echo(f"  docker push {ref}")
        digest = registry.push(ref, echo=echo)
        how = verify_pushed(ref, digest, img["id"])
        echo(f"  verified {ref}@{digest} ({how})")
        records[name] = {"ref": ref, "digest": digest, "id": img["id"], "verified_by": how}
    return record_push(dest, registry, records)


# ================================================================== the doit action

def gather(cfg, layout):
    """The built images, debs and provenance of a release (reads the build's stamps; no engine)."""
    from dindind.build import debs as debs_mod

    tree = _read_json(layout.kubernetes / "tree.json", "Kubernetes tree summary")
    stamps = {n: _read_json(layout.stamp(n), f"{n} image stamp") for n in ("base", "node", "cluster")}
    deb_paths = [layout.deb(n) for n in debs_mod.specs(cfg, layout)]
    missing = [str(p) for p in deb_paths if not p.is_file()]
    if missing:
        raise DindindError(f"missing .deb(s): {', '.join(missing)}", hint="run `doit build`")
    cni_version = layout.cni / "VERSION"
    config_bytes = Path(cfg.path).read_bytes() if Path(cfg.path).is_file() else b""
    provenance = {
        "kubernetes": {"version": tree["version"], "source": cfg.kubernetes["source"]},
        "inputs": {
            "base": stamps["base"]["inputs"],
            "node": stamps["node"]["inputs"],
            "cluster": stamps["cluster"]["inputs"],
            "debs": {p.stem: "sha256:" + fsutil.sha256_file(p) for p in deb_paths},
            "cni_version": cni_version.read_text().strip() if cni_version.is_file() else None,
        },
        "base": {"image": stamps["base"]["tags"][0], "id": stamps["base"]["id"],
                 "suite": cfg.base["suite"], "mirror": cfg.base["mirror"]},
        "config": {"file": Path(cfg.path).name, "sha256": fsutil.sha256_bytes(config_bytes),
                   "effective_sha256": fsutil.digest_json(cfg.as_dict())},
        "git": {"commit": git_commit(layout.root), "describe": git_describe(layout.root)},
        "source_date_epoch": cfg.source_date_epoch,
        "created": rfc3339(cfg.source_date_epoch),
    }
    images = {n: {"ref": stamps[n]["tags"][0], "id": stamps[n]["id"]} for n in IMAGES}
    return tree["version"], images, deb_paths, provenance


def resolve_dir(cfg, layout, version=None, out_dir=None):
    """(version, release dir) for the options given (the version defaults from the build and git)."""
    if version:
        version = check_version(version)
    else:
        tree = _read_json(layout.kubernetes / "tree.json", "Kubernetes tree summary")
        version = default_version(tree["version"], layout.root)
    return version, (Path(out_dir) if out_dir else default_dir(layout, version)).absolute()


def make(cfg, layout, *, version=None, registry=None, out_dir=None, echo=print):
    """``doit release``: write the release directory, then push it if ``registry`` is given.

    Side effects: the release directory (replaced whole); with a registry,
    tags ``<registry>/dindind/{node,cluster}:<version>`` in the engine and
    pushes them. Returns the release directory.
    """
    if registry:
        check_registry(registry)
    version, dest = resolve_dir(cfg, layout, version, out_dir)
    _, images, deb_paths, provenance = gather(cfg, layout)
    for name, spec in images.items():
        if engine.image_id(spec["ref"]) != spec["id"]:
            raise EngineError(f"{spec['ref']} is not the built {name} image {spec['id'][:19]}",
                              hint="run `doit build` again")
    echo(f"  release {version} -> {dest}")
    manifest = write_release(dest, version, images, deb_paths, provenance, echo=echo)
    if registry:
        manifest = push_release(dest, registry, echo=echo)
    echo(f"  wrote {dest} ({len(manifest['artifacts'])} artifacts"
         + (f", pushed to {', '.join(sorted(manifest['registry']))}" if manifest["registry"] else "") + ")")
    return dest


# ================================================================== verifying

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
