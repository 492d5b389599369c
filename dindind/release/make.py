"""``doit release``: gather what the build made, write the release directory, push it on request."""

from pathlib import Path

from dindind.base import fsutil
from dindind.base.errors import DindindError, EngineError
from dindind.base.layout import rfc3339
from dindind.build.provenance import git_commit, git_describe
from dindind.docker import engine
from dindind.release.manifest import IMAGES, _read_json, check_version, default_dir, write_release
from dindind.release.push import check_registry, push_release


def default_version(kubernetes_version, root):
    """The Kubernetes version plus the project's ``git describe`` ("nogit" outside git), as a docker tag."""
    return check_version(f"{kubernetes_version}-{git_describe(root) or 'nogit'}")


def _node_runtime(cfg):
    """containerd and runc as pinned (suite, version, .deb sha256), or None for the base suite's own."""
    n = cfg.node
    if not n["runtime_suite"]:
        return None
    return {"suite": n["runtime_suite"],
            **{p: {"version": n[f"{p}_version"], "sha256": n[f"{p}_sha256"]} for p in ("containerd", "runc")}}


def _go_build(tree):
    """What a Kubernetes built from Go was built with (go-build.json: Go, every module, flags), or None."""
    path = Path(tree.get("root", "")) / "go-build.json"
    return _read_json(path, "Go build record") if tree.get("root") and path.is_file() else None


def gather(cfg, layout):
    """The built images, debs and provenance of a release (reads the build's stamps; no engine)."""
    from dindind.build import debs as debs_mod

    tree = _read_json(layout.kubernetes / "tree.json", "Kubernetes tree summary")
    stamps = {n: _read_json(layout.stamp(n), f"{n} image stamp") for n in ("base", "node", "cluster")}
    deb_paths = [layout.deb(n) for n in debs_mod.specs(cfg, layout)]
    missing = [str(p) for p in deb_paths if not p.is_file()]
    if missing:
        raise DindindError(f"missing .deb(s): {', '.join(missing)}", hint="run `doit build`")
    cni_version = layout.cni / "VERSION"
    config_bytes = Path(cfg.path).read_bytes() if Path(cfg.path).is_file() else b""
    provenance = {
        "kubernetes": {"version": tree["version"], "source": cfg.kubernetes["source"]},
        "inputs": {
            "base": stamps["base"]["inputs"],
            "node": stamps["node"]["inputs"],
            "cluster": stamps["cluster"]["inputs"],
            "debs": {p.stem: "sha256:" + fsutil.sha256_file(p) for p in deb_paths},
            "cni_version": cni_version.read_text().strip() if cni_version.is_file() else None,
        },
        "base": {"image": stamps["base"]["tags"][0], "id": stamps["base"]["id"],
                 "suite": cfg.base["suite"], "mirror": cfg.base["mirror"]},
        "config": {"file": Path(cfg.path).name, "sha256": fsutil.sha256_bytes(config_bytes),
                   "effective_sha256": fsutil.digest_json(cfg.as_dict())},
        "node_runtime": _node_runtime(cfg),
        "go_build": _go_build(tree),
        "git": {"commit": git_commit(layout.root), "describe": git_describe(layout.root)},
        "source_date_epoch": cfg.source_date_epoch,
        "created": rfc3339(cfg.source_date_epoch),
    }
    images = {n: {"ref": stamps[n]["tags"][0], "id": stamps[n]["id"]} for n in IMAGES}
    return tree["version"], images, deb_paths, provenance


def resolve_dir(cfg, layout, version=None, out_dir=None):
    """(version, release dir) for the options given (the version defaults from the build and git)."""
    if version:
        version = check_version(version)
    else:
        tree = _read_json(layout.kubernetes / "tree.json", "Kubernetes tree summary")
        version = default_version(tree["version"], layout.root)
    return version, (Path(out_dir) if out_dir else default_dir(layout, version)).absolute()


def make(cfg, layout, *, version=None, registry=None, out_dir=None, echo=print):
    """``doit release``: write the release directory, then push it if ``registry`` is given.

    Side effects: the release directory (replaced whole); with a registry,
    tags ``<registry>/dindind/{node,cluster}:<version>`` in the engine and
    pushes them. Returns the release directory.
    """
    if registry:
        check_registry(registry)
    version, dest = resolve_dir(cfg, layout, version, out_dir)
    _, images, deb_paths, provenance = gather(cfg, layout)
    for name, spec in images.items():
        if engine.image_id(spec["ref"]) != spec["id"]:
            raise EngineError(f"{spec['ref']} is not the built {name} image {spec['id'][:19]}",
                              hint="run `doit build` again")
    echo(f"  release {version} -> {dest}")
    manifest = write_release(dest, version, images, deb_paths, provenance, echo=echo)
    if registry:
        manifest = push_release(dest, registry, echo=echo)
    echo(f"  wrote {dest} ({len(manifest['artifacts'])} artifacts"
         + (f", pushed to {', '.join(sorted(manifest['registry']))}" if manifest["registry"] else "") + ")")
    return dest
