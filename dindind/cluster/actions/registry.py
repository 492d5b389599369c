"""The local registry (``registry:`` of the cluster config): its container beside the nodes, and every
node's containerd told to pull ``localhost:PORT/...`` from it (dindind.cluster.registry).

Runs after the nodes are provisioned (the network exists) and before kubeadm:
containerd reads hosts.toml at every pull, so no restart is needed. The
container and its volume are recorded for the rollback of a failed up.
"""

import time

from dindind.base.errors import DindindError
from dindind.cluster import registry

TITLE = "Starting the local registry"


def start(ctx, publish_address):
    """Create the volume and the container; wait until the registry answers on the node network."""
    plan = ctx.plan
    eng = ctx.engine
    eng.create_volume(plan.registry_name, registry.labels(plan))
    ctx.created.append(("volume", plan.registry_name))
    ctx.created.append(("container", plan.registry_name))
    eng.run_container(ctx.node_image, plan.registry_name, **registry.run_args(plan, publish_address))
    wait(ctx, plan.control_plane)


def wait(ctx, node, timeout=registry.WAIT):
    """Until ``GET /v2/`` answers 200 from ``node`` (the way containerd reaches it); else one error with its log."""
    url = f"{registry.endpoint(ctx.plan)}/v2/"
    probe = ["timeout", "3", "bash", "-c", registry.probe_script(ctx.plan)]
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        code, out = ctx.node_exec(node, probe, check=False)
        if code == 0:
            return
        time.sleep(0.5)
    try:
        log = ctx.engine.logs(ctx.plan.registry_name, tail=20)
    except DindindError as exc:
        log = exc.message
    raise DindindError(f"the local registry {ctx.plan.registry_name} did not answer at {url} within {timeout}s",
                       detail=(log or out).strip(),
                       hint=f"see `docker logs {ctx.plan.registry_name}`; keep it with --retain")


def configure_nodes(ctx):
    """hosts.toml for ``localhost:PORT`` in every node."""
    path = registry.hosts_path(ctx.plan.settings)
    text = registry.hosts_toml(ctx.plan)
    for node in ctx.plan.nodes:
        ctx.engine.put_file(node.name, path, text, mode=0o644)


def execute(ctx):
    # nested, registry_address is 0.0.0.0: the cluster container's, where the host's port arrives
    start(ctx, ctx.plan.settings.registry_address)
    configure_nodes(ctx)
