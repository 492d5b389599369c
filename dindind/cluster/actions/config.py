"""Write each node's kubeadm configuration to /etc/dindind/kubeadm.conf."""

from .. import kubeadm

TITLE = "Writing configuration"
PATH = "/etc/dindind/kubeadm.conf"


def execute(ctx):
    cp_ip = ctx.node_ips[ctx.plan.control_plane.name]
    for node in ctx.plan.nodes:
        text = kubeadm.render_config(ctx.plan, node, ctx.node_ips[node.name], cp_ip)
        ctx.engine.put_file(node.name, PATH, text, mode=0o600)
