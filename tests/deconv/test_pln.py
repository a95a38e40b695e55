"""Poisson-log-normal likelihood tables and the batched non-negative solvers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, optimize, stats

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
