"""OCI-layout docker-archives built by hand, as dockerd >= 25 and the containerd image store write them.

oci-layout, index.json, blobs/sha256/<hex>, and manifest.json pointing into
blobs/; uncompressed or gzip layers; optionally a multi-platform image index
of which only one platform's blobs were saved (what ``docker save`` writes
for a pulled multi-platform image). Used by the archive reader's unit tests
and by the cluster:load engine tests (containerd imports these).
"""

import gzip
import hashlib
import io
import json
import tarfile

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
TAR = "application/vnd.oci.image.layer.v1.tar"
TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
TAR_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
IMAGE_NAME = "io.containerd.image.name"


def sha(data):
    return hashlib.sha256(data).hexdigest()


def layer(files):
    """An uncompressed layer tar of {path: bytes}."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in sorted(files.items()):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def tar_bytes(entries):
    """A tar of [(name, bytes)] in the order given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in entries:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _platform(text):
    os_, arch, *variant = text.split("/")
    return {"os": os_, "architecture": arch, **({"variant": variant[0]} if variant else {})}


def oci(images, *, compress=None, media_type=None, manifest_first=False, nested=False, drop=(),
        extra_index=(), tamper=None, platform="linux/amd64", absent="linux/arm64", name=True):
    """The bytes of an OCI-layout docker-archive of ``images`` ([(tags, [layer files, ...])]).

    ``compress``: None or "gzip" (or a callable); ``media_type``: override the
    layers' media type; ``platform``: the images' (config and descriptor);
    ``nested``: index.json -> image index -> manifest, with an ``absent``
    platform's manifest listed but not in the archive; ``name``: index.json
    names each image (``io.containerd.image.name``, as docker save does);
    ``drop``: blob names to leave out; ``tamper(name, data)``: change a
    member's bytes.
    """
    blobs, manifest_json, index = {}, [], []

    def put(data):
        blobs[f"blobs/sha256/{sha(data)}"] = data
        return f"sha256:{sha(data)}"

    for tags, layers in images:
        plain = [layer(files) for files in layers]
        stored = [gzip.compress(p, mtime=0) if compress == "gzip" else compress(p) if compress else p
                  for p in plain]
        config = json.dumps({**_platform(platform),
                             "config": {"Labels": {"org.opencontainers.image.title": tags[0]}},
                             "rootfs": {"type": "layers", "diff_ids": [f"sha256:{sha(p)}" for p in plain]},
                             "history": [{"created_by": f"layer {i}"} for i in range(len(plain))]}).encode()
        cfg = put(config)
        descs = [{"mediaType": media_type or (TAR_GZIP if compress == "gzip" else TAR),
                  "digest": put(s), "size": len(s)} for s in stored]
        manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                          "digest": cfg, "size": len(config)},
                               "layers": descs}).encode()
        names = {"annotations": {IMAGE_NAME: tags[0]}} if name else {}
        desc = {"mediaType": OCI_MANIFEST, "digest": put(manifest), "size": len(manifest), **names}
        if nested:
            other = {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "e" * 64, "size": 1,
                     "platform": _platform(absent)}
            inner = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                "manifests": [other, dict(desc, annotations={},
                                                          platform=_platform(platform))]}).encode()
            desc = {"mediaType": OCI_INDEX, "digest": put(inner), "size": len(inner), **names}
        index.append(desc)
        manifest_json.append({"Config": f"blobs/sha256/{cfg[7:]}", "RepoTags": list(tags),
                              "Layers": [f"blobs/sha256/{d['digest'][7:]}" for d in descs]})
    index += list(extra_index)
    docs = [("index.json", json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": index}).encode()),
            ("manifest.json", json.dumps(manifest_json).encode()),
            ("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')]
    entries = [(n, d) for n, d in sorted(blobs.items()) if n not in drop]
    entries = docs + entries if manifest_first else entries + docs
    if tamper:
        entries = [(n, tamper(n, d)) for n, d in entries]
    return tar_bytes(entries)
