"""The host side of cluster lifecycles: what ``doit cluster:*`` runs.

Nested (the default): one top-level container of the cluster image runs
dockerd and the create actions inside (dindind.incluster); this side starts
it, relays its status lines, fetches the kubeconfig and checks readiness
through the published port. Non-nested (``cluster.nested: false``): the
same create actions run here against the host's engine, and so do the
image's restart and stop (dindind.cluster.create.restart and stop) for
``cluster:start`` and ``cluster:stop``.

State lives in labels (``io.dindind.cluster=<name>``), not in files: the
kubeconfig under artifacts/clusters/<name>/ is a convenience copy. ``down``
also removes what ``cluster:kubeconfig --merge`` added to the user's
kubeconfig (dindind.cluster.kubeconfig); ``down --all`` does it for every
cluster the engine holds.

Why one module of ~600 lines: it is the table of the ``cluster:*`` verbs
(up, down, status, logs, load, e2e), each a short function over the same
shell helpers for both modes; split per verb, every file would import the
same helpers back. The verbs that only read a cluster from outside
(``cluster:kubeconfig``, ``cluster:nodes``) live beside it in
dindind.cluster.access.
"""

import io
import ipaddress
import json
import os
import re
import shlex
import shutil
import socket
import tarfile
import time
from dataclasses import replace

from dindind.base import clusterconfig, config, fsutil, proc
from dindind.docker import containers
from dindind.base.errors import CommandError, DindindError, InputError
from dindind.cluster import api, create, hostcheck, inotify, inside, passthrough, plan as plan_mod
from dindind.cluster import conformance as conformance_mod
from dindind.cluster import registry as registry_mod
from dindind.cluster import kubeconfig as kubeconfig_mod
from dindind.cluster.actions import waitready
from dindind.cluster.status import Status

TOP_ROLE = "cluster"
NODES_LABEL = "io.dindind.nodes"
NESTED_LABEL = "io.dindind.nested"
CONTROL_PLANES_LABEL = "io.dindind.control-planes"      # on the top-level container; missing: 1
KUBECONFIG_IN = inside.KUBECONFIG
DEFAULT_E2E_SKIP = inside.DEFAULT_E2E_SKIP
TOP_TMPFS = {"/run": "rw", "/run/lock": "rw", "/tmp": "rw"}
STOP_TIMEOUT = 60      # seconds `docker stop` waits: the nodes stop in parallel within it
# cluster:e2e without pulls: containerd's fallback for every registry is a local port nothing listens on,
# so a pull is refused at once and the kubelet's event names the image (read at every pull: no restart)
NO_PULLS_DIR = "/etc/containerd/certs.d/_default"
NO_PULLS_HOSTS = ('# written by dindind cluster:e2e (cluster.e2e_pulls: false): no image leaves this machine\n'
                  'server = "http://127.0.0.1:9"\n\n[host."http://127.0.0.1:9"]\n  capabilities = ["pull", "resolve"]\n')


def top_name(name):
    return f"dindind-{name}"


def cluster_name(cfg, name=None):
    """The cluster name given, or the config's; checked by the one name rule."""
    return config.check_name(name or cfg.cluster["name"], "cluster name")


def cluster_dir(layout, name):
    return layout.cluster(name)


def kubeconfig_path(layout, name):
    return cluster_dir(layout, name) / "kubeconfig"


def _stamp(layout, which):
    return fsutil.read_json(layout.stamp(which), f"{which} image stamp", hint="run `doit build` first")


def settings_for(cfg, layout, name=None, workers=None, retain=False, wait=None, config_file=None):
    """The Settings of cluster:up: the build config's cluster keys, or the cluster config ``config_file``
    (dindind.base.clusterconfig) when one is given; the command line's name, workers and wait on top."""
    node = _stamp(layout, "node")
    c = cfg.cluster
    settings = plan_mod.Settings(
        name=cluster_name(cfg), workers=c["workers"], node_image=node["tags"][0],
        kubernetes_version=node["kubernetes_version"],
        pod_subnet=c["pod_subnet"], service_subnet=c["service_subnet"], node_subnet=c["node_subnet"],
        api_address=c["api_address"], api_port=c["api_port"], cni=c["cni"],
        kubelet_extra_args=tuple(c["kubelet_extra_args"]), kubeadm_patches=tuple(c["kubeadm_patches"]),
        wait=c["wait"] if wait is None else wait, retain=bool(retain))
    if config_file:
        settings = plan_mod.from_cluster_config(clusterconfig.load(config_file), settings)
        if workers is not None and settings.nodes:
            why = "it has more than one control plane" if settings.control_planes > 1 else \
                "its nodes have settings of their own"
            raise DindindError(f"--workers cannot change {config_file}: {why}",
                               hint="list the workers under nodes: in the cluster config")
    changes = {"name": cluster_name(cfg, name)} if name else {}
    if workers is not None:
        changes["workers"] = workers
    return replace(settings, **changes)


