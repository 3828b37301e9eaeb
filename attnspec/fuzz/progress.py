"""A one-line progress bar on stderr while a fuzz run works (only on a terminal)."""

from __future__ import annotations

import sys
import time

WIDTH = 24


class Progress:
    def __init__(self, label: str, total: int, stream=None, enabled: bool | None = None):
        self.label, self.total = label, total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.trials = self.discarded = self.failures = 0
        self._drawn_at = 0.0

    def count(self, status: str) -> None:
        self.trials += 1
        self.discarded += status == "discard"
        self._draw()

    def failed(self) -> None:
        self.failures += 1

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()

    def line(self) -> str:
        done = min(self.trials - self.discarded, self.total)
        filled = WIDTH * done // max(self.total, 1)
        bar = "#" * filled + "-" * (WIDTH - filled)
        state = " shrinking" if self.failures else ""
        return f"{self.label} [{bar}] {done}/{self.total}, {self.discarded} discarded{state}"

    def _draw(self) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._drawn_at < 0.1:
            return
        self._drawn_at = now
        self.stream.write("\r\033[K" + self.line())
        self.stream.flush()
