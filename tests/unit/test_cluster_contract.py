"""The cluster image's contract without an engine: its baked defaults, the arguments after the
image, the `dindind` command inside, and what the host side passes and prints (issue 14)."""

import io
import json
import stat

import pytest
import yaml

from dindind import __main__ as cli
from dindind.base import config, layout as layout_mod
from dindind.base.errors import DindindError
from dindind.build import images
from dindind.cluster import host, incluster, inside, options, plan
from dindind.docker.containers import FALLBACK, PRIVILEGED

NODE_STAMP = {"tags": ["dindind/node:v1.31.2_sample"], "kubernetes_version": "v1.31.2+sample", "id": "sha256:0"}


def load_config(tmp_path, extra=""):
    p = tmp_path / "c.yaml"
    p.write_text("kubernetes: {source: sample, version: v1.31.2+sample}\n" + extra)
    return config.load(p)


def defaults(tmp_path, extra=""):
    return options.load_defaults(images.cluster_defaults(load_config(tmp_path, extra), NODE_STAMP))


# ------------------------------------------------------------------ baked defaults

def test_the_image_defaults_are_the_settings_cluster_up_derives_from_the_same_config(tmp_path):
    extra = ("cluster:\n  name: demo\n  workers: 3\n  kubelet_extra_args: [--v=4]\n  wait: 90\n"
             "  pod_subnet: 10.200.0.0/16\n  kubeadm_patches:\n  - {kind: ClusterConfiguration, networking: {}}\n")
    cfg = load_config(tmp_path, extra)
    lay = layout_mod.Layout(tmp_path / "proj")
    lay.stamp("node").parent.mkdir(parents=True)
    lay.stamp("node").write_text(json.dumps(NODE_STAMP))
    from_host = host.settings_for(cfg, lay)
    baked = options.load_defaults(images.cluster_defaults(cfg, NODE_STAMP))
    # the host-only keys (where the host publishes the API; --retain) keep their defaults in the image
    assert baked == plan.Settings(**{**from_host.__dict__, "api_address": "127.0.0.1", "api_port": 0})
    assert baked.workers == 3 and baked.kubelet_extra_args == ("--v=4",) and baked.name == "demo"


def test_the_rendered_cluster_image_carries_defaults_health_kubeconfig_and_the_dindind_command(tmp_path):
    cfg = load_config(tmp_path, "cluster:\n  workers: 1\n")
    lay = layout_mod.Layout(tmp_path / "proj")
    ctx = images.cluster_context(cfg, {"tags": ["dindind/base:x"]}, NODE_STAMP)
    from dindind.base import render

    render.render_tree(config.ROOT / "templates" / "cluster", ctx, lay.context / "cluster")
    out = lay.context / "cluster"
    baked = options.load_defaults((out / "files" / options.DEFAULTS.lstrip("/")).read_text())
    assert baked.workers == 1 and baked.node_image == NODE_STAMP["tags"][0]
    dockerfile = (out / "Dockerfile").read_text()
    assert 'HEALTHCHECK' in dockerfile and 'CMD ["dindind", "health"]' in dockerfile
    assert "KUBECONFIG=/var/lib/dindind/kubeconfig" in dockerfile
    script = out / "files" / "usr" / "local" / "bin" / "dindind"
    assert script.stat().st_mode & stat.S_IXUSR
    assert "python3 -m dindind.cluster.inside" in script.read_text()


# ------------------------------------------------------------------ arguments after the image

def test_no_arguments_is_the_default_cluster(tmp_path):
    d = defaults(tmp_path)
    args = options.parse([], d)
    assert args.settings == d and not args.no_cluster and not args.help


def test_arguments_override_in_both_forms(tmp_path):
    d = defaults(tmp_path, "cluster:\n  kubelet_extra_args: [--v=2]\n")
    a = options.parse(["--workers", "0", "--name=t14-x", "--kubelet-arg=--v=4", "--kubelet-arg", "--max-pods=50",
                       "--wait=30", "--retain"], d)
    assert (a.settings.workers, a.settings.name, a.settings.wait, a.settings.retain) == (0, "t14-x", 30, True)
    assert a.settings.kubelet_extra_args == ("--v=4", "--max-pods=50")     # given: replaces the image's list
    assert options.parse(["--no-cluster"], d).no_cluster


