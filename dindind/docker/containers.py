"""Containers, volumes and networks: what a cluster is made of, and files in and out of them.

The engine's archives are untrusted like any other: what comes out of a
container goes through dindind.base.extract, the one safe extractor.
"""

import io
import os
import tarfile
import tempfile
import time
from pathlib import Path

from dindind.base import extract
from dindind.base.errors import CommandError, EngineError
from dindind.docker import engine

# The capability set that works where --privileged is refused (restricted VMs
# whose bounding set lacks CAP_SYS_RESOURCE): everything else, unconfined.
FALLBACK = {
    "cap_add": ["ALL"],
    "cap_drop": ["SYS_RESOURCE"],
    "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
    "device_cgroup_rules": ["a *:* rwm"],
}


PRIVILEGED = {"privileged": True, "security_opt": ["seccomp=unconfined", "apparmor=unconfined"]}


def privilege_opts(image):
    """The host-config options for a container that needs privilege.

    Tries ``--privileged`` once with a throwaway container; where the engine
    refuses it (CAP_SYS_RESOURCE outside the bounding set, as on restricted
    VMs) returns the capability fallback, FALLBACK. Detect, don't ask.
    """
    api = engine.client()
    for opts in (PRIVILEGED, FALLBACK):
        hc = api.create_host_config(**opts)
        name = f"dindind-probe-{os.getpid()}-{int(time.time() * 1000)}"
        try:
            c = api.create_container(image, command=["true"], entrypoint=[], host_config=hc, name=name,
                                     labels={"io.dindind.probe": "1"})
            try:
                api.start(c)
                if api.wait(c, timeout=60).get("StatusCode") == 0:
                    return dict(opts)
            finally:
                api.remove_container(c, force=True, v=True)
        except engine.sdk_errors():
            continue
    raise EngineError("the engine refuses both --privileged and the capability fallback",
                      hint="dindind needs an engine that can run systemd in a container")


def run_args(opts):
    """``docker run`` command-line flags for privilege options from privilege_opts()."""
    args = []
    if opts.get("privileged"):
        args.append("--privileged")
    args += [f"--cap-add={c}" for c in opts.get("cap_add", [])]
    args += [f"--cap-drop={c}" for c in opts.get("cap_drop", [])]
    args += [f"--security-opt={s}" for s in opts.get("security_opt", [])]
    args += [f"--device-cgroup-rule={r}" for r in opts.get("device_cgroup_rules", [])]
    return args


def create_network(name, subnet, labels, subnet6=None):
    """A user-defined bridge network (embedded DNS), labelled; ``subnet6``: IPv6 enabled, with that subnet."""
    api = engine.client()
    import docker.types

    pools = [docker.types.IPAMPool(subnet=subnet)] + ([docker.types.IPAMPool(subnet=subnet6)] if subnet6 else [])
    ipam = docker.types.IPAMConfig(pool_configs=pools)
    return engine.call(f"create network {name}", api.create_network, name, driver="bridge", ipam=ipam,
                 labels=labels, check_duplicate=True, enable_ipv6=bool(subnet6))["Id"]


def create_volume(name, labels):
    return engine.call(f"create volume {name}", engine.client().create_volume, name=name, labels=labels)["Name"]


def _port(p):
    """A container port as the engine names it: 6443 -> "6443/tcp"; "53/udp" stays."""
    return p if isinstance(p, str) else f"{p}/tcp"


