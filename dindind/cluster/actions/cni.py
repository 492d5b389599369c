"""The pod network: the real CNI plugins, one pod-subnet slice per node, static routes.

No CNI daemon: each node gets a bridge + host-local conflist for its own
/24 (and /64 of the IPv6 pod subnet: ipFamily ipv6 or dual) and a route to
every other node's slices via that node's address of the same family.
``cluster.cni: none`` skips this action and leaves the network to the user.

Traffic to a service address that no service port claims is rejected on
every node (kube-proxy's nftables mode does the same; its iptables mode lets
such packets leave by the default route). Off the node they would reach the
host's network, where a proxy answering every port 80 made the conformance
test "Services should serve endpoints on same port and different protocols"
see a reply from a port the Service had just dropped.
"""

import json

from dindind.base import netfamily

TITLE = "Installing CNI"
CONFLIST = "/etc/cni/net.d/10-dindind.conflist"


def _slices(node):
    return node.pod_cidrs or (node.pod_cidr,)


def conflist(node):
    """The node's conflist: one host-local range per family (dual stack: each pod gets both), the
    bridge masquerading what leaves the node (ip6tables for IPv6)."""
    slices = _slices(node)
    default_routes = [{"dst": "::/0" if ":" in s else "0.0.0.0/0"} for s in slices]
    return json.dumps({
        "cniVersion": "0.4.0",
        "name": "dindind",
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": True, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": s}] for s in slices],
                      "routes": default_routes}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }, indent=2) + "\n"


def routes(plan, node, node_ips):
    """(destination, gateway) for every other node's pod slices: IPv4 ones via its IPv4 address
    (``node_ips``: as the engine reports them), IPv6 ones via its static IPv6 address."""
    return [(dst, other.ip6 if ":" in dst else node_ips[other.name])
            for other in plan.nodes if other.name != node.name for dst in _slices(other)]


def unclaimed_service_rules(service_subnet):
    """(iptables or ip6tables, rule) rejecting what is still addressed to the service subnet (each of
    its CIDRs) after kube-proxy's DNAT.

    Matched service traffic has its destination rewritten to a pod in the nat
    table before the filter chains see it, so only unclaimed ports hit these.
    """
    return [("ip6tables" if ":" in cidr else "iptables",
             [chain, "-d", cidr, "-m", "comment", "--comment", "dindind: unclaimed service port", "-j", "REJECT"])
            for cidr in netfamily.split(service_subnet) for chain in ("FORWARD", "OUTPUT")]


def execute(ctx):
    rules = unclaimed_service_rules(ctx.plan.settings.service_subnet)
    for node in ctx.plan.nodes:
        ctx.engine.put_file(node.name, CONFLIST, conflist(node))
        for dst, via in routes(ctx.plan, node, ctx.node_ips):
            ctx.node_exec(node, ["ip", "route", "replace", dst, "via", via])
        for tool, rule in rules:         # once: this action also runs when a restarted cluster comes back
            if ctx.node_exec(node, [tool, "-C", *rule], check=False)[0] != 0:
                ctx.node_exec(node, [tool, "-I", rule[0], "1", *rule[1:]])
