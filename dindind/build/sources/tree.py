"""The Kubernetes tree: its layout, its validation, and the one way in for the tasks.

Every source gives the same tree layout (the official release tarballs
extracted side by side)::

    kubernetes/version
    kubernetes/server/bin/{kubelet,kubeadm,kubectl,kube-apiserver,...}
    kubernetes/server/bin/<component>.tar          docker-archive
    kubernetes/server/bin/<component>.docker_tag   the tag of registry.k8s.io/<component>-amd64
    kubernetes/test/bin/{e2e.test,ginkgo}

Each ``kubernetes.source`` is one module of this package, listed in the one
table :data:`dindind.build.sources.SOURCES` (sample, dir, release, module,
checkout). Each module offers the same small interface: ``tree_root``,
``extra_images``, ``task_io`` and ``prepare`` (see the package docstring).
The functions below dispatch to it, so tasks and other stages never name a
source. :func:`read_tree` validates any tree into a :class:`Tree`.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from dindind.base import fsutil
from dindind.docker import archive as dockerarchive
from dindind.base.config import PKG_RE, TAG_RE, VERSION_RE
from dindind.base.errors import InputError
from dindind.base.layout import ARCH, COMPONENT_IMAGES, REGISTRY, SERVER_BINARIES, docker_tag

SAMPLE_DECLARATION = "dindind-sample.json"     # a stand-in tree's needs (sample only)
_LAYOUT_HINT = ("the folder must hold kubernetes/ laid out like the official server and test "
                "release tarballs extracted side by side (see docs: 'The Kubernetes tree')")


# ---------------------------------------------------------------- pure paths

@dataclass(frozen=True)
class TreePaths:
    """Every path in a tree that downstream tasks depend on (no I/O)."""

    root: Path
    kubernetes: Path
    version: Path
    binaries: MappingProxyType          # server binary name -> path
    image_tars: MappingProxyType        # component name -> docker-archive
    docker_tags: MappingProxyType       # component name -> .docker_tag file
    e2e_test: Path
    ginkgo: Path
    crictl: Path                        # optional: may not exist

    def required(self):
        """Every path that must exist (for doit ``file_dep``), sorted."""
        paths = [self.version, self.e2e_test, self.ginkgo]
        paths += list(self.binaries.values()) + list(self.image_tars.values())
        paths += list(self.docker_tags.values())
        return tuple(sorted(paths))


@dataclass(frozen=True)
class Image:
    """A docker-archive to load, with the reference it is tagged with."""

    name: str
    tarball: Path
    ref: str


@dataclass(frozen=True)
class Tree:
    """A validated Kubernetes tree."""

    root: Path
    version: str
    paths: TreePaths
    images: tuple                       # Image: the components, then the extra images
    crictl: Path = None                 # present only if the tree has one

    @property
    def tag(self):
        return docker_tag(self.version)

    @property
    def component_images(self):
        return tuple(i for i in self.images if i.name in COMPONENT_IMAGES)

    @property
    def extra_images(self):
        return tuple(i for i in self.images if i.name not in COMPONENT_IMAGES)


def source(cfg):
    """The module of the configured ``kubernetes.source`` (from the one table, SOURCES)."""
    from dindind.build.sources import SOURCES

    name = cfg.kubernetes["source"]
    if name not in SOURCES:
        raise ValueError(f"unknown kubernetes.source {name!r}")
    return SOURCES[name]


def tree_root(cfg, layout):
    """The folder containing ``kubernetes/`` for the configured source (pure)."""
    return source(cfg).tree_root(cfg, layout)


def tree_paths(root):
    """The :class:`TreePaths` of the tree under ``root`` (pure)."""
    kube = Path(root) / "kubernetes"
    sbin = kube / "server" / "bin"
    tbin = kube / "test" / "bin"
    return TreePaths(
        root=Path(root),
        kubernetes=kube,
        version=kube / "version",
        binaries=MappingProxyType({n: sbin / n for n in SERVER_BINARIES}),
        image_tars=MappingProxyType({n: sbin / f"{n}.tar" for n in COMPONENT_IMAGES}),
        docker_tags=MappingProxyType({n: sbin / f"{n}.docker_tag" for n in COMPONENT_IMAGES}),
        e2e_test=tbin / "e2e.test",
        ginkgo=tbin / "ginkgo",
        crictl=sbin / "crictl",
    )


def extra_images(cfg, layout):
    """The extra image tarballs kubeadm needs (etcd, coredns, pause) (pure)."""
    return tuple(source(cfg).extra_images(cfg, layout))


def configured_extra_images(cfg):
    """``kubernetes.extra_images`` resolved against the config file (dir and release) (pure)."""
    return tuple(cfg.resolve(p) for p in cfg.kubernetes["extra_images"] or ())


# ---------------------------------------------------------------- validation

def _read_line(path, what, problems):
    """The single line in ``path`` (trailing newline allowed), or None with a problem noted."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        problems.append(f"{path}: missing ({what})")
        return None
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: unreadable ({what}): {exc}")
        return None
    lines = text.splitlines()
    if len(lines) != 1 or text.strip("\n") != lines[0] or "\r" in text:
        problems.append(f"{path}: must hold exactly one line ({what}), found {len(lines)}")
        return None
    return lines[0]


