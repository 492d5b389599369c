"""kubeadm configuration: chosen by version in code, rendered from templates/kubeadm.

The template is picked here (v1beta3 before Kubernetes 1.31, v1beta4 from
1.31), never by an if-ladder inside a template. Users' patches (mappings with
a ``kind``: the cluster's, then the node's) are deep-merged into the rendered
document of the same kind.

A node's kubelet gets dindind's own arguments (node-ip, provider-id), the
cluster's kubeletExtraArgs, then the node's (a flag given twice: the later
value), and the node's labels as one ``node-labels`` argument, all through
kubeadm's ``nodeRegistration.kubeletExtraArgs`` - which kubeadm writes to
/var/lib/kubelet/kubeadm-flags.env, and kubelet puts on its Node object when
it registers. Its ``node-ip`` is one address per IP family of the cluster
(both for dual stack), the primary family's first; each control plane
advertises its own primary-family address. The KubeProxyConfiguration carries
the cluster config's kubeProxyMode (none: no such document; kubeadm init
then skips the kube-proxy addon: actions/config.py).

The cluster config's featureGates go to every component that has them:
kube-apiserver, kube-controller-manager and kube-scheduler as a
``feature-gates`` argument (kubeadm's extraArgs), the KubeletConfiguration's
and the KubeProxyConfiguration's ``featureGates``; its runtimeConfig to
kube-apiserver's ``runtime-config``. Both are sorted by name, so the same
config renders the same text.

A node's own KubeletConfiguration patches are not merged into its kubeadm
document: ``kubeadm join`` takes the kubelet's configuration from the
cluster (the kubelet-config ConfigMap, which ``init`` uploads from the first
control plane's document, so a patch merged there would reach every node).
They become kubeadm's ``kubeletconfiguration`` patch target instead - one
merge patch in :data:`PATCH_DIR`, named by Init/JoinConfiguration's
``patches.directory`` - which kubeadm applies to that node's kubelet only.
The cluster's KubeletConfiguration patches stay in the document (every node).
"""

import json

import re

import yaml

from dindind.base import render
from dindind.base.config import ROOT
from dindind.base.errors import DindindError
from dindind.cluster.plan import API_PORT

TEMPLATES = ROOT / "templates" / "kubeadm"
CGROUP_DRIVER = "systemd"   # matches SystemdCgroup = true in the node's containerd config
PATCH_DIR = "/etc/dindind/patches"
KUBELET_PATCH = "kubeletconfiguration+merge.json"     # kubeadm: TARGET[+PATCHTYPE].EXT


def api_version(kubernetes_version):
    m = re.match(r"^v?(\d+)\.(\d+)", kubernetes_version)
    if not m:
        raise DindindError(f"cannot read Kubernetes version {kubernetes_version!r}")
    return "v1beta4" if (int(m.group(1)), int(m.group(2))) >= (1, 31) else "v1beta3"


def node_ips(plan, node, node_ip):
    """The node's addresses for the cluster's IP families, the primary first (``node_ip``: its IPv4
    address as the engine reports it; the IPv6 one is the plan's static address)."""
    return [node_ip if v == 4 else node.ip6 for v in plan.settings.ip_versions]


def kubelet_args(plan, node, node_ip):
    """(flag, value) pairs of one node's kubelet: dindind's, the cluster's, the node's, its labels."""
    spec = node.spec or plan.settings.node_specs()[node.index]
    args = {"node-ip": ",".join(node_ips(plan, node, node_ip)), "provider-id": f"dindind://docker/{plan.name}/{node.name}"}
    for arg in tuple(plan.settings.kubelet_extra_args) + tuple(spec.kubelet_extra_args):
        key, _, value = arg[2:].partition("=")
        args.pop(key, None)         # a flag given again takes the later place and value
        args[key] = value
    if spec.labels:
        args["node-labels"] = ",".join(f"{k}={v}" for k, v in spec.labels)
    return list(args.items())


def feature_gates_arg(gates):
    """The ``--feature-gates`` value of ``gates`` ((name, bool) pairs): Name=true,Other=false, sorted."""
    return ",".join(f"{k}={'true' if v else 'false'}" for k, v in sorted(gates))


def runtime_config_arg(runtime_config):
    """The ``--runtime-config`` value of ``runtime_config`` ((group/version, "true"|"false") pairs), sorted."""
    return ",".join(f"{k}={v}" for k, v in sorted(runtime_config))


def component_args(settings):
    """{component: [(flag, value)]}: the extraArgs the cluster config adds to each control-plane component."""
    gates = [("feature-gates", feature_gates_arg(settings.feature_gates))] if settings.feature_gates else []
    runtime = [("runtime-config", runtime_config_arg(settings.runtime_config))] if settings.runtime_config else []
    return {"apiserver_args": gates + runtime, "controller_manager_args": list(gates), "scheduler_args": list(gates)}


