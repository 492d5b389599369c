"""Which doit runs take the build lock (no engine: the task graph only)."""

import importlib.util

import pytest
from doit.cmd_base import ModuleTaskLoader
from doit.loader import load_tasks
from doit.task import Task

from dindind import tasks
from dindind.config import ROOT


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
