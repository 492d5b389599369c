"""Shared fixtures. Integration tests (marker ``engine``) need a running Docker engine;
they run for real in CI (.ci/run starts one) and fail, not skip, without it."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
PROJECT_FILES = ("dodo.py", "pyproject.toml", "dindind", "templates", "config")


def copy_project(dest):
    """A fresh checkout-like copy of the project (no artifacts, no venv)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
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
    exe = shutil.which("doit") or str(Path(os.sys.executable).parent / "doit")
    proc = subprocess.run([exe, *args], cwd=workdir, env=full_env, text=True,
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

TEST_REPOS = {"node": "dindind-test/node", "cluster": "dindind-test/cluster"}


def config_text(extra=""):
    """A config for integration tests: the sample, test-only repositories (base is shared)."""
    return (f"node:\n  repository: {TEST_REPOS['node']}\n"
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
