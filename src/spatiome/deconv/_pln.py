"""Poisson-log-normal likelihood of one count and its derivatives in the Poisson rate.

A count ``x`` is Poisson with rate ``lam * exp(sigma * z)``, ``z ~ N(0, 1)``: the
per-gene random effect of RCTD. The marginal probability is an integral over ``z``,
computed by adaptive Gauss-Hermite quadrature (nodes centred on the integrand's mode
and scaled by its curvature), which stays accurate for large counts where a fixed rule
misses the narrow peak. Model fits need the log probability and its first two
derivative in ``lam`` for every spot x gene entry at every iteration, plus the Fisher
information ``E[(d log P / d lam)^2]`` (a function of ``lam`` alone) as the weight of
Fisher scoring. :class:`PLNTable` tabulates them for one ``sigma`` on a grid of
``log(lam)`` for counts up to ``X_CAP``, each column of the grid when a lookup first
reaches it, and interpolates; rarer entries (larger counts) are integrated directly.
:func:`pln_table` keeps the recently used tables, so that later fits in the process
reuse them.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import NamedTuple

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
    n = nodes.shape[0]
    lgx = math.lgamma(x + 1.0)
    return _pln_point(x, lam, sigma, nodes, log_weights, lgx, np.empty(n), np.empty(n), True)


@numba.njit(cache=True)
def _pln_point(x, lam, sigma, nodes, log_weights, lgx, terms, factors, derivatives):
    """:func:`pln_point` given ``lgx = log(x!)`` and two scratch arrays of ``len(nodes)``.

    Callers that evaluate many points hoist the log factorial and the allocations; without
    ``derivatives`` both derivatives are returned as 0.
    """
    lam = max(lam, MIN_RATE)
    log_lam = math.log(lam)
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
    top = -np.inf
    for k in range(n):
        zk = z + scale * nodes[k]
        # exp(sigma * z_k): the node's factor on the rate, needed again for the score
        factors[k] = math.exp(sigma * zk)
        terms[k] = (
            log_weights[k]
            + 0.5 * nodes[k] * nodes[k]
            + x * (log_lam + sigma * zk)
            - lam * factors[k]
            - 0.5 * zk * zk
        )
        top = max(top, terms[k])
    total = 0.0
    for k in range(n):
        terms[k] = math.exp(terms[k] - top)
        total += terms[k]
    log_p = top + math.log(total) + math.log(scale) - lgx
    if not derivatives:
        return log_p, 0.0, 0.0
    d1 = 0.0
    s2 = 0.0
    for k in range(n):
        r = terms[k] / total
        u = x / lam - factors[k]
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
def _fill_columns(columns, sigma, nodes, log_weights, log_p, d1, fisher):
    """Every count of each listed grid column (one rate), and the column's Fisher information."""
    x_cap = log_p.shape[0] - 1
    log_factorial = np.empty(x_cap + 1)
    for x in range(x_cap + 1):
        log_factorial[x] = math.lgamma(x + 1.0)
    for c in numba.prange(columns.shape[0]):
        j = columns[c]
        lam = math.exp(LOG_LAM_MIN + j * LOG_LAM_STEP)
        terms = np.empty(nodes.shape[0])
        factors = np.empty(nodes.shape[0])
        mass = 0.0
        info = 0.0
        for x in range(x_cap + 1):
            a, b, _ = _pln_point(
                float(x), lam, sigma, nodes, log_weights, log_factorial[x], terms, factors, True
            )
            log_p[x, j] = a
            d1[x, j] = b
            p = math.exp(a)
            mass += p
            info += p * b * b
        if mass > 1.0 - 1e-6:
            fisher[j] = info
        else:
            fisher[j] = fisher_approx(lam, sigma)


@numba.njit(cache=True)
def _grid_columns(rates, n_grid):
    """The grid columns that interpolation at ``rates`` reads, ascending."""
    needed = np.zeros(n_grid, dtype=np.bool_)
    for i in range(rates.shape[0]):
        pos = (math.log(max(rates[i], MIN_RATE)) - LOG_LAM_MIN) / LOG_LAM_STEP
        if pos >= 0.0 and pos < n_grid - 1:
            needed[int(pos)] = True
            needed[int(pos) + 1] = True
    return np.flatnonzero(needed)


