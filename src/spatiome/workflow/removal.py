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
    return data[~flagged].copy(), removal


def restore_removed(kept: AnnData, full: AnnData, normalize_removed=None) -> AnnData:
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
    removed = np.setdiff1d(np.arange(full.n_obs), rows)
    obs = _restore_obs(kept.obs, full.obs, names)
    matrix = _restore_matrix(kept.X, rows, removed, _removed_x(full, removed, normalize_removed))
    restored = AnnData(matrix, obs=obs, var=kept.var.copy(), uns=kept.uns.copy())
    for key, value in kept.layers.items():
        fill = full.layers[key][removed] if key in full.layers else None
        restored.layers[key] = _restore_matrix(value, rows, removed, fill)
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
    """Rows of ``matrix`` placed at ``rows``, those of ``fill`` (or zeros) at ``removed``."""
    order = np.argsort(np.concatenate([rows, removed]), kind="stable")
    if sp.issparse(matrix):
        other = sp.csr_matrix((removed.size, matrix.shape[1]), dtype=matrix.dtype)
        if fill is not None:
            other = sp.csr_matrix(fill, dtype=matrix.dtype)
        return sp.vstack([sp.csr_matrix(matrix), other], format="csr")[order]
    dense = np.asarray(matrix)
    other = np.zeros((removed.size, *dense.shape[1:]), dtype=dense.dtype)
    if fill is not None:
        other = np.asarray(fill.toarray() if sp.issparse(fill) else fill, dtype=dense.dtype)
    return np.concatenate([dense, other])[order]


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
