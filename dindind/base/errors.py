"""The one exception family of dindind.

Every expected failure is a :class:`DindindError`. Its message says what is
wrong; its ``hint`` says what to do next. The doit front end and the command
line print it as ``ERROR: ...`` without a traceback (dindind.tasks.Reporter,
dindind.__main__).
"""


class DindindError(Exception):
    """An expected failure with a message a user can act on."""

    def __init__(self, message, hint=None, detail=None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.detail = detail

    def render(self):
        lines = [f"ERROR: {self.message}"]
        if self.detail:
            lines.append(self.detail.rstrip())
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)

    def __str__(self):
        return self.render()


class ConfigError(DindindError):
    """The configuration file is invalid; ``problems`` lists every problem."""

    def __init__(self, path, problems):
        self.path = path
        self.problems = list(problems)
        body = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"invalid config {path}: {len(self.problems)} problem(s)",
            hint="fix the keys above; config/config.schema.json describes every key",
            detail=body,
        )


class InputError(DindindError):
    """A build input (Kubernetes tree, tarball, download) is missing or malformed."""


class CommandError(DindindError):
    """A subprocess failed; carries the pasteable command line and its output."""

    def __init__(self, argv, returncode, output, hint=None):
        import shlex

        self.argv = [str(a) for a in argv]   # Paths too: shlex.join needs str
        self.returncode = returncode
        self.output = output or ""
        tail = "\n".join(self.output.rstrip().splitlines()[-25:])
        super().__init__(
            f"command failed with exit code {returncode}: {shlex.join(self.argv)}",
            hint=hint,
            detail=tail or None,
        )


class EngineError(DindindError):
    """The Docker engine is unreachable or an engine operation failed."""
