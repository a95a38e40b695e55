"""The single entry check used by every public function.

Internals trust their inputs; public functions call these helpers first so that
bad input gets one clear error that says what to fix.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData


class SpatiomeInputError(ValueError):
    """Raised when user input is malformed; the message says how to fix it."""


def check_adata(adata: object, *, name: str = "adata") -> AnnData:
    """Check that ``adata`` is a non-empty AnnData."""
    if not isinstance(adata, AnnData):
        raise SpatiomeInputError(
            f"{name} must be an anndata.AnnData, got {type(adata).__name__}: "
            "read data with spatiome.io.read_* or build one with anndata.AnnData(X)"
        )
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise SpatiomeInputError(
            f"{name} is empty ({adata.n_obs} spots x {adata.n_vars} genes): "
            "check the input files or filters"
        )
    return adata


def check_coordinates(
    coords: object, *, n_obs: int | None = None, where: str = "coordinates"
) -> np.ndarray:
    """Return coordinates as a float64 (n, 2|3) array, refusing what no method can use.

    Refused (:class:`SpatiomeInputError`, saying what to fix): non-numeric values, a shape
    other than (n_spots, 2) or (n_spots, 3), a row count other than ``n_obs``, NaN or
    infinite values, and two or more spots that all share one position (a constant pair of
    columns, usually the wrong columns: every distance would be zero). The checks are O(n).

    Allowed: spots all on one line (transects, a single array row; methods that need a
    plane, such as a Delaunay graph, say so themselves), a constant third column (2-D data
    stored as 3-D) and duplicated positions (the spatial graph builders warn when many spots
    share theirs), since finding every duplicate costs far more than these checks.

    Parameters
    ----------
    coords
        Array-like of positions, one row per spot.
    n_obs
        Expected number of rows (the number of spots), if known.
    where
        Name of the coordinates in the error messages.

    Returns
    -------
    numpy.ndarray
        The coordinates as float64 (a view when they already are).

    Examples
    --------
    >>> check_coordinates([[0, 0], [1, 2]]).dtype
    dtype('float64')
    >>> try:
    ...     check_coordinates(np.ones((500, 2)), where="adata.obsm['spatial']")
    ... except SpatiomeInputError as err:
    ...     print(str(err).split(":")[1].strip())
    all 500 spots share one position (x=1, y=1)
    """
    try:
        array = np.asarray(coords, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise SpatiomeInputError(
            f"{where} must be numeric: {err}; fix the coordinate columns"
        ) from None
    if array.ndim != 2 or array.shape[1] not in (2, 3):
        raise SpatiomeInputError(
            f"{where} must have shape (n_spots, 2) or (n_spots, 3), got {array.shape}"
        )
    if n_obs is not None and array.shape[0] != n_obs:
        raise SpatiomeInputError(
            f"{where} has {array.shape[0]} rows but the data has {n_obs} spots: "
            "pass one coordinate row per spot"
        )
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        raise SpatiomeInputError(
            f"{where} has {int(bad.sum())} spots with NaN or infinite coordinates "
            f"(first at row {int(np.flatnonzero(bad)[0])}): remove those spots or fix the values"
        )
    if array.shape[0] > 1:
        low, high = array.min(axis=0), array.max(axis=0)
        # Tolerate the rounding of a transform applied to identical points.
        scale = np.maximum(np.abs(low), np.abs(high))
        if np.all(high - low <= 4 * np.finfo(np.float64).eps * scale):
            axes = "xyz"[: array.shape[1]]
            at = ", ".join(f"{axis}={value:g}" for axis, value in zip(axes, array[0], strict=True))
            raise SpatiomeInputError(
                f"{where}: all {array.shape[0]} spots share one position ({at}): check which "
                "columns hold the coordinates (e.g. pxl_col_in_fullres/pxl_row_in_fullres or "
                "x_centroid/y_centroid, not in_tissue or another constant column) and set "
                "them as an (n_spots, 2) array"
            )
    return array


def get_spatial(adata: AnnData, key: str = "spatial") -> np.ndarray:
    """Return validated ``adata.obsm[key]`` as float64 (see :func:`check_coordinates`).

    Examples
    --------
    >>> import anndata
    >>> adata = anndata.AnnData(np.ones((2, 1)), obsm={"spatial": np.array([[0, 1], [2, 3]])})
    >>> get_spatial(adata).tolist()
    [[0.0, 1.0], [2.0, 3.0]]
    """
    if key not in adata.obsm:
        raise SpatiomeInputError(
            f"adata.obsm[{key!r}] is missing: read data with spatiome.io.read_* or set "
            f"adata.obsm[{key!r}] to an (n_obs, 2) array of coordinates"
        )
    return check_coordinates(adata.obsm[key], n_obs=adata.n_obs, where=f"adata.obsm[{key!r}]")


def get_matrix(
    adata: AnnData, layer: str | None = None, *, argument: str = "layer"
) -> sp.csr_matrix | np.ndarray:
    """Return ``adata.X`` or ``adata.layers[layer]`` (CSR if sparse), without copying.

    ``argument`` is the caller's parameter naming the layer, quoted in the error that says
    how to point it elsewhere when the layer is missing.

    Examples
    --------
    >>> import anndata, numpy as np
    >>> adata = anndata.AnnData(np.array([[1.0, 0.0], [2.0, 3.0]]))
    >>> get_matrix(adata).tolist()
    [[1.0, 0.0], [2.0, 3.0]]
    >>> try:
    ...     get_matrix(adata, "counts")
    ... except SpatiomeInputError as err:
    ...     print(str(err).split(":")[0])
    adata.layers['counts'] is missing (no layers present)
    """
    if layer is None:
        matrix = adata.X
        where = "adata.X"
    else:
        if layer not in adata.layers:
            raise SpatiomeInputError(_missing_layer(adata, layer, argument))
        matrix = adata.layers[layer]
        where = f"adata.layers[{layer!r}]"
    if matrix is None:
        raise SpatiomeInputError(f"{where} is empty (None): set a matrix or pass {argument}=")
    if sp.issparse(matrix):
        return sp.csr_matrix(matrix) if matrix.format != "csr" else matrix
    return np.asarray(matrix)


def resolve_counts_layer(
    adata: AnnData,
    layer: str | None = None,
    *,
    argument: str = "layer",
    require_counts: bool = True,
) -> str | None:
    """Name the layer that holds the raw counts: ``layer``, ``"counts"``, or None for X.

    An explicit ``layer`` is returned as is (a missing one raises the error of
    :func:`get_matrix`). With ``layer=None`` the raw counts are looked for where the
    usual readers leave them: ``adata.layers["counts"]`` when present (spatiome's readers),
    else ``adata.X`` when its stored values are finite, non-negative whole numbers, not all
    zero (scanpy, squidpy and spatialdata-io keep the raw counts there). Otherwise one
    :class:`SpatiomeInputError` says what was looked at and how to point at the counts.
    With ``require_counts=False`` (methods that also accept normalized values) ``adata.X``
    is used whatever it holds when there is no counts layer.

    Parameters
    ----------
    adata
        The data the method was given.
    layer
        The caller's layer argument.
    argument
        The caller's parameter naming the layer, quoted in the errors.
    require_counts
        Whether ``adata.X`` must hold counts to be used.

    Returns
    -------
    str or None
        The layer to pass to :func:`get_matrix`: a name, or None for ``adata.X``.

    Examples
    --------
    >>> import anndata, numpy as np
    >>> adata = anndata.AnnData(np.array([[3.0, 0.0], [1.0, 2.0]]))
    >>> resolve_counts_layer(adata) is None
    True
    >>> adata.layers["counts"] = adata.X.copy()
    >>> adata.X = np.log1p(adata.X)
    >>> resolve_counts_layer(adata)
    'counts'
    >>> del adata.layers["counts"]
    >>> try:
    ...     resolve_counts_layer(adata)
    ... except SpatiomeInputError as err:
    ...     print(str(err).split(":")[0])
    no raw counts found for layer=None
    """
    if layer is not None:
        if layer not in adata.layers:
            raise SpatiomeInputError(_missing_layer(adata, layer, argument))
        return layer
    if "counts" in adata.layers:
        return "counts"
    if not require_counts or _holds_some_counts(adata.X):
        return None
    raise SpatiomeInputError(_no_counts(adata, argument))


def _no_counts(adata: AnnData, argument: str) -> str:
    """Why ``layer=None`` found no raw counts, and how to point at them."""
    present = sorted(adata.layers.keys())
    listed = f"layers present: {present}" if present else "no layers present"
    held = "is empty (None)" if adata.X is None else f"holds {_not_counts(adata.X)}"
    source = "<the raw counts, spots x genes>"
    raw = adata.raw is not None and adata.raw.shape == adata.shape
    if raw and _holds_counts(adata.raw.X):
        source = "adata.raw.X.copy() (adata.raw holds whole numbers of the same shape)"
    example = f" (e.g. {argument}={present[0]!r})" if present else ""
    return (
        f"no raw counts found for {argument}=None: adata.layers['counts'] is missing "
        f"({listed}) and adata.X {held}, so it is not raw counts (normalized data?). "
        f"To fix: set adata.layers['counts'] = {source}, or pass {argument}= naming the "
        f"layer that holds the raw counts{example}"
    )


def _holds_some_counts(matrix: object) -> bool:
    """Counts with at least one positive value: an all-zero X is a placeholder."""
    if not _holds_counts(matrix):
        return False
    values = _values(matrix)  # type: ignore[arg-type]
    return bool(values.size and values.max() > 0)


def _not_counts(matrix: sp.spmatrix | np.ndarray) -> str:
    """What in ``matrix`` is not a count, with an example value."""
    values = _values(matrix)
    if not np.issubdtype(values.dtype, np.number):
        return f"values of dtype {values.dtype}"
    if values.size == 0:
        return "no positive value (an empty placeholder?)"
    finite = np.isfinite(values)
    if not finite.all():
        return f"NaN or infinite values ({int((~finite).sum())} entries)"
    if values.min() < 0:
        return f"negative values (min {values.min():g})"
    fractional = values[np.mod(values, 1) != 0]
    if fractional.size:
        return f"non-integer values (e.g. {fractional[0]:g})"
    return "no positive value (an empty placeholder?)"


def _missing_layer(adata: AnnData, layer: str, argument: str) -> str:
    """What to do when ``adata.layers[layer]`` is missing, from what the object holds."""
    present = sorted(adata.layers.keys())
    listed = f"layers present: {present}" if present else "no layers present"
    head = f"adata.layers[{layer!r}] is missing ({listed})"
    if layer != "counts":
        return f"{head}: pass {argument}= naming a present layer, or {argument}=None for adata.X"
    head += (
        ": this AnnData was not made by spatiome.io, whose readers keep the raw counts in "
        "adata.layers['counts']"
    )
    other = f"; or pass {argument}={present[0]!r} if it holds the raw counts" if present else ""
    if _holds_counts(adata.X):
        return (
            f"{head}. adata.X holds whole numbers, probably raw counts: set "
            "adata.layers['counts'] = adata.X.copy() before this call (recommended, it "
            f"keeps them when adata.X is normalized), or pass {argument}=None to read "
            f"adata.X{other}"
        )
    raw = adata.raw is not None and adata.raw.shape == adata.shape
    source = (
        "adata.layers['counts'] = adata.raw.X.copy() if adata.raw holds them"
        if raw
        else "adata.layers['counts'] = <the raw counts, spots x genes>"
    )
    return (
        f"{head}. adata.X is not raw counts (it holds non-integer or negative values, e.g. "
        f"normalized data), so {argument}=None would not do: set {source}{other}"
    )


def _holds_counts(matrix: object) -> bool:
    if matrix is None:
        return False
    values = _values(matrix)  # type: ignore[arg-type]
    if values.size == 0 or not np.issubdtype(values.dtype, np.number):
        return values.size == 0
    finite = np.isfinite(values).all()
    return bool(finite and values.min() >= 0 and np.all(np.mod(values, 1) == 0))


def _values(matrix: sp.spmatrix | np.ndarray) -> np.ndarray:
    return matrix.data if sp.issparse(matrix) else np.asarray(matrix).ravel()


def check_counts(matrix: sp.spmatrix | np.ndarray, *, where: str = "counts") -> None:
    """Raise unless ``matrix`` holds finite, non-negative integer counts.

    ``where`` names the matrix in the error (``"adata.X"``, ``"adata.layers['counts']"`` or a
    file); the fix suggested depends on it.

    Examples
    --------
    >>> check_counts(np.array([[0, 3], [1, 2]]))
    >>> try:
    ...     check_counts(np.array([[0.5, 1.0]]), where="adata.X")
    ... except SpatiomeInputError as err:
    ...     print(str(err).split(";")[0])
    adata.X contains non-integer values (e.g. 0.5)
    """
    values = _values(matrix)
    if values.size == 0:
        return
    # Integer storage is finite and integral by construction: only the sign can be wrong.
    is_integer = np.issubdtype(values.dtype, np.integer)
    if values.dtype in (np.float32, np.float64):
        # One compiled pass that stops at the first bad block; the checks below then run
        # only to name what is wrong.
        from ._count_scan import all_counts

        if all_counts(values):
            return
    if not is_integer and not np.isfinite(values).all():
        n_bad = int((~np.isfinite(values)).sum())
        raise SpatiomeInputError(
            f"{where} contains NaN or infinite values ({n_bad} entries): raw counts are "
            "finite numbers; fix the input"
        )
    if values.min() < 0:
        raise SpatiomeInputError(
            f"{where} contains negative values (min {values.min():g}); raw counts are "
            f"expected{_counts_hint(where)}"
        )
    if not is_integer:
        fractional = np.mod(values, 1) != 0
        if fractional.any():
            example = values[np.flatnonzero(fractional)[0]]
            raise SpatiomeInputError(
                f"{where} contains non-integer values (e.g. {example:g}); raw counts are "
                f"expected{_counts_hint(where)}"
            )


def _counts_hint(where: str) -> str:
    if where == "adata.X":
        return (
            ": adata.X looks normalized; pass layer='counts' if the raw counts are in "
            "adata.layers['counts']"
        )
    if where.startswith("adata.layers"):
        return ": put the raw, unnormalized counts in this layer"
    return ": use the unnormalized counts (whole numbers), not normalized values"


def check_finite(matrix: sp.spmatrix | np.ndarray, *, where: str = "matrix") -> None:
    """Raise if ``matrix`` holds NaN or infinite values."""
    values = _values(matrix)
    if values.size and not np.isfinite(values).all():
        raise SpatiomeInputError(f"{where} contains NaN or infinite values: fix the input")


def check_unique(names, *, what: str, where: str) -> None:
    """Raise if ``names`` has duplicates, naming a few of them."""
    import pandas as pd

    index = pd.Index(names)
    if not index.is_unique:
        dup = index[index.duplicated()].unique()[:5].tolist()
        raise SpatiomeInputError(
            f"{where} has {int(index.duplicated().sum())} duplicated {what} (e.g. {dup}): "
            f"make {what} unique before reading"
        )


def resolve_genes(adata: AnnData, genes) -> np.ndarray:
    """Return integer positions of ``genes`` (None = all), with a clear error for unknown ones."""
    if genes is None:
        return np.arange(adata.n_vars)
    genes = [genes] if isinstance(genes, str) else list(genes)
    index = adata.var_names.get_indexer(genes)
    if (index < 0).any():
        missing = [g for g, i in zip(genes, index, strict=True) if i < 0][:5]
        raise SpatiomeInputError(f"genes not in adata.var_names: {missing}")
    return index
