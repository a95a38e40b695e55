"""The one result schema shared by the spatially variable gene methods.

Every method returns a table indexed by gene and stores it as ``adata.var[f"{method}_{col}"]``
plus its parameters in ``adata.uns["spatiome"][method]``; this module does the storing, so
all methods write their results the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._core.stats import bh_adjust


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


def _plain(value: Any) -> Any:
    """Turn numpy scalars and tuples into plain Python values that h5ad can write."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value
