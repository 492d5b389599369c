"""Debian control fields, read in one place.

:func:`read` asks ``dpkg-deb --field`` for fields of a .deb (the CNI
plugins' cache check and version in build/cni.py, the file names of a
release's debs in release/manifest.py); :func:`paragraphs` parses
control-format text (dpkg's status file, for a release's package list in
release/export.py). Control files are written in one place too: the
templates/debs/<package>/DEBIAN/control.j2 that build/debs.py renders.
"""

from dindind.base import proc
from dindind.base.errors import CommandError, InputError


def paragraphs(text):
    """The paragraphs of control-format ``text`` as [{field: value}]; continuation lines join with newlines."""
    out = []
    for para in text.split("\n\n"):
        fields, last = {}, None
        for line in para.splitlines():
            if line[:1] in (" ", "\t") and last is not None:
                fields[last] += "\n" + line.strip()
            elif ":" in line and line[:1] not in (" ", "\t", "#"):
                key, _, value = line.partition(":")
                last = key.strip()
                fields[last] = value.strip()
        if fields:
            out.append(fields)
    return out


def read(deb, *names, hint=None):
    """{name: value} of the control fields ``names`` of the .deb at ``deb``.

    Raises InputError naming ``deb`` (with ``hint``) when it is not a
    readable .deb or lacks one of the fields; CommandError when dpkg-deb is
    not installed. Runs ``dpkg-deb --field``; no other side effects.
    """
    hint = hint or f"delete {deb} and run again"
    try:
        out = proc.run(["dpkg-deb", "--field", str(deb), *names], hint="install dpkg (dpkg-deb)")
    except CommandError as exc:
        if exc.returncode == 127:
            raise
        raise InputError(f"cannot read {deb}: it is not a valid .deb", detail=exc.output.strip() or None,
                         hint=hint) from None
    # one field: dpkg-deb prints its value alone; several: "Name: value" lines
    fields = {names[0]: out.strip()} if len(names) == 1 else (paragraphs(out) or [{}])[0]
    missing = [n for n in names if not fields.get(n)]
    if missing:
        raise InputError(f"{deb} is not a valid .deb (no {'/'.join(missing)})", hint=hint)
    return {n: fields[n] for n in names}
