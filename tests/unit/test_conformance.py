"""cluster:e2e --conformance: the generated skip list, the JUnit summary, the run's wiring (no engine)."""

import json
import re
from pathlib import Path

import pytest

from dindind.base import config
from dindind.base.errors import DindindError, InputError
from dindind.base.layout import Layout
from dindind.cluster import conformance, host

NEEDS_APISERVER = ("[sig-api-machinery] Aggregator Should be able to support the 1.17 Sample API Server using the "
                   "current Aggregator [LinuxOnly] [Conformance]")
JUNIT = f"""<?xml version="1.0" encoding="UTF-8"?>
<testsuites><testsuite name="Kubernetes e2e suite" tests="6">
  <testcase name="[SynchronizedBeforeSuite]" status="passed"></testcase>
  <testcase name="[It] [sig-node] Pods should be submitted and removed [NodeConformance] [Conformance] [sig-node, NodeConformance, Conformance]" status="passed"></testcase>
  <testcase name="[It] [sig-network] DNS should provide DNS for services  [Conformance] [sig-network, Conformance]" status="failed"><failure message="boom">x</failure></testcase>
  <testcase name="[It] {NEEDS_APISERVER} [sig-api-machinery, LinuxOnly, Conformance]" status="skipped"><skipped message="skipped"/></testcase>
  <testcase name="[It] [sig-node] Something else [Conformance] [sig-node, Conformance]" status="skipped"><skipped message="skipped"/></testcase>
  <testcase name="[It] [sig-storage] not a conformance test [Slow] [sig-storage, Slow]" status="skipped"><skipped message="skipped"/></testcase>
</testsuite></testsuites>
"""


def test_the_skip_regex_matches_exactly_the_named_tests():
    regex = conformance.skip_regex([NEEDS_APISERVER], extra=r"Flaky\d")
    assert re.search(regex, f"[It] {NEEDS_APISERVER} [sig-api-machinery]")
    assert re.search(regex, "some Flaky1 test")
    assert not re.search(regex, "[sig-api-machinery] Aggregator Should be able to support the 1.17 Sample API")
    assert conformance.skip_regex([]) is None
    assert conformance.re2_escape("a [b] (c) d.e") == r"a \[b\] \(c\) d\.e"


def test_the_summary_counts_conformance_tests_by_outcome(tmp_path):
    (tmp_path / "junit_01.xml").write_text(JUNIT)
    cases = conformance.read_junit([tmp_path / "junit_01.xml"])
    s = conformance.summarize(cases, {NEEDS_APISERVER: ["registry.k8s.io/e2e-test-images/sample-apiserver:1.29.2"]})
    assert (s["passed"], s["failed"], s["skipped_for_image"], s["skipped_other"], s["total"], s["ran"]) == \
        (1, 1, 1, 1, 4, 2)
    assert s["failed_tests"][0].startswith("[sig-network] DNS should provide DNS for services")
    assert "1 failed" in conformance.summary_text(s, 90)


def test_a_broken_junit_file_is_one_clear_error(tmp_path):
    (tmp_path / "junit_01.xml").write_text("<testsuites><testcase")
    with pytest.raises(InputError, match="not valid JUnit XML"):
        conformance.read_junit([tmp_path / "junit_01.xml"])


class FakeShell:
    def __init__(self, name):
        self.name, self.top, self.nodes, self.ran = name, "dindind-" + name, ["t10-a-control-plane", "t10-a-worker"], []

    def run(self, node, cmd, check=True):
        self.ran.append((node, cmd[-1]))
        return 0, ""


@pytest.fixture
def fake_run(tmp_path, monkeypatch):
    """host.e2e with the node shell and ginkgo faked: the reports ginkgo would write, the args it got."""
    lay = Layout(Path(tmp_path))
    lay.e2e_images.mkdir(parents=True)
    lay.e2e_images_json().write_text(json.dumps({
        "images": [{"ref": "registry.k8s.io/e2e-test-images/sample-apiserver:1.29.2", "status": "missing",
                    "reason": "not built"}],
        "conformance": {"total": 3, "skip_for_image": [
            {"codename": NEEDS_APISERVER, "images": ["registry.k8s.io/e2e-test-images/sample-apiserver:1.29.2"]}]}}))
    state = {"shells": [], "code": 0, "logs": 0}

    def shell(name):
        sh = FakeShell(name)
        state["shells"].append(sh)
        return sh

    def run_e2e(cfg, layout, name, sh, args, dest):
        state["args"] = args
        state["pull_config_during_run"] = list(sh.ran)
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "junit_01.xml").write_text(JUNIT)
        return state["code"], "ginkgo output"

    def logs(cfg, layout, name=None, out=print):
        state["logs"] += 1
        return layout.cluster(name) / "logs"

    monkeypatch.setattr(host, "Shell", shell)
    monkeypatch.setattr(host, "_run_e2e", run_e2e)
    monkeypatch.setattr(host, "logs", logs)
    cfg = config.parse("kubernetes: {source: module, version: v1.37.2}\ncluster: {e2e_parallel: 3, "
                       "e2e_flake_attempts: 2}\n", "x.yaml")
    return cfg, lay, state


