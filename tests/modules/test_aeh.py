"""AEH: pattern recovery, exact vs low-rank, fidelity vs recommended ELBO, contract."""

from __future__ import annotations

import math

import anndata
import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.metrics import adjusted_rand_score

from spatiome._core.validate import SpatiomeInputError
from spatiome.modules._simulate import coexpression_modules
from spatiome.modules.aeh import aeh

LENGTH_SCALE = 300.0  # um; the templates vary over 250-500 um


@pytest.fixture(scope="module")
def tissue():
    return coexpression_modules("equal", n_spots=1000, random_state=0)


def _matched_correlation(fields: np.ndarray, templates: np.ndarray) -> np.ndarray:
    corr = np.corrcoef(fields.T, templates.T)[: fields.shape[1], fields.shape[1] :]
    return corr.max(axis=0)


def test_recovers_simulated_patterns(tissue):
    adata = tissue.copy()
    table = aeh(adata, 4, LENGTH_SCALE, layer="counts")
    assert adjusted_rand_score(adata.var["module"], table["pattern"]) >= 0.95
    assert (table["membership"] > 0.99).mean() > 0.95
    np.testing.assert_allclose(table.filter(like="prob_").sum(axis=1), 1.0, atol=1e-9)
    fields = adata.obsm["aeh_patterns"]
    assert fields.shape == (adata.n_obs, 4)
    assert _matched_correlation(fields, adata.obsm["templates"]).min() > 0.7
    params = adata.uns["spatiome"]["aeh"]
    assert params["normalize"] == "naive_de" and not params["approximate"]
    assert params["converged"] and params["n_iter"] < 100
    assert adata.var["aeh_pattern"].notna().all()


def test_recommended_elbo_never_decreases_fidelity_reproduces_scale(tissue):
    adata = tissue.copy()
    rec = aeh(adata, 4, LENGTH_SCALE, layer="counts", n_init=1)
    trace = np.asarray(adata.uns["spatiome"]["aeh"]["elbo"])
    assert np.all(np.diff(trace) >= -1e-9 * np.abs(trace).max())
    fid = aeh(adata, 4, LENGTH_SCALE, layer="counts", mode="fidelity")
    fid_trace = np.asarray(adata.uns["spatiome"]["aeh"]["elbo"])
    # The fidelity q(mu) term adds -5e7 per floor eigenvalue and pattern: a huge offset.
    assert fid_trace[-1] < 1000 * trace[-1]
    assert adjusted_rand_score(rec["pattern"], fid["pattern"]) >= 0.95


def test_approximate_agrees_with_exact(tissue):
    adata = tissue.copy()
    exact = aeh(adata, 4, LENGTH_SCALE, layer="counts", approximate=False, n_init=2)
    exact_fields = adata.obsm["aeh_patterns"].copy()
    approx = aeh(adata, 4, LENGTH_SCALE, layer="counts", approximate=True, n_inducing=600,
                 n_init=2)  # fmt: skip
    assert adata.uns["spatiome"]["aeh"]["decomposition"].startswith("nystrom")
    assert adjusted_rand_score(exact["pattern"], approx["pattern"]) == 1.0
    np.testing.assert_allclose(approx["membership"], exact["membership"], atol=1e-3)
    corr = np.corrcoef(adata.obsm["aeh_patterns"].T, exact_fields.T)[:4, 4:]
    assert np.diag(corr[:, exact["pattern"].groupby(approx["pattern"]).first()]).min() > 0.99


