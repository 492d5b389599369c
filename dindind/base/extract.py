"""The one safe tar extractor: hostile archives in, only plain files, folders and (on request) tame links out.

:func:`safe_extract` extracts whole archives into a folder swapped in only
when everything succeeded; :func:`extract_tar` extracts an open TarFile (or
chosen members, renamed) into an existing folder. What is refused, and why
no link is ever followed while writing, is told in :class:`_Extraction` and
:func:`safe_extract`. (Moved out of dindind.base.fsutil, which still answers
to these names.)
"""

import contextlib
import errno
import lzma
import os
import shutil
import stat
import tarfile
import zlib
from pathlib import Path

from dindind.base.errors import InputError
from dindind.base.fsutil import CHUNK, atomic_dir

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
