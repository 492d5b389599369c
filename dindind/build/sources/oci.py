"""One-layer docker-archives from files on disk, streamed (the built Kubernetes images).

:func:`dindind.docker.archive.image_bytes` builds an archive in memory, which
is right for the sample's tiny stand-ins and wrong for a 100 MB
kube-apiserver. :func:`write_image` makes the same format (the same config,
manifest and layer layout, byte for byte for the same inputs; a unit test
holds the two together) while reading each file in chunks: the layer goes to
a temporary file, then into the archive, and the archive appears at its path
only when complete.
"""

import hashlib
import json
import os
import tempfile
from pathlib import Path, PurePosixPath

from dindind.base import fsutil
from dindind.base.layout import rfc3339
from dindind.docker.archive import DEFAULT_ENV


def _json_bytes(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def write_image(path, repo_tags, files, *, epoch, entrypoint=None, env=None):
    """Write a one-layer docker-archive of ``files`` to ``path`` atomically; return the path.

    ``files`` maps absolute in-image paths to ``(source path on disk, mode)``.
    Everything is owned by root and stamped with ``epoch``; equal inputs give
    equal bytes. Side effects: a temporary layer file beside ``path``
    (removed), then ``path`` replaced.
    """
    repo_tags = list(repo_tags)
    if not repo_tags:
        raise ValueError("an image needs at least one repo tag")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    layer = fsutil.DeterministicTar(epoch)
    for inner, (src, mode) in files.items():
        p = PurePosixPath(inner)
        if not p.is_absolute() or ".." in p.parts or p == PurePosixPath("/"):
            raise ValueError(f"image file path must be absolute and plain: {inner!r}")
        layer.add_file(str(p), src, mode)
    fd, layer_tmp = tempfile.mkstemp(prefix=f".{path.name}.layer.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with open(layer_tmp, "wb") as f:
            layer.write(f)
        diff_id = "sha256:" + fsutil.sha256_file(layer_tmp)
        created = rfc3339(epoch)
        container_config = {"Env": list(DEFAULT_ENV) if env is None else list(env)}
        if entrypoint:
            container_config["Entrypoint"] = list(entrypoint)
        config_blob = _json_bytes({
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": container_config,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": created, "created_by": "dindind dockerarchive.write_image"}],
        })
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
        archive.add_file(f"{layer_dir}/layer.tar", layer_tmp)
        archive.add_bytes("repositories", _json_bytes(repositories))
        with fsutil.atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                archive.write(f)
            os.chmod(tmp, 0o644)
    finally:
        Path(layer_tmp).unlink(missing_ok=True)
    return path
