"""The one result schema shared by the spatially variable gene methods.

Every method returns a table indexed by gene and stores it as ``adata.var[f"{method}_{col}"]``
plus its parameters in ``adata.uns["spatiome"][method]``; this module does the storing, so
all methods write their results the same way.

P-values are computed as logarithms, which stay finite far below the smallest double: every
table has ``log10_pval`` (exact, never -inf) beside ``pval`` (floored at the smallest
positive normal double, ``PVAL_FLOOR``, never 0). No table holds an infinite value: a
statistic too large for a double is shown as the largest double, with a ``note``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._core.stats import bh_adjust

#: The smallest positive normal double: p-values are floored here, never at exactly 0;
#: ``log10_pval`` keeps their exact value.
PVAL_FLOOR = float(np.finfo(np.float64).tiny)
#: The largest finite double: a statistic beyond it is shown as this value, with a note.
STATISTIC_CEILING = float(np.finfo(np.float64).max)


def write_result(
    adata: AnnData,
    method: str,
    table: pd.DataFrame,
    params: Mapping[str, Any],
    *,
    positions: np.ndarray | None = None,
) -> None:
    """Store a per-gene result table in ``adata.var`` and its parameters in ``adata.uns``.

    Columns written by an earlier call of the same method are removed first, so a re-run on
    fewer genes or without permutations never leaves stale values behind. Genes that were
    not tested get NaN (missing for non-numeric columns).

    Parameters
    ----------
    adata
        The AnnData the table was computed from; modified in place.
    method
        Short method name used as prefix, e.g. ``"moran"``.
    table
        Per-gene results indexed by gene name.
    params
        Parameters of the run; stored with ``columns`` (the table's columns) and
        ``n_genes_tested`` in ``adata.uns["spatiome"][method]``. Values must be
        h5ad-writable (numbers, strings, booleans, None, lists, dicts of those).
    positions
        Integer positions of the table's rows in ``adata.var_names`` (defaults to looking
        the index up, which needs unique names).

    Examples
    --------
    >>> import anndata, numpy as np, pandas as pd
    >>> adata = anndata.AnnData(np.zeros((3, 2)))
    >>> adata.var_names = ["a", "b"]
    >>> table = pd.DataFrame({"statistic": [0.5], "pval": [0.01]}, index=["b"])
    >>> write_result(adata, "demo", table, {"alpha": 1})
    >>> adata.var["demo_statistic"].tolist()
    [nan, 0.5]
    >>> adata.uns["spatiome"]["demo"]["columns"]
    ['statistic', 'pval']
    """
    if positions is None:
        positions = adata.var_names.get_indexer(table.index)
    uns = adata.uns.setdefault("spatiome", {})
    previous = uns.get(method, {}) if isinstance(uns.get(method), Mapping) else {}
    stale = [f"{method}_{col}" for col in previous.get("columns", [])]
    adata.var.drop(columns=[c for c in stale if c in adata.var.columns], inplace=True)
    for column in table.columns:
        values = table[column].to_numpy()
        if values.dtype.kind in "fiu":
            full = np.full(adata.n_vars, np.nan)
        else:
            full = np.full(adata.n_vars, None, dtype=object)
        full[positions] = values
        adata.var[f"{method}_{column}"] = full
    stored = {key: _plain(value) for key, value in params.items()}
    stored["columns"] = [str(c) for c in table.columns]
    stored["n_genes_tested"] = int(len(table))
    uns[method] = stored


def add_qvalues(table: pd.DataFrame, pval_column: str = "pval") -> pd.DataFrame:
    """Add the Benjamini-Hochberg ``qval`` column computed from ``pval_column``.

    Examples
    --------
    >>> import pandas as pd
    >>> add_qvalues(pd.DataFrame({"pval": [0.01, 0.04]}))["qval"].tolist()
    [0.02, 0.04]
    """
    table["qval"] = bh_adjust(table[pval_column].to_numpy())
    return table


def pvalue_columns(log_pvalues: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``pval`` and ``log10_pval`` from natural-log p-values, without underflow.

    ``pval`` is ``exp(log p)`` floored at ``PVAL_FLOOR`` (so never 0), ``log10_pval`` is
    ``log p / log 10``, finite whenever ``log p`` is; NaN stays NaN.

    Examples
    --------
    >>> pval, log10_pval = pvalue_columns(np.array([np.log(0.01), -2000.0, np.nan]))
    >>> pval.tolist()[0], bool(pval[1] == PVAL_FLOOR), log10_pval.round(1).tolist()
    (0.01, True, [-2.0, -868.6, nan])
    """
    log_p = np.minimum(np.asarray(log_pvalues, dtype=np.float64), 0.0)
    pval = np.where(np.isnan(log_p), np.nan, np.maximum(np.exp(log_p), PVAL_FLOOR))
    return pval, log_p / np.log(10.0)


def finite_statistic(
    values: np.ndarray, log10_values: np.ndarray | None = None, *, name: str = "statistic"
) -> tuple[np.ndarray, np.ndarray]:
    """A statistic with its infinite entries replaced by the largest double, and notes.

    Parameters
    ----------
    values
        The statistic; +-inf where it does not fit in a double.
    log10_values
        Optional log10 of ``|values|``, finite where ``values`` overflowed, quoted in the
        note so that the size of the statistic is not lost.
    name
        The statistic's name in the notes.

    Returns
    -------
    statistic, note
        ``values`` with +-inf replaced by +-``STATISTIC_CEILING`` (NaN stays NaN), and a
        string per entry: empty, or why the value was replaced.

    Examples
    --------
    >>> stat, note = finite_statistic(np.array([2.0, np.inf]), np.array([0.3, 333.4]))
    >>> bool(np.isfinite(stat).all()), note[0], note[1]
    (True, '', 'statistic = 10^333.4, beyond the largest double: shown as 1.798e+308; \
log10_pval is exact')
    """
    values = np.asarray(values, dtype=np.float64)
    infinite = np.isinf(values)
    statistic = np.where(infinite, np.sign(values) * STATISTIC_CEILING, values)
    note = np.full(values.shape, "", dtype=object)
    for index in np.flatnonzero(infinite):
        size = ""
        if log10_values is not None and np.isfinite(log10_values[index]):
            size = f" = {'-' if values[index] < 0 else ''}10^{log10_values[index]:.1f}"
        note[index] = (
            f"{name}{size}, beyond the largest double: shown as {statistic[index]:.4g}; "
            "log10_pval is exact"
        )
    return statistic, note


def _plain(value: Any) -> Any:
    """Turn numpy scalars and tuples into plain Python values that h5ad can write."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value
