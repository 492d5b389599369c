"""doit task creators: descriptions only, no I/O at load time.

dodo.py imports these; each creator's docstring is its help line in
``doit list``. Every action is a module-level function of plain values
(``config path``, project root), so it pickles for ``doit -n``.
"""

import functools
import sys
from pathlib import Path

from doit.exceptions import TaskFailed
from doit.reporter import ConsoleReporter
from doit.tools import config_changed

from dindind.base import config as config_mod
from dindind.base import layout as layout_mod
from dindind.base.errors import DindindError

def action(func):
    """Run a dindind step as a doit action: a DindindError becomes one clear failure."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            func(*args, **kwargs)
        except DindindError as exc:
            return TaskFailed(exc.render())
        return None

    return wrapper


BUILD_LOCK = {"build_lock": True}   # task ``meta``: this task writes build artifacts


def needs_build_lock(tasks, selected):
    """Whether running ``selected`` (task names) runs a task that writes build artifacts.

    Follows ``task_dep`` and ``setup`` from the selected tasks; a task says it
    writes build artifacts with ``meta=BUILD_LOCK``. Read-only tasks
    (``cluster:status``, ``release:verify`` ...) never wait behind a build.
    """
    seen, todo = set(), list(selected)
    while todo:
        name = todo.pop()
        task = tasks.get(name)
        if task is None or name in seen:
            continue
        seen.add(name)
        if (task.meta or {}).get("build_lock"):
            return True
        todo += list(task.task_dep) + list(task.setup_tasks)
    return False


def take_build_lock(root):
    """Hold the checkout's build lock for this process; then remove what interrupted runs left."""
    from dindind.base import fsutil, lock

    lay = layout_mod.Layout(Path(root))
    lock.hold(lay.lock)
    # holding the lock, anything half-written is from an interrupted run: remove it
    fsutil.remove_stale(lay.artifacts)


class Reporter(ConsoleReporter):
    """doit's console reporter, printing a DindindError as ``ERROR: ...`` with no traceback.

    It also takes the build lock (dindind.lock) before the first task runs,
    but only when the run includes a task that writes build artifacts: doit
    calls ``initialize`` with the selected tasks before it checks or runs any
    of them, so the dependency database is read under the lock.
    """

    desc = "dindind console output"

    def initialize(self, tasks, selected_tasks):
        super().initialize(tasks, selected_tasks)
        if needs_build_lock(tasks, selected_tasks):
            try:
                take_build_lock(config_mod.ROOT)
            except OSError as exc:
                sys.stderr.write(f"ERROR: cannot take the build lock: {exc}\n")
                sys.exit(2)

    def _write_failure(self, result, write_exception=True):
        exc = result["exception"]
        msg = exc.get_msg()
        if isinstance(exc, TaskFailed) and msg.startswith("ERROR:"):
            if write_exception:
                sys.stderr.write(f"{result['task'].name}: {msg.rstrip()}\n")
            return
        super()._write_failure(result, write_exception)

    def complete_run(self):
        self.failures = [r for r in self.failures
                         if not (isinstance(r["exception"], TaskFailed)
                                 and r["exception"].get_msg().startswith("ERROR:"))]
        super().complete_run()


# ------------------------------------------------------------------ actions

def load_inputs(config_path, root):
    """The validated config and the artifact layout an action works on."""
    return config_mod.load(config_path), layout_mod.Layout(Path(root))


@action
def do_kubernetes(config_path, root):
    from dindind.build.sources import tree as sources

    cfg, lay = load_inputs(config_path, root)
    sources.prepare(cfg, lay)


@action
def do_cni(config_path, root):
    from dindind.build import cni

    cfg, lay = load_inputs(config_path, root)
    cni.fetch_cni(cfg, lay)


@action
def do_deb(config_path, root, name):
    from dindind.build import debs

    cfg, lay = load_inputs(config_path, root)
    spec = debs.specs(cfg, lay)[name]
    debs.build_deb(spec, lay.deb(name), cfg.source_date_epoch)


@action
def do_render(config_path, root, which):
    from dindind.build import debs, images

    cfg, lay = load_inputs(config_path, root)
    if which == "node":
        images.render_node(cfg, lay, list(debs.specs(cfg, lay)))
    else:
        images.render_cluster(cfg, lay)


