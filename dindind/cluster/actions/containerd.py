"""The cluster config's containerdConfigPatches: one drop-in file per patch in every node, then containerd restarted.

Each patch (TOML, checked when the config was read: dindind.base.clusterconfig)
becomes ``/etc/containerd/conf.d/NN-dindind-patch.toml`` (NN: 01, 02, ... in
the config's order). The node's ``/etc/containerd/config.toml`` gets
``imports = ["/etc/containerd/conf.d/*.toml"]`` when it has no imports yet, and
containerd is restarted and waited for, before kubeadm runs.

containerd reads the drop-ins after its own file, in name order, and merges
each into what it has: a key it sets replaces that key, a table it names is
merged key by key (containerd 2), lists are appended to. A patch without
``version`` gets the node's config version prepended (containerd migrates a
drop-in of an older version, e.g. ``version = 2`` with the
``io.containerd.grpc.v1.cri`` names, and refuses a newer one).
"""

import time
import tomllib

from dindind.base.errors import DindindError

TITLE = "Patching containerd"
CONFIG = "/etc/containerd/config.toml"
DROPIN_DIR = "/etc/containerd/conf.d"
IMPORTS = f'{DROPIN_DIR}/*.toml'
WAIT = 60       # seconds for containerd to answer again after its restart


def dropin_path(index):
    """Where the ``index``-th (0-based) patch goes in a node."""
    return f"{DROPIN_DIR}/{index + 1:02d}-dindind-patch.toml"


def dropins(patches, version):
    """[(path, text)] of the drop-in files for ``patches``; ``version``: the node's config version (or None)."""
    files = []
    for i, patch in enumerate(patches):
        head = f"# containerdConfigPatches[{i}] of the cluster config (written by dindind)\n"
        if version is not None and "version" not in tomllib.loads(patch):
            head += f"version = {version}\n"
        files.append((dropin_path(i), head + patch + ("" if patch.endswith("\n") else "\n")))
    return files


def with_imports(text, node_name):
    """(the node's config.toml text, importing the drop-in folder, its version or None)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DindindError(f"{CONFIG} in {node_name} is not valid TOML ({exc})",
                           hint="the node image's containerd config is broken: rebuild it (doit build)") from None
    version = doc.get("version")
    imports = doc.get("imports")
    if imports is None:
        # a top-level key: before the first table, so first
        text = f'# the cluster config\'s containerdConfigPatches (dindind)\nimports = ["{IMPORTS}"]\n' + text
    elif IMPORTS not in imports:
        raise DindindError(f"{CONFIG} in {node_name} imports {imports!r} but not {IMPORTS!r}: "
                           "containerdConfigPatches cannot be added",
                           hint=f"add {IMPORTS!r} to imports in the node image's containerd config")
    return text, version if isinstance(version, int) else None


def _refused(ctx, node, what, out):
    _, journal = ctx.node_exec(node, ["journalctl", "-u", "containerd", "--no-pager", "-n", "20"], check=False)
    return DindindError(f"containerd in {node.name} {what} after containerdConfigPatches were applied",
                        detail=journal.strip() or out.strip(),
                        hint="check containerdConfigPatches in the cluster config (the journal above says what "
                             f"containerd refused); see `docker exec {node.name} containerd config dump`")


def restart_containerd(ctx, node, timeout=WAIT):
    """Restart containerd in ``node`` and wait until it answers; else one error with its journal's tail."""
    code, out = ctx.node_exec(node, ["systemctl", "restart", "containerd"], check=False)
    if code != 0:
        raise _refused(ctx, node, "did not start again", out)
    deadline = time.monotonic() + timeout
    while True:
        code, out = ctx.node_exec(node, ["ctr", "version"], check=False)
        if code == 0:
            return
        if time.monotonic() >= deadline:
            raise _refused(ctx, node, f"did not answer within {timeout}s", out)
        time.sleep(0.5)


def execute(ctx):
    patches = ctx.plan.settings.containerd_patches
    for node in ctx.plan.nodes:
        _, text = ctx.node_exec(node, ["cat", CONFIG])
        new, version = with_imports(text, node.name)
        if new != text:
            ctx.engine.put_file(node.name, CONFIG, new, mode=0o644)
        for path, body in dropins(patches, version):
            ctx.engine.put_file(node.name, path, body, mode=0o644)
        restart_containerd(ctx, node)
