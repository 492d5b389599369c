"""doit task creators for ``cluster:*`` (descriptions only; actions call dindind.cluster.host).

Each verb is its own task named ``cluster:<verb>`` (a basename with a colon,
so ``doit list`` shows every verb with its help line, and there is no
``cluster`` group that would run up and down in one go).
"""


from doit.cmdparse import CmdParseError

from dindind.base import config as config_mod
from dindind.base.errors import DindindError
from dindind.tasks import action
from dindind.tasks import load_inputs as _ctx


def _param(check):
    """A doit parameter type: ``check(text)`` or one clear line from doit, before any task runs."""

    def convert(text):
        try:
            return check(text)
        except DindindError as exc:
            raise CmdParseError(exc.message + (f"; {exc.hint}" if exc.hint else "")) from None

    convert.__name__ = check.__name__
    return convert


def _name(text):
    return config_mod.check_name(text, "--name") if text else ""


def _int_option(option, key):
    low, high = config_mod.int_range(key)

    def number(text):
        return config_mod.parse_int(text, option, low, high)

    number.__name__ = option.lstrip("-")
    return _param(number)


def _pattern_option(option):
    def regex(text):
        problem = config_mod.check_regex(text) if text else None
        if problem:
            raise DindindError(f"{option} {text!r} {problem}", hint="give a Go/RE2-style regular expression")
        return text

    regex.__name__ = option.lstrip("-")
    return _param(regex)


NAME = {"name": "name", "long": "name", "type": _param(_name), "default": "",
        "help": "cluster name (default: cluster.name from the config, 'dindind')"}


@action
def do_check_engine(what):
    from dindind.docker import engine

    engine.require_docker(what)


def _cluster_config(text):
    """``--config FILE``: the cluster config, checked here (every problem) before the build runs."""
    if not text:
        return ""
    import os

    from dindind.base import clusterconfig

    path = os.path.abspath(text)
    try:
        clusterconfig.load(path)
    except DindindError as exc:
        raise CmdParseError(exc.render().removeprefix("ERROR: ")) from None
    return path


@action
def do_up(config_path, root, name, workers, retain, wait, cluster_config):
    from dindind.cluster import host

    cfg, lay = _ctx(config_path, root)
    host.up(cfg, lay, name or None, workers, retain, wait, config_file=cluster_config or None)


@action
def do_down(config_path, root, name, all):
    from dindind.cluster import host

    cfg, lay = _ctx(config_path, root)
    host.down(cfg, lay, name or None, all)


@action
def do_stop(config_path, root, name):
    from dindind.cluster import host

    cfg, _ = _ctx(config_path, root)
    host.stop(cfg, name or None)


@action
def do_start(config_path, root, name):
    from dindind.cluster import host

    cfg, lay = _ctx(config_path, root)
    host.start(cfg, lay, name or None)


@action
def do_status():
    from dindind.cluster import host

    host.status()


@action
def do_kubeconfig(config_path, root, name, internal, merge):
    from dindind.cluster import access

    cfg, lay = _ctx(config_path, root)
    access.kubeconfig(cfg, lay, name or None, internal, merge)


@action
def do_nodes(config_path, root, name):
    from dindind.cluster import access

    cfg, _ = _ctx(config_path, root)
    access.nodes(cfg, name or None)


@action
def do_logs(config_path, root, name):
    from dindind.cluster import host

    cfg, lay = _ctx(config_path, root)
    host.logs(cfg, lay, name or None)


@action
def do_load(config_path, root, name, image, archive):
    from dindind.cluster import host

    cfg, lay = _ctx(config_path, root)
    host.load(cfg, lay, image, archive, name or None)


@action
def do_e2e(config_path, root, name, focus, skip, parallel, flake_attempts, conformance):
    from dindind.cluster import host

    cfg, lay = _ctx(config_path, root)
    host.e2e(cfg, lay, name or None, focus or None, skip or None, parallel, flake_attempts, conformance)


