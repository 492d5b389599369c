"""The image builders: base, node, cluster. doit actions (see dindind.tasks).

Each builder assembles a deterministic build context (sorted, root-owned,
mtimes at SOURCE_DATE_EPOCH) from rendered templates and artifacts, streams
it to the engine, and records the result in a stamp
``artifacts/images/<name>.json`` (id, tags, input digests). Images carry
their input digests as labels.
"""

import json
import re
import shutil
import tempfile
from pathlib import Path

from dindind.docker import engine
from dindind.docker import images as docker_images
from dindind.base import fsutil, proc, render
from dindind.build import debs, provenance
from dindind.base import config
from dindind.base.config import ROOT
from dindind.base.errors import DindindError
from dindind.base.layout import docker_tag

BASE_RECIPE = 3  # bump when build_base's recipe changes
# Documentation, man pages and locales are not installed in any dindind image.
DPKG_NODOC = """\
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
path-exclude=/usr/share/lintian/*
"""
NODE_PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "containerd", "runc", "iptables", "iproute2", "socat",
    "util-linux", "mount", "ebtables", "ethtool", "conntrack", "kmod", "ca-certificates", "procps",
    "libseccomp2", "bash", "iputils-ping",
    # the external load balancer of HA clusters runs the node image as haproxy (its service stays disabled:
    # the Dockerfile removes every enabled unit), so no other image is needed
    "haproxy",
    "docker-registry",      # the cluster's local registry runs from the node image (not enabled in a node)
)
CLUSTER_PACKAGES = (
    "docker.io", "zstd", "python3", "python3-yaml", "python3-jinja2", "python3-docker", "iproute2", "iptables",
    "procps",
    "ca-certificates", "kmod",
)
LABEL = "io.dindind"


# ------------------------------------------------------------------ values (no I/O)

def image_refs(cfg, version):
    """{'node': 'dindind/node:<tag>', 'cluster': ...} for a Kubernetes version."""
    tag = docker_tag(version)
    return {
        "node": f"{cfg.node['repository']}:{cfg.node['tag'] or tag}",
        "cluster": f"{cfg.cluster['repository']}:{cfg.cluster['tag'] or tag}",
    }


def base_inputs(cfg):
    """What the debootstrap base depends on: a change of any of these rebuilds it."""
    return {"suite": cfg.base["suite"], "mirror": cfg.base["mirror"], "variant": "minbase",
            "recipe": BASE_RECIPE}


def base_ref(cfg):
    if cfg.base["image"]:
        return cfg.base["image"]
    return f"{cfg.base['repository']}:{cfg.base['suite']}-{fsutil.digest_json(base_inputs(cfg))[:12]}"


def write_stamp(path, image_id, tags, inputs, extra=None):
    stamp = {"id": image_id, "tags": list(tags), "inputs": inputs}
    stamp.update(extra or {})
    fsutil.write_if_changed(path, json.dumps(stamp, indent=2, sort_keys=True) + "\n")
    return stamp


def input_labels(inputs):
    """Image labels from {name: digest}."""
    labels = {f"{LABEL}.input.{k}": v for k, v in sorted(inputs.items())}
    labels[f"{LABEL}.inputs"] = "sha256:" + fsutil.digest_json(inputs)
    return labels


# ------------------------------------------------------------------ base

def build_base(cfg, layout, echo=print):
    """Make the base image exist in the engine and write its stamp.

    ``base.image`` set: use (pull if absent) that image. Otherwise debootstrap
    a minbase rootfs and ``docker import`` it, unless an image with the same
    input digest is already in the engine (another checkout built it).
    """
    ref = base_ref(cfg)
    inputs = base_inputs(cfg) if not cfg.base["image"] else {"image": ref}
    image = engine.image_id(ref)
    if image:
        echo(f"  reusing {ref}")
    elif cfg.base["image"]:
        image = docker_images.pull(ref)
    else:
        image = _debootstrap_import(cfg, layout, ref, inputs, echo)
    return write_stamp(layout.stamp("base"), image, [ref], inputs)


def _prune_docs(rootfs):
    """Remove what DPKG_NODOC keeps out of later installs from the debootstrapped rootfs."""
    for sub in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian"):
        for p in sorted((rootfs / sub).rglob("*"), reverse=True):
            keep = p.name == "locale.alias" or (sub == "usr/share/doc" and p.name == "copyright")
            if p.is_symlink() or p.is_file():
                if not keep:
                    p.unlink()
            elif p.is_dir() and not any(p.iterdir()):
                p.rmdir()


