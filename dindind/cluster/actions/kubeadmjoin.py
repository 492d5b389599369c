"""kubeadm join on every worker, in parallel."""

import concurrent.futures

from ...errors import DindindError
from .config import PATH

TITLE = "Joining worker nodes"


def _join(ctx, node):
    code, out = ctx.node_exec(node, ["kubeadm", "join", f"--config={PATH}", "--skip-phases=preflight", "--v=6"],
                              check=False)
    if code != 0:
        raise DindindError(f"failed to join node {node.name} with kubeadm (exit {code})",
                           detail="\n".join(out.splitlines()[-30:]),
                           hint=f"docker exec {node.name} kubeadm join --config={PATH} --skip-phases=preflight")


def execute(ctx):
    workers = ctx.plan.workers
    if not workers:
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(workers)) as pool:
        for f in [pool.submit(_join, ctx, n) for n in workers]:
            f.result()
