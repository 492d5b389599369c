"""The cluster plan, kubeadm configs, CNI config and node run arguments (no engine)."""

import io
import ipaddress
import json
import os
import re
from pathlib import Path

import pytest
import yaml

from dindind.cluster import kubeadm, plan
from dindind.cluster.actions import cni, provision
from dindind.cluster.context import Context
from dindind.cluster.status import Status
from dindind.docker.containers import FALLBACK, PRIVILEGED
from dindind.base.errors import DindindError

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "kubeadm"
TOKEN = "abcdef.0123456789abcdef"


def settings(**kw):
    base = dict(name="demo", workers=2, node_image="dindind/node:v1.31.2_sample",
                kubernetes_version="v1.31.2+sample", pod_subnet="10.244.0.0/16", service_subnet="10.96.0.0/16",
                node_subnet="172.30.0.0/24")
    base.update(kw)
    return plan.Settings(**base)


def test_names_roles_slices_and_static_ips():
    p = plan.make_plan(settings(), token=TOKEN)
    assert [(n.name, n.role, n.pod_cidr, n.ip) for n in p.nodes] == [
        ("demo-control-plane", "control-plane", "10.244.0.0/24", "172.30.0.2"),
        ("demo-worker", "worker", "10.244.1.0/24", "172.30.0.3"),
        ("demo-worker2", "worker", "10.244.2.0/24", "172.30.0.4"),
    ]
    assert p.network == "dindind-demo"
    assert p.labels("worker") == {"io.dindind.cluster": "demo", "io.dindind.role": "worker"}


def test_bootstrap_tokens_are_fresh_and_well_formed():
    tokens = {plan.bootstrap_token() for _ in range(20)}
    assert len(tokens) == 20
    assert all(re.fullmatch(r"[a-z0-9]{6}\.[a-z0-9]{16}", t) for t in tokens)
    assert plan.make_plan(settings()).token != plan.make_plan(settings()).token


def test_settings_round_trip_through_json_without_a_token():
    s = settings(kubelet_extra_args=("--v=4",), kubeadm_patches=({"kind": "KubeletConfiguration", "maxPods": 9},))
    text = s.to_json()
    assert plan.Settings.from_json(text) == s
    assert "token" not in json.loads(text)


@pytest.mark.parametrize("version, api", [("v1.30.5", "v1beta3"), ("v1.31.0", "v1beta4"), ("v1.32.0-alpha.1", "v1beta4"),
                                          ("v1.29.0+abc", "v1beta3"), ("v2.0.0", "v1beta4")])
def test_kubeadm_api_version_is_chosen_in_code(version, api):
    assert kubeadm.api_version(version) == api


@pytest.mark.parametrize("version, node_index", [("v1.31.2+sample", 0), ("v1.31.2+sample", 1), ("v1.30.5", 0)])
def test_rendered_kubeadm_config_matches_golden(version, node_index):
    p = plan.make_plan(settings(kubernetes_version=version, kubelet_extra_args=("--v=4",)), token=TOKEN)
    node = p.nodes[node_index]
    text = kubeadm.render_config(p, node, node.ip, p.control_plane.ip)
    golden = GOLDEN / f"{kubeadm.api_version(version)}-{node.role}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert text == golden.read_text(), f"{golden.name} differs; UPDATE_GOLDEN=1 rewrites it"
    docs = list(yaml.safe_load_all(text))
    kinds = [d["kind"] for d in docs]
    assert kinds == ["ClusterConfiguration", "InitConfiguration", "JoinConfiguration", "KubeletConfiguration",
                     "KubeProxyConfiguration"]
    by = {d["kind"]: d for d in docs}
    assert {"localhost", "127.0.0.1"} <= set(by["ClusterConfiguration"]["apiServer"]["certSANs"])
    assert by["KubeProxyConfiguration"]["conntrack"]["maxPerCore"] == 0
    assert by["KubeletConfiguration"]["cgroupDriver"] == "systemd"
    assert by["KubeletConfiguration"]["evictionHard"] == {"nodefs.available": "0%", "nodefs.inodesFree": "0%",
                                                          "imagefs.available": "0%"}
    assert by["InitConfiguration"]["bootstrapTokens"][0]["token"] == TOKEN


