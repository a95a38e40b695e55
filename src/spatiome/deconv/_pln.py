"""Poisson-log-normal likelihood of one count and its derivatives in the Poisson rate.

A count ``x`` is Poisson with rate ``lam * exp(sigma * z)``, ``z ~ N(0, 1)``: the
per-gene random effect of RCTD. The marginal probability is an integral over ``z``,
computed by adaptive Gauss-Hermite quadrature (nodes centred on the integrand's mode
and scaled by its curvature), which stays accurate for large counts where a fixed rule
misses the narrow peak. Model fits need the log probability and its first two
derivative in ``lam`` for every spot x gene entry at every iteration, plus the Fisher
information ``E[(d log P / d lam)^2]`` (a function of ``lam`` alone) as the weight of
Fisher scoring. :class:`PLNTable` tabulates them once per ``sigma`` on a grid of
``log(lam)`` for counts up to ``X_CAP`` and interpolates; rarer entries (larger counts)
are integrated directly.
"""

from __future__ import annotations

import math

import numba
import numpy as np

X_CAP = 200
LOG_LAM_MIN, LOG_LAM_MAX, LOG_LAM_STEP = -14.0, 12.0, 0.01
N_NODES = 24
MIN_RATE = 1e-6


def _nodes() -> tuple[np.ndarray, np.ndarray]:
    nodes, weights = np.polynomial.hermite_e.hermegauss(N_NODES)
    return nodes, np.log(weights / weights.sum())


_T, _LOG_W = _nodes()


@numba.njit(cache=True)
def pln_point(x, lam, sigma, nodes, log_weights):
    """(log P, d log P / d lam, d2 log P / d lam2) for one count and rate."""
    lam = max(lam, MIN_RATE)
    log_lam = math.log(lam)
    lgx = math.lgamma(x + 1.0)
    if sigma <= 0.0:
        return x * log_lam - lam - lgx, x / lam - 1.0, -x / (lam * lam)
    # mode of h(z) = x*sigma*z - lam*exp(sigma*z) - z^2/2 (concave): Newton from a start
    # between the prior mode 0 and the likelihood mode log(x/lam)/sigma
    z = 0.0
    if x > 0:
        z = max(-8.0, min(8.0, math.log(x / lam) / sigma / (1.0 + 1.0 / (sigma * sigma * x))))
    for _ in range(50):
        e = lam * math.exp(sigma * z)
        grad = x * sigma - e * sigma - z
        curv = e * sigma * sigma + 1.0
        step = grad / curv
        z += step
        if abs(step) < 1e-10:
            break
    e = lam * math.exp(sigma * z)
    scale = 1.0 / math.sqrt(e * sigma * sigma + 1.0)
    n = nodes.shape[0]
    terms = np.empty(n)
    top = -np.inf
    for k in range(n):
        zk = z + scale * nodes[k]
        ek = math.exp(sigma * zk)
        terms[k] = (
            log_weights[k]
            + 0.5 * nodes[k] * nodes[k]
            + x * (log_lam + sigma * zk)
            - lam * ek
            - 0.5 * zk * zk
        )
        top = max(top, terms[k])
    total = 0.0
    for k in range(n):
        terms[k] = math.exp(terms[k] - top)
        total += terms[k]
    log_p = top + math.log(total) + math.log(scale) - lgx
    d1 = 0.0
    s2 = 0.0
    for k in range(n):
        r = terms[k] / total
        ek = math.exp(sigma * (z + scale * nodes[k]))
        u = x / lam - ek
        d1 += r * u
        s2 += r * (u * u - x / (lam * lam))
    return log_p, d1, s2 - d1 * d1


@numba.njit(cache=True)
def fisher_approx(lam, sigma):
    """Fisher information of a count with the PLN's mean and variance, Gaussian approximation.

    Used where the table's counts do not cover the distribution (large rates).
    """
    m = math.exp(0.5 * sigma * sigma)
    v2 = math.exp(2.0 * sigma * sigma) - m * m
    var = lam * m + lam * lam * v2
    dvar = m + 2.0 * lam * v2
    return m * m / var + dvar * dvar / (2.0 * var * var)