@action
def do_image(config_path, root, which):
    from dindind.build import debs, images
    from dindind.build.sources import tree as sources

    cfg, lay = load_inputs(config_path, root)
    if which == "base":
        images.build_base(cfg, lay)
    elif which == "node":
        images.build_node(cfg, lay, list(debs.specs(cfg, lay)))
    elif which == "node-archive":
        images.save_node(cfg, lay)
    else:
        images.build_cluster(cfg, lay, sources.test_binaries(cfg, lay))


@action
def do_engine():
    from dindind.docker import engine

    print(engine.ensure())


# ------------------------------------------------------------------ creators

def _stamp_check(stamp):
    from dindind.docker import engine

    return (engine.stamp_uptodate, [str(stamp)], {})


def build_tasks(config_path, root):
    """Yield the subtasks of ``build``: one per artifact family (each takes the build lock)."""
    for task in _build_tasks(config_path, root):
        yield {**task, "meta": BUILD_LOCK}


def _build_tasks(config_path, root):
    from dindind.build import debs, images
    from dindind.base import render
    from dindind.build.sources import tree as sources

    cfg = config_mod.load(config_path)
    lay = layout_mod.Layout(Path(root))
    cfg_str = str(config_path) if config_path else None
    args = (cfg_str, str(lay.root))
    tree_json = lay.kubernetes / "tree.json"
    k8s = sources.task_io(cfg, lay)
    yield {
        "name": "kubernetes",
        "doc": f"prepare the Kubernetes tree ({cfg.kubernetes['source']} source) and check it",
        "actions": [(do_kubernetes, args)],
        "file_dep": k8s["file_dep"],
        "targets": k8s["targets"] + [tree_json],
        "uptodate": [config_changed(k8s["config"])],
        "clean": True,
    }
    from dindind.build import cni

    yield {
        "name": "cni",
        "doc": f"fetch the CNI plugins ({cfg.cni['source']})",
        "actions": [(do_cni, args)],
        "targets": cni.cni_files(lay),
        "uptodate": [config_changed({k: cfg.cni[k] for k in cfg.cni})],
    }
    specs = debs.specs(cfg, lay)
    for name, spec in specs.items():
        yield {
            "name": f"deb-{name}",
            "doc": f"package {name}.deb with dpkg-deb",
            "actions": [(do_deb, args + (name,))],
            "file_dep": [str(p) for p in debs.spec_inputs(spec, lay)],
            "task_dep": ["build:kubernetes", "build:cni"],
            "targets": [lay.deb(name)],
            "uptodate": [config_changed({"epoch": cfg.source_date_epoch, "version": debs.spec_key(spec)})],
            "clean": True,
        }
    deb_files = [lay.deb(n) for n in specs]
    yield {
        "name": "base",
        "doc": "the base image: debootstrap + docker import, or base.image",
        "actions": [(do_image, args + ("base",))],
        "targets": [lay.stamp("base")],
        "uptodate": [config_changed(images.base_ref(cfg)), _stamp_check(lay.stamp("base"))],
    }
    node_ctx = lay.context / "node"
    yield {
        "name": "render-node",
        "doc": "render the node image's Dockerfile, systemd units and containerd config",
        "actions": [(do_render, args + ("node",))],
        "file_dep": render.template_files(lay.templates / "node") + [tree_json, lay.stamp("base")],
        "targets": render.outputs(lay.templates / "node", node_ctx),
        "uptodate": [config_changed({"node": {k: cfg.node[k] for k in cfg.node}, "debs": list(specs),
                                     "packages": list(images.NODE_PACKAGES)})],
    }
    image_tars = sources.image_tarballs(cfg, lay)
    yield {
        "name": "node",
        "doc": "the node image: systemd, containerd, the debs, preloaded component images",
        "actions": [(do_image, args + ("node",))],
        "file_dep": render.outputs(lay.templates / "node", node_ctx) + deb_files + image_tars
                    + [lay.stamp("base"), tree_json],
        "targets": [lay.stamp("node")],
        "uptodate": [config_changed({"refs": images.image_refs(cfg, "x"), "epoch": cfg.source_date_epoch}),
                     _stamp_check(lay.stamp("node"))],
    }
    archive = lay.images / images.node_archive_name(cfg)
    yield {
        "name": "node-archive",
        "doc": "save the node image once (zstd) for the cluster image",
        "actions": [(do_image, args + ("node-archive",))],
        "file_dep": [lay.stamp("node")],
        "targets": [archive],
        "clean": True,
    }
    cluster_ctx = lay.context / "cluster"
    yield {
        "name": "render-cluster",
        "doc": "render the cluster image's Dockerfile and entrypoint",
        "actions": [(do_render, args + ("cluster",))],
        "file_dep": render.template_files(lay.templates / "cluster") + [lay.stamp("base"), lay.stamp("node")],
        "targets": render.outputs(lay.templates / "cluster", cluster_ctx),
        "uptodate": [config_changed({"compression": cfg.cluster["compression"],
                                     "packages": list(images.CLUSTER_PACKAGES)})],
    }
    yield {
        "name": "cluster",
        "doc": "the cluster image: a Docker engine, the node image, e2e.test, ginkgo, kubectl, dindind",
        "actions": [(do_image, args + ("cluster",))],
        "file_dep": render.outputs(lay.templates / "cluster", cluster_ctx) + [archive, lay.stamp("node")]
                    + [str(p) for p in sources.test_binaries(cfg, lay).values()]
                    + [str(p) for p in images.package_files(lay.root)],
        "targets": [lay.stamp("cluster")],
        "uptodate": [config_changed({"refs": images.image_refs(cfg, "x"), "epoch": cfg.source_date_epoch}),
                     _stamp_check(lay.stamp("cluster"))],
    }


