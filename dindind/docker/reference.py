"""Image references, parsed once: every form the distribution spec allows.

    reference := name [ ":" tag ] [ "@" digest ]
    name      := [ domain "/" ] path-component { "/" path-component }
    domain    := host [ ":" port ]          (a DNS name, an IPv4 address or [IPv6])

so ``busybox``, ``library/busybox:1.36``, ``host:5000/a/b:tag``,
``name@sha256:<64 hex>`` and ``host:5000/name:tag@sha256:<64 hex>`` all
parse, and ``host:5000/name`` is a name without a tag (the ``:`` belongs to
the port). The first component is a domain only when it looks like one (a
``.`` or ``:`` in it, or ``localhost``), as docker decides; otherwise the
image is on Docker Hub. Pure functions; no I/O.
"""

import re
from dataclasses import dataclass

from dindind.base.errors import InputError

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[a-fA-F0-9]{32,}"
_REMAINDER = re.compile(rf"(?P<path>{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
                        rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?", re.ASCII)
_DIGEST_LENGTHS = {"sha256": 64, "sha512": 128}
MAX_NAME = 255
DOCKER_HUB = "registry-1.docker.io"
_HINT = ("an image reference is [host[:port]/]name[:tag][@sha256:<64 hex digits>], "
         "with a lowercase name, e.g. registry.example.com:5000/team/node:v1")


@dataclass(frozen=True)
class Reference:
    domain: str          # as written; "" when none was given (Docker Hub)
    path: str            # the repository path below the domain, as written
    tag: str             # "" when none was given
    digest: str          # "" when none was given

    @property
    def name(self):
        """The repository as written: ``domain/path`` or ``path``."""
        return f"{self.domain}/{self.path}" if self.domain else self.path

    @property
    def registry(self):
        """The host to ask: the domain, or Docker Hub's registry for none, docker.io and index.docker.io."""
        return DOCKER_HUB if self.domain in ("", "docker.io", "index.docker.io") else self.domain

    @property
    def remote(self):
        """The repository's name on :attr:`registry` (Docker Hub's official images live under library/)."""
        if self.registry == DOCKER_HUB and "/" not in self.path:
            return f"library/{self.path}"
        return self.path

    @property
    def full(self):
        """The reference as containerd names an image loaded or pulled under it (docker's normalization):
        ``docker.io/library/busybox:latest`` for ``busybox``; the tag ``latest`` when none is given;
        only the digest when both are."""
        domain = "docker.io" if self.registry == DOCKER_HUB else self.domain
        name = f"{domain}/{self.remote if domain == 'docker.io' else self.path}"
        return f"{name}@{self.digest}" if self.digest else f"{name}:{self.tag or 'latest'}"


def _looks_like_domain(component):
    return "." in component or ":" in component or component == "localhost" or component != component.lower()


def parse(ref):
    """The :class:`Reference` ``ref`` names; InputError if it is not a valid image reference."""
    if not isinstance(ref, str) or not ref:
        raise InputError("the image reference is empty", hint=_HINT)
    bad = InputError(f"invalid image reference {ref!r}", hint=_HINT)
    first, sep, rest = ref.partition("/")
    domain, remainder = (first, rest) if sep and _looks_like_domain(first) else ("", ref)
    if domain and not re.fullmatch(_DOMAIN, domain, re.ASCII):
        raise bad
    m = _REMAINDER.fullmatch(remainder)
    if m is None:
        raise bad
    path, tag, digest = m.group("path"), m.group("tag") or "", m.group("digest") or ""
    if digest:
        algorithm, _, encoded = digest.partition(":")
        want = _DIGEST_LENGTHS.get(algorithm)
        if want is not None and (len(encoded) != want or encoded != encoded.lower()):
            raise InputError(f"invalid image reference {ref!r}: a {algorithm} digest is {want} "
                             "lowercase hex digits", hint=_HINT)
    name = f"{domain}/{path}" if domain else path
    if len(name) > MAX_NAME:
        raise InputError(f"invalid image reference {ref!r}: the name is longer than {MAX_NAME} characters",
                         hint=_HINT)
    return Reference(domain, path, tag, digest)


def split_ref(ref):
    """(repository as written, tag or digest): what ``docker tag``, push and pull take.

    'host:5000/a/b:tag' -> ('host:5000/a/b', 'tag'); the tag defaults to
    'latest'; with a digest (``name@sha256:...`` or ``name:tag@sha256:...``)
    the digest is returned, as it names the image exactly.
    """
    r = parse(ref)
    return r.name, r.digest or r.tag or "latest"