def _in_use(name):
    return containers.containers({plan_mod.CLUSTER_LABEL: name})


def _publish(settings):
    """(address, port) to publish the API server on; a random free port is picked
    here (as kind does), so it stays the same when the container restarts."""
    family = socket.AF_INET6 if ":" in settings.api_address else socket.AF_INET
    with socket.socket(family) as s:
        try:
            s.bind((settings.api_address, settings.api_port or 0))
        except OSError as exc:
            raise DindindError(
                f"cannot publish the API server on {settings.api_address}:{settings.api_port}: {exc.strerror}",
                hint="choose another cluster.api_port (0: a random free port) or cluster.api_address") from None
        return (settings.api_address, s.getsockname()[1])


def _host_port(container, address):
    ports = containers.inspect_container(container)["NetworkSettings"]["Ports"].get(f"{plan_mod.API_PORT}/tcp") or []
    for b in ports:
        if b.get("HostIp") in (address, "0.0.0.0", "::", ""):
            return int(b["HostPort"])
    raise DindindError(f"{container} publishes no API port")


def _export_kubeconfig(layout, name, kubeconfig, address, port):
    host = f"[{address}]" if ":" in address else address
    server = f"https://{host}:{port}"
    data = api.rewrite_server(kubeconfig, server)
    path = kubeconfig_path(layout, name)
    fsutil.write_bytes(path, data, mode=0o600)
    os.chmod(path, 0o600)
    return path, server


def _unexport(layout, name):
    """A failed up's kubeconfig out again, and the cluster's folder if that leaves it empty."""
    path = kubeconfig_path(layout, name)
    path.unlink(missing_ok=True)
    try:
        path.parent.rmdir()
    except OSError:
        pass            # absent, or it holds something else


def up(cfg, layout, name=None, workers=None, retain=False, wait=None, out=print, config_file=None):
    """Create a cluster and return the kubeconfig path (ready unless --wait 0); ``config_file``:
    a cluster config (apiVersion dindind.dev/v1alpha1) instead of the build config's cluster keys."""
    notice = clusterconfig.deprecation(cfg, with_config=bool(config_file))
    if notice:
        out(notice)
    settings = settings_for(cfg, layout, name, workers, retain, wait, config_file)
    hostcheck.require(settings)         # IPv6, ipvs, nftables: refused before anything is created
    if _in_use(settings.name):
        raise DindindError(f"a cluster named {settings.name!r} already exists",
                           hint=f"remove it with `doit cluster:down --name {settings.name}` or pick another --name")
    if not ipaddress.ip_address(settings.api_address).is_loopback:      # 127.0.0.0/8 and ::1 stay on this host
        out(f"WARNING: the API server of {settings.name} will listen on {settings.api_address}, "
            "reachable from other machines (cluster.api_address)")
    held = passthrough.hold_registry_port(settings)     # held: no other port is picked on it
    try:
        publish = _publish(settings)
        settings = passthrough.reserve_ports(settings, taken=[publish])
    finally:
        if held:
            held.close()
    for line in passthrough.warnings(settings) + registry_mod.warnings(settings):
        out(line)
    shortage = inotify.check(settings)
    if shortage:
        out(shortage)
    start = time.monotonic()
    if cfg.cluster["nested"]:
        path = _up_nested(layout, settings, publish, out, versioned=bool(config_file))
    else:
        path = _up_direct(layout, settings, publish, out)
    out(f"cluster {settings.name} is up in {time.monotonic() - start:.1f}s; kubeconfig: {path}")
    for line in passthrough.describe(settings) + registry_mod.describe(settings):
        out(line)
    sample = settings.kubernetes_version.endswith("+sample")
    out(f"  kubectl --kubeconfig {shlex.quote(str(path))} " + ("get --raw /api/v1/nodes   # the sample serves "
                                                               "only the node list" if sample else "get nodes"))
    return path


