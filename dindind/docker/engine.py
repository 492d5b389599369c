"""The one module that talks to the Docker engine.

Everything else in dindind works on paths and values. Functions here raise
:class:`EngineError` with a message a user can act on; an unreachable engine
is one line saying how to start one.
"""

import collections
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path

from dindind.base import fsutil, proc
from dindind.base.errors import EngineError

SOCKET = "/var/run/docker.sock"
START_HINT = ("start one: `python -m dindind engine` installs Debian's docker.io if missing "
              "and starts dockerd (as root); or `systemctl start docker`")

# The capability set that works where --privileged is refused (DESIGN.md).
FALLBACK = {
    "cap_add": ["ALL"],
    "cap_drop": ["SYS_RESOURCE"],
    "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
    "device_cgroup_rules": ["a *:* rwm"],
}
PRIVILEGED = {"privileged": True, "security_opt": ["seccomp=unconfined", "apparmor=unconfined"]}


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


# ------------------------------------------------------------------ the fast path

def _socket_path():
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        return host[len("unix://"):]
    return SOCKET


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=5):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def _raw_get(path, timeout=5):
    """GET an engine API path without importing the SDK (for up-to-date checks)."""
    conn = _UnixConnection(_socket_path(), timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except OSError as exc:
        raise EngineError(f"cannot reach the Docker engine at unix://{_socket_path()}: {exc.strerror or exc}",
                          hint=START_HINT) from None
    finally:
        conn.close()


def ping():
    """True if an engine answers on the socket."""
    try:
        status, _ = _raw_get("/_ping", timeout=3)
    except EngineError:
        return False
    return status == 200


def image_id(ref):
    """The id of an image in the engine, or None if it is not there."""
    status, body = _raw_get("/images/" + urllib.parse.quote(ref, safe=":@/") + "/json")
    if status == 404:
        return None
    if status != 200:
        raise EngineError(f"cannot inspect image {ref}: HTTP {status} {body[:200]!r}")
    return json.loads(body)["Id"]


def stamp_uptodate(stamp_path):
    """doit ``uptodate`` check: the stamp exists and its image is still in the engine
    under every tag the stamp records (a removed or moved tag counts as gone)."""
    try:
        stamp = json.loads(Path(stamp_path).read_text())
        return all(image_id(ref) == stamp["id"] for ref in [stamp["id"], *stamp["tags"]])
    except (OSError, ValueError, KeyError, EngineError):
        # engine unreachable: not known to be up to date; the action then fails with one clear line
        return False


# ------------------------------------------------------------------ the SDK

_CLIENT = None


def client():
    """A docker SDK APIClient, or EngineError with how to start an engine."""
    global _CLIENT
    if _CLIENT is None:
        import docker

        if not ping():
            raise EngineError(f"cannot reach the Docker engine at unix://{_socket_path()}", hint=START_HINT)
        try:
            _CLIENT = docker.APIClient(base_url=f"unix://{_socket_path()}", version="auto", timeout=600)
        except docker.errors.DockerException as exc:
            raise EngineError(f"cannot talk to the Docker engine: {exc}", hint=START_HINT) from None
    return _CLIENT


def _sdk_errors():
    import docker
    import requests

    return (docker.errors.DockerException, requests.exceptions.RequestException)


def inspect_image(ref):
    try:
        return client().inspect_image(ref)
    except _sdk_errors() as exc:
        raise EngineError(f"cannot inspect image {ref}: {exc}") from None


def split_ref(ref):
    """'host:5000/a/b:tag' -> ('host:5000/a/b', 'tag'); the tag defaults to 'latest'."""
    repo, _, t = ref.rpartition(":")
    if "/" in t or not repo:
        return ref, "latest"
    return repo, t


def tag(image, ref):
    repo, t = split_ref(ref)
    client().tag(image, repo, t, force=True)


def build(context_tar, tags, *, labels=None, buildargs=None, log_path=None, echo=print):
    """Build an image from a context tarball; return its id.

    Streams the context and the build log; prints each Dockerfile step. On
    failure raises EngineError naming the failing step with the log's tail.
    With DINDIND_NO_CACHE=1 in the environment no cached layer is used
    (``docker build --no-cache``; bench/reproducible.py measures with it).
    """
    tail = collections.deque(maxlen=40)
    step = None
    image = None
    log = open(log_path, "w") if log_path else None
    try:
        with open(context_tar, "rb") as ctx:
            stream = client().build(fileobj=ctx, custom_context=True, tag=tags[0], labels=labels or {},
                                    buildargs=buildargs or {}, rm=True, forcerm=True, pull=False,
                                    nocache=no_cache(), decode=True)
            for event in stream:
                if "stream" in event:
                    text = event["stream"]
                    if log:
                        log.write(text)
                    for line in _ANSI.sub("", text).splitlines():
                        if not line.strip():
                            continue
                        tail.append(line)
                        if line.startswith("Step "):
                            step = line
                            echo(f"  {line}")
                        m = re.match(r"^Successfully built ([0-9a-f]+)", line)
                        if m:
                            image = m.group(1)
                elif "aux" in event and "ID" in event["aux"]:
                    image = event["aux"]["ID"]
                elif "error" in event or "errorDetail" in event:
                    msg = event.get("error") or event["errorDetail"].get("message", "")
                    if log:
                        log.write(msg + "\n")
                    raise EngineError(
                        f"docker build of {tags[0]} failed at {step or 'the start'}: {msg.strip()}",
                        detail="\n".join(tail),
                        hint=f"full log: {log_path}" if log_path else None)
    except _sdk_errors() as exc:
        raise EngineError(f"docker build of {tags[0]} failed: {exc}", detail="\n".join(tail)) from None
    finally:
        if log:
            log.close()
    if image is None:
        raise EngineError(f"docker build of {tags[0]} reported no image id", detail="\n".join(tail))
    full = inspect_image(image)["Id"]
    for ref in tags[1:]:
        tag(full, ref)
    return full


def import_rootfs(tar_path, ref, changes):
    """``docker import`` a root filesystem tarball; return the image id."""
    repo, t = split_ref(ref)
    try:
        # import_image_from_file streams the file with its length; the _stream
        # variant sends a chunked header that dockerd 20.10 rejects.
        out = client().import_image_from_file(str(tar_path), repository=repo, tag=t, changes=changes)
    except _sdk_errors() as exc:
        raise EngineError(f"docker import of {ref} failed: {exc}") from None
    status = out if isinstance(out, str) else json.dumps(out)
    if "error" in status.lower():
        raise EngineError(f"docker import of {ref} failed: {status[-500:]}")
    return inspect_image(ref)["Id"]


def pull(ref):
    try:
        client().pull(ref)
    except _sdk_errors() as exc:
        raise EngineError(f"cannot pull {ref}: {exc}",
                          hint="pull or load it yourself, or unset base.image to build one with debootstrap") from None
    return inspect_image(ref)["Id"]


def save(ref, out_path, compress="zstd", level=3):
    """``docker save`` an image to ``out_path``, streamed, optionally zstd-compressed.

    Never holds the image in memory; the file appears only when complete.
    """
    chunks = save_chunks(ref)
    with fsutil.atomic_path(out_path) as tmp:
        with open(tmp, "wb") as out:
            if compress == "zstd":
                z = subprocess.Popen(["zstd", "-q", f"-{level}", "-T0", "-c"], stdin=subprocess.PIPE, stdout=out)
                try:
                    for chunk in chunks:
                        z.stdin.write(chunk)
                finally:
                    z.stdin.close()
                    rc = z.wait()
                if rc != 0:
                    raise EngineError(f"zstd failed while saving {ref}")
            else:
                for chunk in chunks:
                    out.write(chunk)
        os.chmod(tmp, 0o644)
    return Path(out_path)


# ------------------------------------------------------------------ privileged containers

def privilege_opts(image):
    """The host-config options for a container that needs privilege.

    Tries ``--privileged`` once with a throwaway container; where the engine
    refuses it (CAP_SYS_RESOURCE outside the bounding set, as on restricted
    VMs) returns the capability fallback from DESIGN.md. Detect, don't ask.
    """
    api = client()
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
        except _sdk_errors():
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


# ------------------------------------------------------------------ setting up an engine

def ensure(log=print, wait=60):
    """Make sure an engine answers: install docker.io and start dockerd if needed.

    Side effects (as root only): ``apt-get install docker.io`` when no dockerd
    exists; ``dockerd`` started in the background, logging to
    /var/log/dindind-dockerd.log. Returns a line saying what it did.
    """
    if ping():
        return "the Docker engine answers"
    if os.geteuid() != 0:
        raise EngineError("no Docker engine answers and this is not root", hint=START_HINT)
    did = []
    if not shutil.which("dockerd"):
        log("installing Debian's docker.io ...")
        proc.run(["apt-get", "update", "-qq"])
        proc.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "docker.io"],
                 env={"DEBIAN_FRONTEND": "noninteractive"})
        did.append("installed docker.io")
    log("starting dockerd ...")
    with open("/var/log/dindind-dockerd.log", "ab") as out:
        subprocess.Popen(["dockerd"], stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if ping():
            did.append("started dockerd")
            return "; ".join(did)
        time.sleep(0.5)
    raise EngineError(f"dockerd did not answer within {wait}s",
                      hint="see /var/log/dindind-dockerd.log")


# ------------------------------------------------------------------ containers, volumes, networks

CLUSTER_LABEL = "io.dindind.cluster"
ROLE_LABEL = "io.dindind.role"


def _call(what, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except _sdk_errors() as exc:
        raise EngineError(f"failed to {what}: {_explain(exc)}") from None


def _explain(exc):
    text = getattr(exc, "explanation", None) or str(exc)
    return text.decode() if isinstance(text, bytes) else str(text)


def create_network(name, subnet, labels):
    """A user-defined bridge network (embedded DNS), labelled."""
    api = client()
    import docker.types

    ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet)])
    return _call(f"create network {name}", api.create_network, name, driver="bridge", ipam=ipam,
                 labels=labels, check_duplicate=True)["Id"]


