"""Which engine answers: Docker or Podman's Docker-compatible API, rootful or rootless, from its replies.

The replies are trimmed to the fields read. Docker 20.10 and Podman 4.3.1 (rootful and rootless) were
recorded on Debian bookworm (``curl --unix-socket SOCK http://x/version`` and ``/info``); rootless Docker's
is what Docker documents for ``docker info`` under rootlesskit (its SecurityOptions). The engine tests
ask real Podman services (tests/integration/test_podman.py).
"""

import pytest

from dindind.base.errors import EngineError
from dindind.docker import engine

DOCKER_20_VERSION = {
    "Platform": {"Name": ""},
    "Components": [{"Name": "Engine", "Version": "20.10.24+dfsg1"}, {"Name": "containerd", "Version": "1.6.20~ds1"},
                   {"Name": "runc", "Version": "1.1.5+ds1"}, {"Name": "docker-init", "Version": "0.19.0"}],
    "Version": "20.10.24+dfsg1", "ApiVersion": "1.41",
}
DOCKER_20_INFO = {"SecurityOptions": ["name=seccomp,profile=default"], "ServerVersion": "20.10.24+dfsg1",
                  "CgroupVersion": "1", "CgroupDriver": "cgroupfs"}
DOCKER_ROOTLESS_VERSION = {"Platform": {"Name": "Docker Engine - Community"},
                           "Components": [{"Name": "Engine", "Version": "28.5.1"}], "Version": "28.5.1"}
DOCKER_ROOTLESS_INFO = {"SecurityOptions": ["name=seccomp,profile=builtin", "name=rootless", "name=cgroupns"],
                        "CgroupVersion": "2", "CgroupDriver": "systemd"}
PODMAN_VERSION = {
    "Platform": {"Name": "linux/amd64/debian-12"},
    "Components": [{"Name": "Podman Engine", "Version": "4.3.1"},
                   {"Name": "Conmon", "Version": "conmon version 2.1.6, commit: unknown"},
                   {"Name": "OCI Runtime (runc)", "Version": "runc version 1.1.5+ds1"}],
    "Version": "4.3.1", "ApiVersion": "1.41",
}
PODMAN_ROOTFUL_INFO = {"SecurityOptions": ["name=seccomp,profile=default"], "ServerVersion": "4.3.1",
                       "Rootless": False, "Driver": "overlay"}
# Podman 4.3.1 run by an unprivileged user: `Rootless: true`, but no name=rootless among the options
PODMAN_ROOTLESS_INFO = {"SecurityOptions": ["name=seccomp,profile=default"], "ServerVersion": "4.3.1",
                        "Rootless": True, "Driver": "vfs"}


@pytest.mark.parametrize("version, info, kind, text", [
    (DOCKER_20_VERSION, DOCKER_20_INFO, engine.Kind("docker", "20.10.24+dfsg1", False), "Docker 20.10.24+dfsg1"),
    (DOCKER_ROOTLESS_VERSION, DOCKER_ROOTLESS_INFO, engine.Kind("docker", "28.5.1", True), "rootless Docker 28.5.1"),
    (PODMAN_VERSION, PODMAN_ROOTFUL_INFO, engine.Kind("podman", "4.3.1", False), "Podman 4.3.1"),
    (PODMAN_VERSION, PODMAN_ROOTLESS_INFO, engine.Kind("podman", "4.3.1", True), "rootless Podman 4.3.1"),
    # newer Podman lists name=rootless too; either sign is enough
    (PODMAN_VERSION, {"SecurityOptions": ["name=seccomp,profile=default", "name=rootless"]},
     engine.Kind("podman", "4.3.1", True), "rootless Podman 4.3.1"),
    # a Podman whose component list is trimmed still names itself in the platform
    ({"Platform": {"Name": "linux/amd64/fedora-40"}, "Version": "5.2.0"}, {},
     engine.Kind("podman", "5.2.0", False), "Podman 5.2.0"),
    # an option merely mentioning rootless in a value is not the rootless flag
    (DOCKER_20_VERSION, {"SecurityOptions": ["name=seccomp,profile=/etc/rootless.json"]},
     engine.Kind("docker", "20.10.24+dfsg1", False), "Docker 20.10.24+dfsg1"),
    ({}, {}, engine.Kind("docker", "unknown", False), "Docker unknown"),
    (None, [], engine.Kind("docker", "unknown", False), "Docker unknown"),
])
def test_classify(version, info, kind, text):
    assert engine.classify(version, info) == kind
    assert str(kind) == text


@pytest.mark.parametrize("info, words", [
    (PODMAN_ROOTLESS_INFO, ["cluster:up needs a rootful engine; the one at ", " is rootless Podman 4.3.1 ("]),
    (PODMAN_ROOTFUL_INFO, ["cluster:up needs Docker; the engine at ", " is Podman 4.3.1 (", "drops the tag"]),
])
def test_an_engine_cluster_up_cannot_drive_is_refused_in_one_line_naming_it(monkeypatch, info, words):
    replies = {"/version": PODMAN_VERSION, "/info": info}
    monkeypatch.setattr(engine, "_get_json", replies.__getitem__)
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/user/1000/podman/podman.sock")
    with pytest.raises(EngineError) as err:
        engine.require_docker("cluster:up")
    message = err.value.message
    assert "\n" not in message and "unix:///run/user/1000/podman/podman.sock" in message
    assert all(w in message for w in words), message
    assert err.value.hint


def test_rootful_docker_is_driven(monkeypatch):
    replies = {"/version": DOCKER_20_VERSION, "/info": DOCKER_20_INFO}
    monkeypatch.setattr(engine, "_get_json", replies.__getitem__)
    assert engine.require_docker("cluster:up") == engine.Kind("docker", "20.10.24+dfsg1", False)
    replies.update({"/version": DOCKER_ROOTLESS_VERSION, "/info": DOCKER_ROOTLESS_INFO})
    with pytest.raises(EngineError, match="is rootless Docker 28.5.1"):
        engine.require_docker("cluster:up")
