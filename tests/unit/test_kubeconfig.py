"""Merging a cluster into the user's kubeconfig and removing it again (dindind.cluster.kubeconfig),
and the host side of cluster:down --all / cluster:kubeconfig that needs no engine."""

import multiprocessing
import os
import stat
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from dindind.base import config as config_mod
from dindind.base import layout as layout_mod
from dindind.base.errors import DindindError
from dindind.cluster import access, api, host
from dindind.cluster import kubeconfig as kc

# what kubeadm writes (admin.conf), its server already the published address
SOURCE = b"""apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: Q0EtREFUQQ==
    server: https://127.0.0.1:40123
  name: t1
contexts:
- context:
    cluster: t1
    user: kubernetes-admin
  name: kubernetes-admin@t1
current-context: kubernetes-admin@t1
kind: Config
preferences: {}
users:
- name: kubernetes-admin
  user:
    client-certificate-data: Q0VSVA==
    client-key-data: S0VZ
"""

# someone else's kubeconfig, with values whose meaning hangs on their exact text and quoting
EXISTING = """# my clusters
apiVersion: v1
kind: Config
clusters:
- name: prod
  cluster: {server: "https://prod.example:443", insecure-skip-tls-verify: yes}
- name: odd
  cluster:
    server: 'on'
    extensions:
    - name: x
      extension: {octal: 0123, float: 1e3, date: 2020-01-01, bool: on, empty: , quoted: "\\u00e9\\t", tilde: ~}
contexts:
- name: prod
  context: {cluster: prod, user: admin, namespace: "007"}
current-context: prod
preferences: {colors: true}
users:
- name: admin
  user:
    token: |
      line one
      line two
x-unknown-top-level: [1, two, {three: 3}]
"""


def canon(path):
    return kc.meaning(kc.read(path))


def names(doc, section):
    return [str(e["name"]) for e in doc.get(section) or []]


@pytest.fixture
def existing(tmp_path):
    p = tmp_path / "kube" / "config"
    p.parent.mkdir()
    p.write_text(EXISTING)
    os.chmod(p, 0o644)
    return p


def no_leftovers(directory, keep):
    assert sorted(x.name for x in Path(directory).iterdir()) == sorted(keep)


# ---------------------------------------------------------------- merge and remove

def test_merge_into_a_new_file_makes_a_working_0600_kubeconfig(tmp_path):
    path = tmp_path / "home" / ".kube" / "config"
    assert kc.merge_into(path, SOURCE, "t1") is None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    doc = kc.read(path)
    assert doc["current-context"] == "dindind-t1" and doc["kind"] == "Config" and doc["apiVersion"] == "v1"
    for section in ("clusters", "users", "contexts"):
        assert names(doc, section) == ["dindind-t1"]
    server, ca, cert, key = api.parse_kubeconfig(path.read_bytes())
    assert (server, ca, cert, key) == ("https://127.0.0.1:40123", b"CA-DATA", b"CERT", b"KEY")
    no_leftovers(path.parent, ["config"])          # no lock, no temporary file


def test_merge_keeps_every_other_entry_and_value_exactly(existing):
    before = canon(existing)
    assert kc.merge_into(existing, SOURCE, "t1") == "prod"
    assert stat.S_IMODE(existing.stat().st_mode) == 0o600
    after = kc.read(existing)
    assert names(after, "clusters") == ["prod", "odd", "dindind-t1"]
    assert names(after, "contexts") == ["prod", "dindind-t1"]
    assert names(after, "users") == ["admin", "dindind-t1"]
    assert after["current-context"] == "dindind-t1"
    ctx = next(c for c in after["contexts"] if c["name"] == "dindind-t1")["context"]
    assert ctx == {"cluster": "dindind-t1", "user": "dindind-t1"}
    # the others, scalar by scalar with their tags: 0123 stays an octal int, 'on' a string, on a bool ...
    got = kc.meaning(after)
    for key in ("preferences", "x-unknown-top-level", "apiVersion", "kind"):
        assert got[(kc.STR, key)] == before[(kc.STR, key)]
    for section in ("clusters", "contexts", "users"):
        assert got[(kc.STR, section)][:-1] == before[(kc.STR, section)]
    ext = yaml.safe_load(existing.read_text())["clusters"][1]["cluster"]["extensions"][0]["extension"]
    assert ext == yaml.safe_load(EXISTING)["clusters"][1]["cluster"]["extensions"][0]["extension"]
    assert "0123" in existing.read_text() and "server: 'on'" in existing.read_text()
    no_leftovers(existing.parent, ["config"])


