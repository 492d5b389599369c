"""The sample Kubernetes: a small, honest stand-in tree generated offline.

No registry reachable from our machines serves kubelet, kubeadm or the
control-plane images, so the pipeline's tests run on a generated tree with
exactly the layout of the official release tarballs (see
:mod:`dindind.sources`). Its binaries say plainly what they are and answer the
version calls the way the real tools print them. Its images are tiny real
docker-archives holding stand-in scripts.

* kubelet and kubeadm are one small Python program, :mod:`dindind.sample_kube`
  (dispatching on its name): enough of ``kubeadm init``/``join``/``reset``, the
  kubelet and an API server stand-in for a cluster to come up and for the
  readiness check (API answers, every node Ready) to pass. The node therefore
  needs python3 and openssl: ``kubernetes/dindind-sample.json`` says so.
* every other tool is a POSIX ``sh`` script from :data:`STANDINS` (one ``case``
  block per tool) that answers its version calls and otherwise logs its
  arguments to stderr and exits 0.

A cluster built from the sample proves the pipeline, images, systemd,
containerd, networking, exposure and cleanup; it proves nothing about
Kubernetes (no pods run; "Ready" only means the node's kubelet stand-in sent a
heartbeat in the last 40 s).
Note: the images hold only the script, no ``/bin/sh``, so they load and can be
listed and inspected, but a container started from one cannot exec it.
"""

import json
import os
import re
from pathlib import Path

from dindind.docker import archive as dockerarchive
from dindind.base import fsutil
from dindind.base.config import VERSION_RE
from dindind.base.layout import ARCH, COMPONENT_IMAGES, REGISTRY, SERVER_BINARIES, docker_tag, rfc3339

GO_VERSION = "go1.22.8"
KUSTOMIZE_VERSION = "v5.4.2"
GINKGO_VERSION = "2.19.0"
TEST_BINARIES = ("e2e.test", "ginkgo")

#: name -> (image ref, path of the stand-in in the image, entrypoint)
EXTRA_IMAGES = {
    "etcd": (f"{REGISTRY}/etcd:3.5.15-0", "/usr/local/bin/etcd", None),
    "coredns": (f"{REGISTRY}/coredns/coredns:v1.11.3", "/coredns", ["/coredns"]),
    "pause": (f"{REGISTRY}/pause:3.10", "/pause", ["/pause"]),
}

_KUBE_VERSION = """\
  --version|--version=true|version)
    echo "Kubernetes $VERSION"; exit 0 ;;
"""

#: the tools that are :mod:`dindind.sample_kube` (one program, dispatching on its name)
PYTHON_STANDINS = ("kubelet", "kubeadm")
_PYTHON_PROGRAM = Path(__file__).with_name("sample_kube.py")
_BUILD_LINE = re.compile(r"^BUILD = .*$", re.M)

#: what the node must have installed for the sample's stand-ins (read by the node image build)
NODE_REQUIREMENTS = {
    "node_packages": ["python3", "openssl"],
    "note": "dindind sample Kubernetes: kubelet and kubeadm are a Python 3 test double "
            "(dindind/sample_kube.py) that runs openssl; this is NOT Kubernetes.",
}

