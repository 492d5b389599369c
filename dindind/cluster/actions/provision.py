"""Provision: the network, the volumes and one container per node (kind's provision.go)."""

import os
import time

from dindind.base.errors import DindindError
from dindind.cluster.plan import API_PORT, SETTINGS_LABEL

TITLE = "Preparing nodes"
SNAPSHOTS = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs"
SYSTEMD_WAIT = 60


# IPv6 in a node (ipFamily ipv6 or dual): on, and forwarding to and from its pods
IPV6_SYSCTLS = {"net.ipv6.conf.all.disable_ipv6": "0", "net.ipv6.conf.default.disable_ipv6": "0",
                "net.ipv6.conf.all.forwarding": "1"}


def node_sysctls(settings):
    """The kernel settings of a node's network namespace."""
    sysctls = {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.route_localnet": "1"}
    return {**sysctls, **IPV6_SYSCTLS} if settings.ipv6 else sysctls


def node_run_args(ctx, node):
    """Everything ``docker run`` gets for one node, as containers.run_container keywords."""
    plan = ctx.plan
    # Only containerd's snapshots need a volume (overlayfs cannot stack on the
    # container's own overlay root). Its content store and metadata stay in the
    # image's layers, so the preloaded images are not copied into every node.
    volumes = {plan.volume(node, "containerd"): SNAPSHOTS,
               plan.volume(node, "kubelet"): "/var/lib/kubelet",
               plan.volume(node, "var-log"): "/var/log"}
    labels = plan.labels(node.role)
    if node.is_control_plane:       # what cluster:start of a non-nested cluster rebuilds the plan from
        labels[SETTINGS_LABEL] = plan.settings.to_json()
    kw = dict(
        labels=labels,
        hostname=node.name,
        network=plan.network,
        ip=node.ip,
        ip6=node.ip6 or None,
        volumes=volumes,
        tmpfs={"/run": "rw", "/run/lock": "rw", "/tmp": "rw"},
        env=["container=docker"],
        sysctls=node_sysctls(plan.settings),
        privilege=ctx.privilege,
        cgroupns="private",
        stop_signal="SIGRTMIN+3",
        restart={"Name": "on-failure", "MaximumRetryCount": 1},
    )
    if os.path.isdir("/lib/modules"):
        kw["binds_ro"] = {"/lib/modules": "/lib/modules"}
    # the API port on the host: the control plane's, or (HA) the load balancer's (actions/loadbalancer.py)
    api = node is plan.control_plane and ctx.publish and plan.load_balancer is None
    ports = {API_PORT: ctx.publish} if api else {}
    spec = node.spec or plan.settings.node_specs()[node.index]
    # the cluster config's extraPortMappings and extraMounts: from this engine's host (nested: the
    # cluster container, which the host side gave the same ports and paths) to the node
    for p in spec.extra_port_mappings:
        ports[f"{p.container_port}/{p.protocol.lower()}"] = (p.listen_address, p.host_port or None)
    if ports:
        kw["ports"] = ports
    if spec.extra_mounts:
        kw["mounts"] = [(m.host_path, m.container_path, m.read_only) for m in spec.extra_mounts]
    return kw


def wait_for_systemd(ctx, node, timeout=SYSTEMD_WAIT):
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        code, out = ctx.node_exec(node, ["systemctl", "is-system-running"], check=False)
        state = out.strip()
        if state in ("running", "degraded"):
            return state
        time.sleep(0.5)
    raise DindindError(f"systemd in {node.name} did not reach multi-user within {timeout}s (state: {state!r})",
                       hint=f"see `docker logs {node.name}`; keep it with --retain")


def execute(ctx):
    plan = ctx.plan
    eng = ctx.engine
    eng.create_network(plan.network, plan.settings.node_subnet, plan.labels("network"),
                       **({"subnet6": plan.settings.node_subnet_v6} if plan.settings.ipv6 else {}))
    ctx.created.append(("network", plan.network))
    if ctx.privilege is None:
        ctx.privilege = eng.privilege_opts(ctx.node_image)
    for node in plan.nodes:
        kw = node_run_args(ctx, node)
        for vol in kw["volumes"]:
            eng.create_volume(vol, plan.labels("volume"))
            ctx.created.append(("volume", vol))
        ctx.created.append(("container", node.name))
        eng.run_container(ctx.node_image, node.name, **kw)
    for node in plan.nodes:
        wait_for_systemd(ctx, node)
        info = eng.inspect_container(node.name)
        ctx.node_ips[node.name] = info["NetworkSettings"]["Networks"][plan.network]["IPAddress"]
