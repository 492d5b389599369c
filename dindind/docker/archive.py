"""docker-archive files (the ``docker save`` format), written and checked in pure Python.

The format: a tar holding ``manifest.json`` (a list of
``{"Config", "RepoTags", "Layers"}``), the image config ``<digest>.json``, one
``<layer-dir>/layer.tar`` per layer, and the legacy ``repositories`` file.

:func:`write_image` makes a one-layer image from in-memory files, byte for
byte the same for the same inputs. :func:`read_manifest` validates an archive
(ours, or one from a Kubernetes release tarball) without reading any layer
into memory.
"""

import hashlib
import io
import json
import posixpath
import tarfile
from pathlib import Path, PurePosixPath

from dindind.base import fsutil
from dindind.base.errors import InputError
from dindind.base.layout import rfc3339

DEFAULT_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
MAX_JSON = 16 << 20          # manifest.json and configs are small; refuse absurd ones
_HINT = "the image tarball is truncated or not a docker-archive; rebuild or download it again"


# ---------------------------------------------------------------- writing

def _json_bytes(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _layer_bytes(files, epoch):
    """The layer tar of ``files`` ({"/abs/path": (bytes, mode)}), deterministic."""
    layer = fsutil.DeterministicTar(epoch)
    for path, (data, mode) in files.items():
        p = PurePosixPath(path)
        if not p.is_absolute() or ".." in p.parts or p == PurePosixPath("/"):
            raise ValueError(f"image file path must be absolute and plain: {path!r}")
        layer.add_bytes(str(p), data, mode)
    buf = io.BytesIO()
    layer.write(buf)
    return buf.getvalue()


def _env_list(env):
    if env is None:
        return list(DEFAULT_ENV)
    if hasattr(env, "items"):
        return [f"{k}={v}" for k, v in sorted(env.items())]
    return list(env)


def image_bytes(repo_tags, files, *, epoch, entrypoint=None, env=None):
    """The docker-archive bytes of a one-layer image (pure; no I/O).

    ``files`` maps absolute in-image paths to ``(bytes, mode)``; parent
    directories are added with mode 0755. Everything is owned by root and
    stamped with ``epoch``, so equal inputs give equal bytes.
    """
    repo_tags = list(repo_tags)
    if not repo_tags:
        raise ValueError("an image needs at least one repo tag")
    layer = _layer_bytes(files, epoch)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
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
        repo, _, tag = ref.rpartition(":")
        repositories.setdefault(repo, {})[tag] = layer_dir

    archive = fsutil.DeterministicTar(epoch)
    archive.add_bytes("manifest.json", _json_bytes(manifest))
    archive.add_bytes(config_name, config_blob)
    archive.add_bytes(f"{layer_dir}/layer.tar", layer)
    archive.add_bytes("repositories", _json_bytes(repositories))
    buf = io.BytesIO()
    archive.write(buf)
    return buf.getvalue()


def write_image(path, repo_tags, files, *, epoch, entrypoint=None, env=None):
    """Write a one-layer docker-archive to ``path`` atomically; return the path.

    Side effect: creates or replaces ``path`` (via a temp file beside it).
    See :func:`image_bytes` for the arguments.
    """
    data = image_bytes(repo_tags, files, epoch=epoch, entrypoint=entrypoint, env=env)
    return fsutil.write_bytes(path, data, 0o644)


# ---------------------------------------------------------------- reading

def _fail(path, what):
    return InputError(f"image tarball {path}: {what}", hint=_HINT)


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


def _resolve(members, name):
    """The regular-file member ``name`` refers to (following in-archive links), or None."""
    name = _norm(name)
    for _ in range(16):
        m = members.get(name)
        if m is None:
            return None
        if m.isreg():
            return m
        if m.issym():
            name = _norm(posixpath.join(posixpath.dirname(name), m.linkname))
        elif m.islnk():
            name = _norm(m.linkname)
        else:
            return None
    return None


def _read_json(tf, member, path):
    if member.size > MAX_JSON:
        raise _fail(path, f"{member.name} is implausibly large ({member.size} bytes)")
    try:
        return json.loads(tf.extractfile(member).read())
    except (ValueError, UnicodeDecodeError) as exc:
        raise _fail(path, f"{member.name} is not valid JSON ({exc})") from None


def _scan(tf, path, size):
    """Every member by normalized name; refuses unsafe entries and truncation."""
    members = {}
    for m in tf:
        problem = _entry_problem(m)
        if problem:
            raise _fail(path, problem)
        if m.isreg() and m.offset_data + m.size > size:
            raise _fail(path, f"truncated: {m.name} needs {m.size} bytes, "
                              f"the file ends {size - m.offset_data} bytes in")
        members[_norm(m.name)] = m
    # tarfile treats a short or garbled header after the first one as the end;
    # a complete archive ends with a block of zeros exactly there.
    tf.fileobj.seek(tf.offset)
    if tf.fileobj.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
        raise _fail(path, f"truncated or corrupt after byte {tf.offset} (no end-of-archive marker)")
    return members


def _check_entry(i, entry, members, tf, path, verify_layers):
    where = f"manifest.json entry {i}"
    if not isinstance(entry, dict):
        raise _fail(path, f"{where} is not an object")
    tags, config, layers = entry.get("RepoTags"), entry.get("Config"), entry.get("Layers")
    if not tags or not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise _fail(path, f"{where} has no RepoTags (the image would load untagged)")
    if not isinstance(config, str) or not isinstance(layers, list) or not layers \
            or not all(isinstance(x, str) for x in layers):
        raise _fail(path, f"{where} lacks Config or Layers")
    for ref in [config] + layers:
        p = PurePosixPath(ref)
        if p.is_absolute() or ".." in p.parts:
            raise _fail(path, f"{where} references {ref!r}, which escapes the archive")
    config_member = _resolve(members, config)
    if config_member is None:
        raise _fail(path, f"{where} references the config {config!r}, which is not in the archive")
    cfg = _read_json(tf, config_member, path)
    diff_ids = cfg.get("rootfs", {}).get("diff_ids") if isinstance(cfg, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
        raise _fail(path, f"config {config} lists {len(diff_ids or [])} layer digest(s) "
                          f"for {len(layers)} layer(s)")
    for layer, diff_id in zip(layers, diff_ids):
        m = _resolve(members, layer)
        if m is None:
            raise _fail(path, f"{where} references the layer {layer!r}, which is not in the archive")
        if verify_layers:
            h = hashlib.sha256()
            f = tf.extractfile(m)
            for block in iter(lambda: f.read(fsutil.CHUNK), b""):
                h.update(block)
            if f"sha256:{h.hexdigest()}" != diff_id:
                raise _fail(path, f"layer {layer} has digest sha256:{h.hexdigest()}, "
                                  f"the config says {diff_id}")
    return {"RepoTags": list(tags), "Config": config, "Layers": list(layers)}


def read_manifest(path, *, verify_layers=False):
    """Validate the docker-archive at ``path``; return its manifest entries.

    Each entry is ``{"RepoTags": [...], "Config": name, "Layers": [names]}``.
    Raises InputError naming ``path`` when the file is missing, truncated, not
    an (uncompressed) tar, lacks manifest.json, references a config or layer
    that is not there, has an entry without RepoTags, or holds an entry or
    link escaping the archive. Reads only headers, manifest.json and the
    configs; with ``verify_layers`` each layer is also streamed and checked
    against the config's digest. No side effects.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with tarfile.open(path, "r:") as tf:
            members = _scan(tf, path, size)
            manifest_member = members.get("manifest.json")
            if manifest_member is None or not manifest_member.isreg():
                raise _fail(path, "no manifest.json (not a docker-archive made by docker save)")
            manifest = _read_json(tf, manifest_member, path)
            if not isinstance(manifest, list) or not manifest:
                raise _fail(path, "manifest.json is not a non-empty list")
            return [_check_entry(i, e, members, tf, path, verify_layers) for i, e in enumerate(manifest)]
    except FileNotFoundError:
        raise InputError(f"image tarball {path} does not exist", hint=_HINT) from None
    except (tarfile.TarError, EOFError) as exc:
        raise _fail(path, f"not a readable tar archive ({exc})") from None
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror or exc})") from None


def repo_tags(path):
    """Every RepoTag in the docker-archive at ``path`` (validated; no side effects)."""
    return [t for entry in read_manifest(path) for t in entry["RepoTags"]]