def create_volume(name, labels):
    return _call(f"create volume {name}", client().create_volume, name=name, labels=labels)["Name"]


def run_container(image, name, *, labels, command=None, entrypoint=None, hostname=None, network=None,
                  ip=None, volumes=None, tmpfs=None, ports=None, env=None, sysctls=None, privilege=None,
                  cgroupns=None, stop_signal=None, restart=None, binds_ro=None, stop_timeout=None):
    """Create and start a container; return its id.

    ``volumes`` maps a volume name to a mount point; ``ports`` maps a container
    port to ``(host address, host port)``; ``privilege`` is privilege_opts().
    """
    api = client()
    binds = {v: {"bind": p, "mode": "rw"} for v, p in (volumes or {}).items()}
    for src, dst in (binds_ro or {}).items():
        binds[src] = {"bind": dst, "mode": "ro"}
    hc = api.create_host_config(
        binds=binds or None, tmpfs=tmpfs, port_bindings={f"{p}/tcp": (b[0],) if b[1] is None else b
                                                         for p, b in (ports or {}).items()} or None,
        sysctls=sysctls, restart_policy=restart, network_mode=network, init=False, **(privilege or {}))
    if cgroupns:
        hc["CgroupnsMode"] = cgroupns
    netcfg = None
    if network:
        netcfg = api.create_networking_config({network: api.create_endpoint_config(ipv4_address=ip)})
    c = _call(f"create container {name}", api.create_container, image, command=command, entrypoint=entrypoint,
              name=name, hostname=hostname, labels=labels, environment=env, host_config=hc, tty=True,
              networking_config=netcfg, stop_signal=stop_signal, stop_timeout=stop_timeout,
              ports=[int(p) for p in (ports or {})] or None,
              volumes=list((volumes or {}).values()) + list((binds_ro or {}).values()) or None)
    _call(f"start container {name}", api.start, c["Id"])
    return c["Id"]


