"""Create a cluster: plan first, then run the actions in order, each with a status line.

On failure everything the run created is removed (containers with their
volumes, then volumes, then the network) unless ``retain`` is set.
"""

from dindind.cluster.actions import cni, config, containerd, kubeadminit, kubeadmjoin, provision, waitready
from dindind.cluster.context import Context
from dindind.cluster.status import Status


def actions(settings):
    steps = [provision, config]
    if settings.containerd_patches:
        steps.append(containerd)        # before kubeadm: the kubelet and the pods see the patched containerd
    steps.append(kubeadminit)
    if settings.cni != "none":
        steps.append(cni)
    steps += [kubeadmjoin, waitready]
    return steps


def rollback(ctx):
    eng = ctx.engine
    for kind, name in reversed(ctx.created):
        try:
            if kind == "container":
                eng.remove_container(name, volumes=True)
            elif kind == "volume":
                eng.remove_volume(name)
            elif kind == "network":
                eng.remove_network(name)
        except Exception as exc:  # keep removing the rest
            ctx.status.info(f"could not remove {kind} {name}: {exc}")


def create(plan, node_image, *, publish=None, privilege=None, status=None, engine=None):
    """Run every action; return the Context (with the admin kubeconfig)."""
    ctx = Context(plan=plan, node_image=node_image, status=status or Status(), publish=publish,
                  privilege=privilege)
    if engine is not None:
        ctx.engine = engine
    try:
        for action in actions(plan.settings):
            with ctx.status.step(action.TITLE):
                action.execute(ctx)
    except BaseException:
        if not plan.settings.retain:
            rollback(ctx)
        raise
    return ctx
