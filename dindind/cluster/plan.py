"""The cluster plan: names, roles, subnets and addresses, derived in code (pure).

Everything a cluster creates is named from the cluster name and labelled
``io.dindind.cluster=<name>``, so ``down`` can find all of it.
"""

import ipaddress
import json
import secrets
import string
from dataclasses import asdict, dataclass, field

CLUSTER_LABEL = "io.dindind.cluster"
ROLE_LABEL = "io.dindind.role"
SETTINGS_LABEL = "io.dindind.settings"      # on the control plane: the Settings as JSON
API_PORT = 6443


@dataclass(frozen=True)
class Settings:
    """What a user chooses for one cluster (config + command line); JSON-able."""

    name: str
    workers: int
    node_image: str
    kubernetes_version: str
    pod_subnet: str
    service_subnet: str
    node_subnet: str
    api_address: str = "127.0.0.1"
    api_port: int = 0
    cni: str = "default"
    kubelet_extra_args: tuple = ()
    kubeadm_patches: tuple = ()
    wait: int = 180
    retain: bool = False

    def to_json(self):
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text):
        data = json.loads(text)
        data["kubelet_extra_args"] = tuple(data.get("kubelet_extra_args") or ())
        data["kubeadm_patches"] = tuple(data.get("kubeadm_patches") or ())
        return cls(**data)


@dataclass(frozen=True)
class Node:
    name: str
    role: str          # control-plane | worker
    index: int
    pod_cidr: str
    ip: str            # static, so routes and configs survive a restart

    @property
    def is_control_plane(self):
        return self.role == "control-plane"


@dataclass(frozen=True)
class Plan:
    settings: Settings
    nodes: tuple
    network: str
    token: str = field(repr=False)

    @property
    def name(self):
        return self.settings.name

    @property
    def control_plane(self):
        return self.nodes[0]

    @property
    def workers(self):
        return self.nodes[1:]

    def labels(self, role=None):
        labels = {CLUSTER_LABEL: self.name}
        if role:
            labels[ROLE_LABEL] = role
        return labels

    def volume(self, node, what):
        return f"{node.name}-{what}"


def bootstrap_token():
    """A fresh kubeadm bootstrap token ``[a-z0-9]{6}.[a-z0-9]{16}``; never stored in an image."""
    alphabet = string.ascii_lowercase + string.digits
    pick = lambda n: "".join(secrets.choice(alphabet) for _ in range(n))  # noqa: E731
    return f"{pick(6)}.{pick(16)}"


def node_names(name, workers):
    """kind's naming: <name>-control-plane, <name>-worker, <name>-worker2, ..."""
    names = [(f"{name}-control-plane", "control-plane")]
    for i in range(workers):
        names.append((f"{name}-worker{i + 1 if i else ''}", "worker"))
    return names


def pod_slices(pod_subnet, count):
    """One /24 of the pod subnet per node (IPv4), in node order."""
    net = ipaddress.ip_network(pod_subnet)
    slices = net.subnets(new_prefix=24)
    return [str(next(slices)) for _ in range(count)]


def make_plan(settings, token=None):
    names = node_names(settings.name, settings.workers)
    slices = pod_slices(settings.pod_subnet, len(names))
    hosts = ipaddress.ip_network(settings.node_subnet).hosts()
    next(hosts)  # the bridge's gateway
    ips = [str(next(hosts)) for _ in names]
    nodes = tuple(Node(n, role, i, slices[i], ips[i]) for i, (n, role) in enumerate(names))
    return Plan(settings=settings, nodes=nodes, network=f"dindind-{settings.name}",
                token=token or bootstrap_token())