def test_kubelet_extra_args_reach_both_node_registrations():
    p = plan.make_plan(settings(kubelet_extra_args=("--v=4", "--max-pods=20")), token=TOKEN)
    docs = {d["kind"]: d for d in yaml.safe_load_all(kubeadm.render_config(p, p.nodes[1], "172.30.0.3", "172.30.0.2"))}
    for kind in ("InitConfiguration", "JoinConfiguration"):
        args = {a["name"]: a["value"] for a in docs[kind]["nodeRegistration"]["kubeletExtraArgs"]}
        assert args["v"] == "4" and args["max-pods"] == "20" and args["node-ip"] == "172.30.0.3"


@pytest.mark.parametrize("version", ["v1.30.5", "v1.31.2+sample"])
def test_control_planes_register_untainted_only_when_there_are_no_workers(version):
    def registrations(workers):
        p = plan.make_plan(settings(kubernetes_version=version, workers=workers), token=TOKEN)
        docs = {d["kind"]: d for d in yaml.safe_load_all(kubeadm.render_config(p, p.nodes[0], p.nodes[0].ip,
                                                                                 p.nodes[0].ip))}
        return [docs[k]["nodeRegistration"] for k in ("InitConfiguration", "JoinConfiguration")]

    # [] is kubeadm's "no taints"; absent is its default NoSchedule taint on a control plane
    assert [r.get("taints", "absent") for r in registrations(0)] == [[], []]
    assert [r.get("taints", "absent") for r in registrations(2)] == ["absent", "absent"]


def test_without_a_pod_network_the_wait_ends_when_every_node_has_registered(monkeypatch):
    from dindind.cluster import api
    from dindind.cluster.actions import waitready

    answers = iter([{"a": False}, {"a": False, "b": False}])
    monkeypatch.setattr(api, "node_readiness", lambda kc, server=None, since=None: next(answers))
    assert waitready.wait(b"kc", ["a", "b"], 10, sleep=0, registered=True) >= 0
    monkeypatch.setattr(api, "node_readiness", lambda kc, server=None, since=None: {"a": True, "b": False})
    with pytest.raises(DindindError, match=r"not Ready: b"):
        waitready.wait(b"kc", ["a", "b"], 0, sleep=0)
    monkeypatch.setattr(api, "node_readiness", lambda kc, server=None, since=None: {"a": False})
    with pytest.raises(DindindError, match=r"not registered: b"):
        waitready.wait(b"kc", ["a", "b"], 0, sleep=0, registered=True)

    p = plan.make_plan(settings(cni="none", workers=1), token=TOKEN)
    out = io.StringIO()
    ctx = Context(plan=p, node_image="img", status=Status(out=out), kubeconfig=b"kc")
    ctx.node_ips = {n.name: n.ip for n in p.nodes}
    monkeypatch.setattr(waitready, "wait", lambda kc, names, timeout, server=None, since=None, registered=False:
                        (names, registered) == ([n.name for n in p.nodes], True) and 2.0)
    waitready.execute(ctx)
    assert "2 nodes registered after 2.0s; no pod network (disableDefaultCNI)" in out.getvalue()


@pytest.mark.parametrize("retain", [False, True])
def test_a_host_side_wait_that_fails_takes_the_exported_kubeconfig_away_unless_retained(tmp_path, monkeypatch, retain):
    from dindind.base import layout as layout_mod
    from dindind.cluster import create, host
    from dindind.cluster.actions import waitready

    lay = layout_mod.Layout(tmp_path / "proj")
    s = settings(cni="none", retain=retain, workers=0)
    asked, rolled = [], []
    monkeypatch.setattr(create, "create", lambda p, image, publish=None, status=None:
                        Context(plan=p, node_image=image, status=Status(out=io.StringIO()),
                                kubeconfig=b"clusters: [{name: c, cluster: {server: x}}]\n"))
    monkeypatch.setattr(create, "rollback", lambda ctx: rolled.append(ctx.plan.name))
    monkeypatch.setattr(host, "_host_port", lambda container, address: 40123)

    def wait(kc, names, timeout, server=None, since=None, registered=False):
        asked.append(registered)
        assert host.kubeconfig_path(lay, "demo").stat().st_mode & 0o777 == 0o600
        raise DindindError("the cluster was not ready within 60s")
    monkeypatch.setattr(waitready, "wait", wait)
    with pytest.raises(DindindError, match="not ready"):
        host._up_direct(lay, s, ("127.0.0.1", 40123), print)
    assert asked == [True]          # no pod network: registered is enough
    assert host.kubeconfig_path(lay, "demo").exists() is retain
    assert host.cluster_dir(lay, "demo").exists() is retain
    assert rolled == ([] if retain else ["demo"])