@pytest.mark.parametrize("argv, message", [
    (["--bogus"], 'unknown argument "--bogus"'),
    (["up"], 'unknown argument "up"'),
    (["--workers", "11"], "--workers: '11' is out of range: use a whole number from 0 to 10"),
    (["--workers=two"], "--workers: 'two' is not a whole number from 0 to 10"),
    (["--wait", "-1"], "out of range"),
    (["--name", "Bad_Name"], "invalid --name 'Bad_Name'"),
    (["--name"], "--name needs a value"),
    (["--kubelet-arg=v=4"], "is not of the form --flag=value"),
    (["--kubelet-arg=--v=4\n--x=y"], "is not of the form --flag=value"),
    (["--retain=yes"], "--retain takes no value"),
])
def test_bad_arguments_are_one_error(tmp_path, argv, message):
    with pytest.raises(DindindError) as exc:
        options.parse(argv, defaults(tmp_path))
    assert message in exc.value.message, exc.value.message
    assert exc.value.hint         # what to do: --help, or the name rule


def test_help_lists_every_argument_with_the_image_default(tmp_path):
    text = options.help_text(defaults(tmp_path, "cluster:\n  workers: 3\n"))
    for opt in options.OPTIONS:
        assert opt in text
    assert "(default: 3)" in text and "v1.31.2+sample" in text


def _entry(tmp_path, monkeypatch, argv, capsys):
    path = tmp_path / "cluster.json"
    path.write_text(images.cluster_defaults(load_config(tmp_path), NODE_STAMP))
    monkeypatch.setattr(options, "DEFAULTS", str(path))

    def no_engine(*a, **kw):
        raise AssertionError("dockerd must not start")

    monkeypatch.setattr(incluster.engine, "start_dockerd", no_engine)
    monkeypatch.setattr(incluster, "set_phase", lambda phase: None)
    monkeypatch.setattr(incluster, "check_privileges", lambda: None)
    code = incluster.main(argv)
    return code, capsys.readouterr().out


def test_the_entry_point_refuses_bad_arguments_at_once_in_one_line(tmp_path, monkeypatch, capsys):
    code, out = _entry(tmp_path, monkeypatch, ["--workers", "99"], capsys)
    assert code == 2
    assert out.count("\n") == 1 and out.startswith("ERROR: --workers: '99' is out of range")


def test_the_entry_point_prints_help_and_exits_0(tmp_path, monkeypatch, capsys):
    code, out = _entry(tmp_path, monkeypatch, ["--help"], capsys)
    assert code == 0 and "--kubelet-arg" in out


def test_the_entry_point_without_its_defaults_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(options, "DEFAULTS", str(tmp_path / "missing.json"))
    assert incluster.main([]) == 2
    assert "cannot read the image's default settings" in capsys.readouterr().out


# ------------------------------------------------------------------ cluster:up is a client of the same contract

@pytest.mark.parametrize("kw", [{}, {"workers": 0, "name": "t14-a", "wait": 0, "retain": True},
                                {"kubelet_extra_args": ("--v=4", "--max-pods=20")}])
def test_cluster_up_arguments_parse_back_to_its_settings(tmp_path, kw):
    d = defaults(tmp_path)
    wanted = plan.Settings(**{**d.__dict__, **kw})
    assert options.parse(host.image_args(wanted), d).settings == wanted


def test_run_flags_for_privileged_and_for_the_capability_set():
    priv = host.run_flags(PRIVILEGED)
    assert priv[0] == "--privileged" and "/sys/fs/cgroup:/sys/fs/cgroup:rw" not in priv
    caps = host.run_flags(FALLBACK)
    assert "--privileged" not in caps and "--cap-add=ALL" in caps and "--cap-drop=SYS_RESOURCE" in caps
    assert "/sys/fs/cgroup:/sys/fs/cgroup:rw" in caps
    for flags in (priv, caps):
        assert flags[-1] == "--stop-timeout=60"
        assert [flags[i + 1] for i, f in enumerate(flags) if f == "--tmpfs"] == ["/run", "/run/lock", "/tmp"]


