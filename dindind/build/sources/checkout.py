"""``kubernetes.source: checkout``: a developer's Kubernetes source checkout, built in place.

``go build`` runs in the checkout (its go.work, or its go.mod) with every
output (``-o``) outside it, under ``artifacts/kubernetes/checkout-<version>/``,
and with GOFLAGS that never write go.mod or go.sum (no ``-mod=mod``) and no
VCS stamping (``git status`` would refresh the index). The checkout is never
modified. The binaries report ``kubernetes.version``.

The task runs on every build: Go decides what changed (an unchanged binary
is not even relinked), and only files whose sha256 changed are replaced, so
an unchanged checkout reruns nothing downstream and one edited file rebuilds
only the binaries, images and packages that hold it.
"""

import re
from pathlib import Path

from dindind.base.errors import InputError
from dindind.base.layout import rfc3339
from dindind.build.sources import gobuild, tree


def tree_root(cfg, layout):
    """``artifacts/kubernetes/checkout-<version>`` (pure)."""
    return gobuild.root_for(layout, "checkout", cfg.kubernetes["version"])


def extra_images(cfg, layout):
    """etcd, coredns, pause: built beside the tree (pure)."""
    return gobuild.extra_image_paths(tree_root(cfg, layout))


def task_io(cfg, layout):
    return {"file_dep": [layout.stamp("base")],
            "targets": gobuild.task_targets(tree_root(cfg, layout)),
            "config": {"source": "checkout", "path": str(cfg.resolve(cfg.kubernetes["path"])),
                       "version": cfg.kubernetes["version"], "recipe": gobuild.RECIPE,
                       "epoch": cfg.source_date_epoch},
            "always": True}


_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")      # SHA-1 or SHA-256 object name


def _git_dirs(src):
    """(the checkout's git dir, its common dir): ``.git``, or where a ``.git`` file points (git worktree)."""
    git = src / ".git"
    if not git.is_file():
        return git, git
    text = git.read_text().strip()
    if not text.startswith("gitdir:"):
        return git, git
    gitdir = src / text.removeprefix("gitdir:").strip()      # an absolute path stays absolute
    common = gitdir / "commondir"
    return gitdir, (gitdir / common.read_text().strip()) if common.is_file() else gitdir


def _head_commit(src):
    """The commit HEAD names (files read, git is not run), or '' when it cannot be told.

    A worktree's (``git worktree add``) ``.git`` is a file naming its git dir,
    whose HEAD is its own while branches live in the common dir. Only a hex
    object name is returned: it goes into the linker's -X flags.
    """
    try:
        gitdir, common = _git_dirs(src)
        head = (gitdir / "HEAD").read_text().strip()
        found = head
        if not _COMMIT.fullmatch(head):
            ref = head.removeprefix("ref: ").strip()
            loose = [p for p in (gitdir / ref, common / ref) if p.is_file()]
            if loose:
                found = loose[0].read_text().strip()
            else:
                found = next((line.split()[0] for line in (common / "packed-refs").read_text().splitlines()
                              if line.endswith(" " + ref)), "")
    except (OSError, ValueError):           # unreadable, or not text (UnicodeDecodeError)
        return ""
    return found if _COMMIT.fullmatch(found) else ""


def source_dir(cfg):
    """The checkout, after checking it is one: a folder with go.mod (k8s.io/kubernetes) and cmd/kubelet."""
    src = cfg.resolve(cfg.kubernetes["path"]).resolve()
    hint = "set kubernetes.path to the root of a Kubernetes source checkout (git clone of kubernetes/kubernetes)"
    if not (src / "cmd" / "kubelet").is_dir():
        raise InputError(f"{src} is not a Kubernetes source checkout: it has no cmd/kubelet", hint=hint)
    try:
        module = gobuild.parse_gomod((src / "go.mod").read_text())
    except OSError:
        raise InputError(f"{src} is not a Kubernetes source checkout: it has no go.mod", hint=hint) from None
    if module["module"] != gobuild.K8S_MODULE:
        raise InputError(f"{src}/go.mod is module {module['module']!r}, not {gobuild.K8S_MODULE}", hint=hint)
    return src, module


def plan(cfg, layout, base=None, jobs=2):
    """Check the checkout, the version and Go; return (Plan, minor). No side effects beyond `go env`."""
    version = cfg.kubernetes["version"]
    minor = gobuild.check_version(version)
    src, module = source_dir(cfg)
    work = src / "go.work"
    env = gobuild.go_env("-buildvcs=false", str(work) if work.is_file() else "off")
    gobuild.check_go(module["go"] or "1.0", f"the checkout {src}", env)
    return gobuild.Plan(
        version=version, root=tree_root(cfg, layout), cwd=src, pkg=lambda rel: f"./{rel}", env=env,
        ldflags=gobuild.k8s_ldflags(version, _head_commit(src), "", rfc3339(cfg.source_date_epoch)),
        constants=(src / "cmd/kubeadm/app/constants/constants.go").read_text()
        if (src / "cmd/kubeadm/app/constants/constants.go").is_file() else "",
        pause_c=src / "build/pause/linux/pause.c", epoch=cfg.source_date_epoch,
        extras_env=gobuild.go_env("-mod=mod -buildvcs=false"), cache=layout.cache / "go",
        base=base, source="checkout", jobs=jobs), minor


def prepare(cfg, layout):
    """Build the checkout (Go decides what is stale), publish what changed; return the validated Tree."""
    p, minor = plan(cfg, layout, gobuild.base_image(layout))
    gobuild.build_tree(p, minor)
    return tree.read_tree(p.root, extra_images(cfg, layout))