def test_patches_are_merged_by_kind():
    patches = ({"kind": "KubeletConfiguration", "maxPods": 50, "evictionHard": {"memory.available": "1%"}},)
    p = plan.make_plan(settings(kubeadm_patches=patches), token=TOKEN)
    docs = {d["kind"]: d for d in yaml.safe_load_all(kubeadm.render_config(p, p.nodes[0], "172.30.0.2", "172.30.0.2"))}
    assert docs["KubeletConfiguration"]["maxPods"] == 50
    assert docs["KubeletConfiguration"]["evictionHard"]["memory.available"] == "1%"
    assert docs["KubeletConfiguration"]["evictionHard"]["nodefs.available"] == "0%"


def test_a_patch_for_an_unknown_kind_is_refused():
    p = plan.make_plan(settings(kubeadm_patches=({"kind": "Nope"},)), token=TOKEN)
    with pytest.raises(DindindError, match="matches no document"):
        kubeadm.render_config(p, p.nodes[0], "172.30.0.2", "172.30.0.2")


def test_cni_conflist_and_routes_give_each_node_its_slice():
    p = plan.make_plan(settings(), token=TOKEN)
    ips = {n.name: n.ip for n in p.nodes}
    for node in p.nodes:
        conf = json.loads(cni.conflist(node))
        assert [pl["type"] for pl in conf["plugins"]] == ["bridge", "portmap"]
        assert conf["plugins"][0]["ipam"] == {"type": "host-local", "ranges": [[{"subnet": node.pod_cidr}]],
                                              "routes": [{"dst": "0.0.0.0/0"}]}
        routes = cni.routes(p, node, ips)
        assert len(routes) == 2 and node.pod_cidr not in [r[0] for r in routes]
        for dst, via in routes:
            other = next(n for n in p.nodes if n.pod_cidr == dst)
            assert via == other.ip
    slices = [ipaddress.ip_network(n.pod_cidr) for n in p.nodes]
    assert not any(a.overlaps(b) for i, a in enumerate(slices) for b in slices[i + 1:])


def test_cni_rejects_unclaimed_service_ports_once_per_node():
    p = plan.make_plan(settings(), token=TOKEN)
    ran, present = [], set()

    class Engine:
        def put_file(self, name, path, text):
            pass

        def exec_in(self, name, cmd, check=True):
            ran.append((name, cmd))
            if cmd[:2] == ["iptables", "-I"]:
                present.add((name, cmd[2]))
            if cmd[:2] == ["iptables", "-C"]:
                return (0 if (name, cmd[2]) in present else 1), ""
            return 0, ""

    ctx = Context(plan=p, node_image="img", status=Status(), engine=Engine(),
                  node_ips={n.name: n.ip for n in p.nodes})
    cni.execute(ctx)
    cni.execute(ctx)             # a restart runs the action again: no second copy of a rule
    inserted = [(n, c) for n, c in ran if c[:2] == ["iptables", "-I"]]
    assert sorted((n, c[2]) for n, c in inserted) == sorted((n.name, ch) for n in p.nodes for ch in ("FORWARD", "OUTPUT"))
    for _, cmd in inserted:
        assert cmd[3] == "1" and cmd[cmd.index("-d") + 1] == p.settings.service_subnet and cmd[-2:] == ["-j", "REJECT"]


