"""The user's kubeconfig: a cluster's credentials merged into it, and removed again (host side).

``cluster:kubeconfig --merge`` writes a cluster, a user and a context named
``dindind-<name>`` into the first path of ``$KUBECONFIG`` (else
``~/.kube/config``) and makes that context the current one, as ``kind
export kubeconfig`` does with ``kind-<name>``; ``cluster:down`` removes
exactly those three entries again, and the current context if it was
theirs. Every other entry, key and value is written back as it was read:
scalars keep their text, tag and quoting (:class:`Scalar`), so ``on``,
``0123`` or ``1e3`` in someone else's entry mean afterwards what they meant
before. Comments are not kept (kubectl does not keep them either).

The file is someone else's and hostile until proven otherwise. It is read
with the config reader's rules (dindind.base.yamlsafe: UTF-8, no aliases,
no tags, bounded size, depth and count, no duplicate keys) and must have a
kubeconfig's shape; a file that fails gets one error naming the file and the
problem, and is not touched. A change happens under the lock kubectl and
kind take (``<file>.lock``, created exclusively), is written to a temporary
file beside the real one (a symlink is followed, not replaced), mode 0600,
checked to read back as intended, and renamed into place.
"""

import contextlib
import json
import os
import time
from pathlib import Path

import yaml

from dindind.base import fsutil, yamlsafe
from dindind.base.errors import ConfigError, DindindError

PREFIX = "dindind-"
SECTIONS = (("clusters", "cluster"), ("users", "user"), ("contexts", "context"))
LOCK_WAIT = 10          # seconds to wait for another writer's <file>.lock
RECORD = "merged.json"  # in artifacts/clusters/<name>/: the files this cluster was merged into
STR = "tag:yaml.org,2002:str"
NULL = "tag:yaml.org,2002:null"


def key(name):
    """The cluster, user and context name of cluster ``name`` in a merged kubeconfig."""
    return PREFIX + name


def merge_path(env=None):
    """The file to merge into: the first path of $KUBECONFIG, else ~/.kube/config (absolute)."""
    env = os.environ if env is None else env
    for p in (env.get("KUBECONFIG") or "").split(os.pathsep):
        if p:
            return Path(os.path.abspath(p))
    home = env.get("HOME") or os.path.expanduser("~")
    return Path(os.path.abspath(os.path.join(home, ".kube", "config")))


class Scalar(str):
    """A scalar as read: its text, with the tag it resolved to and its quoting style, to write it back alike."""

    def __new__(cls, value, tag=STR, style=None):
        s = super().__new__(cls, value)
        s.tag, s.style = tag, style
        return s


class _Loader(yamlsafe.Loader):
    """The config reader's rules, a kubeconfig's limits, and every scalar kept as read."""

    what = "a kubeconfig"
    too_big = "dindind reads kubeconfigs of at most 16 MiB"
    max_bytes = 16 << 20
    max_depth = 50
    max_nodes = 1_000_000

    def construct_object(self, node, deep=False):
        if isinstance(node, yaml.ScalarNode):
            return Scalar(node.value, node.tag, node.style)
        return super().construct_object(node, deep)


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(Scalar, lambda d, s: d.represent_scalar(s.tag, str(s), style=s.style))


def _null(value):
    return value is None or (isinstance(value, Scalar) and value.tag == NULL)


def _what(value):
    return "a mapping" if isinstance(value, dict) else "a list" if isinstance(value, list) else "a scalar"


def shape_problems(doc):
    """What keeps ``doc`` (as read) from being a kubeconfig dindind may change; [] when it is one."""
    if _null(doc):
        return []
    if not isinstance(doc, dict):
        return [f"(top level): {_what(doc)}, not a mapping"]
    problems = []
    for field, want in (("kind", "Config"), ("apiVersion", "v1")):
        value = doc.get(field)
        if not _null(value) and value != want:
            problems.append(f"{field}: {yamlsafe.show(value if isinstance(value, str) else _what(value))}, "
                            f"not {want!r}")
    for field in ("current-context",):
        if field in doc and isinstance(doc[field], (dict, list)):
            problems.append(f"{field}: {_what(doc[field])}, not a name")
    if "preferences" in doc and not _null(doc["preferences"]) and not isinstance(doc["preferences"], dict):
        problems.append(f"preferences: {_what(doc['preferences'])}, not a mapping")
    for section, item in SECTIONS:
        entries = doc.get(section)
        if _null(entries):
            continue
        if not isinstance(entries, list):
            problems.append(f"{section}: {_what(entries)}, not a list")
            continue
        for i, entry in enumerate(entries):
            where = f"{section}[{i}]"
            if not isinstance(entry, dict):
                problems.append(f"{where}: {_what(entry)}, not a mapping")
                continue
            if isinstance(entry.get("name"), (dict, list)):
                problems.append(f"{where}.name: {_what(entry['name'])}, not a name")
            if not _null(entry.get(item)) and not isinstance(entry.get(item), dict):
                problems.append(f"{where}.{item}: {_what(entry[item])}, not a mapping")
    return problems