def test_merge_then_remove_gives_back_the_same_kubeconfig(existing):
    before = canon(existing)
    previous = kc.merge_into(existing, SOURCE, "t1")
    assert kc.remove_from(existing, "t1", previous) is True
    assert canon(existing) == before               # the current context is prod again
    assert kc.read(existing)["current-context"] == "prod"


def test_merging_again_replaces_the_entries_in_place(existing):
    kc.merge_into(existing, SOURCE, "t1")
    assert kc.merge_into(existing, SOURCE.replace(b"40123", b"40999"), "t1") is None    # already current
    doc = kc.read(existing)
    assert names(doc, "clusters") == ["prod", "odd", "dindind-t1"]
    assert api.parse_kubeconfig(existing.read_bytes())[0] == "https://127.0.0.1:40999"


def test_two_clusters_merged_and_one_removed(existing):
    kc.merge_into(existing, SOURCE, "t1")
    kc.merge_into(existing, SOURCE, "t2")
    kc.remove_from(existing, "t1")
    doc = kc.read(existing)
    assert names(doc, "clusters") == ["prod", "odd", "dindind-t2"]
    assert doc["current-context"] == "dindind-t2"       # not t1's: left as it is
    kc.remove_from(existing, "t2", restore="no-such-context")
    assert kc.read(existing)["current-context"] == ""   # the one to restore is gone: unset, as kind does


def test_remove_without_entries_leaves_the_file_untouched(existing):
    st_before = existing.stat()
    assert kc.remove_from(existing, "t1") is False
    assert existing.read_text() == EXISTING
    st_after = existing.stat()
    assert (st_after.st_ino, st_after.st_mtime_ns, stat.S_IMODE(st_after.st_mode)) == \
        (st_before.st_ino, st_before.st_mtime_ns, 0o644)
    assert kc.remove_from(existing.parent / "missing", "t1") is False
    no_leftovers(existing.parent, ["config"])


def test_a_symlinked_kubeconfig_stays_a_link(tmp_path, existing):
    link = tmp_path / "link-config"
    link.symlink_to(existing)
    kc.merge_into(link, SOURCE, "t1")
    assert link.is_symlink() and names(kc.read(existing), "clusters")[-1] == "dindind-t1"


