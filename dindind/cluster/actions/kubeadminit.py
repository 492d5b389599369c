"""kubeadm init on the control-plane node (preflight skipped, as kind does)."""

from dindind.cluster.actions.config import run_kubeadm

TITLE = "Starting control-plane"


def execute(ctx):
    cp = ctx.plan.control_plane
    run_kubeadm(ctx, cp, "init")
    ctx.kubeconfig = ctx.engine.get_file(cp.name, "/etc/kubernetes/admin.conf")
