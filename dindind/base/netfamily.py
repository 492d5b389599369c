"""IP families of a cluster: ``ipv4``, ``ipv6`` or ``dual`` (pure).

A pod or service subnet is one CIDR (single stack) or two, ``V4,V6`` or
``V6,V4`` (dual stack, kind's form); the family listed first in the service
subnet is the cluster's primary one (Kubernetes' rule: the API server's
advertise address and a Service's first ClusterIP are of that family), and the
pod subnet must list the same family first. The defaults are kind's.

:func:`problems` is the cluster config's check of ``networking``: every
subnet of the right family for ``ipFamily``, big enough for the nodes, and
none overlapping another; each problem names its key path.
"""

import ipaddress

FAMILIES = ("ipv4", "ipv6", "dual")
KUBE_PROXY_MODES = ("iptables", "nftables", "ipvs", "none")

POD_SUBNETS = {4: "10.244.0.0/16", 6: "fd00:10:244::/56"}
SERVICE_SUBNETS = {4: "10.96.0.0/16", 6: "fd00:10:96::/112"}
NODE_SUBNET_V6 = "fd00:172:30::/64"

# what each node takes of the pod subnet (kube-controller-manager's node-cidr-mask-size defaults)
NODE_MASK = {4: 24, 6: 64}
# the largest pod subnet prefix that still holds a slice for each of up to 16 nodes
POD_MAX_PREFIX = {4: 20, 6: 60}
# kube-apiserver: a service range has at most 20 host bits
SERVICE_MIN_PREFIX = {4: 12, 6: 108}
NODE_MAX_PREFIX_V6 = 120        # the bridge's gateway and a dozen nodes


def versions(family):
    """The IP versions of ``family``, in the default order (IPv4 first for dual, as kind)."""
    return {"ipv4": (4,), "ipv6": (6,), "dual": (4, 6)}[family]


def default_subnet(table, family):
    """The default pod or service subnet text of ``family`` (``table``: POD_SUBNETS or SERVICE_SUBNETS)."""
    return ",".join(table[v] for v in versions(family))


def split(text):
    """The CIDR texts of a subnet value (``"A"`` or ``"A,B"``), blanks stripped."""
    return [part.strip() for part in (text or "").split(",")]


def networks(text):
    """The ip_network objects of a valid subnet value, in its order."""
    return [ipaddress.ip_network(part) for part in split(text)]


def cidr_list_problem(value):
    """None, or why ``value`` is not one CIDR or two comma-separated ones (the per-key check)."""
    parts = split(value)
    if len(parts) > 2:
        return "has more than two CIDRs (one, or two for dual stack: IPV4,IPV6)"
    for part in parts:
        try:
            ipaddress.ip_network(part, strict=True)
        except ValueError as exc:
            return f"is not a valid CIDR ({exc})" if len(parts) == 1 else f"has {part!r}, not a valid CIDR ({exc})"
    if len(parts) == 2 and ipaddress.ip_network(parts[0]).version == ipaddress.ip_network(parts[1]).version:
        return "has two CIDRs of the same family (dual stack takes one IPv4 and one IPv6)"
    return None


def primary_version(service_subnet):
    """4 or 6: the family the service subnet lists first."""
    return networks(service_subnet)[0].version


def ordered_versions(family, service_subnet):
    """The cluster's IP versions, the primary one (the service subnet's first) first."""
    return tuple(n.version for n in networks(service_subnet)) if family == "dual" else versions(family)


def _family_problem(key, text, family):
    """None, or why the subnet ``text`` at ``key`` does not match ``family``."""
    got = [n.version for n in networks(text)]
    want = versions(family)
    if sorted(got) == sorted(want):
        return None
    if family == "dual":
        return (f"{key}: {text} is single stack; ipFamily dual takes one IPv4 and one IPv6 CIDR, "
                f"comma-separated (e.g. {default_subnet(POD_SUBNETS if 'pod' in key else SERVICE_SUBNETS, 'dual')})")
    name = {"ipv4": "IPv4", "ipv6": "IPv6"}[family]
    return (f"{key}: {text} is not {name}: ipFamily {family} takes one {name} CIDR "
            "(or set ipFamily: dual for both families)")


def problems(net, out, prefix="networking"):
    """Append to ``out`` every problem of the networking mapping ``net`` (already defaulted and checked
    key by key; a None value was wrong and is skipped)."""
    family = net.get("ipFamily")
    if family not in FAMILIES:
        return
    subnets = {}            # key path -> [ip_network], only those of the right family
    for key in ("podSubnet", "serviceSubnet"):
        text = net.get(key)
        if text is None or cidr_list_problem(text):
            continue
        problem = _family_problem(f"{prefix}.{key}", text, family)
        if problem:
            out.append(problem)
            continue
        subnets[f"{prefix}.{key}"] = networks(text)
    pod, svc = subnets.get(f"{prefix}.podSubnet"), subnets.get(f"{prefix}.serviceSubnet")
    if family == "dual" and pod and svc and pod[0].version != svc[0].version:
        out.append(f"{prefix}.podSubnet: {net['podSubnet']} lists IPv{pod[0].version} first but "
                   f"{prefix}.serviceSubnet {net['serviceSubnet']} lists IPv{svc[0].version} first: the family "
                   "listed first is the primary one and must be the same in both")
    for n in pod or ():
        if n.prefixlen > POD_MAX_PREFIX[n.version]:
            out.append(f"{prefix}.podSubnet: {n} is too small: each node takes a /{NODE_MASK[n.version]} "
                       f"(give a /{POD_MAX_PREFIX[n.version]} or larger)")
    for n in svc or ():
        if n.prefixlen < SERVICE_MIN_PREFIX[n.version]:
            out.append(f"{prefix}.serviceSubnet: {n} is too large: kube-apiserver takes at most 20 host bits "
                       f"(a /{SERVICE_MIN_PREFIX[n.version]} or smaller)")
    for key, version in (("nodeSubnet", 4), ("nodeSubnetIPv6", 6)):
        text = net.get(key)
        if text is None or (version == 6 and 6 not in versions(family)):
            continue
        try:
            n = ipaddress.ip_network(text)
        except ValueError:
            continue
        if n.version != version:
            out.append(f"{prefix}.{key}: {text} is not an IPv{version} CIDR")
            continue
        if version == 6 and n.prefixlen > NODE_MAX_PREFIX_V6:
            out.append(f"{prefix}.{key}: {text} is too small for the nodes (a /{NODE_MAX_PREFIX_V6} or larger)")
        subnets[f"{prefix}.{key}"] = [n]
    keys = list(subnets)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            for na in subnets[a]:
                for nb in subnets[b]:
                    if na.version == nb.version and na.overlaps(nb):
                        out.append(f"{a}: {na} overlaps {b} {nb}")


def slices(text, count):
    """Per node, the tuple of its pod slices (one per family of ``text``, in its order)."""
    per_family = []
    for net in networks(text):
        gen = net.subnets(new_prefix=NODE_MASK[net.version])
        per_family.append([str(next(gen)) for _ in range(count)])
    return [tuple(f[i] for f in per_family) for i in range(count)]
