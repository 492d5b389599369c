"""The versioned cluster config: ``apiVersion: dindind.dev/v1alpha1``, ``kind: Cluster``.

What one cluster looks like - its nodes with their roles, labels, kubelet
arguments, kubeadm patches, mounts and ports, its network, and the Kubernetes
knobs (featureGates, runtimeConfig, containerdConfigPatches: TOML, parsed here
with tomllib) - in a file of its own beside the build config, after kind's
v1alpha4 Cluster. ``doit
cluster:up --config FILE`` reads it, and so does the cluster image
(``--config FILE`` or ``--config-json JSON`` after the image).

It is declared once, in :data:`SPEC`, with the build config's Field
machinery (dindind.base.config): the same declaration gives the validator
(every problem at once, each with its key path), the defaults and
``config/cluster.schema.json`` (``python -m dindind schema cluster``; a test
keeps the committed copy equal to it). The text is decoded as hostile input
exactly as the build config is (dindind.base.yamlsafe).

``apiVersion`` and ``kind`` are read first: an unknown one is refused naming
the known ones, and nothing else is judged (the rest is that version's shape).

The build config's ``cluster:`` keys that describe the same things
(:data:`LEGACY_KEYS`) keep working; :func:`deprecation` is the one line that
says so when a config changes them. New keys are in this file only.
"""

import ipaddress
import json
import os
import posixpath
import re
import tomllib
from pathlib import Path

from dindind.base import config, netfamily
from dindind.base.config import ARG_RE, NAME_FMT, NAME_RE, Field
from dindind.base.errors import ConfigError

HINT = "fix the keys above; config/cluster.schema.json describes every key (README: Cluster config)"
from dindind.base.yamlsafe import MAX_BYTES, decode, show, text as _text

API_GROUP = "dindind.dev"
API_VERSION = f"{API_GROUP}/v1alpha1"
KIND = "Cluster"
KNOWN = {API_VERSION: (KIND,)}          # apiVersion -> the kinds it has
SCHEMA_PATH = config.ROOT / "config" / "cluster.schema.json"

ROLES = ("control-plane", "worker")
# control-plane counts: etcd (one member per control plane) needs a majority of its members, so an even
# count tolerates no more failures than the odd count below it; more than 7 only slows every write
CONTROL_PLANES = (1, 3, 5, 7)
MAX_WORKERS = config.int_range("cluster.workers")[1]
# the longest argument a Linux exec takes (MAX_ARG_STRLEN is 32 pages): --config-json stays well below
MAX_JSON = 100_000

# ------------------------------------------------------------------ value rules

_NAME63 = r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)"
_DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
LABEL_KEY_RE = rf"^({_DNS_SUBDOMAIN}/)?{_NAME63}$"
LABEL_KEY_FMT = "a label key: [PREFIX/]NAME, NAME up to 63 letters, digits, '-', '_' or '.', PREFIX a DNS subdomain"
LABEL_VALUE_RE = rf"^{_NAME63}?$"
LABEL_VALUE_FMT = "a label value: up to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"

# The labels a kubelet may set on its own Node (--node-labels) in the kubernetes.io and k8s.io
# namespaces (k8s.io/kubelet/pkg/apis/well_known_labels.go): any other key there makes it refuse to start.
KUBELET_LABELS = ("kubernetes.io/hostname", "kubernetes.io/os", "kubernetes.io/arch", "beta.kubernetes.io/os",
                  "beta.kubernetes.io/arch", "beta.kubernetes.io/instance-type", "node.kubernetes.io/instance-type",
                  "topology.kubernetes.io/zone", "topology.kubernetes.io/region",
                  "failure-domain.beta.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/region")
KUBELET_LABEL_NAMESPACES = ("kubelet.kubernetes.io", "node.kubernetes.io")

# where dindind itself mounts something in a node (dindind.cluster.actions.provision): not for extraMounts
RESERVED_PATHS = ("/", "/run", "/run/lock", "/tmp", "/var/lib/kubelet", "/var/log", "/lib/modules",
                  "/sys/fs/cgroup", "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs")
