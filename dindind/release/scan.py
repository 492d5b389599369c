"""The secret scanner: private keys, kubeconfig credentials, bootstrap tokens, proxy credentials.

Every file of every layer is streamed through :class:`Scanner` once; a
finding says where and what, never the secret itself.
"""

import io
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

CHUNK = 1 << 20


SCAN_RULES = 1                     # bump when the scanner's rules change: archives are scanned again


CA_DIRS = ("etc/ssl/certs/", "usr/share/ca-certificates/", "usr/local/share/ca-certificates/")


KUBEADM_DIRS = ("etc/kubernetes/", "var/lib/kubelet/", "run/kubeadm/")


OVERLAP = 8192                      # bytes kept from one chunk to the next: a match may straddle them


_PEM = re.compile(rb"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY-----[ \t]*\r?\n"
                  rb"(?:[A-Za-z-]+:[^\r\n]*\r?\n)*(?:[ \t]*\r?\n)?[A-Za-z0-9+/=]{32,}")


_CLIENT_KEY = re.compile(rb"client-key-data[\"']?[ \t]*:[ \t]*[\"']?[A-Za-z0-9+/=]{16,}")


# user:password in a proxy setting; placeholders (<user>, ${PASS}, %s, *) are not credentials
_PROXY = re.compile(rb"(?i)(?:\b[a-z_]{0,32}proxy[a-z_]{0,32}[\"']?[ \t]*[=:][ \t]*[\"']?|acquire::[a-z]+::proxy[ \t]+[\"']?)"
                    rb"[a-z][a-z0-9+.-]*://[^\s:/@\"'<>${}%*]+:[^\s/@\"'<>${}%*]+@")


_KUBECONFIG = re.compile(rb"(?m)^[ \t]*kind:[ \t]*[\"']?Config\b|\"kind\"[ \t]*:[ \t]*\"Config\"")


_KUBECONFIG_SECRET = re.compile(rb"(?m)^[ \t-]*[\"']?(?:token|password)[\"']?[ \t]*:[ \t]*[\"']?[^\s\"',}]{6,}")


_BOOTSTRAP_TOKEN = re.compile(rb"(?<![A-Za-z0-9])[a-z0-9]{6}\.[a-z0-9]{16}(?![A-Za-z0-9])")


# (what, prefilter substrings, pattern, also in ELF binaries): run on every file, streamed.
# PEM keys compiled into ELF binaries are public test vectors shipped by the distribution
# (GnuTLS's FIPS self-test keys in libgnutls.so), not secrets: a leaked key is a file.
_STREAM_RULES = (
    ("a private key", (b"PRIVATE KEY-----",), _PEM, False),
    ("a kubeconfig client key (client-key-data)", (b"client-key-data",), _CLIENT_KEY, True),
    ("a proxy URL with credentials", (b"roxy", b"ROXY"), _PROXY, True),
)


def _search(data, needles, pattern):
    """``pattern`` in ``data``, tried only in a window around each needle (regexes stay off big binaries)."""
    for needle in needles:
        i = data.find(needle)
        while i >= 0:
            if pattern.search(data, max(0, i - 64), i + 1024):
                return True
            i = data.find(needle, i + 1)
    return False


def _kubeadm_ish(path, data):
    name = PurePosixPath(path).name
    return "kubeadm" in name or path.startswith(KUBEADM_DIRS) or b"kubeadm.k8s.io" in data


def text_findings(path, data):
    """What the rules for small text files find in ``data`` (the whole file)."""
    found = []
    if _KUBECONFIG.search(data) and _KUBECONFIG_SECRET.search(data):
        found.append("a kubeconfig with a token or password")
    if _kubeadm_ish(path, data) and _BOOTSTRAP_TOKEN.search(data):
        found.append("a bootstrap token in a kubeadm file")
    return found


@dataclass(frozen=True)
class Finding:
    image: str
    layer: str                  # the layer's diff_id, or "config" for the image config
    index: int                  # 1-based layer number; 0 for the config
    path: str
    what: str

    def __str__(self):
        where = "image config" if self.index == 0 else f"layer {self.index} ({self.layer[:19]})"
        return f"{self.image} image, {where}: /{self.path}: {self.what}" if self.path else \
            f"{self.image} image, {where}: {self.what}"


class Scanner:
    """Scans files for private keys, kubeconfig credentials, bootstrap tokens and proxy credentials.

    Files under the well-known CA bundle folders (CA_DIRS) hold certificates,
    not secrets, and are skipped. The secrets themselves never appear in a
    finding: only where they are and what they look like.
    """

    def __init__(self):
        self.hits = []              # (layer key, path, what)
        self.files = 0
        self.bytes = 0

    def scan(self, key, path, read, size):
        """Scan one file whose content ``read(n)`` returns; ``key`` names its layer."""
        if path.startswith(CA_DIRS):
            return
        self.files += 1
        found = set()
        tail = b""
        first = True
        elf = False
        while True:
            chunk = read(CHUNK)
            if not chunk:
                break
            self.bytes += len(chunk)
            if first:
                elf = chunk.startswith(b"\x7fELF")
                if size <= CHUNK and b"\0" not in chunk:
                    found.update(text_findings(path, chunk))
            first = False
            data = tail + chunk if tail else chunk
            for what, needles, pattern, in_elf in _STREAM_RULES:
                if (in_elf or not elf) and what not in found and _search(data, needles, pattern):
                    found.add(what)
            tail = data[-OVERLAP:]
        for what in sorted(found):
            self.hits.append((key, path, what))

    def scan_bytes(self, key, path, data):
        view = io.BytesIO(data)
        self.scan(key, path, view.read, len(data))