def _up_nested(layout, settings, publish, out, versioned=False):
    image = _stamp(layout, "cluster")["tags"][0]
    inner, top_mounts, top_ports = passthrough.nested(settings)
    top = top_name(settings.name)
    labels = {plan_mod.CLUSTER_LABEL: settings.name, plan_mod.ROLE_LABEL: TOP_ROLE,
              NODES_LABEL: str(len(settings.node_specs())), NESTED_LABEL: "true",
              CONTROL_PLANES_LABEL: str(settings.control_planes)}
    created = []
    try:
        privilege = containers.privilege_opts(image)
        volume = f"{top}-docker"
        containers.create_volume(volume, {plan_mod.CLUSTER_LABEL: settings.name, plan_mod.ROLE_LABEL: "volume"})
        created.append(("volume", volume))
        binds = {} if privilege.get("privileged") else {"/sys/fs/cgroup": "/sys/fs/cgroup"}
        created.append(("container", top))
        # the image's own contract, as `docker run` by hand: its defaults are this config's (the build
        # renders them into it); the arguments carry what the command line may change
        containers.run_container(image, top, labels=labels, hostname=top, volumes={volume: "/var/lib/docker", **binds},
                             tmpfs=dict(TOP_TMPFS), command=image_args(inner, versioned),
                             ports={plan_mod.API_PORT: publish, **top_ports}, mounts=top_mounts,
                             privilege=privilege, stop_timeout=STOP_TIMEOUT, restart={"Name": "unless-stopped"},
                             sysctls=dict(hostcheck.NESTED_SYSCTLS) if settings.ipv6 else None)
        _relay(top, settings, out)
        kubeconfig = containers.get_file(top, KUBECONFIG_IN)
        path, server = _export_kubeconfig(layout, settings.name, kubeconfig, publish[0], _host_port(top, publish[0]))
        if settings.wait > 0:
            # ready means ready from here too: through the published port, with the kubeconfig's credentials
            waitready.wait(path.read_bytes(), [n for n, _ in settings.node_names()], timeout=60,
                           registered=waitready.registered_is_enough(settings))
        return path
    except BaseException:
        if not settings.retain:
            _remove(created)
            _unexport(layout, settings.name)
        raise


def image_args(settings, versioned=False):
    """The arguments after the image (dindind.cluster.options) that ask for ``settings``: a cluster
    config's (``versioned``) as one --config-json; the build config's as the flags that change the
    image's defaults (which are that config's)."""
    if versioned or settings.nodes:
        doc = clusterconfig.to_json(plan_mod.to_cluster_config(settings))
        args = [f"--config-json={doc}", "--name", settings.name, "--wait", str(settings.wait)]
    else:
        args = ["--name", settings.name, "--workers", str(settings.workers), "--wait", str(settings.wait)]
        args += [f"--kubelet-arg={a}" for a in settings.kubelet_extra_args]
    return args + (["--retain"] if settings.retain else [])


def run_flags(privilege):
    """The ``docker run`` flags (besides -p and the image) a cluster container needs on this engine."""
    flags = containers.run_args(privilege)
    if not privilege.get("privileged"):
        flags += ["-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw"]
    for path in TOP_TMPFS:
        flags += ["--tmpfs", path]
    return flags + [f"--stop-timeout={STOP_TIMEOUT}"]


def _relay(top, settings, out):
    """Echo the top-level container's status lines until the cluster is ready or failed."""
    # HA: each further control plane joins on its own, one after the other
    deadline = time.monotonic() + max(settings.wait, 60) + 240 + 90 * (settings.control_planes - 1)
    tail = []
    for line in containers.stream_logs(top):
        tail = (tail + [line])[-40:]
        if line.startswith((" • ", " ✓ ", " ✗ ", "   ", "ERROR", "hint", "dindind: ")):
            out(line)
        if line == "dindind: cluster ready":
            return
        if line == "dindind: cluster failed" or time.monotonic() > deadline:
            break
    raise DindindError(f"cluster {settings.name} failed to come up",
                       detail="\n".join(tail[-15:]),
                       hint=f"retry with --retain and inspect: docker logs {top}; doit cluster:logs --name {settings.name}")


