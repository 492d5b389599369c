"""Write each node's kubeadm configuration to /etc/dindind/kubeadm.conf."""

from dindind.base.errors import DindindError
from dindind.cluster import kubeadm

TITLE = "Writing configuration"
PATH = "/etc/dindind/kubeadm.conf"


def cgroup_v1(ctx):
    """Whether the nodes see cgroup v1 (this host's kernel decides; every node shares it)."""
    _, out = ctx.node_exec(ctx.plan.control_plane, ["stat", "-fc", "%T", "/sys/fs/cgroup"], check=False)
    return out.strip() != "cgroup2fs"


def execute(ctx):
    cp_ip = ctx.node_ips[ctx.plan.control_plane.name]
    v1 = cgroup_v1(ctx)
    for node in ctx.plan.nodes:
        text = kubeadm.render_config(ctx.plan, node, ctx.node_ips[node.name], cp_ip, cgroup_v1=v1)
        ctx.engine.put_file(node.name, PATH, text, mode=0o600)


def skip_phases(settings, verb):
    """The kubeadm phases ``verb`` skips: preflight (as kind), and kube-proxy's addon when
    kubeProxyMode is none (one --skip-phases flag: kubeadm takes the last one given)."""
    phases = ["preflight"]
    if verb == "init" and settings.kube_proxy_mode == "none":
        phases.append("addon/kube-proxy")
    return ",".join(phases)


def run_kubeadm(ctx, node, verb):
    """``kubeadm <verb>`` with the node's rendered config (preflight skipped, as kind does).

    A failure is one error naming the node, with the output's tail and the
    command to run by hand.
    """
    argv = ["kubeadm", verb, f"--config={PATH}", f"--skip-phases={skip_phases(ctx.plan.settings, verb)}", "--v=6"]
    code, out = ctx.node_exec(node, argv, check=False)
    if code != 0:
        raise DindindError(f"failed to {verb} node {node.name} with kubeadm (exit {code})",
                           detail="\n".join(out.splitlines()[-30:]),
                           hint=f"docker exec {node.name} {' '.join(argv)}")