def context(plan, node, node_ip, control_plane_ip, cgroup_v1=False, certificate_key=None):
    s = plan.settings
    cp = plan.control_plane
    lb = plan.load_balancer
    sans = ["localhost", "127.0.0.1", cp.name, control_plane_ip]
    if lb:          # HA: every API server answers as the load balancer (its address and container name)
        sans += [lb.ip, lb.name]
    if s.ipv6:
        sans += ["::1", cp.ip6]
    if s.api_address not in sans:
        sans.append(s.api_address)
    return {
        "kubernetes_version": s.kubernetes_version,
        "cluster_name": plan.name,
        "control_plane_endpoint": lb.endpoint if lb else f"{cp.name}:{API_PORT}",
        "cert_sans": sans,
        "pod_subnet": s.pod_subnet,
        "service_subnet": s.service_subnet,
        "token": plan.token,
        # HA: init uploads the control-plane certificates encrypted with this key, and every other
        # control plane joins with it (kubeadm's --upload-certs / --certificate-key, given in the file:
        # kubeadm refuses those flags beside --config)
        "certificate_key": certificate_key if node.is_control_plane else None,
        "control_plane_join": node.is_control_plane and node.name != cp.name,
        "advertise_address": node_ips(plan, node, node_ip)[0],   # each control plane its own
        "bind_port": API_PORT,
        "node_name": node.name,
        # no workers: the control planes run the workloads, so they register without kubeadm's
        # NoSchedule taint (kind's rule); kubeadm takes an empty list as "no taints"
        "untainted": not plan.workers,
        "kubelet_args": kubelet_args(plan, node, node_ip),
        "cgroup_driver": CGROUP_DRIVER,
        # kubelet >= 1.35 refuses cgroup v1 unless told; cgroup v2 hosts get the plain configuration
        "fail_cgroup_v1": False if cgroup_v1 else None,
        "feature_gates": sorted(s.feature_gates),      # KubeletConfiguration, KubeProxyConfiguration
        # none: kube-proxy is not installed (kubeadm init skips its addon) and gets no configuration
        "kube_proxy_mode": None if s.kube_proxy_mode == "none" else s.kube_proxy_mode,
        **component_args(s),
    }


def _merge(base, patch):
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = _merge(base[k], v) if k in base else v
        return out
    return patch


def apply_patches(text, patches):
    if not patches:
        return text
    docs = [d for d in yaml.safe_load_all(text) if d]
    kinds = {d.get("kind") for d in docs}
    for p in patches:
        if p.get("kind") not in kinds:
            raise DindindError(f"kubeadm patch for kind {p.get('kind')!r} matches no document",
                               hint=f"kubeadm patches may name the kinds {', '.join(sorted(kinds))}")
        docs = [_merge(d, p) if d.get("kind") == p["kind"] else d for d in docs]
    return "# kubeadm configuration generated by dindind (patched)\n" + yaml.safe_dump_all(docs, sort_keys=False)


def kubelet_patch(plan, node):
    """The node's own KubeletConfiguration patches merged into one merge patch (JSON text), or None."""
    spec = node.spec or plan.settings.node_specs()[node.index]
    merged = {}
    for p in spec.kubeadm_patches:
        if p.get("kind") == "KubeletConfiguration":
            merged = _merge(merged, {k: v for k, v in p.items() if k not in ("kind", "apiVersion")})
    return json.dumps(merged, sort_keys=True) + "\n" if merged else None


def render_config(plan, node, node_ip, control_plane_ip, cgroup_v1=False, certificate_key=None):
    """The kubeadm config file for one node (``cgroup_v1``: the nodes see a cgroup v1 hierarchy;
    ``certificate_key``: HA control planes only, for the copy kubeadm reads while it runs)."""
    name = f"{api_version(plan.settings.kubernetes_version)}.yaml.j2"
    text = render.render_string(TEMPLATES, name, context(plan, node, node_ip, control_plane_ip, cgroup_v1,
                                                         certificate_key))
    spec = node.spec or plan.settings.node_specs()[node.index]
    own = [p for p in spec.kubeadm_patches if p.get("kind") != "KubeletConfiguration"]
    if kubelet_patch(plan, node):
        own += [{"kind": kind, "patches": {"directory": PATCH_DIR}} for kind in ("InitConfiguration", "JoinConfiguration")]
    return apply_patches(text, tuple(plan.settings.kubeadm_patches) + tuple(own))