def test_conformance_runs_the_label_skips_the_generated_list_and_writes_a_summary(fake_run):
    cfg, lay, state = fake_run
    lines = []
    dest = host.e2e(cfg, lay, "t10-a", conformance=True, out=lines.append)
    args = state["args"]
    assert "--label-filter=Conformance" in args and "--nodes=3" in args and "--flake-attempts=2" in args
    skip = next(a for a in args if a.startswith("--skip="))[len("--skip="):]
    assert re.search(skip, NEEDS_APISERVER) and not re.search(skip, "[sig-node] Pods should be submitted")
    summary = json.loads((dest / "summary.json").read_text())
    assert (summary["passed"], summary["failed"], summary["skipped_for_image"]) == (1, 1, 1)
    assert summary["missing_images"][0]["reason"] == "not built"
    assert any(line.startswith("conformance: 4 tests, 2 ran") for line in lines)
    # pulls refused on every node during the run, and the nodes given back their registries after it
    sh = state["shells"][0]
    assert [n for n, _ in state["pull_config_during_run"]] == sh.nodes
    assert all("127.0.0.1:9" in cmd for _, cmd in state["pull_config_during_run"])
    assert [cmd for _, cmd in sh.ran[len(sh.nodes):]] == [f"rm -rf {host.NO_PULLS_DIR}"] * len(sh.nodes)
    assert state["logs"] == 0


def test_a_failed_run_exports_the_cluster_logs_and_points_at_them(fake_run):
    cfg, lay, state = fake_run
    state["code"] = 1
    with pytest.raises(DindindError) as err:
        host.e2e(cfg, lay, "t10-a", conformance=True, out=lambda line: None)
    assert state["logs"] == 1
    assert str(lay.cluster("t10-a") / "logs") in err.value.hint
    assert (lay.cluster("t10-a") / "e2e" / "summary.json").is_file()


def test_nested_e2e_runs_the_images_own_command_with_the_conformance_label(tmp_path, monkeypatch):
    # the same `dindind e2e` a user runs with docker exec; its kubeconfig names the control plane by address
    ran = []

    def exec_in(container, cmd, check=True):
        ran.append((container, cmd))
        return 0, "ok"

    monkeypatch.setattr(host.containers, "exec_in", exec_in)
    monkeypatch.setattr(host.containers, "get_dir", lambda container, src, dest: None)
    sh = FakeShell("t10-a")
    cfg = config.parse("", "x.yaml")
    code, _ = host._run_e2e(cfg, Layout(Path(tmp_path)), "t10-a", sh,
                            ["--nodes=2", "--flake-attempts=1", "--label-filter=Conformance", "--focus=Pods"],
                            tmp_path / "e2e")
    assert code == 0
    (container, cmd), = ran
    assert container == "dindind-t10-a"
    assert cmd == ["dindind", "e2e", "--parallel=2", "--flake-attempts=1", "--label-filter=Conformance",
                   "--focus=Pods"]
    from dindind.cluster import inside

    ginkgo = inside.e2e_command(cmd[2:])
    assert "--label-filter=Conformance" in ginkgo and "--nodes=2" in ginkgo and "--focus=Pods" in ginkgo


def test_a_conformance_run_with_nothing_to_skip_does_not_get_the_default_skip_list(fake_run, monkeypatch):
    # every needed image built: the generated skip is empty, and nested `dindind e2e` must not then fall
    # back to its default list ([Serial], [NodeConformance], restart, ... are conformance tests too)
    cfg, lay, state = fake_run
    monkeypatch.setattr(host.conformance_mod, "image_skips", lambda doc: {})
    host.e2e(cfg, lay, "t10-a", conformance=True, out=lambda line: None)
    args = state["args"]
    assert "--skip=" in args
    from dindind.cluster import inside

    ginkgo = inside.e2e_command([host._inside_e2e_arg(a) for a in args])
    assert not any(a.startswith("--skip") for a in ginkgo)
