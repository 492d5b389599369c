"""The ``build:*`` tasks: one per artifact family, each marked as writing build artifacts.

``build:deb-cri-tools`` is created only after ``build:kubernetes`` has run
(doit's ``create_after``): whether the tree has a crictl is known only then,
so nothing reads the tree while doit loads its tasks. The node image and the
kubeadm package depend on it through :func:`optional_input`.
"""

from pathlib import Path

from doit import create_after
from doit.tools import config_changed

from dindind.base import config as config_mod
from dindind.base import fsutil
from dindind.base import layout as layout_mod
from dindind.tasks import BUILD_LOCK, action, load_inputs


@action
def do_kubernetes(config_path, root):
    from dindind.build.sources import tree as sources

    cfg, lay = load_inputs(config_path, root)
    sources.prepare(cfg, lay)


@action
def do_e2e_images(config_path, root):
    from dindind.build import e2eimages

    cfg, lay = load_inputs(config_path, root)
    e2eimages.build(cfg, lay)


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


def _stamp_check(stamp):
    from dindind.docker import engine

    return (engine.stamp_uptodate, [str(stamp)], {})


def optional_input(task, values, path):
    """doit ``uptodate``: False when a file that may or may not exist appeared, changed or went away."""
    key = f"optional:{path}"
    state = fsutil.sha256_file(path) if Path(path).is_file() else None
    task.value_savers.append(lambda: {key: state})
    return values.get(key, state) == state


def cluster_image_files(root):
    """The dindind files the cluster image carries (the ``build:cluster`` task's file_dep on them)."""
    from dindind.build import images

    return images.package_files(root)


def build_tasks(config_path, root):
    """Yield the subtasks of ``build``: one per artifact family (each takes the build lock)."""
    for task in _build_tasks(config_path, root):
        yield {**task, "meta": BUILD_LOCK}