def _up_direct(layout, settings, publish, out):
    plan = plan_mod.make_plan(settings)
    ctx = create.create(plan, settings.node_image, publish=publish, status=Status())
    try:
        port = _host_port(api_container(plan), publish[0])
        path, _ = _export_kubeconfig(layout, settings.name, ctx.kubeconfig, publish[0], port)
        if settings.wait > 0:
            waitready.wait(path.read_bytes(), [n.name for n in plan.nodes], timeout=60,
                           registered=waitready.registered_is_enough(settings))
        return path
    except BaseException:
        if not settings.retain:
            create.rollback(ctx)
            _unexport(layout, settings.name)
        raise


def api_container(plan):
    """The container that publishes a non-nested cluster's API port: the load balancer (HA) or the control plane."""
    return (plan.load_balancer or plan.control_plane).name


def _remove(created):
    for kind, name in reversed(created):
        try:
            if kind == "container":
                containers.remove_container(name, volumes=True)
            else:
                containers.remove_volume(name)
        except DindindError:
            pass


def down(cfg, layout, name=None, all=False, out=print):
    """Remove a cluster (``all``: every dindind cluster on this engine), each fully: see :func:`_down`."""
    if not all:
        return _down(layout, cluster_name(cfg, name), out)
    if name:
        raise DindindError("--all and --name cannot be combined",
                           hint="doit cluster:down --all removes every cluster; --name N removes one")
    names = cluster_names()
    if not names:
        out("no dindind clusters")
    for n in names:
        _down(layout, n, out)
    return names


def cluster_names():
    """The name of every cluster with a container, volume or network on this engine (nested or not)."""
    label = {plan_mod.CLUSTER_LABEL: None}
    found = containers.containers(label) + containers.volumes(label) + containers.networks(label)
    return sorted({(f.get("Labels") or {}).get(plan_mod.CLUSTER_LABEL) for f in found} - {None})


def _down(layout, name, out):
    """Remove every container, volume and network labelled with the cluster name; then its merged
    kubeconfig entries and artifacts/clusters/<name> (a label value that is no valid name: labels only)."""
    label = {plan_mod.CLUSTER_LABEL: name}
    found = containers.containers(label)
    for c in found:
        containers.remove_container(c["Id"], volumes=True)
    vols = containers.volumes(label)
    for v in vols:
        containers.remove_volume(v["Name"])
    nets = containers.networks(label)
    for n in nets:
        containers.remove_network(n["Id"])
    forgotten = []
    if re.fullmatch(config.NAME_RE, name):
        d = cluster_dir(layout, name)
        forgotten = _forget(d, name, out)
        if d.exists():
            shutil.rmtree(d)
    if not (found or vols or nets):
        out(f"no cluster named {name!r}" + (f"; removed its entries from {', '.join(forgotten)}" if forgotten else ""))
    else:
        out(f"removed cluster {name}: {len(found)} container(s), {len(vols)} volume(s), {len(nets)} network(s)"
            + (f"; its kubeconfig entries from {', '.join(forgotten)}" if forgotten else ""))


def _forget(cdir, name, out):
    """Remove the ``dindind-<name>`` entries from every kubeconfig it was merged into (recorded in ``cdir``)
    and from the one a merge would use now; the paths changed. A file that cannot be changed: a warning."""
    targets = kubeconfig_mod.recorded(cdir)
    targets.setdefault(kubeconfig_mod.merge_path(), None)
    changed = []
    for path, previous in targets.items():
        try:
            if kubeconfig_mod.remove_from(path, name, previous):
                changed.append(str(path))
        except DindindError as exc:
            out(f"WARNING: {exc.message}; any entries {kubeconfig_mod.key(name)} in it are left there")
    return changed


def _top_of(name):
    """The top-level container of a nested cluster, None for a non-nested one, else a DindindError."""
    tops = containers.containers({plan_mod.CLUSTER_LABEL: name, plan_mod.ROLE_LABEL: TOP_ROLE})
    if tops:
        return tops[0]["Names"][0].lstrip("/")
    if containers.containers({plan_mod.CLUSTER_LABEL: name}):
        return None
    raise DindindError(f"no cluster named {name!r}", hint="see `doit cluster:status`")


