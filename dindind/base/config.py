"""The configuration: decoded strictly, defaulted, validated, frozen.

The shape of the file is declared once, in :data:`SPEC`. From it come the
validator (which collects *every* problem, each with its key path, before
anything is built), the defaults, and ``config/config.schema.json`` (the JSON
Schema editors use; ``python -m dindind schema`` regenerates it and a test
keeps the committed copy equal to it).

Values are checked here, before any of them reaches a template: names,
versions, URLs, digests, CIDRs and addresses are matched against strict
patterns, so a value can never smuggle a newline into a systemd unit or a
Dockerfile. Every integer has a range.

The file itself is treated as hostile before it is parsed
(dindind.base.yamlsafe): at most :data:`MAX_BYTES` are read, the bytes must
be UTF-8, and the YAML is composed once, within :data:`MAX_DEPTH` levels and
:data:`MAX_NODES` nodes, with no aliases. Whatever the input, loading ends in
a Config or one ConfigError.

:func:`check_name`, :func:`parse_int` and :func:`int_range` are the same rules
for values that arrive another way (task parameters, the environment).

Why one module of ~520 lines: SPEC (about 90 of them), the value checks it
names, the validator that walks it and the JSON Schema derived from it are
one declaration read together; the part that stands alone, decoding hostile
YAML, is dindind.base.yamlsafe.
"""

import ipaddress
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from dindind.base.errors import ConfigError, DindindError, InputError
from dindind.base.yamlsafe import MAX_BYTES, MAX_DEPTH, MAX_NODES  # noqa: F401 - part of this module's API
from dindind.base.yamlsafe import decode as _decode, encodable as _encodable, key as _key, show as _show
from dindind.base.yamlsafe import text as _text

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = ROOT / "config" / "default.yaml"
SCHEMA_PATH = ROOT / "config" / "config.schema.json"

VERSION_RE = r"^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$"
REPO_RE = r"^([a-z0-9.-]+(:[0-9]+)?/)?[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$"
TAG_RE = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
IMAGE_REF_RE = r"^([a-z0-9.-]+(:[0-9]+)?/)?[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?$"
NAME_RE = r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$"
NAME_FMT = "lowercase letters, digits and '-' (at most 32 characters, starting and ending with a letter or digit)"
DEB_VERSION_RE = r"^([0-9]+:)?[0-9][A-Za-z0-9.+~-]{0,62}$"
SHA256_RE = r"^[0-9a-f]{64}$"
URL_RE = r"^(https?|file)://[^\s\"'<>\\]+$"
SUITE_RE = r"^[a-z]+$"
PKG_RE = r"^[a-z0-9][a-z0-9+.-]+$"
ARG_RE = r"^--[a-z0-9-]+=[^\s\"'\\]*$"


# The build epoch becomes file mtimes (os.utime on the staged .deb trees), tar
# headers (ustar: 11 octal digits, up to 8**11-1), ar headers in the .deb (12
# decimal digits), gzip headers (32 bits unsigned) and the image's `created`
# (RFC 3339, up to year 9999). The smallest of what they all store exactly is a
# signed 32-bit time_t: ext4 with 128-byte inodes and XFS without bigtime clamp
# anything later, silently, and the build would no longer be reproducible. A
# source date is in the past, so 2038-01-19 is no real limit.
EPOCH_MAX = 2**31 - 1


class Field:
    """One key: its JSON type, default, and extra checks."""

    def __init__(self, kind, default=None, *, doc="", pattern=None, enum=None, items=None,
                 minimum=None, maximum=None, nullable=False, check=None, fmt=None,
                 fields=None, values=None, keys=None, required=False):
        self.kind = kind            # "string" | "integer" | "boolean" | "array" | "object"
        self.default = default
        self.doc = doc
        self.pattern = pattern
        self.enum = enum
        self.items = items          # Field for array items
        self.minimum = minimum
        self.maximum = maximum
        self.nullable = nullable
        self.check = check          # callable(value) -> problem text or None
        self.fmt = fmt              # human description of the pattern
        self.fields = fields        # object with known keys: {key: Field}, unknown keys refused
        self.values = values        # object with any keys: the Field of every value ...
        self.keys = keys            # ... and the string Field every key must pass
        self.required = required    # a key that must be given (no default)


