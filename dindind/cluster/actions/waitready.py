"""Wait until the API answers with the admin credentials and every node reports Ready.

Without a pod network (``disableDefaultCNI``) no node can be Ready until the
user installs one (kind's --wait would time out): then the wait ends when
every node has registered, and a line says what is missing.
"""

import time

from dindind.base.errors import DindindError
from dindind.cluster import api
from dindind.cluster.plan import API_PORT

TITLE = "Waiting for nodes to be Ready"


def registered_is_enough(settings):
    """Whether a wait for ``settings``' nodes ends at registered rather than Ready: no pod network of ours."""
    return settings.cni == "none"


def wait(kubeconfig, names, timeout, server=None, sleep=1.0, since=None, registered=False):
    """Poll /api/v1/nodes until every node in ``names`` is Ready; return seconds waited.

    ``registered``: until every node is in the list, Ready or not.

    ``since``: after a restart, the epoch second from which a node's kubelet
    must have reported for its Ready to count (api.node_readiness).
    """
    start = time.monotonic()
    last = "no answer yet"
    while True:
        try:
            ready = api.node_readiness(kubeconfig, server, since=since)
            missing = [n for n in names if n not in ready] if registered else [n for n in names if not ready.get(n)]
            if not missing:
                return time.monotonic() - start
            last = f"{'not registered' if registered else 'not Ready'}: {', '.join(missing)}"
        except (OSError, DindindError) as exc:
            last = str(exc).splitlines()[0]
        if time.monotonic() - start > timeout:
            raise DindindError(f"the cluster was not ready within {timeout}s ({last})",
                               hint="wait longer with --wait SECONDS, or keep it with --retain and `doit cluster:logs`")
        time.sleep(sleep)


def execute(ctx):
    if ctx.plan.settings.wait <= 0:
        return
    # the kubeconfig names the control plane by its container name, which only
    # the nodes' network resolves: ask its address instead (a SAN of the cert); HA: the load balancer's
    lb = ctx.plan.load_balancer
    server = f"https://{lb.ip if lb else ctx.node_ips[ctx.plan.control_plane.name]}:{API_PORT}"
    no_network = registered_is_enough(ctx.plan.settings)
    waited = wait(ctx.kubeconfig, [n.name for n in ctx.plan.nodes], ctx.plan.settings.wait, server=server,
                  since=ctx.restarted, registered=no_network)
    if no_network:
        ctx.status.info(f"{len(ctx.plan.nodes)} nodes registered after {waited:.1f}s; no pod network "
                        "(disableDefaultCNI): they become Ready once you install one")
    else:
        ctx.status.info(f"{len(ctx.plan.nodes)} nodes Ready after {waited:.1f}s")
