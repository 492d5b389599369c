"""Verified downloads: streamed, sha256-checked, all-or-nothing, bounded in time.

Every way a download can fail ends in one :class:`InputError` naming the URL
(credentials removed) and what happened: refused or reset connections, a body
shorter than its Content-Length, an answer that is not HTTP, a TLS failure, a
transfer that stalls (no byte for ``Limits.stall`` seconds) or crawls past the
overall deadline (``Limits.deadline`` seconds, retries included).

Transient failures (refused or reset connections, timeouts, truncated bodies,
HTTP 5xx and 429) are tried again, at most ``Limits.attempts`` times in all,
waiting 1 s, 2 s, ... in between; anything else (4xx, TLS, a non-HTTP answer,
a checksum mismatch) fails at once. The body goes to a temporary file beside
the destination, renamed into place only once its digest matches: a failed or
interrupted download leaves nothing behind.
"""

import errno
import hashlib
import http.client
import re
import socket
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dindind.base import fsutil
from dindind.base.errors import InputError

TIMEOUT = 60                # seconds without a byte before a transfer counts as stalled
DEADLINE = 1800             # seconds a whole download may take, retries included
ATTEMPTS = 3
BACKOFF = 1.0               # seconds before the second attempt; doubled for each one after
_TRANSIENT_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT,
                     errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EPIPE}


@dataclass(frozen=True)
class Limits:
    """How long a download may take and how often it is tried."""

    deadline: float = DEADLINE
    stall: float = TIMEOUT
    attempts: int = ATTEMPTS
    backoff: float = BACKOFF
    sleep: Callable = time.sleep
    clock: Callable = time.monotonic


def limits(cfg):
    """The :class:`Limits` of a config (``build.download_timeout``, ``build.download_stall_timeout``)."""
    return Limits(deadline=cfg.build["download_timeout"], stall=cfg.build["download_stall_timeout"])


