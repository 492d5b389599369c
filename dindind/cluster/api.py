"""Talk to a cluster's API server with a kubeconfig's own credentials (stdlib only)."""

import base64
import calendar
import http.client
import json
import os
import re
import ssl
import tempfile
import time
import urllib.parse

import yaml

from dindind.base.errors import DindindError


def parse_kubeconfig(data):
    """(server, ca PEM, client cert PEM, client key PEM) of the current context."""
    try:
        kc = yaml.safe_load(data)
        ctx_name = kc["current-context"]
        ctx = next(c["context"] for c in kc["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in kc["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in kc["users"] if u["name"] == ctx["user"])
        return (cluster["server"], base64.b64decode(cluster["certificate-authority-data"]),
                base64.b64decode(user["client-certificate-data"]), base64.b64decode(user["client-key-data"]))
    except (yaml.YAMLError, KeyError, StopIteration, TypeError, ValueError) as exc:
        raise DindindError(f"cannot read the kubeconfig: {exc!r}") from None


def rewrite_server(data, server):
    """The kubeconfig with every cluster's server replaced by ``server``."""
    kc = yaml.safe_load(data)
    for c in kc.get("clusters", []):
        c["cluster"]["server"] = server
    return yaml.safe_dump(kc, sort_keys=False).encode()


def get(kubeconfig, path, server=None, timeout=5):
    """GET ``path`` from the API server; return (status, parsed JSON or text)."""
    return request(kubeconfig, "GET", path, server=server, timeout=timeout)


def request(kubeconfig, method, path, body=None, server=None, timeout=5):
    """``method path`` to the API server (``body``: JSON text); return (status, parsed JSON or text)."""
    srv, ca, cert, key = parse_kubeconfig(kubeconfig)
    url = urllib.parse.urlsplit(server or srv)
    with tempfile.TemporaryDirectory(prefix="dindind-kc-") as tmp:
        files = {}
        for name, blob in (("ca", ca), ("cert", cert), ("key", key)):
            p = os.path.join(tmp, name)
            fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            files[name] = p
        ctx = ssl.create_default_context(cafile=files["ca"])
        ctx.load_cert_chain(files["cert"], files["key"])
        ctx.check_hostname = True
        conn = http.client.HTTPSConnection(url.hostname, url.port or 443, context=ctx, timeout=timeout)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body.encode() if body is not None else None, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
    try:
        return resp.status, json.loads(body)
    except ValueError:
        return resp.status, body.decode(errors="replace")


LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
TIME_RE = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)")


def epoch(text):
    """Seconds since the epoch of an RFC 3339 time as the API and the engine write it (up to nanoseconds)."""
    m = TIME_RE.fullmatch(text or "")
    if not m:
        raise DindindError(f"not an RFC 3339 time: {text!r}")
    seconds = calendar.timegm(time.strptime(m[1], "%Y-%m-%dT%H:%M:%S")) + float(m[2] or 0)
    if m[3] != "Z":
        sign = 1 if m[3][0] == "+" else -1
        seconds -= sign * (int(m[3][1:3]) * 3600 + int(m[3][4:6]) * 60)
    return seconds


def _reported(item):
    """When the node's kubelet last reported its Ready condition (epoch seconds), or None."""
    for c in item.get("status", {}).get("conditions", []):
        if c.get("type") == "Ready" and c.get("lastHeartbeatTime"):
            return epoch(c["lastHeartbeatTime"])
    return None


def _renewed(kubeconfig, server, timeout):
    """{node name: epoch seconds its kubelet last renewed its Lease}; {} where the API serves no leases."""
    status, body = get(kubeconfig, LEASES, server, timeout=timeout)
    if status == 404:
        return {}
    if status != 200:
        raise DindindError(f"GET {LEASES} answered {status}: {str(body)[:200]}")
    return {i["metadata"]["name"]: epoch(i["spec"]["renewTime"]) for i in body.get("items", [])
            if (i.get("spec") or {}).get("renewTime")}


def node_readiness(kubeconfig, server=None, timeout=5, since=None):
    """{node name: True/False} from GET /api/v1/nodes.

    With ``since`` (epoch seconds on the nodes' clock), a node counts as
    Ready only if its kubelet has reported since then: its Lease renewed or
    its Ready condition's heartbeat. After a restart the API serves the
    Ready of before the stop until the node controller notices the silence
    (~40 s), so without this a restarted cluster looks Ready as soon as the
    API server answers, before any other kubelet runs.
    """
    status, body = get(kubeconfig, "/api/v1/nodes", server, timeout=timeout)
    if status != 200:
        raise DindindError(f"GET /api/v1/nodes answered {status}: {str(body)[:200]}")
    renewed = _renewed(kubeconfig, server, timeout) if since is not None else {}
    ready = {}
    for item in body.get("items", []):
        name = item["metadata"]["name"]
        conds = item.get("status", {}).get("conditions", [])
        ready[name] = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)
        if since is not None and ready[name]:
            # the API's times have whole seconds (heartbeats) or microseconds (leases): compare whole seconds
            last = max((t for t in (renewed.get(name), _reported(item)) if t is not None), default=None)
            ready[name] = last is not None and int(last) >= int(since)
    return ready


def put_object(kubeconfig, collection, name, body, server=None, timeout=10):
    """Create the object ``name`` (JSON text ``body``) in ``collection`` (e.g. /api/v1/namespaces/N/configmaps),
    or replace it when it exists; else one error naming the API's answer."""
    status, answer = request(kubeconfig, "POST", collection, body, server, timeout)
    if status == 409:
        status, answer = request(kubeconfig, "PUT", f"{collection}/{name}", body, server, timeout)
    if status not in (200, 201):
        message = answer.get("message") if isinstance(answer, dict) else str(answer)[:200]
        raise DindindError(f"the API server refused {collection}/{name} ({status}: {message})")
    return answer
