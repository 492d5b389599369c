"""Decoding a config file that is hostile until proven otherwise: bytes -> text -> YAML data.

At most :data:`MAX_BYTES` are accepted, the bytes must be UTF-8, and the YAML
is composed once, within :data:`MAX_DEPTH` levels and :data:`MAX_NODES`
nodes, with no aliases and no explicit tags (:class:`_Loader`); duplicate keys
are reported with their line. Every problem is a ConfigError or a problem
line for dindind.base.config, which validates the data against its SPEC.
:func:`show` and :func:`key` format values and keys for those lines.
"""

import re

import yaml

from dindind.base.errors import ConfigError

MAX_BYTES = 1 << 20     # a config is a few kilobytes; the size is checked before anything is parsed
MAX_DEPTH = 20          # the deepest real config (a kubeadm patch) nests about 8 levels
MAX_NODES = 10_000      # scalars, sequences and mappings together; the default config has ~60


class _Refused(Exception):
    """A limit of :class:`_Loader` was hit; the message is one problem line."""


class _Loader(yaml.SafeLoader):
    """A SafeLoader that refuses what a config never needs before it costs anything.

    Aliases (``*name``) are refused outright, at the event that names them,
    rather than counted against a budget: a config has no repeated structure
    worth sharing, and every alias turns the tree into a graph that each later
    walk (duplicate keys, validation, JSON of the kubeadm patches, the
    release's digest of the config) would expand again - the "billion laughs".
    With no aliases the composed tree is exactly as big as the text, and it is
    capped at MAX_NODES nodes and MAX_DEPTH levels while it is being composed,
    so PyYAML's recursive composer never recurses deeper than MAX_DEPTH.

    Explicit tags are refused too (``!!str`` aside, the one way to say "this
    is a string" besides quotes): a config needs none of ``!!python/...``,
    ``!!binary``, ``!!set`` or ``!!timestamp``, and each is another
    constructor and another Python type to get wrong downstream.

    Whatever else PyYAML lets out of its constructors (ValueError for
    ``2020-13-45``, a timestamp with month 13) becomes a ConstructorError
    carrying the node's position.

    The limits are class attributes: a reader of another kind of file (a
    kubeconfig, dindind.cluster.kubeconfig) subclasses it with its own.
    """

    what = "a config"
    too_big = "a config is a few kilobytes"
    max_bytes = MAX_BYTES
    max_depth = MAX_DEPTH
    max_nodes = MAX_NODES

    def __init__(self, text):
        super().__init__(text)
        self.depth = 0
        self.nodes = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        line = f"line {event.start_mark.line + 1}"
        if isinstance(event, yaml.AliasEvent):
            # anchors and tags are printable ASCII (PyYAML's scanner allows no other characters)
            raise _Refused(f"{line}: aliases (*{_cut(event.anchor, 40)}) are not supported; "
                           "write the value out")
        if event.tag is not None and event.tag not in ("tag:yaml.org,2002:str", "!"):
            tag = event.tag
            tag = f"!!{tag[18:]}" if tag.startswith("tag:yaml.org,2002:") else tag if tag[0] == "!" else f"!<{tag}>"
            raise _Refused(f"{line}: tags ({_cut(tag, 60)}) are not supported; "
                           "write plain values (quote a string)")
        self.depth += 1
        self.nodes += 1
        if self.depth > self.max_depth:
            raise _Refused(f"{line}: nested deeper than {self.max_depth} levels")
        if self.nodes > self.max_nodes:
            raise _Refused(f"{line}: more than {self.max_nodes} values; {self.what} is much smaller")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:    # noqa: BLE001 - only PyYAML's constructors run in here
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot construct {show(node.value, 60)}: {exc}", node.start_mark) from None


def encodable(text):
    """False for a string with lone surrogates ("\\ud800" in a YAML double-quoted string): it
    cannot be written to any file."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(text, limit=500):
    """An error text from PyYAML as one printable line: its snippet of the file is not escaped."""
    text = "".join(c if c.isprintable() else (" " if c == "\n" else repr(c)[1:-1]) for c in text)
    return text if len(text) <= limit else f"{text[:limit]}..."


def _cut(text, limit):
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def show(value, limit=80):
    """repr() of a value for a problem line: escaped, and cut short."""
    if isinstance(value, int) and value.bit_length() > 64:
        # 0x/0b ints of any length parse, but str() refuses past 4300 digits
        return f"a {value.bit_length()}-bit number"
    return _cut(repr(value), limit)


def key(name):
    """A mapping key as it appears in a key path: plain if it is a plain name, else quoted and cut short."""
    if isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        return name
    return show(name, 40)


def _duplicates(node, path=""):
    """(key path, line) of every key repeated within one mapping of a composed YAML tree."""
    found = []
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value_node in node.value:
            name = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            keypath = f"{path}.{key(name)}" if path else key(name)
            if name in seen:
                found.append((keypath, key_node.start_mark.line + 1))
            seen.add(name)
            found += _duplicates(value_node, keypath)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found += _duplicates(item, f"{path}[{i}]")
    return found


Loader = _Loader     # for subclasses with other limits


def text(path, data, loader=_Loader):
    """The config bytes as text, after the size and encoding checks."""
    if len(data) > loader.max_bytes:
        raise ConfigError(path, [f"(top level): the file is larger than {loader.max_bytes} bytes; "
                                 f"{loader.too_big}"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(path, [f"line {line}: not UTF-8: byte 0x{data[exc.start]:02x} at offset {exc.start} "
                                 f"({exc.reason})"]) from None


def decode(path, text, loader=_Loader):
    """(data, problems): compose the text once, within the limits, and construct from that tree."""
    limit = loader.max_bytes
    if len(text) > limit or len(text.encode("utf-8", "surrogatepass")) > limit:
        raise ConfigError(path, [f"(top level): the text is larger than {limit} bytes; {loader.too_big}"])
    try:
        loader = loader(text)       # the reader refuses control characters right here
        loader.name = path.name     # marks say 'in "config.yaml", line 2', not '"<unicode string>"'
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except _Refused as exc:
        raise ConfigError(path, [str(exc)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, [f"not valid YAML: {_printable(str(exc))}"]) from None
    problems = [f"{keypath}: duplicate key (line {line})" for keypath, line in _duplicates(node)]
    return data, problems
