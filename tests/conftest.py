"""Shared fixtures. Integration tests (marker ``engine``) need a running Docker engine;
they run for real in CI (.ci/run starts one) and fail, not skip, without it."""

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
PROJECT_FILES = ("dodo.py", "pyproject.toml", "dindind", "templates", "config")


def copy_project(dest, source=ROOT):
    """A fresh checkout-like copy of the project (no artifacts, no venv); bench/ uses it too."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = Path(source) / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    (dest / "artifacts").mkdir(exist_ok=True)
    return dest


def doit(workdir, *args, env=None, timeout=1800, check=True):
    """Run ``doit ARGS`` in a project copy; return the CompletedProcess (text)."""
    full_env = dict(os.environ)
    full_env.pop("DINDIND_CONFIG", None)
    full_env.update(env or {})
    proc = subprocess.run([doit_exe(), *args], cwd=workdir, env=full_env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"doit {' '.join(args)} failed ({proc.returncode}):\n"
                             f"--- stdout\n{proc.stdout[-6000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def executed(output):
    """The doit tasks a run executed (lines '.  task')."""
    return [line[3:].strip() for line in output.splitlines() if line.startswith(".  ")]


@pytest.fixture
def project(tmp_path):
    return copy_project(tmp_path / "project")


# ------------------------------------------------------------------ the shared build

# per test session: two sessions on one engine (CI beside a developer's run) never retag each other's images
TEST_REPOS = {"node": f"dindind-test/node-{os.getpid()}", "cluster": f"dindind-test/cluster-{os.getpid()}"}


SAMPLE = "kubernetes:\n  source: sample\n  version: v1.31.2+sample\n"


def sample_unless(extra):
    """The sample source, unless ``extra`` says where Kubernetes comes from (the default builds a real one)."""
    return "" if "kubernetes:" in extra else SAMPLE


def config_text(extra=""):
    """A config for integration tests: the sample, test-only repositories (base is shared)."""
    return (sample_unless(extra) + f"node:\n  repository: {TEST_REPOS['node']}\n"
            f"cluster:\n  repository: {TEST_REPOS['cluster']}\n" + extra)


class Built:
    """A project copy with a complete build, shared by the integration tests. Read only."""

    def __init__(self, path, config):
        self.path = Path(path)
        self.config = Path(config)

    def stamp(self, name):
        import json

        return json.loads((self.path / "artifacts" / "images" / f"{name}.json").read_text())

    def doit(self, *args, **kw):
        return doit(self.path, f"config={self.config}", *args, **kw)


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """Build the images once per test run (cold on a fresh engine) and share them."""
    path = copy_project(tmp_path_factory.mktemp("built") / "project")
    cfg = path / "test.yaml"
    cfg.write_text(config_text())
    b = Built(path, cfg)
    b.cold_run = b.doit("build")
    yield b
    for ref in (b.stamp("node")["tags"][0], b.stamp("cluster")["tags"][0]):
        subprocess.run(["docker", "rmi", "-f", ref], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


REAL_VERSION = "v1.37.2"
REAL_REPOS = {"node": f"dindind-real/node-{os.getpid()}", "cluster": f"dindind-real/cluster-{os.getpid()}"}


@pytest.fixture(scope="session")
def real(tmp_path_factory):
    """A real Kubernetes (REAL_VERSION, built from Go modules), built once per test run and shared.

    Cold on a fresh machine this is the Go build (~20-25 min on 2 cores); with
    Go's caches warm, a few minutes.
    """
    path = copy_project(tmp_path_factory.mktemp("real") / "project")
    cfg = path / "real.yaml"
    cfg.write_text(f"kubernetes:\n  source: module\n  version: {REAL_VERSION}\n"
                   f"node:\n  repository: {REAL_REPOS['node']}\n"
                   f"cluster:\n  repository: {REAL_REPOS['cluster']}\n")
    b = Built(path, cfg)
    b.cold_run = b.doit("build", timeout=4800)
    yield b
    for ref in (b.stamp("node")["tags"][0], b.stamp("cluster")["tags"][0]):
        subprocess.run(["docker", "rmi", "-f", ref], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# ------------------------------------------------------------------ helpers for the build/fault integration tests

SKIP_MTIME = (".doit.db", ".lock")       # doit's dependency db and the run lock change on every run


def project_config(node_repo, cluster_repo, extra=""):
    """Config text for a project copy with its own node/cluster repositories (the base is shared)."""
    return sample_unless(extra) + f"node:\n  repository: {node_repo}\ncluster:\n  repository: {cluster_repo}\n" + extra


def artifact_mtimes(project):
    """{path relative to artifacts/: mtime_ns} of every file there but doit's db and the lock."""
    art = Path(project) / "artifacts"
    return {p.relative_to(art).as_posix(): p.stat().st_mtime_ns for p in sorted(art.rglob("*"))
            if p.is_file() and not p.name.startswith(SKIP_MTIME)}