# ------------------------------------------------------------------ release

RELEASE_PARAMS = [
    {"name": "version", "long": "version", "type": str, "default": "",
     "help": "the release version, a docker tag ('+' becomes '_'); "
             "default: the Kubernetes version and `git describe --always --dirty` of the project"},
    {"name": "push", "long": "push", "type": str, "default": "",
     "help": "push <REGISTRY>/dindind/{node,cluster}:<version> to this registry (host[:port][/path]) "
             "and record the verified digests"},
    {"name": "out_dir", "long": "dir", "type": str, "default": "",
     "help": "the release directory (default: artifacts/release/<version>; relative to the project root)"},
]


@action
def do_release(config_path, root, version, registry, out_dir):
    from dindind.release import release

    cfg, lay = load_inputs(config_path, root)
    dest = release.make(cfg, lay, version=version or None, registry=registry or None, out_dir=out_dir or None)
    release.verify(dest)


@action
def do_release_verify(config_path, root, release_dir="", version=""):
    from dindind.release import release

    if not release_dir:
        cfg, lay = load_inputs(config_path, root)
        release_dir = release.resolve_dir(cfg, lay, version or None)[1]
    release.verify(release_dir)


def release_task(config_path, root, version="", push="", out_dir=""):
    """The ``release`` task: build, write the release directory, push (``--push``), verify it.

    ``version``, ``push`` and ``out_dir`` come from ``doit release --version V
    --push REGISTRY --dir DIR`` through doit's @task_params, which hands a
    task's options to its creator: bad values fail here, before anything is
    built.
    """
    from doit.exceptions import InvalidTask

    from dindind.release import release

    try:
        if version:
            release.check_version(version)
        if push:
            release.check_registry(push)
    except DindindError as exc:
        raise InvalidTask(exc.render().removeprefix("ERROR: ")) from None
    args = (str(config_path) if config_path else None, str(root))
    return {
        "actions": [(do_release, args + (version, push, out_dir))],
        "task_dep": ["build"],
        "meta": BUILD_LOCK,
        "uptodate": [False],
        "verbosity": 2,
    }


def release_verify_task(config_path, root):
    """The ``release:verify`` task, with its own ``--dir`` and ``--version`` params.

    A task of its own (named with doit's subtask separator) rather than a
    subtask of ``release``: doit runs a group's subtasks in no fixed order, so
    verify could run before the release it checks, and `doit release:verify
    --dir DIR` must not build anything. `doit release` verifies what it wrote
    itself.
    """
    args = (str(config_path) if config_path else None, str(root))
    return {
        "basename": "release:verify",
        "actions": [(do_release_verify, args)],
        "params": [
            {"name": "release_dir", "long": "dir", "type": str, "default": "",
             "help": "the release directory to check (default: artifacts/release/<version>)"},
            {"name": "version", "long": "version", "type": str, "default": "",
             "help": "the version whose release to check (default: this checkout's)"},
        ],
        "uptodate": [False],
        "verbosity": 2,
    }
