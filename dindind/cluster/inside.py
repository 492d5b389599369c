"""``dindind COMMAND`` inside the cluster image, run with ``docker exec C dindind ...``.

    dindind kubeconfig [--server URL]   the admin kubeconfig for use from the host
    dindind status                      the phase and every node's readiness
    dindind health                      exit 0 when every node is Ready (the image's HEALTHCHECK)
    dindind logs                        collect dockerd's log and every node's journals into LOGS
    dindind e2e [--focus RE] [--skip RE] [--parallel N] [--flake-attempts N] [--label-filter EXPR]
                                        e2e.test under ginkgo; JUnit XML into E2E (docker cp C:/var/lib/dindind/e2e .);
                                        no --skip: DEFAULT_E2E_SKIP; --skip= (empty): skip nothing

Every command but ``logs`` refuses, exiting 1, until the cluster is ready.
The host cannot be seen from in here, so the kubeconfig's server is
``--server`` when given, else DEFAULT_SERVER, the address the documented
``-p 127.0.0.1:6443:6443`` publishes (``python -m dindind kubeconfig C`` on
the host finds the published address itself).
"""

import http.client
import json
import re
import os
import shutil
import subprocess
import sys
import urllib.parse

from dindind.base import config
from dindind.base.errors import DindindError
from dindind.cluster import api
from dindind.cluster.plan import API_PORT, Settings

STATE = "/var/lib/dindind"
KUBECONFIG = os.path.join(STATE, "kubeconfig")
PHASE = os.path.join(STATE, "phase")
SETTINGS = os.path.join(STATE, "settings.json")
LOGS = os.path.join(STATE, "logs")
E2E = os.path.join(STATE, "e2e")
DOCKERD_LOG = "/var/log/dockerd.log"
DEFAULT_SERVER = f"https://127.0.0.1:{API_PORT}"
HEALTH_TIMEOUT = 3     # seconds one health probe waits for the API (the HEALTHCHECK runs every 3 s)
DEFAULT_E2E_SKIP = (
    r"\[Slow\]|\[Serial\]|\[Disruptive\]|\[Flaky\]|\[Feature:.+\]|\[NodeFeature:.+\]|\[NodeConformance\]"
    r"|\[sig-cloud-provider|\[sig-cloud-provider-gcp\]|Kubectl.*logs|kernel module|NFS|nfs|CNI|Networking.*Internet"
    r"|\[sig-storage\].*(Dynamic|Subpath|iSCSI|Ceph|Gluster|CSI|PersistentVolumes|Volume expansion)"
    r"|[Uu]pgrade|[Rr]estart|GCE|AWS|Azure|vSphere|\[sig-node\].*NodeProblemDetector"
)


def _usage(msg):
    return DindindError(msg, hint="see `dindind help`")


def phase(state=STATE):
    try:
        with open(os.path.join(state, "phase")) as f:
            return f.read().strip()
    except OSError:
        return "starting"


def require_ready(state=STATE):
    """(kubeconfig bytes, Settings) of the ready cluster, else a DindindError saying what it is doing."""
    now = phase(state)
    if now != "ready":
        hint = {"failed": "see `docker logs` of this container",
                "engine": "this container was started with --no-cluster",
                "stopping": "it is shutting down"}.get(now, "wait for `docker inspect -f {{.State.Health.Status}}` "
                                                           "to say healthy")
        raise DindindError(f"the cluster is not ready (phase: {now})", hint=hint)
    with open(os.path.join(state, "kubeconfig"), "rb") as f:
        kubeconfig = f.read()
    with open(os.path.join(state, "settings.json")) as f:
        settings = Settings.from_json(f.read())
    return kubeconfig, settings


def check_server(url):
    """``url`` if it is an https URL with a host (the kubeconfig's server), else a DindindError."""
    parts = urllib.parse.urlsplit(url)
    try:
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok = False
    if parts.scheme != "https" or not parts.hostname or not port_ok or parts.path not in ("", "/") \
            or parts.query or parts.fragment or any(c.isspace() for c in url):
        raise _usage(f"--server {json.dumps(url)} is not an https://HOST:PORT URL")
    return url


def kubeconfig(args, state=STATE, out=sys.stdout):
    server = DEFAULT_SERVER
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--server" and rest:
            server = rest.pop(0)
        elif arg.startswith("--server="):
            server = arg.split("=", 1)[1]
        else:
            raise _usage(f"unknown argument {json.dumps(arg)} for kubeconfig")
    data, _ = require_ready(state)
    out.write(api.rewrite_server(data, check_server(server)).decode())
    return 0


def readiness(state=STATE, timeout=5):
    """(names, {name: Ready}) of the ready cluster's nodes, asked of its API."""
    data, settings = require_ready(state)
    names = [n for n, _ in settings.node_names()]
    return names, api.node_readiness(data, timeout=timeout)


def status(args, state=STATE, out=sys.stdout):
    if args:
        raise _usage("status takes no arguments")
    names, ready = readiness(state)
    out.write(f"{'NODE':<36} READY\n")
    for n in sorted(set(names) | set(ready)):
        out.write(f"{n:<36} {'yes' if ready.get(n) else 'no'}\n")
    missing = [n for n in names if not ready.get(n)]
    if missing:
        raise DindindError(f"not Ready: {', '.join(missing)}")
    return 0


