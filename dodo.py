"""dindind's doit tasks: a table of contents. The work lives in dindind/.

    doit build                    # the default: everything below
    doit config=my.yaml build     # another config (or DINDIND_CONFIG=my.yaml)
    doit list --all               # every task and subtask with its help line
    doit release --push 127.0.0.1:5000   # release (artifacts/release/<version>/), push, verify
    doit release:verify --dir DIR        # check a release directory
"""

import os
import sys
from pathlib import Path

from doit import get_var, task_params

from dindind import tasks
from dindind.tasks import build as build_tasks
from dindind.tasks import cluster as cluster_tasks
from dindind.tasks import release as release_tasks
from dindind.base.config import ROOT
from dindind.base.errors import DindindError

CONFIG = get_var("config", None) or os.environ.get("DINDIND_CONFIG")
DOIT_CONFIG = {"reporter": tasks.Reporter, "default_tasks": ["build"]}

# The build lock is taken by tasks.Reporter, before the first task runs, and
# only when the run includes a task that writes build artifacts.
try:
    _BUILD = list(build_tasks.build_tasks(CONFIG, ROOT))
    _CLUSTER = list(cluster_tasks.cluster_tasks(CONFIG, ROOT))
except DindindError as _exc:
    sys.stderr.write(_exc.render() + "\n")
    sys.exit(2)


def task_build():
    """Build everything: Kubernetes tree, CNI, debs, base, node and cluster images."""
    yield {"name": None, "doc": task_build.__doc__, "task_dep": ["build:deb-cri-tools"]}
    yield from _BUILD


# build:deb-cri-tools: created once build:kubernetes has run (the tree may or may not have a crictl)
deb_cri_tools = build_tasks.CriTools(CONFIG, ROOT)


def task_cluster():
    """Clusters: cluster:up, down, stop, start, status, nodes, kubeconfig, logs, load, e2e."""
    yield from _CLUSTER


@task_params(release_tasks.RELEASE_PARAMS)
def task_release(version, push, out_dir):
    """Build, write artifacts/release/<version>/ (--version V, --dir DIR), push (--push REGISTRY), verify."""
    return release_tasks.release_task(CONFIG, ROOT, version, push, out_dir)


def task_release_verify():
    """Check a release directory (--dir DIR): checksums, manifest.json, every image archive."""
    yield release_tasks.release_verify_task(CONFIG, ROOT)


def task_engine():
    """Make sure a Docker engine answers (installs docker.io, starts dockerd; root)."""
    return {"actions": [build_tasks.do_engine], "uptodate": [False], "verbosity": 2}
