"""Progress inside long computations (epochs, sweeps, gene chunks), for logs and bars.

A long method opens a :class:`Progress` and calls :meth:`Progress.update` as it goes. Each
update is offered to the listener that the caller installed with :func:`listen` (the CLI's
progress bar does this) and, at most every ``log_every`` seconds plus once at the end, is
written to the ``"spatiome"`` logger at INFO level, so a notebook user sees it with
``logging.basicConfig(level=logging.INFO)``. Without a listener and with logging off an
update costs a clock read.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

logger = logging.getLogger("spatiome")

#: A listener receives (task, done, total, unit, details) at every update.
Listener = Callable[[str, int, int, str, str], None]

_LISTENER: contextvars.ContextVar[Listener | None] = contextvars.ContextVar(
    "spatiome_progress_listener", default=None
)


@contextlib.contextmanager
def listen(listener: Listener) -> Iterator[None]:
    """Send every progress update made inside the ``with`` block to ``listener``.

    Examples
    --------
    >>> seen = []
    >>> with listen(lambda task, done, total, unit, details: seen.append((done, total))):
    ...     with Progress("demo", total=3, unit="sweep") as bar:
    ...         for i in range(3):
    ...             bar.update(i + 1)
    >>> seen[-1]
    (3, 3)
    """
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)


class Progress:
    """Progress of one long computation: ``done`` of ``total`` units.

    Parameters
    ----------
    task
        What is running, as the user knows it ("domains.gnn", "svg.spatialde").
    total
        Number of units (epochs, sweeps, genes) when complete.
    unit
        Name of one unit, singular ("epoch").
    log_every
        Least number of seconds between two log lines (the final update is always logged).

    Examples
    --------
    >>> with Progress("svg.spatialde", total=100, unit="gene") as bar:
    ...     bar.update(50, "length scale 3 of 10")
    ...     bar.update(100)
    >>> bar.done
    100
    """

    def __init__(self, task: str, total: int, unit: str, *, log_every: float = 10.0):
        self.task = task
        self.total = max(int(total), 0)
        self.unit = unit
        self.log_every = float(log_every)
        self.done = 0
        self.started = time.perf_counter()
        self._last_log = self.started

    def __enter__(self) -> Progress:
        logger.info("%s: %d %ss to go", self.task, self.total, self.unit)
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None and self.done < self.total:
            self.update(self.total)

    def update(self, done: int, details: str = "") -> None:
        """Record that ``done`` units are complete; ``details`` adds e.g. the current loss."""
        self.done = int(done)
        listener = _LISTENER.get()
        if listener is not None:
            listener(self.task, self.done, self.total, self.unit, details)
        now = time.perf_counter()
        if self.done >= self.total or now - self._last_log >= self.log_every:
            self._last_log = now
            logger.info(
                "%s: %s %d/%d%s (%.0f s)",
                self.task,
                self.unit,
                self.done,
                self.total,
                f", {details}" if details else "",
                now - self.started,
            )