def health(args, state=STATE, out=sys.stdout):
    if phase(state) == "engine":            # --no-cluster: the inner engine is all there is
        out.write("engine only (--no-cluster)\n")
        return 0
    names, ready = readiness(state, timeout=HEALTH_TIMEOUT)
    missing = [n for n in names if not ready.get(n)]
    if missing:
        raise DindindError(f"not Ready: {', '.join(missing)}")
    out.write(f"{len(names)} node(s) Ready\n")
    return 0


def logs(args, state=STATE, out=sys.stdout):
    """Write dockerd's log and, per node, docker inspect and the kubelet/containerd journals under LOGS."""
    from dindind.docker import containers      # the SDK: only here, so the HEALTHCHECK starts fast

    if args:
        raise _usage("logs takes no arguments")
    dest = os.path.join(state, "logs")
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    if os.path.exists(DOCKERD_LOG):
        shutil.copyfile(DOCKERD_LOG, os.path.join(dest, "dockerd.log"))
    for c in containers.containers({"io.dindind.cluster": None}):
        node = c["Names"][0].lstrip("/")
        ndir = os.path.join(dest, node)
        os.makedirs(ndir)
        with open(os.path.join(ndir, "inspect.json"), "w") as f:
            json.dump(containers.inspect_container(c["Id"]), f, indent=2)
        with open(os.path.join(ndir, "container.log"), "w") as f:
            f.write(containers.logs(c["Id"]))
        if c["State"] == "running":
            for unit in ("kubelet", "containerd"):
                _, text = containers.exec_in(c["Id"], ["journalctl", "--no-pager", "-u", unit], check=False)
                with open(os.path.join(ndir, f"{unit}.log"), "w") as f:
                    f.write(text)
    out.write(f"logs in {dest} (docker cp CONTAINER:{dest} .)\n")
    return 0


# ginkgo stops a suite after 1 h by default: the whole Conformance suite takes longer on 2 cores (its
# [Serial] tests come last and were skipped, the one running failed in its setup, when that hit)
GINKGO_TIMEOUT = "24h"


def e2e_command(args, kubeconfig_path=KUBECONFIG, report=E2E):
    """The ginkgo command line for ``dindind e2e ARGS`` (checked by the config's rules)."""
    opts = {"--focus": None, "--skip": None, "--parallel": None, "--flake-attempts": None, "--label-filter": None}
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        opt, eq, value = arg.partition("=")
        if opt not in opts:
            raise _usage(f"unknown argument {json.dumps(arg)} for e2e")
        if not eq:
            if not rest:
                raise _usage(f"{opt} needs a value")
            value = rest.pop(0)
        if opt in ("--focus", "--skip"):
            problem = config.check_regex(value)
            if problem:
                raise _usage(f"{opt} {json.dumps(value)} {problem}")
        elif opt == "--label-filter":
            if not re.fullmatch(r"[A-Za-z0-9_.:/ &|!(),-]{1,200}", value):
                raise _usage(f"--label-filter {json.dumps(value)} is not a ginkgo label filter (e.g. Conformance)")
        else:
            key = {"--parallel": "cluster.e2e_parallel", "--flake-attempts": "cluster.e2e_flake_attempts"}[opt]
            value = config.parse_int(value, opt, *config.int_range(key))
        opts[opt] = value
    # no --skip: the default skip list; an empty --skip= : skip nothing (a conformance run brings its own)
    skip = DEFAULT_E2E_SKIP if opts["--skip"] is None else opts["--skip"]
    cmd = ["ginkgo", f"--nodes={opts['--parallel'] or 1}", f"--flake-attempts={opts['--flake-attempts'] or 1}",
           f"--timeout={GINKGO_TIMEOUT}"]
    cmd += [f"--skip={skip}"] if skip else []
    if opts["--focus"]:
        cmd.append(f"--focus={opts['--focus']}")
    if opts["--label-filter"]:
        cmd.append(f"--label-filter={opts['--label-filter']}")
    return cmd + ["/usr/local/bin/e2e.test", "--", f"--kubeconfig={kubeconfig_path}", "--provider=skeleton",
                  f"--report-dir={report}"]


def e2e(args, state=STATE, out=sys.stdout):
    cmd = e2e_command(args, os.path.join(state, "kubeconfig"), os.path.join(state, "e2e"))
    require_ready(state)
    report = os.path.join(state, "e2e")
    shutil.rmtree(report, ignore_errors=True)
    os.makedirs(report)
    out.flush()
    code = subprocess.call(cmd)
    junit = sorted(f for f in os.listdir(report) if f.startswith("junit") and f.endswith(".xml"))
    out.write(f"e2e: exit {code}; JUnit XML: {', '.join(junit) or 'none'} in {report} "
              f"(docker cp CONTAINER:{report} .)\n")
    return code


COMMANDS = {"kubeconfig": kubeconfig, "status": status, "health": health, "logs": logs, "e2e": e2e}


def main(argv):
    cmd = argv[0] if argv else "help"
    if cmd not in COMMANDS:
        print(__doc__.strip())
        return 0 if cmd in ("help", "-h", "--help") else 2
    try:
        return COMMANDS[cmd](argv[1:])
    except DindindError as exc:
        print(f"ERROR: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""), file=sys.stderr)
        return 1
    except (OSError, http.client.HTTPException) as exc:
        print(f"ERROR: {cmd}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
