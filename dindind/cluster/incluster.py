"""PID 1 of the cluster image: the Docker engine, the node image, the cluster.

Runs inside the top-level container (nested mode). Side effects: starts
``dockerd`` (its data on the /var/lib/docker volume); loads the embedded node
image unless the engine already has it; with DINDIND_CLUSTER set (the
settings as JSON), creates the cluster with dindind.cluster.create — or, when
this container was stopped and started again, starts its existing nodes —
writes the admin kubeconfig to /var/lib/dindind/kubeconfig and prints
``dindind: cluster ready``. Then it waits; SIGTERM stops the nodes and
dockerd cleanly and exits 0.
"""

import os
import signal
import sys
import time

from dindind.base import proc
from dindind.base.errors import DindindError
from dindind.cluster import create as create_mod
from dindind.cluster import plan as plan_mod
from dindind.cluster.actions import cni, provision, waitready
from dindind.cluster.context import Context
from dindind.cluster.status import Status
from dindind.docker import containers, engine, images

DOCKERD_LOG = "/var/log/dockerd.log"
STATE = "/var/lib/dindind"
READY = "dindind: cluster ready"


def log(msg):
    print(f"dindind: {msg}", flush=True)


def load_node_image(ref, archive):
    """Load the node image from its archive unless the engine has it already."""
    t = time.monotonic()
    if not images.load_archive(ref, archive):
        log(f"node image {ref} already loaded")
        return
    log(f"node image {ref} loaded in {time.monotonic() - t:.1f}s")


def bring_up(settings, node_image):
    """Create the cluster, or restart the one this container already holds."""
    existing = containers.containers({plan_mod.CLUSTER_LABEL: settings.name})
    kubeconfig_path = os.path.join(STATE, "kubeconfig")
    if existing and os.path.exists(kubeconfig_path):
        log(f"restarting {len(existing)} existing node(s)")
        plan = plan_mod.make_plan(settings)     # its fresh token is unused: every node has joined
        ctx = Context(plan=plan, node_image=node_image, status=Status())
        with open(kubeconfig_path, "rb") as f:
            ctx.kubeconfig = f.read()
        with ctx.status.step("Starting nodes"):
            for node in plan.nodes:
                containers.start_container(node.name)
            for node in plan.nodes:
                provision.wait_for_systemd(ctx, node)
                ctx.node_ips[node.name] = node.ip
        if settings.cni != "none":
            with ctx.status.step(cni.TITLE):
                cni.execute(ctx)
        with ctx.status.step(waitready.TITLE):
            waitready.execute(ctx)
        return
    plan = plan_mod.make_plan(settings)
    ctx = create_mod.create(plan, node_image, publish=("0.0.0.0", plan_mod.API_PORT))
    os.makedirs(STATE, exist_ok=True)
    fd = os.open(kubeconfig_path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(ctx.kubeconfig)
    os.replace(kubeconfig_path + ".tmp", kubeconfig_path)


def stop_nodes():
    try:
        containers.stop_containers({plan_mod.CLUSTER_LABEL: None}, timeout=20)
    except DindindError as exc:          # stopping anyway: dockerd stops what is left
        log(f"could not stop the nodes: {exc.message}")


def main(argv=None):
    stop = {"now": False}

    def on_term(signum, frame):
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        dockerd = engine.start_dockerd(DOCKERD_LOG, args=["--host=unix:///var/run/docker.sock"])
        log("dockerd is up")
        node_image = os.environ["DINDIND_NODE_IMAGE"]
        load_node_image(node_image, os.environ["DINDIND_NODE_ARCHIVE"])
    except DindindError as exc:
        print(exc.render(), flush=True)
        return 1
    settings_json = os.environ.get("DINDIND_CLUSTER")
    code = 0
    if settings_json:
        settings = plan_mod.Settings.from_json(settings_json)
        try:
            bring_up(settings, node_image)
            log("cluster ready")
        except DindindError as exc:
            print(exc.render(), flush=True)
            log("cluster failed")
            code = 1
            stop["now"] = not settings.retain     # --retain keeps it up for inspection
    else:
        log("ready")
    while not stop["now"]:
        try:
            os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pass
        if dockerd.poll() is not None:
            log("dockerd exited")
            return 1
        time.sleep(0.5)
    log("stopping")
    stop_nodes()
    proc.stop(dockerd, timeout=30)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
