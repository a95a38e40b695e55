"""Which points a scatter of many spots draws, and how large: one rule for every plot.

A page shows at most about a million pixels, so drawing more than ~100,000 spots adds
time and file size but nothing a reader can see. Beyond ``max_points`` a plot draws a
subsample, the same for the same seed (:func:`sample_points`: at random;
:func:`sample_spots`: one spot per cell of a grid over the tissue, for maps), and enlarges
the markers so that the drawn spots cover the tissue as all of them would; the plot says
so in small grey text.
Collections of many points are also rasterized, so that vector output (PDF, SVG) stays
small.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral

import numpy as np
from matplotlib.axes import Axes

from .._core.random import check_random_state
from .._core.validate import SpatiomeInputError

#: Most points a scatter draws by default; beyond it a random subsample is drawn.
MAX_POINTS = 100_000
#: Extra diameter of the spots a map draws beyond the cap: the drawn spots lie on a
#: near-square grid with up to half a spot spacing of jitter, which circles 1.5 times
#: the area-preserving size cover without gaps.
GRID_COVER = 1.5
#: Collections of more points than this are drawn as a bitmap inside vector output.
RASTERIZE_ABOVE = 1000
_NOTE_SIZE = 7


@dataclass(frozen=True)
class PointSample:
    """The points a plot draws out of ``n_total``: all of them, or a sorted subsample.

    Attributes
    ----------
    index
        Sorted positions of the drawn points; ``None`` when every point is drawn.
    n_total
        Points there are (candidates to draw).
    subsampled
        Whether some candidates are left out.
    """

    index: np.ndarray | None
    n_total: int
    subsampled: bool = False

    @property
    def n_drawn(self) -> int:
        """Points drawn."""
        return self.n_total if self.index is None else int(self.index.size)

    @property
    def size_factor(self) -> float:
        """Factor on a marker's diameter that keeps the area the drawn markers cover: the
        square root of points there are over points drawn (1 when all are drawn)."""
        return float(np.sqrt(self.n_total / max(self.n_drawn, 1)))

    def take(self, values: np.ndarray) -> np.ndarray:
        """The rows of ``values`` (one per point) that are drawn."""
        return values if self.index is None else values[self.index]

    def note(self, noun: str = "spots") -> str:
        """What was drawn, for the figure: empty when every point is drawn."""
        if not self.subsampled:
            return ""
        return f"{self.n_drawn:,} of {self.n_total:,} {noun} drawn (a subsample)"


def check_max_points(max_points: int | None) -> int | None:
    """``max_points`` as a positive int or ``None`` (draw every point).

    Examples
    --------
    >>> check_max_points(100), check_max_points(None)
    (100, None)
    """
    if max_points is None:
        return None
    if isinstance(max_points, bool) or not isinstance(max_points, Integral) or max_points < 1:
        raise SpatiomeInputError(
            f"max_points must be a positive integer or None (draw every point), got {max_points!r}"
        )
    return int(max_points)


def sample_points(
    candidates: int | np.ndarray,
    max_points: int | None = MAX_POINTS,
    random_state: int | np.random.Generator | None = 0,
) -> PointSample:
    """Choose the points a plot draws: every candidate, or ``max_points`` of them at random.

    The subsample is drawn without replacement by ``numpy.random.default_rng(random_state)``
    and sorted, so the same seed draws the same points in every plot and the drawing order
    is the data's.

    Parameters
    ----------
    candidates
        Number of points ``n`` (candidates ``0 .. n-1``), or the positions of the
        candidate points (for example those with a finite value).
    max_points
        Most points drawn; ``None`` draws every candidate.
    random_state
        Seed of the subsample.

    Returns
    -------
    PointSample
        ``index`` holds the positions drawn (``None`` when every point of ``range(n)``
        is drawn); ``n_total`` the number of candidates; ``subsampled`` whether some
        are left out.

    Examples
    --------
    >>> sample = sample_points(250_000, max_points=100_000, random_state=0)
    >>> sample.n_drawn, sample.subsampled, round(sample.size_factor, 3)
    (100000, True, 1.581)
    >>> bool(np.all(np.diff(sample.index) > 0))
    True
    >>> sample_points(50, max_points=100).index is None
    True
    """
    max_points = check_max_points(max_points)
    if isinstance(candidates, Integral):
        n_total, pool = int(candidates), None
    else:
        pool = np.asarray(candidates)
        n_total = int(pool.size)
    if max_points is None or n_total <= max_points:
        return PointSample(index=pool, n_total=n_total)
    rng = check_random_state(random_state)
    chosen = rng.choice(n_total if pool is None else pool, max_points, replace=False)
    return PointSample(index=np.sort(chosen), n_total=n_total, subsampled=True)


def sample_spots(
    coords: np.ndarray,
    max_points: int | None = MAX_POINTS,
    random_state: int | np.random.Generator | None = 0,
) -> PointSample:
    """Choose the spots a map draws: every spot, or at most ``max_points`` spread evenly.

    Beyond ``max_points`` the tissue is cut into square cells, about ``max_points`` of
    them over the bounding box, and in each occupied cell the spot nearest its centre is
    drawn; the grid's origin is shifted at random (``random_state``). Unlike a plain
    random subsample, the drawn spots lie on a near-regular grid and leave no patch of
    the tissue empty, so enlarged markers cover it without holes.

    Parameters
    ----------
    coords
        Spot coordinates, ``(n, 2)``.
    max_points
        Most spots drawn; ``None`` draws every spot.
    random_state
        Seed of the shift of the grid.

    Returns
    -------
    PointSample

    Examples
    --------
    >>> rows, cols = np.divmod(np.arange(40_000), 200)
    >>> sample = sample_spots(np.column_stack([cols, rows]).astype(float), 10_000)
    >>> 9_000 <= sample.n_drawn <= 10_000, sample.subsampled
    (True, True)
    """
    max_points = check_max_points(max_points)
    n_total = coords.shape[0]
    if max_points is None or n_total <= max_points:
        return PointSample(index=None, n_total=n_total)
    rng = check_random_state(random_state)
    points = np.asarray(coords, dtype=np.float64)[:, :2]
    span = np.ptp(points, axis=0)
    side = max(float(np.sqrt(span[0] * span[1] / max_points)), float(span.max()) / max_points)
    origin = points.min(axis=0) - rng.random(2) * side
    chosen = _nearest_to_cell_centres(points, origin, side)
    if chosen.size < 0.9 * max_points:
        # The tissue fills only part of its bounding box: smaller cells, closer to the cap.
        side *= np.sqrt(chosen.size / max_points)
        chosen = _nearest_to_cell_centres(points, origin, side)
    if chosen.size > max_points:
        chosen = rng.choice(chosen, max_points, replace=False)
    return PointSample(index=np.sort(chosen), n_total=n_total, subsampled=True)


def _nearest_to_cell_centres(points: np.ndarray, origin: np.ndarray, side: float) -> np.ndarray:
    """In each occupied square cell of ``side`` from ``origin``, the spot nearest its centre
    (the lowest index among equals): drawn spots then lie on a near-regular grid."""
    scaled = (points - origin) / max(side, 1e-300)
    cells = np.floor(scaled).astype(np.int64)
    key = cells[:, 0] * (int(cells[:, 1].max()) + 1) + cells[:, 1]
    offset = np.sum((scaled - cells - 0.5) ** 2, axis=1)
    order = np.lexsort((np.arange(key.size), offset, key))
    first = np.flatnonzero(np.r_[True, key[order][1:] != key[order][:-1]])
    return order[first]


def annotate_sample(ax: Axes, sample: PointSample, noun: str = "spots") -> None:
    """Write under ``ax`` (lower left, small grey text) that a subsample was drawn."""
    text = sample.note(noun)
    if text:
        ax.text(
            0.0,
            -0.01,
            text,
            transform=ax.transAxes,
            ha="left",
            va="top",
            fontsize=_NOTE_SIZE,
            color="0.4",
        )


def rasterize(artist, n_points: int) -> None:
    """Draw ``artist`` as a bitmap inside vector output when it has many points."""
    artist.set_rasterized(n_points > RASTERIZE_ABOVE)