class PLNTable:
    """Tabulated Poisson-log-normal log probability and derivatives for one ``sigma``.

    A column of the grid (one rate, every count up to ``X_CAP``) is computed the first
    time a lookup needs it: a fit visits only part of the range of rates, and a column
    costs ``X_CAP + 1`` quadratures. Every entry is what a complete table would hold.
    """

    def __init__(self, sigma: float):
        self.sigma = float(sigma)
        n_grid = grid_size()
        self.log_p = np.empty((X_CAP + 1, n_grid))
        self.d1 = np.empty((X_CAP + 1, n_grid))
        self.fisher = np.empty(n_grid)
        self.built = np.zeros(n_grid, dtype=np.bool_)
        self.n_columns_built = 0
        self._lock = threading.Lock()

    def evaluate(self, counts: np.ndarray, rates: np.ndarray, *, derivatives: bool = True):
        """Log probability, and with ``derivatives`` the score and Fisher information.

        ``counts`` and ``rates`` are dense arrays of one shape; the result stacks the
        outputs on a new first axis.
        """
        out = np.empty((3 if derivatives else 1,) + counts.shape)
        flat_out = out.reshape(out.shape[0], -1)
        flat_counts = np.ascontiguousarray(counts, dtype=np.float64).ravel()
        flat_rates = np.ascontiguousarray(rates, dtype=np.float64).ravel()
        pending = self._lookup(flat_counts, flat_rates, derivatives, flat_out)
        if pending.any():
            rows = np.flatnonzero(pending)
            self.fill(_grid_columns(flat_rates[rows], self.built.shape[0]))
            missed = np.empty((out.shape[0], rows.size))
            self._lookup(flat_counts[rows], flat_rates[rows], derivatives, missed)
            flat_out[:, rows] = missed
        return out

    def fill(self, columns: np.ndarray) -> None:
        """Compute the listed grid columns that are not computed yet."""
        with self._lock:
            columns = columns[~self.built[columns]]
            if columns.size:
                # small rates cost several times more per column (slow Newton for large
                # counts): threads take small chunks in turn rather than one block each
                with numba.parallel_chunksize(_COLUMN_CHUNK):
                    _fill_columns(columns, self.sigma, _T, _LOG_W, self.log_p, self.d1, self.fisher)
                self.built[columns] = True
                self.n_columns_built += int(columns.size)

    def _lookup(self, counts, rates, derivatives, out) -> np.ndarray:
        """Fill ``out`` where the columns are computed; flag the entries that need others."""
        pending = np.zeros(counts.size, dtype=np.bool_)
        lookup = _lookup_parallel if counts.size > _PARALLEL_SIZE else _lookup_serial
        lookup(
            counts,
            rates,
            self.log_p,
            self.d1,
            self.fisher,
            self.built,
            self.sigma,
            _T,
            _LOG_W,
            derivatives,
            out,
            pending,
        )
        return pending


def grid_size() -> int:
    """Number of rates on the grid of ``log(lam)``."""
    return int(round((LOG_LAM_MAX - LOG_LAM_MIN) / LOG_LAM_STEP)) + 1


_PARALLEL_SIZE = 200_000
_COLUMN_CHUNK = 8
# entries integrated directly cost microseconds each: worth threads from a few thousand
_PARALLEL_DIRECT_SIZE = 4096
_BLOCK = 1024  # entries per parallel task, which shares the quadrature's scratch arrays