@numba.njit(cache=True, parallel=True)
def _build(sigma, nodes, log_weights, n_grid, x_cap):
    log_p = np.empty((x_cap + 1, n_grid))
    d1 = np.empty((x_cap + 1, n_grid))
    for x in numba.prange(x_cap + 1):
        for j in range(n_grid):
            lam = math.exp(LOG_LAM_MIN + j * LOG_LAM_STEP)
            a, b, _ = pln_point(float(x), lam, sigma, nodes, log_weights)
            log_p[x, j] = a
            d1[x, j] = b
    fisher = np.empty(n_grid)
    for j in numba.prange(n_grid):
        mass = 0.0
        info = 0.0
        for x in range(x_cap + 1):
            p = math.exp(log_p[x, j])
            mass += p
            info += p * d1[x, j] * d1[x, j]
        if mass > 1.0 - 1e-6:
            fisher[j] = info
        else:
            fisher[j] = fisher_approx(math.exp(LOG_LAM_MIN + j * LOG_LAM_STEP), sigma)
    return log_p, d1, fisher


class PLNTable:
    """Tabulated Poisson-log-normal log probability and derivatives for one ``sigma``."""

    def __init__(self, sigma: float):
        self.sigma = float(sigma)
        n_grid = int(round((LOG_LAM_MAX - LOG_LAM_MIN) / LOG_LAM_STEP)) + 1
        self.log_p, self.d1, self.fisher = _build(self.sigma, _T, _LOG_W, n_grid, X_CAP)

    def evaluate(self, counts: np.ndarray, rates: np.ndarray, *, derivatives: bool = True):
        """Log probability, and with ``derivatives`` the score and Fisher information.

        ``counts`` and ``rates`` are dense arrays of one shape; the result stacks the
        outputs on a new first axis.
        """
        out = np.empty((3 if derivatives else 1,) + counts.shape)
        flat_counts = np.ascontiguousarray(counts, dtype=np.float64).ravel()
        lookup = _lookup_parallel if flat_counts.size > _PARALLEL_SIZE else _lookup_serial
        lookup(
            flat_counts,
            np.ascontiguousarray(rates, dtype=np.float64).ravel(),
            self.log_p,
            self.d1,
            self.fisher,
            self.sigma,
            _T,
            _LOG_W,
            derivatives,
            out.reshape(out.shape[0], -1),
        )
        return out


_PARALLEL_SIZE = 200_000


def _lookup_body(
    counts, rates, t_log_p, t_d1, t_fisher, sigma, nodes, log_weights, derivatives, out
):
    n_grid = t_log_p.shape[1]
    x_cap = t_log_p.shape[0] - 1
    for i in numba.prange(counts.shape[0]):
        x = counts[i]
        lam = max(rates[i], MIN_RATE)
        pos = (math.log(lam) - LOG_LAM_MIN) / LOG_LAM_STEP
        on_grid = pos >= 0.0 and pos < n_grid - 1
        j = int(pos) if on_grid else 0
        f = pos - j
        if int(x) <= x_cap and on_grid:
            xi = int(x)
            out[0, i] = (1.0 - f) * t_log_p[xi, j] + f * t_log_p[xi, j + 1]
            if derivatives:
                out[1, i] = (1.0 - f) * t_d1[xi, j] + f * t_d1[xi, j + 1]
        else:
            a, b, _ = pln_point(x, lam, sigma, nodes, log_weights)
            out[0, i] = a
            if derivatives:
                out[1, i] = b
        if derivatives:
            if on_grid and t_fisher.shape[0] == n_grid:
                out[2, i] = (1.0 - f) * t_fisher[j] + f * t_fisher[j + 1]
            else:
                out[2, i] = fisher_approx(lam, sigma)


_lookup_serial = numba.njit(cache=True)(_lookup_body)
_lookup_parallel = numba.njit(cache=True, parallel=True)(_lookup_body)


def log_probability(counts: np.ndarray, rates: np.ndarray, sigma: float) -> np.ndarray:
    """Log PLN probability computed directly (no table), for checks and small inputs."""
    counts = np.asarray(counts, dtype=np.float64)
    rates = np.broadcast_to(np.asarray(rates, dtype=np.float64), counts.shape)
    out = np.empty((1,) + counts.shape)
    flat = out.reshape(1, -1)
    lookup = _lookup_parallel if counts.size > _PARALLEL_SIZE else _lookup_serial
    lookup(
        counts.ravel().copy(),
        rates.ravel().copy(),
        np.full((0, 1), np.nan),
        np.empty((1, 1)),
        np.empty(0),
        float(sigma),
        _T,
        _LOG_W,
        False,
        flat,
    )
    return out[0]