def _debootstrap_import(cfg, layout, ref, inputs, echo):
    if not shutil.which("debootstrap"):
        raise DindindError("debootstrap is not installed", hint="apt-get install debootstrap (./bootstrap does)")
    layout.tmp.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="base-", dir=layout.tmp))
    try:
        rootfs = work / "rootfs"
        echo(f"  debootstrap --variant=minbase {cfg.base['suite']} ({cfg.base['mirror']})")
        proc.run(["debootstrap", "--variant=minbase", cfg.base["suite"], rootfs, cfg.base["mirror"]],
                 hint="check network access to the Debian mirror (base.mirror)")
        for junk in ("var/lib/apt/lists", "var/cache/apt", "var/log"):
            for p in (rootfs / junk).glob("*"):
                if p.is_file():
                    p.unlink()
        (rootfs / "etc/apt/sources.list").write_text(f"deb {cfg.base['mirror']} {cfg.base['suite']} main\n")
        (rootfs / "etc/dpkg/dpkg.cfg.d/01-dindind-nodoc").write_text(DPKG_NODOC)
        _prune_docs(rootfs)
        tar = work / "rootfs.tar"
        (rootfs / "var/cache/ldconfig/aux-cache").unlink(missing_ok=True)
        # sorted, numeric owners, mtimes clamped: the same packages give the same layer
        proc.run(["tar", "-C", rootfs, "--numeric-owner", "--sort=name", f"--mtime=@{cfg.source_date_epoch}",
                  "--clamp-mtime", "-cf", tar, "."])
        changes = ['ENV container=docker', 'CMD ["/bin/bash"]']
        changes += [f'LABEL {k}="{v}"' for k, v in input_labels({"base": fsutil.digest_json(inputs)}).items()]
        echo(f"  docker import -> {ref}")
        return docker_images.import_rootfs(tar, ref, changes)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------ node

RUNTIME_PACKAGES = ("containerd", "runc")
CONTAINERD2_FROM = (1, 36)      # kubelet from this minor on needs containerd 2 (its 1.x support ended)


