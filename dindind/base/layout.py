"""Where every artifact lives, derived from the project root and the config.

Pure values: no I/O. Everything dindind writes is under ``artifacts/``.
"""

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from dindind.base.config import ROOT, check_name
from dindind.base.errors import DindindError

ARCH = "amd64"                      # the only architecture dindind builds and runs
REGISTRY = "registry.k8s.io"        # where upstream's images are tagged from
COMPONENT_IMAGES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy")
SERVER_BINARIES = ("kubelet", "kubeadm", "kubectl") + COMPONENT_IMAGES
DEBS = ("kubernetes-cni", "kubelet", "kubectl", "kubeadm", "cri-tools")


def docker_tag(version):
    """A Kubernetes version as a docker tag: '+' is not allowed there."""
    return version.replace("+", "_")


def deb_version(version):
    """v1.31.2-rc.1+abc -> 1.31.2~rc.1+abc-1 (sorts before the final release)."""
    v = version[1:] if version.startswith("v") else version
    core, plus, meta = v.partition("+")
    core = core.replace("-", "~", 1).replace("-", ".")
    return f"{core}{plus}{meta}-1"


def rfc3339(epoch):
    """A Unix time as RFC 3339 in UTC (``2023-11-14T22:13:20Z``): image and build dates from SOURCE_DATE_EPOCH."""
    return datetime.fromtimestamp(int(epoch), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def inside(root, path):
    """``path``, after checking that it resolves (links followed) to somewhere strictly inside ``root``.

    Called before anything is written or removed at a path built from a user
    value, so that no later bug in a name rule can reach outside ``root``.
    """
    real_root = Path(root).resolve()
    real = Path(path).resolve()
    if real == real_root or not real.is_relative_to(real_root):
        raise DindindError(f"refusing to touch {path}: it is not inside {root}",
                           hint="a name or path given to dindind must stay inside its folder")
    return Path(path)


@dataclass(frozen=True)
class Layout:
    root: Path = ROOT

    @property
    def artifacts(self):
        return self.root / "artifacts"

    @property
    def templates(self):
        return self.root / "templates"

    @property
    def tmp(self):
        return self.artifacts / "tmp"

    @property
    def cache(self):
        return self.artifacts / "cache"

    @property
    def kubernetes(self):
        return self.artifacts / "kubernetes"

    @property
    def sample_root(self):
        """The folder that holds the generated sample's kubernetes/."""
        return self.kubernetes / "sample"

    def release_root(self, server_sha256):
        return self.kubernetes / f"release-{server_sha256[:16]}"

    @property
    def e2e_images(self):
        """artifacts/kubernetes/e2e-images: the e2e test images (docker-archives) and e2e-images.json."""
        return self.kubernetes / "e2e-images"

    def e2e_images_json(self):
        return self.e2e_images / "e2e-images.json"

    @property
    def cni(self):
        return self.artifacts / "cni"

    @property
    def debs(self):
        return self.artifacts / "debs"

    def deb(self, name):
        return self.debs / f"{name}.deb"

    @property
    def context(self):
        return self.artifacts / "context"

    @property
    def images(self):
        return self.artifacts / "images"

    def stamp(self, image):
        return self.images / f"{image}.json"

    @property
    def clusters(self):
        return self.artifacts / "clusters"

    def cluster(self, name):
        """artifacts/clusters/<name>: the name checked by the one name rule, the path kept inside."""
        return inside(self.clusters, self.clusters / check_name(name, "cluster name"))

    @property
    def release(self):
        return self.artifacts / "release"

    @property
    def lock(self):
        return self.artifacts / ".lock"
