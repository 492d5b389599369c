"""The cluster plan: names, roles, subnets and addresses, derived in code (pure).

Everything a cluster creates is named from the cluster name and labelled
``io.dindind.cluster=<name>``, so ``down`` can find all of it.

:class:`Settings` is what one cluster is made of; :func:`from_cluster_config`
and :func:`to_cluster_config` turn a validated cluster config
(dindind.base.clusterconfig) into Settings and back.
"""

import ipaddress
import json
import secrets
import string
from dataclasses import asdict, dataclass, field, replace

from dindind.base import netfamily

CLUSTER_LABEL = "io.dindind.cluster"
ROLE_LABEL = "io.dindind.role"
LB_ROLE = "external-load-balancer"    # the role label of an HA cluster's load balancer container
SETTINGS_LABEL = "io.dindind.settings"      # on the control plane: the Settings as JSON
API_PORT = 6443


@dataclass(frozen=True)
class Mount:
    """A path of the node's host (the host, or the cluster container when nested) mounted into the node."""

    host_path: str
    container_path: str
    read_only: bool = False


@dataclass(frozen=True)
class PortMapping:
    """A port of the node's host forwarded to a port of the node."""

    container_port: int
    host_port: int = 0
    listen_address: str = "127.0.0.1"
    protocol: str = "TCP"


@dataclass(frozen=True)
class NodeSpec:
    """What a cluster config says about one node."""

    role: str
    labels: tuple = ()              # ((key, value), ...), sorted by key
    kubelet_extra_args: tuple = ()  # after the cluster's
    kubeadm_patches: tuple = ()     # after the cluster's
    extra_mounts: tuple = ()        # Mount
    extra_port_mappings: tuple = ()  # PortMapping

    @classmethod
    def from_dict(cls, d):
        return cls(role=d["role"], labels=tuple(tuple(kv) for kv in d.get("labels") or ()),
                   kubelet_extra_args=tuple(d.get("kubelet_extra_args") or ()),
                   kubeadm_patches=tuple(d.get("kubeadm_patches") or ()),
                   extra_mounts=tuple(Mount(**m) for m in d.get("extra_mounts") or ()),
                   extra_port_mappings=tuple(PortMapping(**p) for p in d.get("extra_port_mappings") or ()))


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
    nodes: tuple = ()       # NodeSpec, control plane first; () is one control plane and `workers` workers
    feature_gates: tuple = ()       # ((name, bool), ...), sorted by name
    runtime_config: tuple = ()      # ((group/version, "true" | "false"), ...), sorted
    containerd_patches: tuple = ()  # TOML texts, in order
    registry: bool = False          # the local registry (dindind.cluster.registry)
    registry_port: int = 5001       # the host's localhost:PORT, also the name pods pull by
    registry_address: str = "127.0.0.1"     # the address the port is published on
    ip_family: str = "ipv4"         # ipv4 | ipv6 | dual (dindind.base.netfamily)
    kube_proxy_mode: str = "iptables"   # iptables | nftables | ipvs | none
    node_subnet_v6: str = netfamily.NODE_SUBNET_V6     # the node network's IPv6 subnet (ipv6, dual)

    def to_json(self):
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text):
        data = json.loads(text)
        data["kubelet_extra_args"] = tuple(data.get("kubelet_extra_args") or ())
        data["kubeadm_patches"] = tuple(data.get("kubeadm_patches") or ())
        data["nodes"] = tuple(NodeSpec.from_dict(n) for n in data.get("nodes") or ())
        data["feature_gates"] = tuple(tuple(kv) for kv in data.get("feature_gates") or ())
        data["runtime_config"] = tuple(tuple(kv) for kv in data.get("runtime_config") or ())
        data["containerd_patches"] = tuple(data.get("containerd_patches") or ())
        return cls(**data)

    def __post_init__(self):
        # one form per cluster: nodes with nothing of their own are just a worker count
        nodes = tuple(self.nodes)
        if nodes:
            object.__setattr__(self, "workers", sum(1 for n in nodes if n.role == "worker"))
            if nodes[0].role == "control-plane" and all(n == NodeSpec(n.role) for n in nodes) \
                    and sum(1 for n in nodes if n.role == "control-plane") == 1:
                nodes = ()
        object.__setattr__(self, "nodes", nodes)

    @property
    def ip_versions(self):
        """The cluster's IP versions, the primary one first: (4,), (6,), (4, 6) or (6, 4)."""
        return netfamily.ordered_versions(self.ip_family, self.service_subnet)

    @property
    def ipv6(self):
        """Whether the cluster uses IPv6 (ipFamily ipv6 or dual)."""
        return self.ip_family != "ipv4"

    def node_specs(self):
        """Every node's NodeSpec, the control plane first."""
        return self.nodes or (NodeSpec("control-plane"),) + (NodeSpec("worker"),) * self.workers

    @property
    def control_planes(self):
        """How many control-plane nodes (more than one: high availability, behind a load balancer)."""
        return sum(1 for n in self.node_specs() if n.role == "control-plane")

    def node_names(self):
        """[(name, role)] of every node, the control planes first (:func:`node_names`)."""
        return node_names(self.name, self.workers, self.control_planes)


