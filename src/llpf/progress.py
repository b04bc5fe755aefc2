"""Progress of long work: a redrawn bar on a terminal, a few plain lines anywhere else.

Every long loop in llpf (endpoint training, the driver's iterations, the
baselines' steps, the analyses' passes) reports through :func:`progress_bar`. On a
terminal that is tqdm's bar. Off a terminal (``llpf demo > log 2>&1``, a
SLURM job's output file) tqdm's carriage-return redraws would pile up into one
long line, so a :class:`PlainProgress` writes whole lines instead: one at
each quarter of the work and at the end, and one at least every
``PLAIN_EVERY_S`` seconds in between, so a long job still shows it is alive.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Iterable, TextIO

PLAIN_EVERY_S = 300.0  # off a terminal: the longest silence between two lines
QUARTERS = 4  # off a terminal: a line at each 1/QUARTERS of the work


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", initial: int = 0,
                 enabled: bool = True, stream: TextIO | None = None):
    """Progress over ``total`` steps (or over ``iterable``): ``update(n)``, ``set_postfix(**kw)``, ``close()``.

    Also a context manager, and iterable when given ``iterable``. Disabled, it
    reports nothing; on a terminal (``stream``, default stderr, is a tty) or in
    a notebook it is tqdm's bar; elsewhere a :class:`PlainProgress`.
    """
    stream = sys.stderr if stream is None else stream
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if enabled and not _is_terminal(stream) and not _in_notebook():
        return PlainProgress(iterable, total=total, desc=desc, initial=initial, stream=stream)
    from tqdm.auto import tqdm  # in a notebook, its widget

    return tqdm(iterable, total=total, desc=desc, initial=initial, disable=not enabled, file=stream,
                dynamic_ncols=True, leave=False)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _in_notebook() -> bool:
    """A Jupyter kernel: its stderr is no terminal, yet it shows tqdm's widget."""
    return "ipykernel" in sys.modules


class PlainProgress:
    """Whole lines of progress, ``desc: n/total (p%), elapsed, ~left, postfix``: at each quarter, at the end,
    and at least every ``PLAIN_EVERY_S`` seconds; never a carriage return."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 initial: int = 0, stream: TextIO | None = None, clock=time.monotonic):
        self.iterable, self._total, self.desc = iterable, total, desc
        self.stream = sys.stderr if stream is None else stream
        self.clock = clock
        self.t0 = self.last_t = clock()
        self.n = self.first = self.last_n = initial
        self.postfix, self.closed = "", False
        self.next_mark = self._mark_after(initial)

    @property
    def total(self) -> int | None:
        return self._total

    @total.setter
    def total(self, value: int | None) -> None:
        """A new total (work re-planned on the way): the quarters are counted against it from here."""
        self._total = value
        self.next_mark = self._mark_after(self.n)

    def _mark_after(self, n: int) -> float | None:
        """The next quarter of the work past ``n`` steps (None without a total, or past it)."""
        if not self.total or n >= self.total:
            return None
        q = self.total / QUARTERS
        return min(self.total, (n // q + 1) * q)

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if (self.next_mark is not None and self.n >= self.next_mark) or now - self.last_t >= PLAIN_EVERY_S:
            self._line(now)
            self.next_mark = self._mark_after(self.n)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        """A last line, unless the last one already said where the work ended."""
        if not self.closed and self.n != self.last_n:
            self._line(self.clock())
        self.closed = True

    def _line(self, now: float) -> None:
        elapsed = now - self.t0
        done = f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n}"
        left = ""
        if self.total and self.n > self.first and self.n < self.total:
            left = f", ~{_clock(elapsed / (self.n - self.first) * (self.total - self.n))} left"
        tail = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {done}, {_clock(elapsed)} elapsed{left}{tail}", file=self.stream, flush=True)
        self.last_t, self.last_n = now, self.n


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