def _cidr(value):
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        return f"is not a valid CIDR ({exc})"
    return None


def _ip(value):
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return "is not an IP address"
    return None


def _relpath(value):
    if "\n" in value or "\x00" in value:
        return "must not contain newlines or NUL"
    return None


def check_regex(value):
    """None if ``value`` is a usable regular expression, else what is wrong with it."""
    try:
        re.compile(value)
    except re.error as exc:
        return f"is not a valid regular expression ({exc})"
    except (OverflowError, RecursionError) as exc:    # a{99999999999}; (((...))) thousands deep
        return f"is not a usable regular expression ({exc})"
    return _relpath(value)


KUBEADM_KINDS = ("ClusterConfiguration", "InitConfiguration", "JoinConfiguration", "KubeletConfiguration",
                 "KubeProxyConfiguration")


def _plain_json(value, where="value"):
    """None, or what in ``value`` is not plain JSON (strings, finite numbers, booleans, null,
    lists, mappings with string keys): YAML can also give dates, sets and bytes."""
    if isinstance(value, str):
        return None if _encodable(value) else f"{where}: {_show(value)} is not valid Unicode (a lone surrogate escape)"
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if value.bit_length() <= 64 else f"{where}: {_show(value)} is too large"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where}: {value} is not a finite number"
    if isinstance(value, list):
        for i, item in enumerate(value):
            if msg := _plain_json(item, f"{where}[{i}]"):
                return msg
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where}: key {_show(key)} is not a string (quote it)"
            if not _encodable(key):
                return f"{where}: key {_show(key)} is not valid Unicode (a lone surrogate escape)"
            if msg := _plain_json(item, f"{where}.{_key(key)}"):
                return msg
        return None
    return f"{where}: {type(value).__name__} {_show(value)} is not plain JSON (quote it)"


def _kubeadm_patch(value):
    if value.get("kind") not in KUBEADM_KINDS:
        return f"needs a kind: one of {', '.join(KUBEADM_KINDS)}"
    if msg := _plain_json(value, "patch"):
        return msg
    if any(ch in json.dumps(value) for ch in ("\\n", "\\u0000")):
        return "must not contain newlines"
    return None

