"""The one place dindind runs subprocesses.

Every call logs nothing by itself, raises :class:`CommandError` (with the
command line and the tail of its output) on a non-zero exit, and never goes
through a shell.
"""

import os
import subprocess

from dindind.base.errors import CommandError


def run(argv, *, cwd=None, env=None, input=None, check=True, hint=None):
    """Run ``argv`` and return its combined stdout+stderr as text."""
    full_env = None
    if env:
        full_env = dict(os.environ)
        full_env.update(env)
    try:
        proc = subprocess.run(
            [str(a) for a in argv],
            cwd=cwd,
            env=full_env,
            input=input,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    except FileNotFoundError as exc:
        raise CommandError(argv, 127, str(exc), hint=hint or f"install {argv[0]}") from None
    if check and proc.returncode != 0:
        raise CommandError(argv, proc.returncode, proc.stdout, hint=hint)
    return proc.stdout


def pipe(producer_argv, consumer_argv, *, stdout_path=None):
    """Run ``producer | consumer`` streaming; write consumer output to a path."""
    out = open(stdout_path, "wb") if stdout_path else subprocess.DEVNULL
    try:
        p1 = subprocess.Popen([str(a) for a in producer_argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        p2 = subprocess.Popen([str(a) for a in consumer_argv], stdin=p1.stdout, stdout=out, stderr=subprocess.PIPE)
        p1.stdout.close()
        err2 = p2.communicate()[1]
        err1 = p1.communicate()[1]
    finally:
        if stdout_path:
            out.close()
    if p1.returncode:
        raise CommandError(producer_argv, p1.returncode, err1.decode(errors="replace"))
    if p2.returncode:
        raise CommandError(consumer_argv, p2.returncode, err2.decode(errors="replace"))
