"""The host's inotify instances: enough for the cluster's kubelets? (host side, read only)

Every kubelet (cAdvisor, its certificate and config watchers), systemd,
containerd and the control-plane components of every node take inotify
instances, and nodes are containers without a user namespace: they all count
against one limit of the host, ``fs.inotify.max_user_instances`` (128 on
Debian). A kubelet that gets none exits (``Failed to start cAdvisor
err="inotify_init: too many open files"``) and restarts in a loop, so its
node never becomes Ready - with kubeadm join already done, the cluster just
times out. An HA cluster of 3 control planes and a worker takes about 90;
another cluster beside it leaves too few (kind's known issue, "Pod errors
due to too many open files"). :func:`check` says so before anything is
created; ``./bootstrap`` raises the limit to :data:`RECOMMENDED` as root.
"""

import os

LIMIT_FILE = "/proc/sys/fs/inotify/max_user_instances"
RECOMMENDED = 1024
# instances a node takes, measured on v1.37.2 nodes (kubelet ~6, systemd ~4, containerd 2, dbus 1, kube-proxy 1;
# a control plane adds kube-apiserver ~2 and kube-controller-manager ~2-7); the sample's kubelet takes none
PER_NODE = {"control-plane": 24, "worker": 14}
PER_SAMPLE_NODE = 8


def need(settings):
    """About how many inotify instances the cluster's nodes take."""
    if settings.kubernetes_version.endswith("+sample"):
        return PER_SAMPLE_NODE * len(settings.node_specs())
    return sum(PER_NODE.get(n.role, PER_NODE["worker"]) for n in settings.node_specs())


def in_use(proc="/proc", uid=None):
    """How many inotify instances processes of ``uid`` (this one's) hold now, as far as /proc shows."""
    uid = os.geteuid() if uid is None else uid
    count = 0
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        try:
            if os.stat(f"{proc}/{pid}").st_uid != uid:
                continue
            for fd in os.listdir(f"{proc}/{pid}/fd"):
                if os.readlink(f"{proc}/{pid}/fd/{fd}") == "anon_inode:inotify":
                    count += 1
        except OSError:         # gone, or not ours to read
            continue
    return count


def limit(path=LIMIT_FILE):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def warning(settings, limit_, used):
    """One line when the cluster's nodes would not find the inotify instances they need, else None (pure)."""
    if limit_ is None:
        return None
    wanted = need(settings)
    if used + wanted <= limit_:
        return None
    return (f"WARNING: fs.inotify.max_user_instances is {limit_} and {used} are in use: the "
            f"{len(settings.node_specs())} nodes of {settings.name} take about {wanted} more, and a kubelet that "
            "finds none fails ('inotify_init: too many open files'), so its node never becomes Ready. Raise it: "
            f"sysctl -w fs.inotify.max_user_instances={max(RECOMMENDED, used + wanted)}")


def check(settings):
    """:func:`warning` for this host, now."""
    found = limit()
    return warning(settings, found, in_use()) if found is not None else None
