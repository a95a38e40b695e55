"""Tail probabilities of weighted sums of chi-square variables.

Kernel tests (SPARK-X, SKAT-type score tests) compare a statistic with the distribution of

    Q = sum_k lambda_k * chi2(h_k, delta_k) + sigma * N(0, 1),

independent chi-square variables with weights ``lambda_k``, integer degrees of freedom
``h_k`` and non-centralities ``delta_k``. Three routes to P(Q > q) are offered:

- :func:`davies`: Davies' (1980) algorithm AS 155, which inverts the characteristic
  function numerically and chooses the integration grid so that truncation and
  discretisation errors stay below ``acc``. It reproduces ``CompQuadForm::davies`` (R),
  including its fault codes and its conventions for failures, so p-values computed in R
  with it (SPARK-X among them) are reproduced to rounding.
- :func:`liu`: the moment-matching approximation of Liu, Tang and Zhang (2009), as
  ``CompQuadForm::liu``; exact for equal weights.
- :func:`mixture_pvalue`: one p-value per statistic, by SPARK-X's rule (Davies, with Liu
  where Davies gives no positive probability), by Liu alone, or exactly when the weights
  of each set are equal.

All three are vectorized: ``weights`` is one set of weights (shape ``(r,)``) evaluated at
any array of ``q``, or one set per row (shape ``(n_sets, r)``) with ``q`` of shape
``(n_sets,)`` or ``(n_sets, k)``, row ``i`` of ``q`` evaluated with row ``i`` of the weights.
Sets with fewer terms can be padded with zero weights, which change nothing. Davies'
method runs in one numba kernel over all sets; the part of the search that does not depend
on ``q`` (the truncation point without convergence factor) is done once per set.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np
from scipy import stats

from .parallel import map_gene_chunks, resolve_n_jobs
from .validate import SpatiomeInputError

#: Meaning of the fault codes returned by :func:`davies` (those of AS 155).
DAVIES_FAULTS = {
    0: "no fault",
    1: "requested accuracy not reached within lim integration terms",
    2: "round-off error possibly significant",
    4: "integration parameters not found within lim evaluations of the error bounds",
}
MIXTURE_METHODS = ("davies", "liu", "exact")

# AS 155 uses pi to 15 significant digits and log(2) / 8 rounded to 0.0866; the same
# constants keep the integration grids, and therefore the results, identical to it.
_PI = 3.14159265358979
_LOG2_OVER_8 = 0.0866
# Relative tolerance under which Liu's skewness comparison counts as equality: for equal
# weights s1^2 == s2 exactly, and rounding alone must not select the non-central branch.
_LIU_EQUALITY_RTOL = 64 * np.finfo(np.float64).eps
# Largest relative spread of a set's weights accepted as "equal" by method="exact".
_EXACT_EQUAL_RTOL = 1e-9


class DaviesResult(NamedTuple):
    """P-values and fault codes from :func:`davies` (arrays shaped like ``q``)."""

    pvalue: np.ndarray
    fault: np.ndarray


def davies(
    q: float | np.ndarray,
    weights: np.ndarray,
    dof: int | np.ndarray | None = None,
    noncentrality: float | np.ndarray | None = None,
    sigma: float = 0.0,
    lim: int = 10000,
    acc: float = 1e-4,
    *,
    n_jobs: int = 1,
) -> DaviesResult:
    """P(Q > q) for Q = sum_k w_k chi2(dof_k, noncentrality_k) + sigma N(0, 1), by Davies.

    The distribution function is obtained by numerical inversion of the characteristic
    function (Davies 1980, algorithm AS 155), with the truncation point and the grid chosen
    so that the total error is below ``acc``. The returned value is 1 minus that
    distribution function, exactly what ``CompQuadForm::davies(q, lambda, h, delta, sigma,
    lim, acc)$Qq`` returns in R. The absolute error is about ``acc``: p-values below it
    are not resolved and can come out as 0 or slightly negative, and p-values near 1 can
    exceed 1 by as much (see :func:`mixture_pvalue` for a p-value that is always usable).

    Parameters
    ----------
    q
        Point(s) at which the upper tail is evaluated. With one set of weights any shape;
        with ``weights`` of shape ``(n_sets, r)``, shape ``(n_sets,)`` or ``(n_sets, k)``
        (or a scalar, used for every set). Infinite values are allowed, NaN is not.
    weights
        The weights ``w_k``, shape ``(r,)`` or ``(n_sets, r)``; any sign.
    dof
        Degrees of freedom, non-negative integers broadcastable to ``weights`` (default 1).
    noncentrality
        Non-centrality parameters, non-negative, broadcastable to ``weights`` (default 0).
    sigma
        Coefficient of an added standard normal variable.
    lim
        Maximum number of integration terms (and of error-bound evaluations).
    acc
        Requested absolute accuracy of the distribution function.
    n_jobs
        Threads over the sets of weights (or over the points, for one set); -1 for all
        cores. The results do not depend on it.

    Returns
    -------
    DaviesResult
        ``pvalue``: float64 array shaped like ``q`` (a scalar for scalar ``q`` and
        one-dimensional weights), 1 - the computed distribution function. ``fault``: int
        array of the same shape, AS 155's fault code (see ``DAVIES_FAULTS``): 0 no fault;
        2 round-off possibly significant (the value is still returned); 1 or 4 no value
        computed, in which case ``pvalue`` is 2.0 as in R (the distribution function is
        reported as -1).

    Notes
    -----
    Results equal those of the original C code (``qfc`` in CompQuadForm) to the last bit
    in our comparisons, fault codes included, except where that code misbehaves:

    - a term with ``dof == 0`` and ``noncentrality == 0`` is the constant 0 and is dropped
      (the original still uses its weight to bound the range search, can meet a pole of
      the moment generating function there, and then may never return);
    - for ``|q|`` above about 1e154 the original's convergence-factor coefficient overflows
      and it returns 0.5; here the factor is skipped and the result is 0 or 1 (also for
      infinite ``q``).

    References
    ----------
    Davies, R. B. (1980). Algorithm AS 155: The distribution of a linear combination of
    chi-squared random variables. Applied Statistics 29, 323-333.

    Examples
    --------
    >>> result = davies([1.0, 5.0, 20.0], [1.0, 1.0])
    >>> result.pvalue.round(4).tolist(), result.fault.tolist()
    ([0.6065, 0.0821, 0.0], [0, 0, 0])
    >>> float(davies(8.0, [2.0, 1.0, 0.5], noncentrality=[0.0, 1.0, 0.0]).pvalue)
    0.1515...

    One set of weights per row, several statistics per row:

    >>> weights = np.array([[1.0, 1.0], [0.5, 0.5]])
    >>> davies([[1.0, 2.0], [1.0, 2.0]], weights).pvalue.round(4).tolist()
    [[0.6065, 0.3679], [0.3679, 0.1353]]
    """
    q_rows, lb, nc, dof_int, shape = _prepare(q, weights, dof, noncentrality, integer_dof=True)
    sigma = _check_scalar(sigma, "sigma", positive=False)
    acc = _check_scalar(acc, "acc", positive=True)
    if isinstance(lim, bool) or not isinstance(lim, int | np.integer) or lim < 1:
        raise SpatiomeInputError(f"lim must be a positive integer, got {lim!r}")
    # A term with no degrees of freedom and no non-centrality is the constant 0, but AS 155
    # would still let its weight bound the range search, where it can meet a pole of the
    # moment generating function (the original C code then loops forever): drop it.
    lb = np.where((dof_int == 0) & (nc == 0), 0.0, lb)
    workers = resolve_n_jobs(n_jobs)
    n_sets, n_points = q_rows.shape
    if q_rows.size == 0:
        return DaviesResult(np.empty(shape), np.empty(shape, dtype=np.int64))
    by_set = n_sets > 1

    def run(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        rows = slice(start, stop) if by_set else slice(None)
        points = np.ascontiguousarray(q_rows[rows] if by_set else q_rows[:, start:stop])
        cdf = np.empty(points.shape)
        fault = np.empty(points.shape, dtype=np.int64)
        _davies_sets(points, lb[rows], nc[rows], dof_int[rows], sigma, int(lim), acc, cdf, fault)
        return cdf, fault

    n_tasks = n_sets if by_set else n_points
    chunks = map_gene_chunks(
        run, n_tasks, chunk_size=max(1, -(-n_tasks // (4 * workers))), n_jobs=workers
    )
    axis = 0 if by_set else 1
    cdf = np.concatenate([c for c, _ in chunks], axis=axis)
    fault = np.concatenate([f for _, f in chunks], axis=axis)
    return DaviesResult(_shaped(1.0 - cdf, shape), _shaped(fault, shape))


def liu(
    q: float | np.ndarray,
    weights: np.ndarray,
    dof: float | np.ndarray | None = None,
    noncentrality: float | np.ndarray | None = None,
) -> np.ndarray | float:
    """P(Q > q) for Q = sum_k w_k chi2(dof_k, noncentrality_k), by Liu-Tang-Zhang.

    Q is matched, through its first four cumulants, to a (non-central) chi-square
    variable X: P(Q > q) = P(X > (q - mu_Q) / sigma_Q * sigma_X + mu_X). The formulas are
    those of ``CompQuadForm::liu``. With equal weights X is the exact distribution of
    Q / w, so the result is exact; otherwise it is an approximation whose relative error
    is largest far in the upper tail. The approximation is built for non-negative weights.

    Two details differ from ``CompQuadForm::liu``. Rounding can make the method's skewness
    test (s1^2 > s2) pass by a few ulps when the weights are equal (where s1^2 == s2
    exactly); R then takes its non-central branch with a spurious non-centrality of about
    1e-8 and moves the result by up to ~1e-12 relative. Here differences that small count
    as equality, so equal weights give the scaled chi-square exactly. And the non-central
    chi-square tail comes from scipy, which stays accurate below 1e-20 where R's
    ``pchisq(ncp > 0)`` truncates its series (relative differences up to ~1e-2 there).

    Parameters
    ----------
    q
        Point(s) at which the upper tail is evaluated; shapes as for :func:`davies`.
        NaN is not allowed.
    weights
        Non-negative weights, shape ``(r,)`` or ``(n_sets, r)``.
    dof
        Non-negative degrees of freedom broadcastable to ``weights`` (default 1;
        need not be integers).
    noncentrality
        Non-negative non-centralities broadcastable to ``weights`` (default 0).

    Returns
    -------
    numpy.ndarray or float
        The upper tail probabilities, shaped like ``q`` (a float for scalar ``q`` and
        one-dimensional weights). A set whose Q has zero variance (all weights, or all
        degrees of freedom and non-centralities, zero) gives NaN.

    References
    ----------
    Liu, H., Tang, Y. and Zhang, H. H. (2009). A new chi-square approximation to the
    distribution of non-negative definite quadratic forms in non-central normal variables.
    Computational Statistics & Data Analysis 53, 853-856.

    Examples
    --------
    >>> from scipy import stats
    >>> p = liu([1.0, 5.0], [2.0, 2.0])
    >>> bool(np.allclose(p, stats.chi2.sf(np.array([1.0, 5.0]) / 2.0, df=2), rtol=1e-12))
    True
    >>> round(float(liu(8.0, [2.0, 1.0, 0.5])), 4)  # Davies: 0.0880
    0.0908
    """
    q_rows, lb, nc, dof_real, shape = _prepare(q, weights, dof, noncentrality, integer_dof=False)
    if (lb < 0).any():
        raise SpatiomeInputError(
            "liu() needs non-negative weights (its chi-square approximation assumes them); "
            "use davies() for weights of mixed sign"
        )
    return _shaped(_liu_rows(q_rows, lb, dof_real, nc), shape)


def mixture_pvalue(
    q: float | np.ndarray,
    weights: np.ndarray,
    dof: int | np.ndarray | None = None,
    noncentrality: float | np.ndarray | None = None,
    *,
    method: str = "davies",
    acc: float = 1e-4,
    lim: int = 10000,
    n_jobs: int = 1,
) -> np.ndarray | float:
    """One p-value P(Q > q) per statistic for Q = sum_k w_k chi2(dof_k, noncentrality_k).

    Parameters
    ----------
    q, weights, dof, noncentrality
        As for :func:`davies` (shapes, broadcasting, integer ``dof``).
    method
        - ``"davies"`` (default): SPARK-X's rule. :func:`davies` with ``acc`` and ``lim``;
          where its p-value is <= 0 (beyond its accuracy, far in the upper tail) or where
          it computed no value (fault 1 or 4), :func:`liu` instead. Davies' values are
          otherwise kept as they are, so they can exceed 1 by up to about ``acc``, and
          p-values below ``acc`` have an absolute error of about ``acc``. With this rule
          and the defaults the p-values of R's SPARK-X (``sparkx_pval``) are reproduced.
          Sets with a negative weight get NaN where Liu would be needed.
        - ``"liu"``: :func:`liu` everywhere.
        - ``"exact"``: for sets whose weights are all equal (to a relative 1e-9), w, with
          total degrees of freedom H and total non-centrality D: Q / w is
          chi2(H, D) and the p-value is exact to floating point, also deep in the tail.
    acc, lim, n_jobs
        Passed to :func:`davies`.

    Returns
    -------
    numpy.ndarray or float
        P-values shaped like ``q``. Unlike SPARK-X in R, where a failed Davies integration
        (fault 1 or 4) leaves the placeholder 2.0, those entries fall back to Liu.

    Examples
    --------
    >>> from scipy import stats
    >>> q = np.array([1.0, 10.0, 60.0])
    >>> p = mixture_pvalue(q, [1.0, 1.0])
    >>> p[:2].round(4).tolist()
    [0.6065, 0.0067]
    >>> bool(np.isclose(p[2], stats.chi2.sf(60.0, 2), rtol=1e-12))  # Liu, exact here
    True
    >>> float(mixture_pvalue(60.0, [1.0, 1.0], method="exact"))
    9.357...e-14
    """
    if method not in MIXTURE_METHODS:
        raise SpatiomeInputError(f"method must be one of {MIXTURE_METHODS}, got {method!r}")
    if method == "liu":
        return liu(q, weights, dof, noncentrality)
    if method == "exact":
        return _exact_equal_weights(q, weights, dof, noncentrality)
    result = davies(q, weights, dof, noncentrality, lim=lim, acc=acc, n_jobs=n_jobs)
    pvalue = np.array(result.pvalue, dtype=np.float64)
    fallback = (pvalue <= 0.0) | (result.fault == 1) | (result.fault == 4)
    if fallback.any():
        q_rows, lb, nc, dof_int, shape = _prepare(q, weights, dof, noncentrality, integer_dof=True)
        flat = fallback.reshape(q_rows.shape)
        rows = np.nonzero(flat.any(axis=1))[0]
        approx = _liu_rows(q_rows[rows], lb[rows], dof_int[rows].astype(np.float64), nc[rows])
        approx[(lb[rows] < 0).any(axis=1)] = np.nan
        filled = pvalue.reshape(q_rows.shape)
        filled[rows] = np.where(flat[rows], approx, filled[rows])
        pvalue = filled.reshape(pvalue.shape)
    return pvalue[()] if pvalue.ndim == 0 else pvalue


def _exact_equal_weights(
    q: float | np.ndarray,
    weights: np.ndarray,
    dof: int | np.ndarray | None,
    noncentrality: float | np.ndarray | None,
) -> np.ndarray | float:
    q_rows, lb, nc, dof_real, shape = _prepare(q, weights, dof, noncentrality, integer_dof=False)
    common = lb.mean(axis=1)
    spread = lb.max(axis=1) - lb.min(axis=1)
    unequal = spread > _EXACT_EQUAL_RTOL * np.abs(common)
    if unequal.any():
        row = int(np.nonzero(unequal)[0][0])
        raise SpatiomeInputError(
            f"method='exact' needs equal weights within each set; set {row} has weights "
            f"{lb[row].tolist()}: use method='davies' or 'liu'"
        )
    grid = q_rows.shape
    scale = np.broadcast_to(common[:, None], grid)
    total_dof = np.broadcast_to(dof_real.sum(axis=1)[:, None], grid)
    total_nc = np.broadcast_to(nc.sum(axis=1)[:, None], grid)
    # Q = w X with X ~ chi2(H, D): P(Q > q) = P(X > q / w) for w > 0 and P(X < q / w) for
    # w < 0; Q is identically 0 when w = 0 or H = D = 0.
    out = (q_rows < 0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = q_rows / scale
    random = (scale != 0) & (total_dof + total_nc > 0)
    for upper in (True, False):
        sel = random & ((scale > 0) == upper)
        central = sel & (total_nc == 0)
        noncentral = sel & (total_nc > 0)
        chi2_tail = stats.chi2.sf if upper else stats.chi2.cdf
        ncx2_tail = stats.ncx2.sf if upper else stats.ncx2.cdf
        out[central] = chi2_tail(x[central], total_dof[central])
        if noncentral.any():
            out[noncentral] = ncx2_tail(x[noncentral], total_dof[noncentral], total_nc[noncentral])
    return _shaped(out, shape)


def _liu_rows(q_rows: np.ndarray, lb: np.ndarray, dof: np.ndarray, nc: np.ndarray) -> np.ndarray:
    """Liu's approximation for (n_sets, k) points and (n_sets, r) parameters."""

    def total(values: np.ndarray) -> np.ndarray:
        # R's sum() accumulates in extended precision; so does this, to keep the same
        # rounding in the cumulants that decide the branch below.
        return values.sum(axis=1, dtype=np.longdouble).astype(np.float64)

    lb2 = lb * lb
    lb3 = np.power(lb, 3.0)
    lb4 = np.power(lb, 4.0)
    c1 = total(lb * dof) + total(lb * nc)
    c2 = total(lb2 * dof) + 2.0 * total(lb2 * nc)
    c3 = total(lb3 * dof) + 3.0 * total(lb3 * nc)
    c4 = total(lb4 * dof) + 4.0 * total(lb4 * nc)
    with np.errstate(divide="ignore", invalid="ignore"):
        s1 = c3 / np.power(c2, 1.5)
        s2 = c4 / (c2 * c2)
        skewed = s1 * s1 > s2 * (1.0 + _LIU_EQUALITY_RTOL)
        root = np.sqrt(np.where(skewed, s1 * s1 - s2, 0.0))
        a = np.where(skewed, 1.0 / (s1 - root), 1.0 / s1)
        delta = np.where(skewed, s1 * np.power(a, 3.0) - a * a, 0.0)
        df = np.where(skewed, a * a - 2.0 * delta, np.power(c2, 3.0) / (c3 * c3))
        sigma_q = np.sqrt(2.0 * c2)
        sigma_x = math.sqrt(2.0) * a
        mu_x = df + delta
        x = (q_rows - c1[:, None]) / sigma_q[:, None] * sigma_x[:, None] + mu_x[:, None]
    out = np.full(q_rows.shape, np.nan)
    shape = q_rows.shape
    df_b = np.broadcast_to(df[:, None], shape)
    delta_b = np.broadcast_to(delta[:, None], shape)
    valid = np.broadcast_to((c2 > 0)[:, None], shape) & np.isfinite(df_b) & (df_b > 0)
    central = valid & (delta_b == 0)
    noncentral = valid & (delta_b > 0)
    # R evaluates pchisq(x, df, ncp = 0) through its non-central routine, which returns
    # the central value for ncp = 0.
    out[central] = stats.chi2.sf(x[central], df_b[central])
    if noncentral.any():
        out[noncentral] = stats.ncx2.sf(x[noncentral], df_b[noncentral], delta_b[noncentral])
    return out