def test_merge_path_is_the_first_kubeconfig_path_or_home(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert kc.merge_path({"KUBECONFIG": f"{os.pathsep}{a}{os.pathsep}{b}", "HOME": "/h"}) == a
    assert kc.merge_path({"KUBECONFIG": "", "HOME": str(tmp_path)}) == tmp_path / ".kube" / "config"
    assert kc.merge_path({"KUBECONFIG": "rel/config"}) == Path.cwd() / "rel" / "config"


def test_the_record_keeps_each_file_and_the_first_previous_context(tmp_path):
    d = tmp_path / "clusters" / "t1"
    assert kc.recorded(d) == {}
    kc.record(d, "/k/one", "prod")
    kc.record(d, "/k/one", None)
    kc.record(d, "/k/two", None)
    assert kc.recorded(d) == {Path("/k/one"): "prod", Path("/k/two"): None}
    (d / kc.RECORD).write_text('{"merged": [{"path": "relative"}, {"path": 3}, '
                               '{"path": "/ok", "previous_context": 1}, {"path": "/good"}]}')
    assert kc.recorded(d) == {Path("/good"): None}
    (d / kc.RECORD).write_text("not json")
    assert kc.recorded(d) == {}


# ---------------------------------------------------------------- hostile and malformed files

MALFORMED = {
    "not YAML": (b"clusters: [\n", "not valid YAML"),
    "an alias bomb": (b"a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n", "aliases"),
    "a python tag": (b"clusters: !!python/object/apply:os.system [id]\n", "tags"),
    "a binary tag": (b"users: !!binary aGVsbG8=\n", "tags"),
    "not UTF-8": (b"current-context: caf\xe9\n", "not UTF-8"),
    "a duplicate key": (b"clusters: []\nclusters: []\n", "duplicate key"),
    "a list at the top": (b"- clusters\n", "(top level): a list, not a mapping"),
    "a scalar at the top": (b"just text\n", "(top level): a scalar, not a mapping"),
    "clusters as a mapping": (b"clusters: {name: x}\n", "clusters: a mapping, not a list"),
    "an entry that is a scalar": (b"users: [admin]\n", "users[0]: a scalar, not a mapping"),
    "a name that is a list": (b"contexts:\n- name: [a]\n", "contexts[0].name: a list, not a name"),
    "a cluster that is a list": (b"clusters:\n- name: a\n  cluster: [x]\n", "clusters[0].cluster: a list"),
    "another kind": (b"apiVersion: v1\nkind: Pod\n", "kind: 'Pod', not 'Config'"),
    "another apiVersion": (b"apiVersion: v2\n", "apiVersion: 'v2', not 'v1'"),
    "a current context that is a mapping": (b"current-context: {a: b}\n", "current-context: a mapping"),
    "a NUL byte": (b"current-context: a\x00b\n", "not valid YAML"),
    "too deep": (b"a: " + b"[" * 60 + b"]" * 60 + b"\n", "nested deeper than 50 levels"),
    "two documents": (b"kind: Config\n---\nkind: Config\n", "not valid YAML"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
@pytest.mark.parametrize("verb", ["merge", "remove"])
def test_a_malformed_kubeconfig_gets_one_error_and_is_not_modified(tmp_path, case, verb):
    data, expect = MALFORMED[case]
    path = tmp_path / "config"
    path.write_bytes(data)
    os.chmod(path, 0o644)
    with pytest.raises(DindindError) as err:
        if verb == "merge":
            kc.merge_into(path, SOURCE, "t1")
        else:
            kc.remove_from(path, "t1")
    msg = err.value.message
    assert msg.startswith(f"{path} is not a kubeconfig dindind can change: ") and expect in msg, msg
    assert "\n" not in msg and msg.isprintable() and len(msg) < 1200, msg
    assert "left as it was" in err.value.hint
    assert path.read_bytes() == data and stat.S_IMODE(path.stat().st_mode) == 0o644
    no_leftovers(tmp_path, ["config"])


def test_an_oversized_kubeconfig_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "config"
    with open(path, "wb") as f:
        f.truncate(kc._Loader.max_bytes + 1)
    with pytest.raises(DindindError, match="larger than 16777216 bytes"):
        kc.merge_into(path, SOURCE, "t1")
    assert path.stat().st_size == kc._Loader.max_bytes + 1


def test_a_lone_surrogate_is_written_back_escaped(tmp_path):
    path = tmp_path / "config"
    path.write_bytes(b'apiVersion: v1\nkind: Config\nx-note: "\\ud800"\n')     # readable, not encodable as UTF-8
    kc.merge_into(path, SOURCE, "t1")
    assert '"\\uD800"' in path.read_text() and kc.read(path)["x-note"] == "\ud800"
    kc.remove_from(path, "t1")
    assert kc.read(path)["x-note"] == "\ud800"


def test_a_document_that_would_read_back_differently_is_not_written(tmp_path):
    doc = {"kind": kc.Scalar("Config"), "odd": kc.Scalar("abc", "tag:yaml.org,2002:int")}   # needs an explicit tag
    with pytest.raises(DindindError, match="cannot write .*config back as it was read: .*tags"):
        kc.dump(tmp_path / "config", doc)


def test_a_directory_where_the_kubeconfig_should_be_is_refused(tmp_path):
    (tmp_path / "config").mkdir()
    with pytest.raises(DindindError, match="is not a regular file"):
        kc.merge_into(tmp_path / "config", SOURCE, "t1")


def test_an_unreadable_cluster_kubeconfig_is_one_error(tmp_path):
    with pytest.raises(DindindError, match="cannot read the kubeconfig of cluster t1: no current context"):
        kc.merge_into(tmp_path / "config", b"apiVersion: v1\nkind: Config\n", "t1")
    assert not (tmp_path / "config").exists()


@pytest.mark.parametrize("data", [b"", b"# only a comment\n", b"~\n"])
def test_an_empty_kubeconfig_is_merged_into(tmp_path, data):
    path = tmp_path / "config"
    path.write_bytes(data)
    kc.merge_into(path, SOURCE, "t1")
    assert names(kc.read(path), "clusters") == ["dindind-t1"]


# ---------------------------------------------------------------- the lock

def test_a_held_lock_makes_the_change_wait_then_fail_without_touching_anything(existing):
    lock = Path(f"{existing}.lock")
    lock.write_text("")                             # kubectl or kind is writing it
    with pytest.raises(DindindError) as err:
        kc.merge_into(existing, SOURCE, "t1", wait=0.3)
    assert err.value.message == f"{lock} exists: another program (kubectl, kind, dindind) is changing {existing}"
    assert f"remove {lock}" in err.value.hint
    assert existing.read_text() == EXISTING and lock.exists()      # someone else's lock stays
    lock.unlink()
    kc.merge_into(existing, SOURCE, "t1", wait=0.3)
    assert not lock.exists()


def test_the_lock_is_released_when_the_change_fails(existing):
    existing.write_bytes(b"- not a kubeconfig\n")
    with pytest.raises(DindindError):
        kc.merge_into(existing, SOURCE, "t1")
    assert not Path(f"{existing}.lock").exists()


def _merge_one(path, name):
    kc.merge_into(Path(path), SOURCE, name, wait=60)


def test_concurrent_merges_lose_no_entry(existing):
    names_ = [f"c{i}" for i in range(8)]
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_merge_one, args=(str(existing), n)) for n in names_]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * len(procs)
    doc = kc.read(existing)
    assert sorted(names(doc, "clusters")) == sorted(["prod", "odd"] + [f"dindind-{n}" for n in names_])
    assert sorted(names(doc, "users")) == sorted(["admin"] + [f"dindind-{n}" for n in names_])
    no_leftovers(existing.parent, ["config"])


# ---------------------------------------------------------------- fuzzing: merge then remove is a round trip

set_hypothesis_home_dir(Path(tempfile.gettempdir()) / f"dindind-hypothesis-{os.getuid()}")
FUZZ = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                     st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
                     st.sampled_from(["on", "off", "yes", "0123", "1e3", "~", "null", "2020-01-01", "0x1F", "-"]))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(min_size=1, max_size=6), inner, max_size=3), max_leaves=12)


