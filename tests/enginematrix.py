#!/usr/bin/env python3
"""The engine matrix: dindind against newer Docker engines, each run in a container built here.

    .venv/bin/python tests/enginematrix.py smoke [26] [28]   # build, cluster:up, cluster:down on each engine
    .venv/bin/python tests/enginematrix.py release           # a release made on each engine loads on the next
    .venv/bin/python tests/enginematrix.py fixtures          # (re)make tests/fixtures/archives/
    .venv/bin/python tests/enginematrix.py clean             # remove the engine images

The host's own engine (Debian bookworm's docker.io 20.10) is the first
engine. The others are Debian's docker.io packages, each installed into an
**engine image** built on the host engine FROM the project's base image
(Debian trixie, ``doit build:base``), pinned by version and .deb sha256 like
the node's containerd and runc (ENGINES; forky's InRelease may be expired,
hence ``check-valid-until=no``, and apt prefers trixie's packages for
everything not pinned):

- ``26``: Debian trixie's docker.io and docker-cli 26.1.5 (trixie's containerd 1.7 and runc 1.1);
- ``28``: Debian forky's docker.io and docker-cli 28.5.2, with forky's containerd 2.1.9 and runc
  1.3.6 at the node's pins (config/default.yaml).

An :class:`Engine` runs ``dockerd`` in a container of that image with the
flags a cluster container gets on this host (``python -m dindind
run-flags``: ``--privileged`` where the host allows it, otherwise the
capability set), its data on a volume of its own, and its socket in a host
directory: ``DOCKER_HOST=unix://<dir>/docker.sock`` is that engine for every
client (dindind, doit, the docker CLI). The client of ``cluster:up`` also
runs in the engine container's network namespace (``nsenter --net``), so the
API port the cluster publishes on 127.0.0.1 is the client's 127.0.0.1, as
it is for a user whose engine is local (or forwards published ports, like
Docker Desktop). Everything an Engine starts is removed when it stops, also
on failure: the engine's own containers first, then its container, volume
and socket directory. Engine images are tagged by the digest of their recipe
(``dindind-engine/docker:<key>-<digest>``) and reused while they exist, like
the base image; ``clean`` removes them.

tests/integration/test_engines.py runs the same functions under pytest
(marker ``engine``); this file is also a script for running them by hand.
"""

