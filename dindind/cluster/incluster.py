"""PID 1 of the cluster image: the Docker engine, the node image, the cluster.

Runs inside the top-level container (nested mode). The cluster's settings
are the ones the image was built for (options.DEFAULTS), changed by the
arguments after the image (options.parse; a bad one: one line, exit 2).
What this kernel cannot do for them (IPv6, ipvs, nftables:
dindind.cluster.hostcheck) is refused next, exit 3, before anything starts.
Side effects: starts ``dockerd`` (its data on the /var/lib/docker volume);
loads the embedded node image unless the engine already has it; creates the
cluster with dindind.cluster.create — or, when this container was stopped
and started again, starts its existing nodes — writes the admin kubeconfig
(server: the control plane's address on the node network) to
/var/lib/dindind/kubeconfig and prints ``dindind: cluster ready``. The
phase (PHASE: starting, ready, failed, engine, stopping) is what ``dindind
status`` and the HEALTHCHECK read. Then it waits; SIGTERM (also during
bring-up) stops the nodes, in parallel, and dockerd, and exits 0.
"""

import os
import signal
import sys
import time

from dindind.base import proc
from dindind.base.errors import ConfigError, DindindError
from dindind.cluster import api
from dindind.cluster import create as create_mod
from dindind.cluster import hostcheck
from dindind.cluster import options
from dindind.cluster.inside import KUBECONFIG, PHASE, SETTINGS
from dindind.cluster import plan as plan_mod
from dindind.docker import containers, engine, images

DOCKERD_LOG = "/var/log/dockerd.log"
READY = "dindind: cluster ready"
NODE_STOP_TIMEOUT = create_mod.NODE_STOP_TIMEOUT


class Stopping(BaseException):
    """SIGTERM arrived during bring-up."""


def log(msg):
    print(f"dindind: {msg}", flush=True)