def start_container(name):
    _call(f"start container {name}", client().start, name)


def inspect_container(name):
    return _call(f"inspect container {name}", client().inspect_container, name)


def exec_in(container, cmd, *, check=True, environment=None, workdir=None):
    """Run ``cmd`` in a running container; return (exit code, combined output)."""
    api = client()
    ex = _call(f"exec in {container}", api.exec_create, container, cmd, environment=environment, workdir=workdir)
    out = _call(f"exec in {container}", api.exec_start, ex["Id"])
    code = _call(f"exec in {container}", api.exec_inspect, ex["Id"])["ExitCode"]
    text = out.decode(errors="replace") if isinstance(out, bytes) else str(out)
    if check and code != 0:
        from dindind.base.errors import CommandError

        raise CommandError(["docker", "exec", container] + list(cmd), code, text)
    return code, text


def put_file(container, path, data, mode=0o644):
    """Write one small file into a running container.

    Goes through a staging file on the container's root filesystem and
    ``install``, because the engine's archive API cannot write into tmpfs
    mounts such as /tmp and /run.
    """
    import io
    import tarfile

    buf = io.BytesIO()
    if isinstance(data, str):
        data = data.encode()
    stage = f".dindind-put-{os.getpid()}-{int(time.time() * 1e6)}"
    with tarfile.open(fileobj=buf, mode="w") as tf:
        ti = tarfile.TarInfo(stage)
        ti.size = len(data)
        ti.mode = 0o600
        ti.mtime = int(time.time())
        tf.addfile(ti, io.BytesIO(data))
    _call(f"copy {path} into {container}", client().put_archive, container, "/", buf.getvalue())
    exec_in(container, ["install", "-D", "-m", f"{mode:o}", f"/{stage}", str(path)])
    exec_in(container, ["rm", "-f", f"/{stage}"])


