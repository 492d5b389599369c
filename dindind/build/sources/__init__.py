"""Where the Kubernetes tree comes from: one module per ``kubernetes.source``.

:data:`SOURCES` is the one table from a source name to its module. Each
module offers the same interface (the tasks reach it through
:mod:`dindind.build.sources.tree`, never by name):

``tree_root(cfg, layout)``
    the folder holding ``kubernetes/`` (pure);
``extra_images(cfg, layout)``
    the etcd/coredns/pause docker-archives kubeadm needs (pure);
``task_io(cfg, layout)``
    the ``build:kubernetes`` task's ``file_dep``, ``targets`` and ``config``
    (and optionally ``always``: run on every build) (pure);
``prepare(cfg, layout)``
    get or build the tree, validate it, return a :class:`tree.Tree`.

The shared parts (layout, validation, test binaries) are in :mod:`.tree`;
the Go build behind ``module`` and ``checkout`` is :mod:`.gobuild`.
"""

from types import MappingProxyType

from dindind.build.sources import checkout, module, release, sample, tree
from dindind.build.sources import dir as dir_source

SOURCES = MappingProxyType({
    "sample": sample,
    "dir": dir_source,
    "release": release,
    "module": module,
    "checkout": checkout,
})

__all__ = ["SOURCES", "tree"]
