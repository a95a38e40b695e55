"""Agreement between estimated and true cell-type fractions."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._core.validate import SpatiomeInputError


def compare_fractions(estimated: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """RMSE, Jensen-Shannon divergence and Pearson correlation of fractions, per type.

    Spots and types are matched by name; spots whose estimate is missing (NaN) are left
    out. The row ``"all"`` holds the RMSE over every spot and type, the mean per-spot
    Jensen-Shannon divergence (base 2, in [0, 1]) and the mean of the per-type
    correlations (types constant in the truth are skipped), as in published benchmarks.

    Parameters
    ----------
    estimated, truth
        Spots x cell types fractions (rows sum to 1).

    Returns
    -------
    pandas.DataFrame
        Index: the cell types and ``"all"``; columns ``rmse``, ``jsd``, ``pearson``.

    Examples
    --------
    >>> import pandas as pd
    >>> truth = pd.DataFrame({"A": [1.0, 0.5, 0.0], "B": [0.0, 0.5, 1.0]})
    >>> compare_fractions(truth, truth).loc["all", ["rmse", "jsd", "pearson"]].tolist()
    [0.0, 0.0, 1.0]
    """
    if not isinstance(estimated, pd.DataFrame) or not isinstance(truth, pd.DataFrame):
        raise SpatiomeInputError("estimated and truth must be pandas DataFrames (spots x types)")
    spots = estimated.index.intersection(truth.index)
    types = truth.columns
    missing = types.difference(estimated.columns)
    if len(spots) == 0 or len(missing) == len(types):
        raise SpatiomeInputError(
            "estimated and truth share no spots or no cell types: check their index and columns"
        )
    est = (
        estimated.reindex(index=spots, columns=types)
        .fillna({t: 0.0 for t in missing})
        .to_numpy(dtype=np.float64)
    )
    true = truth.loc[spots, types].to_numpy(dtype=np.float64)
    ok = np.isfinite(est).all(axis=1)
    est, true = est[ok], true[ok]
    err = est - true
    rows = {}
    for k, name in enumerate(types):
        rows[name] = {
            "rmse": float(np.sqrt(np.mean(err[:, k] ** 2))),
            "jsd": np.nan,
            "pearson": _pearson(est[:, k], true[:, k]),
        }
    rows["all"] = {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "jsd": float(np.mean(_jsd(est, true))),
        "pearson": float(np.nanmean([rows[t]["pearson"] for t in types]))
        if np.isfinite([rows[t]["pearson"] for t in types]).any()
        else np.nan,
    }
    return pd.DataFrame.from_dict(rows, orient="index")


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return np.nan
    return float(np.corrcoef(a, b)[0, 1])


def _jsd(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    p = p / np.maximum(p.sum(axis=1, keepdims=True), 1e-300)
    q = q / np.maximum(q.sum(axis=1, keepdims=True), 1e-300)
    m = 0.5 * (p + q)
    return np.clip(0.5 * (_kl(p, m) + _kl(q, m)), 0.0, 1.0)


def _kl(p: np.ndarray, m: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log2(p / np.where(m > 0, m, 1.0)), 0.0)
    return terms.sum(axis=1)