def _direct_nodes(name):
    """The node containers of a non-nested cluster: [(name, labels)], the control plane first."""
    nodes = [(c["Names"][0].lstrip("/"), c.get("Labels") or {})
             for c in containers.containers({plan_mod.CLUSTER_LABEL: name})]
    nodes = [n for n in nodes if n[1].get(plan_mod.ROLE_LABEL) in ("control-plane", "worker", plan_mod.LB_ROLE)]
    return sorted(nodes, key=lambda n: (n[1].get(plan_mod.ROLE_LABEL) != "control-plane", n[0]))


def _direct_registry(name):
    """The local registry container of a non-nested cluster: [its name], or []."""
    return [c["Names"][0].lstrip("/") for c in containers.containers(
        {plan_mod.CLUSTER_LABEL: name, plan_mod.ROLE_LABEL: registry_mod.ROLE})]


def published_server(container):
    """``https://ADDRESS:PORT`` where ``container`` publishes the API port on the host, or None."""
    bindings = containers.inspect_container(container)["NetworkSettings"]["Ports"].get(f"{plan_mod.API_PORT}/tcp")
    for b in bindings or []:
        address = b.get("HostIp") or "0.0.0.0"
        address = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address, address)
        return f"https://{f'[{address}]' if ':' in address else address}:{b['HostPort']}"
    return None


def container_kubeconfig(container, server=None):
    """The kubeconfig of a running cluster container (``dindind kubeconfig`` inside), for use from here."""
    server = server or published_server(container)
    if server is None:
        raise DindindError(f"{container} publishes no port for the API server ({plan_mod.API_PORT})",
                           hint="give the address it is reachable at: kubeconfig CONTAINER --server https://HOST:PORT")
    code, text = containers.exec_in(container, ["dindind", "kubeconfig", "--server", server], check=False)
    if code != 0:
        raise DindindError(f"no kubeconfig from {container}: {text.strip().splitlines()[-1] if text.strip() else code}")
    return text


def stop(cfg, name=None, out=print):
    """Stop a cluster: a nested one's container (its nodes stop inside, within the stop grace period),
    or a non-nested one's nodes, all at once (the image's own stop, dindind.cluster.create.stop)."""
    name = cluster_name(cfg, name)
    top = _top_of(name)
    start = time.monotonic()
    if top:
        containers.stop_container(top, STOP_TIMEOUT)
    else:
        failed = create.stop([n for n, _ in _direct_nodes(name)] + _direct_registry(name))
        if failed:
            raise DindindError(f"cluster {name} did not stop cleanly", detail="\n".join(failed),
                               hint=f"retry `doit cluster:stop --name {name}`")
    out(f"stopped cluster {name} in {time.monotonic() - start:.1f}s (`doit cluster:start --name {name}` "
        "brings it back)")


def start(cfg, layout, name=None, timeout=300, out=print):
    """Start a stopped cluster again and wait until every node is Ready as reported after the start.

    Nested: the top-level container, whose entry point restarts its nodes.
    Non-nested: the same restart (dindind.cluster.create.restart) runs here,
    on the plan rebuilt from the settings the control plane carries.
    """
    name = cluster_name(cfg, name)
    top = _top_of(name)
    t0 = time.monotonic()
    if top is None:
        path = _start_direct(layout, name, timeout)
        out(f"cluster {name} is Ready again in {time.monotonic() - t0:.1f}s; kubeconfig: {path}")
        return
    path = kubeconfig_path(layout, name)
    containers.start_container(top)
    info = containers.inspect_container(top)
    if path.exists():
        # Ready as reported by kubelets since the start (the engine's clock): the API keeps serving the
        # Ready of before the stop for a while
        waitready.wait(path.read_bytes(), [n for n, _ in top_node_names(name, info)], timeout=timeout,
                       since=api.epoch(info["State"]["StartedAt"]))
        out(f"cluster {name} is Ready again in {time.monotonic() - t0:.1f}s; kubeconfig: {path}")
    else:
        out(f"started {top}; no kubeconfig at {path} to check readiness with")


def top_node_names(name, info):
    """[(node, role)] of a nested cluster, from its top-level container's ``docker inspect`` labels."""
    labels = (info.get("Config") or {}).get("Labels") or info.get("Labels") or {}
    count = int(labels.get(NODES_LABEL, "1"))
    planes = int(labels.get(CONTROL_PLANES_LABEL, "1"))
    return plan_mod.node_names(name, count - planes, planes)