@FUZZ
@given(extra=st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: k not in (
    "clusters", "users", "contexts", "current-context", "kind", "apiVersion", "preferences")), _values, max_size=4),
       ext=_values)
def test_merge_then_remove_round_trips_any_other_content(tmp_path_factory, extra, ext):
    doc = {"apiVersion": "v1", "kind": "Config", **extra,
           "clusters": [{"name": "mine", "cluster": {"server": "https://x:1", "extensions": [{"extension": ext}]}}],
           "contexts": [{"name": "mine", "context": {"cluster": "mine", "user": "me"}}],
           "current-context": "mine", "users": [{"name": "me", "user": {"token": "t"}}]}
    path = tmp_path_factory.mktemp("fuzz") / "config"
    path.write_text(yaml.dump(doc, Dumper=yaml.SafeDumper, allow_unicode=True, sort_keys=False))
    before = canon(path)
    previous = kc.merge_into(path, SOURCE, "t1")
    assert previous == "mine"
    assert kc.remove_from(path, "t1", previous)
    assert canon(path) == before


# ---------------------------------------------------------------- host side without an engine

@pytest.fixture
def cfg():
    return config_mod.load(None)


def test_internal_and_merge_together_are_refused_before_the_engine_is_asked(cfg, tmp_path):
    with pytest.raises(DindindError, match="--internal and --merge cannot be combined"):
        access.kubeconfig(cfg, layout_mod.Layout(tmp_path), "t1", internal=True, merge=True)


def test_all_and_name_together_are_refused(cfg, tmp_path):
    with pytest.raises(DindindError, match="--all and --name cannot be combined"):
        host.down(cfg, layout_mod.Layout(tmp_path), "t1", all=True)


