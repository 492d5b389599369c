"""Create a cluster: plan first, then run the actions in order, each with a status line.

On failure everything the run created is removed (containers with their
volumes, then volumes, then the network) unless ``retain`` is set.
``restart`` brings a stopped cluster's nodes back and ``stop`` stops them:
the image's entry point (nested) and ``cluster:start``/``cluster:stop`` of
a non-nested cluster run the same code.
"""

import threading

from dindind.base.errors import DindindError
from dindind.cluster import api
from dindind.cluster.actions import (cni, config, containerd, joincontrolplanes, kubeadminit, kubeadmjoin,
                                     loadbalancer, provision, waitready)
from dindind.cluster.actions import registry, registryhosting
from dindind.cluster.context import Context
from dindind.cluster.status import Status
from dindind.docker import containers

START_TITLE = "Starting nodes"
NODE_STOP_TIMEOUT = 20      # seconds each node gets to stop (systemd's SIGRTMIN+3), all at once


def actions(settings):
    ha = settings.control_planes > 1
    steps = [provision] + ([loadbalancer] if ha else []) + [config]
    if settings.registry:
        steps.append(registry)          # beside the nodes, before any pull
    if settings.containerd_patches:
        steps.append(containerd)        # before kubeadm: the kubelet and the pods see the patched containerd
    steps.append(kubeadminit)
    if settings.registry:
        steps.append(registryhosting)   # the API answers once kubeadm init is done
    if settings.cni != "none":
        steps.append(cni)
    if ha:
        steps.append(joincontrolplanes)     # one at a time, before the workers (kind's order)
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


def restart(plan, node_image, kubeconfig, *, status=None, engine=None):
    """Start a stopped cluster's nodes again and wait until every one is Ready; return the Context.

    The same containers, so the same certificates, etcd and workloads; a
    started container has a new network namespace, so the CNI routes are
    put back; Ready counts only as reported by a kubelet after the start.
    ``kubeconfig``: the admin kubeconfig, or None to read admin.conf from
    the control plane (as kubeadminit does).
    """
    ctx = Context(plan=plan, node_image=node_image, status=status or Status(), kubeconfig=kubeconfig)
    if engine is not None:
        ctx.engine = engine
    with ctx.status.step(START_TITLE):
        if plan.settings.registry:
            ctx.engine.start_container(plan.registry_name)
        for node in plan.nodes:
            ctx.engine.start_container(node.name)
        if plan.load_balancer:
            ctx.engine.start_container(plan.load_balancer.name)
        for node in plan.nodes:
            provision.wait_for_systemd(ctx, node)
            ctx.node_ips[node.name] = node.ip       # static: the plan's
        if ctx.kubeconfig is None:
            ctx.kubeconfig = ctx.engine.get_file(plan.control_plane.name, "/etc/kubernetes/admin.conf")
        # the engine's clock (the nodes' too), not this process's
        ctx.restarted = min(api.epoch(ctx.engine.inspect_container(n.name)["State"]["StartedAt"])
                            for n in plan.nodes)
    if plan.settings.cni != "none":
        with ctx.status.step(cni.TITLE):
            cni.execute(ctx)
    with ctx.status.step(waitready.TITLE):
        waitready.execute(ctx)
    return ctx


def stop(names, *, timeout=NODE_STOP_TIMEOUT, engine=None):
    """Stop the node containers ``names`` all at once, so the whole stop takes one node's time.

    Returns one line per node that could not be stopped (the rest are stopped anyway).
    """
    eng = engine or containers
    failed = []

    def one(name):
        try:
            eng.stop_container(name, timeout)
        except DindindError as exc:
            failed.append(f"could not stop {name}: {exc.message}")

    threads = [threading.Thread(target=one, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failed
