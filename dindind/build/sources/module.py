"""``kubernetes.source: module``: Kubernetes built from the Go module proxy at ``kubernetes.version``.

A generated work module (``artifacts/cache/go/kubernetes-<version>``)
requires k8s.io/kubernetes at that version, with each staging module
(k8s.io/api ...) replaced by its published v0.X.Y, derived from upstream's
go.mod (:func:`dindind.build.sources.gobuild.work_gomod`). The tree goes to
``artifacts/kubernetes/module-<version>/`` (see :mod:`gobuild` for the steps).
The task is up to date by its config (version, recipe, epoch) and targets;
when it runs, only changed files are replaced.
"""

import datetime
import json
from pathlib import Path

from dindind.base.layout import rfc3339
from dindind.build.sources import gobuild, tree


def tree_root(cfg, layout):
    """``artifacts/kubernetes/module-<version>`` (pure)."""
    return gobuild.root_for(layout, "module", cfg.kubernetes["version"])


def extra_images(cfg, layout):
    """etcd, coredns, pause: built beside the tree (pure)."""
    return gobuild.extra_image_paths(tree_root(cfg, layout))


def task_io(cfg, layout):
    return {"file_dep": [layout.stamp("base")],
            "targets": gobuild.task_targets(tree_root(cfg, layout)),
            "config": {"source": "module", "version": cfg.kubernetes["version"], "recipe": gobuild.RECIPE,
                       "epoch": cfg.source_date_epoch}}


def plan(cfg, layout, base=None):
    """Check the version and Go, download k8s.io/kubernetes, write the work module; return (Plan, minor).

    Side effects: the module download (Go's module cache) and the work
    module's go.mod/go.sum under ``artifacts/cache/go``.
    """
    version = cfg.kubernetes["version"]
    minor = gobuild.check_version(version)
    root = tree_root(cfg, layout)
    log = root / "logs" / "go-build.log"
    env = gobuild.go_env("-mod=mod -buildvcs=false")
    gobuild.go_version(env)
    cache = layout.cache / "go"
    wdir, info, upstream = gobuild.work_module(cache, "kubernetes", gobuild.K8S_MODULE, version, env, log,
                                               local_version=f"v0.{minor}.{version.split('.')[2]}")
    gobuild.check_go(upstream["go"] or "1.0", f"Kubernetes {version}", env)
    meta = json.loads(Path(info["Info"]).read_text())
    commit = (meta.get("Origin") or {}).get("Hash", "")
    when = datetime.datetime.fromisoformat(meta["Time"].replace("Z", "+00:00"))
    kdir = Path(info["Dir"])
    return gobuild.Plan(
        version=version, root=root, cwd=wdir, pkg=lambda rel: f"{gobuild.K8S_MODULE}/{rel}", env=env,
        ldflags=gobuild.k8s_ldflags(version, commit, "clean", rfc3339(int(when.timestamp()))),
        constants=(kdir / "cmd/kubeadm/app/constants/constants.go").read_text(),
        pause_c=kdir / "build/pause/linux/pause.c", epoch=cfg.source_date_epoch,
        extras_env=env, cache=cache, base=base, source="module"), minor


def prepare(cfg, layout):
    """Build (or bring up to date) the tree from the module proxy; return its validated Tree."""
    p, minor = plan(cfg, layout, gobuild.base_image(layout))
    gobuild.build_tree(p, minor)
    return tree.read_tree(p.root, extra_images(cfg, layout))