def _image_name(ref):
    """registry.k8s.io/coredns/coredns:v1.11.3 -> coredns; kube-apiserver-amd64 -> kube-apiserver."""
    repo = ref.split("@", 1)[0]
    last = repo.rsplit("/", 1)[-1]
    name = last.split(":", 1)[0]
    return name[: -len(f"-{ARCH}")] if name.endswith(f"-{ARCH}") else name


def _check_version(paths, problems):
    version = _read_line(paths.version, "the Kubernetes version, e.g. v1.31.2", problems)
    if version is not None and not re.fullmatch(VERSION_RE, version):
        problems.append(f"{paths.version}: {version!r} is not a Kubernetes version like v1.31.2")
        return None
    return version


def _check_component(name, paths, version, problems):
    tag_file, tar = paths.docker_tags[name], paths.image_tars[name]
    tag = _read_line(tag_file, f"the docker tag of {name}", problems)
    if tag is not None:
        if not re.fullmatch(TAG_RE, tag):
            problems.append(f"{tag_file}: {tag!r} is not a valid docker tag")
        elif version is not None and tag != docker_tag(version):
            problems.append(f"{tag_file}: tag {tag!r} does not match the version {version!r} "
                            f"(expected {docker_tag(version)!r})")
    # the version decides the expected tag; a wrong .docker_tag is reported above, not twice
    expected_tag = docker_tag(version) if version else (tag if tag and re.fullmatch(TAG_RE, tag) else None)
    expected = f"{REGISTRY}/{name}-{ARCH}:{expected_tag}" if expected_tag else None
    try:
        tags = dockerarchive.repo_tags(tar)
    except InputError as exc:
        problems.append(exc.message)
        return None
    if expected and expected not in tags:
        problems.append(f"{tar}: tagged {', '.join(tags)}; expected {expected}")
    return Image(name, tar, expected)


def _check_extra(path, problems):
    try:
        tags = dockerarchive.repo_tags(path)
    except InputError as exc:
        problems.append(exc.message)
        return None
    return Image(_image_name(tags[0]), Path(path), tags[0])


def tree_files(paths):
    """Every file of the tree the pipeline reads: required, then optional ones (pure)."""
    return paths.required() + (paths.crictl, paths.kubernetes / SAMPLE_DECLARATION)


def _unsafe(paths):
    """Problems for every file of the tree that resolves outside ``kubernetes/`` or is not a regular file.

    A symlink (of the file or of a folder on its way) may point anywhere
    inside the tree; one that leaves it would carry a host file into the
    packages and images. ``kubernetes/`` itself may be a link: the tree is
    where it points. A FIFO or a device would block or never end when read.
    Missing files are left to the checks that follow.
    """
    top = paths.kubernetes.resolve()
    problems = []
    for path in tree_files(paths):
        try:
            real = path.resolve()
        except (OSError, RuntimeError) as exc:          # RuntimeError: a symlink loop
            problems.append(f"{path}: cannot be resolved ({exc})")
            continue
        if not real.is_relative_to(top):
            problems.append(f"{path}: leads outside the tree, to {real} (a symlink out of {top})")
        elif real.exists() and not real.is_file():
            problems.append(f"{path}: not a regular file")
    return problems