def _malformed(path, problems):
    shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
    return DindindError(f"{path} is not a kubeconfig dindind can change: {shown}",
                        hint="fix it, or point $KUBECONFIG at another file; it was left as it was")


def parse(path, data):
    """The document in ``data`` (bytes of the file at ``path``), or the one error that names the problem."""
    try:
        doc, problems = yamlsafe.decode(Path(path), yamlsafe.text(Path(path), data, _Loader), _Loader)
    except ConfigError as exc:
        raise _malformed(path, exc.problems) from None
    problems += shape_problems(doc)
    if problems:
        raise _malformed(path, problems)
    return None if _null(doc) else doc


def read(path):
    """The kubeconfig at ``path`` (None: no file yet)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DindindError(f"cannot read {path}: {exc.strerror}") from None
    if not os.path.isfile(path):
        raise DindindError(f"{path} is not a regular file", hint="point $KUBECONFIG at a kubeconfig file")
    if st.st_size > _Loader.max_bytes:
        raise _malformed(path, [f"(top level): larger than {_Loader.max_bytes} bytes; {_Loader.too_big}"])
    try:
        with open(path, "rb") as f:
            data = f.read(_Loader.max_bytes + 1)
    except OSError as exc:
        raise DindindError(f"cannot read {path}: {exc.strerror}") from None
    return parse(path, data)


def meaning(value):
    """``value`` as what it means: every scalar as (tag, text)."""
    if isinstance(value, dict):
        return {meaning(k): meaning(v) for k, v in value.items()}
    if isinstance(value, list):
        return [meaning(v) for v in value]
    if isinstance(value, Scalar):
        return (value.tag, str(value))
    if isinstance(value, str):
        return (STR, value)
    raise TypeError(f"unexpected {type(value).__name__} in a kubeconfig")


def dump(path, doc):
    """The bytes of ``doc``, checked to read back as exactly ``doc``."""
    try:
        data = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True,
                         width=1 << 30).encode("utf-8")
        problem = None if meaning(parse(path, data)) == meaning(doc) else "the result would read differently"
    except (yaml.YAMLError, UnicodeEncodeError) as exc:
        problem = str(exc)
    except DindindError as exc:
        problem = exc.message
    if problem:
        raise DindindError(f"cannot write {path} back as it was read: {problem}",
                           hint="it was left as it was; change it with `kubectl config` instead")
    return data


# ------------------------------------------------------------------ the three entries

def entries(kubeconfig, name):
    """The cluster, user and context entries named ``dindind-<name>`` for a cluster's own kubeconfig."""
    try:
        src = parse(f"the kubeconfig of cluster {name}", kubeconfig)
        current = src["current-context"]
        context = next(c["context"] for c in src["contexts"] if c["name"] == current)
        cluster = next(c["cluster"] for c in src["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in src["users"] if u["name"] == context["user"])
    except DindindError as exc:
        raise DindindError(f"cannot read the kubeconfig of cluster {name}: {exc.message}") from None
    except (KeyError, StopIteration, TypeError, AttributeError):
        raise DindindError(f"cannot read the kubeconfig of cluster {name}: no current context with a "
                           "cluster and a user") from None
    k = Scalar(key(name))
    ctx = {Scalar("cluster"): k, Scalar("user"): k}
    if isinstance(context, dict) and "namespace" in context:
        ctx[Scalar("namespace")] = context["namespace"]
    return {"clusters": {Scalar("name"): k, Scalar("cluster"): cluster},
            "users": {Scalar("name"): k, Scalar("user"): user},
            "contexts": {Scalar("name"): k, Scalar("context"): ctx}}


def merge(doc, new, name):
    """``doc`` with the entries ``new`` (from :func:`entries`) in place of any of the same name, and current."""
    out = dict(doc or {})
    k = key(name)
    for field, value in (("apiVersion", "v1"), ("kind", "Config")):
        if _null(out.get(field)):
            out[field] = Scalar(value)
    for section, _ in SECTIONS:
        old = [] if _null(out.get(section)) else out[section]
        kept, placed = [], False
        for entry in old:
            if entry.get("name") == k:
                if not placed:
                    kept.append(new[section])
                    placed = True
            else:
                kept.append(entry)
        out[section] = kept if placed else kept + [new[section]]
    out["current-context"] = Scalar(k)
    return out


def remove(doc, name, restore=None):
    """(``doc`` without the entries of cluster ``name``, whether anything was removed).

    A current context that was theirs becomes ``restore`` (the one before the
    merge) if that context is still there, else empty, as kind leaves it.
    """
    if doc is None:
        return doc, False
    k = key(name)
    out, changed = dict(doc), False
    for section, _ in SECTIONS:
        if _null(out.get(section)):
            continue
        kept = [e for e in out[section] if e.get("name") != k]
        if len(kept) != len(out[section]):
            out[section], changed = kept, True
    if out.get("current-context") == k:
        names = [] if _null(out.get("contexts")) else [c.get("name") for c in out["contexts"]]
        out["current-context"] = Scalar(restore if restore and restore in names else "")
        changed = True
    return out, changed


# ------------------------------------------------------------------ the file

@contextlib.contextmanager
def locked(path, wait=LOCK_WAIT):
    """Hold ``<path>.lock`` (created exclusively, as kubectl and kind do) for the change of ``path``."""
    lock = Path(f"{path}.lock")
    try:
        lock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise DindindError(f"cannot create {lock.parent}: {exc.strerror}") from None
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            break
        except FileExistsError:
            if time.monotonic() >= deadline:
                raise DindindError(f"{lock} exists: another program (kubectl, kind, dindind) is changing {path}",
                                   hint=f"retry when it is done; if none is running, remove {lock}") from None
            time.sleep(0.1)
        except OSError as exc:
            raise DindindError(f"cannot lock {path}: {exc.strerror} ({lock})") from None
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)


def write(path, data):
    """Replace the file ``path`` resolves to with ``data``, atomically, mode 0600, keeping its owner."""
    real = Path(os.path.realpath(path))
    try:
        st = os.stat(real)
    except FileNotFoundError:
        st = None
    try:
        with fsutil.atomic_path(real) as tmp:
            tmp.write_bytes(data)
            os.chmod(tmp, 0o600)
            if st is not None and os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0):
                os.chown(tmp, st.st_uid, st.st_gid)
    except OSError as exc:
        raise DindindError(f"cannot write {path}: {exc.strerror}", hint="it was left as it was") from None


