"""Talk to a cluster's API server with a kubeconfig's own credentials (stdlib only)."""

import base64
import http.client
import json
import os
import ssl
import tempfile
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
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
    try:
        return resp.status, json.loads(body)
    except ValueError:
        return resp.status, body.decode(errors="replace")


def node_readiness(kubeconfig, server=None, timeout=5):
    """{node name: True/False} from GET /api/v1/nodes."""
    status, body = get(kubeconfig, "/api/v1/nodes", server, timeout=timeout)
    if status != 200:
        raise DindindError(f"GET /api/v1/nodes answered {status}: {str(body)[:200]}")
    ready = {}
    for item in body.get("items", []):
        conds = item.get("status", {}).get("conditions", [])
        ready[item["metadata"]["name"]] = any(c.get("type") == "Ready" and c.get("status") == "True"
                                              for c in conds)
    return ready
