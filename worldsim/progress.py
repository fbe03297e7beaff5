"""Progress of a long command: a tqdm bar on a terminal, plain lines in a log.

tqdm redraws its bar with carriage returns, a few times a second. Where stderr is a file or
a pipe (``nohup worldsim train ... > log 2>&1``, a CI job), every redraw stayed in the log, so
a run of hours wrote tens of thousands of bar fragments onto one line. There a
:class:`LineProgress` writes a whole line instead at every tenth of the run, and between
those at most one every :data:`LINE_SECONDS`, then one at the end.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any, Protocol

LINE_SECONDS = 60.0
"""The longest a log goes without a progress line while a tenth of the run takes longer."""
LINE_TENTHS = 10
"""A log line each time this share of the run (1/10) is done."""


class Progress(Protocol):
    """What the commands use of a bar: tqdm has it, and so has :class:`LineProgress`."""

    def update(self, n: int = 1) -> Any: ...

    def set_postfix(self, **kwargs: Any) -> Any: ...

    def close(self) -> Any: ...


def progress(total: int, desc: str, *, unit: str = "it", initial: int = 0, disable: bool = False, leave: bool = True,
             **tqdm_kwargs: Any) -> Progress:  # fmt: skip
    """A tqdm bar when stderr is a terminal, else a :class:`LineProgress` (both say nothing with ``disable``).

    Args:
        total: units of the whole run.
        desc: what runs, at the start of the bar or line ("train tokenizer").
        unit: what is counted ("step", "frame").
        initial: units done before this process started (a resumed run).
        disable: show nothing (a DDP rank other than the first, ``--quiet``).
        leave: keep the bar on the terminal when it closes (a log keeps its lines anyway).
        **tqdm_kwargs: passed on to tqdm, such as ``dynamic_ncols``.
    """
    stream = sys.stderr
    if stream is not None and stream.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=disable, leave=leave, **tqdm_kwargs)
    return LineProgress(total, desc, unit=unit, initial=initial, disable=disable, stream=stream)


def _clock(seconds: float) -> str:
    """``seconds`` as ``M:SS`` or ``H:MM:SS``, as tqdm shows times."""
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class LineProgress:
    """Progress as whole lines on ``stream``: ``train tokenizer: 300/1000 steps (30%), 1:02 so far,
    4.84 steps/s, about 2:24 left; loss=0.0412, fps=154.9``, and at close one that ends ``in 3:27``.

    A line comes each time another tenth of ``total`` is done, and between those when
    :data:`LINE_SECONDS` have passed since the last one; the rate counts only this process's
    units, not ``initial``.
    """

    def __init__(self, total: int, desc: str, *, unit: str = "it", initial: int = 0, disable: bool = False,
                 stream: IO[str] | None = None, seconds: float = LINE_SECONDS) -> None:  # fmt: skip
        self.total, self.desc, self.unit, self.disable = total, desc, unit, disable or stream is None
        self.n = self._start = initial
        self._stream, self._seconds = stream, seconds
        self._t0 = self._last_t = time.monotonic()
        self._tenth = initial * LINE_TENTHS // max(total, 1)  # the tenths done when the last line was written
        self._postfix = ""
        self._closed = False

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units; write a line if one is due."""
        self.n += n
        if self.disable or self.n >= self.total:  # the last line comes at close, with the total time
            return
        now = time.monotonic()
        tenth = self.n * LINE_TENTHS // max(self.total, 1)
        if tenth > self._tenth or now - self._last_t >= self._seconds:
            self._tenth, self._last_t = tenth, now
            self._write(now, final=False)

    def set_postfix(self, **kwargs: Any) -> None:
        """Figures to end each line with (the latest loss, say)."""
        self._postfix = ", ".join(f"{k}={v}" for k, v in kwargs.items())

    def close(self) -> None:
        """Write the last line: where the run got to and in how long."""
        if self._closed:
            return
        self._closed = True
        if not self.disable:
            self._write(time.monotonic(), final=True)

    def _write(self, now: float, final: bool) -> None:
        units = self.unit if self.unit == "it" else f"{self.unit}s"
        elapsed = now - self._t0
        rate = (self.n - self._start) / elapsed if elapsed > 0 else 0.0
        per_s = f"{rate:.0f}" if rate >= 100 else f"{rate:.2f}"
        line = f"{self.desc}: {self.n}/{self.total} {units} ({100 * self.n / max(self.total, 1):.0f}%)"
        if final:
            line += f" in {_clock(elapsed)}, {per_s} {units}/s"
        else:
            left = f", about {_clock((self.total - self.n) / rate)} left" if rate > 0 else ""
            line += f", {_clock(elapsed)} so far, {per_s} {units}/s{left}"
        if self._postfix:
            line += f"; {self._postfix}"
        print(line, file=self._stream, flush=True)
