"""The engine matrix (tests/enginematrix.py): dindind on Docker 20.10 (the host's), 26 and 28.

The engines 26 (Debian trixie's docker.io) and 28 (Debian forky's) run each
in a container of an image built here from pinned Debian packages; every
client reaches them through DOCKER_HOST. Once per session: their images are
built (in parallel, or reused), both engines started, the sample built on
each (in parallel); then each test uses them. An engine that cannot be built
or started fails its tests with the reason: nothing is skipped. Everything
started is removed at the end of the session, also after a failure.
"""

import contextlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import enginematrix as em

pytestmark = pytest.mark.engine

KEYS = sorted(em.ENGINES)               # the contained engines: "26", "28"
ALL = [em.HOST, *KEYS]
# releases are made on the oldest engine (legacy `docker save` layout) and on 26 (the OCI layout 28 writes too),
# and each is loaded into both other engines: 20.10 -> 26, 28 and 26 -> 28, 20.10 (a third release, made on 28,
# would cost a CI run another minute or more for the same layout; `enginematrix.py release` runs all three)
MAKERS = [em.HOST, "26"]
HOPS = [(maker, taker) for maker in MAKERS for taker in ALL if taker != maker]


@dataclass
class Matrix:
    engines: dict                       # key -> Engine (the host's too)
    builds: dict                        # key -> Smoke, or the exception its build raised
    work: Path


def _log(line):
    print(line, flush=True)


@pytest.fixture(scope="session")
def matrix(built, tmp_path_factory):
    work = tmp_path_factory.mktemp("engines")
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        try:
            started = stack.enter_context(em.engines(KEYS, work, _log))
        except Exception as exc:        # an engine that cannot be built or started: every matrix test says why
            yield exc
            return
        builds = em.in_parallel(lambda key: em.build(started[key], work, _log), KEYS)
        host = em.Engine()
        builds[em.HOST] = em.Smoke(host, built.path, built.config, {})
        _log(f"  engine matrix ready in {time.monotonic() - t0:.1f}s")
        yield Matrix({em.HOST: host, **started}, builds, work)
        t0 = time.monotonic()
    _log(f"  engine matrix removed in {time.monotonic() - t0:.1f}s")


def _ready(matrix, key):
    if isinstance(matrix, Exception):
        raise AssertionError(f"the engine matrix could not start: {matrix}")
    build = matrix.builds[key]
    if isinstance(build, BaseException):
        raise AssertionError(f"doit build of the sample on engine {key} failed: {build}")
    return build


@pytest.mark.parametrize("key", KEYS)
def test_build_up_down_through_docker_host(matrix, key):
    s = _ready(matrix, key)
    eng = s.engine
    assert eng.server_version().startswith(em.ENGINES[key].server)
    assert eng.info("{{.Driver}}") == "overlay2"
    found = em.up_down(s, _log)
    name = f"em{key}"
    assert f"cluster {name} is up" in found["up"], found["up"][-3000:]
    # the cluster lives in that engine, not in the host's
    assert found["containers"] == [f"dindind-{name}"]
    host = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=io.dindind.cluster={name}"],
                          env={**os.environ, "DOCKER_HOST": ""}, text=True, stdout=subprocess.PIPE)
    assert host.returncode == 0 and host.stdout.strip() == ""
    assert sorted(found["nodes"]) == sorted([f"{name}-control-plane", f"{name}-worker", f"{name}-worker2"])
    assert found["kubeconfig_mode"] == "0o600"
    assert name in found["status"]
    assert found["down_code"] == 0 and f"removed cluster {name}" in found["down"], found["down"]
    assert found["leftovers"] == []


@pytest.fixture(scope="session")
def releases(matrix):
    """A release made on each of MAKERS (in parallel), each loaded into the other engines (in parallel)."""
    for key in ALL:
        _ready(matrix, key)
    smokes = {k: matrix.builds[k] for k in ALL}
    dests = em.in_parallel(lambda k: em.release(smokes[k], f"em-{k.replace('.', '')}-{os.getpid()}",
                                                matrix.work / f"release-{k}", _log), MAKERS)
    hops = HOPS

    def hop(pair):
        maker, taker = pair
        if isinstance(dests[maker], BaseException):
            return dests[maker]
        # release:verify needs no engine: run once per release, by the first other engine's project
        first = next(t for m, t in hops if m == maker)
        return em.verify_and_load(dests[maker], matrix.engines[taker], smokes[taker] if taker == first else None,
                                  log=_log)

    loaded = em.in_parallel(hop, hops)
    yield {pair: (dests[pair[0]], loaded[pair]) for pair in hops}
    for (_, taker), result in loaded.items():
        if not isinstance(result, BaseException):
            em.unload(matrix.engines[taker], result)
    for dest in dests.values():
        if not isinstance(dest, BaseException):
            shutil.rmtree(dest, ignore_errors=True)


@pytest.mark.parametrize("maker, taker", HOPS, ids=[f"{m}-to-{t}" for m, t in HOPS])
def test_a_release_made_on_one_engine_verifies_and_loads_on_another(releases, maker, taker):
    dest, loaded = releases[(maker, taker)]
    if isinstance(dest, BaseException):
        raise AssertionError(f"doit release on engine {maker} failed: {dest}")
    if isinstance(loaded, BaseException):
        raise AssertionError(f"the release made on {maker} did not verify or load on {taker}: {loaded}")
    manifest = json.loads((dest / "manifest.json").read_text())
    assert sorted(loaded) == ["cluster", "node"]
    for name, (want, got) in loaded.items():
        # every tag the release names is in the other engine, as exactly the image the release recorded
        assert set(got) == set(manifest["images"][name]["repo_tags"]) and got
        assert set(got.values()) == {want}, (name, want, got)


def test_the_cluster_image_runs_an_engine_and_sdk_the_host_side_agrees_with(built):
    """Inside the cluster image: dockerd is the 26 of this matrix (trixie's docker.io) and python3-docker
    is a 7.x, the major pyproject.toml asks the host side for (docker>=7,<8)."""
    image = built.stamp("cluster")["tags"][0]
    out = subprocess.run(["docker", "run", "--rm", "--entrypoint", "sh", image, "-c",
                          "dockerd --version && python3 -c 'import docker; print(docker.__version__)'"],
                         env={**os.environ, "DOCKER_HOST": ""}, text=True, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    assert out.returncode == 0, out.stdout
    dockerd, sdk = out.stdout.strip().splitlines()[-2:]
    assert dockerd.startswith(f"Docker version {em.ENGINES['26'].server}+"), dockerd
    pyproject = (em.ROOT / "pyproject.toml").read_text()
    m = re.search(r'"docker>=(\d+),<(\d+)"', pyproject)
    assert m, "pyproject.toml no longer pins the docker SDK as docker>=N,<M"
    low, high = int(m.group(1)), int(m.group(2))
    assert low <= int(sdk.split(".")[0]) < high, (sdk, m.group(0))
    assert sdk.split(".")[0] == importlib.metadata.version("docker").split(".")[0]