def _prepare(
    q: float | np.ndarray,
    weights: np.ndarray,
    dof: float | np.ndarray | None,
    noncentrality: float | np.ndarray | None,
    *,
    integer_dof: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[int, ...]]:
    """Validate and lay out the inputs as (n_sets, k) points and (n_sets, r) parameters."""
    lb = _numeric(weights, "weights")
    if lb.ndim not in (1, 2) or lb.shape[-1] == 0 or lb.size == 0:
        raise SpatiomeInputError(
            f"weights must have shape (r,) or (n_sets, r) with r >= 1, got shape {lb.shape}"
        )
    if not np.isfinite(lb).all():
        raise SpatiomeInputError("weights contain NaN or infinite values: fix the input")
    dof_values = _broadcast(1 if dof is None else dof, lb.shape, "dof")
    if not np.isfinite(dof_values).all() or (dof_values < 0).any():
        raise SpatiomeInputError("dof must be finite and non-negative")
    if integer_dof:
        if not np.array_equal(dof_values, np.round(dof_values)):
            raise SpatiomeInputError(
                "dof must be integers for Davies' method (AS 155 takes integer degrees of "
                "freedom); use liu() for non-integer ones"
            )
        dof_values = dof_values.astype(np.int64)
    nc = _broadcast(0.0 if noncentrality is None else noncentrality, lb.shape, "noncentrality")
    if not np.isfinite(nc).all() or (nc < 0).any():
        raise SpatiomeInputError("noncentrality must be finite and non-negative")

    points = _numeric(q, "q")
    if np.isnan(points).any():
        raise SpatiomeInputError(
            f"q contains {int(np.isnan(points).sum())} NaN values: drop them before the call"
        )
    if lb.ndim == 1:
        shape = points.shape
        q_rows = points.reshape(1, -1)
        lb, nc, dof_values = lb[None, :], nc[None, :], dof_values[None, :]
    else:
        n_sets = lb.shape[0]
        if points.ndim == 0:
            points = np.full(n_sets, float(points))
        if points.ndim > 2 or points.shape[0] != n_sets:
            raise SpatiomeInputError(
                f"with weights of shape {lb.shape}, q must have shape ({n_sets},) or "
                f"({n_sets}, k): one row of points per set of weights; got {points.shape}"
            )
        shape = points.shape
        q_rows = points.reshape(n_sets, -1)
    return (
        np.ascontiguousarray(q_rows),
        np.ascontiguousarray(lb),
        np.ascontiguousarray(nc),
        np.ascontiguousarray(dof_values),
        shape,
    )


