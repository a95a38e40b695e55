"""Poisson-log-normal likelihood tables and the batched non-negative solvers."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from scipy import integrate, optimize, stats

from spatiome.deconv import _pln
from spatiome.deconv._pln import _LOG_W, _T, PLNTable, log_probability, pln_point
from spatiome.deconv._solvers import nnls_gram_batch, nnls_shared


def _quad_log_p(x: int, lam: float, sigma: float) -> float:
    def integrand(z):
        return stats.poisson.pmf(x, lam * np.exp(sigma * z)) * stats.norm.pdf(z)

    centre = np.log(max(x, 1e-3) / lam) / sigma
    return float(np.log(integrate.quad(integrand, -12, 12, points=[centre], limit=400)[0]))


@pytest.mark.parametrize(
    "x, lam, sigma",
    [(0, 0.01, 0.5), (3, 2.0, 0.5), (100, 80.0, 0.8), (1000, 500.0, 0.3), (0, 50.0, 1.5)],
)
def test_quadrature_matches_numerical_integration(x, lam, sigma):
    log_p, d1, _ = pln_point(float(x), lam, sigma, _T, _LOG_W)
    assert log_p == pytest.approx(_quad_log_p(x, lam, sigma), abs=1e-6)
    h = 1e-4 * lam
    numeric = (_quad_log_p(x, lam + h, sigma) - _quad_log_p(x, lam - h, sigma)) / (2 * h)
    assert d1 == pytest.approx(numeric, rel=1e-4, abs=1e-8)


def test_zero_sigma_is_poisson():
    log_p = log_probability(np.array([0.0, 4.0, 30.0]), np.array([0.5, 3.0, 25.0]), 0.0)
    np.testing.assert_allclose(log_p, stats.poisson.logpmf([0, 4, 30], [0.5, 3.0, 25.0]))


def test_table_agrees_with_direct_evaluation():
    rng = np.random.default_rng(0)
    table = PLNTable(0.6)
    counts = np.concatenate([rng.poisson(3, 3000), rng.integers(150, 400, 200)]).astype(float)
    rates = np.exp(rng.uniform(-13, 6, counts.size))
    looked_up = table.evaluate(counts, rates)
    pairs = zip(counts, rates, strict=True)
    direct = np.array([pln_point(c, r, 0.6, _T, _LOG_W)[:2] for c, r in pairs])
    np.testing.assert_allclose(looked_up[0], direct[:, 0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(looked_up[1], direct[:, 1], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("lam", [0.05, 1.0, 20.0])
def test_fisher_information_is_expected_squared_score(lam):
    sigma = 0.4
    table = PLNTable(sigma)
    xs = np.arange(0, 400, dtype=float)
    values = np.array([pln_point(x, lam, sigma, _T, _LOG_W) for x in xs])
    log_p, score = values[:, 0], values[:, 1]
    expected = float(np.sum(np.exp(log_p) * score**2))
    info = table.evaluate(np.zeros(1), np.array([lam]))[2, 0]
    assert info == pytest.approx(expected, rel=2e-3)


@functools.cache
def _reference_column(j: int, sigma: float):
    """One column of the table built the plain way: every count, then the Fisher sum."""
    lam = math.exp(_pln.LOG_LAM_MIN + j * _pln.LOG_LAM_STEP)
    log_p, d1 = np.empty(_pln.X_CAP + 1), np.empty(_pln.X_CAP + 1)
    mass = info = 0.0
    for x in range(_pln.X_CAP + 1):
        log_p[x], d1[x], _ = pln_point(float(x), lam, sigma, _T, _LOG_W)
        p = math.exp(log_p[x])
        mass += p
        info += p * d1[x] * d1[x]
    fisher = info if mass > 1.0 - 1e-6 else _pln.fisher_approx(lam, sigma)
    return log_p, d1, fisher


@pytest.mark.parametrize("sigma", [0.0, 0.45, 1.2])
def test_table_filled_on_demand_equals_a_plain_construction(sigma):
    rng = np.random.default_rng(1)
    counts = np.concatenate([rng.poisson(2.0, 300), [0.0, 200.0, 201.0, 350.0]])
    rates = np.exp(rng.uniform(-15.0, 4.0, counts.size))
    rates[-4:] = [1e-9, 150.0, 3.0, 1e3]
    table = PLNTable(sigma)
    looked_up = table.evaluate(counts, rates)
    assert 0 < table.n_columns_built < table.built.size  # only the columns reached
    for x, lam, value in zip(counts, rates, looked_up.T, strict=True):
        lam = max(lam, _pln.MIN_RATE)
        pos = (math.log(lam) - _pln.LOG_LAM_MIN) / _pln.LOG_LAM_STEP
        if x > _pln.X_CAP or pos >= table.built.size - 1:
            expected = pln_point(x, lam, sigma, _T, _LOG_W)[:2]
            assert value[:2].tolist() == list(expected)
            continue
        j, f = int(pos), pos - int(pos)
        (p0, s0, i0), (p1, s1, i1) = _reference_column(j, sigma), _reference_column(j + 1, sigma)
        xi = int(x)
        assert value[0] == (1.0 - f) * p0[xi] + f * p1[xi]
        assert value[1] == (1.0 - f) * s0[xi] + f * s1[xi]
        assert value[2] == (1.0 - f) * i0 + f * i1
    built = np.flatnonzero(table.built)
    for j in built[:: max(1, built.size // 5)]:
        log_p, d1, fisher = _reference_column(int(j), sigma)
        np.testing.assert_array_equal(table.log_p[:, j], log_p)
        np.testing.assert_array_equal(table.d1[:, j], d1)
        assert table.fisher[j] == fisher


def test_direct_log_probability_is_pln_point_in_parallel_too():
    rng = np.random.default_rng(2)
    counts = rng.poisson(1.5, 6000).astype(float)  # above the size that uses threads
    rates = np.exp(rng.uniform(-12.0, 5.0, counts.size))
    expected = [pln_point(x, r, 0.7, _T, _LOG_W)[0] for x, r in zip(counts, rates, strict=True)]
    np.testing.assert_array_equal(log_probability(counts, rates, 0.7), expected)


def test_table_cache_keeps_the_most_recent_tables(monkeypatch):
    monkeypatch.setattr(_pln, "TABLE_CACHE_SIZE", 2)
    _pln.clear_table_cache()
    first = _pln.pln_table(0.1)
    assert _pln.pln_table(0.1) is first
    _pln.pln_table(0.2)
    _pln.pln_table(0.1)
    _pln.pln_table(0.3)  # evicts 0.2, the least recently used
    assert _pln.pln_table(0.1) is first
    info = _pln.table_cache_info()
    assert (info.hits, info.misses, info.currsize) == (3, 3, 2)
    _pln.pln_table(0.2)
    assert _pln.table_cache_info().misses == 4
    # a table of other dimensions is another table
    monkeypatch.setattr(_pln, "X_CAP", 20)
    small = _pln.pln_table(0.1)
    assert small is not first and small.log_p.shape[0] == 21
    _pln.clear_table_cache()


def test_batched_nnls_matches_scipy():
    rng = np.random.default_rng(3)
    design = rng.gamma(0.5, 1.0, (120, 8))
    design[:, 1] = 0.9 * design[:, 0] + 0.1 * design[:, 2]  # nearly collinear columns
    targets = rng.poisson(design @ rng.gamma(0.3, 2.0, (8, 50))).T.astype(float)
    solved = nnls_shared(design.T @ design, targets @ design)
    expected = np.array([optimize.nnls(design, y)[0] for y in targets])
    np.testing.assert_allclose(solved, expected, atol=1e-8)
    hessians = np.repeat((design.T @ design)[None], 50, axis=0)
    np.testing.assert_allclose(nnls_gram_batch(hessians, targets @ design), expected, atol=1e-8)
