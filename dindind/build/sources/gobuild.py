"""Building a Kubernetes tree from Go: shared by the ``module`` and ``checkout`` sources.

The steps, in order (each one skips what is already up to date):

1. :func:`check_go`: a ``go`` on PATH new enough for the go.mod's ``go`` line
   (or GOTOOLCHAIN naming one), else one error saying how to get it.
2. :func:`build_binaries`: ``go build`` / ``go test -c`` of every server and
   test binary into ``<root>/.work/bin`` (CGO off, -trimpath, Kubernetes'
   tags and version ldflags). Go's build id is content-derived, so an
   up-to-date output is not even relinked: a no-op build takes seconds.
3. :func:`build_extras`: etcd, coredns and crictl from their Go modules at
   the versions kubeadm's constants.go names (one generated work module
   each, under ``artifacts/cache/go``), pause from Kubernetes' pause.c.
4. :func:`build_images`: the component and extra images as docker-archives,
   each rewritten only when its inputs (binary digest, tags, epoch; for
   kube-proxy the base image id and its Debian packages) changed.
5. :func:`publish`: copies into ``<root>/kubernetes`` only the files whose
   sha256 changed (the first time: one folder swapped in whole), so
   unchanged files keep their mtimes and no downstream task reruns.
6. :func:`record`: ``<root>/go-build.json``: the Go version, every module
   (``go version -m``: path, version, sum) and the flags.

A failure leaves the published tree as it was (or absent): everything is
staged under ``<root>/.work`` first.

One module of more than 400 lines on purpose: the six steps share one plan
(versions, flags, paths) and its rules; split, each part would take the plan
apart again.
"""

import json
import os
import re
import shlex
import shutil
import tempfile
from pathlib import Path

from dindind.base import fsutil, proc
from dindind.base.errors import DindindError, InputError
from dindind.base.layout import ARCH, COMPONENT_IMAGES, REGISTRY, SERVER_BINARIES, docker_tag

K8S_MODULE = "k8s.io/kubernetes"
MIN_MINOR = 34                       # the oldest Kubernetes minor built from Go
NEWER_TOOLCHAIN = "go1.27.3"         # a toolchain the Go module proxy serves, for GOTOOLCHAIN
K8S_TAGS = "selinux,notest,grpcnotrace"   # hack/lib/golang.sh, non-debug builds
RECIPE = 1                           # bump when flags, image layout or packages change
TEST_BINARIES = ("e2e.test", "ginkgo")
TARGETS = SERVER_BINARIES + TEST_BINARIES
EXTRAS = ("etcd", "coredns", "crictl", "pause")
EXTRA_IMAGES = ("etcd", "coredns", "pause")
KUBE_PROXY_PACKAGES = ("iptables", "nftables", "conntrack", "ipset", "kmod")
GO_HINT = (f"install Go from https://go.dev/dl/, or with an older Go on PATH export "
           f"GOTOOLCHAIN={NEWER_TOOLCHAIN} (the Go module proxy serves it)")
_ERROR_LINES = 20

#: extra binary -> (module, package built, ldflags -X of its version, or None)
EXTRA_MODULES = {
    "etcd": ("go.etcd.io/etcd/server/v3", "go.etcd.io/etcd/server/v3", None),
    "coredns": ("github.com/coredns/coredns", "github.com/coredns/coredns", None),
    "crictl": ("sigs.k8s.io/cri-tools", "sigs.k8s.io/cri-tools/cmd/crictl",
               "sigs.k8s.io/cri-tools/pkg/version.Version"),
}


class GoBuildError(DindindError):
    """A go (or gcc) command failed: the message names it, the detail is the end of its output."""


# ---------------------------------------------------------------- versions (pure)