SPEC = {
    "kubernetes": {
        "source": Field("string", "module", enum=["sample", "dir", "release", "module", "checkout"],
                        doc="where the Kubernetes build comes from: sample (a stand-in), dir (a built tree), "
                            "release (the official tarballs), module (built from the Go module proxy), "
                            "checkout (built from a source checkout)"),
        "version": Field("string", "v1.37.2", pattern=VERSION_RE, fmt="a Kubernetes version like v1.31.2",
                         doc="sample: the version the stand-in tree reports; module: the k8s.io/kubernetes "
                             "version to build (v1.34.0 or newer); checkout: the version the built binaries "
                             "report"),
        "path": Field("string", None, nullable=True, check=_relpath,
                      doc="dir: the folder that contains kubernetes/; checkout: the Kubernetes source "
                          "checkout (never modified); relative to the config file"),
        "server_url": Field("string", None, nullable=True, pattern=URL_RE, fmt="an http(s) or file URL",
                            doc="release: kubernetes-server-linux-amd64.tar.gz"),
        "server_sha256": Field("string", None, nullable=True, pattern=SHA256_RE, fmt="64 lowercase hex digits"),
        "test_url": Field("string", None, nullable=True, pattern=URL_RE, fmt="an http(s) or file URL",
                          doc="release: kubernetes-test-linux-amd64.tar.gz"),
        "test_sha256": Field("string", None, nullable=True, pattern=SHA256_RE, fmt="64 lowercase hex digits"),
        "extra_images": Field("array", [], items=Field("string", check=_relpath),
                              doc="docker-archive tarballs kubeadm needs beyond the server tarball "
                                  "(etcd, coredns, pause); relative to the config file"),
    },
    "cni": {
        "source": Field("string", "debian", enum=["debian", "tgz"],
                        doc="debian: the containernetworking-plugins package; tgz: a cni-plugins release"),
        "package": Field("string", "containernetworking-plugins", pattern=PKG_RE, fmt="a Debian package name"),
        "url": Field("string", None, nullable=True, pattern=URL_RE, fmt="an http(s) or file URL"),
        "sha256": Field("string", None, nullable=True, pattern=SHA256_RE, fmt="64 lowercase hex digits"),
    },
    "base": {
        "image": Field("string", None, nullable=True, pattern=IMAGE_REF_RE, fmt="an image reference",
                       doc="use this image instead of building one with debootstrap"),
        "suite": Field("string", "trixie", pattern=SUITE_RE, fmt="a Debian suite name",
                       doc="the Debian suite of the base rootfs (trixie; bookworm stays an option)"),
        "mirror": Field("string", "http://deb.debian.org/debian", pattern=URL_RE, fmt="an http(s) URL"),
        "repository": Field("string", "dindind/base", pattern=REPO_RE, fmt="a docker repository name"),
    },
    "node": {
        "repository": Field("string", "dindind/node", pattern=REPO_RE, fmt="a docker repository name"),
        "tag": Field("string", None, nullable=True, pattern=TAG_RE, fmt="a docker tag",
                     doc="default: the Kubernetes version with '+' as '_'"),
        "preload": Field("boolean", True,
                         doc="import the component images into containerd at image build time "
                             "(false: import them at every boot)"),
        "e2e_images": Field("boolean", None, nullable=True,
                            doc="preload the e2e test images dindind builds (agnhost, busybox, nginx, ...) into "
                                "every node; null: on for the module and checkout sources, off otherwise"),
        "packages": Field("array", [], items=Field("string", pattern=PKG_RE, fmt="a Debian package name"),
                          doc="extra Debian packages for the node image"),
        "runtime_suite": Field("string", "forky", nullable=True, pattern=SUITE_RE, fmt="a Debian suite name",
                               doc="the Debian suite containerd and runc come from (pinned below); "
                                   "null: the base suite's own"),
        "containerd_version": Field("string", "2.1.9+ds1-5", pattern=DEB_VERSION_RE, fmt="a Debian version",
                                    doc="containerd from node.runtime_suite"),
        "containerd_sha256": Field("string", "2dda86ce7033fd612fc50e136679d8174ccad680eb29cd4611e0d2a1b84cf591",
                                   pattern=SHA256_RE, fmt="64 lowercase hex digits",
                                   doc="sha256 of that containerd .deb (amd64)"),
        "runc_version": Field("string", "1.3.6+ds1-1", pattern=DEB_VERSION_RE, fmt="a Debian version",
                              doc="runc from node.runtime_suite"),
        "runc_sha256": Field("string", "8e95d7bdfd22242ae4d48d58e3c277ba2b69dffc4ed8e573b837e6e93925d911",
                             pattern=SHA256_RE, fmt="64 lowercase hex digits",
                             doc="sha256 of that runc .deb (amd64)"),
    },
    "cluster": {
        "repository": Field("string", "dindind/cluster", pattern=REPO_RE, fmt="a docker repository name"),
        "tag": Field("string", None, nullable=True, pattern=TAG_RE, fmt="a docker tag"),
        "compression": Field("string", "zstd", enum=["zstd", "none"],
                             doc="how the node image is stored inside the cluster image"),
        "name": Field("string", "dindind", pattern=NAME_RE, fmt=NAME_FMT,
                      doc="the default cluster name"),
        "workers": Field("integer", 2, minimum=0, maximum=10),
        "nested": Field("boolean", True, doc="run the nodes inside the top-level container"),
        "api_address": Field("string", "127.0.0.1", check=_ip,
                             doc="host address the API server is published on"),
        "api_port": Field("integer", 0, minimum=0, maximum=65535, doc="0: a random free port"),
        "pod_subnet": Field("string", "10.244.0.0/16", check=_cidr),
        "service_subnet": Field("string", "10.96.0.0/16", check=_cidr),
        "node_subnet": Field("string", "172.30.0.0/24", check=_cidr,
                             doc="the bridge network the node containers live on"),
        "cni": Field("string", "default", enum=["default", "none"],
                     doc="default: bridge + host-local with static routes; none: install your own"),
        "kubelet_extra_args": Field("array", [], items=Field("string", pattern=ARG_RE, fmt="--flag=value")),
        "kubeadm_patches": Field("array", [], items=Field("object", check=_kubeadm_patch),
                                 doc="mappings deep-merged into the kubeadm document of the same kind"),
        "wait": Field("integer", 180, minimum=0, maximum=3600,
                      doc="seconds cluster:up waits for every node to be Ready (0: return once containers are up)"),
        "e2e_parallel": Field("integer", 1, minimum=1, maximum=32, doc="parallel ginkgo nodes for cluster:e2e"),
        "e2e_flake_attempts": Field("integer", 1, minimum=1, maximum=5),
        "e2e_pulls": Field("boolean", False,
                           doc="let e2e's pods pull from registries during cluster:e2e (false: every pull fails "
                               "at once, naming the image, instead of timing out on a machine without registries)"),
        "e2e_skip": Field("string", None, nullable=True, check=check_regex,
                          doc="regex of e2e tests to skip (default: dindind's list of unsupported tests)"),
    },
    "build": {
        "source_date_epoch": Field("integer", 1700000000, minimum=0, maximum=EPOCH_MAX,
                                   doc="timestamp for reproducible debs and layers, seconds since 1970 up to "
                                       "2038-01-19 (the environment's SOURCE_DATE_EPOCH wins)"),
        "download_timeout": Field("integer", 1800, minimum=1, maximum=86400,
                                  doc="seconds one download (release tarball, CNI tgz) may take in all, "
                                      "retries included"),
        "download_stall_timeout": Field("integer", 60, minimum=1, maximum=3600,
                                        doc="seconds without a byte before a download counts as stalled "
                                            "(it is then tried again, at most 3 attempts)"),
    },
}