class FakeEngine:
    """What host.down asks of dindind.docker.containers, over a list of labelled objects."""

    def __init__(self, objects):
        self.objects = objects          # (kind, id, labels)
        self.removed = []

    def _match(self, kind, labels):
        out = []
        for k, ident, have in self.objects:
            if k == kind and all(key in have and (v is None or have[key] == v) for key, v in labels.items()):
                out.append({"Id": ident, "Name": ident, "Labels": have})
        return out

    def containers(self, labels, all=True):
        return self._match("container", labels)

    def volumes(self, labels):
        return self._match("volume", labels)

    def networks(self, labels):
        return self._match("network", labels)

    def _remove(self, kind):
        def remove(ident, **_):
            self.removed.append((kind, ident))
            self.objects = [o for o in self.objects if (o[0], o[1]) != (kind, ident)]
        return remove


def test_down_all_removes_every_cluster_nested_or_not_and_their_merged_entries(cfg, tmp_path, monkeypatch):
    L = "io.dindind.cluster"
    R = "io.dindind.role"
    fake = FakeEngine([
        ("container", "dindind-nest", {L: "nest", R: "cluster"}),         # nested: its nodes are inside
        ("volume", "dindind-nest-docker", {L: "nest", R: "volume"}),
        ("container", "flat-control-plane", {L: "flat", R: "control-plane"}),
        ("container", "flat-worker", {L: "flat", R: "worker"}),
        ("volume", "flat-control-plane-var", {L: "flat"}),
        ("network", "dindind-flat", {L: "flat"}),
        ("volume", "orphan-var", {L: "orphan"}),                            # a half-removed cluster
        ("network", "odd-net", {L: "Not A Name!"}),                         # removed by label, nothing else
        ("container", "someone-else", {"other": "x"}),
    ])
    for fn in ("containers", "volumes", "networks"):
        monkeypatch.setattr(host.containers, fn, getattr(fake, fn))
    monkeypatch.setattr(host.containers, "remove_container", fake._remove("container"))
    monkeypatch.setattr(host.containers, "remove_volume", fake._remove("volume"))
    monkeypatch.setattr(host.containers, "remove_network", fake._remove("network"))
    lay = layout_mod.Layout(tmp_path)
    kubeconfig = tmp_path / "kube" / "config"
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    kubeconfig.parent.mkdir()
    kubeconfig.write_text(EXISTING)
    for name in ("nest", "flat"):
        kc.merge_into(kubeconfig, SOURCE, name)
        (lay.cluster(name) / "logs").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    kc.record(lay.cluster("flat"), elsewhere, "prod")
    kc.merge_into(elsewhere, SOURCE, "flat")
    lines = []
    assert host.down(cfg, lay, all=True, out=lines.append) == ["Not A Name!", "flat", "nest", "orphan"]
    assert fake.objects == [("container", "someone-else", {"other": "x"})]
    assert not lay.clusters.exists() or list(lay.clusters.iterdir()) == []
    doc = kc.read(kubeconfig)
    assert names(doc, "clusters") == ["prod", "odd"] and doc["current-context"] == ""
    assert names(kc.read(elsewhere), "clusters") == []
    assert any(line.startswith("removed cluster flat: 2 container(s), 1 volume(s), 1 network(s); its kubeconfig "
                               "entries from ") and str(elsewhere) in line for line in lines), lines
    lines.clear()
    assert host.down(cfg, lay, all=True, out=lines.append) == [] and lines == ["no dindind clusters"]


def test_down_warns_about_a_kubeconfig_it_cannot_change_and_still_removes_the_cluster(cfg, tmp_path, monkeypatch):
    fake = FakeEngine([("container", "c1", {"io.dindind.cluster": "one"})])
    for fn in ("containers", "volumes", "networks"):
        monkeypatch.setattr(host.containers, fn, getattr(fake, fn))
    monkeypatch.setattr(host.containers, "remove_container", fake._remove("container"))
    bad = tmp_path / "config"
    bad.write_bytes(b"- not: a kubeconfig\n")
    monkeypatch.setenv("KUBECONFIG", str(bad))
    lines = []
    host.down(cfg, layout_mod.Layout(tmp_path), "one", out=lines.append)
    assert fake.objects == [] and bad.read_bytes() == b"- not: a kubeconfig\n"
    assert lines[0].startswith(f"WARNING: {bad} is not a kubeconfig dindind can change: (top level): a list")
    assert lines[1] == "removed cluster one: 1 container(s), 0 volume(s), 0 network(s)"