def _minor(version):
    m = re.match(r"^v?(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def runtime_context(cfg, kubernetes_version):
    """Where containerd and runc come from, as template values (None: the base suite's own).

    Refuses, before anything is built, a Kubernetes that cannot run on that containerd.
    """
    n = cfg.node
    if not n["runtime_suite"]:
        if _minor(kubernetes_version) >= CONTAINERD2_FROM:
            raise DindindError(f"Kubernetes {kubernetes_version} needs containerd 2, and node.runtime_suite is null "
                               f"(the {cfg.base['suite']} suite's containerd is 1.x)",
                               hint="set node.runtime_suite: forky (the default) with its pinned containerd and runc")
        return None
    packages = [{"name": name, "version": n[f"{name}_version"], "sha256": n[f"{name}_sha256"],
                 "file": f"{name}_{n[name + '_version'].replace(':', '%3a')}_{debs.ARCH}.deb"}
                for name in RUNTIME_PACKAGES]
    return {"suite": n["runtime_suite"], "mirror": cfg.base["mirror"], "packages": packages}


def node_context(cfg, tree, base_stamp, deb_names):
    """The values templates/node gets, computed here so the templates hold layout only."""
    pause = next((ref for img in tree["images"] for ref in img["refs"] if "/pause:" in ref), None)
    if pause is None:
        raise DindindError("no pause image among the Kubernetes images",
                           hint="add a pause image tarball to kubernetes.extra_images")
    runtime = runtime_context(cfg, tree["version"])
    packages = set(NODE_PACKAGES) | set(cfg.node["packages"]) | set(tree.get("node_packages", []))
    if runtime:
        packages -= set(RUNTIME_PACKAGES)
    containerd2 = bool(runtime) and not runtime["packages"][0]["version"].split(":")[-1].startswith("1.")
    return {
        "base_image": base_stamp["tags"][0],
        "packages": sorted(packages),
        "runtime": runtime,
        # containerd 2 reads config version 3; 1.6 and 1.7 read version 2 (the code picks the template)
        "containerd_config": "v3" if containerd2 else "v2",
        "preload": bool(cfg.node["preload"]),
        "debs": [f"{n}.deb" for n in deb_names],
        "pause_image": pause,
        "cgroup_driver": "systemd",
    }


def render_node(cfg, layout, deb_names):
    tree = fsutil.read_json(layout.kubernetes / "tree.json", "Kubernetes tree summary")
    base = fsutil.read_json(layout.stamp("base"), "base image stamp")
    ctx = node_context(cfg, tree, base, deb_names)
    return render.render_tree(layout.templates / "node", ctx, layout.context / "node")


def _digests(paths):
    return {name: "sha256:" + fsutil.sha256_file(p) for name, p in paths.items()}


def build_node(cfg, layout, deb_names, echo=print):
    """Build the node image from the rendered context, the debs and the component images.

    Every directory of the context mirrors the image's filesystem (``debs/var/cache/...``)
    and is copied with ``COPY <dir>/ /``, so the directories a COPY creates carry the
    context's clamped mtimes too and the layer is the same in every build.
    """
    tree = fsutil.read_json(layout.kubernetes / "tree.json", "Kubernetes tree summary")
    base = fsutil.read_json(layout.stamp("base"), "base image stamp")
    ctx = fsutil.DeterministicTar(cfg.source_date_epoch)
    ctx.add_tree("", layout.context / "node")
    parts = {}
    for name in deb_names:
        ctx.add_file(f"debs/var/cache/dindind/debs/{name}.deb", layout.deb(name))
        parts[f"deb.{name}"] = layout.deb(name)
    for img in tree["images"]:
        ctx.add_file(f"images/var/lib/dindind/images/{img['name']}.tar", img["tarball"])
        parts[f"image.{img['name']}"] = Path(img["tarball"])
    if config.e2e_images(cfg):
        from dindind.build import e2eimages

        for name, tar in sorted(e2eimages.tarballs(layout).items()):
            ctx.add_file(f"images/var/lib/dindind/images/{name}.tar", tar)
            parts[f"e2e-image.{name}"] = tar
    inputs = _digests(parts)
    inputs["context"] = "sha256:" + fsutil.digest_json(
        {str(p.relative_to(layout.context)): fsutil.sha256_file(p)
         for p in sorted((layout.context / "node").rglob("*")) if p.is_file()})
    inputs["base"] = base["id"]
    refs = image_refs(cfg, tree["version"])
    labels = input_labels(inputs)
    labels[f"{LABEL}.kubernetes.version"] = tree["version"]
    labels[f"{LABEL}.preload"] = str(bool(cfg.node["preload"])).lower()
    labels.update(provenance.oci_labels(tree["version"], layout.root, cfg.source_date_epoch))
    image = _build_context(layout, "node", ctx, [refs["node"]], labels, echo)
    return write_stamp(layout.stamp("node"), image, [refs["node"]], inputs,
                       {"kubernetes_version": tree["version"], "preload": bool(cfg.node["preload"])})


def _build_context(layout, name, ctx, tags, labels, echo):
    tar = layout.tmp / f"{name}-context.tar"
    layout.tmp.mkdir(parents=True, exist_ok=True)
    try:
        ctx.write_to(tar)
        echo(f"  docker build -t {tags[0]} ({tar.stat().st_size / 1e6:.1f} MB context)")
        return docker_images.build(tar, tags, labels=labels, log_path=layout.images / f"{name}.build.log", echo=echo)
    finally:
        tar.unlink(missing_ok=True)


# ------------------------------------------------------------------ cluster

def node_archive_name(cfg):
    return "node-image.tar.zst" if cfg.cluster["compression"] == "zstd" else "node-image.tar"


def save_node(cfg, layout, echo=print):
    """Save the node image once, compressed, for the cluster image."""
    stamp = fsutil.read_json(layout.stamp("node"), "node image stamp")
    out = layout.images / node_archive_name(cfg)
    ref = stamp["tags"][0]
    if engine.image_id(ref) != stamp["id"]:
        raise DindindError(f"{ref} no longer points at the node image {stamp['id'][:19]}",
                           hint="run `doit build` again (the node image was retagged behind dindind's back)")
    echo(f"  docker save {ref} -> {out.name}")
    # by tag, so the archive's RepoTags carry it; zstd -9: 10% smaller than -3 for ~3 s more
    docker_images.save(ref, out, compress=cfg.cluster["compression"], level=9)
    return out


def cluster_packages(cfg):
    """The cluster image's packages: from trixie on, docker.io leaves the client to docker-cli."""
    suite = cfg.base["suite"]
    return sorted(CLUSTER_PACKAGES + (() if suite in config.OLD_GLIBC_SUITES else ("docker-cli",)))


# The config's cluster keys the cluster image carries as its defaults (dindind.cluster.options):
# what `docker run IMAGE` brings up. The host-side keys (api_address, api_port, nested, e2e_*) stay out.
CLUSTER_DEFAULT_KEYS = ("name", "workers", "pod_subnet", "service_subnet", "node_subnet", "cni",
                        "kubelet_extra_args", "kubeadm_patches", "wait")


def cluster_defaults(cfg, node_stamp):
    """The cluster image's default settings (dindind.cluster.plan.Settings fields) as one line of JSON."""
    data = {k: cfg.cluster[k] for k in CLUSTER_DEFAULT_KEYS}
    data.update(node_image=node_stamp["tags"][0], kubernetes_version=node_stamp["kubernetes_version"])
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def cluster_context(cfg, base_stamp, node_stamp):
    return {
        "base_image": base_stamp["tags"][0],
        "packages": cluster_packages(cfg),
        "node_image": node_stamp["tags"][0],
        "node_archive": node_archive_name(cfg),
        "defaults": cluster_defaults(cfg, node_stamp),
    }


def render_cluster(cfg, layout):
    ctx = cluster_context(cfg, fsutil.read_json(layout.stamp("base"), "base image stamp"), fsutil.read_json(layout.stamp("node"), "node image stamp"))
    return render.render_tree(layout.templates / "cluster", ctx, layout.context / "cluster")


# What the cluster image runs: the in-cluster entry point (dindind/cluster/incluster.py)
# and everything it imports, which is base, docker and the cluster core. The build
# and release stages, the doit glue and the host side of clusters stay out, so an
# edit there leaves the cluster image as it is (tests/unit/test_cluster_image.py).
CLUSTER_IMAGE_PACKAGES = ("dindind/base", "dindind/docker", "dindind/cluster")
HOST_ONLY = ("dindind/cluster/host.py", "dindind/cluster/load.py", "dindind/cluster/manifest.py",
             "dindind/cluster/access.py", "dindind/cluster/kubeconfig.py", "dindind/cluster/inotify.py")


def package_files(root=ROOT):
    """The dindind files (and the kubeadm templates) that ship in the cluster image, sorted."""
    root = Path(root)
    files = [root / "dindind" / "__init__.py"]
    for pkg in CLUSTER_IMAGE_PACKAGES:
        files += [p for p in (root / pkg).rglob("*.py")
                  if "__pycache__" not in p.parts and p.relative_to(root).as_posix() not in HOST_ONLY]
    files += list((root / "templates" / "kubeadm").rglob("*.j2"))
    return sorted(files)


def package_digest(root=ROOT):
    """The digest of :func:`package_files` (names and contents): the cluster image's ``dindind`` input."""
    root = Path(root)
    return "sha256:" + fsutil.digest_json({p.relative_to(root).as_posix(): fsutil.sha256_file(p)
                                           for p in package_files(root)})


def build_cluster(cfg, layout, test_bins, echo=print):
    """Build the cluster image: base + engine + node image archive + test binaries + dindind."""
    node = fsutil.read_json(layout.stamp("node"), "node image stamp")
    base = fsutil.read_json(layout.stamp("base"), "base image stamp")
    ctx = fsutil.DeterministicTar(cfg.source_date_epoch)
    ctx.add_tree("", layout.context / "cluster")
    archive = layout.images / node_archive_name(cfg)
    ctx.add_file(f"node/opt/dindind/node/{archive.name}", archive)
    parts = {"node-archive": archive}
    for name, path in sorted(test_bins.items()):
        ctx.add_file(f"bin/usr/local/bin/{name}", path, 0o755)
        parts[f"bin.{name}"] = Path(path)
    for p in package_files(layout.root):
        ctx.add_file(f"python/opt/dindind/python/{p.relative_to(layout.root).as_posix()}", p)
    inputs = _digests(parts)
    inputs["dindind"] = package_digest(layout.root)
    inputs["node"] = node["id"]
    inputs["base"] = base["id"]
    version = node["kubernetes_version"]
    ref = image_refs(cfg, version)["cluster"]
    labels = input_labels(inputs)
    labels[f"{LABEL}.kubernetes.version"] = version
    labels[f"{LABEL}.node-image"] = node["tags"][0]
    labels.update(provenance.oci_labels(version, layout.root, cfg.source_date_epoch))
    image = _build_context(layout, "cluster", ctx, [ref], labels, echo)
    return write_stamp(layout.stamp("cluster"), image, [ref], inputs,
                       {"kubernetes_version": version, "node_image": node["tags"][0]})
