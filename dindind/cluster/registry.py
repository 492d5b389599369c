"""The cluster's local registry (the cluster config's ``registry:``), as plain values (pure).

One container ``<cluster>-registry`` of the node image runs Debian's
docker-registry (installed in the node image, not enabled there) on the
node network at a fixed address (dindind.cluster.plan.registry_ip), its
storage on the named volume ``<cluster>-registry``: no capabilities, a
read-only root, its own unprivileged user. Its port 5000 is published on
``listenAddress:hostPort`` (nested: on the cluster container's port
``hostPort``, which the host publishes; dindind.cluster.passthrough).

Every node's containerd reads ``/etc/containerd/certs.d/localhost:PORT/hosts.toml``
(config_path is set in the node image) and so pulls ``localhost:PORT/IMAGE``
from the registry's address over http: the name that works for ``docker
push`` on the host works in a pod spec too (kind's local-registry recipe).
The ConfigMap ``kube-public/local-registry-hosting`` says so to tools
(KEP-1755).
"""

import ipaddress
import json

from dindind.cluster.plan import CLUSTER_LABEL, ROLE_LABEL

ROLE = "registry"
PORT = 5000                          # docker-registry's own port (http.addr)
CONFIG = "/etc/dindind/registry.yml"  # in the node image (templates/node/files)
STORAGE = "/var/lib/docker-registry"  # the package's storage folder, owned by its user
USER = "docker-registry"             # the package's system user
HOSTS_DIR = "/etc/containerd/certs.d"
CONFIGMAP_NAMESPACE = "kube-public"
CONFIGMAP_NAME = "local-registry-hosting"
CONFIGMAP_KEY = "localRegistryHosting.v1"
# the node image's VOLUMEs (templates/node/Dockerfile.j2)
NODE_VOLUMES = ("/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs", "/var/lib/kubelet")
WAIT = 30                            # seconds for the registry to answer /v2/


def host(settings):
    """The name the host pushes to and pods pull by: ``localhost:PORT``."""
    return f"localhost:{settings.registry_port}"


def endpoint(plan):
    """``http://ADDRESS:5000``: the registry on the node network."""
    ip = plan.registry_ip
    return f"http://{f'[{ip}]' if ':' in ip else ip}:{PORT}"


def probe_script(plan):
    """A bash script (the nodes have no HTTP client) that succeeds when ``GET /v2/`` answers 200."""
    return (f"exec 3<>/dev/tcp/{plan.registry_ip}/{PORT} && printf 'GET /v2/ HTTP/1.0\\r\\n\\r\\n' >&3 "
            "&& head -n1 <&3 | grep -q ' 200 '")


def hosts_path(settings):
    return f"{HOSTS_DIR}/{host(settings)}/hosts.toml"


def hosts_toml(plan):
    """containerd's hosts.toml for ``localhost:PORT``: every pull and resolve goes to the registry, over http."""
    url = endpoint(plan)
    return (f"# written by dindind: {host(plan.settings)} is the cluster's local registry (registry: in the "
            f"cluster config)\nserver = \"{url}\"\n\n[host.\"{url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n")


def labels(plan):
    return {CLUSTER_LABEL: plan.name, ROLE_LABEL: ROLE}


def run_args(plan, publish_address):
    """containers.run_container keywords of the registry container. ``publish_address``: where this
    engine publishes ``hostPort`` (the listenAddress on the host; nested, all of the cluster container's)."""
    s = plan.settings
    return dict(
        labels=labels(plan), hostname=plan.registry_name, network=plan.network, ip=plan.registry_ip,
        entrypoint=["/usr/bin/docker-registry"], command=["serve", CONFIG], user=USER,
        volumes={plan.registry_name: STORAGE},
        # the node image's own VOLUMEs, not needed here: empty and read-only rather than anonymous volumes
        tmpfs={path: "ro,size=4k" for path in NODE_VOLUMES},
        ports={f"{PORT}/tcp": (publish_address, s.registry_port)},
        privilege={"cap_drop": ["ALL"], "security_opt": ["no-new-privileges"], "read_only": True},
        stop_signal="SIGTERM", stop_timeout=10,
    )


def configmap(plan):
    """The KEP-1755 ConfigMap kube-public/local-registry-hosting: where to push (``host``) and where pods
    reach the registry themselves (``hostFromClusterNetwork``)."""
    ip = plan.registry_ip
    inner = f"{f'[{ip}]' if ':' in ip else ip}:{PORT}"
    text = f'host: "{host(plan.settings)}"\nhostFromClusterNetwork: "{inner}"\n'
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": CONFIGMAP_NAME, "namespace": CONFIGMAP_NAMESPACE,
                         "labels": {CLUSTER_LABEL: plan.name}},
            "data": {CONFIGMAP_KEY: text}}


def configmap_json(plan):
    return json.dumps(configmap(plan), sort_keys=True)


def describe(settings):
    """The line cluster:up prints about the registry (none when there is none)."""
    if not settings.registry:
        return []
    ip = ipaddress.ip_address(settings.registry_address)
    address = f"[{ip}]" if ip.version == 6 else str(ip)
    push = host(settings) if ip.is_loopback or ip.is_unspecified else f"{address}:{settings.registry_port}"
    return [f"  registry {address}:{settings.registry_port}: docker push {push}/IMAGE; "
            f"pods pull {host(settings)}/IMAGE"]


def warnings(settings):
    if settings.registry and not ipaddress.ip_address(settings.registry_address).is_loopback:
        return [f"WARNING: the registry listens on {settings.registry_address}:{settings.registry_port}, "
                "reachable from other machines, without authentication (registry.listenAddress)"]
    return []