def cluster_tasks(config_path, root):
    args = (str(config_path) if config_path else None, str(root))
    common = {"uptodate": [False], "verbosity": 2}
    # before the build cluster:up depends on: an engine it cannot drive is refused at once, not after a build
    yield {"basename": "_cluster:engine", "doc": "refuse an engine cluster:up cannot drive (rootless, Podman)",
           "actions": [(do_check_engine, ("cluster:up",))], **common}
    yield {"basename": "cluster:up",
           "doc": "bring up a cluster: [--config FILE] --name N --workers K [--retain] [--wait SECONDS]",
           "actions": [(do_up, args)], "task_dep": ["_cluster:engine", "build"], **common,
           "params": [NAME,
                      {"name": "cluster_config", "long": "config", "type": _cluster_config, "default": "",
                       "help": "a cluster config (apiVersion: dindind.dev/v1alpha1, kind: Cluster): nodes, "
                               "labels, mounts, ports, network; instead of the build config's cluster keys"},
                      {"name": "workers", "long": "workers", "type": _int_option("--workers", "cluster.workers"),
                       "default": None,
                       "help": "worker nodes (default: cluster.workers, 2)"},
                      {"name": "retain", "long": "retain", "type": bool, "default": False,
                       "help": "keep what was created when bring-up fails"},
                      {"name": "wait", "long": "wait", "type": _int_option("--wait", "cluster.wait"),
                       "default": None,
                       "help": "seconds to wait for Ready (0: return once the containers are up)"}]}
    yield {"basename": "cluster:down",
           "doc": "remove a cluster: its containers, volumes, network and merged kubeconfig entries (--name N | --all)",
           "actions": [(do_down, args)], **common,
           "params": [NAME, {"name": "all", "long": "all", "type": bool, "default": False,
                             "help": "every dindind cluster on this engine, nested or not"}]}
    yield {"basename": "cluster:stop", "doc": "stop a cluster (nested: its container); its nodes stop cleanly (--name N)",
           "actions": [(do_stop, args)], "params": [NAME], **common}
    yield {"basename": "cluster:start", "doc": "start a stopped cluster again and wait until it is Ready (--name N)",
           "actions": [(do_start, args)], "params": [NAME], **common}
    yield {"basename": "cluster:status", "doc": "list every cluster: name, nodes, API address, age",
           "actions": [(do_status,)], **common}
    yield {"basename": "cluster:nodes",
           "doc": "list a cluster's nodes: role, address, container state, Ready (--name N)",
           "actions": [(do_nodes, args)], "params": [NAME], **common}
    yield {"basename": "cluster:kubeconfig",
           "doc": "print the path of a cluster's kubeconfig (--name N); --internal: the nodes' address; "
                  "--merge: into $KUBECONFIG or ~/.kube/config as context dindind-<name>",
           "actions": [(do_kubeconfig, args)], **common,
           "params": [NAME,
                      {"name": "internal", "long": "internal", "type": bool, "default": False,
                       "help": "server: the control plane's address on the cluster network (port 6443), "
                               "written to artifacts/clusters/<name>/kubeconfig-internal"},
                      {"name": "merge", "long": "merge", "type": bool, "default": False,
                       "help": "merge into the first path of $KUBECONFIG, or ~/.kube/config, and make it current"}]}
    yield {"basename": "cluster:logs",
           "doc": "collect docker inspect, kubelet/containerd journals, /var/log into artifacts/clusters/<name>/logs",
           "actions": [(do_logs, args)], "params": [NAME], **common}
    yield {"basename": "cluster:load",
           "doc": "import host images and docker-archives into every node's containerd, for the nodes' platform "
                  "(--image IMG ... --archive FILE ..., each repeatable)",
           "actions": [(do_load, args)], **common,
           "params": [NAME, {"name": "image", "long": "image", "type": list, "default": [],
                             "help": "a host image to load (repeatable)"},
                      {"name": "archive", "long": "archive", "type": list, "default": [],
                       "help": "a docker-archive file (docker save -o) to load (repeatable)"}]}
    yield {"basename": "cluster:e2e",
           "doc": "run e2e.test under ginkgo in the cluster (--conformance: the [Conformance] tests the preloaded "
                  "images allow); JUnit XML and a summary into artifacts/clusters/<name>/e2e",
           "actions": [(do_e2e, args)], **common,
           "params": [NAME,
                      {"name": "conformance", "long": "conformance", "type": bool, "default": False,
                       "help": "the [Conformance] tests, minus those needing an image the build could not make"},
                      {"name": "focus", "long": "focus", "type": _pattern_option("--focus"), "default": "", "help": "ginkgo focus regex"},
                      {"name": "skip", "long": "skip", "type": _pattern_option("--skip"), "default": "",
                       "help": "ginkgo skip regex (default: cluster.e2e_skip or dindind's list)"},
                      {"name": "parallel", "long": "parallel",
                       "type": _int_option("--parallel", "cluster.e2e_parallel"), "default": None,
                       "help": "parallel ginkgo nodes"},
                      {"name": "flake_attempts", "long": "flake-attempts",
                       "type": _int_option("--flake-attempts", "cluster.e2e_flake_attempts"), "default": None,
                       "help": "attempts per failing test"}]}
