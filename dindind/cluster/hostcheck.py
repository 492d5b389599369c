"""Can this host do the networking a cluster asks for? Asked before anything is created.

The nodes share the kernel of the machine the engine runs on, so what the
cluster config's ``ipFamily`` and ``kubeProxyMode`` need must be there:

- IPv6 (ipFamily ipv6 or dual): ``/proc/net/if_inet6`` exists and
  ``net.ipv6.conf.all.disable_ipv6`` is 0 in this network namespace (nested,
  the cluster container's: it needs ``--sysctl`` flags, :data:`NESTED_SYSCTLS`),
  and the kernel can NAT IPv6 (ip6tables' nat table, or nf_tables NAT with
  IPv6): the CNI bridge masquerades pods' traffic leaving the node.
- ipvs: the kernel has IP_VS.
- nftables: a kernel of 5.13 or newer (kube-proxy's own requirement) with
  nf_tables.

What the kernel has is read from its configuration (``/proc/config.gz``, or
``/boot/config-RELEASE``), the loaded modules (``/proc/modules``) and the
modules on disk (``/lib/modules/RELEASE``). A feature is missing only when
one of them says so and none says it is there; with none of them readable
the check cannot tell and lets it pass. Pure but for reading those files
under ``root`` (a fake tree in tests).
"""

import gzip
import os
import re

from dindind.base.errors import DindindError

# the cluster container's kernel settings for an IPv6 or dual-stack cluster. The engine starts a
# container with IPv6 off, and without --privileged /proc/sys is read-only in it, so its inner engine
# (dockerd 26) cannot turn it on for the node network ("Unable to enable IPv6 addresses on bridge:
# open /proc/sys/net/ipv6/conf/br-.../disable_ipv6: read-only file system"), nor forwarding (a warning)
NESTED_SYSCTLS = {"net.ipv6.conf.all.disable_ipv6": "0", "net.ipv6.conf.default.disable_ipv6": "0",
                  "net.ipv6.conf.all.forwarding": "1"}
NFTABLES_KERNEL = (5, 13)

# feature -> (kernel config options any of which gives it, module names any of which gives it)
FEATURES = {
    "ipv6 nat": (("CONFIG_IP6_NF_NAT", "CONFIG_NFT_NAT"), ("ip6table_nat", "nft_nat")),
    "ipvs": (("CONFIG_IP_VS",), ("ip_vs",)),
    "nf_tables": (("CONFIG_NF_TABLES",), ("nf_tables",)),
}


class Kernel:
    """What can be read about the running kernel under ``root``."""

    def __init__(self, root="/"):
        self.root = root
        self.release = self._read("proc/sys/kernel/osrelease") or os.uname().release
        self.release = self.release.strip()
        self.config = self._config()
        modules = self._read("proc/modules")
        self.modules = None if modules is None else {line.split()[0] for line in modules.splitlines() if line}
        self.module_files = self._module_files()

    def _path(self, rel):
        return os.path.join(self.root, rel)

    def _read(self, rel):
        try:
            with open(self._path(rel), errors="replace") as f:
                return f.read()
        except OSError:
            return None

    def _config(self):
        """{CONFIG_X: "y" | "m" | "n"} of the kernel's configuration, or None when unreadable."""
        text = None
        try:
            with gzip.open(self._path("proc/config.gz"), "rt", errors="replace") as f:
                text = f.read()
        except (OSError, EOFError):
            text = self._read(f"boot/config-{self.release}")
        if text is None:
            return None
        config = {}
        for line in text.splitlines():
            m = re.match(r"^(CONFIG_\w+)=(.*)$", line)
            if m:
                config[m.group(1)] = m.group(2).strip('"')
            m = re.match(r"^# (CONFIG_\w+) is not set$", line)
            if m:
                config[m.group(1)] = "n"
        return config

    def _module_files(self):
        """The module names on disk for this release, or None when there is no such folder."""
        top = self._path(f"lib/modules/{self.release}")
        if not os.path.isdir(top):
            return None
        names = set()
        for _, _, files in os.walk(top):
            for f in files:
                m = re.match(r"^([\w-]+)\.ko(\.\w+)?$", f)
                if m:
                    names.add(m.group(1).replace("-", "_"))
        return names

    def has(self, feature):
        """True, False, or None (cannot tell) for a FEATURES entry."""
        options, modules = FEATURES[feature]
        known = False
        if self.config is not None:
            known = True
            if any(self.config.get(o) in ("y", "m") for o in options):
                return True
        for names in (self.modules, self.module_files):
            if names is not None:
                known = True
                if any(m in names for m in modules):
                    return True
        return False if known else None

    def version(self):
        """(major, minor) of the release, or None."""
        m = re.match(r"^(\d+)\.(\d+)", self.release)
        return (int(m.group(1)), int(m.group(2))) if m else None

    def ipv6(self):
        """None when this network namespace has IPv6 on, else why not."""
        if not os.path.exists(self._path("proc/net/if_inet6")):
            return "the kernel has no IPv6 (no /proc/net/if_inet6)"
        if (self._read("proc/sys/net/ipv6/conf/all/disable_ipv6") or "0").strip() == "1":
            return "IPv6 is disabled (net.ipv6.conf.all.disable_ipv6 = 1)"
        return None


