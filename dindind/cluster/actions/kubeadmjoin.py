"""kubeadm join on every worker, in parallel."""

import concurrent.futures
import time

from dindind.cluster.actions.config import run_kubeadm

TITLE = "Joining worker nodes"


def execute(ctx):
    workers = ctx.plan.workers
    if not workers:
        return
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(workers)) as pool:
        for f in [pool.submit(run_kubeadm, ctx, n, "join") for n in workers]:
            f.result()
    ctx.timings["join workers"] = time.monotonic() - start
