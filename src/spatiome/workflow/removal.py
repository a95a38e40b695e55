"""Removing low-quality spots before the statistics, and putting them back into the results.

The pipeline flags spots with :func:`spatiome.pp.quality_flags`. With ``qc_remove`` (the
default) the flagged spots are left out of every later step: normalization, the graphs,
embeddings, domains, spatially variable genes. :func:`restore_removed` then builds the
results object over all input spots: the removed ones keep their counts, coordinates, QC
metrics and flags, and hold missing values (NaN) wherever a statistic was computed on the
spots that were kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numba
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

logger = logging.getLogger("spatiome")

#: Removal is refused when it would leave fewer spots than this, or remove more than this
#: share of the spots: then the flags describe the data, not a few bad spots.
MIN_KEPT = 10
MAX_REMOVED_SHARE = 0.5


@dataclass
class Removal:
    """What quality control removed: spot names and, per reason, how many spots."""

    n_input: int
    removed: list[str] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)
    note: str | None = None

    @property
    def n_removed(self) -> int:
        return len(self.removed)


def remove_low_quality(data: AnnData) -> tuple[AnnData, Removal]:
    """The spots of ``data`` that ``obs["low_quality"]`` keeps, and what was removed.

    ``data`` is not modified. Without flags, or when removal would leave fewer than
    ``MIN_KEPT`` spots or remove more than ``MAX_REMOVED_SHARE`` of them, nothing is removed
    and ``Removal.note`` says why.

    Examples
    --------
    >>> import anndata, numpy as np, pandas as pd
    >>> a = anndata.AnnData(np.ones((12, 2)))
    >>> a.obs["low_quality"] = [True] + [False] * 11
    >>> a.obs["low_quality_reason"] = ["min_counts"] + [""] * 11
    >>> kept, removal = remove_low_quality(a)
    >>> kept.n_obs, removal.removed, removal.reasons
    (11, ['0'], {'min_counts': 1})
    """
    removal = Removal(n_input=int(data.n_obs))
    if "low_quality" not in data.obs:
        return data, removal
    flagged = data.obs["low_quality"].to_numpy(dtype=bool)
    n_flagged = int(flagged.sum())
    if n_flagged == 0:
        return data, removal
    unit = data.uns.get("spatiome", {}).get("observation", "spot")
    if data.n_obs - n_flagged < MIN_KEPT or n_flagged > MAX_REMOVED_SHARE * data.n_obs:
        removal.note = (
            f"quality control flagged {n_flagged:,} of {data.n_obs:,} {unit}s; none was "
            f"removed, because removing them would leave {data.n_obs - n_flagged:,}. Flags "
            "this widespread describe the data rather than a few failed "
            f"{unit}s: inspect the QC maps, and set [qc] remove = false to silence this"
        )
        logger.warning("quality control: %s", removal.note)
        return data, removal
    removal.removed = [str(name) for name in data.obs_names[flagged]]
    reasons = data.obs.get("low_quality_reason")
    if reasons is not None:
        tokens = pd.Series(reasons.to_numpy()[flagged]).astype(str).str.split(";").explode()
        counted = tokens[tokens != ""].value_counts(sort=False)
        removal.reasons = {str(k): int(v) for k, v in counted.items()}
    logger.info(
        "quality control: %d of %d %ss removed before the statistics (%s)",
        n_flagged, data.n_obs, unit,
        ", ".join(f"{k}: {v}" for k, v in removal.reasons.items()) or "no reason recorded",
    )  # fmt: skip
    return _kept_copy(data, ~flagged), removal


def share_counts(data: AnnData) -> None:
    """Hold the raw counts once: ``layers["counts"]`` and ``X`` become the same matrix.

    Without a counts layer, ``X`` becomes it; with one whose values equal ``X`` (as in
    files that store both), ``X`` is replaced by it. Normalization later assigns a new
    ``X`` and never edits the counts in place, so sharing halves the memory the counts
    take until then. A counts layer that differs from ``X`` is left alone.

    Examples
    --------
    >>> import anndata, numpy as np, scipy.sparse as sp
    >>> a = anndata.AnnData(sp.csr_matrix(np.eye(3)))
    >>> a.layers["counts"] = a.X.copy()
    >>> share_counts(a)
    >>> a.layers["counts"] is a.X
    True
    """
    counts = data.layers.get("counts")
    if counts is None:
        data.layers["counts"] = data.X
    elif counts is not data.X and _same_matrix(counts, data.X):
        data.X = counts


def _same_matrix(a, b) -> bool:
    """Equal shape, storage and values (compared array by array, without temporaries)."""
    if a is None or b is None or a.shape != b.shape or type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    if not isinstance(a, sp.csr_matrix | sp.csc_matrix) or a.dtype != b.dtype:
        return False
    return (
        np.array_equal(a.indptr, b.indptr)
        and np.array_equal(a.indices, b.indices)
        and np.array_equal(a.data, b.data)
    )


def _kept_copy(data: AnnData, keep: np.ndarray) -> AnnData:
    """``data[keep].copy()`` with each matrix copied once, and a matrix shared by ``X`` and
    a layer copied once for both.

    AnnData's view-then-copy would subset every matrix and then copy the subset; here the
    matrices are set aside while the rest is copied, then subset directly.
    """
    x, layers = data.X, dict(data.layers)
    shared = next((key for key, value in layers.items() if value is x), None)
    try:
        data.X = None
        for key in layers:
            del data.layers[key]
        kept = data[keep].copy()
    finally:
        data.X = x
        for key, value in layers.items():
            data.layers[key] = value
    for key, value in layers.items():
        kept.layers[key] = value[keep]
    if x is not None:
        kept.X = kept.layers[shared] if shared is not None else x[keep]
    return kept


def restore_removed(
    kept: AnnData, full: AnnData, normalize_removed=None, *, matrices: bool = True
) -> AnnData:
    """``kept``'s results over every spot of ``full``: removed spots get missing values.

    - ``obs``: ``full``'s columns (metrics and flags computed before removal) with every
      column added on the kept spots; those are missing (NaN, or pandas' nullable missing
      value for booleans and integers) on the removed spots;
    - ``obsm``: arrays computed after removal get NaN rows; arrays present before removal
      (coordinates) are taken from ``full``;
    - ``obsp`` graphs get empty rows and columns for the removed spots;
    - ``X``: ``kept.X`` for the kept spots; for the removed ones the output of
      ``normalize_removed(full[removed])`` when given (the same normalization), else zeros;
    - ``layers``: ``full``'s layer where it has one (raw counts), otherwise zeros;
    - ``var`` and ``uns`` come from ``kept``.

    With ``matrices=False``, ``X`` is left empty (None) and layers absent: everything but
    the expression, for figures; :func:`restore_matrices` adds them later.

    Examples
    --------
    >>> import anndata, numpy as np
    >>> full = anndata.AnnData(np.arange(6.0).reshape(3, 2))
    >>> kept = full[[0, 2]].copy()
    >>> kept.obs["domain"] = ["a", "b"]
    >>> kept.obsm["X_pca"] = np.ones((2, 1))
    >>> restored = restore_removed(kept, full)
    >>> restored.obs["domain"].tolist(), restored.obsm["X_pca"][:, 0].tolist()
    (['a', nan, 'b'], [1.0, nan, 1.0])
    """
    names = full.obs_names
    rows = names.get_indexer(kept.obs_names)
    if (rows < 0).any():
        raise ValueError("restore_removed: the kept spots must be spots of the full data")
    obs = _restore_obs(kept.obs, full.obs, names)
    restored = AnnData(obs=obs, var=kept.var.copy(), uns=kept.uns.copy())
    if matrices:
        restore_matrices(restored, kept, full, normalize_removed)
    for key, value in kept.obsm.items():
        if key in full.obsm and np.shape(full.obsm[key])[1:] == np.shape(value)[1:]:
            restored.obsm[key] = full.obsm[key]
        else:
            restored.obsm[key] = _pad_rows(value, rows, names)
    for key, value in kept.obsp.items():
        restored.obsp[key] = _expand_square(value, rows, full.n_obs)
    for key, value in kept.varm.items():
        restored.varm[key] = value
    return restored


def restore_matrices(
    restored: AnnData,
    kept: AnnData,
    full: AnnData,
    normalize_removed=None,
    *,
    release: bool = False,
) -> None:
    """Fill ``restored``'s ``X`` and layers as :func:`restore_removed` describes, in place.

    With ``release=True`` each of ``kept``'s matrices is taken out of ``kept`` and grown
    into its full-size version in place where it can be (a sparse matrix that owns its
    arrays and no other reference holds), so the expression is never held twice; use it
    when ``kept`` is not needed afterwards.

    Examples
    --------
    >>> import anndata, numpy as np
    >>> full = anndata.AnnData(np.arange(6.0).reshape(3, 2))
    >>> kept = full[[0, 2]].copy()
    >>> restored = restore_removed(kept, full, matrices=False)
    >>> restored.X is None
    True
    >>> restore_matrices(restored, kept, full, lambda spots: spots.X, release=True)
    >>> restored.X.tolist(), kept.X is None
    ([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], True)
    """  # fmt: skip
    rows = full.obs_names.get_indexer(kept.obs_names)
    removed = np.setdiff1d(np.arange(full.n_obs), rows)
    fill = _removed_x(full, removed, normalize_removed)
    shared = any(layer is kept.X for layer in kept.layers.values())
    restore = _restore_in_place if release and not shared else _restore_matrix
    x = kept.X
    if release:
        kept.X = None
    restored.X = restore(x, rows, removed, fill)
    del x
    for key in list(kept.layers.keys()):
        fill = full.layers[key][removed] if key in full.layers else None
        layer = kept.layers[key]
        if release:
            del kept.layers[key]
        restore = _restore_in_place if release else _restore_matrix
        restored.layers[key] = restore(layer, rows, removed, fill)
        del layer


def restore_source(full: AnnData, kept: AnnData) -> AnnData:
    """Reduce ``full`` to what :func:`restore_removed` needs of it, in place, and return it.

    ``obs``, ``obsm``, ``uns`` and ``var`` stay; sparse ``X`` and layers keep only the rows of
    the spots not in ``kept`` (the other rows become empty), so a run that removed a few
    spots holds one copy of the counts instead of two, even while a caller still refers to
    ``full``. Dense matrices are kept whole.

    Examples
    --------
    >>> import anndata, numpy as np, scipy.sparse as sp
    >>> values = np.arange(1.0, 7.0).reshape(3, 2)
    >>> full = anndata.AnnData(sp.csr_matrix(values))
    >>> kept = full[[0, 2]].copy()
    >>> source = restore_source(full, kept)
    >>> source is full, full.X.nnz, full.X[1].toarray().tolist()
    (True, 2, [[3.0, 4.0]])
    >>> restored = restore_removed(kept, full, lambda spots: spots.X)
    >>> restored.X.toarray().tolist() == values.tolist()
    True
    """
    rows = full.obs_names.get_indexer(kept.obs_names)
    removed = np.setdiff1d(np.arange(full.n_obs), rows)

    def only_removed(matrix):
        if not sp.issparse(matrix):
            return matrix
        part = sp.csr_matrix(matrix[removed])
        return _expand_rows(part, removed, full.n_obs).astype(part.dtype, copy=False)

    full.X = only_removed(full.X)
    for key in list(full.layers.keys()):
        full.layers[key] = only_removed(full.layers[key])
    return full


def _removed_x(full: AnnData, removed: np.ndarray, normalize_removed):
    if removed.size == 0 or normalize_removed is None:
        return None
    return normalize_removed(full[removed].copy())


def _restore_obs(kept: pd.DataFrame, full: pd.DataFrame, names: pd.Index) -> pd.DataFrame:
    obs = full.copy()
    for column in kept.columns:
        values = kept[column]
        if column in obs.columns and _same_values(obs.loc[kept.index, column], values):
            continue
        obs[column] = _reindex(values, names)
    return obs


def _same_values(before: pd.Series, after: pd.Series) -> bool:
    try:
        return bool(before.equals(after) or (before.to_numpy() == after.to_numpy()).all())
    except (TypeError, ValueError):
        return False


def _reindex(values: pd.Series, names: pd.Index) -> pd.Series:
    """``values`` over ``names``, missing where absent, in a dtype that can hold missing."""
    if pd.api.types.is_bool_dtype(values):
        values = values.astype("boolean")
    elif pd.api.types.is_integer_dtype(values) and not isinstance(
        values.dtype, pd.CategoricalDtype
    ):
        values = values.astype("Int64")
    return values.reindex(names)


def _restore_matrix(matrix, rows: np.ndarray, removed: np.ndarray, fill):
    """Rows of ``matrix`` placed at ``rows``, those of ``fill`` (or zeros) at ``removed``.

    The result is allocated once and filled in place: no stacked intermediate and no
    reordered second copy, so the peak is the inputs plus the result.
    """
    n_obs = rows.size + removed.size
    if sp.issparse(matrix):
        matrix = sp.csr_matrix(matrix)
        return _interleave_csr([(matrix, rows), (_removed_rows(matrix, removed, fill), removed)])
    dense = np.asarray(matrix)
    restored = np.zeros((n_obs, *dense.shape[1:]), dtype=dense.dtype)
    restored[rows] = dense
    if fill is not None:
        restored[removed] = np.asarray(fill.toarray() if sp.issparse(fill) else fill)
    return restored


def _restore_in_place(matrix, rows: np.ndarray, removed: np.ndarray, fill):
    """:func:`_restore_matrix`, growing a CSR ``matrix``'s own arrays when it can.

    The arrays are enlarged by ``realloc`` (page remapping for large arrays, no copy) and
    the kept rows moved back to their places from the last one down, so a matrix only
    gains the removed rows' entries. Anything else falls back to :func:`_restore_matrix`.
    """
    if not (sp.issparse(matrix) and matrix.format == "csr" and removed.size):
        return _restore_matrix(matrix, rows, removed, fill)
    other = _removed_rows(matrix, removed, fill)
    indptr = _target_indptr([(matrix, rows), (other, removed)], np.int64)
    nnz = int(indptr[-1])
    data, indices = _owner(matrix.data), _owner(matrix.indices)
    growable = (
        nnz < np.iinfo(matrix.indices.dtype).max
        and np.all(np.diff(rows) > 0)  # kept rows in the order of full
        and data is not None
        and indices is not None
    )
    if not growable:
        return _restore_matrix(matrix, rows, removed, fill)
    old_indptr = matrix.indptr.astype(np.int64)
    shape = (indptr.size - 1, matrix.shape[1])
    # Take the arrays out of the matrix (released by the caller); resize checks that no
    # other reference, such as a view, still points into them, and copies otherwise.
    matrix.data, matrix.indices = data[:0].copy(), indices[:0].copy()
    try:
        data.resize(nnz)
        indices.resize(nnz)
    except ValueError:  # referenced elsewhere: leave them as they were
        matrix.data, matrix.indices = data[: old_indptr[-1]], indices[: old_indptr[-1]]
        return _restore_matrix(matrix, rows, removed, fill)
    _move_rows_back(data, indices, old_indptr, rows.astype(np.int64), indptr)
    _copy_rows(other, removed, indptr, data, indices)
    return sp.csr_matrix((data, indices, indptr.astype(indices.dtype)), shape=shape, copy=False)


def _owner(array: np.ndarray) -> np.ndarray | None:
    """The array that owns ``array``'s memory when it is ``array`` itself or a base of the
    same dtype and shape (as scipy's arrays often are), else None."""
    for candidate in (array, array.base):
        if (
            isinstance(candidate, np.ndarray)
            and candidate.base is None
            and candidate.flags.owndata
            and candidate.flags.c_contiguous
            and candidate.dtype == array.dtype
            and candidate.shape == array.shape
        ):
            return candidate
    return None


@numba.njit(cache=True, nogil=True)
def _move_rows_back(data, indices, old_indptr, rows, indptr):  # pragma: no cover - compiled
    # Kept row i moves from old_indptr[i] to indptr[rows[i]] >= old_indptr[i] (rows only
    # gain spots before them); going from the last row down and copying each row from its
    # end never overwrites an entry that has not moved yet.
    for i in range(rows.size - 1, -1, -1):
        source, target = old_indptr[i], indptr[rows[i]]
        if target == source:
            continue
        for k in range(old_indptr[i + 1] - source - 1, -1, -1):
            data[target + k] = data[source + k]
            indices[target + k] = indices[source + k]


def _removed_rows(matrix: sp.csr_matrix, removed: np.ndarray, fill) -> sp.csr_matrix:
    """The removed spots' rows as CSR in ``matrix``'s dtype: ``fill``, or empty rows."""
    if fill is None:
        return sp.csr_matrix((removed.size, matrix.shape[1]), dtype=matrix.dtype)
    return sp.csr_matrix(fill, dtype=matrix.dtype)


def _target_indptr(parts: list[tuple[sp.csr_matrix, np.ndarray]], dtype) -> np.ndarray:
    """Row pointer of the matrix holding row ``i`` of each part's matrix at ``targets[i]``."""
    n_obs = sum(targets.size for _, targets in parts)
    lengths = np.zeros(n_obs, dtype=np.int64)
    for matrix, targets in parts:
        lengths[targets] = np.diff(matrix.indptr)
    indptr = np.zeros(n_obs + 1, dtype=dtype)
    np.cumsum(lengths, out=indptr[1:])
    return indptr


def _copy_rows(matrix: sp.csr_matrix, targets: np.ndarray, indptr, data, indices) -> None:
    """Copy row ``i`` of ``matrix`` to row ``targets[i]`` of the arrays ``indptr`` lays out.

    Rows whose targets are consecutive are copied as one slice, so a run that removed a
    few spots copies a few slices rather than every row.
    """
    for start, stop in _consecutive_runs(targets):
        first, last = matrix.indptr[start], matrix.indptr[stop]
        at = indptr[targets[start]]
        data[at : at + last - first] = matrix.data[first:last]
        indices[at : at + last - first] = matrix.indices[first:last]


def _interleave_csr(parts: list[tuple[sp.csr_matrix, np.ndarray]]) -> sp.csr_matrix:
    """One CSR matrix with row ``i`` of each part's matrix at that part's ``targets[i]``."""
    n_columns = parts[0][0].shape[1]
    nnz = sum(matrix.nnz for matrix, _ in parts)
    index_dtype = np.int32 if max(nnz, n_columns) < np.iinfo(np.int32).max else np.int64
    indptr = _target_indptr(parts, index_dtype)
    data = np.empty(nnz, dtype=parts[0][0].dtype)
    indices = np.empty(nnz, dtype=index_dtype)
    for matrix, targets in parts:
        _copy_rows(matrix, targets, indptr, data, indices)
    shape = (indptr.size - 1, n_columns)
    restored = sp.csr_matrix((data, indices, indptr), shape=shape, copy=False)
    restored.has_sorted_indices = all(m.has_sorted_indices for m, _ in parts)
    return restored


def _consecutive_runs(targets: np.ndarray) -> list[tuple[int, int]]:
    """``(start, stop)`` position ranges over which ``targets`` rises by exactly one."""
    if targets.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(targets) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [targets.size]])
    return list(zip(starts.tolist(), stops.tolist(), strict=True))


def _pad_rows(value, rows: np.ndarray, names: pd.Index):
    if isinstance(value, pd.DataFrame):
        return value.reindex(names)
    if sp.issparse(value):
        return _expand_rows(value, rows, len(names))
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float64)
    padded = np.full((len(names), *array.shape[1:]), np.nan, dtype=array.dtype)
    padded[rows] = array
    return padded


def _expand_rows(matrix, rows: np.ndarray, n_obs: int) -> sp.csr_matrix:
    coo = sp.coo_matrix(matrix)
    return sp.csr_matrix((coo.data, (rows[coo.row], coo.col)), shape=(n_obs, matrix.shape[1]))


def _expand_square(matrix, rows: np.ndarray, n_obs: int) -> sp.csr_matrix:
    coo = sp.coo_matrix(matrix)
    return sp.csr_matrix((coo.data, (rows[coo.row], rows[coo.col])), shape=(n_obs, n_obs))
