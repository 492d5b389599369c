"""The one place dindind runs subprocesses.

Every call logs nothing by itself, never goes through a shell, and raises
:class:`CommandError` (with the pasteable command line and the tail of its
output) on a non-zero exit. :func:`run` waits for a command; :func:`pipe`
runs ``producer | consumer``; :func:`feed` streams bytes through a filter
into a file; :func:`spawn` starts a daemon in the background.
"""

import os
import subprocess

from dindind.base.errors import CommandError


def _env(env):
    if not env:
        return None
    full = dict(os.environ)
    full.update(env)
    return full


def status(argv, *, cwd=None, env=None, input=None, hint=None):
    """Run ``argv``; return (exit code, combined stdout+stderr as text). Raises only when it cannot start."""
    try:
        proc = subprocess.run([str(a) for a in argv], cwd=cwd, env=_env(env), input=input,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except FileNotFoundError as exc:
        raise CommandError(argv, 127, str(exc), hint=hint or f"install {argv[0]}") from None
    return proc.returncode, proc.stdout


def run(argv, *, cwd=None, env=None, input=None, check=True, hint=None):
    """Run ``argv`` and return its combined stdout+stderr as text."""
    code, out = status(argv, cwd=cwd, env=env, input=input, hint=hint)
    if check and code != 0:
        raise CommandError(argv, code, out, hint=hint)
    return out


def pipe(producer_argv, consumer_argv, *, hint=None):
    """Run ``producer | consumer``, streamed (no shell); return the consumer's output as text."""
    try:
        p1 = subprocess.Popen([str(a) for a in producer_argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError as exc:
        raise CommandError(producer_argv, 127, str(exc), hint=hint or f"install {producer_argv[0]}") from None
    try:
        p2 = subprocess.Popen([str(a) for a in consumer_argv], stdin=p1.stdout, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    except FileNotFoundError as exc:
        p1.kill()
        p1.wait()
        raise CommandError(consumer_argv, 127, str(exc), hint=hint or f"install {consumer_argv[0]}") from None
    finally:
        p1.stdout.close()
    out2 = p2.communicate()[0]
    err1 = p1.communicate()[1]
    if p1.returncode:
        raise CommandError(producer_argv, p1.returncode, err1.decode(errors="replace"), hint=hint)
    if p2.returncode:
        raise CommandError(consumer_argv, p2.returncode, out2.decode(errors="replace"), hint=hint)
    return out2.decode(errors="replace")


def feed(argv, chunks, out):
    """Stream ``chunks`` (bytes) into ``argv``'s stdin, its stdout into the open file ``out``."""
    p = subprocess.Popen([str(a) for a in argv], stdin=subprocess.PIPE, stdout=out, stderr=subprocess.PIPE)
    try:
        for chunk in chunks:
            p.stdin.write(chunk)
    finally:
        p.stdin.close()
        err = p.stderr.read()
        p.stderr.close()
        code = p.wait()
    if code != 0:
        raise CommandError(argv, code, err.decode(errors="replace"))


def spawn(argv, log_path, *, detach=False):
    """Start ``argv`` in the background, its output appended to ``log_path``; return the Popen.

    ``detach``: in a session of its own, so it outlives this process.
    """
    with open(log_path, "ab") as log:
        return subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=detach)


def stop(p, timeout=30):
    """Terminate a process from :func:`spawn`; kill it if it has not exited after ``timeout`` seconds."""
    p.terminate()
    try:
        return p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        return p.wait()
