"""Write each node's kubeadm configuration to /etc/dindind/kubeadm.conf (and its kubelet patch, if any)."""

from dindind.base.errors import DindindError
from dindind.cluster import kubeadm

TITLE = "Writing configuration"
PATH = "/etc/dindind/kubeadm.conf"
# HA control planes: the copy with the certificate key, on the node's tmpfs, only while kubeadm runs
SECRET_PATH = "/run/dindind/kubeadm-with-key.conf"


def cgroup_v1(ctx):
    """Whether the nodes see cgroup v1 (this host's kernel decides; every node shares it)."""
    _, out = ctx.node_exec(ctx.plan.control_plane, ["stat", "-fc", "%T", "/sys/fs/cgroup"], check=False)
    return out.strip() != "cgroup2fs"


def render(ctx, node, certificate_key=None):
    return kubeadm.render_config(ctx.plan, node, ctx.node_ips[node.name], ctx.node_ips[ctx.plan.control_plane.name],
                                 cgroup_v1=ctx.cgroup_v1, certificate_key=certificate_key)


def execute(ctx):
    ctx.cgroup_v1 = cgroup_v1(ctx)
    for node in ctx.plan.nodes:
        ctx.engine.put_file(node.name, PATH, render(ctx, node), mode=0o600)
        patch = kubeadm.kubelet_patch(ctx.plan, node)
        if patch:
            ctx.engine.put_file(node.name, f"{kubeadm.PATCH_DIR}/{kubeadm.KUBELET_PATCH}", patch, mode=0o600)


def mask(text, plan):
    """``text`` with the bootstrap token and the certificate key replaced by placeholders."""
    for secret, shown in ((plan.token, "<bootstrap token>"), (plan.certificate_key, "<certificate key>")):
        if secret:
            text = text.replace(secret, shown)
    return text


def skip_phases(settings, verb):
    """The kubeadm phases ``verb`` skips: preflight (as kind), and kube-proxy's addon when
    kubeProxyMode is none (one --skip-phases flag: kubeadm takes the last one given)."""
    phases = ["preflight"]
    if verb == "init" and settings.kube_proxy_mode == "none":
        phases.append("addon/kube-proxy")
    return ",".join(phases)


def run_kubeadm(ctx, node, verb, extra=()):
    """``kubeadm <verb>`` with the node's rendered config (preflight skipped, as kind does).

    An HA control plane runs it with a copy of its config that carries the
    certificate key (kubeadm takes ``--certificate-key`` only in the file when
    ``--config`` is given), on its tmpfs, removed however kubeadm ends. A
    failure is one error naming the node, with the output's tail (the token
    and the key masked) and the command to run by hand.
    """
    key = ctx.plan.certificate_key if node.is_control_plane else None
    path = SECRET_PATH if key else PATH
    argv = ["kubeadm", verb, f"--config={path}", f"--skip-phases={skip_phases(ctx.plan.settings, verb)}", "--v=6", *extra]
    if key:
        ctx.engine.put_file(node.name, SECRET_PATH, render(ctx, node, key), mode=0o600)
    try:
        code, out = ctx.node_exec(node, argv, check=False)
    finally:
        if key:
            ctx.node_exec(node, ["rm", "-f", SECRET_PATH], check=False)
    if code != 0:
        hint = f"docker exec {node.name} {' '.join(argv)}"
        if key:
            hint = (f"kubeadm read {PATH} plus the certificate key (not kept); "
                    f"see `docker exec {node.name} journalctl -u kubelet`")
        raise DindindError(f"failed to {verb} node {node.name} with kubeadm (exit {code})",
                           detail=mask("\n".join(out.splitlines()[-30:]), ctx.plan), hint=hint)
    return out
