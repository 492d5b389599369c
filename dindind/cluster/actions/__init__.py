"""The create actions, one module each, run in order by dindind.cluster.create.

Each module has ``TITLE`` (its status line) and ``execute(ctx)``.
"""
