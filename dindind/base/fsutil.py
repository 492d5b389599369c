"""Filesystem helpers: atomic writes, digests, deterministic tars.

Nothing here leaves a half-written artifact behind: every writer works on a
temporary name in the target's own directory and renames it into place only
when complete, so an interrupted build (Ctrl-C, kill -9) leaves either the old
artifact or none, never a truncated one that a later run would accept.

The safe extractor is dindind.base.extract; ``fsutil.extract_tar``,
``fsutil.safe_extract`` and the ``MAX_EXTRACT_*`` limits still name it.
"""

import contextlib
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from dindind.base.errors import DindindError

CHUNK = 1 << 20
_EXTRACT_NAMES = ("extract_tar", "safe_extract", "MAX_EXTRACT_BYTES", "MAX_EXTRACT_ENTRIES")


def __getattr__(name):
    """The safe extractor lives in dindind.base.extract; its names stay reachable here as before."""
    if name in _EXTRACT_NAMES:
        from dindind.base import extract
        return getattr(extract, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def digest_json(value):
    """A stable digest of a JSON-able value (sorted keys, no whitespace)."""
    return sha256_bytes(json.dumps(value, sort_keys=True, separators=(",", ":")).encode())


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """Yield a temporary path beside ``path``; rename it to ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temporary directory beside ``path``; swap it in on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes(path, data, mode=None):
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        if mode is not None:
            os.chmod(tmp, mode)
    return Path(path)


def write_text(path, text, mode=None):
    return write_bytes(path, text.encode(), mode)


def write_json(path, value, mode=None):
    return write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n", mode)


def read_json(path, what="file", hint="run `doit build` again"):
    """The parsed JSON file at ``path`` (a stamp, tree.json ...); DindindError naming it when it cannot be read."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DindindError(f"the {what} {path} is missing", hint=hint) from None
    except (OSError, ValueError) as exc:
        raise DindindError(f"cannot read the {what} {path}: {exc}", hint=hint) from None


def write_if_changed(path, data, mode=0o644):
    """Write ``data`` atomically unless the file already holds exactly it.

    Keeps mtimes (and doit's checks) still on a no-op. Returns True if written.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    try:
        if path.read_bytes() == data and (path.stat().st_mode & 0o777) == mode:
            return False
    except FileNotFoundError:
        pass
    write_bytes(path, data, mode)
    return True


def copy_file(src, dst, mode=None):
    """Copy ``src`` to ``dst`` atomically, streaming."""
    with atomic_path(dst) as tmp:
        with open(src, "rb") as fi, open(tmp, "wb") as fo:
            shutil.copyfileobj(fi, fo, CHUNK)
        if mode is not None:
            os.chmod(tmp, mode)
    return Path(dst)


class DeterministicTar:
    """A tar writer whose bytes depend only on the entries given.

    Entries are sorted, owned by root, stamped with ``mtime`` and carry only
    the permission bits given, so a build context (and the COPY layers made
    from it) is the same in every checkout and on every day.
    """

    def __init__(self, mtime):
        self.mtime = int(mtime)
        self.entries = {}

    def add_file(self, arcname, src, mode=0o644):
        self.entries[self._norm(arcname)] = ("file", Path(src), mode)

    def add_bytes(self, arcname, data, mode=0o644):
        if isinstance(data, str):
            data = data.encode()
        self.entries[self._norm(arcname)] = ("bytes", data, mode)

    def add_tree(self, arcdir, srcdir):
        srcdir = Path(srcdir)
        for p in sorted(srcdir.rglob("*")):
            if p.is_file():
                mode = 0o755 if os.access(p, os.X_OK) else 0o644
                self.add_file(f"{arcdir}/{p.relative_to(srcdir).as_posix()}", p, mode)

    @staticmethod
    def _norm(arcname):
        return str(PurePosixPath(arcname.lstrip("/")))

    def _info(self, name, kind, size=0, mode=0o644):
        ti = tarfile.TarInfo(name)
        ti.type = kind
        ti.size = size
        ti.mode = mode
        ti.mtime = self.mtime
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        return ti

    def write(self, fileobj):
        dirs = set()
        for name in self.entries:
            parts = PurePosixPath(name).parts
            for i in range(1, len(parts)):
                dirs.add(str(PurePosixPath(*parts[:i])))
        with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.GNU_FORMAT) as tf:
            for name in sorted(dirs | set(self.entries)):
                if name in dirs and name not in self.entries:
                    tf.addfile(self._info(name, tarfile.DIRTYPE, mode=0o755))
                    continue
                kind, src, mode = self.entries[name]
                if kind == "bytes":
                    tf.addfile(self._info(name, tarfile.REGTYPE, len(src), mode), io.BytesIO(src))
                else:
                    size = src.stat().st_size
                    with open(src, "rb") as f:
                        tf.addfile(self._info(name, tarfile.REGTYPE, size, mode), f)

    def write_to(self, path):
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                self.write(f)
        return Path(path)


def _stale(name):
    return name.startswith(".") and (name.endswith(".tmp") or name.endswith(".old") or ".staging." in name)


def remove_stale(root):
    """Remove temporary files and folders that an interrupted run left under ``root``.

    Only call this while holding the checkout's lock (dindind.lock): then no
    other run can be writing them. Returns the paths removed.
    """
    removed = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in list(dirnames):
            if _stale(name):
                shutil.rmtree(os.path.join(dirpath, name), ignore_errors=True)
                removed.append(os.path.join(dirpath, name))
                dirnames.remove(name)
        for name in filenames:
            if _stale(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(dirpath, name))
                removed.append(os.path.join(dirpath, name))
    return removed
