"""One doit run at a time per checkout: an flock on artifacts/.lock.

The second run waits (saying so once) instead of racing the first for the
dependency database and the artifacts. The lock dies with the process, so
a killed run never leaves it stale.
"""

import fcntl
import os
import sys

_HELD = []


def hold(path, wait=True, out=sys.stderr):
    """Take the lock for the life of this process; wait (or fail) if another holds it."""
    if _HELD:
        return True
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        if not wait:
            os.close(fd)
            return False
        out.write(f"dindind: another doit run (pid {other}) holds {path}; waiting for it to finish ...\n")
        out.flush()
        fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD.append(fd)
    return True