def run_container(image, name, *, labels, command=None, entrypoint=None, hostname=None, network=None,
                  ip=None, volumes=None, tmpfs=None, ports=None, env=None, sysctls=None, privilege=None,
                  cgroupns=None, stop_signal=None, restart=None, binds_ro=None, stop_timeout=None, mounts=None,
                  user=None, files=None, ip6=None):
    """Create and start a container; return its id.

    ``user``: the user it runs as; ``files``: ``{path: (text, mode)}`` written into it before it starts
    (its own filesystem, not a tmpfs).

    ``volumes`` maps a volume name to a mount point; ``ports`` maps a container
    port (6443, or "53/udp") to ``(host address, host port)``; ``mounts`` is a
    list of ``(host path, container path, read only)`` bind mounts (the source
    must exist; any characters); ``privilege`` is privilege_opts() (or other host-config
    security options: cap_drop, security_opt, read_only); ``user``: the user it runs as;
    ``ip``/``ip6``: static addresses on ``network``.
    """
    api = engine.client()
    binds = {v: {"bind": p, "mode": "rw"} for v, p in (volumes or {}).items()}
    for src, dst in (binds_ro or {}).items():
        binds[src] = {"bind": dst, "mode": "ro"}
    hc = api.create_host_config(
        binds=binds or None, tmpfs=tmpfs, port_bindings={_port(p): (b[0],) if b[1] is None else b
                                                         for p, b in (ports or {}).items()} or None,
        mounts=[{"Type": "bind", "Source": src, "Target": dst, "ReadOnly": bool(ro)}
                for src, dst, ro in mounts] if mounts else None,
        sysctls=sysctls, restart_policy=restart, network_mode=network, init=False, **(privilege or {}))
    if cgroupns:
        hc["CgroupnsMode"] = cgroupns
    netcfg = None
    if network:
        netcfg = api.create_networking_config({network: api.create_endpoint_config(ipv4_address=ip, ipv6_address=ip6)})
    c = engine.call(f"create container {name}", api.create_container, image, command=command, entrypoint=entrypoint,
              name=name, hostname=hostname, labels=labels, environment=env, host_config=hc, tty=True,
              networking_config=netcfg, stop_signal=stop_signal, stop_timeout=stop_timeout, user=user,
              ports=[(int(p.split("/")[0]), p.split("/")[1]) if isinstance(p, str) else int(p)
                     for p in (ports or {})] or None,
              volumes=list((volumes or {}).values()) + list((binds_ro or {}).values()) or None)
    if files:
        _put_before_start(api, name, files)
    engine.call(f"start container {name}", api.start, c["Id"])
    return c["Id"]