def shown(url):
    """``url`` without user:password, as it may appear in a message."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@?#]*@", r"\1", str(url))


class _Failed(Exception):
    """One attempt failed: ``what`` happened; ``transient`` if trying again may help."""

    def __init__(self, what, transient, slow=False):
        super().__init__(what)
        self.what = what
        self.transient = transient
        self.slow = slow                # a timeout: the limits may be too tight for the link


def _describe(exc, got=None):
    """(what happened, transient) for an exception raised while talking to the server."""
    after = f" after {got} bytes" if got else ""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed ({exc.verify_message or exc.reason})", False
    if isinstance(exc, ssl.SSLError):
        return f"TLS failure ({exc.reason or exc})", False
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the server closed the connection without answering", True
    if isinstance(exc, http.client.IncompleteRead):
        return f"the body was cut short{after} (truncated)", True
    if isinstance(exc, http.client.InvalidURL):
        return "not a valid URL", False
    if isinstance(exc, http.client.BadStatusLine):
        line = str(exc.line if exc.line is not None else exc)[:60]
        return f"the server's answer is not HTTP (status line {line!r})", False
    if isinstance(exc, http.client.HTTPException):
        return f"the server's answer is malformed ({type(exc).__name__}: {str(exc)[:100]})", False
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused", True
    if isinstance(exc, ConnectionResetError):
        return f"connection reset by the server{after}", True
    if isinstance(exc, TimeoutError):
        return "timed out", True
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host ({exc.strerror})", exc.errno == socket.EAI_AGAIN
    if isinstance(exc, OSError):
        return (exc.strerror or str(exc)) + after, exc.errno in _TRANSIENT_ERRNOS
    return str(exc), False


def _open(url, timeout):
    """The response to GET ``url``; :class:`_Failed` if there is none."""
    try:
        return urllib.request.urlopen(url, timeout=timeout)
    except TimeoutError:
        return _raise(f"no answer within {timeout:g} s", True, slow=True)
    except urllib.error.HTTPError as exc:
        exc.close()                     # it holds the response (and its socket) open
        return _raise(f"HTTP {exc.code} {exc.reason}", exc.code >= 500 or exc.code == 429)
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            return _raise(f"no connection within {timeout:g} s", True, slow=True)
        if isinstance(reason, BaseException):
            return _raise(*_describe(reason))
        return _raise(str(reason), False)
    except (http.client.HTTPException, OSError, ValueError) as exc:
        return _raise(*_describe(exc))


def _raise(what, transient, slow=False):
    raise _Failed(what, transient, slow)


def _fetch(url, tmp, h, lim, deadline):
    """Stream one attempt into ``tmp``, updating ``h``; :class:`_Failed` on any network failure."""
    now = lim.clock()
    if now >= deadline:
        raise _Failed(f"not finished within {lim.deadline:g} s", False, slow=True)
    timeout = min(lim.stall, deadline - now)
    got = 0
    with _open(url, timeout) as resp, open(tmp, "wb") as out:
        expected = getattr(resp, "length", None)           # Content-Length, when the server sent one
        read = getattr(resp, "read1", resp.read)            # what has arrived, not a whole chunk
        while True:
            try:
                block = read(fsutil.CHUNK)
            except TimeoutError:
                if lim.clock() >= deadline:
                    raise _Failed(f"not finished within {lim.deadline:g} s ({got} bytes received)",
                                  False, slow=True) from None
                raise _Failed(f"stalled: no data for {timeout:g} s after {got} bytes", True, slow=True) from None
            except (http.client.HTTPException, OSError, ValueError) as exc:
                raise _Failed(*_describe(exc, got)) from None
            if not block:
                break
            got += len(block)
            h.update(block)
            try:
                out.write(block)
            except OSError as exc:
                raise _cannot_write(tmp, exc) from None
            if lim.clock() >= deadline:
                raise _Failed(f"not finished within {lim.deadline:g} s ({got} bytes received)", False, slow=True)
    if expected is not None and got < expected:
        raise _Failed(f"the body was cut short after {got} of {expected} bytes (truncated)", True)
    return got


def _cannot_write(path, exc):
    return InputError(f"cannot write {path}: {exc.strerror or exc}",
                      hint="check that the cache folder is writable and has room")


def download(url, sha256, dest, key, limits=None):
    """Stream ``url`` to ``dest`` (via a temp file beside it), verifying ``sha256``.

    ``key`` names the config key(s) the URL and digest come from, for the
    hints; ``limits`` bounds the time and the attempts (:class:`Limits`).
    Side effect: creates ``dest``; on any failure nothing is left behind.
    """
    lim = limits or Limits()
    name = shown(url)
    if name != url:
        raise InputError(f"cannot download {name}: user:password in the URL is not supported",
                         hint=f"put a URL without credentials in {key} (or download it yourself and use "
                              "a file:// URL)")
    deadline = lim.clock() + lim.deadline
    attempt = 0
    while True:
        attempt += 1
        h = hashlib.sha256()
        try:
            with fsutil.atomic_path(dest, suffix=".part") as tmp:
                _fetch(url, tmp, h, lim, deadline)
                if h.hexdigest() != sha256:
                    raise InputError(f"checksum mismatch for {name}: expected sha256 {sha256}, "
                                     f"got {h.hexdigest()}",
                                     hint=f"the download is corrupt or the sha256 in {key} is wrong; check "
                                          "it against the release's published checksums")
            return Path(dest)
        except _Failed as exc:
            delay = lim.backoff * 2 ** (attempt - 1)
            if not exc.transient or attempt >= lim.attempts or lim.clock() + delay >= deadline:
                tries = f" (gave up after {attempt} attempts)" if attempt > 1 else ""
                slow = ("; a slow link may need a larger build.download_timeout or "
                        "build.download_stall_timeout") if exc.slow else ""
                raise InputError(f"cannot download {name}: {exc.what}{tries}",
                                 hint=f"check {key} and the network (or use a file:// URL){slow}") from None
            lim.sleep(delay)
        except OSError as exc:          # the network's errors are _Failed: this is the cache folder
            raise _cannot_write(dest, exc) from None


def cached(url, sha256, dest, key, limits=None):
    """The verified copy of ``url`` at ``dest``, downloading only when needed.

    A cached file whose digest no longer matches is deleted and fetched
    again; a verified cache hit makes no request.
    """
    dest = Path(dest)
    if dest.is_file():
        if fsutil.sha256_file(dest) == sha256:
            return dest
        dest.unlink()
    return download(url, sha256, dest, key, limits)
