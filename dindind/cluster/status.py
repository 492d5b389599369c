"""One status line per action: start, then ✓ or ✗ (kind's cli/status.go)."""

import contextlib
import sys
import time


class Status:
    def __init__(self, out=None):
        self.out = out or sys.stdout

    @contextlib.contextmanager
    def step(self, title):
        start = time.monotonic()
        self.out.write(f" • {title} ...\n")
        self.out.flush()
        try:
            yield
        except BaseException:
            self.out.write(f" ✗ {title}\n")
            self.out.flush()
            raise
        self.out.write(f" ✓ {title} ({time.monotonic() - start:.1f}s)\n")
        self.out.flush()

    def info(self, text):
        self.out.write(f"   {text}\n")
        self.out.flush()