import argparse
import concurrent.futures
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _p in (str(ROOT), str(ROOT / "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from conftest import copy_project, doit, doit_exe, project_config  # noqa: E402
from dindind.base import config as config_mod, fsutil  # noqa: E402
from dindind.build import debs as debs_mod, images as build_images  # noqa: E402
from dindind.cluster import host as cluster_host  # noqa: E402
from dindind.docker import containers  # noqa: E402

LABEL = "io.dindind.engine-matrix"        # on every engine container and volume the matrix starts
PID_LABEL = LABEL + ".pid"                # the process that started it: a killed run's leftovers are swept
ENGINE_REPO = "dindind-engine/docker"
HOST = "20.10"                           # the host's engine, always the first engine of the matrix
FIXTURES = ROOT / "tests" / "fixtures" / "archives"
START_WAIT = 90                          # seconds an engine may take to answer


@dataclass(frozen=True)
class Deb:
    """One pinned Debian package: installed from its suite at exactly this version and .deb sha256."""

    name: str
    version: str
    sha256: str

    @property
    def file(self):
        return f"{self.name}_{self.version.replace(':', '%3a')}_{debs_mod.ARCH}.deb"


@dataclass(frozen=True)
class EngineSpec:
    key: str            # "26", "28": what tests and the CLI call it
    what: str           # for people
    suite: str | None   # an extra Debian suite the pinned packages come from (None: the base suite)
    debs: tuple         # the pinned packages (docker.io first)
    server: str         # the version `docker version` must report (a prefix)
    flags: tuple = ()   # `docker run` flags this engine's container needs besides the cluster container's


def _node_runtime_debs():
    """forky's containerd and runc exactly as the node pins them (config/default.yaml), not a second copy."""
    n = config_mod.load(config_mod.DEFAULT_CONFIG).node
    return tuple(Deb(name, n[f"{name}_version"], n[f"{name}_sha256"]) for name in ("containerd", "runc"))


ENGINES = {
    "26": EngineSpec("26", "Debian trixie's docker.io", None, (
        Deb("docker.io", "26.1.5+dfsg1-9+deb13u1+b1", "53ae1a99f15113f0a0d2226808ec0d24ee31b3b87b87ab8ec35be09a1a2ee13b"),
        Deb("docker-cli", "26.1.5+dfsg1-9+deb13u1+b1", "596647bc4ffaaaf2e2321116b8a10f6a6086ada797c17a7117798cb391a72776"),
    ), "26.1.5"),
    "28": EngineSpec("28", "Debian forky's docker.io", "forky", (
        Deb("docker.io", "28.5.2+dfsg4-5", "69a59cc77a1fb8ee9ad6859abc2e6de5d76b70887405595c2b1307818fecf682"),
        Deb("docker-cli", "28.5.2+dfsg4-5", "8ea2428acdda666f41263f5a0d3a85681a696491361574eb7bd721a1194939b9"),
        Deb("tini-static", "0.19.0-6+b2", "89628212b143d90a965b15d5dc47bc593da3b45cf98eda7a81b10c7b953fb07f"),
    ) + _node_runtime_debs(), "28.5.2",
        # dockerd 28 fails every container start on the default bridge unless it can write /proc/sys
        # ("failed to disable IPv6 on container's interface eth0"); DOCKER_ALLOW_IPV6_ON_IPV4_INTERFACE=1,
        # which is enough for 26, no longer helps
        ("--security-opt=systempaths=unconfined",)),
}
# what the engine image has besides the pinned packages, all from the base suite (docker.io's dependencies
# first, so that apt takes them from there; systemd-standalone-sysusers answers forky's "systemd | ...";
# forky's docker.io needs tini-static, which trixie lacks: it is pinned with the engine)
ENGINE_PACKAGES = ("ca-certificates", "iptables", "iproute2", "procps", "xz-utils",
                   "systemd-standalone-sysusers")

ENTRYPOINT = """\
#!/bin/sh
# dockerd of the engine matrix (tests/enginematrix.py): its socket in the directory the host shares
# (/engine), its data on the /var/lib/docker volume. DINDIND_CONTAINERD_STORE=1: the containerd image store.
set -e
if [ "${DINDIND_CONTAINERD_STORE:-0}" = 1 ]; then
  mkdir -p /etc/docker
  echo '{"features": {"containerd-snapshotter": true}}' > /etc/docker/daemon.json
fi
exec dockerd --host=unix:///engine/docker.sock "$@"
"""


def dockerfile(spec, base_ref, mirror):
    """The engine image's recipe: the pinned .debs fetched with apt, checked by sha256, installed."""
    lines = [
        "# An engine of dindind's engine matrix (tests/enginematrix.py). Rendered, not edited.",
        f"FROM {base_ref}",
        # dockerd >= 26 disables IPv6 on each container's eth0 through /proc/sys, read-only without --privileged
        "ENV DEBIAN_FRONTEND=noninteractive DOCKER_ALLOW_IPV6_ON_IPV4_INTERFACE=1",
        "RUN apt-get update -qq \\",
        f" && apt-get install -y -qq --no-install-recommends {' '.join(ENGINE_PACKAGES)} \\",
    ]
    if spec.suite:
        lines += [
            f" && echo 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg check-valid-until=no] "
            f"{mirror} {spec.suite} main' > /etc/apt/sources.list.d/dindind-engine.list \\",
            f" && printf 'Package: *\\nPin: release n={spec.suite}\\nPin-Priority: 100\\n' "
            "> /etc/apt/preferences.d/dindind-engine \\",
            " && apt-get update -qq \\",
        ]
    sums = " ".join(f"{d.sha256} {d.file}" for d in spec.debs)
    lines += [
        " && mkdir /tmp/engine && cd /tmp/engine \\",
        f" && apt-get download -qq {' '.join(f'{d.name}={d.version}' for d in spec.debs)} \\",
        f" && printf '%s  %s\\n' {sums} | sha256sum -c --strict \\",
        f" && apt-get install -y -qq --no-install-recommends {' '.join('./' + d.file for d in spec.debs)} \\",
        " && cd / && rm -rf /tmp/engine /etc/apt/sources.list.d/dindind-engine.list "
        "/etc/apt/preferences.d/dindind-engine \\",
        " && apt-get clean && rm -rf /var/lib/apt/lists/* /var/log/apt/* /var/log/dpkg.log \\",
        " && dockerd --version && docker --version",
        "COPY engine-entrypoint /usr/local/bin/engine-entrypoint",
        "VOLUME /var/lib/docker",
        # docker.io's own init (tini: trixie's tini package, forky's tini-static) as PID 1
        'ENTRYPOINT ["/usr/bin/docker-init", "--", "/usr/local/bin/engine-entrypoint"]',
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ small helpers

def run(argv, *, env=None, check=True, input=None, timeout=1800, cwd=None):
    """A subprocess (text), output captured; a failure is an AssertionError with the command and its output."""
    full = dict(os.environ)
    full.update(env or {})
    p = subprocess.run([str(a) for a in argv], env=full, text=True, input=input, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=timeout, cwd=cwd)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} failed ({p.returncode}):\n{p.stdout[-4000:]}")
    return p


def host_docker(*args, check=True, timeout=600):
    return run(["docker", *args], env={"DOCKER_HOST": ""}, check=check, timeout=timeout)


def sample_config():
    return config_mod.load(config_mod.DEFAULT_CONFIG)


def base_ref():
    """The project's base image (the sample config's): the FROM of every engine image."""
    return build_images.base_ref(sample_config())


def ensure_base(workdir, log=print):
    """The base image in the host engine (``doit build:base`` in a project copy if it is missing); its ref."""
    ref = base_ref()
    if host_docker("image", "inspect", ref, check=False).returncode != 0:
        log(f"  building the base image {ref}")
        project = copy_project(Path(workdir) / "base-project")
        cfg = project / "base.yaml"
        cfg.write_text(project_config("dindind-engine/unused-node", "dindind-engine/unused-cluster"))
        doit(project, f"config={cfg}", "build:base", env={"DOCKER_HOST": ""})
    return ref


def engine_image(spec, log=print):
    """Build (or reuse) the engine image of ``spec`` on the host engine; return its ref."""
    cfg = sample_config()
    base = base_ref()
    base_id = host_docker("image", "inspect", "-f", "{{.Id}}", base).stdout.strip()
    recipe = dockerfile(spec, base, cfg.base["mirror"])
    digest = fsutil.digest_json({"recipe": recipe, "entrypoint": ENTRYPOINT, "base": base_id})[:12]
    ref = f"{ENGINE_REPO}:{spec.key}-{digest}"
    if host_docker("image", "inspect", ref, check=False).returncode == 0:
        log(f"  reusing {ref}")
        return ref
    log(f"  building {ref} ({spec.what} {spec.server})")
    ctx = fsutil.DeterministicTar(cfg.source_date_epoch)
    ctx.add_bytes("Dockerfile", recipe)
    ctx.add_bytes("engine-entrypoint", ENTRYPOINT, mode=0o755)
    buf = io.BytesIO()
    ctx.write(buf)
    t = time.monotonic()
    # the docker CLI (the classic builder, context on stdin): several engine images build at once
    p = subprocess.run(["docker", "build", "-q", "--label", f"{LABEL}={spec.key}", "-t", ref, "-"], input=buf.getvalue(),
                       env={**os.environ, "DOCKER_HOST": "", "DOCKER_BUILDKIT": "0"}, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=1800)
    if p.returncode != 0:
        raise AssertionError(f"building the engine image {ref} ({spec.what} {spec.server}) failed:\n"
                             f"{p.stdout.decode(errors='replace')[-4000:]}\n(the pins are ENGINES in "
                             "tests/enginematrix.py: a version the mirror no longer serves needs new pins)")
    log(f"  built {ref} in {time.monotonic() - t:.1f}s")
    return ref


def remove_engine_images():
    out = host_docker("images", "-q", "--filter", f"reference={ENGINE_REPO}", check=False).stdout.split()
    for image in dict.fromkeys(out):
        host_docker("rmi", "-f", image, check=False)
    return len(set(out))


# ------------------------------------------------------------------ an engine in a container

class Engine:
    """A Docker engine: the host's (``spec`` None) or a dockerd in a container of an engine image.

    Use as a context manager; ``env`` is what a client needs to reach it.
    """

    def __init__(self, spec=None, image=None, *, containerd_store=False):
        self.spec, self.image, self.containerd_store = spec, image, containerd_store
        self.key = HOST if spec is None else spec.key + ("-containerd" if containerd_store else "")
        self.name = f"dindind-engine-{self.key}-{os.getpid()}"
        self.volume = f"{self.name}-data"
        self.sockdir = None
        self.pid = None

    @property
    def contained(self):
        """False for the host's engine (there already), True for one this object starts in a container."""
        return self.spec is not None

    @property
    def env(self):
        return {"DOCKER_HOST": f"unix://{self.sockdir}/docker.sock" if self.contained else ""}

    def docker(self, *args, check=True, timeout=600, input=None):
        return run(["docker", *args], env=self.env, check=check, timeout=timeout, input=input)

    def __enter__(self):
        if self.contained:
            try:
                self.start()
            except BaseException:
                self.stop()
                raise
        return self

    def __exit__(self, *exc):
        if self.contained:
            self.stop()

    def start(self):
        privilege = containers.privilege_opts(self.image)
        self.sockdir = tempfile.mkdtemp(prefix="dindind-engine-")    # short: a socket path has 107 bytes at most
        host_docker("volume", "create", "--label", f"{LABEL}={self.key}", "--label", f"{PID_LABEL}={os.getpid()}",
                    self.volume)
        args = ["run", "-d", "--name", self.name, "--hostname", self.name, "--label", f"{LABEL}={self.key}",
                "--label", f"{PID_LABEL}={os.getpid()}",
                *cluster_host.run_flags(privilege), *self.spec.flags, "-v", f"{self.volume}:/var/lib/docker",
                "-v", f"{self.sockdir}:/engine",
                "-e", f"DINDIND_CONTAINERD_STORE={int(self.containerd_store)}", self.image]
        host_docker(*args)
        deadline = time.monotonic() + START_WAIT
        running = "true"
        while True:
            version = self.docker("version", "-f", "{{.Server.Version}}", check=False, timeout=30)
            if version.returncode == 0 or time.monotonic() > deadline:
                break
            running = host_docker("inspect", "-f", "{{.State.Running}}", self.name, check=False).stdout.strip()
            if running != "true":
                break
            time.sleep(0.5)
        if version.returncode != 0:
            logs = host_docker("logs", "--tail", "30", self.name, check=False).stdout
            what = "exited" if running != "true" else f"did not answer within {START_WAIT}s"
            raise AssertionError(f"the engine {self.key} ({self.spec.what}, {self.image}) {what}; "
                                 f"its last lines:\n{logs}")
        if not version.stdout.strip().startswith(self.spec.server):
            raise AssertionError(f"{self.image} runs dockerd {version.stdout.strip()}, expected {self.spec.server}")
        self.pid = int(host_docker("inspect", "-f", "{{.State.Pid}}", self.name).stdout.strip())

    def stop(self):
        """Remove what this engine holds, then its container, volume and socket directory (best effort, all)."""
        if self.sockdir and os.path.exists(f"{self.sockdir}/docker.sock"):
            ids = self.docker("ps", "-aq", check=False, timeout=60).stdout.split()
            if ids:
                self.docker("rm", "-f", "-v", *ids, check=False, timeout=300)
            host_docker("stop", "-t", "30", self.name, check=False, timeout=120)
        host_docker("rm", "-f", "-v", self.name, check=False, timeout=300)
        host_docker("volume", "rm", "-f", self.volume, check=False)
        if self.sockdir:
            shutil.rmtree(self.sockdir, ignore_errors=True)
            self.sockdir = None

    def server_version(self):
        return self.docker("version", "-f", "{{.Server.Version}}").stdout.strip()

    def info(self, fmt):
        return self.docker("info", "-f", fmt).stdout.strip()

    def client(self, argv):
        """``argv`` as a client of this engine: DOCKER_HOST, and its network namespace for a contained engine."""
        if self.contained:
            return ["nsenter", f"--target={self.pid}", "--net", "--", *argv]
        return list(argv)

    def load_from_host(self, ref):
        """``docker save`` of a host image, loaded into this engine (the base image: no debootstrap again)."""
        if not self.contained or self.docker("image", "inspect", ref, check=False).returncode == 0:
            return
        save = subprocess.Popen(["docker", "save", ref], stdout=subprocess.PIPE, env={**os.environ, "DOCKER_HOST": ""})
        try:
            load = subprocess.run(["docker", "load", "-q"], stdin=save.stdout, env={**os.environ, **self.env},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
        finally:
            save.stdout.close()
            save.wait()
        if save.returncode != 0 or load.returncode != 0:
            raise AssertionError(f"cannot copy {ref} into the {self.key} engine: {load.stdout[-2000:]}")

    def leftovers(self, label):
        """Containers, volumes and networks labelled ``label`` in this engine, as "kind name" lines."""
        out = []
        for kind, fmt in (("container", "{{.Names}}"), ("volume", "{{.Name}}"), ("network", "{{.Name}}")):
            cmd = ["ps", "-a"] if kind == "container" else [f"{kind}", "ls"]
            names = self.docker(*cmd, "--filter", f"label={label}", "--format", fmt).stdout.split()
            out += [f"{kind} {n}" for n in names]
        return out


@contextlib.contextmanager
def engines(keys, workdir, log=print):
    """{key: Engine} of the contained engines ``keys``, started; all stopped (and removed) at the end.

    Their images are built (or reused) in parallel on the host engine.
    """
    sweep(log)
    ensure_base(workdir, log)
    specs = [ENGINES[k] for k in keys]
    with concurrent.futures.ThreadPoolExecutor(max(1, len(specs))) as pool:
        refs = dict(zip(keys, pool.map(lambda s: engine_image(s, log), specs)))
    with contextlib.ExitStack() as stack:
        started = {}
        for s in specs:
            t = time.monotonic()
            started[s.key] = stack.enter_context(Engine(s, refs[s.key]))
            log(f"  engine {s.key} ({started[s.key].server_version()}) answers after {time.monotonic() - t:.1f}s")
        yield started


def sweep(log=print):
    """Remove the engine containers and volumes of matrix runs whose process is gone (killed runs)."""
    for kind, fmt in (("container", "{{.ID}} {{.Label \"%s\"}}" % PID_LABEL),
                      ("volume", "{{.Name}} {{.Label \"%s\"}}" % PID_LABEL)):
        cmd = ["ps", "-a"] if kind == "container" else ["volume", "ls"]
        for line in host_docker(*cmd, "--filter", f"label={PID_LABEL}", "--format", fmt, check=False).stdout.splitlines():
            name, _, pid = line.partition(" ")
            if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                log(f"  removing {kind} {name} of an engine-matrix run that is gone (pid {pid})")
                host_docker("rm", "-f", "-v", name, check=False) if kind == "container" else \
                    host_docker("volume", "rm", "-f", name, check=False)


def in_parallel(fn, items):
    """{item: fn(item) or the exception it raised}, all at once (threads: the work is in subprocesses)."""
    items = list(items)
    with concurrent.futures.ThreadPoolExecutor(max(1, len(items))) as pool:
        futures = {item: pool.submit(fn, item) for item in items}
    return {item: (f.exception() or f.result()) for item, f in futures.items()}


# ------------------------------------------------------------------ the smoke test

@dataclass
class Smoke:
    engine: Engine
    project: Path
    config: Path
    seconds: dict

    def doit(self, *args, **kw):
        return doit(self.project, f"config={self.config}", *args, env=self.engine.env, **kw)

    def stamp(self, name):
        return json.loads((self.project / "artifacts" / "images" / f"{name}.json").read_text())


def repos(key):
    """Repositories of the images built on engine ``key``: unique per engine and run, so that a release
    made on one engine can be loaded into another (the host's too) without retagging anything of theirs."""
    k = key.replace(".", "")
    return f"dindind-test/engine{k}-node-{os.getpid()}", f"dindind-test/engine{k}-cluster-{os.getpid()}"


def build(eng, workdir, log=print):
    """``doit build`` of the sample on engine ``eng`` (the base image copied in from the host); a Smoke."""
    seconds = {}
    project = copy_project(Path(workdir) / f"project-{eng.key}")
    cfg = project / "engine.yaml"
    cfg.write_text(project_config(*repos(eng.key)))
    t = time.monotonic()
    eng.load_from_host(base_ref())
    seconds["base copied in"] = time.monotonic() - t
    t = time.monotonic()
    s = Smoke(eng, project, cfg, seconds)
    s.doit("build", timeout=1800)
    seconds["doit build"] = time.monotonic() - t
    for name in ("node", "cluster"):
        ref = s.stamp(name)["tags"][0]
        if eng.docker("image", "inspect", ref, check=False).returncode != 0:
            raise AssertionError(f"the {name} image {ref} is not in the {eng.key} engine after doit build")
    log(f"  engine {eng.key}: doit build {seconds['doit build']:.1f}s")
    return s


def up_down(s, log=print):
    """``cluster:up`` (in the engine's network namespace), the cluster seen through the engine, ``cluster:down``."""
    eng = s.engine
    name = f"em{eng.key.replace('.', '')}"
    t = time.monotonic()
    up = run(eng.client([doit_exe(), f"config={s.config}", "cluster:up", "--name", name]),
             env=eng.env, cwd=s.project, timeout=900, check=False)
    s.seconds["cluster:up"] = time.monotonic() - t
    if up.returncode != 0:
        s.doit("cluster:down", "--name", name, check=False)
        raise AssertionError(f"cluster:up on the {eng.key} engine failed:\n{up.stdout[-5000:]}")
    found = {}
    try:
        found["up"] = up.stdout
        found["containers"] = eng.docker("ps", "--filter", f"label=io.dindind.cluster={name}",
                                         "--format", "{{.Names}}").stdout.split()
        found["nodes"] = eng.docker("exec", cluster_host.top_name(name), "docker", "ps", "--format",
                                    "{{.Names}}").stdout.split()
        kubeconfig = s.project / "artifacts" / "clusters" / name / "kubeconfig"
        found["kubeconfig_mode"] = oct(kubeconfig.stat().st_mode & 0o777)
        found["status"] = s.doit("cluster:status").stdout
    finally:
        t = time.monotonic()
        down = s.doit("cluster:down", "--name", name, check=False)
        s.seconds["cluster:down"] = time.monotonic() - t
    found["down"] = down.stdout + down.stderr
    found["down_code"] = down.returncode
    found["leftovers"] = eng.leftovers(f"io.dindind.cluster={name}")
    log(f"  engine {eng.key}: cluster:up {s.seconds['cluster:up']:.1f}s, "
        f"cluster:down {s.seconds['cluster:down']:.1f}s")
    return found


# ------------------------------------------------------------------ releases across engines

def release(s, version, out_dir, log=print):
    """``doit release`` of a Smoke's build on its own engine; the release directory."""
    t = time.monotonic()
    s.doit("release", "--version", version, "--dir", str(out_dir), timeout=1800)
    s.seconds[f"release {version}"] = time.monotonic() - t
    log(f"  engine {s.engine.key}: doit release {time.monotonic() - t:.1f}s")
    return Path(out_dir)


def verify_and_load(dest, eng, verifier=None, log=print):
    """``release:verify`` of ``dest`` with ``verifier``'s project (another checkout; the check needs no
    engine, so once per release is enough), then ``docker load`` of both image archives into ``eng``;
    returns {image: (the id the release recorded, {tag: the id the engine has under it})}."""
    if verifier is not None:
        verifier.doit("release:verify", "--dir", str(dest))
    manifest = json.loads((Path(dest) / "manifest.json").read_text())
    out = {}
    for name, rec in manifest["images"].items():
        t = time.monotonic()
        eng.docker("load", "-q", "-i", str(Path(dest) / rec["file"]), timeout=900)
        loaded = {tag: eng.docker("image", "inspect", "-f", "{{.Id}}", tag).stdout.strip() for tag in rec["repo_tags"]}
        out[name] = (rec["id"], loaded)
        log(f"  {name} loaded into engine {eng.key} in {time.monotonic() - t:.1f}s")
    return out


def unload(eng, loaded):
    """Remove the tags a verify_and_load put into ``eng`` (the image goes with its last tag)."""
    for _, tags in loaded.values():
        for tag in tags:
            eng.docker("rmi", tag, check=False)


# ------------------------------------------------------------------ archive fixtures

FIXTURE_FILES = {"hello.txt": b"hello from a dindind fixture\n", "world.txt": b"world\n"}
FIXTURE_REPO = "dindind-fixture/tiny"


def fixture_context(step):
    """The build context of the fixture's two images: ``one`` (FROM scratch, one file) and ``two`` (FROM one)."""
    ctx = fsutil.DeterministicTar(1700000000)
    if step == "one":
        ctx.add_bytes("Dockerfile", "FROM scratch\nCOPY hello.txt /hello.txt\nLABEL io.dindind.fixture=one\n")
        ctx.add_bytes("hello.txt", FIXTURE_FILES["hello.txt"])
    else:
        ctx.add_bytes("Dockerfile", f"FROM {FIXTURE_REPO}:one\nCOPY world.txt /world.txt\n"
                                    "LABEL io.dindind.fixture=two\n")
        ctx.add_bytes("world.txt", FIXTURE_FILES["world.txt"])
    buf = io.BytesIO()
    ctx.write(buf)
    return buf.getvalue()


def make_fixture(eng, out_path):
    """Build the two tiny images on ``eng`` (docker build, the classic builder), ``docker save`` both into
    ``out_path`` and write ``<out_path>.json``: what the engine itself says about them."""
    refs = [f"{FIXTURE_REPO}:one", f"{FIXTURE_REPO}:two"]
    try:
        for step in ("one", "two"):
            _build_stdin(eng, fixture_context(step), f"{FIXTURE_REPO}:{step}")
        eng.docker("save", "-o", str(out_path), *refs)
        os.chmod(out_path, 0o644)
        facts = {"engine": eng.key, "server_version": eng.server_version(),
                 "storage_driver": eng.info("{{.Driver}}"), "images": {}}
        for ref in refs:
            inspect = json.loads(eng.docker("image", "inspect", ref).stdout)[0]
            facts["images"][ref] = {"id": inspect["Id"], "layers": inspect["RootFS"]["Layers"],
                                    "labels": inspect["Config"]["Labels"]}
        Path(str(out_path) + ".json").write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n")
        return facts
    finally:
        eng.docker("rmi", *reversed(refs), check=False)


def _build_stdin(eng, context, ref):
    full = {**os.environ, **eng.env, "DOCKER_BUILDKIT": "0"}
    p = subprocess.run(["docker", "build", "-q", "-t", ref, "-"], input=context, env=full,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    if p.returncode != 0:
        raise AssertionError(f"docker build of {ref} on engine {eng.key} failed:\n{p.stdout.decode()[-3000:]}")


# ------------------------------------------------------------------ the command line

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sm = sub.add_parser("smoke", help="doit build, cluster:up, cluster:down on each engine")
    sm.add_argument("keys", nargs="*", default=list(ENGINES), choices=list(ENGINES))
    sub.add_parser("release", help="a release made on each engine verifies and loads on the next")
    fx = sub.add_parser("fixtures", help="remake the archive fixtures with every engine")
    fx.add_argument("--out", default=str(FIXTURES))
    sub.add_parser("clean", help="remove the engine images")
    args = ap.parse_args(argv)
    if args.cmd == "clean":
        print(f"removed {remove_engine_images()} engine image(s)")
        return 0
    work = Path(tempfile.mkdtemp(prefix="engine-matrix-"))
    t0 = time.monotonic()
    try:
        if args.cmd == "smoke":
            with engines(args.keys, work) as started:
                for key in args.keys:
                    s = build(started[key], work)
                    found = up_down(s)
                    print(f"engine {key}: nodes {found['nodes']}, down: {found['down'].strip().splitlines()[-1]}, "
                          f"left over: {found['leftovers'] or 'nothing'}")
                    print(f"  seconds: {json.dumps({k: round(v, 1) for k, v in s.seconds.items()})}")
        elif args.cmd == "release":
            cycle(work)
        elif args.cmd == "fixtures":
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            make_fixture(Engine(), out / "docker-20.10.tar")
            with engines(list(ENGINES), work) as started:
                for key, eng in started.items():
                    make_fixture(eng, out / f"docker-{key}.tar")
                with Engine(ENGINES["28"], started["28"].image, containerd_store=True) as cs:
                    make_fixture(cs, out / "docker-28-containerd.tar")
            for p in sorted(out.glob("*.tar")):
                print(f"{p}: {p.stat().st_size} bytes")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"total {time.monotonic() - t0:.1f}s")
    return 0


def cycle(work, log=print):
    """A release made on each engine (host 20.10, 26, 28) verifies and loads on the next (26, 28, 20.10).

    Raises AssertionError if a loaded tag is not the image the release recorded. The images built on the
    host for it are removed again (the contained engines go whole).
    """
    host = Engine()
    smokes = {}
    try:
        with engines(list(ENGINES), work, log) as started:
            order = [host, started["26"], started["28"]]
            for e in order:
                smokes[e.key] = build(e, work, log)
            for i, maker in enumerate(order):
                taker = order[(i + 1) % len(order)]
                dest = release(smokes[maker.key], f"em-{maker.key.replace('.', '')}", Path(work) / f"release-{maker.key}",
                               log)
                loaded = verify_and_load(dest, taker, smokes[taker.key], log=log)
                try:
                    for name, (want, got) in loaded.items():
                        if set(got.values()) != {want}:
                            raise AssertionError(f"the {name} image of the release made on {maker.key} loaded into "
                                                 f"{taker.key} as {got}, the release recorded {want}")
                        log(f"  release made on {maker.key} -> {taker.key}: {name} {want[:19]} loaded as recorded")
                finally:
                    unload(taker, loaded)
    finally:
        if HOST in smokes:
            for name in ("cluster", "node"):
                for ref in smokes[HOST].stamp(name)["tags"]:
                    host_docker("rmi", ref, check=False)


if __name__ == "__main__":
    sys.exit(main())
