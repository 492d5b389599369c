"""Reaching a cluster from outside: its kubeconfigs and its nodes (``cluster:kubeconfig``, ``cluster:nodes``).

Host side, beside dindind.cluster.host. Everything is read from the engine,
where a cluster's state lives (labels), not from artifacts/: the nodes'
roles, addresses and states from ``docker inspect`` (through the top-level
container's own engine when the cluster is nested), the admin kubeconfig
from the control plane (non-nested) or the top-level container (nested),
and the nodes' readiness from the API server through the published port.

Two servers for one kubeconfig: the published one (``https://127.0.0.1:PORT``,
for this host) and the internal one (the control plane's address on the
cluster network, port 6443: what the nodes use, reachable from that network
only — inside the top-level container when nested). Both are in the API
certificate's SANs.
"""

import http.client
import json

from dindind.base import fsutil
from dindind.base.errors import DindindError
from dindind.cluster import api, host, inside
from dindind.cluster import kubeconfig as kubeconfig_mod
from dindind.cluster import plan as plan_mod
from dindind.docker import containers

ADMIN_CONF = "/etc/kubernetes/admin.conf"
ROLES = ("control-plane", "worker")
LISTED = ROLES + (plan_mod.LB_ROLE,)     # cluster:nodes lists an HA cluster's load balancer too, as kind does
READY_TIMEOUT = 3       # seconds cluster:nodes waits for the API server's node list


def _labels(c):
    return c.get("Labels") or (c.get("Config") or {}).get("Labels") or {}


class Cluster:
    """A cluster found on the engine by its label; ``top`` is its top-level container when nested."""

    def __init__(self, name):
        self.name = name
        found = containers.containers({plan_mod.CLUSTER_LABEL: name})
        if not found:
            raise DindindError(f"no cluster named {name!r}", hint="see `doit cluster:status`")
        tops = [c for c in found if _labels(c).get(plan_mod.ROLE_LABEL) == host.TOP_ROLE]
        self.top = tops[0]["Names"][0].lstrip("/") if tops else None
        self.top_state = tops[0]["State"] if tops else None
        self._node_ids = [c["Id"] for c in found if _labels(c).get(plan_mod.ROLE_LABEL) in LISTED]

    def _require_running_top(self):
        if self.top and self.top_state != "running":
            raise DindindError(f"cluster {self.name} is stopped: its container {self.top} is {self.top_state}",
                               hint=f"start it with `doit cluster:start --name {self.name}`")

    def nodes(self, roles=ROLES):
        """``docker inspect`` of every node (of ``roles``), the control planes first (None: nested, and the top
        is stopped)."""
        if self.top:
            if self.top_state != "running":
                return None
            _, ids = containers.exec_in(self.top, ["docker", "ps", "-aq", "--filter",
                                                   f"label={plan_mod.CLUSTER_LABEL}={self.name}"])
            infos = json.loads(containers.exec_in(self.top, ["docker", "inspect", *ids.split()])[1]) \
                if ids.split() else []
        else:
            infos = [containers.inspect_container(i) for i in self._node_ids]
        infos = [i for i in infos if role(i) in roles]
        return sorted(infos, key=lambda i: (LISTED.index(role(i)), len(node_name(i)), node_name(i)))

    def address(self, info):
        """The node's address on the cluster network ('' when it has none: stopped)."""
        networks = (info.get("NetworkSettings") or {}).get("Networks") or {}
        net = networks.get(f"dindind-{self.name}") or next(iter(networks.values()), {})
        return net.get("IPAddress") or ""

    def control_plane(self):
        self._require_running_top()
        cps = [i for i in self.nodes() if role(i) == "control-plane"]
        if not cps:
            raise DindindError(f"cluster {self.name} has no control-plane node",
                               hint=f"remove it with `doit cluster:down --name {self.name}`")
        return cps[0]

    def admin_kubeconfig(self):
        """The admin kubeconfig as the cluster keeps it (server: the name or address the nodes use)."""
        self._require_running_top()
        where, path = (self.top, inside.KUBECONFIG) if self.top else (node_name(self.control_plane()), ADMIN_CONF)
        try:
            return containers.get_file(where, path)
        except DindindError:
            raise DindindError(f"cluster {self.name} has no kubeconfig yet ({where}:{path})",
                               hint="wait until `doit cluster:up` has finished, or see `doit cluster:logs`") from None

    def load_balancer(self):
        """``docker inspect`` of an HA cluster's load balancer, or None."""
        lbs = self.nodes(roles=(plan_mod.LB_ROLE,)) or []
        return lbs[0] if lbs else None

    def external_kubeconfig(self):
        """The kubeconfig for this host: the API server's published address."""
        container = self.top or node_name(self.load_balancer() or self.control_plane())
        server = host.published_server(container)
        if server is None:
            raise DindindError(f"cluster {self.name} is not running: {container} publishes no API port",
                               hint=f"start it (`doit cluster:start --name {self.name}` when nested)")
        return api.rewrite_server(self.admin_kubeconfig(), server)

    def internal_kubeconfig(self):
        """(kubeconfig, server): the control plane's (HA: the load balancer's) address on the cluster network,
        port 6443."""
        cp = self.load_balancer() or self.control_plane()
        address = self.address(cp)
        if not address:
            raise DindindError(f"cluster {self.name} is not running: {node_name(cp)} has no address",
                               hint="start its nodes again")
        server = f"https://{f'[{address}]' if ':' in address else address}:{plan_mod.API_PORT}"
        return api.rewrite_server(self.admin_kubeconfig(), server), server


