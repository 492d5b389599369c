"""Verified downloads: streamed, sha256-checked, all-or-nothing."""

import hashlib
import urllib.error
import urllib.request
from pathlib import Path

from . import fsutil
from .errors import InputError

TIMEOUT = 60


def download(url, sha256, dest, key):
    """Stream ``url`` to ``dest`` (via a temp file beside it), verifying ``sha256``.

    ``key`` names the config key(s) the URL and digest come from, for the
    hints. Side effect: creates ``dest``; on any failure nothing is left behind.
    """
    h = hashlib.sha256()
    net_hint = f"check {key} and the network (or use a file:// URL)"
    try:
        with fsutil.atomic_path(dest, suffix=".part") as tmp:
            with urllib.request.urlopen(url, timeout=TIMEOUT) as resp, open(tmp, "wb") as out:
                for block in iter(lambda: resp.read(fsutil.CHUNK), b""):
                    h.update(block)
                    out.write(block)
            if h.hexdigest() != sha256:
                raise InputError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {h.hexdigest()}",
                                 hint=f"the download is corrupt or the sha256 in {key} is wrong; check it "
                                      "against the release's published checksums")
    except urllib.error.HTTPError as exc:
        exc.close()                     # it holds the response (and its socket) open
        raise InputError(f"cannot download {url}: HTTP {exc.code} {exc.reason}", hint=net_hint) from None
    except urllib.error.URLError as exc:
        raise InputError(f"cannot download {url}: {exc.reason}", hint=net_hint) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot download {url}: {exc}", hint=net_hint) from None
    return Path(dest)


def cached(url, sha256, dest, key):
    """The verified copy of ``url`` at ``dest``, downloading only when needed.

    A cached file whose digest no longer matches is deleted and fetched
    again; a verified cache hit makes no request.
    """
    dest = Path(dest)
    if dest.is_file():
        if fsutil.sha256_file(dest) == sha256:
            return dest
        dest.unlink()
    return download(url, sha256, dest, key)
