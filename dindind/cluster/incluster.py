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
import subprocess
import sys
import time

DOCKERD_LOG = "/var/log/dockerd.log"
STATE = "/var/lib/dindind"
READY = "dindind: cluster ready"


def log(msg):
    print(f"dindind: {msg}", flush=True)


def start_dockerd(timeout=60):
    """Start dockerd and wait until it answers; return the process."""
    out = open(DOCKERD_LOG, "ab")
    p = subprocess.Popen(["dockerd", "--host=unix:///var/run/docker.sock"], stdout=out, stderr=out)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run(["docker", "version"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0:
            return p
        if p.poll() is not None:
            break
        time.sleep(0.3)
    with open(DOCKERD_LOG, "rb") as f:
        tail = f.read()[-2000:].decode(errors="replace")
    raise SystemExit(f"dindind: dockerd did not start:\n{tail}")


def load_node_image(ref, archive):
    """Load the node image from its archive unless the engine has it already."""
    if subprocess.run(["docker", "image", "inspect", ref], stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL).returncode == 0:
        log(f"node image {ref} already loaded")
        return
    t = time.monotonic()
    if archive.endswith(".zst"):
        z = subprocess.Popen(["zstd", "-dc", archive], stdout=subprocess.PIPE)
        rc = subprocess.run(["docker", "load", "-q"], stdin=z.stdout, stdout=subprocess.DEVNULL).returncode
        z.stdout.close()
        rc = rc or z.wait()
    else:
        rc = subprocess.run(["docker", "load", "-q", "-i", archive], stdout=subprocess.DEVNULL).returncode
    if rc:
        raise SystemExit(f"dindind: cannot load the node image from {archive}")
    log(f"node image {ref} loaded in {time.monotonic() - t:.1f}s")


def bring_up(settings, node_image):
    """Create the cluster, or restart the one this container already holds."""
    from dindind.docker import engine
    from dindind.cluster import create as create_mod
    from dindind.cluster import plan as plan_mod
    from dindind.cluster.actions import cni, provision, waitready
    from dindind.cluster.context import Context
    from dindind.cluster.status import Status

    existing = engine.containers({plan_mod.CLUSTER_LABEL: settings.name})
    kubeconfig_path = os.path.join(STATE, "kubeconfig")
    if existing and os.path.exists(kubeconfig_path):
        log(f"restarting {len(existing)} existing node(s)")
        plan = plan_mod.make_plan(settings)     # its fresh token is unused: every node has joined
        ctx = Context(plan=plan, node_image=node_image, status=Status())
        with open(kubeconfig_path, "rb") as f:
            ctx.kubeconfig = f.read()
        with ctx.status.step("Starting nodes"):
            for node in plan.nodes:
                engine.start_container(node.name)
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
    ctx = create_mod.create(plan, node_image, publish=("0.0.0.0", 6443))
    os.makedirs(STATE, exist_ok=True)
    fd = os.open(kubeconfig_path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(ctx.kubeconfig)
    os.replace(kubeconfig_path + ".tmp", kubeconfig_path)


def stop_nodes():
    out = subprocess.run(["docker", "ps", "-q", "--filter", "label=io.dindind.cluster"],
                         stdout=subprocess.PIPE, text=True).stdout.split()
    if out:
        subprocess.run(["docker", "stop", "-t", "20", *out], stdout=subprocess.DEVNULL)


def main(argv=None):
    stop = {"now": False}

    def on_term(signum, frame):
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    dockerd = start_dockerd()
    log("dockerd is up")
    node_image = os.environ["DINDIND_NODE_IMAGE"]
    load_node_image(node_image, os.environ["DINDIND_NODE_ARCHIVE"])
    settings_json = os.environ.get("DINDIND_CLUSTER")
    code = 0
    if settings_json:
        from dindind.cluster.plan import Settings
        from dindind.base.errors import DindindError

        settings = Settings.from_json(settings_json)
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
    dockerd.terminate()
    try:
        dockerd.wait(timeout=30)
    except subprocess.TimeoutExpired:
        dockerd.kill()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
