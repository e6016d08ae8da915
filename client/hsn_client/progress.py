"""A one-line progress display on stderr, rewritten in place (no dependency for a bar)."""

from __future__ import annotations

import sys
from typing import TextIO


class ProgressLine:
    """``label: done/total what`` on one line of ``stream``; ``shown`` False makes it silent."""

    def __init__(
        self, label: str, total: int, what: str, shown: bool, stream: TextIO | None = None
    ) -> None:
        self.label, self.total, self.what, self.shown = label, total, what, shown
        self.stream = stream or sys.stderr

    def update(self, done: int) -> None:
        if self.shown:
            self.stream.write(f"\r{self.label}: {done}/{self.total} {self.what}")
            self.stream.flush()

    def __enter__(self) -> ProgressLine:
        self.update(0)
        return self

    def __exit__(self, *_: object) -> None:
        if self.shown:  # end the line, also after an error, so what follows starts clean
            self.stream.write("\n")
            self.stream.flush()
