"""extraMounts and extraPortMappings of a cluster config, from the host to the nodes.

Non-nested, a node is a container of the host's engine: its mounts and port
mappings name host paths and host ports directly. Nested, there is one hop
more: the cluster container mounts each host path at ``MOUNTS_DIR/<k>`` and
publishes each host port on its own port ``INNER_PORTS + k``; the cluster
config it is given (``--config-json``) names those, so inside it the nodes
mount and publish exactly as they would on a host. That config carries no
host path: what the cluster image sees is its own.

:func:`reserve_ports` is the host side's check, before anything is created,
that every host port asked for is free (and the pick of a free one for
``hostPort: 0``, kept for the cluster's life, as the API port is).
"""

import ipaddress
import socket
from dataclasses import replace

from dindind.base.errors import DindindError
from dindind.cluster.plan import Mount, PortMapping

MOUNTS_DIR = "/mnt/dindind"
INNER_PORTS = 40000     # the cluster container's port for the k-th mapping (nothing else listens there)


def _map_nodes(settings, mount, port):
    """``settings`` with every node's mounts and port mappings replaced by mount(k, m) and port(k, p)."""
    specs, km, kp = [], 0, 0
    for spec in settings.nodes:
        mounts, ports = [], []
        for m in spec.extra_mounts:
            mounts.append(mount(km, m))
            km += 1
        for p in spec.extra_port_mappings:
            ports.append(port(kp, p))
            kp += 1
        specs.append(replace(spec, extra_mounts=tuple(mounts), extra_port_mappings=tuple(ports)))
    return replace(settings, nodes=tuple(specs))


def mappings(settings):
    """Every extraPortMapping of the cluster, in node order."""
    return [p for spec in settings.nodes for p in spec.extra_port_mappings]


def nested(settings):
    """(settings for the cluster image, the cluster container's mounts, its extra ports).

    Mounts are ``(host path, container path, read only)``, ports ``{"PORT/proto": (address, host port)}``
    (docker.containers.run_container's forms); host ports must be reserved already (none is 0).
    """
    top_mounts, top_ports = [], {}

    def mount(k, m):
        inner = f"{MOUNTS_DIR}/{k}"
        top_mounts.append((m.host_path, inner, m.read_only))
        return Mount(inner, m.container_path, m.read_only)

    def port(k, p):
        top_ports[f"{INNER_PORTS + k}/{p.protocol.lower()}"] = (p.listen_address, p.host_port)
        return PortMapping(p.container_port, INNER_PORTS + k, "0.0.0.0", p.protocol)

    inner = _map_nodes(settings, mount, port)
    if settings.registry:
        # the local registry: the cluster container's port hostPort (the name localhost:PORT stays the same)
        top_ports[f"{settings.registry_port}/tcp"] = (settings.registry_address, settings.registry_port)
        inner = replace(inner, registry_address="0.0.0.0")
    return inner, top_mounts, top_ports


def _bind(address, port, protocol):
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM if protocol == "UDP" else socket.SOCK_STREAM)
    try:
        s.bind((address, port))
    except OSError:
        s.close()
        raise
    return s


def reserve_ports(settings, taken=()):
    """``settings`` with every extraPortMapping's host port checked free on this host, and a free one
    picked for ``hostPort: 0``; else one DindindError naming the mapping. ``taken``: (address, port)
    pairs already given away (the API server's)."""
    held, picked = [], {}
    taken = {(a, p) for a, p in taken}
    try:
        for k, p in enumerate(mappings(settings)):
            where = f"extraPortMappings: {p.listen_address}:{p.host_port or '(any)'}/{p.protocol} -> " \
                    f"{p.container_port}"
            if p.host_port and (p.listen_address, p.host_port) in taken:
                raise DindindError(f"{where}: the API server is published on that port",
                                   hint="choose another hostPort in the cluster config (0: any free port)")
            for _ in range(20):
                try:
                    s = _bind(p.listen_address, p.host_port, p.protocol)
                except OSError as exc:
                    raise DindindError(f"{where}: the host port is not free ({exc.strerror})",
                                       hint="choose another hostPort in the cluster config (0: any free port)") \
                        from None
                port = s.getsockname()[1]
                held.append(s)
                if p.host_port or (p.listen_address, port) not in taken:
                    break
            picked[k] = port
            taken.add((p.listen_address, port))
    finally:
        for s in held:
            s.close()
    return _map_nodes(settings, lambda k, m: m, lambda k, p: replace(p, host_port=picked[k]))


def hold_registry_port(settings):
    """A socket bound to the registry's host port (close it when the other ports are picked), or None
    without a registry; else one DindindError: the port is in use on this host."""
    if not settings.registry:
        return None
    try:
        return _bind(settings.registry_address, settings.registry_port, "TCP")
    except OSError as exc:
        raise DindindError(f"registry: {settings.registry_address}:{settings.registry_port}: the host port is "
                           f"not free ({exc.strerror})",
                           hint="choose another registry.hostPort in the cluster config") from None


def warnings(settings):
    """One line for every port mapping that listens beyond loopback."""
    return [f"WARNING: {p.listen_address}:{p.host_port}/{p.protocol} (extraPortMappings -> {p.container_port}) "
            "is reachable from other machines" for p in mappings(settings)
            if not ipaddress.ip_address(p.listen_address).is_loopback]


def describe(settings):
    """One line per port mapping: the host address and port, and the node port it reaches."""
    names = [n for n, _ in settings.node_names()]
    lines = []
    for name, spec in zip(names, settings.node_specs()):
        for p in spec.extra_port_mappings:
            address = f"[{p.listen_address}]" if ":" in p.listen_address else p.listen_address
            lines.append(f"  port {address}:{p.host_port}/{p.protocol} -> {name}:{p.container_port}")
    return lines