#: tool name -> the ``case "$*" in`` arms its stand-in answers (placeholders @KEY@).
STANDINS = {
    "kube-apiserver": _KUBE_VERSION,
    "kube-controller-manager": _KUBE_VERSION,
    "kube-scheduler": _KUBE_VERSION,
    "kube-proxy": _KUBE_VERSION,
    "kubectl": """\
  version*--client*|version)
    case " $* " in
      *" json "*|*"=json "*|*" -ojson "*)
        cat <<'EOF'
{
  "clientVersion": {
    "major": "@MAJOR@",
    "minor": "@MINOR@",
    "gitVersion": "@VERSION@",
    "gitCommit": "@COMMIT@",
    "gitTreeState": "clean",
    "buildDate": "@DATE@",
    "goVersion": "@GO@",
    "compiler": "gc",
    "platform": "linux/@ARCH@"
  },
  "kustomizeVersion": "@KUSTOMIZE@"
}
EOF
        ;;
      *) echo "Client Version: $VERSION"; echo "Kustomize Version: @KUSTOMIZE@" ;;
    esac
    exit 0 ;;
""",
    "e2e.test": """\
  --version|-version)
    echo "$VERSION"; exit 0 ;;
  *--report-dir=*)
    # Runs no Kubernetes test: checks it was given a readable kubeconfig and
    # writes one JUnit case saying so, so cluster:e2e's plumbing is exercised.
    report=''; kubeconfig=''; focus="${DINDIND_SAMPLE_FOCUS:-}"; skip="${DINDIND_SAMPLE_SKIP:-}"
    for a in "$@"; do
      case "$a" in
        --report-dir=*) report="${a#*=}" ;;
        --kubeconfig=*) kubeconfig="${a#*=}" ;;
        --ginkgo.focus=*) focus="${a#*=}" ;;
        --ginkgo.skip=*) skip="${a#*=}" ;;
      esac
    done
    mkdir -p "$report"
    if [ -r "$kubeconfig" ]; then failures=0; result='<system-out>kubeconfig readable</system-out>'
    else failures=1; result="<failure message=\\"kubeconfig $kubeconfig not readable\\"/>"; fi
    printf '<?xml version="1.0" encoding="UTF-8"?>\\n<testsuites tests="1" failures="%s">\\n<testsuite name="dindind sample e2e" tests="1" failures="%s">\\n<testcase name="[dindind-sample] e2e.test stand-in ran (no Kubernetes test)" classname="sample">%s</testcase>\\n</testsuite>\\n</testsuites>\\n' "$failures" "$failures" "$result" > "$report/junit_01.xml"
    echo "dindind sample e2e.test: 1 stand-in case, $failures failure(s); focus='$focus' skip='$skip'"
    exit $failures ;;
""",
    "ginkgo": """\
  *" -- "*)
    # ginkgo [flags] BINARY -- [args]: run BINARY with args; focus/skip travel in the environment
    bin=''
    while [ $# -gt 0 ]; do
      case "$1" in
        --) shift; break ;;
        --focus=*) export DINDIND_SAMPLE_FOCUS="${1#*=}" ;;
        --skip=*) export DINDIND_SAMPLE_SKIP="${1#*=}" ;;
        -*) ;;
        *) bin="$1" ;;
      esac
      shift
    done
    exec "$bin" "$@" ;;
  version|--version|-version)
    echo "Ginkgo Version @GINKGO@"; exit 0 ;;
""",
    "etcd": """\
  --version|-version)
    echo "etcd Version: 3.5.15"; echo "Git SHA: @COMMIT7@"
    echo "Go Version: @GO@"; echo "Go OS/Arch: linux/@ARCH@"; exit 0 ;;
""",
    "coredns": """\
  -version|--version)
    echo "CoreDNS-1.11.3"; echo "linux/@ARCH@, @GO@, @COMMIT7@"; exit 0 ;;
""",
    "pause": """\
  -v|-V)
    echo "pause.c v3.10"; exit 0 ;;
""",
}

_SCRIPT = """\
#!/bin/sh
# dindind sample stand-in for @NAME@ (reports @VERSION@).
# This is NOT Kubernetes: it is a tiny test double generated by dindind
# (dindind/sample.py) so the pipeline can be built and tested offline.
# It answers the version calls the pipeline makes; any other call is
# reported on stderr and succeeds without doing anything.
VERSION='@VERSION@'
case "$*" in
@ARMS@esac
echo "dindind sample stand-in: @NAME@ $*" >&2
exit 0
"""


def _rel_files():
    files = ["kubernetes/version", "kubernetes/dindind-sample.json"]
    files += [f"kubernetes/server/bin/{n}" for n in SERVER_BINARIES]
    for n in COMPONENT_IMAGES:
        files += [f"kubernetes/server/bin/{n}.tar", f"kubernetes/server/bin/{n}.docker_tag"]
    files += [f"kubernetes/test/bin/{n}" for n in TEST_BINARIES]
    files += [f"kubernetes/extra-images/{n}.tar" for n in EXTRA_IMAGES]
    return tuple(sorted(files))


#: every path (relative to the sample root) that :func:`generate` writes
MANIFEST = _rel_files()


def component_ref(name, version):
    """The image reference of a control-plane component, as upstream tags it."""
    return f"{REGISTRY}/{name}-{ARCH}:{docker_tag(version)}"


def kube_program(version, epoch):
    """The text of the kubelet/kubeadm stand-in program (:mod:`dindind.sample_kube`) for ``version`` (pure)."""
    build = {"apiserver_image": component_ref("kube-apiserver", version), "arch": ARCH,
             "date": rfc3339(epoch), "go": GO_VERSION, "version": version}
    line = f"BUILD = {json.dumps(build, sort_keys=True)}  # set by dindind.sample"
    text, count = _BUILD_LINE.subn(lambda _: line, _PYTHON_PROGRAM.read_text(), count=1)
    assert count == 1, f"{_PYTHON_PROGRAM} has no BUILD line"
    return text


def standin(name, version, epoch):
    """The text of the stand-in for tool ``name`` (pure; kubelet and kubeadm: :func:`kube_program`)."""
    if name in PYTHON_STANDINS:
        return kube_program(version, epoch)
    major, minor = re.match(r"^v(\d+)\.(\d+)\.", version).groups()
    values = {
        "NAME": name, "VERSION": version, "MAJOR": major, "MINOR": minor,
        "COMMIT": "0" * 40, "COMMIT7": "0" * 7, "GO": GO_VERSION, "ARCH": ARCH,
        "KUSTOMIZE": KUSTOMIZE_VERSION, "GINKGO": GINKGO_VERSION, "DATE": rfc3339(epoch),
    }
    text = _SCRIPT.replace("@ARMS@", STANDINS[name])
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    return text