def test_run_flags_command_line(monkeypatch, capsys):
    monkeypatch.setattr("dindind.docker.containers.privilege_opts", lambda image: dict(FALLBACK))
    monkeypatch.setattr("dindind.docker.engine.image_id", lambda ref: None if "missing" in ref else "sha256:" + "1" * 64)
    assert cli.main(["run-flags", "dindind/cluster:x"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("--cap-add=ALL ") and "--stop-timeout=60" in out
    assert cli.main(["run-flags", "a", "b"]) == 1
    assert cli.main(["run-flags", "Not An Image"]) == 1
    assert "invalid image reference" in capsys.readouterr().err
    # the probe runs the image: a missing image is named, not blamed on the engine
    assert cli.main(["run-flags", "dindind/cluster:missing"]) == 1
    assert "no image 'dindind/cluster:missing' in this engine" in capsys.readouterr().err


def test_published_server_is_found_from_the_port_binding(monkeypatch):
    ports = {"6443/tcp": [{"HostIp": "0.0.0.0", "HostPort": "41234"}]}
    monkeypatch.setattr(host.containers, "inspect_container", lambda c: {"NetworkSettings": {"Ports": ports}})
    assert host.published_server("c") == "https://127.0.0.1:41234"
    ports["6443/tcp"] = [{"HostIp": "::1", "HostPort": "7"}]
    assert host.published_server("c") == "https://[::1]:7"
    ports["6443/tcp"] = None
    assert host.published_server("c") is None
    with pytest.raises(DindindError, match="publishes no port for the API server"):
        host.container_kubeconfig("c")


# ------------------------------------------------------------------ dindind, inside

KUBECONFIG = yaml.safe_dump({
    "apiVersion": "v1", "kind": "Config", "current-context": "a",
    "clusters": [{"name": "k", "cluster": {"server": "https://172.30.0.2:6443", "certificate-authority-data": "Y2E="}}],
    "contexts": [{"name": "a", "context": {"cluster": "k", "user": "u"}}],
    "users": [{"name": "u", "user": {"client-certificate-data": "Yw==", "client-key-data": "aw=="}}]})


def state(tmp_path, phase="ready"):
    (tmp_path / "phase").write_text(phase + "\n")
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    (tmp_path / "settings.json").write_text(defaults(tmp_path).to_json())
    return str(tmp_path)


@pytest.mark.parametrize("phase", ["starting", "failed", "stopping", "engine"])
def test_commands_before_the_cluster_is_ready_say_so(tmp_path, phase):
    st = state(tmp_path, phase)
    for cmd in (inside.kubeconfig, inside.status, inside.e2e):
        with pytest.raises(DindindError, match=f"the cluster is not ready \\(phase: {phase}\\)"):
            cmd([], st, io.StringIO())


def test_kubeconfig_server_is_the_given_url_or_the_documented_published_address(tmp_path):
    st = state(tmp_path)
    for args, server in (([], "https://127.0.0.1:6443"), (["--server", "https://10.0.0.5:31000"],
                                                          "https://10.0.0.5:31000"),
                         (["--server=https://[::1]:6443"], "https://[::1]:6443")):
        out = io.StringIO()
        assert inside.kubeconfig(args, st, out) == 0
        assert yaml.safe_load(out.getvalue())["clusters"][0]["cluster"]["server"] == server


@pytest.mark.parametrize("url", ["http://x:1", "https://", "https://x:99999", "https://x:1/path", "https://x y:1",
                                 "x:6443", "https://x:1\nfoo"])
def test_kubeconfig_refuses_a_server_that_is_not_an_https_address(tmp_path, url):
    with pytest.raises(DindindError, match="is not an https://HOST:PORT URL"):
        inside.kubeconfig(["--server", url], state(tmp_path), io.StringIO())


def test_health_and_status_read_readiness_from_the_api(tmp_path, monkeypatch):
    st = state(tmp_path)
    ready = {"dindind-control-plane": True, "dindind-worker": True, "dindind-worker2": False}
    monkeypatch.setattr(inside.api, "node_readiness", lambda kc, timeout: dict(ready))
    with pytest.raises(DindindError, match="not Ready: dindind-worker2"):
        inside.health([], st, io.StringIO())
    out = io.StringIO()
    with pytest.raises(DindindError):
        inside.status([], st, out)
    assert "dindind-worker2" in out.getvalue()
    ready["dindind-worker2"] = True
    assert inside.health([], st, io.StringIO()) == 0
    assert inside.health([], state(tmp_path, "engine"), io.StringIO()) == 0


def test_the_api_not_answering_is_unhealthy_without_a_traceback(tmp_path, monkeypatch, capsys):
    st = state(tmp_path)
    monkeypatch.setattr(inside, "STATE", st)
    monkeypatch.setattr(inside.health, "__defaults__", (st, io.StringIO()))

    def refused(kc, timeout):
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(inside.api, "node_readiness", refused)
    assert inside.main(["health"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR: health:") and "Connection refused" in err and err.count("\n") == 1


def test_e2e_command_line_and_its_checks():
    cmd = inside.e2e_command(["--focus=Conformance", "--parallel", "2"], "/k", "/r")
    assert cmd[:4] == ["ginkgo", "--nodes=2", "--flake-attempts=1", "--timeout=24h"]    # not ginkgo's 1 h
    assert cmd[4] == f"--skip={inside.DEFAULT_E2E_SKIP}" and cmd[5] == "--focus=Conformance"
    # an explicitly empty skip skips nothing (no --skip at all: ginkgo would read "" as match-everything)
    bare = inside.e2e_command(["--skip=", "--label-filter=Conformance"], "/k", "/r")
    assert not any(a.startswith("--skip") for a in bare) and "--label-filter=Conformance" in bare
    assert cmd[-4:] == ["--", "--kubeconfig=/k", "--provider=skeleton", "--report-dir=/r"]
    with pytest.raises(DindindError, match="--focus"):
        inside.e2e_command(["--focus", "(unclosed"])
    with pytest.raises(DindindError, match="--parallel"):
        inside.e2e_command(["--parallel", "0"])
    with pytest.raises(DindindError, match="unknown argument"):
        inside.e2e_command(["--kubeconfig=/etc/passwd"])


def test_unknown_inside_command_prints_usage(capsys):
    assert inside.main(["nope"]) == 2
    assert "dindind kubeconfig" in capsys.readouterr().out


# ------------------------------------------------------------------ --e2e and the pod manifest

def test_e2e_arguments(tmp_path):
    d = defaults(tmp_path)
    a = options.parse(["--e2e", "--e2e-focus=Conformance", "--e2e-skip", "Slow"], d)
    assert a.e2e and a.e2e_args() == ["--focus=Conformance", "--skip=Slow"]
    assert options.parse(["--e2e"], d).e2e_args() == []
    for argv, message in ((["--e2e-focus=x"], "go with --e2e"), (["--e2e", "--no-cluster"], "needs a cluster"),
                          (["--e2e", "--e2e-skip", "("], "--e2e-skip")):
        with pytest.raises(DindindError, match=message):
            options.parse(argv, d)


def test_the_manifest_is_a_job_that_runs_the_image_with_e2e_as_its_result():
    from dindind.cluster import manifest

    doc = yaml.safe_load(manifest.render("dindind/cluster:v1.31.2_sample", name="t14-ci", focus="Conformance"))
    assert (doc["apiVersion"], doc["kind"], doc["metadata"]["name"]) == ("batch/v1", "Job", "t14-ci")
    assert doc["spec"]["backoffLimit"] == 0
    pod = doc["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["terminationGracePeriodSeconds"] == host.STOP_TIMEOUT
    (c,) = pod["containers"]
    assert c["image"] == "dindind/cluster:v1.31.2_sample" and c["securityContext"] == {"privileged": True}
    assert c["args"] == ["--e2e", "--e2e-focus=Conformance"]
    # the arguments are the image's own: they parse with its rules
    assert options.parse(c["args"], plan.Settings(**{**options.load_defaults(
        images.cluster_defaults(config.load(None), NODE_STAMP)).__dict__})).e2e
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/var/lib/docker"]]
    assert volumes[mounts["/run"]]["emptyDir"] == {"medium": "Memory"}
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    assert doc["spec"]["template"]["metadata"]["labels"] == doc["metadata"]["labels"]


@pytest.mark.parametrize("argv, message", [
    (["Not An Image"], "invalid image reference"), (["x:1", "--name", "Bad_"], "invalid job name"),
    (["x:1", "--focus", "("], "--e2e-focus"), (["x:1", "--bogus"], "unexpected argument")])
def test_manifest_refuses_bad_input(argv, message, capsys):
    assert cli.main(["manifest", *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_privileges_are_named():
    full = "Name:\tpython3\nCapEff:\t000001ffffffffff\n"
    assert incluster.missing_privileges(full, True) == []
    # docker's default set: no CAP_SYS_ADMIN, no CAP_NET_ADMIN
    assert incluster.missing_privileges("CapEff:\t00000000a80425fb\n", False) == [
        "CAP_SYS_ADMIN", "CAP_NET_ADMIN", "a writable /sys/fs/cgroup"]


def test_the_entry_point_without_privileges_says_what_is_missing_and_exits(tmp_path, monkeypatch, capsys):
    path = tmp_path / "cluster.json"
    path.write_text(images.cluster_defaults(load_config(tmp_path), NODE_STAMP))
    monkeypatch.setattr(options, "DEFAULTS", str(path))
    monkeypatch.setattr(incluster, "missing_privileges", lambda text, writable: ["CAP_SYS_ADMIN"])
    assert incluster.main([]) == 3
    out = capsys.readouterr().out
    assert out.startswith("ERROR: this container lacks CAP_SYS_ADMIN") and out.count("\n") == 1