@dataclass(frozen=True)
class Node:
    name: str
    role: str          # control-plane | worker
    index: int
    pod_cidr: str
    ip: str            # static, so routes and configs survive a restart
    spec: NodeSpec = None
    ip6: str = ""      # static IPv6 address on the node network (ipFamily ipv6 or dual)
    pod_cidrs: tuple = ()   # every pod slice of the node, one per family, the primary first

    def address(self, version):
        """The node's static address of IP version 4 or 6."""
        return self.ip6 if version == 6 else self.ip

    @property
    def is_control_plane(self):
        return self.role == "control-plane"


@dataclass(frozen=True)
class LoadBalancer:
    """The API servers' load balancer of an HA cluster (haproxy in a container of the node image)."""

    name: str          # <cluster>-external-load-balancer
    ip: str            # static: the node subnet's last host address

    role = LB_ROLE

    @property
    def endpoint(self):
        return f"{self.ip}:{API_PORT}"


@dataclass(frozen=True)
class Plan:
    settings: Settings
    nodes: tuple
    network: str
    token: str = field(repr=False)
    certificate_key: str = field(default=None, repr=False)   # HA only: kubeadm's key for the uploaded certs
    load_balancer: LoadBalancer = None                        # HA only

    @property
    def name(self):
        return self.settings.name

    @property
    def control_plane(self):
        """The control plane that runs ``kubeadm init`` (the first)."""
        return self.nodes[0]

    @property
    def control_planes(self):
        return tuple(n for n in self.nodes if n.is_control_plane)

    @property
    def workers(self):
        return tuple(n for n in self.nodes if not n.is_control_plane)

    @property
    def api_ip(self):
        """The address every node and client uses for the API server: the load balancer's (HA), else
        the control plane's."""
        return self.load_balancer.ip if self.load_balancer else self.control_plane.ip

    def labels(self, role=None):
        labels = {CLUSTER_LABEL: self.name}
        if role:
            labels[ROLE_LABEL] = role
        return labels

    def volume(self, node, what):
        return f"{node.name}-{what}"

    @property
    def registry_name(self):
        """The registry's container and its volume: ``<cluster>-registry``."""
        return f"{self.name}-registry"

    @property
    def registry_ip(self):
        return registry_ip(self.settings.node_subnet)


def bootstrap_token():
    """A fresh kubeadm bootstrap token ``[a-z0-9]{6}.[a-z0-9]{16}``; never stored in an image."""
    alphabet = string.ascii_lowercase + string.digits
    pick = lambda n: "".join(secrets.choice(alphabet) for _ in range(n))  # noqa: E731
    return f"{pick(6)}.{pick(16)}"


def certificate_key():
    """A fresh key for kubeadm's uploaded control-plane certificates (32 random bytes, hex: AES-256).

    Used only while kubeadm runs (a file on the node's tmpfs /run, removed after); never in a label,
    an artifact or a log line.
    """
    return secrets.token_hex(32)


def load_balancer_name(name):
    return f"{name}-external-load-balancer"


def load_balancer_ip(node_subnet):
    """The node subnet's last host address (.254 of a /24): the load balancer's, far from the nodes'."""
    net = ipaddress.ip_network(node_subnet)
    return str(net.broadcast_address - 1)


def node_names(name, workers, control_planes=1):
    """kind's naming: <name>-control-plane, <name>-control-plane2, ..., <name>-worker, <name>-worker2, ..."""
    names = [(f"{name}-control-plane{i + 1 if i else ''}", "control-plane") for i in range(control_planes)]
    for i in range(workers):
        names.append((f"{name}-worker{i + 1 if i else ''}", "worker"))
    return names


def _node_ips(subnet, count):
    hosts = ipaddress.ip_network(subnet).hosts()
    next(hosts)  # the bridge's gateway
    return [str(next(hosts)) for _ in range(count)]


def registry_ip(node_subnet):
    """The registry's fixed address: the node subnet's second-to-last host (.253 of a /24; the last host,
    .254, is kept for a control-plane load balancer; nodes count up from .2)."""
    net = ipaddress.ip_network(node_subnet)
    return str(net[-3] if net.version == 4 else net[-2])


