"""Multiple-testing and p-value helpers shared by the per-gene methods."""

from __future__ import annotations

import numpy as np


def bh_adjust(pvalues: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (NaN kept as NaN).

    Examples
    --------
    >>> bh_adjust(np.array([0.01, 0.04, 0.03])).round(3).tolist()
    [0.03, 0.04, 0.04]
    """
    return _step_up(pvalues, by=False)


def by_adjust(pvalues: np.ndarray) -> np.ndarray:
    """Benjamini-Yekutieli adjusted p-values (valid under any dependence)."""
    return _step_up(pvalues, by=True)


def _step_up(pvalues: np.ndarray, *, by: bool) -> np.ndarray:
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full_like(p, np.nan)
    finite = np.isfinite(p)
    m = int(finite.sum())
    if m == 0:
        return out
    values = p[finite]
    order = np.argsort(values, kind="mergesort")
    ranks = np.arange(1, m + 1, dtype=np.float64)
    factor = np.sum(1.0 / ranks) if by else 1.0
    adjusted = values[order] * m * factor / ranks
    adjusted = np.minimum.accumulate(adjusted[::-1])[::-1]
    result = np.empty(m)
    result[order] = np.clip(adjusted, 0.0, 1.0)
    out[finite] = result
    return out


#: Below this p-value a Cauchy term tan((0.5 - p) pi) is replaced by its expansion
#: 1 / (p pi), which stays accurate where tan loses all precision (as in ACAT).
CAUCHY_SMALL_P = 1e-16
#: Above this statistic the Cauchy tail is taken as 1 / (C pi) (as in ACAT).
CAUCHY_LARGE_STATISTIC = 1e15


def cauchy_combination(
    log_pvalues: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Combine p-values row by row with the Cauchy combination test (ACAT).

    C = sum_k w_k tan((0.5 - p_k) pi) is standard Cauchy under the null whatever the
    dependence between the tests, so the combined p-value is its upper tail. Works on
    natural-log p-values so that p-values far below the smallest double still combine
    correctly. The numerical guards of the original ACAT are kept: terms with p < 1e-16
    use w / (p pi), statistics above 1e15 use the tail 1 / (C pi), a row with a p-value of
    exactly 0 combines to 0, and otherwise a row with a p-value of exactly 1 combines to 1.

    Parameters
    ----------
    log_pvalues
        (n_tests, n_pvalues) natural logarithms of the p-values (<= 0; NaN allowed).
    weights
        Non-negative weights of the columns, normalized to sum to 1 (default: equal).

    Returns
    -------
    statistic, log_pvalue
        The Cauchy statistic (+inf when it overflows) and the natural log of the combined
        p-value per row; NaN where a row has a NaN p-value.

    References
    ----------
    Liu, Y. and Xie, J. (2020). Cauchy combination test: a powerful test with analytic
    p-value calculation under arbitrary dependency structures. JASA 115, 393-402.

    Examples
    --------
    >>> p = np.array([[0.01, 0.5, 0.9], [0.5, 0.5, 0.5]])
    >>> statistic, log_p = cauchy_combination(np.log(p))
    >>> np.exp(log_p).round(4).tolist()
    [0.0331, 0.5]
    """
    log_p = np.atleast_2d(np.asarray(log_pvalues, dtype=np.float64))
    n_columns = log_p.shape[1]
    if weights is None:
        w = np.full(n_columns, 1.0 / n_columns)
    else:
        w = np.asarray(weights, dtype=np.float64)
        w = w / w.sum()
    p = np.exp(log_p)
    small = log_p < np.log(CAUCHY_SMALL_P)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        small_terms = np.where(small, w * np.exp(-log_p) / np.pi, 0.0)
        regular_terms = np.where(small, 0.0, w * np.tan((0.5 - p) * np.pi))
        statistic = small_terms.sum(axis=1) + regular_terms.sum(axis=1)
        # log C when the small terms dominate (C > 1e15), computed without overflow.
        log_small = np.where(small, np.log(w) - log_p - np.log(np.pi), -np.inf)
        peak = log_small.max(axis=1)
        log_statistic = peak + np.log(np.exp(log_small - peak[:, None]).sum(axis=1))
        log_statistic = np.logaddexp(
            log_statistic, np.log(np.maximum(regular_terms.sum(axis=1), 1e-300))
        )
        tail = np.where(
            statistic > 0,
            np.log(np.arctan(1.0 / statistic) / np.pi),
            np.log(0.5 - np.arctan(statistic) / np.pi),
        )
    log_combined = np.where(
        statistic > CAUCHY_LARGE_STATISTIC, -log_statistic - np.log(np.pi), tail
    )
    has_zero = np.isneginf(log_p).any(axis=1)
    has_one = (log_p == 0).any(axis=1)
    log_combined = np.where(has_one & ~has_zero, 0.0, log_combined)
    log_combined = np.where(has_zero, -np.inf, log_combined)
    missing = np.isnan(log_p).any(axis=1)
    log_combined[missing] = np.nan
    statistic = np.where(missing, np.nan, statistic)
    return statistic, log_combined


def chi2_logsf(statistic: np.ndarray, dof: float | np.ndarray) -> np.ndarray:
    """Natural log of the chi-square upper tail, finite far beyond where it underflows.

    ``scipy.stats.chi2.logsf`` takes the log of the tail probability and returns -inf once
    it drops below the smallest double (around a statistic of 1,500). Here the tail is
    computed as log Q(dof/2, x/2), with Q the regularized upper incomplete gamma function:
    directly where it is representable, and from the continued fraction of the upper
    incomplete gamma function in log form beyond.

    Examples
    --------
    >>> chi2_logsf(np.array([4.0, 3000.0]), 2).tolist()
    [-2.0, -1500.0]
    """
    from scipy import special

    x = np.asarray(statistic, dtype=np.float64)
    a = np.broadcast_to(np.asarray(dof, dtype=np.float64) / 2.0, x.shape)
    z = x / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        tail = special.gammaincc(a, z)
        # Near 1 the tail is better computed as 1 - the lower part.
        out = np.where(tail > 0.5, np.log1p(-special.gammainc(a, z)), np.log(tail))
    deep = np.isfinite(z) & (tail < 1e-280) & (z > a + 1)
    if deep.any():
        out[deep] = _log_upper_gamma_fraction(a[deep], z[deep])
    return out


def _log_upper_gamma_fraction(a: np.ndarray, z: np.ndarray, max_terms: int = 500) -> np.ndarray:
    """log Q(a, z) for z > a + 1 by the modified Lentz evaluation of the continued fraction

    Q(a, z) Gamma(a) = exp(-z) z^a / (z + 1 - a - 1 (1 - a) / (z + 3 - a - 2 (2 - a) / ...)).
    """
    from scipy import special

    tiny = 1e-300
    b = z + 1.0 - a
    c = np.full_like(z, 1.0 / tiny)
    d = 1.0 / b
    fraction = d.copy()
    for i in range(1, max_terms + 1):
        term = -i * (i - a)
        b = b + 2.0
        d = term * d + b
        d = np.where(np.abs(d) < tiny, tiny, d)
        c = b + term / c
        c = np.where(np.abs(c) < tiny, tiny, c)
        d = 1.0 / d
        step = d * c
        fraction = fraction * step
        if np.all(np.abs(step - 1.0) < 1e-15):
            break
    return -z + a * np.log(z) - special.gammaln(a) + np.log(fraction)
