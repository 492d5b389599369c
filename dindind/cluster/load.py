"""``cluster:load``: host images and docker-archives into every node's containerd, for the node's platform.

What is loaded: ``--image REF`` (repeatable; images of the host engine, one
``docker save`` of them all) and ``--archive FILE`` (repeatable; a
docker-archive on the host, either layout). Each archive is validated by
dindind.docker.archive, the one reader (layers hashed too), before anything
is copied: a bad or hostile file is one error naming it.

Which platform: the one containerd in each node runs (its own plugin list
says, ``ctr plugins ls``), imported with ``ctr images import --platform P``.
Never ``--all-platforms``: ``docker save`` of a multi-platform image (the
containerd image store, Docker >= 25) keeps the whole index but only the
platforms that were pulled, and containerd then fails on the first blob that
is missing. Before any copy, every image must have that platform complete in
its archive; afterwards every name must be in every node's image list.

How: each file goes once into each target (the top-level container when
nested, each node otherwise) in one archive stream, is imported from there
into each node, and is removed from every target again however it ends;
the host's ``docker save`` goes to a temporary file removed the same way.
"""

import os
import shlex
from pathlib import Path

from dindind.base.errors import CommandError, DindindError, InputError
from dindind.docker import archive, containers, engine, reference
from dindind.docker import images as engine_images

TARGET_DIR = "/var/cache"
CTR = ["ctr", "-n", "k8s.io"]
SNAPSHOTTER = "io.containerd.snapshotter.v1"
USAGE = "doit cluster:load --image IMAGE ... --archive FILE ... [--name NAME] (each repeatable)"
# GOARCH is what containerd and image configs say; the kernel's names appear in some hand-made configs
_ARCH = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "i386": "386", "i686": "386"}


# ------------------------------------------------------------------ platforms (pure)

def normalize_platform(text):
    """(os, architecture, variant) of ``os/architecture[/variant]``, as containerd compares them.

    arm64's v8 is its only variant (written or not); arm without one is v7;
    ValueError for anything that is not such a string.
    """
    parts = text.lower().split("/") if isinstance(text, str) else []
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"not a platform (os/architecture[/variant]): {text!r}")
    os_, arch, variant = parts[0], _ARCH.get(parts[1], parts[1]), parts[2] if len(parts) == 3 else ""
    if arch == "arm64" and variant in ("8", "v8"):
        variant = ""
    elif arch == "arm":
        variant = {"": "v7", "5": "v5", "6": "v6", "7": "v7", "8": "v8"}.get(variant, variant)
    return os_, arch, variant


def platform_matches(node, image):
    """Whether an image of platform ``image`` runs where containerd's platform is ``node`` (strict, as
    ``ctr images import --platform`` matches: arm/v7 does not take arm/v6)."""
    try:
        return normalize_platform(node) == normalize_platform(image)
    except ValueError:
        return False


def platform_from_plugins(text):
    """containerd's own platform from ``ctr plugins ls`` output (TYPE ID PLATFORMS STATUS), or None.

    A snapshotter is registered for exactly the daemon's platform (overlayfs
    preferred; the runtime's row may add emulated ones).
    """
    rows = [line.split() for line in text.splitlines()]
    rows = [r for r in rows if len(r) >= 4 and r[0] == SNAPSHOTTER]
    for row in sorted(rows, key=lambda r: r[1] != "overlayfs"):
        platform = row[2].split(",")[0]
        try:
            normalize_platform(platform)
        except ValueError:
            continue
        return platform
    return None


def containerd_name(name):
    """How containerd names an image loaded under ``name`` (docker's normalization); ``name`` itself
    if it is no reference containerd would normalize."""
    try:
        return reference.parse(name).full
    except InputError:
        return name


def wanted(entries, platform, where):
    """The names (as containerd gives them) that loading ``entries`` (archive.loadable) brings a node of
    ``platform``; DindindError naming ``where`` and the image if one lacks that platform or none is named."""
    names = []
    for e in entries:
        if not any(platform_matches(platform, p) for p in e["platforms"]):
            has = ", ".join(e["platforms"]) or "no complete platform"
            raise DindindError(f"{where}: {e['names'][0]} has {has}; the nodes run {platform}",
                               hint=f"save it for {platform} (docker pull --platform {platform}, then docker save)")
        names += [containerd_name(n) for n in e["names"]]
    if not names:
        raise DindindError(f"{where} names no image (docker save writes the io.containerd.image.name "
                           "annotation or RepoTags)", hint="save the image by its name: docker save NAME:TAG -o FILE")
    return list(dict.fromkeys(names))


# ------------------------------------------------------------------ arguments (pure but for the file checks)

def check_args(images, archives):
    """(image references, archive Paths), each once in the order given; DindindError for the first bad one.

    An archive must be an existing regular file (read-only use: a FIFO or a
    device would hang the reader); relative paths are the working directory's.
    """
    images = list(dict.fromkeys(images or ()))
    archives = list(dict.fromkeys(archives or ()))
    if not images and not archives:
        raise DindindError("nothing to load: give --image or --archive", hint=USAGE)
    for ref in images:
        try:
            reference.parse(ref)
        except InputError as exc:
            raise DindindError(f"--image {ref!r} is not an image reference", hint=exc.hint) from None
    paths = []
    for text in archives:
        path = Path(text).absolute()
        if not path.exists():
            raise DindindError(f"--archive {text}: no such file ({path})", hint="give the file `docker save -o` wrote")
        if not path.is_file():
            raise DindindError(f"--archive {text}: not a regular file ({path})",
                               hint="give the file `docker save -o` wrote")
        if not os.access(path, os.R_OK):
            raise DindindError(f"--archive {text}: not readable ({path})", hint="check its permissions")
        paths.append(path)
    return images, list(dict.fromkeys(paths))


