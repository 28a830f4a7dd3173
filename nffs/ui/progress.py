"""A progress bar for long commands, drawn only when the output is a terminal.

Scripts and logs get no carriage returns or escape codes: when the stream is not a
TTY the bar stays silent (the command prints its summary as usual at the end).
"""
from __future__ import annotations

import os
import sys
import time
from typing import IO


def is_tty(stream: IO[str] | None = None) -> bool:
    stream = stream or sys.stdout
    try:
        return stream.isatty() and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False


class Progress:
    """`with Progress("warmup", total=n, unit="B") as p: p.advance(k)` — redrawn at most 10 times a second."""

    def __init__(self, label: str, total: float | None = None, unit: str = "", stream: IO[str] | None = None,
                 enabled: bool | None = None) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.stream = stream or sys.stdout
        self.enabled = is_tty(self.stream) if enabled is None else enabled
        self.done = 0.0
        self.start = time.monotonic()
        self._drawn = 0.0
        self.note = ""

    def __enter__(self) -> "Progress":
        self.draw(force=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def advance(self, n: float = 1, note: str | None = None) -> None:
        self.done += n
        if note is not None:
            self.note = note
        self.draw()

    def update(self, done: float, total: float | None = None, note: str | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        if note is not None:
            self.note = note
        self.draw()

    def _amount(self, n: float) -> str:
        if self.unit == "B":
            from .view import human_bytes

            return human_bytes(n)
        return f"{n:,.0f}{(' ' + self.unit) if self.unit else ''}"

    def line(self, width: int = 80) -> str:
        elapsed = time.monotonic() - self.start
        if self.total:
            frac = min(1.0, self.done / self.total)
            bar_w = max(10, min(30, width - 60))
            n = int(frac * bar_w)
            eta = (elapsed / frac - elapsed) if frac > 0 else 0.0
            text = (f"{self.label} [{'#' * n}{'.' * (bar_w - n)}] {100 * frac:5.1f}% "
                    f"{self._amount(self.done)}/{self._amount(self.total)} {elapsed:.0f}s"
                    + (f" eta {eta:.0f}s" if 0 < frac < 1 else ""))
        else:
            spin = "|/-\\"[int(elapsed * 4) % 4]
            amount = f" {self._amount(self.done)}" if self.done else ""
            text = f"{self.label} {spin}{amount} {elapsed:.0f}s"
        if self.note:
            text += f"  {self.note}"
        return text[: width - 1]

    def draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._drawn < 0.1:
            return
        self._drawn = now
        try:
            width = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            width = 80
        if width < 20:  # a pty without a size (script, some CI runners) reports 0
            width = 80
        self.stream.write("\r\x1b[K" + self.line(width))
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
            self.enabled = False
