"""Jinja rendering: StrictUndefined, no autoescape, values validated upstream.

A template tree mirrors the filesystem it produces: ``templates/node/files/
etc/containerd/config.toml.j2`` becomes ``etc/containerd/config.toml`` in the
rendered tree. Files without the ``.j2`` suffix are copied as they are.
Templates hold layout only; the context they get is computed in Python.
"""

import re
from pathlib import Path

import jinja2

from dindind.base import fsutil
from dindind.base.errors import DindindError

_SAFE = re.compile(r"^[^\n\r\x00]*$")


def environment(template_root):
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_root)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _check_context(ctx, where=""):
    """Refuse any string value that could break out of a line in a unit file."""
    if isinstance(ctx, str):
        if not _SAFE.match(ctx):
            raise DindindError(f"refusing to render {where or 'a value'}: it contains a newline or NUL",
                               hint="values reaching templates must be single-line")
    elif isinstance(ctx, dict):
        for k, v in ctx.items():
            _check_context(v, f"{where}.{k}" if where else str(k))
    elif isinstance(ctx, (list, tuple)):
        for i, v in enumerate(ctx):
            _check_context(v, f"{where}[{i}]")


def render_string(template_root, name, context):
    _check_context(context)
    try:
        return environment(template_root).get_template(name).render(**context)
    except jinja2.TemplateError as exc:
        raise DindindError(f"cannot render template {name}: {exc}",
                           hint=f"check {Path(template_root) / name}") from None


def template_files(template_dir):
    """Every file of a template tree, sorted (for file_dep): partials included."""
    return sorted(p for p in Path(template_dir).rglob("*") if p.is_file())


def _partial(rel):
    """A path under a folder or name starting with ``_`` is a partial: included, never rendered alone."""
    return any(part.startswith("_") for part in Path(rel).parts)


def _rendered(template_dir):
    return [p for p in template_files(template_dir) if not _partial(p.relative_to(template_dir))]


def output_name(rel):
    rel = str(rel)
    return rel[:-3] if rel.endswith(".j2") else rel


def outputs(template_dir, out_dir):
    """The files render_tree writes, sorted (for targets)."""
    template_dir = Path(template_dir)
    return [Path(out_dir) / output_name(p.relative_to(template_dir)) for p in _rendered(template_dir)]


def render_tree(template_dir, context, out_dir):
    """Render every template of ``template_dir`` into ``out_dir``.

    Only files whose content changed are rewritten, so a no-op render keeps
    mtimes still. Files in ``out_dir`` that no template produces are removed.
    Executable bits are carried over from the template.
    """
    template_dir = Path(template_dir)
    out_dir = Path(out_dir)
    _check_context(context)
    env = environment(template_dir)
    wanted = set()
    for src in _rendered(template_dir):
        rel = src.relative_to(template_dir)
        dst = out_dir / output_name(rel)
        wanted.add(dst)
        if src.suffix == ".j2":
            try:
                data = env.get_template(rel.as_posix()).render(**context).encode()
            except jinja2.TemplateError as exc:
                raise DindindError(f"cannot render template {src}: {exc}") from None
        else:
            data = src.read_bytes()
        mode = 0o755 if src.stat().st_mode & 0o111 else 0o644
        fsutil.write_if_changed(dst, data, mode)
    if out_dir.exists():
        for p in sorted(out_dir.rglob("*"), reverse=True):
            if p.is_file() and p not in wanted:
                p.unlink()
            elif p.is_dir() and not any(p.iterdir()):
                p.rmdir()
    return sorted(wanted)