def _write(path, data, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    os.replace(path + ".tmp", path)


def set_phase(phase):
    _write(PHASE, phase + "\n")


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
    if existing and os.path.exists(KUBECONFIG):
        log(f"restarting {len(existing)} existing node(s)")
        with open(KUBECONFIG, "rb") as f:
            kubeconfig = f.read()
        # the plan's fresh token is unused: every node has joined
        create_mod.restart(plan_mod.make_plan(settings), node_image, kubeconfig)
        return
    plan = plan_mod.make_plan(settings)
    ctx = create_mod.create(plan, node_image, publish=("0.0.0.0", plan_mod.API_PORT))
    # kubeadm names the control plane by its container name, which only the node network
    # resolves; its static address is a SAN of the API certificate and reachable from here
    # (HA: the load balancer's address, also a SAN)
    address = plan.load_balancer.ip if plan.load_balancer else ctx.node_ips.get(plan.control_plane.name,
                                                                                plan.control_plane.ip)
    server = f"https://{address}:{plan_mod.API_PORT}"
    _write(KUBECONFIG, api.rewrite_server(ctx.kubeconfig, server), 0o600)
    _write(SETTINGS, settings.to_json())


def stop_nodes():
    """Stop every node at once (each gets NODE_STOP_TIMEOUT s), so the whole stop fits the grace period."""
    try:
        nodes = containers.containers({plan_mod.CLUSTER_LABEL: None}, all=False)
    except DindindError as exc:          # stopping anyway: dockerd stops what is left
        log(f"could not list the nodes: {exc.message}")
        return
    for line in create_mod.stop([c["Names"][0].lstrip("/") for c in nodes], timeout=NODE_STOP_TIMEOUT):
        log(line)
    log(f"stopped {len(nodes)} node(s)")


def run_e2e(e2e_args):
    """``dindind e2e`` against the ready cluster; its exit code (JUnit XML under inside.E2E)."""
    log("running e2e")
    code, out = proc.status(["dindind", "e2e", *e2e_args])
    print(out.rstrip(), flush=True)
    log(f"e2e finished: exit {code}")
    return code


NEEDED_CAPS = {"CAP_SYS_ADMIN": 21, "CAP_NET_ADMIN": 12}     # mounts and cgroups; bridges and iptables


def missing_privileges(status_text, cgroup_writable):
    """What this container lacks to run an engine and systemd nodes, from /proc/self/status's text."""
    eff = next((int(line.split()[1], 16) for line in status_text.splitlines() if line.startswith("CapEff:")), 0)
    missing = [name for name, bit in NEEDED_CAPS.items() if not eff >> bit & 1]
    if not cgroup_writable:
        missing.append("a writable /sys/fs/cgroup")
    return missing


def check_privileges():
    with open("/proc/self/status") as f:
        missing = missing_privileges(f.read(), os.access("/sys/fs/cgroup", os.W_OK))
    if missing:
        raise DindindError(f"this container lacks {', '.join(missing)}",
                           hint="run it with the flags `python -m dindind run-flags` prints for your engine")


def read_args(argv):
    """options.Args from the image's defaults and ``argv``."""
    try:
        with open(options.DEFAULTS) as f:
            text = f.read()
    except OSError as exc:
        raise DindindError(f"cannot read the image's default settings {options.DEFAULTS}: {exc.strerror}",
                           hint="rebuild the cluster image with `doit build`") from None
    return options.parse(argv, options.load_defaults(text))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = read_args(argv)
    except ConfigError as exc:          # a cluster config: every problem, one line each
        print(exc.render(), flush=True)
        return 2
    except DindindError as exc:
        # one line: docker logs shows it, and the container exits at once
        print(f"ERROR: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""), flush=True)
        return 2
    if args.help:
        print(options.help_text(args.settings), flush=True)
        return 0
    try:
        check_privileges()
    except DindindError as exc:
        print(f"ERROR: {exc.message} ({exc.hint})", flush=True)
        return 3
    settings = args.settings
    try:
        hostcheck.require(settings, nested=True)    # before the engine starts: nothing is created
    except DindindError as exc:
        print(exc.render(), flush=True)
        return 3
    state = {"stop": False, "raise": False}

    def on_term(signum, frame):
        state["stop"] = True
        if state["raise"]:
            state["raise"] = False
            raise Stopping()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    set_phase("starting")
    try:
        dockerd = engine.start_dockerd(DOCKERD_LOG, args=["--host=unix:///var/run/docker.sock"])
        log("dockerd is up")
        node_image = os.environ["DINDIND_NODE_IMAGE"]
        load_node_image(node_image, os.environ["DINDIND_NODE_ARCHIVE"])
    except DindindError as exc:
        set_phase("failed")
        print(exc.render(), flush=True)
        return 1
    code = 0
    if args.no_cluster:
        set_phase("engine")
        log("ready")
    else:
        try:
            state["raise"] = not state["stop"]
            if state["raise"]:
                bring_up(settings, node_image)
                state["raise"] = False
                set_phase("ready")
                log("cluster ready")
                if args.e2e:             # a Job's pod: the e2e result is this container's
                    code = run_e2e(args.e2e_args())
                    state["stop"] = True
        except Stopping:
            log("stop requested during bring-up")
        except DindindError as exc:
            state["raise"] = False
            set_phase("failed")
            print(exc.render(), flush=True)
            log("cluster failed")
            code = 1
            state["stop"] = state["stop"] or not settings.retain     # --retain keeps it up for inspection
        finally:
            state["raise"] = False
    while not state["stop"]:
        try:
            os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pass
        if dockerd.poll() is not None:
            set_phase("failed")
            log("dockerd exited")
            return 1
        time.sleep(0.5)
    set_phase("stopping")
    log("stopping")
    stop_nodes()
    proc.stop(dockerd, timeout=30)
    return code


if __name__ == "__main__":
    sys.exit(main())
