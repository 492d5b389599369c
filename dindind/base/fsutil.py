"""Filesystem helpers: atomic writes, digests, safe and deterministic tars.

Nothing here leaves a half-written artifact behind: every writer works on a
temporary name in the target's own directory and renames it into place only
when complete, so an interrupted build (Ctrl-C, kill -9) leaves either the old
artifact or none, never a truncated one that a later run would accept.
"""

import contextlib
import errno
import hashlib
import io
import json
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath

from dindind.base.errors import DindindError, InputError

CHUNK = 1 << 20


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


# ------------------------------------------------------------------ safe extraction

MAX_EXTRACT_BYTES = 20 << 30     # 20 GiB of file data per extraction (a release is ~0.5 GB)
MAX_EXTRACT_ENTRIES = 200_000     # entries per extraction (a release has ~200)

_REFUSE_HINT = "the archive is malicious or broken; get it again from a trusted source"
_CORRUPT_HINT = "the file is truncated or not a tar archive; download or rebuild it"
_WRITE_HINT = "check the free space and permissions there; otherwise the archive is malformed"

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class _Extraction:
    """One extraction into ``root``, possibly from several archives (limits span them all).

    Python's tarfile only parses; every filesystem call is made here, relative
    to a directory descriptor, one name component at a time: each parent is
    created or opened with O_NOFOLLOW and must be a real directory, files are
    created with O_CREAT|O_EXCL|O_NOFOLLOW, so no link (from the archive or
    already on disk) is ever followed while writing. That makes the result
    independent of the Python version and of tarfile's ``filter=`` (absent
    before 3.11.4 and bypassed by link chains, CVE-2025-4517).
    """

    def __init__(self, root, symlinks, max_bytes, max_entries):
        self.symlinks, self.max_bytes, self.max_entries = symlinks, max_bytes, max_entries
        self.entries = self.bytes = 0
        self.files = set()      # name parts of regular files written so far (hard link targets)
        self.dirs = {}          # name parts of directory entries -> (mode, mtime), applied at the end
        self.label = "archive"
        self.root = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self):
        os.close(self.root)

    # -- errors

    def refuse(self, name, problem):
        raise InputError(f"refusing {self.label}: entry {name!r} {problem}", hint=_REFUSE_HINT)

    def unreadable(self, name, exc):
        where = f" at entry {name!r}" if name is not None else ""
        raise InputError(f"cannot read {self.label}{where}: {exc}", hint=_CORRUPT_HINT)

    # -- names

    def parts(self, name, raw):
        """``raw`` as name components ('.' and empty ones dropped); refuse absolute, '..' and NUL."""
        if "\0" in raw:
            self.refuse(name, "has a NUL character in its name")
        if raw.startswith("/"):
            self.refuse(name, "escapes the extraction directory (absolute name)")
        parts = tuple(p for p in raw.split("/") if p not in ("", "."))
        if ".." in parts:
            self.refuse(name, "escapes the extraction directory ('..' in its name)")
        return parts

    def walk(self, name, parts, create):
        """A descriptor of the directory ``parts`` under the root, never through a link."""
        fd = os.dup(self.root)
        try:
            for i, part in enumerate(parts):
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                try:
                    nxt = os.open(part, _O_DIR, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                        raise
                    nxt = None
                if nxt is None or not stat.S_ISDIR(os.fstat(nxt).st_mode):
                    link = _is_link(part, fd)
                    if nxt is not None:
                        os.close(nxt)
                    what = "a link (never followed)" if link else "not a directory"
                    self.refuse(name, f"lies under {'/'.join(parts[:i + 1])!r}, which is {what}")
                os.close(fd)
                fd = nxt
            return fd
        except BaseException:
            os.close(fd)
            raise

    def clear(self, name, parent, leaf, keep_dir=False):
        """Remove a file or link already at ``leaf`` (a later entry wins); never a directory.

        Returns True when a directory is there and ``keep_dir`` allows it.
        """
        try:
            st = os.stat(leaf, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            self.refuse(name, "would replace a directory")
        os.unlink(leaf, dir_fd=parent)
        return False

    # -- entries

    def extract(self, tf, label, rename=None, members=None):
        self.label = label
        name = None
        try:
            for m in (tf if members is None else members):
                name = m.name
                try:
                    self.member(tf, m, rename)
                except OSError as exc:
                    if exc.errno is None:       # gzip/bz2 data errors are OSErrors without an errno
                        raise
                    raise InputError(f"cannot extract {self.label}: entry {name!r}: {exc.strerror or exc}",
                                     hint=_WRITE_HINT) from None
                name = None
        except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
            self.unreadable(name, exc)

    def member(self, tf, m, rename):
        name = m.name
        self.entries += 1
        if self.entries > self.max_entries:
            self.refuse(name, f"is one too many: at most {self.max_entries} entries are extracted")
        parts = self.parts(name, name)
        if rename is not None:
            new = rename("/".join(parts))
            if new is None:
                return
            parts = self.parts(name, new)
        if m.isdir():
            self.directory(name, parts, m)
        elif not parts:
            self.refuse(name, "has an empty name")
        elif m.isreg():
            self.regular(name, parts, m, tf)
        elif m.issym():
            self.symlink(name, parts, m)
        elif m.islnk():
            self.hardlink(name, parts, m, rename)
        else:
            kind = {tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device",
                    tarfile.FIFOTYPE: "a fifo"}.get(m.type, f"of unsupported type {m.type!r}")
            self.refuse(name, f"is {kind}; only files and directories are extracted")

    def count(self, name, size):
        if size < 0 or self.bytes + size > self.max_bytes:
            self.refuse(name, f"takes the extracted size past the limit of {self.max_bytes} bytes")
        self.bytes += size

    def directory(self, name, parts, m):
        if not parts:
            return                      # "./": the root itself keeps its own mode
        parent = self.walk(name, parts[:-1], create=True)
        try:
            if not self.clear(name, parent, parts[-1], keep_dir=True):
                os.mkdir(parts[-1], 0o700, dir_fd=parent)
        finally:
            os.close(parent)
        self.files.discard(parts)
        self.dirs[parts] = (m.mode, m.mtime)

    def create(self, name, parts, mode, mtime, copy):
        """Write a new regular file at ``parts``; ``copy(out)`` fills it."""
        parent = self.walk(name, parts[:-1], create=True)
        try:
            self.clear(name, parent, parts[-1])
            fd = os.open(parts[-1], _O_NEW, 0o600, dir_fd=parent)
        finally:
            os.close(parent)
        with open(fd, "wb") as out:
            copy(out)
            out.flush()
            os.fchmod(fd, (mode & 0o755) | 0o600)
            _set_mtime(fd, mtime)
        self.files.add(parts)

    def regular(self, name, parts, m, tf):
        self.count(name, m.size)
        src = tf.extractfile(m)
        self.create(name, parts, m.mode, m.mtime, lambda out: shutil.copyfileobj(src, out, CHUNK))

    def symlink(self, name, parts, m):
        if not self.symlinks:
            self.refuse(name, "is a symbolic link; this archive may hold only files and directories")
        target = m.linkname
        if not target or "\0" in target:
            self.refuse(name, "is a symbolic link with an empty or NUL-bearing target")
        if target.startswith("/"):
            self.refuse(name, f"-> {target!r} escapes the extraction directory (absolute target)")
        tparts = [p for p in target.split("/") if p not in ("", ".")]
        ups = 0
        while ups < len(tparts) and tparts[ups] == "..":
            ups += 1
        # '..' after a name would go up from wherever that name leads (a link, maybe), not
        # from where it reads: only a leading run of '..' can be checked without resolving
        if ".." in tparts[ups:]:
            self.refuse(name, f"-> {target!r} has '..' after a name in its target")
        if ups > len(parts) - 1:
            self.refuse(name, f"-> {target!r} escapes the extraction directory")
        parent = self.walk(name, parts[:-1], create=True)
        try:
            self.clear(name, parent, parts[-1])
            os.symlink("/".join(tparts) or ".", parts[-1], dir_fd=parent)
        finally:
            os.close(parent)
        self.files.discard(parts)

    def hardlink(self, name, parts, m, rename):
        """A hard link becomes an independent copy of an earlier regular file of the archive.

        A copy, not os.link: nothing outside the root can ever share an inode
        with an extracted file, and writing one extracted file never changes another.
        """
        target = self.parts(name, m.linkname)
        if rename is not None and target:
            new = rename("/".join(target))
            target = self.parts(name, new) if new is not None else None
        if target not in self.files:
            self.refuse(name, f"is a hard link to {m.linkname!r}, which is not an earlier file of the archive")
        if target == parts:
            return
        parent = self.walk(name, target[:-1], create=False)
        try:
            src = os.open(target[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        finally:
            os.close(parent)
        with open(src, "rb") as f:
            st = os.fstat(src)
            if not stat.S_ISREG(st.st_mode):
                self.refuse(name, f"is a hard link to {m.linkname!r}, which is not a regular file")
            self.count(name, st.st_size)
            self.create(name, parts, st.st_mode, m.mtime, lambda out: shutil.copyfileobj(f, out, CHUNK))

    def finish(self):
        """Directory modes and mtimes, deepest first (writing into a directory changes its mtime)."""
        for parts in sorted(self.dirs, key=len, reverse=True):
            mode, mtime = self.dirs[parts]
            fd = self.walk("/".join(parts), parts, create=False)
            try:
                os.fchmod(fd, (mode & 0o755) | 0o700)
                _set_mtime(fd, mtime)
            finally:
                os.close(fd)


def _is_link(leaf, dir_fd):
    try:
        return stat.S_ISLNK(os.stat(leaf, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _set_mtime(fd, mtime):
    with contextlib.suppress(OverflowError, ValueError, TypeError):
        os.utime(fd, (mtime, mtime))


@contextlib.contextmanager
def _extraction(root, symlinks, max_bytes, max_entries):
    ex = _Extraction(root, symlinks, max_bytes, max_entries)
    try:
        yield ex
        try:
            ex.finish()
        except OSError as exc:
            raise InputError(f"cannot extract {ex.label}: {exc}", hint=_WRITE_HINT) from None
    finally:
        ex.close()


def extract_tar(tf, root, label, rename=None, members=None, symlinks=False,
                max_bytes=MAX_EXTRACT_BYTES, max_entries=MAX_EXTRACT_ENTRIES):
    """Extract the open TarFile ``tf`` into the existing directory ``root``.

    ``label`` names the archive in errors ("CNI plugins tarball /x.tgz").
    ``rename(name)`` maps each normalised entry name (and hard link target) to
    the name to write, or to None to skip the entry; ``members`` replaces
    iterating ``tf``. What is extracted and refused is described in
    :func:`safe_extract`. Not atomic: a refusal leaves what was written so far,
    so extract into a folder of :func:`atomic_dir` (as safe_extract does).
    """
    with _extraction(root, symlinks, max_bytes, max_entries) as ex:
        ex.extract(tf, label, rename, members)
    return Path(root)


def safe_extract(archives, dest, what="archive", symlinks=False,
                 max_bytes=MAX_EXTRACT_BYTES, max_entries=MAX_EXTRACT_ENTRIES):
    """Extract one tar archive, or several side by side, into ``dest``.

    Extracts regular files and directories, and symbolic links only when
    ``symlinks`` is true. Refuses, naming the archive and the entry: absolute
    names, '..' in a name, NUL, an entry under a link or a file (links are
    never followed while writing), symlinks that are absolute or whose target
    climbs out of the root (only a leading run of '..' is allowed), hard links
    to anything but an earlier file of the archive (extracted as a copy),
    devices, fifos and other types, more than ``max_entries`` entries or
    ``max_bytes`` bytes of data (over all archives). Modes keep only 0o755
    (no setuid, setgid, sticky; the owner may always read and write); files
    belong to the extracting user; mtimes are kept. A truncated or corrupt
    archive is an InputError too. Every archive goes to one temporary
    directory first, swapped in whole at the end, so a refusal or failure
    leaves ``dest`` as it was.
    """
    if isinstance(archives, (str, os.PathLike)):
        archives = [archives]
    archives = [Path(a) for a in archives]
    with atomic_dir(dest) as tmp:
        with _extraction(tmp, symlinks, max_bytes, max_entries) as ex:
            for archive in archives:
                label = f"{what} {archive}"
                try:
                    tf = tarfile.open(archive)
                except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
                    raise InputError(f"cannot read {label}: {exc}", hint=_CORRUPT_HINT) from None
                with tf:
                    ex.extract(tf, label)
        os.chmod(tmp, 0o755)
    return Path(dest)


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
