"""The doit glue: what every task shares. The creators live beside it.

dindind.tasks.build, .cluster and .release hold the task creators (dodo.py
lists them): descriptions only, no I/O at load time beyond reading the
config; each creator's docstring is its help line in ``doit list``. Every
action is a module-level function of plain values (config path, project
root) wrapped by :func:`action`, so it pickles for ``doit -n`` and a
DindindError becomes one clear failure. :class:`Reporter` prints those
failures and takes the build lock.
"""

import functools
import sys
from pathlib import Path

from doit.exceptions import TaskFailed
from doit.reporter import ConsoleReporter

from dindind.base import config as config_mod
from dindind.base import layout as layout_mod
from dindind.base.errors import DindindError

def action(func):
    """Run a dindind step as a doit action: a DindindError becomes one clear failure."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            func(*args, **kwargs)
        except DindindError as exc:
            return TaskFailed(exc.render())
        return None

    return wrapper


BUILD_LOCK = {"build_lock": True}   # task ``meta``: this task writes build artifacts


def needs_build_lock(tasks, selected):
    """Whether running ``selected`` (task names) runs a task that writes build artifacts.

    Follows ``task_dep`` and ``setup`` from the selected tasks; a task says it
    writes build artifacts with ``meta=BUILD_LOCK``. Read-only tasks
    (``cluster:status``, ``release:verify`` ...) never wait behind a build.
    """
    seen, todo = set(), list(selected)
    while todo:
        name = todo.pop()
        task = tasks.get(name)
        if task is None or name in seen:
            continue
        seen.add(name)
        if (task.meta or {}).get("build_lock"):
            return True
        todo += list(task.task_dep) + list(task.setup_tasks)
    return False


def take_build_lock(root):
    """Hold the checkout's build lock for this process; then remove what interrupted runs left."""
    from dindind.base import fsutil, lock

    lay = layout_mod.Layout(Path(root))
    lock.hold(lay.lock)
    # holding the lock, anything half-written is from an interrupted run: remove it
    fsutil.remove_stale(lay.artifacts)


class Reporter(ConsoleReporter):
    """doit's console reporter, printing a DindindError as ``ERROR: ...`` with no traceback.

    It also takes the build lock (dindind.lock) before the first task runs,
    but only when the run includes a task that writes build artifacts: doit
    calls ``initialize`` with the selected tasks before it checks or runs any
    of them, so the dependency database is read under the lock.
    """

    desc = "dindind console output"

    def initialize(self, tasks, selected_tasks):
        super().initialize(tasks, selected_tasks)
        if needs_build_lock(tasks, selected_tasks):
            try:
                take_build_lock(config_mod.ROOT)
            except OSError as exc:
                sys.stderr.write(f"ERROR: cannot take the build lock: {exc}\n")
                sys.exit(2)

    def _write_failure(self, result, write_exception=True):
        exc = result["exception"]
        msg = exc.get_msg()
        if isinstance(exc, TaskFailed) and msg.startswith("ERROR:"):
            if write_exception:
                sys.stderr.write(f"{result['task'].name}: {msg.rstrip()}\n")
            return
        super()._write_failure(result, write_exception)

    def complete_run(self):
        self.failures = [r for r in self.failures
                         if not (isinstance(r["exception"], TaskFailed)
                                 and r["exception"].get_msg().startswith("ERROR:"))]
        super().complete_run()


# ------------------------------------------------------------------ actions

def load_inputs(config_path, root):
    """The validated config and the artifact layout an action works on."""
    return config_mod.load(config_path), layout_mod.Layout(Path(root))