def make_plan(settings, token=None, cert_key=None):
    specs = settings.node_specs()
    names = settings.node_names()
    slices = netfamily.slices(settings.pod_subnet, len(names))
    ips = _node_ips(settings.node_subnet, len(names))
    ips6 = _node_ips(settings.node_subnet_v6, len(names)) if settings.ipv6 else [""] * len(names)
    nodes = tuple(Node(n, role, i, slices[i][0], ips[i], specs[i], ip6=ips6[i], pod_cidrs=slices[i])
                  for i, (n, role) in enumerate(names))
    ha = settings.control_planes > 1
    lb = LoadBalancer(load_balancer_name(settings.name), load_balancer_ip(settings.node_subnet)) if ha else None
    return Plan(settings=settings, nodes=nodes, network=f"dindind-{settings.name}",
                token=token or bootstrap_token(), certificate_key=(cert_key or certificate_key()) if ha else None,
                load_balancer=lb)


# ------------------------------------------------------------------ the cluster config <-> Settings

def from_cluster_config(doc, defaults):
    """Settings from a validated cluster config ``doc``; ``defaults`` gives what the file does not
    say (node image, Kubernetes version, wait, retain, and the name when it has none)."""
    net = doc["networking"]
    nodes = ()
    workers = 2
    if doc["nodes"] is not None:
        ordered = sorted(doc["nodes"], key=lambda n: n["role"] != "control-plane")   # stable: config order
        nodes = tuple(NodeSpec(
            role=n["role"], labels=tuple(sorted(n["labels"].items())),
            kubelet_extra_args=tuple(n["kubeletExtraArgs"]), kubeadm_patches=tuple(n["kubeadmConfigPatches"]),
            extra_mounts=tuple(Mount(m["hostPath"], m["containerPath"], m["readOnly"]) for m in n["extraMounts"]),
            extra_port_mappings=tuple(PortMapping(p["containerPort"], p["hostPort"], p["listenAddress"],
                                                  p["protocol"]) for p in n["extraPortMappings"]))
            for n in ordered)
        workers = sum(1 for n in nodes if n.role == "worker")
    return replace(defaults, name=doc["name"] or defaults.name, workers=workers, nodes=nodes,
                   pod_subnet=net["podSubnet"], service_subnet=net["serviceSubnet"], node_subnet=net["nodeSubnet"],
                   api_address=net["apiServerAddress"], api_port=net["apiServerPort"],
                   cni="none" if net["disableDefaultCNI"] else "default",
                   ip_family=net["ipFamily"], kube_proxy_mode=net["kubeProxyMode"],
                   node_subnet_v6=net["nodeSubnetIPv6"],
                   kubelet_extra_args=tuple(doc["kubeletExtraArgs"]),
                   kubeadm_patches=tuple(doc["kubeadmConfigPatches"]),
                   feature_gates=tuple(sorted(doc["featureGates"].items())),
                   runtime_config=tuple(sorted(doc["runtimeConfig"].items())),
                   containerd_patches=tuple(doc["containerdConfigPatches"]),
                   **_registry_settings(doc.get("registry")))


def _registry_settings(reg):
    if not reg or not reg["enabled"]:
        return {"registry": False}
    return {"registry": True, "registry_port": reg["hostPort"], "registry_address": reg["listenAddress"]}


def to_cluster_config(settings):
    """The cluster config (plain data, apiVersion dindind.dev/v1alpha1) that asks for ``settings``."""
    def node(spec):
        return {"role": spec.role, "labels": dict(spec.labels), "kubeletExtraArgs": list(spec.kubelet_extra_args),
                "kubeadmConfigPatches": list(spec.kubeadm_patches),
                "extraMounts": [{"hostPath": m.host_path, "containerPath": m.container_path, "readOnly": m.read_only}
                                for m in spec.extra_mounts],
                "extraPortMappings": [{"containerPort": p.container_port, "hostPort": p.host_port,
                                       "listenAddress": p.listen_address, "protocol": p.protocol}
                                      for p in spec.extra_port_mappings]}

    return {"apiVersion": "dindind.dev/v1alpha1", "kind": "Cluster", "name": settings.name,
            "nodes": [node(n) for n in settings.node_specs()],
            "networking": {"apiServerAddress": settings.api_address, "apiServerPort": settings.api_port,
                           "podSubnet": settings.pod_subnet, "serviceSubnet": settings.service_subnet,
                           "nodeSubnet": settings.node_subnet, "disableDefaultCNI": settings.cni == "none",
                           "ipFamily": settings.ip_family, "kubeProxyMode": settings.kube_proxy_mode,
                           "nodeSubnetIPv6": settings.node_subnet_v6},
            "kubeletExtraArgs": list(settings.kubelet_extra_args),
            "kubeadmConfigPatches": list(settings.kubeadm_patches),
            "featureGates": dict(settings.feature_gates), "runtimeConfig": dict(settings.runtime_config),
            "containerdConfigPatches": list(settings.containerd_patches),
            "registry": {"enabled": settings.registry, "hostPort": settings.registry_port,
                         "listenAddress": settings.registry_address}}
