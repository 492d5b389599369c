"""``kubernetes.source: dir``: a folder that already holds a Kubernetes tree, used in place.

Nothing is written into it; ``prepare`` only validates it. The task
depends on whichever of the tree's files exist, so a missing one is named
by ``prepare`` (in one error listing every problem) instead of by doit.
"""

from dindind.build.sources import tree


def tree_root(cfg, layout):
    """``kubernetes.path``, resolved against the config file (pure)."""
    return cfg.resolve(cfg.kubernetes["path"])


def extra_images(cfg, layout):
    """``kubernetes.extra_images`` (pure)."""
    return tree.configured_extra_images(cfg)


def task_io(cfg, layout):
    root = tree_root(cfg, layout)
    paths = list(tree.tree_paths(root).required()) + list(extra_images(cfg, layout))
    present = [p for p in paths if p.exists()]
    return {"file_dep": present, "targets": [], "config": {"source": "dir", "path": str(root)}}


def prepare(cfg, layout):
    """Validate the folder's tree (no side effects) and return it."""
    return tree.read_tree(tree_root(cfg, layout), extra_images(cfg, layout))