def _build_tasks(config_path, root):
    from dindind.base import render
    from dindind.build import cni, debs, images
    from dindind.build.sources import tree as sources

    cfg = config_mod.load(config_path)
    lay = layout_mod.Layout(Path(root))
    cfg_str = str(config_path) if config_path else None
    args = (cfg_str, str(lay.root))
    tree_json = lay.kubernetes / "tree.json"
    k8s = sources.task_io(cfg, lay)
    crictl = sources.tree_paths(sources.tree_root(cfg, lay)).crictl
    cri_tools_deb = lay.deb(debs.OPTIONAL)
    yield {
        "name": "kubernetes",
        "doc": f"prepare the Kubernetes tree ({cfg.kubernetes['source']} source) and check it",
        "actions": [(do_kubernetes, args)],
        "file_dep": k8s["file_dep"],
        "targets": k8s["targets"] + [tree_json],
        "task_dep": k8s["task_dep"],
        # always: a checkout is built every time; Go and the publish step decide what changed
        "uptodate": [config_changed(k8s["config"])] + ([False] if k8s["always"] else []),
        "clean": True,
    }
    yield {
        "name": "cni",
        "doc": f"fetch the CNI plugins ({cfg.cni['source']})",
        "actions": [(do_cni, args)],
        "targets": cni.cni_files(lay),
        "uptodate": [config_changed({k: cfg.cni[k] for k in cfg.cni})],
    }
    specs = debs.specs(cfg, lay, has_crictl=False)      # cri-tools: build:deb-cri-tools, created later
    for name, spec in specs.items():
        optional = [(optional_input, [str(crictl)], {})] if name in debs.OPTIONAL_DEPENDS else []
        yield {
            "name": f"deb-{name}",
            "doc": f"package {name}.deb with dpkg-deb",
            "actions": [(do_deb, args + (name,))],
            "file_dep": [str(p) for p in debs.spec_inputs(spec, lay)],
            "task_dep": ["build:kubernetes", "build:cni"],
            "targets": [lay.deb(name)],
            "uptodate": [config_changed({"epoch": cfg.source_date_epoch, "version": debs.spec_key(spec)})]
                        + optional,
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
        "task_dep": [f"build:deb-{debs.OPTIONAL}"],
        "targets": render.outputs(lay.templates / "node", node_ctx),
        "uptodate": [config_changed({"node": {k: cfg.node[k] for k in cfg.node}, "debs": list(specs),
                                     "packages": list(images.NODE_PACKAGES)}),
                     (optional_input, [str(cri_tools_deb)], {})],
    }
    e2e = []
    if config_mod.e2e_images(cfg):
        from dindind.build import e2eimages

        e2e = [lay.e2e_images_json()]
        yield {
            "name": "e2e-images",
            "doc": "the e2e test images (agnhost, busybox, nginx, ...) as docker-archives, and e2e-images.json",
            "actions": [(do_e2e_images, args)],
            "file_dep": [tree_json, lay.stamp("base")] + [str(p) for p in sources.test_binaries(cfg, lay).values()],
            "targets": e2e,
            # the recipes' text too: an edited Dockerfile rebuilds without a RECIPE bump
            "uptodate": [config_changed({"recipe": e2eimages.RECIPE, "dockerfiles": e2eimages.DOCKERFILES,
                                         "epoch": cfg.source_date_epoch})],
        }
    image_tars = sources.image_tarballs(cfg, lay)
    yield {
        "name": "node",
        "doc": "the node image: systemd, containerd, the debs, preloaded component images",
        "actions": [(do_image, args + ("node",))],
        "file_dep": render.outputs(lay.templates / "node", node_ctx) + deb_files + image_tars
                    + [lay.stamp("base"), tree_json] + e2e,
        "task_dep": [f"build:deb-{debs.OPTIONAL}"],
        "targets": [lay.stamp("node")],
        "uptodate": [config_changed({"refs": images.image_refs(cfg, "x"), "epoch": cfg.source_date_epoch,
                                     "e2e_images": config_mod.e2e_images(cfg)}),
                     (optional_input, [str(cri_tools_deb)], {}), _stamp_check(lay.stamp("node"))],
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
                                     "packages": images.cluster_packages(cfg),
                                     "defaults": {k: cfg.cluster[k] for k in images.CLUSTER_DEFAULT_KEYS}})],
    }
    yield {
        "name": "cluster",
        "doc": "the cluster image: a Docker engine, the node image, e2e.test, ginkgo, kubectl, dindind",
        "actions": [(do_image, args + ("cluster",))],
        "file_dep": render.outputs(lay.templates / "cluster", cluster_ctx) + [archive, lay.stamp("node")]
                    + [str(p) for p in sources.test_binaries(cfg, lay).values()]
                    + [str(p) for p in cluster_image_files(lay.root)],
        "targets": [lay.stamp("cluster")],
        "uptodate": [config_changed({"refs": images.image_refs(cfg, "x"), "epoch": cfg.source_date_epoch}),
                     _stamp_check(lay.stamp("cluster"))],
    }


def cri_tools_task(config_path, root):
    """``build:deb-cri-tools``: the cri-tools package when the tree has a crictl, else nothing to do.

    Called by doit once build:kubernetes has run (dodo.py's ``create_after``).
    """
    from dindind.build import debs

    cfg = config_mod.load(config_path)
    lay = layout_mod.Layout(Path(root))
    args = (str(config_path) if config_path else None, str(lay.root))
    spec = debs.specs(cfg, lay).get(debs.OPTIONAL)
    task = {"basename": f"build:deb-{debs.OPTIONAL}", "meta": BUILD_LOCK}
    if spec is None:
        return {**task, "doc": f"package {debs.OPTIONAL}.deb (the Kubernetes tree has no crictl: none)",
                "actions": []}
    return {**task,
            "doc": f"package {debs.OPTIONAL}.deb with dpkg-deb",
            "actions": [(do_deb, args + (debs.OPTIONAL,))],
            "file_dep": [str(p) for p in debs.spec_inputs(spec, lay)],
            "task_dep": ["build:kubernetes", "build:cni"],
            "targets": [lay.deb(debs.OPTIONAL)],
            "uptodate": [config_changed({"epoch": cfg.source_date_epoch, "version": debs.spec_key(spec)})],
            "clean": True}


class CriTools:
    """dodo.py's creator of ``build:deb-cri-tools``, delayed until build:kubernetes has run."""

    def __init__(self, config_path, root):
        self.config_path, self.root = config_path, root

    @create_after(executed="build:kubernetes")
    def create_doit_tasks(self):
        return cri_tools_task(self.config_path, self.root)

    create_doit_tasks.basename = "build:deb-cri-tools"