def check_version(version):
    """The minor of a Kubernetes version the Go sources build (v1.34.0 or newer); InputError otherwise."""
    m = re.fullmatch(r"v1\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?", version or "")
    if not m:
        raise InputError(f"kubernetes.version {version!r} is not a release version like v1.37.2",
                         hint="set kubernetes.version to a Kubernetes release, e.g. v1.37.2")
    minor = int(m.group(1))
    if minor < MIN_MINOR:
        raise InputError(f"kubernetes.version {version} is older than v1.{MIN_MINOR}: "
                         f"dindind builds v1.{MIN_MINOR} and newer from Go",
                         hint=f"use v1.{MIN_MINOR}.0 or newer, or kubernetes.source: release for older versions")
    return minor


def go_version_key(v):
    """'1.26', '1.26.0', 'go1.26.8', 'go1.27rc1' -> a comparable tuple (1.26 == 1.26.0)."""
    m = re.match(r"^(?:go)?(\d+)\.(\d+)(?:\.(\d+))?(?:(rc|beta)(\d+))?", v or "")
    if not m:
        return (0, 0, 0, 0)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0), 0 if m.group(4) else 1)


# ---------------------------------------------------------------- go.mod (pure)

def parse_gomod(text):
    """The statements of a go.mod: module, go, toolchain, godebug, require, replace, exclude."""
    res = {"module": None, "go": None, "toolchain": None, "godebug": [],
           "require": [], "replace": [], "exclude": []}
    block = None
    for raw in text.splitlines():
        line = raw.split("//", 1)[0].strip()
        if not line:
            continue
        indirect = "// indirect" in raw
        if block:
            if line == ")":
                block = None
            else:
                _statement(res, block, line, indirect)
            continue
        verb, _, rest = line.partition(" ")
        if rest.strip() == "(":
            block = verb
        else:
            _statement(res, verb, rest.strip(), indirect)
    return res


def _statement(res, verb, rest, indirect):
    f = rest.replace('"', "").split()
    if verb in ("module", "go", "toolchain"):
        res[verb] = f[0]
    elif verb == "godebug":
        res["godebug"].append(rest)
    elif verb == "require":
        res["require"].append((f[0], f[1], indirect))
    elif verb == "exclude":
        res["exclude"].append((f[0], f[1]))
    elif verb == "replace":
        i = f.index("=>")
        left, right = f[:i], f[i + 1:]
        res["replace"].append((left[0], left[1] if len(left) > 1 else None,
                               right[0], right[1] if len(right) > 1 else None))


def _semver_key(v):
    m = re.match(r"^v(\d+)\.(\d+)\.(\d+)(-.*)?", v)
    if not m:
        return (0, 0, 0, 0, "")
    return (int(m.group(1)), int(m.group(2)), int(m.group(3)), 0 if m.group(4) else 1, m.group(4) or "")


def work_gomod(name, module, version, upstream, local_version):
    """The go.mod of a work module that builds ``module@version`` exactly as upstream resolves it (pure).

    ``upstream`` is :func:`parse_gomod` of the module's own go.mod. Every
    requirement is copied (staging ``v0.0.0`` pins become ``local_version``);
    each ``X => ./local/dir`` replace becomes ``X => X <local_version>``, and
    is skipped when upstream does not require X (sample-controller and
    friends are replaced upstream but never published); other replaces and
    excludes are copied; the ``go`` and ``godebug`` lines too (only the main
    module's godebug applies, so dropping it would change runtime defaults).
    Returns ``(text, skipped modules)``.
    """
    required = {r[0] for r in upstream["require"]}
    replaces, skipped, local = [], [], {}
    for old, oldv, new, newv in upstream["replace"]:
        if newv is None and new.startswith(("./", "../")):
            if old not in required:
                skipped.append(old)
                continue
            local[old] = local_version
            replaces.append(f"{old} => {old} {local_version}")
        else:
            replaces.append(f"{old}{' ' + oldv if oldv else ''} => {new}{' ' + newv if newv else ''}")
    reqs = {module: (version, False)}
    for mod, ver, ind in upstream["require"]:
        ver = local.get(mod, ver)
        if mod in reqs and _semver_key(reqs[mod][0]) >= _semver_key(ver):
            continue
        reqs[mod] = (ver, ind)
    lines = [f"// Generated by dindind from {module}@{version}'s go.mod. Do not edit.",
             f"module dindind.local/{name}", "", f"go {upstream['go'] or '1.21'}"]
    if upstream["toolchain"]:
        lines.append(f"toolchain {upstream['toolchain']}")
    lines += [f"godebug {g}" for g in upstream["godebug"]]
    lines += ["", "require ("]
    lines += [f"\t{m} {v}" + (" // indirect" if ind else "") for m, (v, ind) in sorted(reqs.items())]
    lines.append(")")
    if upstream["exclude"]:
        lines += ["", "exclude ("] + [f"\t{m} {v}" for m, v in upstream["exclude"]] + [")"]
    if replaces:
        lines += ["", "replace ("] + [f"\t{r}" for r in replaces] + [")"]
    return "\n".join(lines) + "\n", skipped


