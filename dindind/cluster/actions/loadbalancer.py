"""HA clusters: the external load balancer in front of the control planes (kind's loadbalancer action).

With more than one control plane, every client - the nodes' kubelets and
kube-proxies, kubeadm's joins, the admin kubeconfig and the port published
to the host - reaches the API servers through one address: a container
``<cluster>-external-load-balancer`` running Debian's haproxy (installed in
the node image, so no other image is needed), at the node subnet's last host
address (.254 of a /24). It proxies TCP to every control plane's :6443 and
checks each one with ``GET /readyz`` over TLS (the API server answers it to
anonymous clients), so a stopped control plane is taken out within seconds and
a connection that cannot reach one is sent to another.

The container is unprivileged: every capability dropped, no new privileges,
haproxy running as its own user; its configuration is written before it
starts (the control planes' addresses are static, so it never changes).
It is created before ``kubeadm init`` (the first control plane's kubeadm
already talks to it) and carries the cluster's label, so rollback and
``cluster:down`` remove it with the nodes.
"""

import time

from dindind.base.errors import DindindError
from dindind.cluster.plan import API_PORT, LB_ROLE

TITLE = "Starting the external load balancer"
CONFIG = "/etc/haproxy/haproxy.cfg"
COMMAND = ["haproxy", "-db", "-f", CONFIG]      # foreground, logs on stdout (docker logs)
USER = "haproxy"                                # Debian's haproxy package creates it
UNPRIVILEGED = {"cap_drop": ["ALL"], "security_opt": ["no-new-privileges"]}
CHECK_INTERVAL = "1s"       # a stopped control plane is out after FALL failed checks: ~2 s
FALL, RISE = 2, 1
START_WAIT = 20             # seconds for haproxy to be running


def config_text(plan):
    """haproxy.cfg: TCP on :6443 to every control plane's API port, each checked with GET /readyz over TLS."""
    servers = "".join(f"  server {n.name} {n.ip}:{API_PORT}\n" for n in plan.control_planes)
    return f"""\
# the external load balancer of dindind cluster {plan.name}: written by dindind (cluster/actions/loadbalancer.py)
global
  log stdout format raw local0 info
  maxconn 4096

defaults
  mode tcp
  log global
  option tcplog
  option dontlognull
  option redispatch
  retries 3
  timeout connect 3s
  # kubectl watches and logs hold a connection open for long
  timeout client 24h
  timeout server 24h
  timeout check 2s

frontend kube-apiserver
  bind *:{API_PORT}
  default_backend control-planes

backend control-planes
  balance roundrobin
  option httpchk
  http-check send meth GET uri /readyz
  http-check expect status 200
  default-server check check-ssl verify none inter {CHECK_INTERVAL} fall {FALL} rise {RISE} on-marked-down shutdown-sessions
{servers}"""


def run_args(ctx):
    """Everything ``docker run`` gets for the load balancer, as containers.run_container keywords."""
    plan = ctx.plan
    lb = plan.load_balancer
    kw = dict(labels=plan.labels(LB_ROLE), hostname=lb.name, network=plan.network, ip=lb.ip,
              entrypoint=COMMAND[:1], command=COMMAND[1:], user=USER, privilege=dict(UNPRIVILEGED),
              files={CONFIG: (config_text(plan), 0o644)}, stop_signal="SIGTERM")
    if ctx.publish:         # the API port on the host goes to the load balancer, not to one control plane
        kw["ports"] = {API_PORT: ctx.publish}
    return kw


def wait_running(ctx, name, timeout=START_WAIT, settle=1.0):
    """Wait until haproxy has run ``settle`` seconds (it took its configuration); else one error with its log."""
    start = time.monotonic()
    while True:
        state = ctx.engine.inspect_container(name)["State"]
        if state.get("Running") and time.monotonic() - start >= settle:
            return
        if state.get("Status") in ("exited", "dead"):
            raise DindindError(f"the load balancer {name} exited (code {state.get('ExitCode')})",
                               detail=ctx.engine.logs(name, tail=20).strip(),
                               hint="a node image without haproxy is older than high availability: "
                                    "rebuild it with `doit build`")
        if time.monotonic() - start >= timeout:
            raise DindindError(f"the load balancer {name} did not start within {timeout}s")
        time.sleep(0.2)


def execute(ctx):
    lb = ctx.plan.load_balancer
    if lb is None:
        return
    ctx.created.append(("container", lb.name))
    ctx.engine.run_container(ctx.node_image, lb.name, **run_args(ctx))
    wait_running(ctx, lb.name)
    ctx.status.info(f"{lb.name} at {lb.ip}:{API_PORT} -> {len(ctx.plan.control_planes)} control planes")