def _start_direct(layout, name, timeout):
    """The image's restart, run here for a non-nested cluster; the kubeconfig exported again."""
    import dataclasses

    nodes = _direct_nodes(name)
    text = nodes[0][1].get(plan_mod.SETTINGS_LABEL) if nodes else None
    hint = f"recreate it: doit cluster:down --name {name} && doit cluster:up --name {name}"
    if not text:
        raise DindindError(f"cluster {name!r} carries no settings to restart from (label {plan_mod.SETTINGS_LABEL} "
                           "on its control plane)", hint=hint)
    try:
        settings = dataclasses.replace(plan_mod.Settings.from_json(text), wait=timeout)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:      # a label edited by hand
        raise DindindError(f"the settings label of cluster {name!r} cannot be read: {exc}", hint=hint) from None
    plan = plan_mod.make_plan(settings)
    # no kubeconfig given: the restart reads admin.conf from the control plane
    ctx = create.restart(plan, settings.node_image, None, status=Status())
    path, _ = _export_kubeconfig(layout, name, ctx.kubeconfig, settings.api_address,
                                 _host_port(api_container(plan), settings.api_address))
    return path


def clusters():
    """[{name, nodes, api, age, state, nested}] for every dindind cluster on this engine."""
    rows = {}
    for c in containers.containers({plan_mod.CLUSTER_LABEL: None}):
        labels = c.get("Labels") or {}
        name = labels.get(plan_mod.CLUSTER_LABEL)
        role = labels.get(plan_mod.ROLE_LABEL)
        row = rows.setdefault(name, {"name": name, "nodes": 0, "api": "-", "created": c["Created"],
                                     "state": c["State"], "nested": False})
        if role == TOP_ROLE:
            row["nested"] = True
            row["nodes"] = int(labels.get(NODES_LABEL, "0"))
        elif role in ("control-plane", "worker"):
            row["nodes"] += 1
        if role in (TOP_ROLE, "control-plane", plan_mod.LB_ROLE):
            if role != plan_mod.LB_ROLE:
                row["state"] = c["State"]
            for p in c.get("Ports") or []:
                if p.get("PrivatePort") == plan_mod.API_PORT and p.get("PublicPort"):
                    row["api"] = f"https://{p.get('IP', '127.0.0.1')}:{p['PublicPort']}"
        row["created"] = min(row["created"], c["Created"])
    return sorted(rows.values(), key=lambda r: r["name"])


def _age(created):
    s = int(time.time() - created)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def status(out=print):
    rows = clusters()
    if not rows:
        out("no dindind clusters")
        return rows
    out(f"{'NAME':<20} {'NODES':>5}  {'API':<28} {'AGE':>8}  STATE")
    for r in rows:
        out(f"{r['name']:<20} {r['nodes']:>5}  {r['api']:<28} {_age(r['created']):>8}  "
            f"{r['state']}{' (nested)' if r['nested'] else ''}")
    return rows


# ------------------------------------------------------------------ commands inside nodes

class Shell:
    """Run commands in a cluster's nodes, nested (through the top-level container) or not."""

    def __init__(self, name):
        self.name = name
        tops = containers.containers({plan_mod.CLUSTER_LABEL: name, plan_mod.ROLE_LABEL: TOP_ROLE})
        nodes = containers.containers({plan_mod.CLUSTER_LABEL: name})
        if not nodes:
            raise DindindError(f"no cluster named {name!r}", hint="see `doit cluster:status`")
        self.top = top_name(name) if tops else None
        # the nodes (containerd, kubelet), and apart from them an HA cluster's load balancer
        if self.top:
            code, text = containers.exec_in(self.top, ["docker", "ps", "--filter", f"label={plan_mod.CLUSTER_LABEL}={name}",
                                                   "--format", f'{{{{.Names}}}} {{{{.Label "{plan_mod.ROLE_LABEL}"}}}}'])
            found = [line.split() + [""] for line in text.splitlines() if line.strip()]
        else:
            found = [(c["Names"][0].lstrip("/"), (c.get("Labels") or {}).get(plan_mod.ROLE_LABEL)) for c in nodes]
        self.nodes = sorted(n for n, r, *_ in found if r in ("control-plane", "worker"))
        self.load_balancers = sorted(n for n, r, *_ in found if r == plan_mod.LB_ROLE)

    def run(self, node, cmd, check=True):
        if self.top:
            return containers.exec_in(self.top, ["docker", "exec", node] + list(cmd), check=check)
        return containers.exec_in(node, cmd, check=check)

    def top_run(self, cmd, check=True):
        """A command where the cluster's own engine CLI is (top-level container or host)."""
        if self.top:
            return containers.exec_in(self.top, cmd, check=check)
        code, out = proc.status(cmd)
        if check and code != 0:
            raise CommandError(cmd, code, out)
        return code, out


