"""The cluster image's command line: the settings it was built for, changed by arguments.

The image carries the settings of the config it was built from as JSON
(DEFAULTS, written at build time), so ``docker run IMAGE`` with no argument
brings up that cluster; the arguments after the image change it. They are
checked by the config's own rules (base.config: the name rule, the integer
ranges, the kubelet argument pattern) and a bad one is one DindindError,
which the entry point prints as one line before exiting non-zero.

A cluster config (dindind.base.clusterconfig: ``--config FILE``, a file in
this container, or ``--config-json JSON``, what ``cluster:up`` passes) says
the whole cluster: it replaces the image's cluster settings, and the other
arguments then change it (--name, --wait; --workers only when its nodes have
nothing of their own). Its problems are one ConfigError listing each. Pure
but for reading that file and checking that its hostPaths exist here.
"""

import json
import re
from dataclasses import replace

from dindind.base import clusterconfig, config
from dindind.base.errors import DindindError
from dindind.cluster import plan
from dindind.cluster.plan import Settings

DEFAULTS = "/etc/dindind/cluster.json"

# option -> (Settings field or flag, what it takes, help); the order is --help's
OPTIONS = {
    "--name": ("name", "NAME", "cluster name; nodes are NAME-control-plane, NAME-worker, ..."),
    "--config": ("config", "FILE", "a cluster config (apiVersion: dindind.dev/v1alpha1, kind: Cluster) in this "
                                   "container, e.g. mounted with -v; it replaces the image's cluster settings"),
    "--config-json": ("config_json", "JSON", "the same cluster config as one JSON text (hostPaths absolute)"),
    "--workers": ("workers", "N", "worker nodes besides the control plane"),
    "--kubelet-arg": ("kubelet_extra_args", "--FLAG=VALUE",
                      "an extra kubelet argument (repeat it; given once, it replaces the image's list)"),
    "--wait": ("wait", "SECONDS", "how long to wait for every node to be Ready (0: do not wait)"),
    "--retain": ("retain", None, "keep the nodes (and this container running) when bring-up fails"),
    "--no-cluster": ("no_cluster", None, "start only the inner engine and load the node image"),
    "--e2e": ("e2e", None, "once Ready, run e2e.test, stop, and exit with its result (a Job's pod)"),
    "--e2e-focus": ("e2e_focus", "RE", "with --e2e: ginkgo focus"),
    "--e2e-skip": ("e2e_skip", "RE", "with --e2e: ginkgo skip (default: dindind's list of unsupported tests)"),
    "--help": ("help", None, "print this help and exit"),
}


class Args:
    """What the command line asked for: the settings, and the flags that are not settings."""

    def __init__(self, settings, no_cluster=False, help=False, e2e=False, e2e_focus=None, e2e_skip=None):
        self.settings = settings
        self.no_cluster = no_cluster
        self.help = help
        self.e2e = e2e
        self.e2e_focus = e2e_focus
        self.e2e_skip = e2e_skip

    def e2e_args(self):
        """The arguments of ``dindind e2e`` that --e2e runs."""
        return ([f"--focus={self.e2e_focus}"] if self.e2e_focus else []) + \
               ([f"--skip={self.e2e_skip}"] if self.e2e_skip else [])


def load_defaults(text):
    """The Settings the image was built for, from DEFAULTS' text."""
    try:
        return Settings.from_json(text)
    except (ValueError, TypeError) as exc:
        raise DindindError(f"the image's default settings ({DEFAULTS}) are unreadable: {exc}",
                           hint="rebuild the cluster image with `doit build`") from None


HINT = "see `docker run --rm IMAGE --help`"


def _bad(message):
    return DindindError(message, hint=HINT)


def parse(argv, defaults):
    """Args from the arguments after the image; ``defaults`` (Settings) fills in the rest."""
    changes, kubelet, flags = {}, [], {"no_cluster": False, "help": False, "e2e": False}
    docs = []
    argv = list(argv)
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        opt, eq, value = arg.partition("=")
        if opt not in OPTIONS:
            raise _bad(f"unknown argument {_show(arg)}")
        field, metavar, _ = OPTIONS[opt]
        if metavar is None:
            if eq:
                raise _bad(f"{opt} takes no value (got {_show(arg)})")
            if field in flags:
                flags[field] = True
            else:
                changes[field] = True
            continue
        if not eq:
            if i >= len(argv):
                raise _bad(f"{opt} needs a value: {opt} {metavar}")
            value = argv[i]
            i += 1
        if field == "name":
            changes["name"] = config.check_name(value, "--name")
        elif field in ("workers", "wait"):
            low, high = config.int_range(f"cluster.{field}")
            changes[field] = config.parse_int(value, f"--{field}", low, high, hint=HINT)
        elif field == "kubelet_extra_args":
            if not re.fullmatch(config.ARG_RE, value):
                raise _bad(f"--kubelet-arg {_show(value)} is not of the form --flag=value")
            kubelet.append(value)
        elif field in ("e2e_focus", "e2e_skip"):
            problem = config.check_regex(value)
            if problem:
                raise _bad(f"{opt} {_show(value)} {problem}")
            flags[field] = value
        elif field in ("config", "config_json"):
            if docs:
                raise _bad("give one cluster config: --config FILE or --config-json JSON, once")
            docs.append(clusterconfig.load(value) if field == "config" else clusterconfig.from_json(value))
    if docs:
        defaults = plan.from_cluster_config(docs[0], defaults)
        if "workers" in changes and defaults.nodes:
            raise _bad("--workers cannot change a cluster config whose nodes have settings of their own: "
                       "list the workers under nodes:")
    if kubelet:
        changes["kubelet_extra_args"] = tuple(kubelet)
    if (flags.get("e2e_focus") or flags.get("e2e_skip")) and not flags["e2e"]:
        raise _bad("--e2e-focus and --e2e-skip go with --e2e")
    if flags["e2e"] and flags["no_cluster"]:
        raise _bad("--e2e needs a cluster: drop --no-cluster")
    return Args(replace(defaults, **changes), **flags)


def _show(value):
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + '..."'


def help_text(defaults):
    """--help: every argument, with the value this image uses when it is not given."""
    shown = {"name": defaults.name, "workers": defaults.workers, "wait": defaults.wait,
             "kubelet_extra_args": " ".join(defaults.kubelet_extra_args) or "none"}
    lines = [f"dindind cluster image: Kubernetes {defaults.kubernetes_version}, nodes from {defaults.node_image}",
             "",
             "usage: docker run -d --name C FLAGS -p 127.0.0.1:6443:6443 IMAGE [ARGS]",
             "  FLAGS: what `python -m dindind run-flags` prints for your engine (shell-quoted: paste it, or",
             "  eval \"docker run -d --name C $(python -m dindind run-flags) -p 127.0.0.1:6443:6443 IMAGE\")",
             "",
             "arguments (default: the cluster this image was built for):"]
    for opt, (field, metavar, text) in OPTIONS.items():
        left = f"  {opt} {metavar}" if metavar else f"  {opt}"
        default = f" (default: {shown[field]})" if field in shown else ""
        lines.append(f"{left:<30} {text}{default}")
    lines += ["",
              "inside (docker exec C dindind COMMAND): kubeconfig [--server URL], status, logs, "
              "e2e [--focus RE] [--skip RE]; kubectl is on PATH with KUBECONFIG set"]
    return "\n".join(lines)
