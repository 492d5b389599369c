"""HA: kubeadm join --control-plane on every control plane after the first, one at a time.

Each join adds an etcd member, and etcd takes one new member at a time (a
member added while another has not started yet leaves the cluster without
quorum), so the joins run in order, as kind's do. The join configuration
carries ``controlPlane`` and, in the copy kubeadm reads while it runs, the
certificate key that decrypts the certificates ``kubeadm init --upload-certs``
stored (dindind.cluster.actions.config.run_kubeadm).
"""

import time

from dindind.cluster.actions.config import run_kubeadm

TITLE = "Joining more control-plane nodes"


def execute(ctx):
    for node in ctx.plan.control_planes[1:]:
        start = time.monotonic()
        run_kubeadm(ctx, node, "join")
        took = ctx.timings[f"join {node.name}"] = time.monotonic() - start
        ctx.status.info(f"{node.name} joined in {took:.1f}s")
