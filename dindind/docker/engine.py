"""Connecting to the Docker engine, and starting one.

dindind.docker is the only code that talks to an engine; this module is its
connection: a raw-socket fast path for up-to-date checks (no SDK import, so
a no-op ``doit build`` stays quick), the SDK client for everything else, and
:func:`ensure` / :func:`start_dockerd` to get an engine running. Functions
raise :class:`EngineError` with a message a user can act on; an unreachable
engine is one line saying how to start one.
"""

import http.client
import json
import os
import re
import shutil
import socket
import time
import urllib.parse
from dataclasses import dataclass

from dindind.base import fsutil, proc
from dindind.base.errors import DindindError, EngineError

SOCKET = "/var/run/docker.sock"
START_HINT = ("start one: `python -m dindind engine` installs Debian's docker.io if missing "
              "and starts dockerd (as root); or `systemctl start docker`")
ENSURE_LOG = "/var/log/dindind-dockerd.log"


# ------------------------------------------------------------------ the fast path

def _socket_path():
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        return host[len("unix://"):]
    return SOCKET


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=5):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def _raw_get(path, timeout=5):
    """GET an engine API path without importing the SDK (for up-to-date checks)."""
    conn = _UnixConnection(_socket_path(), timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except OSError as exc:
        raise EngineError(f"cannot reach the Docker engine at unix://{_socket_path()}: {exc.strerror or exc}",
                          hint=START_HINT) from None
    finally:
        conn.close()


def ping():
    """True if an engine answers on the socket."""
    try:
        status, _ = _raw_get("/_ping", timeout=3)
    except EngineError:
        return False
    return status == 200


def image_id(ref):
    """The id of an image in the engine, or None if it is not there."""
    status, body = _raw_get("/images/" + urllib.parse.quote(ref, safe=":@/") + "/json")
    if status == 404:
        return None
    if status != 200:
        raise EngineError(f"cannot inspect image {ref}: HTTP {status} {body[:200]!r}")
    return json.loads(body)["Id"]


def stamp_uptodate(stamp_path):
    """doit ``uptodate`` check: the stamp exists and its image is still in the engine
    under every tag the stamp records (a removed or moved tag counts as gone)."""
    try:
        stamp = fsutil.read_json(stamp_path, "image stamp")
        return all(image_id(ref) == stamp["id"] for ref in [stamp["id"], *stamp["tags"]])
    except (KeyError, TypeError, DindindError):
        # engine unreachable: not known to be up to date; the action then fails with one clear line
        return False


# ------------------------------------------------------------------ which engine answers

ROOTLESS_WHY = "its containers cannot get the privileges the nodes' systemd, containerd and kubelet need"
ROOTFUL_HINT = ("use a rootful engine: unset DOCKER_HOST for the system's dockerd (/var/run/docker.sock), or "
                "`sudo python -m dindind engine` to start one")
PODMAN_WHY = ("dindind's tasks drive Docker's API, and Podman's differs where they rely on it: its image import "
              "drops the tag, its default rlimits can exceed what the host grants")
PODMAN_HINT = ("build with Docker, `podman load` the cluster image and run it with `podman run --privileged` "
               "(README: Engines); or use a rootful Docker")


@dataclass(frozen=True)
class Kind:
    """Which engine answers on the socket: ``name`` ("docker" or "podman"), ``version``, ``rootless``."""

    name: str
    version: str
    rootless: bool

    def __str__(self):
        return f"{'rootless ' if self.rootless else ''}{'Podman' if self.name == 'podman' else 'Docker'} {self.version}"


def classify(version, info):
    """The :class:`Kind` an engine's ``GET /version`` and ``GET /info`` replies (parsed JSON) describe.

    Podman's Docker-compatible API names itself in /version: a component
    "Podman Engine", and a Platform of the form ``os/arch/distribution-version``
    (Docker's is empty or its edition, "Docker Engine - Community"); a rootless engine,
    Docker or Podman, says ``name=rootless`` among /info's SecurityOptions
    (Podman also answers ``Rootless: true``). Pure; no I/O.
    """
    version = version if isinstance(version, dict) else {}
    info = info if isinstance(info, dict) else {}
    components = [c.get("Name", "") for c in version.get("Components") or [] if isinstance(c, dict)]
    platform = ((version.get("Platform") or {}).get("Name") or "") if isinstance(version.get("Platform"), dict) else ""
    podman = any("podman" in str(c).lower() for c in components) or bool(re.fullmatch(r"[a-z]+/[^/ ]+/\S+", platform))
    options = [o for o in info.get("SecurityOptions") or [] if isinstance(o, str)]
    rootless = info.get("Rootless") is True or any("name=rootless" in o.split(",") for o in options)
    return Kind("podman" if podman else "docker", str(version.get("Version") or "unknown"), rootless)


def _get_json(path):
    status, body = _raw_get(path)
    if status != 200:
        raise EngineError(f"the engine answered GET {path} with HTTP {status}", hint=START_HINT)
    try:
        return json.loads(body)
    except ValueError:
        raise EngineError(f"the engine answered GET {path} with something that is not JSON") from None


def kind():
    """The :class:`Kind` of the engine answering on the socket (two API calls, no SDK)."""
    return classify(_get_json("/version"), _get_json("/info"))


def require_docker(what):
    """EngineError, one line, unless a rootful Docker answers: ``what`` (e.g. "cluster:up") cannot run on a
    rootless engine, and dindind does not drive Podman's Docker API. Called before anything is created;
    returns the :class:`Kind`.
    """
    k = kind()
    where = f"unix://{_socket_path()}"
    if k.rootless:
        raise EngineError(f"{what} needs a rootful engine; the one at {where} is {k} ({ROOTLESS_WHY})",
                          hint=ROOTFUL_HINT)
    if k.name == "podman":
        raise EngineError(f"{what} needs Docker; the engine at {where} is {k} ({PODMAN_WHY})", hint=PODMAN_HINT)
    return k


# ------------------------------------------------------------------ the SDK

_CLIENT = None


def client():
    """A docker SDK APIClient, or EngineError with how to start an engine."""
    global _CLIENT
    if _CLIENT is None:
        import docker

        if not ping():
            raise EngineError(f"cannot reach the Docker engine at unix://{_socket_path()}", hint=START_HINT)
        try:
            _CLIENT = docker.APIClient(base_url=f"unix://{_socket_path()}", version="auto", timeout=600)
        except docker.errors.DockerException as exc:
            raise EngineError(f"cannot talk to the Docker engine: {exc}", hint=START_HINT) from None
    return _CLIENT


def sdk_errors():
    """The exceptions an SDK call raises (imported only when needed)."""
    import docker
    import requests

    return (docker.errors.DockerException, requests.exceptions.RequestException)


def call(what, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with any SDK failure as one EngineError: "failed to <what>: <why>"."""
    try:
        return fn(*args, **kwargs)
    except sdk_errors() as exc:
        raise EngineError(f"failed to {what}: {explain(exc)}") from None


def explain(exc):
    """The engine's own words for an SDK exception."""
    text = getattr(exc, "explanation", None) or str(exc)
    return text.decode() if isinstance(text, bytes) else str(text)


# ------------------------------------------------------------------ starting an engine

def start_dockerd(log_path, *, args=(), wait=60, detach=False):
    """Start ``dockerd`` in the background and wait until it answers; return the process.

    Side effects: a dockerd process, its output appended to ``log_path``.
    Raises EngineError with the log's tail if it exits or does not answer
    within ``wait`` seconds.
    """
    p = proc.spawn(["dockerd", *args], log_path, detach=detach)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if ping():
            return p
        if p.poll() is not None:
            break
        time.sleep(0.3)
    try:
        with open(log_path, "rb") as f:
            tail = f.read()[-2000:].decode(errors="replace")
    except OSError:
        tail = ""
    raise EngineError(f"dockerd did not answer within {wait}s", detail=tail.rstrip() or None,
                      hint=f"see {log_path}")


def ensure(log=print, wait=60):
    """Make sure an engine answers: install docker.io and start dockerd if needed.

    Side effects (as root only): ``apt-get install docker.io`` when no dockerd
    exists; ``dockerd`` started in the background (outliving this process),
    logging to ENSURE_LOG. Returns a line saying what it did.
    """
    if ping():
        return "the Docker engine answers"
    if os.geteuid() != 0:
        raise EngineError("no Docker engine answers and this is not root", hint=START_HINT)
    did = []
    if not shutil.which("dockerd"):
        log("installing Debian's docker.io ...")
        proc.run(["apt-get", "update", "-qq"])
        proc.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "docker.io"],
                 env={"DEBIAN_FRONTEND": "noninteractive"})
        did.append("installed docker.io")
    log("starting dockerd ...")
    start_dockerd(ENSURE_LOG, wait=wait, detach=True)
    did.append("started dockerd")
    return "; ".join(did)