def _lookup_body(
    counts,
    rates,
    t_log_p,
    t_d1,
    t_fisher,
    built,
    sigma,
    nodes,
    log_weights,
    derivatives,
    out,
    pending,
):
    n_grid = t_log_p.shape[1]
    x_cap = t_log_p.shape[0] - 1
    n = counts.shape[0]
    for block in numba.prange((n + _BLOCK - 1) // _BLOCK):
        terms = np.empty(nodes.shape[0])
        factors = np.empty(nodes.shape[0])
        for i in range(block * _BLOCK, min(n, (block + 1) * _BLOCK)):
            x = counts[i]
            lam = max(rates[i], MIN_RATE)
            pos = (math.log(lam) - LOG_LAM_MIN) / LOG_LAM_STEP
            on_grid = pos >= 0.0 and pos < n_grid - 1
            j = int(pos) if on_grid else 0
            if on_grid and not (built[j] and built[j + 1]):
                pending[i] = True
                continue
            f = pos - j
            if int(x) <= x_cap and on_grid:
                xi = int(x)
                out[0, i] = (1.0 - f) * t_log_p[xi, j] + f * t_log_p[xi, j + 1]
                if derivatives:
                    out[1, i] = (1.0 - f) * t_d1[xi, j] + f * t_d1[xi, j + 1]
            else:
                lgx = math.lgamma(x + 1.0)
                a, b, _ = _pln_point(
                    x, lam, sigma, nodes, log_weights, lgx, terms, factors, derivatives
                )
                out[0, i] = a
                if derivatives:
                    out[1, i] = b
            if derivatives:
                if on_grid:
                    out[2, i] = (1.0 - f) * t_fisher[j] + f * t_fisher[j + 1]
                else:
                    out[2, i] = fisher_approx(lam, sigma)


_lookup_serial = numba.njit(cache=True)(_lookup_body)
_lookup_parallel = numba.njit(cache=True, parallel=True)(_lookup_body)


def _direct_body(counts, rates, sigma, nodes, log_weights, out):
    n = counts.shape[0]
    for block in numba.prange((n + _BLOCK - 1) // _BLOCK):
        terms = np.empty(nodes.shape[0])
        factors = np.empty(nodes.shape[0])
        for i in range(block * _BLOCK, min(n, (block + 1) * _BLOCK)):
            x = counts[i]
            lam = max(rates[i], MIN_RATE)
            lgx = math.lgamma(x + 1.0)
            out[i] = _pln_point(x, lam, sigma, nodes, log_weights, lgx, terms, factors, False)[0]


_direct_serial = numba.njit(cache=True)(_direct_body)
_direct_parallel = numba.njit(cache=True, parallel=True)(_direct_body)


def log_probability(counts: np.ndarray, rates: np.ndarray, sigma: float) -> np.ndarray:
    """Log PLN probability computed directly (no table), for checks and small inputs."""
    counts = np.asarray(counts, dtype=np.float64)
    rates = np.broadcast_to(np.asarray(rates, dtype=np.float64), counts.shape)
    out = np.empty(counts.shape)
    direct = _direct_parallel if counts.size > _PARALLEL_DIRECT_SIZE else _direct_serial
    direct(counts.ravel().copy(), rates.ravel().copy(), float(sigma), _T, _LOG_W, out.reshape(-1))
    return out


# ------------------------------------------------------------------ tables shared by calls

TABLE_CACHE_SIZE = 8  # one RCTD call uses up to 6 tables of 2 x 201 x 2601 doubles (8.4 MB)


class CacheInfo(NamedTuple):
    hits: int
    misses: int
    maxsize: int
    currsize: int
    columns_computed: int  # by the tables in the cache, since they were created


_tables: OrderedDict[tuple, PLNTable] = OrderedDict()
_tables_lock = threading.Lock()
_cache_counts = {"hits": 0, "misses": 0}


def pln_table(sigma: float) -> PLNTable:
    """The table for ``sigma``, shared by every call in the process.

    The ``TABLE_CACHE_SIZE`` most recently used tables are kept (keyed by ``sigma``
    and the grid), with the columns computed so far: one RCTD fit uses about six values
    of ``sigma``, and a second fit of the same data the same ones.
    """
    key = (float(sigma), X_CAP, LOG_LAM_MIN, LOG_LAM_MAX, LOG_LAM_STEP, N_NODES)
    with _tables_lock:
        table = _tables.get(key)
        if table is None:
            _cache_counts["misses"] += 1
            table = _tables[key] = PLNTable(sigma)
            if len(_tables) > TABLE_CACHE_SIZE:
                _tables.popitem(last=False)
        else:
            _cache_counts["hits"] += 1
            _tables.move_to_end(key)
    return table


def table_cache_info() -> CacheInfo:
    """Hits, misses, capacity, size and computed grid columns of the cache of :func:`pln_table`."""
    with _tables_lock:
        return CacheInfo(
            _cache_counts["hits"],
            _cache_counts["misses"],
            TABLE_CACHE_SIZE,
            len(_tables),
            sum(table.n_columns_built for table in _tables.values()),
        )


def clear_table_cache() -> None:
    """Forget the cached tables and the hit and miss counts."""
    with _tables_lock:
        _tables.clear()
        _cache_counts.update(hits=0, misses=0)
