"""A one-line progress bar on stderr for long simulations.

Drawn only when the stream is a terminal: in a pipe or a log file the
carriage returns would be noise, and ``--json`` output must stay clean.
"""

from __future__ import annotations

from typing import TextIO

_WIDTH = 30


class ProgressBar:
    """Redraws ``[#####.....]  42%`` in place, only when the percentage changes.

    Redrawing on every callback would cost more terminal writes than the
    simulation does work; whole percents keep it to a hundred writes a run.
    """

    def __init__(self, stream: TextIO, label: str = "simulating") -> None:
        self._stream = stream
        self._label = label
        self._shown = -1

    def __call__(self, fraction: float) -> None:
        percent = max(0, min(100, int(fraction * 100)))
        if percent == self._shown:
            return
        self._shown = percent
        filled = percent * _WIDTH // 100
        bar = "#" * filled + "." * (_WIDTH - filled)
        self._stream.write(f"\r{self._label} [{bar}] {percent:3d}%")
        self._stream.flush()

    def close(self) -> None:
        """Erase the bar so whatever is printed next starts on a clean line."""
        if self._shown >= 0:
            self._stream.write("\r" + " " * (len(self._label) + _WIDTH + 8) + "\r")
            self._stream.flush()


def progress_bar(stream: TextIO, label: str = "simulating") -> ProgressBar | None:
    """A bar on ``stream`` if it is a terminal, else None (no progress shown)."""
    isatty = getattr(stream, "isatty", None)
    if isatty is None or not isatty():
        return None
    return ProgressBar(stream, label)