def _dense_fidelity(x, y, r0, m0, length_scale, max_iter, tol):
    """The original algorithm written out with dense matrices (reference)."""
    n_genes, n = y.shape
    n_patterns = r0.shape[1]
    kernel = np.exp(-cdist(x, x, "sqeuclidean") / (2 * length_scale**2)) + 1e-8 * np.eye(n)
    eig = np.clip(np.linalg.eigvalsh(kernel), 1e-8, None)

    def elbo(r, m, s2, pi):
        d = ((m.T[None, :, :] - y[:, None, :]) ** 2).sum(2)
        log_rho = (
            np.log(pi)[None] - 0.5 * n * np.log(s2) - 0.5 * d / s2 - 0.5 * n * np.log(2 * np.pi)
        )
        p_y = (r * log_rho).sum()
        p_z = (r @ np.log(pi)).sum()
        p_mu = -0.5 * sum(
            np.linalg.det(kernel)
            + m[:, k] @ np.linalg.solve(kernel, m[:, k])
            + n * np.log(2 * np.pi)
            for k in range(n_patterns)
        )
        q_z = (r * np.log(r)).sum()
        counts = r.sum(0)
        q_mu = -0.5 * sum(-(1 / eig + counts[k] / s2).sum() + n * np.log(2 * np.pi)
                          for k in range(n_patterns))  # fmt: skip
        return p_y + p_z + p_mu - q_z - q_mu

    r = r0 / r0.sum(0)
    pi = r.sum(0) / n_genes
    m = m0.copy()
    s2 = 1.0
    trace = [elbo(r, m, s2, pi)]
    for _ in range(max_iter):
        d = ((m.T[None, :, :] - y[:, None, :]) ** 2).sum(2)
        s2 = (r * d).sum() / (n * r.sum())
        log_rho = np.log(pi)[None] - 0.5 * d / s2
        rho = np.exp(log_rho - log_rho.max(1, keepdims=True)) + 1e-12
        r = rho / rho.sum(1, keepdims=True)
        for k in range(n_patterns):
            m[:, k] = np.linalg.solve(
                np.eye(n) + kernel * r[:, k].sum() / s2, kernel @ (r[:, k] @ y) / s2
            )
        pi = r.sum(0) / n_genes
        trace.append(elbo(r, m, s2, pi))
        if abs(trace[-1] - trace[-2]) < tol:
            break
    return np.array(trace), r, m, s2


def test_fidelity_matches_dense_reference():
    rng = np.random.default_rng(3)
    xy = np.array([(i, j) for i in range(6) for j in range(6)], dtype=float)
    fields = [np.sin(xy[:, 0] / 2), np.cos(xy[:, 1] / 2)]
    values = np.column_stack([f + rng.normal(0, 0.4, 36) for f in fields for _ in range(3)])
    adata = anndata.AnnData(values, obsm={"spatial": xy})
    table = aeh(adata, 2, 0.8, mode="fidelity", tol=1e-6, max_iter=30, random_state=7)
    y = values.T - values.T.mean(1, keepdims=True)
    y /= y.std(1, keepdims=True)
    draws = np.random.default_rng(7)
    r0 = draws.uniform(size=(6, 2))
    m0 = draws.standard_normal((36, 2))
    trace, r, m, s2 = _dense_fidelity(xy, y, r0, m0, 0.8, 30, 1e-6)
    ours = np.asarray(adata.uns["spatiome"]["aeh"]["elbo"])
    assert ours.size == trace.size
    np.testing.assert_allclose(ours, trace, rtol=1e-7)
    np.testing.assert_allclose(table.filter(like="prob_").to_numpy(), r, atol=1e-7)
    np.testing.assert_allclose(adata.obsm["aeh_patterns"], m, atol=1e-6)
    assert math.isclose(adata.uns["spatiome"]["aeh"]["s2"], s2, rel_tol=1e-9)


def test_default_genes_follow_spatialde(tissue):
    adata = tissue.copy()
    adata.var["spatialde_qval"] = np.where(np.arange(adata.n_vars) < 40, 0.01, 0.5)
    table = aeh(adata, 4, LENGTH_SCALE, layer="counts", n_init=1)
    assert list(table.index) == list(adata.var_names[:40])
    assert adata.var["aeh_pattern"].isna().sum() == adata.n_vars - 40


def test_deterministic_and_input_untouched(tissue):
    adata = tissue.copy()
    before = adata.layers["counts"].copy()
    first = aeh(adata, 4, LENGTH_SCALE, layer="counts", n_init=2, copy=True)
    assert "aeh_pattern" not in adata.var and "aeh_patterns" not in adata.obsm
    assert (adata.layers["counts"] != before).nnz == 0
    second = aeh(adata, 4, LENGTH_SCALE, layer="counts", n_init=2, copy=True)
    assert first.equals(second)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((0, 1.0), {}, "n_patterns"),
        ((2, -1.0), {}, "length_scale"),
        ((2, 1.0), {"mode": "legacy"}, "mode"),
        ((2, 1.0), {"normalize": "log"}, "normalize"),
        ((2, 1.0), {"tol": 0}, "tol"),
        ((2, 1.0), {"n_init": 0}, "n_init"),
        ((2, 1.0), {"approximate": "yes"}, "approximate"),
        ((50, 1.0), {}, "patterns"),
        ((2, 1.0), {"genes": ["nope"]}, "not in adata.var_names"),
    ],
)
def test_clear_errors(args, kwargs, match):
    rng = np.random.default_rng(0)
    adata = anndata.AnnData(rng.normal(size=(30, 6)), obsm={"spatial": rng.uniform(size=(30, 2))})
    with pytest.raises(SpatiomeInputError, match=match):
        aeh(adata, *args, **kwargs)