def logs(cfg, layout, name=None, out=print):
    """Collect docker inspect, kubelet/containerd journals and /var/log of every node."""
    import base64

    name = cluster_name(cfg, name)
    sh = Shell(name)
    dest = cluster_dir(layout, name) / "logs"
    with fsutil.atomic_dir(dest) as tmp:
        if sh.top:
            fsutil.write_text(tmp / f"{sh.top}.inspect.json", json.dumps(containers.inspect_container(sh.top), indent=2))
            fsutil.write_text(tmp / f"{sh.top}.log", containers.logs(sh.top))
            _, text = containers.exec_in(sh.top, ["cat", "/var/log/dockerd.log"], check=False)
            fsutil.write_text(tmp / "dockerd.log", text)
        for lb in sh.load_balancers:        # haproxy logs every connection and check to its stdout
            for what, cmd in (("inspect.json", ["docker", "inspect", lb]), ("haproxy.log", ["docker", "logs", lb])):
                _, text = sh.top_run(cmd, check=False)
                fsutil.write_text(tmp / lb / what, text)
        for node in sh.nodes:
            ndir = tmp / node
            _, text = sh.top_run(["docker", "inspect", node], check=False)
            fsutil.write_text(ndir / "inspect.json", text)
            for unit in ("kubelet", "containerd"):
                _, text = sh.run(node, ["journalctl", "--no-pager", "-u", unit], check=False)
                fsutil.write_text(ndir / f"{unit}.log", text)
            # the binary journal is exported as text above
            _, text = sh.run(node, ["sh", "-c", "tar -C /var/log --exclude=./journal -czf - . 2>/dev/null | base64 -w0"],
                             check=False)
            # files and directories only (the containers/*.log links are skipped), nothing outside var-log
            try:
                with tarfile.open(fileobj=io.BytesIO(base64.b64decode(text.strip() or b""))) as tf, \
                        fsutil.atomic_dir(ndir / "var-log") as vtmp:
                    fsutil.extract_tar(tf, vtmp, f"/var/log archive of {node}",
                                       members=(m for m in tf if m.isfile() or m.isdir()))
            except (tarfile.TarError, EOFError, ValueError, OSError, InputError) as exc:
                msg = exc.message if isinstance(exc, InputError) else exc
                fsutil.write_text(ndir / "var-log.error", f"cannot unpack /var/log of {node}: {msg}\n")
        # the local registry, when the cluster has one: its own log (docker-registry logs to stderr)
        reg = f"{name}-{registry_mod.ROLE}"
        code, text = sh.top_run(["docker", "logs", reg], check=False)
        if code == 0:
            fsutil.write_text(tmp / reg / "registry.log", text)
    out(f"logs of {name} in {dest}")
    return dest


def load(cfg, layout, images=(), archives=(), name=None, out=print):
    """Import host images and docker-archive files into every node's containerd (dindind.cluster.load)."""
    from dindind.cluster import load as loading

    images, archives = loading.check_args(images, archives)
    return loading.load(Shell(cluster_name(cfg, name)), layout, images, archives, out)


def _images_doc(layout):
    """The build's e2e-images.json (None when the node carries no e2e images)."""
    path = layout.e2e_images_json()
    return fsutil.read_json(path, "e2e image list") if path.is_file() else None


