"""The pod network: the real CNI plugins, one pod-subnet slice per node, static routes.

No CNI daemon: each node gets a bridge + host-local conflist for its own
/24 and a route to every other node's /24 via that node's address.
``cluster.cni: none`` skips this action and leaves the network to the user.
"""

import json

TITLE = "Installing CNI"
CONFLIST = "/etc/cni/net.d/10-dindind.conflist"


def conflist(node):
    return json.dumps({
        "cniVersion": "0.4.0",
        "name": "dindind",
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": True, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": node.pod_cidr}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }, indent=2) + "\n"


def routes(plan, node, node_ips):
    """(destination, gateway) for every other node's pod slice."""
    return [(other.pod_cidr, node_ips[other.name]) for other in plan.nodes if other.name != node.name]


def execute(ctx):
    for node in ctx.plan.nodes:
        ctx.engine.put_file(node.name, CONFLIST, conflist(node))
        for dst, via in routes(ctx.plan, node, ctx.node_ips):
            ctx.node_exec(node, ["ip", "route", "replace", dst, "via", via])
