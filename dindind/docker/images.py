"""Images in the engine: build, import, pull, tag, save, load.

Every payload is streamed: a build context goes from a file, ``docker save``
comes out in chunks (zstd through dindind.base.proc), and nothing reads an
image into memory (docker-py#2119).
"""

import collections
import json
import os
import re
from pathlib import Path

from dindind.base import fsutil, proc
from dindind.base.errors import CommandError, EngineError
from dindind.docker import engine
from dindind.docker.reference import split_ref

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def inspect_image(ref):
    try:
        return engine.client().inspect_image(ref)
    except engine.sdk_errors() as exc:
        raise EngineError(f"cannot inspect image {ref}: {exc}") from None


def tag(image, ref):
    repo, t = split_ref(ref)
    engine.client().tag(image, repo, t, force=True)


def no_cache():
    """True when DINDIND_NO_CACHE=1: builds use no cached layer (for reproducibility measurements)."""
    return os.environ.get("DINDIND_NO_CACHE", "") == "1"


def build(context_tar, tags, *, labels=None, buildargs=None, log_path=None, echo=print):
    """Build an image from a context tarball; return its id.

    Streams the context and the build log; prints each Dockerfile step. On
    failure raises EngineError naming the failing step with the log's tail.
    With DINDIND_NO_CACHE=1 in the environment no cached layer is used
    (``docker build --no-cache``; bench/reproducible.py measures with it).
    """
    tail = collections.deque(maxlen=40)
    step = None
    image = None
    log = open(log_path, "w") if log_path else None
    try:
        with open(context_tar, "rb") as ctx:
            stream = engine.client().build(fileobj=ctx, custom_context=True, tag=tags[0], labels=labels or {},
                                    buildargs=buildargs or {}, rm=True, forcerm=True, pull=False,
                                    nocache=no_cache(), decode=True)
            for event in stream:
                if "stream" in event:
                    text = event["stream"]
                    if log:
                        log.write(text)
                    for line in _ANSI.sub("", text).splitlines():
                        if not line.strip():
                            continue
                        tail.append(line)
                        if line.startswith("Step "):
                            step = line
                            echo(f"  {line}")
                        m = re.match(r"^Successfully built ([0-9a-f]+)", line)
                        if m:
                            image = m.group(1)
                elif "aux" in event and "ID" in event["aux"]:
                    image = event["aux"]["ID"]
                elif "error" in event or "errorDetail" in event:
                    msg = event.get("error") or event["errorDetail"].get("message", "")
                    if log:
                        log.write(msg + "\n")
                    raise EngineError(
                        f"docker build of {tags[0]} failed at {step or 'the start'}: {msg.strip()}",
                        detail="\n".join(tail),
                        hint=f"full log: {log_path}" if log_path else None)
    except engine.sdk_errors() as exc:
        raise EngineError(f"docker build of {tags[0]} failed: {exc}", detail="\n".join(tail)) from None
    finally:
        if log:
            log.close()
    if image is None:
        raise EngineError(f"docker build of {tags[0]} reported no image id", detail="\n".join(tail))
    full = inspect_image(image)["Id"]
    for ref in tags[1:]:
        tag(full, ref)
    return full


def import_rootfs(tar_path, ref, changes):
    """``docker import`` a root filesystem tarball; return the image id."""
    repo, t = split_ref(ref)
    try:
        # import_image_from_file streams the file with its length; the _stream
        # variant sends a chunked header that dockerd 20.10 rejects.
        out = engine.client().import_image_from_file(str(tar_path), repository=repo, tag=t, changes=changes)
    except engine.sdk_errors() as exc:
        raise EngineError(f"docker import of {ref} failed: {exc}") from None
    status = out if isinstance(out, str) else json.dumps(out)
    if "error" in status.lower():
        raise EngineError(f"docker import of {ref} failed: {status[-500:]}")
    return inspect_image(ref)["Id"]


def pull(ref):
    try:
        engine.client().pull(ref)
    except engine.sdk_errors() as exc:
        raise EngineError(f"cannot pull {ref}: {exc}",
                          hint="pull or load it yourself, or unset base.image to build one with debootstrap") from None
    return inspect_image(ref)["Id"]


def save_chunks(ref, chunk_size=1 << 20):
    """``docker save ref`` as a stream of byte chunks (the image layer export the release scans).

    Nothing is held in memory beyond one chunk; an engine failure mid-stream
    raises EngineError naming the image.
    """
    try:
        for chunk in engine.client().get_image(ref, chunk_size=chunk_size):
            yield chunk
    except engine.sdk_errors() as exc:
        raise EngineError(f"docker save of {ref} failed: {exc}") from None


def save(ref, out_path, compress="zstd", level=3):
    """``docker save`` an image to ``out_path``, streamed, optionally zstd-compressed.

    Never holds the image in memory; the file appears only when complete.
    """
    chunks = save_chunks(ref)
    with fsutil.atomic_path(out_path) as tmp:
        with open(tmp, "wb") as out:
            if compress == "zstd":
                try:
                    proc.feed(["zstd", "-q", f"-{level}", "-T0", "-c"], chunks, out)
                except CommandError as exc:
                    raise EngineError(f"zstd failed while saving {ref}", detail=exc.detail) from None
            else:
                for chunk in chunks:
                    out.write(chunk)
        os.chmod(tmp, 0o644)
    return Path(out_path)


def save_refs(refs, out_path):
    """``docker save REF...`` to an uncompressed docker-archive carrying every one of ``refs`` as a RepoTag.

    The engine streams it to a temporary file beside ``out_path`` (the CLI:
    the SDK saves one reference at a time); the file appears only when complete.
    """
    with fsutil.atomic_path(out_path) as tmp:
        try:
            proc.run(["docker", "save", "-o", tmp, *refs])
        except CommandError as exc:
            raise EngineError(f"docker save of {', '.join(refs)} failed", detail=exc.detail) from None
        os.chmod(tmp, 0o644)
    return Path(out_path)


def load_archive(ref, archive):
    """Load ``ref`` from a docker-archive (``.zst``: decompressed on the way) unless the engine has it.

    Returns True if it loaded the archive, False if the image was there already.
    """
    if engine.image_id(ref):
        return False
    try:
        if str(archive).endswith(".zst"):
            proc.pipe(["zstd", "-dc", archive], ["docker", "load", "-q"])
        else:
            proc.run(["docker", "load", "-q", "-i", archive])
    except CommandError as exc:
        raise EngineError(f"cannot load the image {ref} from {archive}", detail=exc.detail) from None
    return True