def problems(ip_family, kube_proxy_mode, kernel, nested=False):
    """Every reason this kernel cannot run a cluster with ``ip_family`` and ``kube_proxy_mode`` (one line each).

    ``nested``: the check runs inside the cluster container, whose IPv6 settings are its own flags.
    """
    out = []
    if ip_family in ("ipv6", "dual"):
        why = kernel.ipv6()
        if why:
            fix = (f"run the cluster container with {' '.join(f'--sysctl {k}={v}' for k, v in NESTED_SYSCTLS.items())}"
                   if nested else "enable IPv6 on this host (sysctl net.ipv6.conf.all.disable_ipv6=0)")
            out.append(f"networking.ipFamily {ip_family}: {why}; {fix}, or use ipFamily: ipv4")
        elif kernel.has("ipv6 nat") is False:
            out.append(f"networking.ipFamily {ip_family}: the kernel {kernel.release} cannot NAT IPv6 (no "
                       "CONFIG_IP6_NF_NAT or CONFIG_NFT_NAT, no ip6table_nat or nft_nat module); load ip6table_nat "
                       "(modprobe ip6table_nat) or use ipFamily: ipv4")
    if kube_proxy_mode == "ipvs" and kernel.has("ipvs") is False:
        out.append(f"networking.kubeProxyMode ipvs: the kernel {kernel.release} has no IP_VS (IP virtual server); "
                   "load ip_vs (modprobe ip_vs) or use kubeProxyMode: iptables or nftables")
    if kube_proxy_mode == "nftables":
        version = kernel.version()
        if version is not None and version < NFTABLES_KERNEL:
            out.append(f"networking.kubeProxyMode nftables: kube-proxy's nftables mode needs a kernel of "
                       f"{'.'.join(map(str, NFTABLES_KERNEL))} or newer, this one is {kernel.release}; use "
                       "kubeProxyMode: iptables")
        elif kernel.has("nf_tables") is False:
            out.append(f"networking.kubeProxyMode nftables: the kernel {kernel.release} has no nf_tables; use "
                       "kubeProxyMode: iptables")
    return out


def require(settings, root="/", nested=False):
    """Raise one DindindError listing every problem of ``settings`` (plan.Settings) on this host, or return."""
    if settings.ip_family == "ipv4" and settings.kube_proxy_mode in ("iptables", "none"):
        return          # what every host that runs dindind at all has: nothing to read
    found = problems(settings.ip_family, settings.kube_proxy_mode, Kernel(root), nested=nested)
    if found:
        raise DindindError(f"this host cannot run cluster {settings.name} as configured: "
                           f"{len(found)} problem(s)", detail="\n".join(f"  - {p}" for p in found),
                           hint="change networking in the cluster config (README: Cluster config), "
                                "or run on a host that has what is missing")