def _host_image(ref):
    """The host engine's image ``ref`` names by one of its tags; DindindError if there is none."""
    if engine.image_id(ref) is None:
        raise DindindError(f"no image {ref!r} in the host engine", hint="build or pull it first (docker images)")
    info = engine_images.inspect_image(ref)
    if containerd_name(ref) not in {containerd_name(t) for t in info.get("RepoTags") or []}:
        raise DindindError(f"--image {ref!r} is not a tag of the image it names (an id or a digest loads untagged)",
                           hint="give NAME:TAG, e.g. `docker tag IMAGE NAME:TAG` first")
    platform = f"{info.get('Os', '')}/{info.get('Architecture', '')}" + (f"/{info['Variant']}" if info.get("Variant")
                                                                       else "")
    return platform


# ------------------------------------------------------------------ the verb

def node_platforms(sh):
    """{node: platform} from each node's containerd."""
    found = {}
    for node in sh.nodes:
        _, text = sh.run(node, CTR + ["plugins", "ls"])
        platform = platform_from_plugins(text)
        if platform is None:
            raise DindindError(f"cannot tell the platform of {node}: `ctr plugins ls` lists no snapshotter platform",
                               detail=text.strip()[-1000:] or None)
        found[node] = platform
    return found


def load(sh, layout, images, archives, out=print):
    """Import host ``images`` and docker-archive files ``archives`` (from :func:`check_args`) into every
    node of the cluster behind ``sh`` (a dindind.cluster.host.Shell); return the names loaded."""
    platforms = node_platforms(sh)
    distinct = sorted(set(platforms.values()))
    for ref in images:
        platform = _host_image(ref)
        for p in distinct:
            if not platform_matches(p, platform):
                raise DindindError(f"--image {ref}: the host's image is {platform}; the nodes run {p}",
                                   hint=f"pull it for {p}: docker pull --platform {p} {ref}")
    expect = []
    for path in archives:
        entries = archive.loadable(path, verify_layers=True)
        for p in distinct:
            expect += wanted(entries, p, f"--archive {path}")
    layout.tmp.mkdir(parents=True, exist_ok=True)
    saved = layout.tmp / f"load-{os.getpid()}.tar"
    try:
        files = [(f"--archive {path}", path) for path in archives]
        if images:
            what = f"docker save of {' '.join(images)}"
            engine_images.save_refs(images, saved)
            for p in distinct:
                expect += wanted(archive.loadable(saved), p, what)
            files.insert(0, (what, saved))
        _copy_and_import(sh, files, platforms)
    finally:
        saved.unlink(missing_ok=True)
    expect = list(dict.fromkeys(expect))
    _check_arrived(sh, expect)
    out(f"loaded {len(expect)} image(s) for {', '.join(distinct)} into {len(sh.nodes)} node(s) of {sh.name}: "
        + " ".join(expect))
    return expect


def _copy_and_import(sh, files, platforms):
    """Each of ``files`` ([(what, path)]) once into every target, ``ctr images import --platform`` in every
    node, then removed from every target, however it ends."""
    remote = [(f"dindind-load-{os.getpid()}-{i}.tar", path) for i, (_, path) in enumerate(files)]
    what = {name: label for (name, _), (label, _) in zip(remote, files)}
    targets = [sh.top] if sh.top else list(sh.nodes)
    touched = []
    try:
        for t in targets:
            touched.append(t)
            containers.put_archive_files(t, TARGET_DIR, remote)
        for node in sh.nodes:
            for name, _ in remote:
                path = f"{TARGET_DIR}/{name}"
                ctr = CTR + ["images", "import", "--platform", platforms[node]]
                try:
                    if sh.top:
                        sh.top_run(["sh", "-c", f"docker exec -i {shlex.quote(node)} {shlex.join(ctr)} - "
                                                f"< {shlex.quote(path)}"])
                    else:
                        sh.run(node, ctr + [path])
                except CommandError as exc:
                    raise DindindError(f"containerd in {node} could not import {what[name]}",
                                       detail=exc.detail, hint="check the archive with `docker load -i FILE`") from None
    finally:
        for t in touched:
            try:
                containers.exec_in(t, ["rm", "-f"] + [f"{TARGET_DIR}/{name}" for name, _ in remote], check=False)
            except DindindError:
                pass            # the container went away: nothing left in it to remove


def _check_arrived(sh, names):
    for node in sh.nodes:
        _, text = sh.run(node, CTR + ["images", "ls", "-q"])
        missing = [n for n in names if n not in set(text.split())]
        if missing:
            raise DindindError(f"{', '.join(missing)} did not arrive in {node}'s containerd",
                               hint=f"see `ctr -n k8s.io images ls` in {node}")