@pytest.mark.parametrize("privilege", [PRIVILEGED, FALLBACK], ids=["privileged", "fallback"])
def test_node_run_arguments(privilege, monkeypatch):
    p = plan.make_plan(settings(), token=TOKEN)
    ctx = Context(plan=p, node_image="img", status=Status(), publish=("127.0.0.1", 40000), privilege=privilege)
    cp = provision.node_run_args(ctx, p.control_plane)
    worker = provision.node_run_args(ctx, p.nodes[1])
    assert cp["ports"] == {6443: ("127.0.0.1", 40000)} and "ports" not in worker
    assert set(cp["tmpfs"]) == {"/run", "/run/lock", "/tmp"}
    assert cp["privilege"] == privilege and cp["cgroupns"] == "private"
    assert set(cp["volumes"].values()) == {"/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs",
                                           "/var/lib/kubelet", "/var/log"}
    assert all(v.startswith("demo-control-plane-") for v in cp["volumes"])
    assert cp["labels"] == {"io.dindind.cluster": "demo", "io.dindind.role": "control-plane",
                            "io.dindind.settings": p.settings.to_json()}
    assert worker["labels"] == {"io.dindind.cluster": "demo", "io.dindind.role": "worker"}
    assert plan.Settings.from_json(cp["labels"]["io.dindind.settings"]) == p.settings     # no token in it
    assert TOKEN not in cp["labels"]["io.dindind.settings"]
    assert cp["stop_signal"] == "SIGRTMIN+3" and cp["ip"] == "172.30.0.2"
    monkeypatch.setattr(provision.os.path, "isdir", lambda p: False)
    assert "binds_ro" not in provision.node_run_args(ctx, p.nodes[1])   # no /lib/modules on the host
    monkeypatch.setattr(provision.os.path, "isdir", lambda p: True)
    assert provision.node_run_args(ctx, p.nodes[1])["binds_ro"] == {"/lib/modules": "/lib/modules"}


def test_actions_run_in_kinds_order_and_cni_none_skips_the_network():
    from dindind.cluster import create

    titles = [a.TITLE for a in create.actions(settings())]
    assert titles == ["Preparing nodes", "Writing configuration", "Starting control-plane", "Installing CNI",
                      "Joining worker nodes", "Waiting for nodes to be Ready"]
    assert "Installing CNI" not in [a.TITLE for a in create.actions(settings(cni="none"))]


def test_failed_action_rolls_back_what_was_created_unless_retained(monkeypatch):
    from dindind.cluster import create

    removed = []

    class FakeEngine:
        def remove_container(self, name, volumes=True):
            removed.append(("container", name, volumes))

        def remove_volume(self, name):
            removed.append(("volume", name))

        def remove_network(self, name):
            removed.append(("network", name))

    class Boom:
        TITLE = "Failing"

        @staticmethod
        def execute(ctx):
            ctx.created += [("network", "n"), ("volume", "v"), ("container", "c")]
            raise DindindError("boom")

    monkeypatch.setattr(create, "actions", lambda s: [Boom])
    for retain, expected in ((False, [("container", "c", True), ("volume", "v"), ("network", "n")]), (True, [])):
        removed.clear()
        p = plan.make_plan(settings(retain=retain), token=TOKEN)
        with pytest.raises(DindindError):
            create.create(p, "img", status=Status(out=io.StringIO()), engine=FakeEngine())
        assert removed == expected


def test_api_times_parse_to_epoch_seconds():
    from dindind.cluster import api

    assert api.epoch("1970-01-01T00:00:10Z") == 10
    assert api.epoch("2026-12-02T15:40:26.123456789Z") == pytest.approx(1796226026.123456789)
    assert api.epoch("1970-01-01T01:00:10+01:00") == 10
    for bad in ("", "yesterday", "2026-12-02 15:40:26Z", None):
        with pytest.raises(DindindError, match="not an RFC 3339 time"):
            api.epoch(bad)


def _node(name, ready, beat):
    return {"metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": ready, "lastHeartbeatTime": beat}]}}


