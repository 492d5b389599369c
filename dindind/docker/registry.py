"""Pushing to a registry, and asking it what it serves.

A push's digest is taken from the engine's report; :func:`registry_manifest_digest`
asks the registry itself (``HEAD /v2/<name>/manifests/<tag>``); where that
cannot be done from here, :func:`pull_by_digest` asks the engine to pull
exactly that manifest back.
"""

import collections
import http.client
import re
import urllib.parse

from dindind.base.errors import EngineError
from dindind.docker import engine, reference
from dindind.docker.images import inspect_image
from dindind.docker.reference import split_ref

MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
)


_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def push(ref, echo=print):
    """``docker push ref``; return the manifest digest the engine reports.

    Raises EngineError (with the last lines of the push's output) if the
    engine or the registry fails, or if no digest was reported.
    """
    repo, t = split_ref(ref)
    tail = collections.deque(maxlen=20)
    digest = None
    try:
        for event in engine.client().push(repo, tag=t, stream=True, decode=True):
            if "error" in event or "errorDetail" in event:
                msg = event.get("error") or (event.get("errorDetail") or {}).get("message", "")
                raise EngineError(f"docker push {ref} failed: {msg.strip()}", detail="\n".join(tail) or None,
                                  hint="check that the registry is up and reachable from the engine")
            aux = event.get("aux") or {}
            if isinstance(aux, dict) and aux.get("Digest"):
                digest = aux["Digest"]
            status = event.get("status")
            if status and not event.get("progressDetail"):
                line = f"{event['id']}: {status}" if event.get("id") else status
                tail.append(line)
                m = re.search(r"\bdigest: (sha256:[0-9a-f]{64})\b", status)   # "<tag>: digest: ... size: N"
                if m and not digest:
                    digest = m.group(1)
    except engine.sdk_errors() as exc:
        raise EngineError(f"docker push {ref} failed: {exc}", detail="\n".join(tail) or None,
                          hint="check that the registry is up and reachable from the engine") from None
    if not digest or not _DIGEST_RE.match(digest):
        raise EngineError(f"docker push {ref} reported no manifest digest", detail="\n".join(tail) or None)
    echo(f"  pushed {ref}@{digest}")
    return digest


def _registry_host(repo):
    """(registry host, repository name on it) of ``repo`` (see dindind.docker.reference)."""
    r = reference.parse(repo)
    return r.registry, r.remote


def _is_loopback(host):
    import ipaddress

    name = host[1:host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def registry_manifest_digest(ref, timeout=30):
    """The digest a registry serves for ``ref``: ``HEAD /v2/<name>/manifests/<tag>``.

    Plain HTTP for loopback registries (as dockerd allows), HTTPS otherwise.
    Returns None if the registry does not have the tag. Raises EngineError if
    the registry cannot be reached or answers otherwise; ``exc.status`` is
    the HTTP status (401/403: the registry wants credentials).
    """
    repo, t = split_ref(ref)
    host, name = _registry_host(repo)
    conn_cls = http.client.HTTPConnection if _is_loopback(host) else http.client.HTTPSConnection
    conn = conn_cls(host, timeout=timeout)
    path = f"/v2/{name}/manifests/{urllib.parse.quote(t, safe=':')}"
    try:
        conn.request("HEAD", path, headers={"Accept": ", ".join(MANIFEST_TYPES)})
        resp = conn.getresponse()
        resp.read()
        digest = resp.getheader("Docker-Content-Digest")
    except OSError as exc:
        err = EngineError(f"cannot reach the registry {host} to check {ref}: {exc.strerror or exc}",
                          hint="check that the registry is up")
        err.status = None
        raise err from None
    finally:
        conn.close()
    if resp.status == 404:
        return None
    if resp.status != 200 or not digest:
        err = EngineError(f"registry {host} answered HEAD {path} with HTTP {resp.status}"
                          + ("" if digest else " and no Docker-Content-Digest"))
        err.status = resp.status
        raise err
    return digest


def pull_by_digest(repo, digest):
    """``docker pull repo@digest`` (the engine asks the registry for exactly that manifest); return the image id."""
    try:
        engine.client().pull(repo, tag=digest)
    except engine.sdk_errors() as exc:
        raise EngineError(f"cannot pull {repo}@{digest} back from the registry: {exc}") from None
    return inspect_image(f"{repo}@{digest}")["Id"]