def get_file(container, path):
    """Read one (small) file out of a container."""
    import io
    import tarfile

    stream, _ = _call(f"copy {path} out of {container}", client().get_archive, container, path)
    buf = io.BytesIO(b"".join(stream))
    with tarfile.open(fileobj=buf) as tf:
        member = tf.getmembers()[0]
        return tf.extractfile(member).read()


def logs(container, tail="all"):
    out = _call(f"read logs of {container}", client().logs, container, tail=tail)
    return out.decode(errors="replace")


def stream_logs(container):
    """Yield log lines of a container as they come (follow)."""
    buf = b""
    try:
        for chunk in client().logs(container, stream=True, follow=True):
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                yield line.decode(errors="replace").rstrip("\r")
    except _sdk_errors() as exc:
        raise EngineError(f"failed to follow the logs of {container}: {_explain(exc)}") from None
    if buf:
        yield buf.decode(errors="replace")


def containers(labels, all=True):
    """Containers carrying every ``key=value`` label given."""
    flt = {"label": [f"{k}={v}" if v is not None else k for k, v in labels.items()]}
    return _call("list containers", client().containers, all=all, filters=flt)


def volumes(labels):
    flt = {"label": [f"{k}={v}" if v is not None else k for k, v in labels.items()]}
    return _call("list volumes", client().volumes, filters=flt).get("Volumes") or []


def networks(labels):
    flt = {"label": [f"{k}={v}" if v is not None else k for k, v in labels.items()]}
    return _call("list networks", client().networks, filters=flt)


def remove_container(name, volumes=True):
    import docker

    try:
        client().remove_container(name, force=True, v=volumes)
    except docker.errors.NotFound:
        pass
    except _sdk_errors() as exc:
        raise EngineError(f"failed to remove container {name}: {_explain(exc)}") from None


def remove_volume(name):
    import docker

    for attempt in range(10):
        try:
            client().remove_volume(name, force=True)
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if exc.status_code == 409 and attempt < 9:  # still in use by a dying container
                time.sleep(0.5)
                continue
            raise EngineError(f"failed to remove volume {name}: {_explain(exc)}") from None


def remove_network(name):
    import docker

    try:
        client().remove_network(name)
    except docker.errors.NotFound:
        pass
    except _sdk_errors() as exc:
        raise EngineError(f"failed to remove network {name}: {_explain(exc)}") from None


def dangling_volumes():
    return {v["Name"] for v in (_call("list volumes", client().volumes, filters={"dangling": True})
                                 .get("Volumes") or [])}


def put_archive_file(container, directory, name, fileobj, size, mode=0o644):
    """Stream one (large) file into a container as ``directory/name`` without reading it into memory."""
    import tarfile

    class _TarStream:
        """A file-like tar of one member, produced on the fly."""

        def __init__(self):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = size, mode, int(time.time())
            self.parts = [ti.tobuf(format=tarfile.GNU_FORMAT)]
            self.pad = b"\0" * ((512 - size % 512) % 512) + b"\0" * 1024

        def __iter__(self):
            yield self.parts[0]
            while True:
                chunk = fileobj.read(1 << 20)
                if not chunk:
                    break
                yield chunk
            yield self.pad

    api = client()
    url = api._url("/containers/{0}/archive", container)
    try:
        res = api._put(url, params={"path": directory}, data=iter(_TarStream()),
                       headers={"Content-Type": "application/x-tar"})
        api._raise_for_status(res)
    except _sdk_errors() as exc:
        raise EngineError(f"failed to copy {name} into {container}: {_explain(exc)}") from None


def get_dir(container, path, dest):
    """Copy a directory out of a container into ``dest`` (contents only).

    The engine's archive is untrusted like any other: it goes through
    fsutil.extract_tar; only its files and directories are copied (links and
    other entries are skipped), never anything outside ``dest``.
    """
    import tarfile
    import tempfile

    stream, _ = _call(f"copy {path} out of {container}", client().get_archive, container, path)
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
            fsutil.extract_tar(tf, dest, label, rename=strip, members=(m for m in tf if m.isfile() or m.isdir()))


# ------------------------------------------------------------------ releases: export, push, registry

MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
)
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def no_cache():
    """True when DINDIND_NO_CACHE=1: builds use no cached layer (for reproducibility measurements)."""
    return os.environ.get("DINDIND_NO_CACHE", "") == "1"


def save_chunks(ref, chunk_size=1 << 20):
    """``docker save ref`` as a stream of byte chunks (the image layer export the release scans).

    Nothing is held in memory beyond one chunk; an engine failure mid-stream
    raises EngineError naming the image.
    """
    try:
        for chunk in client().get_image(ref, chunk_size=chunk_size):
            yield chunk
    except _sdk_errors() as exc:
        raise EngineError(f"docker save of {ref} failed: {exc}") from None


def push(ref, echo=print):
    """``docker push ref``; return the manifest digest the engine reports.

    Raises EngineError (with the last lines of the push's output) if the
    engine or the registry fails, or if no digest was reported.
    """
    repo, t = split_ref(ref)
    tail = collections.deque(maxlen=20)
    digest = None
    try:
        for event in client().push(repo, tag=t, stream=True, decode=True):
            if "error" in event or "errorDetail" in event:
                msg = event.get("error") or (event.get("errorDetail") or {}).get("message", "")
                raise EngineError(f"docker push {ref} failed: {msg.strip()}", detail="\n".join(tail) or None,
                                  hint="check that the registry is up and reachable from the engine")
            aux = event.get("aux") or {}
            if isinstance(aux, dict) and aux.get("Digest"):
                digest = aux["Digest"]
            status = event.get("status")
            if status and not event.get("progressDetail"):
                line = f"{event['id']}: {status}" if event.get("id") else status
                tail.append(line)
                m = re.search(r"\bdigest: (sha256:[0-9a-f]{64})\b", status)   # "<tag>: digest: ... size: N"
                if m and not digest:
                    digest = m.group(1)
    except _sdk_errors() as exc:
        raise EngineError(f"docker push {ref} failed: {exc}", detail="\n".join(tail) or None,
                          hint="check that the registry is up and reachable from the engine") from None
    if not digest or not _DIGEST_RE.match(digest):
        raise EngineError(f"docker push {ref} reported no manifest digest", detail="\n".join(tail) or None)
    echo(f"  pushed {ref}@{digest}")
    return digest


def _registry_host(ref):
    first, _, rest = ref.partition("/")
    if not rest or not ("." in first or ":" in first or first == "localhost"):
        return "registry-1.docker.io", ref
    if first in ("docker.io", "index.docker.io"):
        return "registry-1.docker.io", rest
    return first, rest


def _is_loopback(host):
    import ipaddress

    name = host[1:host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def registry_manifest_digest(ref, timeout=30):
    """The digest a registry serves for ``ref``: ``HEAD /v2/<name>/manifests/<tag>``.

    Plain HTTP for loopback registries (as dockerd allows), HTTPS otherwise.
    Returns None if the registry does not have the tag. Raises EngineError if
    the registry cannot be reached or answers otherwise; ``exc.status`` is
    the HTTP status (401/403: the registry wants credentials).
    """
    repo, t = split_ref(ref)
    host, name = _registry_host(repo)
    conn_cls = http.client.HTTPConnection if _is_loopback(host) else http.client.HTTPSConnection
    conn = conn_cls(host, timeout=timeout)
    path = f"/v2/{name}/manifests/{urllib.parse.quote(t, safe='')}"
    try:
        conn.request("HEAD", path, headers={"Accept": ", ".join(MANIFEST_TYPES)})
        resp = conn.getresponse()
        resp.read()
        digest = resp.getheader("Docker-Content-Digest")
    except OSError as exc:
        err = EngineError(f"cannot reach the registry {host} to check {ref}: {exc.strerror or exc}",
                          hint="check that the registry is up")
        err.status = None
        raise err from None
    finally:
        conn.close()
    if resp.status == 404:
        return None
    if resp.status != 200 or not digest:
        err = EngineError(f"registry {host} answered HEAD {path} with HTTP {resp.status}"
                          + ("" if digest else " and no Docker-Content-Digest"))
        err.status = resp.status
        raise err
    return digest


def pull_by_digest(repo, digest):
    """``docker pull repo@digest`` (the engine asks the registry for exactly that manifest); return the image id."""
    try:
        client().pull(repo, tag=digest)
    except _sdk_errors() as exc:
        raise EngineError(f"cannot pull {repo}@{digest} back from the registry: {exc}") from None
    return inspect_image(f"{repo}@{digest}")["Id"]