def test_after_a_restart_ready_counts_only_as_reported_since(monkeypatch):
    from dindind.cluster import api

    old, new = "2026-12-02T15:00:00Z", "2026-12-02T15:10:00Z"
    since = api.epoch("2026-12-02T15:05:00Z")
    nodes = [_node("a", "True", old), _node("b", "True", old), _node("c", "True", new), _node("d", "False", new)]
    leases = [{"metadata": {"name": "a"}, "spec": {"renewTime": "2026-12-02T15:05:01.000001Z"}},
              {"metadata": {"name": "b"}, "spec": {"renewTime": "2026-12-02T15:04:59.999999Z"}}]
    answers = {"/api/v1/nodes": (200, {"items": nodes}), api.LEASES: (200, {"items": leases})}
    monkeypatch.setattr(api, "get", lambda kc, path, server=None, timeout=5: answers[path])
    # before the restart's kubelets report, the API still says Ready (what a restart must not take for Ready)
    assert api.node_readiness(b"kc") == {"a": True, "b": True, "c": True, "d": False}
    # a: its lease renewed since; b: nothing since; c: its heartbeat; d: not Ready at all
    assert api.node_readiness(b"kc", since=since) == {"a": True, "b": False, "c": True, "d": False}
    answers[api.LEASES] = (404, "not found")      # the sample's API stand-in serves no leases
    assert api.node_readiness(b"kc", since=since) == {"a": False, "b": False, "c": True, "d": False}
    answers[api.LEASES] = (403, "forbidden")
    with pytest.raises(DindindError, match="answered 403"):
        api.node_readiness(b"kc", since=since)


class RestartEngine:
    """What create.restart and create.stop ask of the engine, recorded."""

    def __init__(self, started, fail_stop=()):
        self.calls, self.started, self.fail_stop = [], started, fail_stop

    def start_container(self, name):
        self.calls.append(("start", name))

    def exec_in(self, name, cmd, check=True):
        self.calls.append(("exec", name, " ".join(cmd)))
        return 0, "running\n" if cmd[0] == "systemctl" else ""

    def put_file(self, name, path, data):
        self.calls.append(("put", name, path))

    def get_file(self, name, path):
        self.calls.append(("get", name, path))
        return b"admin.conf"

    def inspect_container(self, name):
        return {"State": {"StartedAt": self.started[name]}}

    def stop_container(self, name, timeout):
        self.calls.append(("stop", name, timeout))
        if name in self.fail_stop:
            raise DindindError("engine says no")


def test_restart_starts_every_node_puts_the_routes_back_and_waits_for_reports_since_the_start(monkeypatch):
    from dindind.cluster import api, create
    from dindind.cluster.actions import waitready

    p = plan.make_plan(settings(), token=TOKEN)
    started = {"demo-control-plane": "2026-12-02T15:05:02.5Z", "demo-worker": "2026-12-02T15:05:01.25Z",
               "demo-worker2": "2026-12-02T15:05:03Z"}
    eng = RestartEngine(started)
    waits = []
    monkeypatch.setattr(waitready, "wait", lambda kc, names, timeout, server=None, since=None, registered=False:
                        waits.append((kc, names, timeout, server, since)) or 1.0)
    ctx = create.restart(p, "img", None, status=Status(out=io.StringIO()), engine=eng)
    names = [n.name for n in p.nodes]
    assert [c[1] for c in eng.calls if c[0] == "start"] == names
    assert ("get", "demo-control-plane", "/etc/kubernetes/admin.conf") in eng.calls and ctx.kubeconfig == b"admin.conf"
    assert ctx.node_ips == {n.name: n.ip for n in p.nodes}
    assert ctx.restarted == api.epoch(started["demo-worker"])          # the earliest start, on the engine's clock
    for node in p.nodes:                                                # the CNI config and routes again
        assert ("put", node.name, cni.CONFLIST) in eng.calls
        assert sum(1 for c in eng.calls if c[:2] == ("exec", node.name) and "ip route replace" in c[2]) == 2
    assert waits == [(b"admin.conf", names, 180, f"https://{p.control_plane.ip}:6443", ctx.restarted)]
    eng.calls.clear()
    create.restart(plan.make_plan(settings(cni="none"), token=TOKEN), "img", b"given",
                   status=Status(out=io.StringIO()), engine=eng)
    assert not [c for c in eng.calls if c[0] in ("get", "put")]        # a kubeconfig given; no CNI of ours


def test_stop_stops_every_node_at_once_and_names_what_did_not_stop():
    from dindind.cluster import create

    eng = RestartEngine({}, fail_stop=("b",))
    assert create.stop(["a", "b", "c"], timeout=7, engine=eng) == ["could not stop b: engine says no"]
    assert sorted(eng.calls) == [("stop", "a", 7), ("stop", "b", 7), ("stop", "c", 7)]