def read_tree(root, extra_images=()):
    """Validate the tree under ``root`` and return a :class:`Tree`.

    First makes sure no file the pipeline reads leads outside the tree
    (through a symlink); then reads the version, the .docker_tag files and
    the image tarballs' manifests (headers only; layers are not read). Raises
    one InputError listing every problem found, each naming its file. No side
    effects.
    """
    paths = tree_paths(root)
    if not paths.kubernetes.is_dir():
        raise InputError(f"no Kubernetes tree: {paths.kubernetes} is not a folder", hint=_LAYOUT_HINT)
    unsafe = _unsafe(paths)
    if unsafe:
        # nothing is read before this: not even a line of a host file may reach an error message
        raise InputError(f"bad Kubernetes tree {paths.kubernetes}: {len(unsafe)} file(s) lead outside it "
                         "or are not regular files",
                         detail="\n".join(f"  - {p}" for p in unsafe),
                         hint="replace each symlink that leaves kubernetes/ with the file itself "
                              "(links between files inside the tree are fine)")
    problems = []
    version = _check_version(paths, problems)
    for name, path in list(paths.binaries.items()) + [("e2e.test", paths.e2e_test),
                                                       ("ginkgo", paths.ginkgo)]:
        if not path.is_file():
            problems.append(f"{path}: missing (the {name} binary)")
    images = [_check_component(n, paths, version, problems) for n in COMPONENT_IMAGES]
    images += [_check_extra(p, problems) for p in extra_images]
    if problems:
        if len(problems) == 1:
            raise InputError(f"bad Kubernetes tree: {problems[0]}", hint=_LAYOUT_HINT)
        raise InputError(f"bad Kubernetes tree {paths.kubernetes}: {len(problems)} problems",
                         hint=_LAYOUT_HINT, detail="\n".join(f"  - {p}" for p in problems))
    return Tree(root=Path(root), version=version, paths=paths, images=tuple(images),
                crictl=paths.crictl if paths.crictl.is_file() else None)


# ---------------------------------------------------------------- the doit task

def task_io(cfg, layout):
    """What the ``build:kubernetes`` task reads and writes (pure).

    ``{"file_dep", "targets", "config"}``, plus ``"task_dep"`` (tasks that
    must run first) and ``"always"`` (run on every build; the action itself
    then decides what changed) when the source needs them.
    """
    io = dict(source(cfg).task_io(cfg, layout))
    io.setdefault("task_dep", [])
    io.setdefault("always", False)
    return io


def image_tarballs(cfg, layout):
    """Every image tarball the node image preloads: components, then extras (pure)."""
    paths = tree_paths(tree_root(cfg, layout))
    return [paths.image_tars[n] for n in COMPONENT_IMAGES] + list(extra_images(cfg, layout))


def test_binaries(cfg, layout):
    """The binaries the cluster image carries: {name: path} (pure)."""
    paths = tree_paths(tree_root(cfg, layout))
    return {"e2e.test": paths.e2e_test, "ginkgo": paths.ginkgo, "kubectl": paths.binaries["kubectl"]}


def _node_packages(root):
    """Debian packages a stand-in tree declares it needs in the node (the sample: python3, openssl)."""
    path = Path(root) / "kubernetes" / SAMPLE_DECLARATION
    if not path.exists():
        return []
    try:
        pkgs = json.loads(path.read_text()).get("node_packages", [])
    except (OSError, ValueError, AttributeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    bad = [p for p in pkgs if not isinstance(p, str) or not re.fullmatch(PKG_RE, p)]
    if bad:
        raise InputError(f"{path}: node_packages has invalid package names: {bad!r}")
    return sorted(pkgs)


def prepare(cfg, layout):
    """The ``build:kubernetes`` action: get the tree, validate it, describe it.

    Side effects: whatever the source's ``prepare`` does (sample: generate;
    release: download and extract; module/checkout: build from Go; dir:
    nothing). Then writes ``artifacts/kubernetes/tree.json`` (version,
    images with their refs), rewritten only when its content changes.
    """
    tree = source(cfg).prepare(cfg, layout)
    summary = {
        "node_packages": _node_packages(tree.root),
        "source": cfg.kubernetes["source"],
        "root": str(tree.root),
        "version": tree.version,
        "crictl": str(tree.crictl) if tree.crictl else None,
        "images": [{"name": i.name, "tarball": str(i.tarball), "refs": [i.ref]} for i in tree.images],
    }
    fsutil.write_if_changed(layout.kubernetes / "tree.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return tree


__all__ = ["task_io", "image_tarballs", "test_binaries", "prepare", "Image", "Tree", "TreePaths", "source",
           "tree_root", "tree_paths", "extra_images", "configured_extra_images", "read_tree"]