# ---------------------------------------------------------------- flags and image names (pure)

def k8s_ldflags(version, commit="", tree_state="clean", build_date=""):
    """The -ldflags of a Kubernetes binary: stripped, version info as hack/lib/version.sh sets it.

    No ``-buildid=``: Go's own build id is content-derived (reproducible under
    -trimpath) and lets ``go build -o X`` skip relinking an up-to-date X.
    """
    major, minor = re.match(r"^v(\d+)\.(\d+)", version).groups()
    values = {"gitVersion": version, "gitCommit": commit, "gitTreeState": tree_state,
              "buildDate": build_date, "gitMajor": major, "gitMinor": minor}
    parts = ["-s", "-w"]
    for pkg in ("k8s.io/client-go/pkg/version", "k8s.io/component-base/version"):
        parts += [f"-X {pkg}.{k}={v}" for k, v in values.items()]
    return " ".join(parts)


def go_flags(ldflags, jobs=2):
    """The flags of every Kubernetes go build / go test -c."""
    return ["-p", str(jobs), "-trimpath", "-tags", K8S_TAGS, "-ldflags", ldflags]


def _const(text, name):
    m = re.search(rf'\b{name}\s*=\s*"([^"]+)"', text)
    if not m:
        raise InputError(f"kubeadm's constants.go has no {name}",
                         hint="the Kubernetes source is not one dindind knows how to build (v1.34 or newer)")
    return m.group(1)


def kubeadm_images(constants_text):
    """The extra images kubeadm asks for, from its constants.go text (pure).

    ``{name: {"ref": image reference, "version": source version}}`` for etcd
    (DefaultEtcdVersion 3.7.0-0 -> go.etcd.io v3.7.0), coredns
    (CoreDNSVersion; registry.k8s.io/coredns/<CoreDNSImageName>) and pause
    (PauseVersion). Matches ``kubeadm config images list`` (checked after the build).
    """
    etcd = _const(constants_text, "DefaultEtcdVersion")
    coredns = _const(constants_text, "CoreDNSVersion")
    coredns_name = _const(constants_text, "CoreDNSImageName")
    pause = _const(constants_text, "PauseVersion")
    return {
        "etcd": {"ref": f"{REGISTRY}/etcd:{etcd}", "version": "v" + etcd.split("-", 1)[0]},
        "coredns": {"ref": f"{REGISTRY}/coredns/{coredns_name}:{coredns}",
                    "version": coredns if coredns.startswith("v") else "v" + coredns},
        "pause": {"ref": f"{REGISTRY}/pause:{pause}", "version": pause},
    }


def component_refs(name, version):
    """Both tags of a component image: the release tree's ``-amd64`` one, and kubeadm's."""
    return [f"{REGISTRY}/{name}-{ARCH}:{docker_tag(version)}", f"{REGISTRY}/{name}:{docker_tag(version)}"]


