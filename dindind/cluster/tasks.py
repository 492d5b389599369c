"""doit task creators for ``cluster:*`` (descriptions only; actions call dindind.cluster.host).

Each verb is its own task named ``cluster:<verb>`` (a basename with a colon,
so ``doit list`` shows every verb with its help line, and there is no
``cluster`` group that would run up and down in one go).
"""


from ..tasks import load_inputs as _ctx
from ..tasks import action

NAME = {"name": "name", "long": "name", "type": str, "default": "",
        "help": "cluster name (default: cluster.name from the config, 'dindind')"}


@action
def do_up(config_path, root, name, workers, retain, wait):
    from . import host

    cfg, lay = _ctx(config_path, root)
    host.up(cfg, lay, name or None, None if workers == "" else workers, retain, None if wait == "" else wait)


@action
def do_down(config_path, root, name):
    from . import host

    cfg, lay = _ctx(config_path, root)
    host.down(cfg, lay, name or None)


@action
def do_status():
    from . import host

    host.status()


@action
def do_kubeconfig(config_path, root, name):
    from . import host
    from ..errors import DindindError

    cfg, lay = _ctx(config_path, root)
    path = host.kubeconfig_path(lay, name or cfg.cluster["name"])
    if not path.exists():
        raise DindindError(f"no kubeconfig for cluster {name or cfg.cluster['name']!r} at {path}",
                           hint="bring it up with `doit cluster:up`")
    print(path)


@action
def do_logs(config_path, root, name):
    from . import host

    cfg, lay = _ctx(config_path, root)
    host.logs(cfg, lay, name or None)


@action
def do_load(config_path, root, name, image):
    from . import host

    cfg, lay = _ctx(config_path, root)
    host.load(cfg, lay, image, name or None)


@action
def do_e2e(config_path, root, name, focus, skip, parallel, flake_attempts):
    from . import host

    cfg, lay = _ctx(config_path, root)
    host.e2e(cfg, lay, name or None, focus or None, skip or None, parallel or None, flake_attempts or None)


def cluster_tasks(config_path, root):
    args = (str(config_path) if config_path else None, str(root))
    common = {"uptodate": [False], "verbosity": 2}
    yield {"basename": "cluster:up", "doc": "bring up a cluster: --name N --workers K [--retain] [--wait SECONDS]",
           "actions": [(do_up, args)], "task_dep": ["build"], **common,
           "params": [NAME,
                      {"name": "workers", "long": "workers", "type": str, "default": "",
                       "help": "worker nodes (default: cluster.workers, 2)"},
                      {"name": "retain", "long": "retain", "type": bool, "default": False,
                       "help": "keep what was created when bring-up fails"},
                      {"name": "wait", "long": "wait", "type": str, "default": "",
                       "help": "seconds to wait for Ready (0: return once the containers are up)"}]}
    yield {"basename": "cluster:down", "doc": "remove a cluster: its containers, volumes and network (--name N)",
           "actions": [(do_down, args)], "params": [NAME], **common}
    yield {"basename": "cluster:status", "doc": "list every cluster: name, nodes, API address, age",
           "actions": [(do_status,)], **common}
    yield {"basename": "cluster:kubeconfig", "doc": "print the path of a cluster's kubeconfig (--name N)",
           "actions": [(do_kubeconfig, args)], "params": [NAME], **common}
    yield {"basename": "cluster:logs",
           "doc": "collect docker inspect, kubelet/containerd journals, /var/log into artifacts/clusters/<name>/logs",
           "actions": [(do_logs, args)], "params": [NAME], **common}
    yield {"basename": "cluster:load", "doc": "import a host image into every node's containerd (--image IMG)",
           "actions": [(do_load, args)], **common,
           "params": [NAME, {"name": "image", "long": "image", "type": str, "default": "",
                             "help": "the image to load"}]}
    yield {"basename": "cluster:e2e",
           "doc": "run e2e.test under ginkgo in the cluster; JUnit XML into artifacts/clusters/<name>/e2e",
           "actions": [(do_e2e, args)], **common,
           "params": [NAME,
                      {"name": "focus", "long": "focus", "type": str, "default": "", "help": "ginkgo focus regex"},
                      {"name": "skip", "long": "skip", "type": str, "default": "",
                       "help": "ginkgo skip regex (default: cluster.e2e_skip or dindind's list)"},
                      {"name": "parallel", "long": "parallel", "type": str, "default": "",
                       "help": "parallel ginkgo nodes"},
                      {"name": "flake_attempts", "long": "flake-attempts", "type": str, "default": "",
                       "help": "attempts per failing test"}]}