def render(version, epoch):
    """Every file of the sample tree: {relative path: (bytes, mode)} (pure).

    Raises ValueError for a version that config.VERSION_RE refuses (it is
    pasted into shell scripts and the Python stand-in).
    """
    if not re.fullmatch(VERSION_RE, version or ""):
        raise ValueError(f"not a Kubernetes version: {version!r}")
    out = {"kubernetes/version": (f"{version}\n".encode(), 0o644),
           "kubernetes/dindind-sample.json": (
               (json.dumps(NODE_REQUIREMENTS, indent=2, sort_keys=True) + "\n").encode(), 0o644)}
    for name in SERVER_BINARIES:
        out[f"kubernetes/server/bin/{name}"] = (standin(name, version, epoch).encode(), 0o755)
    for name in COMPONENT_IMAGES:
        script = standin(name, version, epoch).encode()
        out[f"kubernetes/server/bin/{name}.tar"] = (dockerarchive.image_bytes(
            [component_ref(name, version)], {f"/usr/local/bin/{name}": (script, 0o755)},
            epoch=epoch, entrypoint=[f"/usr/local/bin/{name}"]), 0o644)
        out[f"kubernetes/server/bin/{name}.docker_tag"] = (f"{docker_tag(version)}\n".encode(), 0o644)
    for name in TEST_BINARIES:
        out[f"kubernetes/test/bin/{name}"] = (standin(name, version, epoch).encode(), 0o755)
    for name, (ref, inner, entrypoint) in EXTRA_IMAGES.items():
        script = standin(name, version, epoch).encode()
        out[f"kubernetes/extra-images/{name}.tar"] = (dockerarchive.image_bytes(
            [ref], {inner: (script, 0o755)}, epoch=epoch, entrypoint=entrypoint), 0o644)
    assert tuple(sorted(out)) == MANIFEST
    return out


def generate(root, version, epoch):
    """Write the sample tree to ``root/kubernetes`` and return that path.

    Side effect: builds the whole tree in a temporary directory beside it and
    swaps it in (fsutil.atomic_dir), replacing any previous ``kubernetes/``.
    Same ``version`` and ``epoch`` give byte-identical files.
    """
    files = render(version, epoch)
    target = Path(root) / "kubernetes"
    with fsutil.atomic_dir(target) as tmp:
        os.chmod(tmp, 0o755)            # mkdtemp makes it 0700
        for rel, (data, mode) in files.items():
            path = tmp / Path(rel).relative_to("kubernetes")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            os.chmod(path, mode)
    return target


# ---------------------------------------------------------------- the source (see dindind.build.sources)

def tree_root(cfg, layout):
    """``artifacts/kubernetes/sample``: the folder that holds the generated kubernetes/ (pure)."""
    return layout.sample_root


def extra_images(cfg, layout):
    """The generated etcd, coredns and pause stand-in images (pure)."""
    return tuple(layout.sample_root / "kubernetes" / "extra-images" / f"{n}.tar" for n in EXTRA_IMAGES)


def task_io(cfg, layout):
    """The generator's own code is an input of the tree it writes; the version and epoch decide the rest."""
    generator = [Path(__file__), _PYTHON_PROGRAM]
    return {"file_dep": generator, "targets": [layout.sample_root / rel for rel in MANIFEST],
            "config": {"source": "sample", "version": cfg.kubernetes["version"], "epoch": cfg.source_date_epoch}}


def _tree_matches(kube_dir, files):
    """True if ``kube_dir``'s parent holds exactly ``files`` ({rel: (bytes, mode)})."""
    base = Path(kube_dir).parent
    try:
        on_disk = {p.relative_to(base).as_posix() for p in Path(kube_dir).rglob("*")
                   if p.is_file() or p.is_symlink()}
        if on_disk != set(files):
            return False
        for rel, (data, mode) in files.items():
            p = base / rel
            st = p.lstat()
            if not p.is_file() or p.is_symlink() or st.st_size != len(data) \
                    or (st.st_mode & 0o777) != mode or p.read_bytes() != data:
                return False
    except OSError:
        return False
    return True


def generate_sample(cfg, layout):
    """Make sure ``layout.sample_root`` holds the sample tree the config asks for.

    Side effect: regenerates the whole tree (atomically) unless it already is
    byte for byte (modes included, no extra files) what it would be, so a
    no-op touches nothing. Returns ``{"changed": bool}`` (a doit-friendly result).
    """
    version, epoch = cfg.kubernetes["version"], cfg.source_date_epoch
    files = render(version, epoch)
    if _tree_matches(layout.sample_root / "kubernetes", files):
        return {"changed": False}
    generate(layout.sample_root, version, epoch)
    return {"changed": True}


def prepare(cfg, layout):
    """Generate the sample (unless already identical) and return its validated Tree."""
    from dindind.build.sources import tree

    generate_sample(cfg, layout)
    return tree.read_tree(tree_root(cfg, layout), extra_images(cfg, layout))
