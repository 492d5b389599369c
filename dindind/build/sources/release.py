"""``kubernetes.source: release``: the official server and test tarballs, downloaded and extracted.

Both are verified against their configured sha256, cached under
``artifacts/cache/downloads`` and extracted side by side into
``layout.release_root(server_sha256)``.
"""

import json

from dindind.base import download, fsutil
from dindind.build.sources import tree

RELEASE_STAMP = ".dindind-release.json"


def tree_root(cfg, layout):
    """``artifacts/kubernetes/release-<server sha256 prefix>`` (pure)."""
    return layout.release_root(cfg.kubernetes["server_sha256"])


def extra_images(cfg, layout):
    """``kubernetes.extra_images`` (pure)."""
    return tree.configured_extra_images(cfg)


def task_io(cfg, layout):
    k = cfg.kubernetes
    return {"file_dep": list(extra_images(cfg, layout)),
            "targets": list(tree.tree_paths(tree_root(cfg, layout)).required()),
            "config": {"source": "release", **{key: k[key] for key in
                       ("server_url", "server_sha256", "test_url", "test_sha256")}}}


def fetch(url, sha256, layout, limits=None):
    """The verified cached copy of ``url``: ``layout.cache/downloads/<sha256>.tar.gz``.

    Side effects: a cached file whose digest no longer matches is deleted and
    downloaded again; a missing one is downloaded (bounded by ``limits``, a
    :class:`dindind.download.Limits`). A verified cache hit makes no request.
    """
    return download.cached(url, sha256, layout.cache / "downloads" / f"{sha256}.tar.gz",
                           "kubernetes.server_url/test_url and *_sha256", limits)


def _release_stamp(k):
    return {"server_sha256": k["server_sha256"], "test_sha256": k["test_sha256"]}


def _extracted(root, stamp):
    try:
        return json.loads((root / RELEASE_STAMP).read_text()) == stamp and (root / "kubernetes").is_dir()
    except (OSError, ValueError):
        return False


def fetch_release(cfg, layout):
    """Download, verify, cache and extract the configured release; return its :class:`Tree`.

    Side effects: fills ``layout.cache/downloads`` and replaces
    ``layout.release_root(server_sha256)`` with both tarballs extracted side
    by side (in one temporary folder, swapped in whole, with a stamp naming
    both digests). When the stamp already matches, nothing is downloaded or
    extracted again. Escaping entries are refused (fsutil.safe_extract).
    """
    k = cfg.kubernetes
    root = tree_root(cfg, layout)
    stamp = _release_stamp(k)
    if not _extracted(root, stamp):
        limits = download.limits(cfg)
        server = fetch(k["server_url"], k["server_sha256"], layout, limits)
        test = fetch(k["test_url"], k["test_sha256"], layout, limits)
        fsutil.safe_extract([server, test], root, what="release tarball")
        # written last: its presence means the extraction above completed
        fsutil.write_json(root / RELEASE_STAMP, stamp)
    return tree.read_tree(root, extra_images(cfg, layout))


prepare = fetch_release
