"""Spots that hold almost no counts: one warning at the entry of each method they distort.

A spot with a few counts among spots with tens of thousands (a torn or uncovered spot) is
an outlier in every gene once expression is normalized for depth: three counts scaled to
the median library size become three huge values and zeros elsewhere. One such spot can
decide a test. On the mouse olfactory bulb (``mouse_ob_rep11``), whose two near-empty
spots hold 3 and 7 counts against a median of about 27,000, SpatialDE calls 924 genes at
q < 0.05 with them and 91 without them. The original SpatialDE analysis removed them, and
so should users (:func:`spatiome.pp.quality_flags` flags them, with the same 1% floor):
the spatially-variable-gene and domain methods call :func:`warn_near_empty` once at their
entry.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

#: A spot is near-empty when its library size is below this fraction of the median.
NEAR_EMPTY_FRACTION = 0.01
#: Spots named in the warning, at most.
_NAMED_SPOTS = 5
#: Stored values sampled to decide whether a matrix holds raw counts.
_SAMPLE_SIZE = 100_000

_checked: ContextVar[bool] = ContextVar("spatiome_near_empty_checked", default=False)


def warn_near_empty(
    adata: AnnData,
    *,
    layer: str | None = None,
    caller: str,
    fraction: float = NEAR_EMPTY_FRACTION,
    ignore_below: float = 0.0,
    stacklevel: int = 3,
) -> None:
    """Warn once when some spots' library size is below ``fraction`` of the median.

    The library sizes are the row sums of the matrix the method reads (``adata.X`` or
    ``adata.layers[layer]``) when it holds raw counts; otherwise, for normalized values,
    ``adata.obs["total_counts"]`` or the row sums of ``adata.layers["counts"]``. When none
    of them is available, or inside :func:`near_empty_checked`, nothing happens. The check
    costs one row sum of a sparse matrix and never raises: missing or malformed inputs are
    left for the method's own checks.

    Parameters
    ----------
    adata
        The data the method was given.
    layer
        The layer the method reads (``None``: ``adata.X``).
    caller
        The method's name in the warning, e.g. ``"svg.spatialde"``.
    fraction
        Spots with a library size below ``fraction`` times the median are near-empty.
    ignore_below
        Spots with a library size below this are left out by the method itself: they are
        neither reported nor counted in the median.
    stacklevel
        Passed to :func:`warnings.warn`; 3 points at the line that called the method when
        the method calls this function directly.

    Examples
    --------
    >>> import anndata, numpy as np, scipy.sparse as sp
    >>> counts = sp.csr_matrix(np.array([[500, 500], [400, 700], [2, 0], [600, 300]]))
    >>> adata = anndata.AnnData(counts)
    >>> adata.obs_names = ["a", "b", "torn", "c"]
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_near_empty(adata, caller="svg.example")
    >>> print(str(caught[0].message).split(". ")[0])
    svg.example: 1 of 4 spots is near-empty (library size below 1% of the median, 950):
    'torn' (2 counts)
    """
    if _checked.get():
        return
    found = library_sizes(adata, layer)
    if found is None:
        return
    sizes, source = found
    used = sizes >= ignore_below
    if not used.any():
        return
    median = float(np.median(sizes[used]))
    near_empty = used & (sizes < fraction * median)
    if near_empty.any():
        message = _message(adata, sizes, near_empty, median, fraction, source, caller)
        warnings.warn(message, UserWarning, stacklevel=stacklevel)


@contextmanager
def near_empty_checked() -> Iterator[None]:
    """Silence :func:`warn_near_empty` inside the block.

    For a public method that has already checked its input and then calls another public
    method on the same spots, so that one call gives one warning.

    Examples
    --------
    >>> import anndata, numpy as np
    >>> adata = anndata.AnnData(np.array([[900.0], [1000.0], [1.0]]))
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     with near_empty_checked():
    ...         warn_near_empty(adata, caller="domains.example")
    >>> caught
    []
    """
    token = _checked.set(True)
    try:
        yield
    finally:
        _checked.reset(token)


def library_sizes(adata: AnnData, layer: str | None = None) -> tuple[np.ndarray, str] | None:
    """Each spot's total count, and an expression that computes it, or None if unknown.

    The row sums of the matrix read (``adata.X`` or ``adata.layers[layer]``) when it holds
    raw counts, else ``adata.obs["total_counts"]``, else the row sums of
    ``adata.layers["counts"]`` when that holds raw counts.

    Examples
    --------
    >>> import anndata, numpy as np
    >>> adata = anndata.AnnData(np.array([[1.5, 0.2], [0.0, 3.1]]))
    >>> library_sizes(adata) is None
    True
    >>> adata.layers["counts"] = np.array([[4, 1], [0, 9]])
    >>> sizes, source = library_sizes(adata)
    >>> sizes.tolist(), source
    ([5.0, 9.0], "np.ravel(adata.layers['counts'].sum(axis=1))")
    """
    read = _stored_matrix(adata, layer)
    if read is not None and _looks_like_counts(read):
        return _row_sums(read), _row_sums_expression(layer)
    column = adata.obs.get("total_counts")
    if _is_numeric(column):
        totals = column.to_numpy(dtype=np.float64)
        if np.isfinite(totals).all():
            return totals, "adata.obs['total_counts']"
    counts = _stored_matrix(adata, "counts") if layer != "counts" else None
    if counts is not None and _looks_like_counts(counts):
        return _row_sums(counts), _row_sums_expression("counts")
    return None


def _is_numeric(column: pd.Series | None) -> bool:
    return (
        column is not None
        and pd.api.types.is_numeric_dtype(column)
        and not pd.api.types.is_bool_dtype(column)
    )


def _stored_matrix(adata: AnnData, layer: str | None) -> sp.spmatrix | np.ndarray | None:
    """``adata.X`` or ``adata.layers[layer]`` when it is a numeric spots x genes matrix."""
    matrix = adata.X if layer is None else adata.layers.get(layer)
    if not (sp.issparse(matrix) or isinstance(matrix, np.ndarray)):
        return None
    real = np.issubdtype(matrix.dtype, np.integer) or np.issubdtype(matrix.dtype, np.floating)
    return matrix if real and matrix.ndim == 2 and matrix.shape[0] == adata.n_obs else None


def _looks_like_counts(matrix: sp.spmatrix | np.ndarray) -> bool:
    """Non-negative whole numbers, judged on an even sample of the stored values."""
    stored = matrix.data if sp.issparse(matrix) else matrix
    values = np.asarray(stored).ravel(order="K")
    if values.size == 0:
        return False
    sample = values[:: max(1, values.size // _SAMPLE_SIZE)]
    if np.issubdtype(sample.dtype, np.integer):
        return bool(sample.min() >= 0)
    if not np.isfinite(sample).all() or sample.min() < 0:
        return False
    return bool((np.mod(sample, 1) == 0).all())


def _row_sums(matrix: sp.spmatrix | np.ndarray) -> np.ndarray:
    from .sums import row_sums  # compiled: imported on first use

    return row_sums(matrix)


def _row_sums_expression(layer: str | None) -> str:
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    return f"np.ravel({where}.sum(axis=1))"


def _message(
    adata: AnnData,
    sizes: np.ndarray,
    near_empty: np.ndarray,
    median: float,
    fraction: float,
    source: str,
    caller: str,
) -> str:
    positions = np.flatnonzero(near_empty)
    shown = positions[np.argsort(sizes[positions], kind="stable")[:_NAMED_SPOTS]]
    names = ", ".join(f"{adata.obs_names[i]!r} ({_counts(sizes[i])})" for i in shown)
    more = f" and {positions.size - shown.size} more" if positions.size > shown.size else ""
    count = positions.size
    verb = "is" if count == 1 else "are"
    minimum = math.ceil(fraction * median)
    return (
        f"{caller}: {count} of {adata.n_obs} spots {verb} near-empty (library size below "
        f"{fraction:.0%} of the median, {_number(median)}): {names}{more}. Such spots carry "
        "no usable signal and can decide the result (on the mouse olfactory bulb, two of "
        "them raise SpatialDE's calls at q < 0.05 from 91 to 924). Remove them "
        "before this call: spatiome.pp.quality_flags(adata), then adata = "
        "adata[~adata.obs['low_quality']].copy(); or by hand, adata = "
        f"adata[{source} >= {minimum}].copy(). The spatiome run pipeline removes them by "
        "default."
    )


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:g}"


def _counts(value: float) -> str:
    return f"{_number(value)} count{'' if value == 1 else 's'}"