def _numeric(values: object, name: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise SpatiomeInputError(f"{name} must be numeric: {err}") from None


def _broadcast(values: object, shape: tuple[int, ...], name: str) -> np.ndarray:
    array = _numeric(values, name)
    try:
        return np.array(np.broadcast_to(array, shape))
    except ValueError:
        raise SpatiomeInputError(
            f"{name} of shape {array.shape} does not match weights of shape {shape}: pass "
            f"one value, one per term (shape ({shape[-1]},)) or one per weight"
        ) from None


def _check_scalar(value: object, name: str, *, positive: bool) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SpatiomeInputError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or (positive and number <= 0):
        kind = "a positive finite number" if positive else "finite"
        raise SpatiomeInputError(f"{name} must be {kind}, got {value!r}")
    return number


def _shaped(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = values.reshape(shape)
    return out[()] if out.ndim == 0 else out


# Numba kernels of AS 155. ``counter`` (one int64) counts evaluations of the error bounds;
# past ``lim`` the search is abandoned (fault 4), and every loop below stops as soon as
# that happens. error_model="numpy" gives IEEE division (x / 0 = inf, as in C), which the
# algorithm relies on at degenerate points (e.g. a convergence coefficient at x = 0).


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _exp_floored(x):  # pragma: no cover - compiled
    # AS 155 flushes exp(x) to 0 below -50.
    return 0.0 if x < -50.0 else math.exp(x)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _log1(x, minus_x):  # pragma: no cover - compiled
    """log(1 + x), or log(1 + x) - x when ``minus_x``, accurate for small x."""
    if x != x:
        return x  # NaN would never leave the series loop below
    if abs(x) > 0.1:
        value = math.log(1.0 + x)
        return value - x if minus_x else value
    # log(1 + x) = 2 atanh(y) = 2 (y + y^3/3 + y^5/5 + ...) with y = x / (2 + x); the
    # leading 2y - x of the second form is written -x y to avoid cancellation.
    y = x / (2.0 + x)
    term = 2.0 * (y * y * y)
    k = 3.0
    total = -x * y if minus_x else 2.0 * y
    y2 = y * y
    following = total + term / k
    while following != total:
        total = following
        k += 2.0
        term *= y2
        following = total + term / k
    return total


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _magnitude_order(lb, order):  # pragma: no cover - compiled
    """Indices of ``lb`` by decreasing |lb|, ties in their original order."""
    for j in range(lb.shape[0]):
        size = abs(lb[j])
        k = j - 1
        while k >= 0 and size > abs(lb[order[k]]):
            order[k + 1] = order[k]
            k -= 1
        order[k + 1] = j


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _tail_bound(u, lb, nc, dof, sigsq, counter):  # pragma: no cover - compiled
    """Chernoff bound exp(K(u) - u K'(u)) and the point t = K'(u) it applies to.

    K is Q's cumulant generating function; the bound is on P(Q > t) for u > 0 and on
    P(Q < t) for u < 0.
    """
    counter[0] += 1
    cutoff = u * sigsq
    exponent = u * cutoff
    u2 = 2.0 * u
    for j in range(lb.shape[0] - 1, -1, -1):
        x = u2 * lb[j]
        y = 1.0 - x
        cutoff = cutoff + lb[j] * (nc[j] / y + dof[j]) / y
        exponent = exponent + nc[j] * ((x / y) * (x / y)) + dof[j] * (x * x / y + _log1(-x, True))
    return _exp_floored(-0.5 * exponent), cutoff


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _range_end(
    acc, u_start, lb, nc, dof, sigsq, mean, lmax, lmin, counter, lim
):  # pragma: no cover - compiled
    """A point beyond which Q has tail probability below ``acc``, searching upwards for
    u_start > 0 and downwards for u_start < 0; also returns the final u for reuse.
    """
    u2 = u_start
    u1 = 0.0
    c1 = mean
    rb = 2.0 * (lmax if u2 > 0.0 else lmin)
    # Double u until the bound drops below acc, then bisect until the cutoff moves by less
    # than 10 % of its distance from the mean.
    while True:
        bound, c2 = _tail_bound(u2 / (1.0 + u2 * rb), lb, nc, dof, sigsq, counter)
        # "not bound > acc" rather than "bound <= acc": a NaN bound (u at a pole of the
        # moment generating function) also ends the search.
        if counter[0] > lim or not bound > acc:
            break
        u1 = u2
        c1 = c2
        u2 = 2.0 * u2
    ratio = (c1 - mean) / (c2 - mean)
    while ratio < 0.9 and counter[0] <= lim:
        u = (u1 + u2) / 2.0
        bound, cutoff = _tail_bound(u / (1.0 + u * rb), lb, nc, dof, sigsq, counter)
        if bound > acc:
            u1 = u
            c1 = cutoff
        else:
            u2 = u
            c2 = cutoff
        ratio = (c1 - mean) / (c2 - mean)
    return c2, u2


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _truncation_error(u, tausq, lb, nc, dof, sigsq, counter):  # pragma: no cover - compiled
    """Bound on the error of cutting the inversion integral at u (Davies 1980, sec. 3)."""
    counter[0] += 1
    noncentral = 0.0
    log_large = 0.0
    log_large1 = 0.0
    n_large = 0
    scaled = (sigsq + tausq) * (u * u)
    log_small = 2.0 * scaled
    u2 = 2.0 * u
    for j in range(lb.shape[0]):
        x = (u2 * lb[j]) * (u2 * lb[j])
        noncentral = noncentral + nc[j] * x / (1.0 + x)
        if x > 1.0:
            log_large = log_large + dof[j] * math.log(x)
            log_large1 = log_large1 + dof[j] * _log1(x, False)
            n_large = n_large + dof[j]
        else:
            log_small = log_small + dof[j] * _log1(x, False)
    noncentral = 0.5 * noncentral
    log_large = log_small + log_large
    log_large1 = log_small + log_large1
    x = _exp_floored(-noncentral - 0.25 * log_large) / _PI
    y = _exp_floored(-noncentral - 0.25 * log_large1) / _PI
    err1 = 1.0 if n_large == 0 else x * 2.0 / n_large
    err2 = 2.5 * y if log_large1 > 1.0 else 1.0
    if err2 < err1:
        err1 = err2
    x = 0.5 * scaled
    err2 = 1.0 if x <= y else y / x
    return err1 if err1 < err2 else err2


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _truncation_point(
    u_start, acc, lb, nc, dof, sigsq, counter, lim
):  # pragma: no cover - compiled
    """A truncation point u with error bound <= acc: powers of 4 from u_start bracket the
    smallest one, then divisions by 2, 1.4, 1.2 and 1.1 bring u within about 10 % of it.
    """
    ut = u_start
    u = ut / 4.0
    if _truncation_error(u, 0.0, lb, nc, dof, sigsq, counter) > acc:
        u = ut
        while _truncation_error(u, 0.0, lb, nc, dof, sigsq, counter) > acc and counter[0] <= lim:
            ut = ut * 4.0
            u = ut
    else:
        ut = u
        u = u / 4.0
        while _truncation_error(u, 0.0, lb, nc, dof, sigsq, counter) <= acc and counter[0] <= lim:
            ut = u
            u = u / 4.0
    for divisor in (2.0, 1.4, 1.2, 1.1):
        if counter[0] > lim:
            break
        u = ut / divisor
        if _truncation_error(u, 0.0, lb, nc, dof, sigsq, counter) <= acc:
            ut = u
    return ut


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _integrate(
    nterm, interval, tausq, damped, c, lb, nc, dof, sigsq, integral, abs_sum
):  # pragma: no cover - compiled
    """Add the midpoint-rule terms k = nterm..0 of the inversion integral at c.

    With ``damped`` each term is multiplied by 1 - exp(-tausq u^2 / 2): the auxiliary
    integration that pays for a convergence factor exp(-tausq u^2 / 2) added afterwards.
    Returns the updated integral and sum of absolute terms (for the round-off check).
    """
    step_over_pi = interval / _PI
    for k in range(nterm, -1, -1):
        u = (k + 0.5) * interval
        phase = -2.0 * u * c
        abs_phase = abs(phase)
        log_modulus = -0.5 * sigsq * (u * u)
        previous = np.nan
        log_factor = 0.0
        angle = 0.0
        for j in range(lb.shape[0] - 1, -1, -1):
            x = 2.0 * lb[j] * u
            y = x * x
            # Equal weights (SPARK-X's case) give equal x: reuse its logarithm and arc
            # tangent, the costly part of a term. The sums keep their order, so the result
            # is the same to the last bit.
            if lb[j] != previous:
                log_factor = _log1(y, False)
                angle = math.atan(x)
                previous = lb[j]
            log_modulus = log_modulus - 0.25 * dof[j] * log_factor
            y = nc[j] * x / (1.0 + y)
            z = dof[j] * angle + y
            phase = phase + z
            abs_phase = abs_phase + abs(z)
            log_modulus = log_modulus - 0.5 * x * y
        x = step_over_pi * _exp_floored(log_modulus) / u
        if damped:
            x = x * (1.0 - _exp_floored(-0.5 * tausq * (u * u)))
        integral = integral + math.sin(0.5 * phase) * x
        abs_sum = abs_sum + 0.5 * abs_phase * x
    return integral, abs_sum


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _convergence_coef(x, lb, nc, dof, order, counter):  # pragma: no cover - compiled
    """Coefficient of tausq in the error of the distribution function at x caused by a
    convergence factor exp(-tausq u^2 / 2); ``failed`` when no useful bound exists.
    """
    counter[0] += 1
    axl = abs(x)
    sign = 1.0 if x > 0.0 else -1.0
    excess = 0.0
    # Walk the terms of the same sign as x from the smallest |weight| up; the first one
    # that the remaining distance cannot absorb fixes the bound, counting the degrees of
    # freedom of all larger terms.
    for j in range(lb.shape[0] - 1, -1, -1):
        t = order[j]
        if lb[t] * sign > 0.0:
            size = abs(lb[t])
            axl1 = axl - size * (dof[t] + nc[t])
            axl2 = size / _LOG2_OVER_8
            if axl1 > axl2:
                axl = axl1
            else:
                if axl > axl2:
                    axl = axl2
                excess = (axl - axl1) / size
                for k in range(j - 1, -1, -1):
                    excess = excess + (dof[order[k]] + nc[order[k]])
                break
    if excess > 100.0:
        return 1.0, True
    return math.pow(2.0, excess / 4.0) / (_PI * (axl * axl)), False


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _davies_cdf(
    c, lb, nc, dof, order, sigsq, sd, mean, lmax, lmin, utx, count0, lim, acc
):  # pragma: no cover - compiled
    """P(Q <= c) and the fault code, for one point of a prepared set (AS 155's main
    routine from the convergence-factor decision on); -1.0 when no value is computed.
    """
    counter = np.empty(1, dtype=np.int64)
    counter[0] = count0
    if count0 > lim:
        return -1.0, 4
    acc1 = acc
    almx = lmax if lmax >= -lmin else -lmin
    # A convergence factor exp(-tausq u^2 / 2) shortens the integral when one weight
    # dominates; keep it only if its own error stays within budget.
    if c != 0.0 and almx > 0.07 * sd:
        coef, failed = _convergence_coef(c, lb, nc, dof, order, counter)
        if counter[0] > lim:
            return -1.0, 4
        tausq = 0.25 * acc1 / coef
        # A zero coefficient only comes from overflow (|c| above about 1e154); AS 155 would
        # then use an infinite tausq and return 0.5, so treat it as a failed bound instead
        # and let the range search below return 0 or 1.
        if not failed and coef > 0.0:
            error = _truncation_error(utx, tausq, lb, nc, dof, sigsq, counter)
            if counter[0] > lim:
                return -1.0, 4
            if error < 0.2 * acc1:
                sigsq = sigsq + tausq
                utx = _truncation_point(utx, 0.25 * acc1, lb, nc, dof, sigsq, counter, lim)
                if counter[0] > lim:
                    return -1.0, 4
    acc1 = 0.5 * acc1
    up = 4.5 / sd
    un = -up
    integral = 0.0
    abs_sum = 0.0
    xlim = float(lim)
    while True:
        upper, up = _range_end(acc1, up, lb, nc, dof, sigsq, mean, lmax, lmin, counter, lim)
        if counter[0] > lim:
            return -1.0, 4
        d1 = upper - c
        if d1 < 0.0:
            return 1.0, 0
        lower, un = _range_end(acc1, un, lb, nc, dof, sigsq, mean, lmax, lmin, counter, lim)
        if counter[0] > lim:
            return -1.0, 4
        d2 = c - lower
        if d2 < 0.0:
            return 0.0, 0
        # The grid spacing must resolve the distance from c to the farther range end.
        interval = 2.0 * _PI / (d1 if d1 > d2 else d2)
        xnt = utx / interval
        xntm = 3.0 / math.sqrt(acc1)
        if not xnt > xntm * 1.5:
            break
        # Too many terms: integrate a coarser grid with a damped integrand first, then
        # continue with the convergence factor it paid for.
        if xntm > xlim:
            return -1.0, 1
        ntm = int(math.floor(xntm + 0.5))
        interval1 = utx / ntm
        x = 2.0 * _PI / interval1
        if x <= abs(c):
            break
        coef_lo, failed_lo = _convergence_coef(c - x, lb, nc, dof, order, counter)
        coef_hi, failed_hi = _convergence_coef(c + x, lb, nc, dof, order, counter)
        if counter[0] > lim:
            return -1.0, 4
        tausq = 0.33 * acc1 / (1.1 * (coef_lo + coef_hi))
        if failed_lo or failed_hi:
            break
        acc1 = 0.67 * acc1
        integral, abs_sum = _integrate(
            ntm, interval1, tausq, True, c, lb, nc, dof, sigsq, integral, abs_sum
        )
        xlim = xlim - xntm
        sigsq = sigsq + tausq
        utx = _truncation_point(utx, 0.25 * acc1, lb, nc, dof, sigsq, counter, lim)
        if counter[0] > lim:
            return -1.0, 4
        acc1 = 0.75 * acc1
    if xnt > xlim:
        return -1.0, 1
    nt = int(math.floor(xnt + 0.5))
    integral, abs_sum = _integrate(
        nt, interval, 0.0, False, c, lb, nc, dof, sigsq, integral, abs_sum
    )
    # Adding acc / 10 to the sum of absolute terms changes nothing when those terms are so
    # large that cancellation can cost the requested accuracy.
    fault = 2 if abs_sum + acc / 10.0 == abs_sum else 0
    return 0.5 - integral, fault


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _davies_sets(q, lb, nc, dof, sigma, lim, acc, cdf, fault):  # pragma: no cover - compiled
    """Fill ``cdf`` and ``fault`` (n_sets, k) for points ``q`` and (n_sets, r) parameters."""
    n_sets, n_points = q.shape
    r = lb.shape[1]
    order = np.empty(r, dtype=np.int64)
    counter = np.empty(1, dtype=np.int64)
    for i in range(n_sets):
        w = lb[i]
        h = dof[i]
        d = nc[i]
        sigsq = sigma * sigma
        sd = sigsq
        mean = 0.0
        lmax = 0.0
        lmin = 0.0
        for j in range(r):
            sd = sd + w[j] * w[j] * (float(2 * h[j]) + 4.0 * d[j])
            mean = mean + w[j] * (h[j] + d[j])
            if lmax < w[j]:
                lmax = w[j]
            elif lmin > w[j]:
                lmin = w[j]
        if sd == 0.0:
            # Q is identically 0.
            for col in range(n_points):
                cdf[i, col] = 1.0 if q[i, col] > 0.0 else 0.0
                fault[i, col] = 0
            continue
        sd = math.sqrt(sd)
        _magnitude_order(w, order)
        # The truncation point without convergence factor does not depend on q: find it
        # once per set, and start every point from the evaluation count it cost.
        counter[0] = 0
        utx = _truncation_point(16.0 / sd, 0.5 * acc, w, d, h, sigsq, counter, lim)
        count0 = counter[0]
        for col in range(n_points):
            cdf[i, col], fault[i, col] = _davies_cdf(
                q[i, col], w, d, h, order, sigsq, sd, mean, lmax, lmin, utx, count0, lim, acc
            )


__all__ = ["DAVIES_FAULTS", "DaviesResult", "davies", "liu", "mixture_pvalue"]