def parse_version_m(text):
    """``go version -m BINARY`` output -> {"go", "path", "main", "deps": [...], "build": {...}} (pure)."""
    res = {"go": None, "path": None, "main": None, "deps": [], "build": {}}
    first = text.splitlines()[0] if text else ""
    res["go"] = first.rsplit(": ", 1)[-1].strip() or None
    for line in text.splitlines()[1:]:
        f = line.strip().split("\t")
        if f[0] == "path":
            res["path"] = f[1]
        elif f[0] == "mod":
            res["main"] = {"path": f[1], "version": f[2] if len(f) > 2 else None}
        elif f[0] == "dep":
            res["deps"].append({"path": f[1], "version": f[2], "sum": f[3] if len(f) > 3 else None})
        elif f[0] == "=>" and res["deps"]:
            res["deps"][-1]["replace"] = {"path": f[1], "version": f[2] if len(f) > 2 else None,
                                          "sum": f[3] if len(f) > 3 else None}
        elif f[0] == "build":
            key, _, value = f[1].partition("=")
            res["build"][key] = value
    return res


# ---------------------------------------------------------------- go itself

def go_env(goflags="-buildvcs=false", gowork="off"):
    """The environment of every go command: CGO off, no VCS stamping, no silent toolchain switch.

    GOTOOLCHAIN: the caller's (e.g. go1.27.3), else ``local``, so a go line
    newer than the Go on PATH is an error (check_go) and not a download.
    GOFLAGS is set whole: a user's ``-mod=mod`` must never reach a checkout.
    """
    return {"CGO_ENABLED": "0", "GOFLAGS": goflags, "GOWORK": gowork,
            "GOTOOLCHAIN": os.environ.get("GOTOOLCHAIN") or "local", "GOOS": "linux", "GOARCH": ARCH}


def go_version(env):
    """The Go that builds (``go env GOVERSION`` under ``env``); DindindError when there is none."""
    if not shutil.which("go"):
        raise DindindError("no Go: `go` is not on PATH (needed to build Kubernetes from source)", hint=GO_HINT)
    with tempfile.TemporaryDirectory(prefix="dindind-go-") as td:
        code, out = proc.status(["go", "env", "GOVERSION"], cwd=td, env={**env, "GOWORK": "off"})
    version = out.strip().splitlines()[-1] if out.strip() else ""
    if code != 0 or not version.startswith("go"):
        raise DindindError(f"`go env GOVERSION` failed (exit {code})", detail=out.strip()[-2000:] or None,
                           hint=GO_HINT)
    return version


def check_go(need, what, env):
    """The Go version, after checking it is at least ``need`` (a go.mod ``go`` line); DindindError if older."""
    have = go_version(env)
    if go_version_key(have) < go_version_key(need):
        raise DindindError(f"{have} is too old to build {what}: its go.mod needs go {need} or newer",
                           hint=f"export GOTOOLCHAIN={NEWER_TOOLCHAIN} (the Go module proxy serves it), "
                                f"or install Go {need} or newer from https://go.dev/dl/")
    return have


def run_go(argv, *, cwd, env, log, what):
    """Run a go (or gcc) command, appending its output to ``log``; GoBuildError with the last lines if it fails."""
    code, out = proc.status(argv, cwd=cwd, env=env)
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"$ (cd {shlex.quote(str(cwd))} && {shlex.join(str(a) for a in argv)})\n{out}\n")
    if code != 0:
        tail = "\n".join(out.rstrip().splitlines()[-_ERROR_LINES:])
        raise GoBuildError(f"{what} failed (exit {code})", detail=tail or None,
                           hint=f"full log: {log}")
    return out


def mod_download(module, version, env, log):
    """``go mod download -json module@version`` (outside any module): its JSON (Dir, GoMod, Info).

    A version the proxy does not serve is an InputError naming it.
    """
    with tempfile.TemporaryDirectory(prefix="dindind-go-") as td:
        code, out = proc.status(["go", "mod", "download", "-json", f"{module}@{version}"],
                                cwd=td, env={**env, "GOFLAGS": "-buildvcs=false", "GOWORK": "off"})
    try:
        info = json.loads(out[out.index("{"):])
    except ValueError:
        info = {}
    if code != 0 or info.get("Error") or "Dir" not in info:
        reason = info.get("Error") or out.strip()[-1000:]
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            f.write(f"$ go mod download -json {module}@{version}\n{out}\n")
        raise InputError(f"{module} {version} is not available from the Go module proxy",
                         detail=f"  {reason}",
                         hint=f"check the version (go list -m -versions {module}) and GOPROXY; "
                              f"full log: {log}")
    return info


