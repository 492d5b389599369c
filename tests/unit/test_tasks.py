"""Which doit runs take the build lock (no engine: the task graph only)."""

import importlib.util

import pytest
from doit.cmd_base import ModuleTaskLoader
from doit.loader import load_tasks
from doit.task import Task

from dindind import tasks
from dindind.base.config import ROOT


@pytest.fixture(scope="module")
def graph():
    spec = importlib.util.spec_from_file_location("dodo_under_test", ROOT / "dodo.py")
    dodo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dodo)
    loaded = load_tasks(ModuleTaskLoader(dodo).namespace, command_names=())
    return {t.name: t for t in loaded}


@pytest.mark.parametrize("selected", [["build"], ["build:node"], ["cluster:up"], ["release"],
                                      ["cluster:status", "build:cni"]])
def test_runs_that_write_build_artifacts_take_the_lock(graph, selected):
    assert tasks.needs_build_lock(graph, selected)


@pytest.mark.parametrize("selected", [["cluster:status"], ["cluster:down"], ["cluster:kubeconfig"],
                                      ["cluster:logs"], ["cluster:load"], ["cluster:e2e"], ["release:verify"],
                                      ["engine"], []])
def test_read_only_and_cluster_runs_never_wait_behind_a_build(graph, selected):
    assert not tasks.needs_build_lock(graph, selected)


def test_every_build_subtask_is_marked(graph):
    subtasks = [t for n, t in graph.items() if n.startswith("build:")]
    assert subtasks and all(t.meta == tasks.BUILD_LOCK for t in subtasks)


def test_lock_follows_task_dep_and_setup():
    y = Task("y", None, meta=tasks.BUILD_LOCK)
    assert tasks.needs_build_lock({"x": Task("x", None, task_dep=["y"]), "y": y}, ["x"])
    assert tasks.needs_build_lock({"x": Task("x", None, setup=["y"]), "y": y}, ["x"])
    assert not tasks.needs_build_lock({"x": Task("x", None, task_dep=["z"]), "z": Task("z", None)}, ["x"])


# ------------------------------------------------------------------ task parameters: one clear line, nothing created

BAD_PARAMS = [
    (["cluster:up", "--workers", "abc"], "--workers: 'abc' is not a whole number from 0 to 10"),
    (["cluster:up", "--workers", "11"], "--workers: '11' is out of range"),
    (["cluster:up", "--wait", "-5"], "--wait: '-5' is out of range"),
    (["cluster:down", "--name", "../.."], "invalid --name '../..'"),
    (["cluster:down", "--name", "/etc"], "invalid --name '/etc'"),
    (["cluster:kubeconfig", "--name", "a/../../b"], "invalid --name"),
    (["cluster:logs", "--name", "Upper"], "invalid --name 'Upper'"),
    (["cluster:e2e", "--focus", "("], "--focus '(' is not a valid regular expression"),
    (["cluster:e2e", "--parallel", "0"], "--parallel: '0' is out of range"),
    (["cluster:e2e", "--flake-attempts", "1e3"], "--flake-attempts: '1e3' is not a whole number"),
]


@pytest.mark.parametrize("args,message", BAD_PARAMS, ids=[" ".join(a) for a, _ in BAD_PARAMS])
def test_bad_task_parameters_are_one_line_before_anything_runs(tmp_path, args, message):
    from conftest import copy_project, doit

    proj = copy_project(tmp_path / "p")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    r = doit(proj, *args, check=False)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr + r.stdout
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ERROR: ") and message in lines[0], r.stderr
    assert r.stdout.strip() == ""                        # no task ran
    # nothing created but doit's own dependency database (opened before options are parsed); not even the lock
    assert [p.name for p in (proj / "artifacts").iterdir()] in ([], [".doit.db"])
    assert (outside / "keep").read_text() == "x"


# cluster:load's --image and --archive repeat (doit list options, which take no converter): checked by the
# task before anything else, still one error, nothing created
BAD_LOAD = [
    (["--image", "busybox", "--image", "Bad:IMG"], "--image 'Bad:IMG' is not an image reference"),
    (["--archive", "no-such.tar"], "--archive no-such.tar: no such file"),
    (["--archive", "artifacts"], "--archive artifacts: not a regular file"),
    ([], "nothing to load: give --image or --archive"),
]


@pytest.mark.parametrize("args,message", BAD_LOAD, ids=[" ".join(a) or "none" for a, _ in BAD_LOAD])
def test_bad_load_arguments_are_one_error_and_create_nothing(tmp_path, args, message):
    from conftest import copy_project, doit

    proj = copy_project(tmp_path / "p")
    r = doit(proj, "cluster:load", "--name", "t-none", *args, check=False)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr + r.stdout
    errors = [line for line in r.stderr.splitlines() if "ERROR: " in line]
    assert len(errors) == 1 and message in errors[0], r.stderr
    assert [p.name for p in (proj / "artifacts").iterdir()] in ([], [".doit.db"])


def test_cluster_paths_stay_inside_artifacts_clusters(tmp_path):
    from dindind.base.errors import DindindError
    from dindind.base.layout import Layout, inside

    lay = Layout(tmp_path)
    assert lay.cluster("demo") == tmp_path / "artifacts" / "clusters" / "demo"
    for bad in ("../..", "/etc", "..", "", "a/b", "x" * 40):
        with pytest.raises(DindindError):
            lay.cluster(bad)
    # a name that passes the rule but whose folder is a link out is refused as well
    (tmp_path / "artifacts" / "clusters").mkdir(parents=True)
    (tmp_path / "artifacts" / "clusters" / "evil").symlink_to(tmp_path)
    with pytest.raises(DindindError, match="not inside"):
        lay.cluster("evil")
    with pytest.raises(DindindError, match="not inside"):
        inside(tmp_path / "artifacts", tmp_path / "artifacts")