# ---------------------------------------------------------------- shared rules

def int_range(key):
    """(minimum, maximum) of the integer key ``section.name`` in SPEC, for options that set it too."""
    section, _, name = key.partition(".")
    f = SPEC.get(section, {}).get(name)
    if f is None or f.kind != "integer":
        raise KeyError(f"{key} is not an integer key of the config")
    return f.minimum, f.maximum


_INT_RE = re.compile(r"-?[0-9]+")   # ASCII digits: int() would also take " 3", "+3", "1_000" and "٣"


def parse_int(value, what, minimum, maximum, hint=None):
    """``value`` (a string from a command line or the environment, or an int) as an int
    from ``minimum`` to ``maximum``; else a DindindError naming ``what`` and the range."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _INT_RE.fullmatch(value):
        digits = value.lstrip("-").lstrip("0")
        # a number with more digits than both bounds is out of range; don't convert 10**5000
        number = int(value) if len(digits) <= len(str(max(abs(minimum), abs(maximum)))) else None
    else:
        raise DindindError(f"{what}: {_show(value)} is not a whole number from {minimum} to {maximum}", hint=hint)
    if number is None or not minimum <= number <= maximum:
        raise DindindError(f"{what}: {_show(value)} is out of range: use a whole number from {minimum} to {maximum}",
                           hint=hint)
    return number


def e2e_images(cfg):
    """``node.e2e_images`` with its default resolved: on for Kubernetes built from Go (module, checkout)."""
    value = cfg.node["e2e_images"]
    return cfg.kubernetes["source"] in ("module", "checkout") if value is None else bool(value)


def check_name(value, what="cluster name"):
    """``value`` if it is a valid name (NAME_RE: the one rule for cluster names, which become
    container names, labels, hostnames and paths), else a DindindError."""
    if not isinstance(value, str) or not re.fullmatch(NAME_RE, value):
        raise DindindError(f"invalid {what} {_show(value)}", hint=f"use {NAME_FMT}")
    return value


def _type_ok(kind, value):
    return {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "array": lambda v: isinstance(v, list),
        "object": lambda v: isinstance(v, dict),
    }[kind](value)


def _check_value(keypath, f, value, problems):
    if isinstance(value, str) and not _encodable(value):
        problems.append(f"{keypath}: {_show(value)} is not valid Unicode (a lone surrogate escape)")
        return None
    if value is None:
        if f.nullable:
            return None
        problems.append(f"{keypath}: must not be empty (expected {f.kind})")
        return None
    if not _type_ok(f.kind, value):
        quote = " (quote it in YAML)" if f.kind == "string" and isinstance(value, (int, float)) else ""
        problems.append(f"{keypath}: expected {f.kind}, got {type(value).__name__} {_show(value)}{quote}")
        return None
    if f.kind == "string":
        if f.enum and value not in f.enum:
            problems.append(f"{keypath}: {_show(value)} is not one of {', '.join(f.enum)}")
        elif f.pattern and not re.fullmatch(f.pattern, value):
            problems.append(f"{keypath}: {_show(value)} is not {f.fmt or 'valid'}")
        elif f.check and (msg := f.check(value)):
            problems.append(f"{keypath}: {_show(value)} {msg}")
    elif f.kind == "object" and f.fields is not None:
        return _check_fields(keypath, f.fields, value, problems)
    elif f.kind == "object" and f.values is not None:
        return _check_map(keypath, f, value, problems)
    elif f.kind == "object" and f.check and (msg := f.check(value)):
        problems.append(f"{keypath}: {msg}")
    elif f.kind == "integer":
        if f.minimum is not None and value < f.minimum:
            problems.append(f"{keypath}: {_show(value)} is below the minimum {f.minimum}")
        if f.maximum is not None and value > f.maximum:
            problems.append(f"{keypath}: {_show(value)} is above the maximum {f.maximum}")
    elif f.kind == "array":
        out = []
        for i, item in enumerate(value):
            out.append(_check_value(f"{keypath}[{i}]", f.items, item, problems))
        return tuple(out)
    return value


def _join(keypath, key):
    return f"{keypath}.{key}" if keypath else key


def _default(keypath, f, problems):
    """The value of a key that is not given: its default (an object with known keys: theirs)."""
    if f.required:
        choices = f" (one of {', '.join(f.enum)})" if f.enum else ""
        problems.append(f"{keypath}: required{choices}")
        return None
    if f.kind == "object" and f.fields is not None and f.default is None and not f.nullable:
        return _check_fields(keypath, f.fields, {}, problems)
    return tuple(f.default) if isinstance(f.default, list) else f.default


def _check_fields(keypath, fields, raw, problems):
    """A mapping with the known keys ``fields`` ({key: Field}): each checked or defaulted, unknown keys refused."""
    for key in raw:
        if key not in fields:
            problems.append(f"{_join(keypath, _key(key))}: unknown key (known: {', '.join(fields)})")
    return {key: _check_value(_join(keypath, key), f, raw[key], problems) if key in raw
            else _default(_join(keypath, key), f, problems) for key, f in fields.items()}


def _check_map(keypath, f, raw, problems):
    """A mapping with any keys: every key passes ``f.keys`` (a string Field), every value ``f.values``."""
    out = {}
    for key, value in raw.items():
        where = _join(keypath, _key(key))
        if not isinstance(key, str):
            problems.append(f"{where}: key {_show(key)} is not a string (quote it)")
            continue
        k = f.keys
        if k is not None and k.pattern and not re.fullmatch(k.pattern, key):
            problems.append(f"{keypath}: key {_show(key)} is not {k.fmt or 'valid'}")
            continue
        if k is not None and k.check and (msg := k.check(key)):
            problems.append(f"{keypath}: key {_show(key)} {msg}")
            continue
        out[key] = _check_value(where, f.values, value, problems)
    return out


def _validate_shape(data, problems):
    values = {}
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"(top level): expected a mapping, got {type(data).__name__}")
        data = {}
    for key in data:
        if key not in SPEC:
            problems.append(f"{_key(key)}: unknown key (known: {', '.join(SPEC)})")
    for section, fields in SPEC.items():
        raw = data.get(section, {})
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            problems.append(f"{section}: expected a mapping, got {type(raw).__name__}")
            raw = {}
        values[section] = _check_fields(section, fields, raw, problems)
    return values


def _exists(path, kind):
    """path.is_dir() / is_file(), False also for a name the OS refuses (NUL, too long, a loop)."""
    try:
        return getattr(path, kind)()
    except (OSError, ValueError):
        return False


def subnet_problems(subnets, pod_key, problems):
    """The cluster's subnets ({key path: CIDR text}, already checked one by one) must not overlap, and
    the pod subnet (``pod_key``) must hold a /24 per node; the build config and the cluster config
    share this rule."""
    nets = {}
    for key, text in subnets.items():
        try:
            nets[key] = ipaddress.ip_network(text) if text else None
        except ValueError:
            nets[key] = None
    keys = [k for k in nets if nets[k] is not None]
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            if nets[a].version == nets[b].version and nets[a].overlaps(nets[b]):
                problems.append(f"{a}: {subnets[a]} overlaps {b} {subnets[b]}")
    pod = nets.get(pod_key)
    if pod is not None and pod.version == 4 and pod.prefixlen > 20:
        problems.append(f"{pod_key}: {subnets[pod_key]} is too small: each node takes a /24")


# suites whose glibc is older than 2.38, which the newer suites' runc needs
OLD_GLIBC_SUITES = ("bullseye", "bookworm")


def _cross_check(v, base_dir, problems):
    n = v["node"]
    if n["runtime_suite"] and not v["base"]["image"] and v["base"]["suite"] in OLD_GLIBC_SUITES \
            and n["runtime_suite"] != v["base"]["suite"]:
        problems.append(f"node.runtime_suite: runc {n['runc_version']} from {n['runtime_suite']} needs glibc >= 2.38, "
                        f"which base.suite {v['base']['suite']} lacks: use base.suite: trixie, "
                        "or node.runtime_suite: null for the suite's own containerd")
    k = v["kubernetes"]
    if k["source"] == "dir":
        if not k["path"]:
            problems.append("kubernetes.path: required when kubernetes.source is dir")
        elif not _exists(base_dir / k["path"] / "kubernetes", "is_dir"):
            problems.append(f"kubernetes.path: {_show(str(base_dir / k['path']))} has no kubernetes/ folder")
    if k["source"] == "checkout":
        if not k["path"]:
            problems.append("kubernetes.path: required when kubernetes.source is checkout")
        elif not _exists(base_dir / k["path"] / "cmd" / "kubelet", "is_dir"):
            problems.append(f"kubernetes.path: {_show(str(base_dir / k['path']))} is not a Kubernetes source "
                            "checkout (no cmd/kubelet)")
    if k["source"] in ("module", "checkout"):
        m = re.fullmatch(r"v1\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?", k["version"] or "")
        if k["version"] and not m:
            problems.append(f"kubernetes.version: {_show(k['version'])} is not a release version like v1.37.2 "
                            f"(needed by the {k['source']} source)")
        elif m and int(m.group(1)) < 34:
            problems.append(f"kubernetes.version: {k['version']} is older than v1.34 "
                            f"(the {k['source']} source builds v1.34 and newer)")
    if k["source"] == "release":
        for key in ("server_url", "server_sha256", "test_url", "test_sha256"):
            if not k[key]:
                problems.append(f"kubernetes.{key}: required when kubernetes.source is release")
    for i, img in enumerate(k["extra_images"] or ()):
        if img is None:
            continue
        if k["source"] in ("sample", "module", "checkout"):
            problems.append(f"kubernetes.extra_images[{i}]: the {k['source']} source makes its own extra images")
        elif not _exists(base_dir / img, "is_file"):
            problems.append(f"kubernetes.extra_images[{i}]: {_show(str(base_dir / img))} does not exist")
    if v["cni"]["source"] == "tgz":
        for key in ("url", "sha256"):
            if not v["cni"][key]:
                problems.append(f"cni.{key}: required when cni.source is tgz")
    c = v["cluster"]
    subnet_problems({f"cluster.{k}": c[k] for k in ("pod_subnet", "service_subnet", "node_subnet")},
                    "cluster.pod_subnet", problems)
    if v["node"]["repository"] == v["cluster"]["repository"]:
        problems.append("cluster.repository: must differ from node.repository")


# ---------------------------------------------------------------- the result

@dataclass(frozen=True)
class Config:
    """A validated configuration. Sections are read-only mappings."""

    path: Path
    base_dir: Path
    kubernetes: MappingProxyType
    cni: MappingProxyType
    base: MappingProxyType
    node: MappingProxyType
    cluster: MappingProxyType
    build: MappingProxyType
    raw: MappingProxyType = field(repr=False)

    def resolve(self, rel):
        """A path from the config file, made absolute."""
        return (self.base_dir / rel).resolve()

    def as_dict(self):
        return {k: _plain(v) for k, v in self.raw.items()}

    @property
    def source_date_epoch(self):
        """The build epoch: $SOURCE_DATE_EPOCH when it is set, else build.source_date_epoch.

        As the reproducible-builds spec asks, a set but malformed value (empty,
        not ASCII digits, out of range) is an InputError, never ignored.
        """
        env = os.environ.get("SOURCE_DATE_EPOCH")
        if env is None:
            return int(self.build["source_date_epoch"])
        try:
            return parse_int(env, "SOURCE_DATE_EPOCH", *int_range("build.source_date_epoch"))
        except DindindError as exc:
            raise InputError(exc.message, hint="set it to seconds since 1970 (date +%s), or unset it to use "
                                               "build.source_date_epoch") from None


def _plain(v):
    if isinstance(v, (dict, MappingProxyType)):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _freeze(v):
    return MappingProxyType({k: (tuple(x) if isinstance(x, list) else x) for k, x in v.items()})


def parse(text, path, base_dir=None):
    """Decode and validate config text; raise ConfigError listing every problem."""
    path = Path(path)
    base_dir = Path(base_dir) if base_dir else path.resolve().parent
    data, problems = _decode(path, text)
    values = _validate_shape(data, problems)
    _cross_check(values, base_dir, problems)
    if problems:
        raise ConfigError(path, problems)
    frozen = {k: _freeze(v) for k, v in values.items()}
    return Config(path=path, base_dir=base_dir, raw=MappingProxyType(frozen), **frozen)


def load(path=None):
    """Load the config named by ``path``, $DINDIND_CONFIG, or the embedded default."""
    path = path or os.environ.get("DINDIND_CONFIG") or DEFAULT_CONFIG
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)    # never the whole of a huge file (or of /dev/zero)
    except OSError as exc:
        raise ConfigError(path, [f"cannot read the config file: {exc.strerror}"]) from None
    return parse(_text(path, data), path)


# ---------------------------------------------------------------- JSON Schema

def _field_schema(f):
    s = {"type": [f.kind, "null"] if f.nullable else f.kind}
    if f.doc:
        s["description"] = f.doc
    if f.enum:
        s["enum"] = list(f.enum) + ([None] if f.nullable else [])
    if f.pattern:
        s["pattern"] = f.pattern
    if f.minimum is not None:
        s["minimum"] = f.minimum
    if f.maximum is not None:
        s["maximum"] = f.maximum
    if f.kind == "array":
        s["items"] = _field_schema(f.items)
    if f.fields is not None:
        s.update({k: v for k, v in object_schema(f.fields).items() if k != "type"})
    if f.values is not None:
        s["additionalProperties"] = _field_schema(f.values)
        if f.keys is not None and f.keys.pattern:
            s["propertyNames"] = {"pattern": f.keys.pattern}
    if f.default is not None:
        s["default"] = list(f.default) if isinstance(f.default, (list, tuple)) else f.default
    return s


def object_schema(fields):
    """The JSON Schema of a mapping with the known keys ``fields``: no others, the required ones named."""
    s = {"type": "object", "additionalProperties": False,
         "properties": {k: _field_schema(f) for k, f in fields.items()}}
    required = [k for k, f in fields.items() if f.required]
    if required:
        s["required"] = required
    return s


def json_schema():
    """The JSON Schema (draft 2020-12) of the config file, derived from SPEC."""
    props = {}
    for section, fields in SPEC.items():
        props[section] = {
            "type": ["object", "null"],
            "additionalProperties": False,
            "properties": {k: _field_schema(f) for k, f in fields.items()},
        }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://dindind.invalid/config.schema.json",
        "title": "dindind configuration",
        "type": "object",
        "additionalProperties": False,
        "properties": props,
    }