def copy_sample_tree(built_project, dest):
    """A copy of a built project's generated sample tree (a ``dir`` source); returns ``dest``."""
    shutil.copytree(Path(built_project) / "artifacts" / "kubernetes" / "sample", dest, symlinks=True)
    return Path(dest)


def dir_source_yaml(tree_root):
    """The ``kubernetes:`` section for a ``dir`` source on a copy of the sample tree."""
    extras = sorted((Path(tree_root) / "kubernetes" / "extra-images").glob("*.tar"))
    return ("kubernetes:\n  source: dir\n"
            f"  path: {tree_root}\n"
            f"  extra_images: [{', '.join(str(p) for p in extras)}]\n")


def doit_exe():
    return shutil.which("doit") or str(Path(os.sys.executable).parent / "doit")


class Background:
    """``doit ARGS`` started in its own process group, output going to files (unbuffered)."""

    def __init__(self, workdir, *args, env=None, name="doit"):
        full_env = dict(os.environ)
        full_env.pop("DINDIND_CONFIG", None)
        full_env.update(env or {})
        full_env["PYTHONUNBUFFERED"] = "1"
        self.out_path = Path(workdir) / f".{name}.stdout"
        self.err_path = Path(workdir) / f".{name}.stderr"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            # SIGINT back to its default: a shell's background job inherits it ignored, and then Python
            # would never raise KeyboardInterrupt (a real Ctrl-C)
            self.proc = subprocess.Popen([doit_exe(), *args], cwd=workdir, env=full_env, stdout=out, stderr=err,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    @property
    def pid(self):
        return self.proc.pid

    @property
    def stdout(self):
        return self.out_path.read_text()

    @property
    def stderr(self):
        return self.err_path.read_text()

    def wait_for(self, needle, timeout=600):
        """Wait until stdout shows ``needle``; fail if the run ends or the time is up first."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.stdout:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"doit ended ({self.proc.returncode}) before printing {needle!r}:\n"
                                     f"{self.stdout[-3000:]}\n{self.stderr[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"no {needle!r} in doit's output within {timeout}s")

    def signal_group(self, sig):
        os.killpg(self.proc.pid, sig)

    def wait(self, timeout=1800):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal_group(9)
            self.proc.wait()
            raise

    def kill(self):
        if self.proc.poll() is None:
            try:
                self.signal_group(9)
            except ProcessLookupError:
                pass
            self.proc.wait()


def _docker(*args):
    return subprocess.run(["docker", *args], text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


class Janitor:
    """What an integration test created in the engine, removed when it ends.

    ``image(ref)``: a tag of ours (removed with ``docker rmi -f``, which only
    untags an image that has other tags). ``stamps(project)``: the node and
    cluster image ids of a project copy, noted now (call it after each build);
    an id is removed at the end only if no tag points at it any more, so
    shared images (another test's, the base) are never removed. Containers are
    removed with their volumes.
    """

    def __init__(self):
        self.refs, self.ids, self.containers = [], [], []

    def image(self, *refs):
        self.refs.extend(refs)

    def stamps(self, project, names=("node", "cluster")):
        import json

        for name in names:
            try:
                stamp = json.loads((Path(project) / "artifacts" / "images" / f"{name}.json").read_text())
            except (OSError, ValueError):
                continue
            self.ids.append(stamp["id"])
            self.refs.extend(stamp["tags"])

    def container(self, name):
        self.containers.append(name)

    def clean(self):
        for c in self.containers:
            _docker("rm", "-f", "-v", c)
        for ref in dict.fromkeys(self.refs):
            if not ref.startswith("dindind/"):      # never a shared image
                _docker("rmi", "-f", ref)
        for image in dict.fromkeys(self.ids):
            r = _docker("image", "inspect", "-f", "{{len .RepoTags}}", image)
            if r.returncode == 0 and r.stdout.strip() == "0":
                _docker("rmi", image)


@pytest.fixture
def janitor():
    j = Janitor()
    yield j
    j.clean()


@pytest.fixture
def http_server():
    """``serve(directory)`` -> base URL of a threaded HTTP server on 127.0.0.1 (ephemeral port)."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    servers = []

    def serve(directory):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
        t = threading.Thread(target=srv.serve_forever, daemon=True)
        t.start()
        servers.append((srv, t))
        return f"http://127.0.0.1:{srv.server_address[1]}"

    yield serve
    for srv, t in servers:
        srv.shutdown()
        srv.server_close()
        t.join(10)
