"""kubeadm init on the control-plane node (preflight skipped, as kind does)."""

from ...errors import DindindError
from .config import PATH

TITLE = "Starting control-plane"


def execute(ctx):
    cp = ctx.plan.control_plane
    code, out = ctx.node_exec(cp, ["kubeadm", "init", f"--config={PATH}", "--skip-phases=preflight", "--v=6"],
                              check=False)
    if code != 0:
        raise DindindError(f"failed to init node {cp.name} with kubeadm (exit {code})",
                           detail="\n".join(out.splitlines()[-30:]),
                           hint=f"docker exec {cp.name} kubeadm init --config={PATH} --skip-phases=preflight --v=6")
    ctx.kubeconfig = ctx.engine.get_file(cp.name, "/etc/kubernetes/admin.conf")