# kubelet arguments dindind writes itself (kubeadm's nodeRegistration.kubeletExtraArgs)
OWN_KUBELET_ARGS = {"node-ip": "dindind sets each node's address", "provider-id": "dindind sets it per node",
                    "node-labels": "write the node's labels under labels: (KEY: VALUE)"}


# featureGates names (k8s.io/component-base/featuregate: CamelCase) and runtimeConfig keys (kube-apiserver
# --runtime-config: api/all, api/ga, api/beta, api/alpha, GROUP/VERSION, v1, GROUP/VERSION/RESOURCE)
GATE_RE = r"^[A-Z][A-Za-z0-9]{0,99}$"
GATE_FMT = "a feature gate name: a CamelCase identifier (letters and digits, a capital first), e.g. InPlacePodVerticalScaling"
RUNTIME_KEY_RE = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?(/[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?){0,2}$"
RUNTIME_KEY_FMT = "an API group/version such as api/alpha, api/all, v1 or resource.k8s.io/v1beta1"
# the local registry (registry:): kind's recipe's port; the API server's port in the nodes and in the cluster
# container, where the registry is published too (nested), is never a registry port
REGISTRY_PORT = 5001
API_PORT = 6443
INNER_PORTS = 40000     # the cluster container's port for the k-th extraPortMapping (dindind.cluster.passthrough)

# the containerd config versions a containerdConfigPatches entry may name (containerd 2 migrates 2 to 3)
CONTAINERD_VERSIONS = (2, 3)
MAX_PATCH = 20_000


def _in_namespace(namespace, domain):
    return namespace == domain or namespace.endswith("." + domain)


def _label_key(key):
    """None, or why kubelet would refuse ``key`` in --node-labels (its kubernetes.io/k8s.io rule)."""
    namespace = key.split("/", 1)[0] if "/" in key else ""
    if len(namespace) > 253:
        return "has a prefix longer than 253 characters"
    restricted = _in_namespace(namespace, "kubernetes.io") or _in_namespace(namespace, "k8s.io")
    if restricted and key not in KUBELET_LABELS and \
            not any(_in_namespace(namespace, ns) for ns in KUBELET_LABEL_NAMESPACES):
        return ("is in the kubernetes.io/k8s.io namespace, where kubelet sets only "
                f"{', '.join(n + '/*' for n in KUBELET_LABEL_NAMESPACES)} and a few well-known keys "
                "(it would refuse to start): use a prefix of your own, e.g. example.com/role")
    return None


def _abs_path(value):
    if "\n" in value or "\x00" in value:
        return "must not contain newlines or NUL"
    if not value.startswith("/"):
        return "is not an absolute path"
    if posixpath.normpath(value) in RESERVED_PATHS:
        return "is where dindind mounts something itself; choose another path"
    return None


def _toml_text(value):
    if "\x00" in value:
        return "must not contain NUL"
    if len(value) > MAX_PATCH:
        return f"is longer than {MAX_PATCH} characters"
    return None


def toml_problem(text):
    """None, or why containerd could not take ``text`` as a config drop-in (one line)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return f"is not valid TOML: {exc}"
    if "imports" in doc:
        return "sets imports: a patch cannot import further files (give each as a patch of its own)"
    version = doc.get("version")
    if version is not None and version not in CONTAINERD_VERSIONS:
        return (f"has version = {show(version)}: containerd config versions are "
                f"{' and '.join(map(str, CONTAINERD_VERSIONS))} (or leave it out: the node's own is used)")
    return None


def _host_path(value):
    if "\n" in value or "\x00" in value:
        return "must not contain newlines or NUL"
    return None


NODE = {
    "role": Field("string", None, required=True, enum=list(ROLES),
                  doc="control-plane (1, 3, 5 or 7 of them; more than one: HA behind a load "
                      "balancer) or worker"),
    "labels": Field("object", {}, keys=Field("string", pattern=LABEL_KEY_RE, fmt=LABEL_KEY_FMT, check=_label_key),
                    values=Field("string", pattern=LABEL_VALUE_RE, fmt=LABEL_VALUE_FMT),
                    doc="labels of the node's Node object (kubelet's --node-labels)"),
    "kubeletExtraArgs": Field("array", [], items=Field("string", pattern=ARG_RE, fmt="--flag=value"),
                              doc="kubelet arguments of this node, after the cluster's (a flag given in both: "
                                  "this node's value)"),
    "kubeadmConfigPatches": Field("array", [], items=Field("object", check=config._kubeadm_patch),
                                  doc="mappings deep-merged into this node's kubeadm document of the same kind, "
                                      "after the cluster's patches"),
    "extraMounts": Field("array", [], doc="host paths mounted into the node (nested: through the cluster "
                                          "container)", items=Field("object", fields={
        "hostPath": Field("string", None, required=True, check=_host_path,
                          doc="a file or folder on the host (relative: to the config file); must exist"),
        "containerPath": Field("string", None, required=True, check=_abs_path, doc="where it appears in the node"),
        "readOnly": Field("boolean", False),
    })),
    "extraPortMappings": Field("array", [], doc="host ports forwarded to a port of the node (nested: through "
                                                "the cluster container)", items=Field("object", fields={
        "containerPort": Field("integer", None, required=True, minimum=1, maximum=65535),
        "hostPort": Field("integer", 0, minimum=0, maximum=65535, doc="0: a free port, picked at cluster:up"),
        "listenAddress": Field("string", "127.0.0.1", check=config._ip,
                               doc="the host address it listens on (anything but loopback prints a warning)"),
        "protocol": Field("string", "TCP", enum=["TCP", "UDP"]),
    })),
}

SPEC = {
    "apiVersion": Field("string", None, required=True, enum=[API_VERSION]),
    "kind": Field("string", None, required=True, enum=[KIND]),
    "name": Field("string", None, nullable=True, pattern=NAME_RE, fmt=NAME_FMT,
                  doc="the cluster name (--name wins); default: the build config's cluster.name"),
    "nodes": Field("array", None, nullable=True, items=Field("object", fields=NODE),
                   doc="the nodes: 1, 3, 5 or 7 control planes (more than one: high availability behind "
                       "a load balancer) and up to 10 workers; default: a control plane and two workers "
                       "(--workers N: N workers)"),
    "networking": Field("object", None, fields={
        "apiServerAddress": Field("string", "127.0.0.1", check=config._ip,
                                  doc="host address the API server is published on"),
        "apiServerPort": Field("integer", 0, minimum=0, maximum=65535, doc="0: a free port, picked at cluster:up"),
        "ipFamily": Field("string", "ipv4", enum=list(netfamily.FAMILIES),
                          doc="ipv4, ipv6 or dual (both: every pod and node gets an address of each family)"),
        "podSubnet": Field("string", None, nullable=True, check=netfamily.cidr_list_problem,
                           doc="each node gets a /24 (IPv4) and a /64 (IPv6) of it; dual stack: IPV4,IPV6 "
                               "(or IPV6,IPV4: the family first in serviceSubnet comes first); default: "
                               "10.244.0.0/16, fd00:10:244::/56 or both"),
        "serviceSubnet": Field("string", None, nullable=True, check=netfamily.cidr_list_problem,
                               doc="dual stack: IPV4,IPV6 or IPV6,IPV4, the primary family first; default: "
                                   "10.96.0.0/16, fd00:10:96::/112 or both"),
        "nodeSubnet": Field("string", "172.30.0.0/24", check=config._cidr,
                            doc="the bridge network the node containers live on (IPv4: it has one whatever "
                                "ipFamily is)"),
        "nodeSubnetIPv6": Field("string", netfamily.NODE_SUBNET_V6, check=config._cidr,
                                doc="the bridge network's IPv6 subnet (ipFamily ipv6 or dual)"),
        "kubeProxyMode": Field("string", "iptables", enum=list(netfamily.KUBE_PROXY_MODES),
                               doc="kube-proxy's mode; none: no kube-proxy (bring your own service proxy)"),
        "disableDefaultCNI": Field("boolean", False, doc="true: no pod network is installed; bring your own"),
    }),
    "kubeletExtraArgs": Field("array", [], items=Field("string", pattern=ARG_RE, fmt="--flag=value"),
                              doc="kubelet arguments of every node"),
    "kubeadmConfigPatches": Field("array", [], items=Field("object", check=config._kubeadm_patch),
                                  doc="mappings deep-merged into the kubeadm document of the same kind, every node"),
    "featureGates": Field("object", {}, keys=Field("string", pattern=GATE_RE, fmt=GATE_FMT),
                          values=Field("boolean"),
                          doc="Kubernetes feature gates (Name: true | false) of kube-apiserver, "
                              "kube-controller-manager, kube-scheduler, kubelet and kube-proxy"),
    "runtimeConfig": Field("object", {}, keys=Field("string", pattern=RUNTIME_KEY_RE, fmt=RUNTIME_KEY_FMT),
                           values=Field("string", enum=["true", "false"]),
                           doc="kube-apiserver --runtime-config (\"api/alpha\": \"true\"; quote the value)"),
    "containerdConfigPatches": Field("array", [], items=Field("string", check=_toml_text),
                                     doc="TOML drop-ins for every node's containerd, "
                                         "/etc/containerd/conf.d/NN-dindind-patch.toml, in this order"),
    # `registry: true | false` is read as {enabled: true | false} (see _registry_shorthand)
    "registry": Field("object", None, nullable=True, fields={
        "enabled": Field("boolean", True, doc="false: no registry (the mapping is kept)"),
        "hostPort": Field("integer", REGISTRY_PORT, minimum=1, maximum=65535,
                          doc="the host port to push to (docker push localhost:PORT/IMAGE); pods pull "
                              "localhost:PORT/IMAGE too"),
        "listenAddress": Field("string", "127.0.0.1", check=config._ip,
                               doc="the host address it listens on (anything but loopback prints a warning)"),
    }, doc="a local registry beside the nodes (true, or a mapping); default: none"),
}

# The build config's cluster keys this file replaces: build key -> where it lives here.
LEGACY_KEYS = {"workers": "nodes", "pod_subnet": "networking.podSubnet",
               "service_subnet": "networking.serviceSubnet", "node_subnet": "networking.nodeSubnet",
               "api_address": "networking.apiServerAddress", "api_port": "networking.apiServerPort",
               "cni": "networking.disableDefaultCNI", "kubelet_extra_args": "kubeletExtraArgs",
               "kubeadm_patches": "kubeadmConfigPatches"}


# ------------------------------------------------------------------ checks across keys

def _arg_problems(where, args, problems):
    seen = set()
    for i, arg in enumerate(args or ()):
        if arg is None:
            continue
        flag = arg[2:].partition("=")[0]
        if flag in OWN_KUBELET_ARGS:
            problems.append(f"{where}[{i}]: {show(arg)}: {OWN_KUBELET_ARGS[flag]}")
        elif flag in seen:
            problems.append(f"{where}[{i}]: --{flag} is given twice")
        seen.add(flag)


def _resolve(base_dir, path):
    """A hostPath made absolute (relative: to the config file's folder), normalized, links kept."""
    return os.path.normpath(os.path.join(str(base_dir), path)) if base_dir else os.path.normpath(path)


def _exists(path):
    try:
        return os.path.exists(path)
    except (OSError, ValueError):
        return False


def _node_subnet_room(nodes, subnet, problems):
    """The node subnet must hold the gateway, every node and (HA) the load balancer at its last host."""
    if nodes is None or not subnet:
        return
    try:
        net = ipaddress.ip_network(subnet)
    except ValueError:
        return
    roles = [n["role"] for n in nodes if n is not None]
    need = 1 + len(roles) + (1 if roles.count("control-plane") > 1 else 0)
    if net.num_addresses - 2 < need:
        problems.append(f"networking.nodeSubnet: {subnet} has room for {max(net.num_addresses - 2, 0)} addresses, "
                        f"the cluster needs {need} (the gateway, {len(roles)} nodes"
                        + (", the load balancer" if need > 1 + len(roles) else "") + "): give a larger subnet")


def _nearest_odd(planes):
    return min(max(planes - 1, 1), CONTROL_PLANES[-1])


def _cross_check(v, base_dir, check_paths, problems):
    nodes = v["nodes"]
    if nodes is not None:
        roles = [n["role"] for n in nodes if n is not None]
        planes = roles.count("control-plane")
        if planes == 0:
            problems.append("nodes: no node has role: control-plane; a cluster needs one")
        elif planes not in CONTROL_PLANES:
            why = (f"an even count survives no more failures than {planes - 1} (a majority of {planes} is "
                   f"{planes // 2 + 1})" if planes % 2 == 0 else
                   f"more than {CONTROL_PLANES[-1]} members only slow every write down")
            problems.append(f"nodes: {planes} control-plane nodes: give 1, 3, 5 or 7 (e.g. {_nearest_odd(planes)}). "
                            "Each control plane runs an etcd member, and etcd works only while a majority "
                            f"(quorum) of its members is up: {why}")
        if roles.count("worker") > MAX_WORKERS:
            problems.append(f"nodes: {roles.count('worker')} workers: at most {MAX_WORKERS}")
        family = (v["networking"] or {}).get("ipFamily")
        if planes > 1 and family not in (None, "ipv4"):
            # the load balancer and controlPlaneEndpoint are IPv4 only so far: never brought up otherwise
            problems.append(f"nodes: {planes} control planes with networking.ipFamily: {family}: high availability "
                            "is built for ipFamily ipv4 only so far; use one control plane, or ipFamily: ipv4")
    _arg_problems("kubeletExtraArgs", v["kubeletExtraArgs"], problems)
    for i, patch in enumerate(v["containerdConfigPatches"] or ()):
        if patch is not None and not _toml_text(patch) and (msg := toml_problem(patch)):
            problems.append(f"containerdConfigPatches[{i}]: {msg}")
    net = v["networking"] or {}
    if net.get("ipFamily") in netfamily.FAMILIES:       # the subnets' defaults follow the family
        for key, table in (("podSubnet", netfamily.POD_SUBNETS), ("serviceSubnet", netfamily.SERVICE_SUBNETS)):
            if net.get(key) is None:
                net[key] = netfamily.default_subnet(table, net["ipFamily"])
    netfamily.problems(net, problems)
    _node_subnet_room(nodes, net.get("nodeSubnet"), problems)
    binds = {}        # (protocol, host port) -> [(listen address, key path)]
    for i, node in enumerate(nodes or ()):
        if node is None:
            continue
        where = f"nodes[{i}]"
        _arg_problems(f"{where}.kubeletExtraArgs", node["kubeletExtraArgs"], problems)
        targets = set()
        for j, m in enumerate(node["extraMounts"] or ()):
            if m is None or m["hostPath"] is None or m["containerPath"] is None:
                continue
            mwhere = f"{where}.extraMounts[{j}]"
            target = posixpath.normpath(m["containerPath"])
            if target in targets:
                problems.append(f"{mwhere}.containerPath: {show(m['containerPath'])} is mounted twice in this node")
            targets.add(target)
            if base_dir is None and not m["hostPath"].startswith("/"):
                problems.append(f"{mwhere}.hostPath: {show(m['hostPath'])} must be absolute (the config has no "
                                "file to be relative to)")
                continue
            path = _resolve(base_dir, m["hostPath"])
            if check_paths and not _exists(path):
                problems.append(f"{mwhere}.hostPath: {show(path)} does not exist")
            m["hostPath"], m["containerPath"] = path, target
        ports = set()
        for j, p in enumerate(node["extraPortMappings"] or ()):
            if p is None or p["containerPort"] is None:
                continue
            pwhere = f"{where}.extraPortMappings[{j}]"
            if (p["containerPort"], p["protocol"]) in ports:
                problems.append(f"{pwhere}: containerPort {p['containerPort']}/{p['protocol']} of this node is "
                                "mapped twice")
            ports.add((p["containerPort"], p["protocol"]))
            if p["hostPort"]:
                binds.setdefault((p["protocol"], p["hostPort"]), []).append((p["listenAddress"], pwhere))
    if net.get("apiServerPort"):
        binds.setdefault(("TCP", net["apiServerPort"]), []).insert(
            0, (net.get("apiServerAddress"), "networking.apiServerPort"))
    _registry_problems(v, problems)
    for (protocol, port), users in binds.items():
        for k, (address, where) in enumerate(users):
            clash = next((w for a, w in users[:k] if a == address or "0.0.0.0" in (a, address)
                          or "::" in (a, address)), None)
            if clash:
                problems.append(f"{where}: {address}:{port}/{protocol} is taken by {clash} already")


def _registry_problems(v, problems):
    """The registry's host port is published by the cluster container too (nested: on the same port), so it
    may be no port the cluster already uses, whatever the mode and the addresses: refused the same way."""
    reg = v["registry"]
    if not reg or not reg["enabled"] or not isinstance(reg["hostPort"], int) or not 1 <= reg["hostPort"] <= 65535:
        return
    port, where = reg["hostPort"], "registry.hostPort"
    if port == API_PORT:
        problems.append(f"{where}: {port} is the API server's port in the nodes and the cluster container; "
                        "choose another (the default is 5001)")
    net = v["networking"] or {}
    if net.get("apiServerPort") and net["apiServerPort"] == port:
        problems.append(f"{where}: {port} is networking.apiServerPort already")
    k = 0
    for i, node in enumerate(v["nodes"] or ()):
        for j, p in enumerate((node or {}).get("extraPortMappings") or ()):
            if p is None:
                continue
            if p["hostPort"] == port and p["protocol"] == "TCP":
                problems.append(f"{where}: {port} is nodes[{i}].extraPortMappings[{j}].hostPort already")
            elif INNER_PORTS + k == port:
                problems.append(f"{where}: {port} is where the cluster container forwards "
                                f"nodes[{i}].extraPortMappings[{j}] (ports {INNER_PORTS} and up, one per "
                                "mapping); choose another")
            k += 1
    subnet = net.get("nodeSubnet")
    if subnet and not config._cidr(subnet):
        hosts = ipaddress.ip_network(subnet).num_addresses - 2
        nodes = len(v["nodes"]) if v["nodes"] is not None else 3
        # the gateway, the nodes, the registry and the address kept for a load balancer (the last host)
        if hosts < nodes + 3:
            problems.append(f"networking.nodeSubnet: {subnet} has no room for the gateway, {nodes} node(s), "
                            "the registry and a load balancer address; use a larger one (e.g. a /24)")


def _registry_shorthand(data, problems):
    """``registry: true | false`` as the mapping it stands for; a value that is neither that nor a mapping
    is one problem (and then no registry)."""
    if not isinstance(data, dict) or data.get("registry") is None:
        return data
    value = data["registry"]
    if isinstance(value, bool):
        return {**data, "registry": {"enabled": value}}
    if not isinstance(value, dict):
        problems.append(f"registry: expected true, false or a mapping (enabled, hostPort, listenAddress), "
                        f"got {type(value).__name__} {show(value)}")
        return {**data, "registry": None}
    return data


def registry(doc):
    """The registry settings of a validated config: {enabled, hostPort, listenAddress} (off when not given)."""
    reg = doc.get("registry")
    if reg is None:
        return {"enabled": False, "hostPort": REGISTRY_PORT, "listenAddress": "127.0.0.1"}
    return dict(reg)


# ------------------------------------------------------------------ reading

def _error(path, problems):
    exc = ConfigError(path, problems)
    exc.message = f"invalid cluster config {path}: {len(exc.problems)} problem(s)"
    exc.hint = HINT
    return exc


def _version_problems(data):
    """Problems with apiVersion/kind (then nothing else is judged), or []."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        return [f"(top level): expected a mapping, got {type(data).__name__}"]
    api, kind = data.get("apiVersion"), data.get("kind")
    known = ", ".join(f"apiVersion: {a} with kind: {' or '.join(k)}" for a, k in KNOWN.items())
    if api is None and kind is None:
        hint = " (this looks like a build config: give it with `doit config=FILE`)" \
            if {"kubernetes", "cluster", "node", "base"} & set(data) else ""
        return [f"(top level): no apiVersion and kind: a cluster config starts with apiVersion: {API_VERSION} "
                f"and kind: {KIND}{hint}"]
    if api not in KNOWN:
        return [f"apiVersion: {show(api)} is not known (known: {known})"]
    if kind not in KNOWN[api]:
        return [f"kind: {show(kind)} is not a kind of {api} (known: {known})"]
    return []


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def parse(text, path, base_dir=None, check_paths=True):
    """The validated, defaulted cluster config (plain JSON data) of ``text``; else a ConfigError
    listing every problem. ``base_dir``: the folder relative hostPaths start from (None: they must
    be absolute); ``check_paths``: every hostPath must exist (here, where the nodes are created)."""
    path = Path(path)
    data, problems = decode(path, text)
    version = _version_problems(data)
    if version:
        raise _error(path, version + problems)
    values = config._check_fields("", SPEC, _registry_shorthand(data, problems), problems)
    if values["networking"] is None:
        values["networking"] = config._check_fields("networking", SPEC["networking"].fields, {}, problems)
    values = _plain(values)
    values["registry"] = registry(values)
    _cross_check(values, base_dir, check_paths, problems)
    if problems:
        raise _error(path, problems)
    return values


def load(path):
    """The cluster config in the file ``path`` (relative hostPaths start at its folder)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise _error(path, [f"cannot read the cluster config: {exc.strerror}"]) from None
    return parse(_text(path, data), path, base_dir=path.resolve().parent)


def from_json(text, what="--config-json"):
    """The cluster config given as one JSON text (a command-line argument); hostPaths must be absolute."""
    if len(text) > MAX_JSON:
        raise _error(Path(what), [f"(top level): {len(text)} characters, more than the {MAX_JSON} an "
                                  "argument may carry; mount the file and use --config FILE"])
    return parse(text, Path(what), base_dir=None)


def to_json(doc):
    """The one-line JSON of a cluster config (what cluster:up passes to the cluster image)."""
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    if len(text) > MAX_JSON:
        raise _error(Path("cluster config"), [f"(top level): {len(text)} characters as JSON, more than "
                                              f"the {MAX_JSON} an argument may carry"])
    return text


def deprecation(cfg, with_config=False):
    """One line when the build config ``cfg`` changes a cluster key this file replaces, else None.
    ``with_config``: a cluster config was given too, so those keys are not used."""
    changed = [k for k in LEGACY_KEYS
               if _plain(cfg.cluster[k]) != _plain(config.SPEC["cluster"][k].default)]
    if not changed:
        return None
    keys = ", ".join(f"cluster.{k}" for k in changed)
    if with_config:
        return (f"NOTE: the build config's {keys} {'is' if len(changed) == 1 else 'are'} not used: "
                "the cluster config says what the cluster looks like")
    where = ", ".join(f"{LEGACY_KEYS[k]}" for k in changed)
    return (f"DEPRECATED: the build config's {keys}: write {'it' if len(changed) == 1 else 'them'} in a cluster "
            f"config ({API_VERSION} Cluster: {where}) and give it with `doit cluster:up --config FILE`")


# ------------------------------------------------------------------ JSON Schema

def json_schema():
    """The JSON Schema (draft 2020-12) of the cluster config, derived from SPEC."""
    s = config.object_schema(SPEC)
    reg = s["properties"]["registry"]
    reg["type"] = "object"
    s["properties"]["registry"] = {"description": reg.pop("description"),
                                   "anyOf": [{"type": ["boolean", "null"]}, reg]}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://dindind.invalid/cluster.schema.json",
        "title": f"dindind cluster configuration ({API_VERSION} {KIND})",
        **s,
    }


def looks_versioned(text):
    """Whether a config text names an apiVersion at the top level (a cluster config, not a build config)."""
    return re.search(r"(?m)^apiVersion\s*:", text) is not None