def role(info):
    return _labels(info).get(plan_mod.ROLE_LABEL)


def node_name(info):
    return info["Name"].lstrip("/")


def kubeconfig(cfg, layout, name=None, internal=False, merge=False, out=print):
    """``cluster:kubeconfig``: print the kubeconfig's path; --internal: write and print the nodes' one;
    --merge: merge it into $KUBECONFIG (first path) or ~/.kube/config as ``dindind-<name>``."""
    name = host.cluster_name(cfg, name)
    if internal and merge:
        raise DindindError("--internal and --merge cannot be combined",
                           hint="--merge adds the address this host uses to your kubeconfig; "
                                "--internal writes the nodes' address to a file of its own")
    if not (internal or merge):
        path = host.kubeconfig_path(layout, name)
        if not path.exists():
            raise DindindError(f"no kubeconfig for cluster {name!r} at {path}",
                               hint="bring it up with `doit cluster:up`")
        out(str(path))
        return path
    cluster = Cluster(name)
    if internal:
        data, server = cluster.internal_kubeconfig()
        path = fsutil.write_bytes(host.cluster_dir(layout, name) / "kubeconfig-internal", data, mode=0o600)
        out(str(path))
        out(f"  server {server}: the control plane on the cluster network, reachable from the nodes"
            + (f" and from inside {cluster.top}" if cluster.top else " and from containers on that network"))
        return path
    data = cluster.external_kubeconfig()
    target = kubeconfig_mod.merge_path()
    previous = kubeconfig_mod.merge_into(target, data, name)
    kubeconfig_mod.record(host.cluster_dir(layout, name), target, previous)
    out(f"merged cluster {name} into {target} as context {kubeconfig_mod.key(name)}, now the current context "
        f"(`doit cluster:down --name {name}` removes it again)")
    return target


def readiness(cluster):
    """{node: Ready} from the API server, or None when it cannot be read (stopped, still coming up)."""
    try:
        return api.node_readiness(cluster.external_kubeconfig(), timeout=READY_TIMEOUT)
    except (DindindError, OSError, http.client.HTTPException, ValueError):
        return None


def nodes(cfg, name=None, out=print):
    """``cluster:nodes``: one line per node with its role, address, container state and readiness."""
    name = host.cluster_name(cfg, name)
    cluster = Cluster(name)
    infos = cluster.nodes(roles=LISTED)
    if infos is None:
        rows = [{"name": n, "role": r, "address": "-", "state": "-", "ready": "-"}
                for n, r in host.top_node_names(name, containers.inspect_container(cluster.top))]
        out(f"cluster {name} is stopped (its container {cluster.top} is {cluster.top_state}); "
            f"`doit cluster:start --name {name}` starts it")
    else:
        ready = readiness(cluster)
        rows = [{"name": node_name(i), "role": role(i), "address": cluster.address(i) or "-",
                 "state": i["State"]["Status"],
                 "ready": "-" if ready is None or node_name(i) not in ready
                 else "Ready" if ready[node_name(i)] else "NotReady"} for i in infos]
        if cluster.top:
            out(f"cluster {name}, nested in container {cluster.top}:")
    w = max([14] + [len(r["role"]) for r in rows])
    out(f"{'NAME':<36} {'ROLE':<{w}} {'ADDRESS':<16} {'STATE':<10} READY")
    for r in rows:
        out(f"{r['name']:<36} {r['role']:<{w}} {r['address']:<16} {r['state']:<10} {r['ready']}")
    return rows