def work_module(cache, name, module, version, env, log, local_version=None):
    """A work module under ``cache`` that requires ``module@version`` as upstream resolves it.

    Side effects: downloads the module; writes ``<cache>/<name>-<version>/go.mod``
    (only when it changes) and an empty go.sum if none (the go command fills
    it, verified against the checksum database). Returns ``(dir, info, upstream go.mod)``.
    """
    info = mod_download(module, version, env, log)
    upstream = parse_gomod(Path(info["GoMod"]).read_text())
    text, _ = work_gomod(name, module, version, upstream, local_version or version)
    wdir = Path(cache) / f"{name}-{version}"
    fsutil.write_if_changed(wdir / "go.mod", text)
    if not (wdir / "go.sum").exists():
        fsutil.write_bytes(wdir / "go.sum", b"")
    return wdir, info, upstream


# ---------------------------------------------------------------- the build

class Plan:
    """Everything one Go build of a tree needs (made by the module and checkout sources)."""

    def __init__(self, *, version, root, cwd, pkg, env, ldflags, constants, pause_c, epoch,
                 extras_env, cache, base=None, source=None, jobs=2):
        self.version, self.root, self.cwd, self.pkg, self.env = version, Path(root), Path(cwd), pkg, env
        self.ldflags, self.constants, self.pause_c, self.epoch = ldflags, constants, Path(pause_c), epoch
        self.extras_env, self.cache, self.base, self.source, self.jobs = extras_env, Path(cache), base, source, jobs

    @property
    def work(self):
        return self.root / ".work"

    @property
    def bin(self):
        return self.work / "bin"

    @property
    def log(self):
        return self.root / "logs" / "go-build.log"


def build_binaries(plan, targets=TARGETS):
    """go build each of ``targets`` into ``plan.bin`` (side effect); return {name: path}."""
    flags = go_flags(plan.ldflags, plan.jobs)
    out = {}
    for name in targets:
        dst = plan.bin / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if name == "e2e.test":
            argv = ["go", "test", "-c", *flags, "-o", dst, plan.pkg("test/e2e")]
        elif name == "ginkgo":
            argv = ["go", "build", "-p", str(plan.jobs), "-trimpath", "-ldflags", "-s -w",
                    "-o", dst, "github.com/onsi/ginkgo/v2/ginkgo"]
        else:
            argv = ["go", "build", *flags, "-o", dst, plan.pkg(f"cmd/{name}")]
        run_go(argv, cwd=plan.cwd, env=plan.env, log=plan.log, what=f"building {name}")
        out[name] = dst
    return out


def _crictl_version(minor, env, log):
    """cri-tools v1.<minor>.0, or the newest earlier minor the proxy serves (v1.35.0 is not served)."""
    for m in range(minor, minor - 3, -1):
        try:
            mod_download("sigs.k8s.io/cri-tools", f"v1.{m}.0", env, log)
            return f"v1.{m}.0"
        except InputError:
            continue
    raise InputError(f"no cri-tools release v1.{minor - 2}.0 ... v1.{minor}.0 is served by the Go module proxy",
                     hint="check GOPROXY")


