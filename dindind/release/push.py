"""Pushing a release: tag, push, ask the registry, and record the digests only when all are verified."""

import re
from pathlib import Path

from dindind.base import fsutil
from dindind.base.errors import DindindError, EngineError
from dindind.docker import engine, images
from dindind.docker import registry as docker_registry
from dindind.release.manifest import IMAGES, _finish, _link, load_manifest


REGISTRY_RE = r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?(/[a-z0-9]+([._-][a-z0-9]+)*)*$"


def check_registry(registry):
    """``host[:port][/path]`` without a scheme or trailing slash; DindindError otherwise."""
    if not isinstance(registry, str) or not re.fullmatch(REGISTRY_RE, registry):
        raise DindindError(f"invalid --push registry {registry!r}",
                           hint="give host[:port] (optionally /path), e.g. 127.0.0.1:5000 or "
                                "registry.example.com/team, without http:// or a trailing slash")
    return registry


def push_ref(registry, name, version):
    """``<registry>/dindind/<name>:<version>``."""
    return f"{registry}/dindind/{name}:{version}"


def record_push(dest, registry, records):
    """Add verified push records for ``registry`` to the release in ``dest`` (atomic swap)."""
    dest = Path(dest).absolute()
    manifest = load_manifest(dest)
    manifest.setdefault("registry", {})[registry] = records
    with fsutil.atomic_dir(dest) as tmp:
        for rel in manifest["artifacts"]:
            _link(dest / rel, tmp / rel)
        _finish(tmp, manifest)
    return manifest


def verify_pushed(ref, digest, image_id):
    """Check that the registry serves ``digest`` for ``ref``; return how it was checked.

    Reads the manifest digest with the registry API (HEAD). Where that
    cannot be done from here (the registry wants credentials, or speaks
    plain HTTP to dockerd as an insecure registry) the engine, which just
    pushed to it, is asked instead: pull by digest, which must give back
    ``image_id``. A registry that answers with another digest is an error.
    """
    try:
        served = docker_registry.registry_manifest_digest(ref)
    except EngineError:
        repo, _ = images.split_ref(ref)
        pulled = docker_registry.pull_by_digest(repo, digest)
        if pulled != image_id:
            raise EngineError(f"{repo}@{digest} is image {pulled[:19]}, not the pushed {image_id[:19]}") from None
        return "pull by digest"
    if served != digest:
        raise EngineError(f"the registry serves {served or 'nothing'} for {ref}, but the push reported {digest}",
                          hint="push again: run the release again")
    return "registry manifest"


def push_release(dest, registry, echo=print):
    """Tag, push and verify the release's images; record the digests only when all are verified."""
    dest = Path(dest).absolute()
    manifest = load_manifest(dest)
    if manifest is None:
        raise DindindError(f"no release in {dest} to push")
    records = {}
    for name in IMAGES:
        img = manifest["images"][name]
        ref = push_ref(registry, name, manifest["version"])
        if engine.image_id(img["id"]) != img["id"]:
            raise EngineError(f"the {name} image {img['id'][:19]} of this release is no longer in the engine",
                              hint=f"load it (docker load -i {dest / img['file']}) or rebuild and release again")
        images.tag(img["id"], ref)
        echo(f"  docker push {ref}")
        digest = docker_registry.push(ref, echo=echo)
        how = verify_pushed(ref, digest, img["id"])
        echo(f"  verified {ref}@{digest} ({how})")
        records[name] = {"ref": ref, "digest": digest, "id": img["id"], "verified_by": how}
    return record_push(dest, registry, records)