def change(path, edit, wait=LOCK_WAIT):
    """Under the lock: read ``path``, ``edit(doc)`` -> (doc, changed), write it back if changed. Returns changed."""
    with locked(path, wait):
        doc, changed = edit(read(path))
        if changed:
            write(path, dump(path, doc))
        return changed


def merge_into(path, kubeconfig, name, wait=LOCK_WAIT):
    """Merge cluster ``name``'s kubeconfig into the file ``path`` and make its context current.

    Returns the current context before (None if there was none, or it was already this cluster's).
    """
    new = entries(kubeconfig, name)
    before = []

    def edit(doc):
        current = None if doc is None or _null(doc.get("current-context")) else str(doc["current-context"])
        before.append(None if current in ("", key(name)) else current)
        return merge(doc, new, name), True

    change(path, edit, wait)
    return before[0]


def remove_from(path, name, restore=None, wait=LOCK_WAIT):
    """Remove cluster ``name``'s entries from ``path``; True if there were any (the file is untouched if not)."""
    if not os.path.lexists(path):
        return False
    return change(path, lambda doc: remove(doc, name, restore), wait)


# ------------------------------------------------------------------ where a cluster was merged

def recorded(cluster_dir):
    """{path: the current context before the merge, or None} of the files cluster_dir's cluster was merged into."""
    try:
        merged = json.loads((Path(cluster_dir) / RECORD).read_text())["merged"]
        return {Path(m["path"]): m.get("previous_context") for m in merged
                if isinstance(m["path"], str) and os.path.isabs(m["path"])
                and isinstance(m.get("previous_context"), (str, type(None)))}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def record(cluster_dir, path, previous_context):
    """Note that cluster_dir's cluster was merged into ``path`` (keeping the first merge's previous context)."""
    merged = recorded(cluster_dir)
    merged.setdefault(Path(path), previous_context)
    fsutil.write_json(Path(cluster_dir) / RECORD,
                      {"merged": [{"path": str(p), "previous_context": c} for p, c in merged.items()]}, mode=0o600)
