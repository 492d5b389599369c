"""The cluster image carries the in-cluster code only: base, docker and the cluster core (no engine)."""

import ast
from pathlib import Path

import pytest
from conftest import copy_project

from dindind.base.config import ROOT
from dindind.build import images
from dindind.tasks import build as build_tasks

ENTRY = "dindind/cluster/incluster.py"
INSIDE = "dindind/cluster/inside.py"      # `dindind COMMAND` (docker exec) and the HEALTHCHECK


def _module_file(root, module):
    base = Path(root, *module.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def import_closure(root, entry=ENTRY):
    """Every file of the tree the entry point imports, at any depth (function-level imports too);
    and every top-level module name imported from outside dindind."""
    root = Path(root)
    todo, seen, outside = [root / entry], set(), set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                if not name.startswith("dindind"):
                    outside.add(name.split(".")[0])
                    continue
                parts = name.split(".")
                for i in range(1, len(parts) + 1):       # dindind, dindind.docker, dindind.docker.images
                    f = _module_file(root, ".".join(parts[:i]))
                    if f is not None:
                        todo.append(f)
    return {p.relative_to(root).as_posix() for p in seen}, outside


@pytest.mark.parametrize("entry", [ENTRY, INSIDE])
def test_the_cluster_image_carries_everything_the_entry_point_imports_and_nothing_of_build_or_release(entry):
    closure, outside = import_closure(ROOT, entry)
    shipped = {p.relative_to(ROOT).as_posix() for p in images.package_files(ROOT)}
    assert closure <= shipped, closure - shipped
    assert not [f for f in shipped if f.startswith(("dindind/build/", "dindind/release/", "dindind/tasks/"))]
    assert "dindind/cluster/host.py" not in shipped and "dindind/cluster/load.py" not in shipped
    # the image's Python is Debian's python3 with python3-docker, -yaml and -jinja2: no doit there
    assert "doit" not in outside, outside
    assert outside <= {"docker", "yaml", "jinja2", "requests"} | set(__import__("sys").stdlib_module_names), outside


def _inputs(proj):
    files = [p for p in build_tasks.cluster_image_files(proj)]
    return files, images.package_digest(proj)


def test_editing_build_release_or_the_glue_leaves_the_cluster_image_inputs_unchanged(tmp_path):
    proj = copy_project(tmp_path / "p")
    before = _inputs(proj)
    for rel in ("dindind/build/debs.py", "dindind/build/sources/sample.py", "dindind/release/verify.py",
                "dindind/tasks/__init__.py", "dindind/cluster/host.py", "dindind/cluster/load.py"):
        with open(proj / rel, "a") as f:
            f.write("# an edit that is no concern of the cluster image\n")
    assert _inputs(proj) == before


def test_editing_the_cluster_core_changes_the_cluster_image_inputs(tmp_path):
    proj = copy_project(tmp_path / "p")
    files, digest = _inputs(proj)
    assert proj / "dindind" / "cluster" / "plan.py" in files
    with open(proj / "dindind/cluster/plan.py", "a") as f:
        f.write("# an edit the cluster image carries\n")
    assert _inputs(proj) == (files, _inputs(proj)[1]) and _inputs(proj)[1] != digest
