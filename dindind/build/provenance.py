"""Where an image comes from: the project's git state and the OCI labels derived from it.

Read-only git commands (``--no-optional-locks``: nothing is written, not
even the index); a checkout without git, or a copy, gives "unknown"/None.
"""

import re

from dindind.base import proc
from dindind.base.errors import CommandError
from dindind.base.layout import rfc3339


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