def build_extras(plan, minor, images):
    """etcd, coredns and crictl from their modules, pause from pause.c, into ``plan.bin``; return versions."""
    versions = {"etcd": images["etcd"]["version"], "coredns": images["coredns"]["version"],
                "pause": images["pause"]["version"],
                "crictl": _crictl_version(minor, plan.extras_env, plan.log)}
    for name, (module, package, version_var) in EXTRA_MODULES.items():
        version = versions[name]
        wdir, _, upstream = work_module(plan.cache, name, module, version, plan.extras_env, plan.log)
        env = {**plan.extras_env, "GOFLAGS": "-mod=mod -buildvcs=false"}
        check_go(upstream["go"] or "1.0", f"{module} {version}", env)
        ldflags = "-s -w" + (f" -X {version_var}={version.removeprefix('v')}" if version_var else "")
        run_go(["go", "build", "-p", str(plan.jobs), "-trimpath", "-ldflags", ldflags,
                "-o", plan.bin / name, package], cwd=wdir, env=env, log=plan.log, what=f"building {name} {version}")
    _build_pause(plan, versions["pause"])
    return versions


def _build_pause(plan, version):
    if not plan.pause_c.is_file():
        raise InputError(f"{plan.pause_c} is missing (Kubernetes' pause source)",
                         hint="the Kubernetes source is incomplete")
    inputs = {"source": fsutil.sha256_file(plan.pause_c), "version": version, "recipe": RECIPE}
    stamp, out = plan.work / "pause.json", plan.bin / "pause"
    if out.is_file() and _read_stamp(stamp) == inputs:
        return
    for tool in ("gcc", "strip"):
        if not shutil.which(tool):
            raise DindindError(f"{tool} is not installed (it builds the pause image from pause.c)",
                               hint="apt-get install gcc libc6-dev binutils")
    with fsutil.atomic_path(out) as tmp:
        run_go(["gcc", "-Os", "-Wall", "-Werror", "-static", f"-DVERSION=v{version}-dindind",
                "-o", tmp, plan.pause_c], cwd=plan.work, env=None, log=plan.log, what="building pause")
        run_go(["strip", tmp], cwd=plan.work, env=None, log=plan.log, what="stripping pause")
    fsutil.write_json(stamp, inputs)


def check_kubeadm_images(kubeadm, version, images, log):
    """Check the derived extra image refs against ``kubeadm config images list`` of the built kubeadm."""
    out = run_go([kubeadm, "config", "images", "list", "--kubernetes-version", version],
                 cwd=Path(kubeadm).parent, env=None, log=log, what="kubeadm config images list")
    listed = {line.strip() for line in out.splitlines() if line.strip()}
    missing = sorted(i["ref"] for i in images.values() if i["ref"] not in listed)
    if missing:
        raise DindindError(f"kubeadm {version} asks for other images than its constants.go says: "
                           f"{', '.join(missing)} not in its list",
                           detail="\n".join(f"  {x}" for x in sorted(listed)),
                           hint="report this: dindind's reading of constants.go needs updating")


