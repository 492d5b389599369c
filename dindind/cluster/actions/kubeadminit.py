"""kubeadm init on the first control-plane node (preflight skipped, as kind does).

HA: with ``--upload-certs``, kubeadm stores the control-plane certificates in
the cluster (the kubeadm-certs Secret, encrypted with the plan's certificate
key, for two hours), where the other control planes' joins fetch them; the
key is not printed (``--skip-certificate-key-print``).
"""

import time

from dindind.cluster.actions.config import run_kubeadm

TITLE = "Starting control-plane"
HA_FLAGS = ["--upload-certs", "--skip-certificate-key-print"]


def execute(ctx):
    cp = ctx.plan.control_plane
    start = time.monotonic()
    run_kubeadm(ctx, cp, "init", HA_FLAGS if ctx.plan.load_balancer else ())
    ctx.timings[f"init {cp.name}"] = time.monotonic() - start
    ctx.kubeconfig = ctx.engine.get_file(cp.name, "/etc/kubernetes/admin.conf")