def _tar(files):
    """An uncompressed tar of ``{path: (text or bytes, mode)}``, paths relative to /, owned by root."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for path, (data, mode) in sorted(files.items()):
            data = data.encode() if isinstance(data, str) else data
            ti = tarfile.TarInfo(str(path).lstrip("/"))
            ti.size, ti.mode, ti.mtime = len(data), mode, int(time.time())
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _put_before_start(api, container, files):
    """Write ``{path: (text, mode)}`` into a created container (owned by root) in one archive."""
    engine.call(f"copy {', '.join(sorted(files))} into {container}", api.put_archive, container, "/", _tar(files))


def start_container(name):
    engine.call(f"start container {name}", engine.client().start, name)


def stop_container(name, timeout):
    """``docker stop -t timeout name``: SIGTERM (or the container's stop signal), SIGKILL after ``timeout`` s."""
    engine.call(f"stop container {name}", engine.client().stop, name, timeout=timeout)


def inspect_container(name):
    return engine.call(f"inspect container {name}", engine.client().inspect_container, name)


def exec_in(container, cmd, *, check=True, environment=None, workdir=None):
    """Run ``cmd`` in a running container; return (exit code, combined output)."""
    api = engine.client()
    ex = engine.call(f"exec in {container}", api.exec_create, container, cmd, environment=environment, workdir=workdir)
    out = engine.call(f"exec in {container}", api.exec_start, ex["Id"])
    code = engine.call(f"exec in {container}", api.exec_inspect, ex["Id"])["ExitCode"]
    text = out.decode(errors="replace") if isinstance(out, bytes) else str(out)
    if check and code != 0:
        raise CommandError(["docker", "exec", container] + list(cmd), code, text)
    return code, text


def put_file(container, path, data, mode=0o644):
    """Write one small file into a running container.

    Goes through a staging file on the container's root filesystem and
    ``install``, because the engine's archive API cannot write into tmpfs
    mounts such as /tmp and /run.
    """
    stage = f".dindind-put-{os.getpid()}-{int(time.time() * 1e6)}"
    engine.call(f"copy {path} into {container}", engine.client().put_archive, container, "/",
                _tar({stage: (data, 0o600)}))
    exec_in(container, ["install", "-D", "-m", f"{mode:o}", f"/{stage}", str(path)])
    exec_in(container, ["rm", "-f", f"/{stage}"])


def get_file(container, path):
    """Read one (small) file out of a container."""
    stream, _ = engine.call(f"copy {path} out of {container}", engine.client().get_archive, container, path)
    buf = io.BytesIO(b"".join(stream))
    with tarfile.open(fileobj=buf) as tf:
        member = tf.getmembers()[0]
        return tf.extractfile(member).read()


def logs(container, tail="all"):
    out = engine.call(f"read logs of {container}", engine.client().logs, container, tail=tail)
    return out.decode(errors="replace")


def stream_logs(container):
    """Yield log lines of a container as they come (follow)."""
    buf = b""
    try:
        for chunk in engine.client().logs(container, stream=True, follow=True):
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                yield line.decode(errors="replace").rstrip("\r")
    except engine.sdk_errors() as exc:
        raise EngineError(f"failed to follow the logs of {container}: {engine.explain(exc)}") from None
    if buf:
        yield buf.decode(errors="replace")


def containers(labels, all=True):
    """Containers carrying every ``key=value`` label given."""
    flt = {"label": [f"{k}={v}" if v is not None else k for k, v in labels.items()]}
    return engine.call("list containers", engine.client().containers, all=all, filters=flt)


def volumes(labels):
    flt = {"label": [f"{k}={v}" if v is not None else k for k, v in labels.items()]}
    return engine.call("list volumes", engine.client().volumes, filters=flt).get("Volumes") or []


def networks(labels):
    flt = {"label": [f"{k}={v}" if v is not None else k for k, v in labels.items()]}
    return engine.call("list networks", engine.client().networks, filters=flt)


def remove_container(name, volumes=True):
    import docker

    try:
        engine.client().remove_container(name, force=True, v=volumes)
    except docker.errors.NotFound:
        pass
    except engine.sdk_errors() as exc:
        raise EngineError(f"failed to remove container {name}: {engine.explain(exc)}") from None


def remove_volume(name):
    import docker

    for attempt in range(10):
        try:
            engine.client().remove_volume(name, force=True)
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if exc.status_code == 409 and attempt < 9:  # still in use by a dying container
                time.sleep(0.5)
                continue
            raise EngineError(f"failed to remove volume {name}: {engine.explain(exc)}") from None


def remove_network(name):
    import docker

    try:
        engine.client().remove_network(name)
    except docker.errors.NotFound:
        pass
    except engine.sdk_errors() as exc:
        raise EngineError(f"failed to remove network {name}: {engine.explain(exc)}") from None


def dangling_volumes():
    return {v["Name"] for v in (engine.call("list volumes", engine.client().volumes, filters={"dangling": True})
                                 .get("Volumes") or [])}


def put_archive_files(container, directory, files, mode=0o644):
    """Stream files on disk into a container, as ``directory/name`` for each ``(name, path)`` of ``files``,
    in one archive (one request), without reading any of them into memory."""

    def stream():
        for name, path in files:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                ti = tarfile.TarInfo(name)
                ti.size, ti.mode, ti.mtime = size, mode, int(time.time())
                yield ti.tobuf(format=tarfile.GNU_FORMAT)
                left = size
                while left > 0:
                    chunk = f.read(min(1 << 20, left))
                    if not chunk:
                        raise EngineError(f"{path} shrank while it was copied into {container}")
                    left -= len(chunk)
                    yield chunk
                yield b"\0" * ((512 - size % 512) % 512)
        yield b"\0" * 1024

    api = engine.client()
    url = api._url("/containers/{0}/archive", container)
    what = ", ".join(name for name, _ in files)
    try:
        res = api._put(url, params={"path": directory}, data=stream(), headers={"Content-Type": "application/x-tar"})
        api._raise_for_status(res)
    except engine.sdk_errors() as exc:
        raise EngineError(f"failed to copy {what} into {container}: {engine.explain(exc)}") from None


def get_dir(container, path, dest):
    """Copy a directory out of a container into ``dest`` (contents only).

    The engine's archive is untrusted like any other: it goes through
    extract.extract_tar; only its files and directories are copied (links and
    other entries are skipped), never anything outside ``dest``.
    """
    stream, _ = engine.call(f"copy {path} out of {container}", engine.client().get_archive, container, path)
    base = Path(path).name

    def strip(name):
        parts = name.split("/")
        return "/".join(parts[1:]) if len(parts) > 1 and parts[0] == base else None

    with tempfile.TemporaryFile(dir=Path(dest).parent) as f:
        for chunk in stream:
            f.write(chunk)
        f.seek(0)
        label = f"copy of {path} from {container}"
        try:
            tf = tarfile.open(fileobj=f)
        except (tarfile.TarError, EOFError) as exc:
            raise EngineError(f"cannot read the {label}: {exc}") from None
        with tf:
            extract.extract_tar(tf, dest, label, rename=strip, members=(m for m in tf if m.isfile() or m.isdir()))


def stop_containers(labels, timeout=20):
    """Stop every running container carrying the ``labels`` (``docker stop -t timeout``)."""
    for c in containers(labels, all=False):
        engine.call(f"stop container {c['Id'][:12]}", engine.client().stop, c["Id"], timeout=timeout)