def e2e(cfg, layout, name=None, focus=None, skip=None, parallel=None, flake_attempts=None, conformance=False,
        out=print):
    """Run e2e.test under ginkgo against the cluster; JUnit XML into artifacts/clusters/<name>/e2e/.

    ``conformance``: the [Conformance] tests, minus those that need an image
    the build could not make (the generated skip list of e2e-images.json),
    and a summary (summary.json). A failed run exports the cluster's logs.
    """
    name = cluster_name(cfg, name)
    c = cfg.cluster
    parallel = parallel or c["e2e_parallel"]
    attempts = flake_attempts or c["e2e_flake_attempts"]
    image_skips = {}
    if conformance:
        doc = _images_doc(layout)
        if doc is None:
            out("WARNING: no e2e-images.json (node.e2e_images is off): tests that need an image the nodes "
                "lack will fail on the pull")
        image_skips = conformance_mod.image_skips(doc)
        skip = conformance_mod.skip_regex(image_skips, skip or c["e2e_skip"])
    else:
        skip = skip or c["e2e_skip"] or DEFAULT_E2E_SKIP
    sh = Shell(name)
    dest = cluster_dir(layout, name) / "e2e"
    # a conformance run says its skip list even when empty: `dindind e2e` would apply its default one
    args = [f"--nodes={parallel}", f"--flake-attempts={attempts}"]
    args += [f"--skip={skip or ''}"] if skip or conformance else []
    if conformance:
        args.append(f"--label-filter={conformance_mod.LABEL}")       # --focus narrows it further
    if focus:
        args.append(f"--focus={focus}")
    start = time.monotonic()
    if not c["e2e_pulls"]:
        _no_pulls(sh, True)
    try:
        code, text = _run_e2e(cfg, layout, name, sh, args, dest)
    finally:
        if not c["e2e_pulls"]:
            _no_pulls(sh, False)
    seconds = time.monotonic() - start
    junit = sorted(dest.rglob("junit*.xml"))
    out(text.rstrip()[-3000:])
    out(f"e2e results: {', '.join(str(j) for j in junit) or 'no JUnit XML'} (exit {code})")
    summary = None
    if conformance and junit:
        summary = conformance_mod.summarize(conformance_mod.read_junit(junit), image_skips)
        conformance_mod.write_summary(dest, summary, seconds, _images_doc(layout))
        out(conformance_mod.summary_text(summary, seconds))
        for t in summary["failed_tests"]:
            out(f"  FAILED {t}")
    if code != 0:
        hint = f"see {dest}"
        try:
            hint += f"; the cluster's logs: {logs(cfg, layout, name, out=lambda line: None)}"
        except DindindError as exc:
            hint += f" (exporting the cluster's logs failed too: {exc.message})"
        raise DindindError(f"e2e tests failed (exit {code})", hint=hint)
    return dest


def _no_pulls(sh, on):
    """Point (or stop pointing) every node's containerd registry fallback at a port nothing listens on."""
    script = (f"mkdir -p {NO_PULLS_DIR} && printf %s {shlex.quote(NO_PULLS_HOSTS)} > {NO_PULLS_DIR}/hosts.toml"
              if on else f"rm -rf {NO_PULLS_DIR}")
    for node in sh.nodes:
        sh.run(node, ["sh", "-c", script])


def _inside_e2e_arg(arg):
    """A ginkgo argument of cluster:e2e as `dindind e2e` takes it."""
    opt, _, value = arg.partition("=")
    return f"{ {'--nodes': '--parallel'}.get(opt, opt)}={value}"


def _run_e2e(cfg, layout, name, sh, args, dest):
    """ginkgo + e2e.test where the cluster's engine is; (exit code, output), reports copied into ``dest``."""
    if sh.top:
        # the image's own command, as `docker exec C dindind e2e ...` by hand (ginkgo's --nodes is its --parallel)
        cmd = ["dindind", "e2e"] + [_inside_e2e_arg(a) for a in args]
        code, text = containers.exec_in(sh.top, cmd, check=False)
        with fsutil.atomic_dir(dest) as tmp:
            fsutil.write_text(tmp / "e2e.log", text)
            containers.get_dir(sh.top, inside.E2E, tmp)
    else:
        from dindind.build.sources import tree as sources

        bins = sources.test_binaries(cfg, layout)
        with fsutil.atomic_dir(dest) as tmp:
            code, text = proc.status([bins["ginkgo"], f"--timeout={inside.GINKGO_TIMEOUT}", *args, bins["e2e.test"], "--",
                                      f"--kubeconfig={kubeconfig_path(layout, name)}", "--provider=skeleton",
                                      f"--report-dir={tmp}"])
            fsutil.write_text(tmp / "e2e.log", text)
    return code, text
