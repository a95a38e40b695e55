"""Progress inside long computations (epochs, sweeps, gene chunks), for logs and bars.

A long method opens a :class:`Progress` and calls :meth:`Progress.update` (or
:meth:`Progress.advance`) as it goes. Each update is offered to the listener that the
caller installed with :func:`listen` (the CLI's progress bar does this) and, at most every
``log_every`` seconds plus once at the start and once at the end, is written to the
``"spatiome"`` logger at INFO level, so a notebook user sees it with
``logging.basicConfig(level=logging.INFO)``. Without a listener and with logging off an
update costs a clock read.

The listener is held in a context variable: updates made in worker threads of a pool do
not reach it, so methods update from the thread that opened the :class:`Progress`.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Iterator
from types import TracebackType

logger = logging.getLogger("spatiome")

#: A listener receives (task, done, total, unit, details) at every update.
Listener = Callable[[str, int, int, str, str], None]

_LISTENER: contextvars.ContextVar[Listener | None] = contextvars.ContextVar(
    "spatiome_progress_listener", default=None
)


@contextlib.contextmanager
def listen(listener: Listener) -> Iterator[None]:
    """Send every progress update made inside the ``with`` block to ``listener``.

    The listener is called with ``done = 0`` when a :class:`Progress` starts, then at every
    update; ``done`` reaches ``total`` when the computation completes. An exception raised
    by the listener propagates into the computation and stops it (a way to cancel).

    Parameters
    ----------
    listener
        Called as ``listener(task, done, total, unit, details)``.

    Examples
    --------
    >>> seen = []
    >>> with listen(lambda task, done, total, unit, details: seen.append((done, total))):
    ...     with Progress("demo", total=3, unit="sweep") as bar:
    ...         for i in range(3):
    ...             bar.update(i + 1)
    >>> seen
    [(0, 3), (1, 3), (2, 3), (3, 3)]
    """
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)


class Progress:
    """Progress of one long computation: ``done`` of ``total`` units.

    Used as a context manager: entering logs the start and tells the listener
    (``done = 0``); leaving normally completes the count (``done = total``) and logs the
    end once; leaving on an exception logs where the computation stopped, never a
    completion.

    Parameters
    ----------
    task
        What is running, as the user knows it ("domains.gnn", "svg.spatialde").
    total
        Number of units (epochs, sweeps, genes) when complete.
    unit
        Name of one unit, singular ("epoch").
    log_every
        Least number of seconds between two log lines (the first and the last are always
        logged).

    Examples
    --------
    >>> with Progress("svg.spatialde", total=100, unit="gene") as bar:
    ...     bar.update(50, "length scale 3 of 10")
    ...     bar.advance(50)
    >>> bar.done
    100
    """

    def __init__(self, task: str, total: int, unit: str, *, log_every: float = 10.0):
        self.task = task
        self.total = max(int(total), 0)
        self.unit = unit
        self.log_every = float(log_every)
        self.done = 0
        self.details = ""
        self.started = time.perf_counter()
        self._last_log = self.started
        self._finished = False

    def __enter__(self) -> Progress:
        self.started = self._last_log = time.perf_counter()
        logger.info("%s: %d %s to go", self.task, self.total, self._units(self.total))
        listener = _LISTENER.get()
        if listener is not None:
            listener(self.task, self.done, self.total, self.unit, "")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            if not self._finished:
                logger.info(
                    "%s: stopped by %s at %d/%d %s (%.0f s)",
                    self.task,
                    exc_type.__name__,
                    self.done,
                    self.total,
                    self._units(self.total),
                    time.perf_counter() - self.started,
                )
            return
        if self.done < self.total:
            self.update(self.total)
        elif not self._finished:
            self._finish(time.perf_counter())

    def update(self, done: int, details: str = "") -> None:
        """Record that ``done`` units are complete; ``details`` adds e.g. the current loss."""
        self.done = int(done)
        self.details = details
        listener = _LISTENER.get()
        if listener is not None:
            listener(self.task, self.done, self.total, self.unit, details)
        now = time.perf_counter()
        if self.done >= self.total:
            if not self._finished:
                self._finish(now)
        elif now - self._last_log >= self.log_every:
            self._last_log = now
            elapsed = now - self.started
            left = elapsed * (self.total - self.done) / self.done if self.done > 0 else None
            logger.info(
                "%s: %s %d/%d%s (%.0f s%s)",
                self.task,
                self.unit,
                self.done,
                self.total,
                f", {details}" if details else "",
                elapsed,
                "" if left is None else f", about {left:.0f} s left",
            )

    def advance(self, count: int = 1, details: str = "") -> None:
        """Record ``count`` more units complete (:meth:`update` with ``done + count``)."""
        self.update(self.done + int(count), details)

    def _finish(self, now: float) -> None:
        self._finished = True
        self._last_log = now
        logger.info(
            "%s: done, %d %s in %.1f s%s",
            self.task,
            self.total,
            self._units(self.total),
            now - self.started,
            f" ({self.details})" if self.details else "",
        )

    def _units(self, count: int) -> str:
        return self.unit if count == 1 else f"{self.unit}s"