def _read_stamp(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- images

def _image_specs(plan, images):
    """name -> (refs, {in-image path: (binary, mode)}, entrypoint) for the images written without an engine."""
    specs = {}
    for name in COMPONENT_IMAGES:
        if name != "kube-proxy":
            specs[name] = (component_refs(name, plan.version),
                           {f"/usr/local/bin/{name}": (plan.bin / name, 0o755)}, None)
    specs["etcd"] = ([images["etcd"]["ref"]], {"/usr/local/bin/etcd": (plan.bin / "etcd", 0o755)}, None)
    specs["coredns"] = ([images["coredns"]["ref"]], {"/coredns": (plan.bin / "coredns", 0o755)}, ["/coredns"])
    specs["pause"] = ([images["pause"]["ref"]], {"/pause": (plan.bin / "pause", 0o755)}, ["/pause"])
    return specs


def build_images(plan, images):
    """Every image archive into ``plan.work/images``, each rebuilt only when its inputs changed; return paths."""
    from dindind.docker import archive

    out = {}
    for name, (refs, files, entrypoint) in _image_specs(plan, images).items():
        inputs = {"refs": refs, "epoch": plan.epoch, "entrypoint": entrypoint, "recipe": RECIPE,
                  "files": {k: [fsutil.sha256_file(src), mode] for k, (src, mode) in files.items()}}
        out[name] = _if_changed(plan, name, inputs, lambda tar, r=refs, f=files, e=entrypoint:
                                archive.write_image_from_files(tar, r, f, epoch=plan.epoch, entrypoint=e))
    out["kube-proxy"] = _kube_proxy(plan)
    return out


def _if_changed(plan, name, inputs, make):
    tar, stamp = plan.work / "images" / f"{name}.tar", plan.work / "images" / f"{name}.json"
    if not (tar.is_file() and _read_stamp(stamp) == inputs):
        make(tar)
        fsutil.write_json(stamp, inputs)
    return tar


KUBE_PROXY_DOCKERFILE = """\
FROM {base}
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {packages} \\
 && rm -rf /var/lib/apt/lists/*
COPY kube-proxy /usr/local/bin/kube-proxy
"""


def _kube_proxy(plan):
    """kube-proxy: the base image + iptables, nftables, conntrack from Debian, built by the engine."""
    if plan.base is None:
        raise DindindError("no base image for kube-proxy", hint="run `doit build:base` first")
    binary = plan.bin / "kube-proxy"
    refs = component_refs("kube-proxy", plan.version)
    inputs = {"refs": refs, "base": plan.base["id"], "packages": list(KUBE_PROXY_PACKAGES), "recipe": RECIPE,
              "binary": fsutil.sha256_file(binary)}

    def make(tar):
        from dindind.docker import images as engine_images

        ctx = fsutil.DeterministicTar(plan.epoch)
        ctx.add_bytes("Dockerfile", KUBE_PROXY_DOCKERFILE.format(
            base=plan.base["id"], packages=" ".join(KUBE_PROXY_PACKAGES)))
        ctx.add_file("kube-proxy", binary, 0o755)
        ctx_tar = ctx.write_to(plan.work / "kube-proxy-context.tar")
        engine_images.build(ctx_tar, refs, log_path=plan.root / "logs" / "kube-proxy-image.log",
                            echo=lambda line: None)
        engine_images.save_refs(refs, tar)
        ctx_tar.unlink(missing_ok=True)
    return _if_changed(plan, "kube-proxy", inputs, make)


# ---------------------------------------------------------------- publish and record

def tree_files(plan, image_tars, with_extras=True):
    """{path relative to the root: (source path or bytes, mode)} of the published tree (pure)."""
    sbin, tbin = "kubernetes/server/bin", "kubernetes/test/bin"
    files = {"kubernetes/version": (f"{plan.version}\n".encode(), 0o644)}
    for name in SERVER_BINARIES:
        files[f"{sbin}/{name}"] = (plan.bin / name, 0o755)
    for name in COMPONENT_IMAGES:
        files[f"{sbin}/{name}.tar"] = (image_tars[name], 0o644)
        files[f"{sbin}/{name}.docker_tag"] = (f"{docker_tag(plan.version)}\n".encode(), 0o644)
    for name in TEST_BINARIES:
        files[f"{tbin}/{name}"] = (plan.bin / name, 0o755)
    if with_extras:
        files[f"{sbin}/crictl"] = (plan.bin / "crictl", 0o755)
        for name in EXTRA_IMAGES:
            files[f"kubernetes/extra-images/{name}.tar"] = (image_tars[name], 0o644)
    return files


def _same(dst, src, mode):
    try:
        st = dst.lstat()
        if dst.is_symlink() or (st.st_mode & 0o777) != mode:
            return False
        if isinstance(src, bytes):
            return st.st_size == len(src) and dst.read_bytes() == src
        return st.st_size == src.stat().st_size and fsutil.sha256_file(dst) == fsutil.sha256_file(src)
    except OSError:
        return False


def _place(dst, src, mode):
    if isinstance(src, bytes):
        fsutil.write_bytes(dst, src, mode)
    else:
        fsutil.copy_file(src, dst, mode)


def publish(root, files):
    """Put ``files`` into ``root`` (only ``kubernetes/``), replacing only those whose bytes or mode changed.

    The first time (no ``kubernetes/`` yet) the whole folder is assembled
    beside it and swapped in. Files of the tree not in ``files`` are removed.
    Returns the relative paths written.
    """
    root = Path(root)
    kube = root / "kubernetes"
    if not kube.is_dir():
        with fsutil.atomic_dir(kube) as tmp:
            os.chmod(tmp, 0o755)
            for rel, (src, mode) in files.items():
                _place(tmp / Path(rel).relative_to("kubernetes"), src, mode)
        return sorted(files)
    written = []
    for rel, (src, mode) in sorted(files.items()):
        dst = root / rel
        if not _same(dst, src, mode):
            _place(dst, src, mode)
            written.append(rel)
    for p in sorted(kube.rglob("*"), reverse=True):
        rel = p.relative_to(root).as_posix()
        if (p.is_file() or p.is_symlink()) and rel not in files:
            p.unlink()
    return written


def record(plan, binaries, versions, image_tars, extra):
    """Write ``<root>/go-build.json``: Go, every module of every binary, flags, images (only when it changes)."""
    bins, modules = {}, {}
    for name, path in sorted(binaries.items()):
        info = parse_version_m(run_go(["go", "version", "-m", path], cwd=plan.root, env=plan.env,
                                      log=plan.log, what=f"go version -m {name}"))
        for dep in info["deps"]:
            chosen = dep.get("replace") or dep
            modules[f"{chosen['path']}@{chosen['version']}"] = chosen["sum"]
        bins[name] = {"go": info["go"], "path": info["path"], "main": info["main"],
                      "build": info["build"], "sha256": fsutil.sha256_file(path),
                      "modules": sorted(f"{(d.get('replace') or d)['path']}@{(d.get('replace') or d)['version']}"
                                        for d in info["deps"])}
    doc = {"version": plan.version, "source": plan.source, "recipe": RECIPE,
           "go": sorted({b["go"] for b in bins.values()}),
           "flags": {"kubernetes": go_flags(plan.ldflags, plan.jobs), "env": {
               k: v for k, v in plan.env.items() if k in ("CGO_ENABLED", "GOFLAGS", "GOTOOLCHAIN")}},
           "extras": versions, "binaries": bins, "modules": dict(sorted(modules.items())),
           "images": {n: fsutil.sha256_file(p) for n, p in sorted(image_tars.items())}, **extra}
    fsutil.write_if_changed(plan.root / "go-build.json", json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return doc


def build_tree(plan, minor):
    """All of the above for ``plan``: binaries, extras, images, publish, record. Returns the paths written."""
    images = kubeadm_images(plan.constants)
    plan.log.unlink(missing_ok=True)           # one run's log, not every run's
    binaries = build_binaries(plan)
    check_kubeadm_images(plan.bin / "kubeadm", plan.version, images, plan.log)
    versions = build_extras(plan, minor, images)
    tars = build_images(plan, images)
    written = publish(plan.root, tree_files(plan, tars))
    all_bins = {**binaries, **{n: plan.bin / n for n in ("etcd", "coredns", "crictl")}}
    record(plan, all_bins, versions, tars, {"images_refs": {n: i["ref"] for n, i in images.items()}})
    return written


def base_image(layout):
    """The base image's id and tag from ``build:base``'s stamp (kube-proxy is built on it)."""
    stamp = fsutil.read_json(layout.stamp("base"), "base image stamp", hint="run `doit build:base` first")
    return {"id": stamp["id"], "tags": stamp.get("tags", [])}


def root_for(layout, source, version):
    """``artifacts/kubernetes/<source>-<version>`` (pure)."""
    return layout.kubernetes / f"{source}-{docker_tag(version)}"


def extra_image_paths(root):
    """The extra images a Go-built tree carries (pure)."""
    return tuple(Path(root) / "kubernetes" / "extra-images" / f"{n}.tar" for n in EXTRA_IMAGES)


def task_targets(root):
    """Every file the build writes (doit targets) (pure)."""
    from dindind.build.sources import tree

    paths = tree.tree_paths(root)
    return list(paths.required()) + [paths.crictl] + list(extra_image_paths(root)) + [Path(root) / "go-build.json"]
