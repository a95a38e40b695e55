"""SpatialDE against a dense Gaussian-process likelihood, full eigendecompositions, the
original's formulas and its published mouse olfactory bulb results."""

from __future__ import annotations

import importlib
import math
import warnings

import anndata
import numpy as np
import pandas as pd
import pytest
from scipy import interpolate, stats
from threadpoolctl import threadpool_limits

import spatiome as sm
from spatiome._core.validate import SpatiomeInputError
from spatiome.svg import spatialde, spatialde_model_search

# The package exports the function under the module's name.
spatialde_module = importlib.import_module("spatiome.svg.spatialde")


def tissue(n_spots=200, n_genes=24, seed=0):
    return sm.datasets.simulate_tissue(n_spots=n_spots, n_genes=n_genes, random_state=seed)


def stabilized(adata):
    out = adata.copy()
    sm.pp.stabilize(out)
    sm.pp.regress_out(out)
    return out


def dense_loglik(y, kernel, delta):
    """GP log-likelihood with mu and s2 profiled out, by slogdet and solve."""
    n = y.size
    cov = kernel + delta * np.eye(n)
    ones = np.ones(n)
    mu = ones @ np.linalg.solve(cov, y) / (ones @ np.linalg.solve(cov, ones))
    r = y - mu
    quad = r @ np.linalg.solve(cov, r)
    s2 = quad / n
    _, logdet = np.linalg.slogdet(s2 * cov)
    return -0.5 * (n * math.log(2 * math.pi) + logdet + quad / s2), mu, s2


def clipped_kernel(xy, length_scale):
    d2 = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    values, vectors = np.linalg.eigh(np.exp(-d2 / (2 * length_scale**2)))
    return (vectors * np.clip(values, 1e-8, None)) @ vectors.T


def test_fit_is_the_maximum_of_the_dense_likelihood():
    adata = stabilized(tissue(n_spots=150, n_genes=10, seed=1))
    table = spatialde(adata, layer="regressed", normalize=None, copy=True)
    y_all = adata.layers["regressed"]
    n = adata.n_obs
    scales = spatialde_module._length_scales(adata.obsm["spatial"], None)
    others = [clipped_kernel(adata.obsm["spatial"], scale) for scale in scales[::3]]
    for j, gene in enumerate(adata.var_names):
        row = table.loc[gene]
        kernel = clipped_kernel(adata.obsm["spatial"], row["length_scale"])
        y = y_all[:, j]
        ll, mu, s2 = dense_loglik(y, kernel, row["delta"])
        assert row["ll"] == pytest.approx(ll, abs=1e-7)
        assert row["mu_hat"] == pytest.approx(mu, abs=1e-8)
        assert row["s2_t_hat"] == pytest.approx(s2, rel=1e-7)
        ll_null = stats.norm.logpdf(y, y.mean(), y.std(ddof=1)).sum()
        assert row["ll_null"] == pytest.approx(ll_null, abs=1e-8)
        assert row["llr"] == pytest.approx(ll - ll_null, abs=1e-7)
        assert row["pval"] == pytest.approx(stats.chi2.sf(ll - ll_null, 1), rel=1e-6)
        assert row["bic"] == pytest.approx(-2 * ll + 4 * math.log(n), abs=1e-6)
        for step in (-0.01, 0.01):
            log_delta = np.clip(row["log_delta"] + step, -10, 20)
            if log_delta != row["log_delta"]:
                assert dense_loglik(y, kernel, math.exp(log_delta))[0] <= row["ll"] + 1e-9
        # No length scale of the grid does better at its own optimum.
        if j < 4:
            for other in others:
                grid = [dense_loglik(y, other, math.exp(x))[0] for x in np.linspace(-10, 20, 16)]
                assert max(grid) <= row["ll"] + 1e-7


def test_partial_decompositions_equal_full_eigh(monkeypatch):
    adata = tissue(n_spots=400, n_genes=20, seed=2)
    fast = spatialde(adata)
    used = adata.uns["spatiome"]["spatialde"]["decompositions"]
    assert any(d.startswith("pivoted_cholesky") for d in used) and "tridiagonal" in used
    monkeypatch.setattr(spatialde_module, "PIVOTED_MAX_FRACTION", 0.0)
    full = spatialde(adata, copy=True)
    for column in ("ll", "llr", "ll_null"):
        np.testing.assert_allclose(fast[column], full[column], atol=1e-6, rtol=0)
    assert (fast["length_scale"] == full["length_scale"]).mean() > 0.95
    # Each length scale on its own, not only the best one.
    expression, _ = spatialde_module._expression(
        adata, "counts", np.arange(adata.n_vars), "naive_de", None
    )
    xy = adata.obsm["spatial"]
    for scale in spatialde_module._length_scales(xy, None)[5:]:
        partial = spatialde_module._pivoted_spectrum(xy, float(scale), adata.n_obs)
        kernel = np.exp(-spatialde_module._squared_distances(xy) / (2 * scale**2))
        exact = spatialde_module._eigen_spectrum(kernel, "eigh")
        assert partial.rank == exact.rank
        fits = spatialde_module._fit_kernels([partial, exact], expression, 30, 1, None)
        np.testing.assert_allclose(fits[0][:, 0], fits[1][:, 0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("length_scale", [1.0, 3.0, 5.0])
def test_lapack_pivoted_spectrum_equals_eigh(length_scale):
    # Pivoted ranks of 150 (stops at the limit), 138 and fewer of 150 spots.
    rng = np.random.default_rng(7)
    xy = rng.uniform(0, 10, size=(150, 2))
    squared = spatialde_module._squared_distances(xy)
    kernel = np.exp(-squared / (2 * length_scale**2))
    eigh = spatialde_module._eigen_spectrum(kernel.copy(), "eigh")
    factored = spatialde_module._factored_spectrum(squared, length_scale, 145)
    if length_scale == 1.0:
        assert factored is None
        return
    assert factored.pivoted_rank < 145
    assert factored.rank == eigh.rank
    np.testing.assert_allclose(factored.values, eigh.values, rtol=0, atol=1e-11)
    assert factored.gower == pytest.approx(eigh.gower, rel=1e-12)
    # The same stopping rule as the coordinate-based pivoted Cholesky (rounding near the
    # tolerance can stop one step apart).
    pivoted = spatialde_module._pivoted_spectrum(xy, length_scale, 150)
    assert abs(pivoted.pivoted_rank - factored.pivoted_rank) <= 1
    block = rng.normal(size=(150, 6))
    adata = anndata.AnnData(block - block.mean(axis=0), obsm={"spatial": xy})
    expression, _ = spatialde_module._expression(adata, None, np.arange(6), None, None)
    fits = spatialde_module._fit_kernels([factored, eigh], expression, 3, 1, None)
    np.testing.assert_allclose(fits[0][:, 0], fits[1][:, 0], atol=1e-8, rtol=0)


def test_kernel_cutoff_only_removes_subnormal_scale_entries():
    xy = np.column_stack([np.arange(40.0), np.zeros(40)])
    squared = spatialde_module._squared_distances(xy)
    kernel = spatialde_module._se_kernel(squared, 0.5)
    exact = np.exp(-squared / 0.5)
    assert np.abs(kernel - exact).max() < 2e-35
    assert kernel[0, 7] == 0.0 and 0 < exact[0, 7] < 1e-40
    assert kernel[0, 4] == exact[0, 4] > 1e-30


@pytest.mark.parametrize("length_scale", [0.3, 1.0, 3.0])
def test_tridiagonal_spectrum_equals_eigh(length_scale):
    # Full rank (0.3), some eigenvalues at the floor (1.0), most of them there (3.0).
    rng = np.random.default_rng(5)
    xy = rng.uniform(0, 10, size=(150, 2))
    kernel = np.exp(-spatialde_module._squared_distances(xy) / (2 * length_scale**2))
    tridiagonal = spatialde_module._tridiagonal_spectrum(kernel.copy(), "tridiagonal")
    eigh = spatialde_module._eigen_spectrum(kernel.copy(), "eigh")
    assert tridiagonal.rank == eigh.rank
    np.testing.assert_allclose(tridiagonal.values, eigh.values, rtol=0, atol=1e-12)
    assert tridiagonal.gower == pytest.approx(eigh.gower, rel=1e-12)
    block = rng.normal(size=(150, 7))
    basis = tridiagonal.project(np.eye(150)).T
    np.testing.assert_allclose(basis.T @ basis, np.eye(tridiagonal.rank), atol=1e-12)
    # Eigenvectors are defined up to sign (and rotation within clusters of eigenvalues), so
    # compare what the likelihood uses: y^T (K_floored + delta I)^-1 y and 1^T (...) y.
    ones = np.ones((150, 1))
    for delta in (1e-4, 1.0, 100.0):
        forms = []
        for spectrum in (tridiagonal, eigh):
            z, u = spectrum.project(block), spectrum.project(ones)
            weights = 1.0 / (spectrum.values + delta)
            tail = 1.0 / (spatialde_module.EIGEN_FLOOR + delta)
            yy = weights @ z**2 + tail * ((block**2).sum(axis=0) - (z**2).sum(axis=0))
            uy = (weights * u[:, 0]) @ z + tail * (block.sum(axis=0) - u[:, 0] @ z)
            forms.append(np.concatenate([yy, uy]))
        np.testing.assert_allclose(forms[0], forms[1], rtol=1e-9, atol=1e-9)
    adata = anndata.AnnData(block - block.mean(axis=0), obsm={"spatial": xy})
    expression, _ = spatialde_module._expression(adata, None, np.arange(7), None, None)
    fits = spatialde_module._fit_kernels([tridiagonal, eigh], expression, 3, 1, None)
    np.testing.assert_allclose(fits[0][:, 0], fits[1][:, 0], atol=1e-9, rtol=0)
    np.testing.assert_allclose(fits[0][:, 1], fits[1][:, 1], atol=1e-5, rtol=0)


def test_threaded_run_equals_the_serial_and_the_dense_eigh_path(monkeypatch):
    # 400 spots: dense kernels (tridiagonal) and pivoted Cholesky factors, and
    # over 100 genes so that Storey's pi0 is estimated, not set to 1.
    adata = stabilized(tissue(n_spots=400, n_genes=120, seed=9))
    # Two BLAS threads even at 400 spots (by default they start at 2,000).
    monkeypatch.setattr(spatialde_module, "BLAS_THREADS_MIN_SPOTS", 0)
    seen = []
    with sm._core.progress.listen(lambda *update: seen.append(update[1:3])):
        concurrent = spatialde(adata, layer="regressed", normalize=None, n_jobs=2)
    assert seen[-1] == (10, 10)
    used = adata.uns["spatiome"]["spatialde"]["decompositions"]
    assert used.count("tridiagonal") >= 2 and any(d.startswith("pivoted") for d in used)
    with threadpool_limits(limits=1, user_api="blas"):
        serial = spatialde(adata, layer="regressed", normalize=None, copy=True)
    # Two BLAS threads round differently from one; log(delta) is refined to 1e-7, so
    # delta and what derives from it agree to about that.
    np.testing.assert_allclose(concurrent["llr"], serial["llr"], atol=1e-9, rtol=0)
    pd.testing.assert_frame_equal(concurrent, serial, rtol=1e-5)
    # The former exact path: eigh with eigenvectors for every dense kernel.
    monkeypatch.setattr(spatialde_module, "_tridiagonal_spectrum", spatialde_module._eigen_spectrum)
    former = spatialde(adata, layer="regressed", normalize=None, copy=True)
    np.testing.assert_allclose(concurrent["llr"], former["llr"], atol=1e-6, rtol=0)
    calls = concurrent["qval_storey"] < 0.05
    assert 10 <= calls.sum() < len(calls)
    assert (calls == (former["qval_storey"] < 0.05)).all()
    assert (concurrent["length_scale"] == former["length_scale"]).mean() > 0.95


def test_derivatives_and_standard_errors():
    adata = stabilized(tissue(n_spots=120, n_genes=10, seed=3))
    table = spatialde(adata, layer="regressed", normalize=None, copy=True)
    fidelity = spatialde(adata, layer="regressed", normalize=None, fidelity=True, copy=True)
    xy = adata.obsm["spatial"]
    n = adata.n_obs
    for j, gene in enumerate(adata.var_names):
        row = table.loc[gene]
        kernel = clipped_kernel(xy, row["length_scale"])
        y = adata.layers["regressed"][:, j]
        x = row["log_delta"]

        def ll(value, y=y, kernel=kernel):
            return dense_loglik(y, kernel, math.exp(value))[0]

        # The Gower factor tr(P K P) / (n - 1) of the kernel before flooring, as the original.
        raw = np.exp(-((xy[:, None] - xy[None]) ** 2).sum(-1) / (2 * row["length_scale"] ** 2))
        centring = np.eye(n) - 1.0 / n
        gower = np.trace(centring @ raw @ centring) / (n - 1)
        assert row["fsv"] == pytest.approx(gower / (gower + row["delta"]), rel=1e-6)

        def fsv(value, gower=gower):
            return gower / (gower + math.exp(value))

        h = 1e-3
        second = (ll(x + h) - 2 * ll(x) + ll(x - h)) / h**2
        if not -10 < x < 20:
            assert np.isnan(row["log_delta_se"]) and np.isnan(row["fsv_se"])
        elif second < -1e-3:
            slope = (fsv(x + h) - fsv(x - h)) / (2 * h)
            assert row["log_delta_se"] == pytest.approx(1 / math.sqrt(-second), rel=1e-3)
            assert row["fsv_se"] == pytest.approx(abs(slope) / math.sqrt(-second), rel=1e-3)
        # The original: step 1 differences and 1 / LL''^2.
        step2 = ll(x + 1) - 2 * ll(x) + ll(x - 1)
        s2_logdelta = 1 / step2**2
        s2_fsv = ((fsv(x + 1) - fsv(x - 1)) / 2) ** 2 * s2_logdelta
        if abs(step2) > 1e-4:  # otherwise the difference is all rounding
            assert fidelity.loc[gene, "log_delta_se"] ** 2 == pytest.approx(s2_logdelta, rel=1e-5)
            assert fidelity.loc[gene, "fsv_se"] ** 2 == pytest.approx(s2_fsv, rel=1e-5)
        uncentred = y @ np.linalg.solve(kernel + row["delta"] * np.eye(n), y) / n
        assert fidelity.loc[gene, "s2_t_hat"] == pytest.approx(uncentred, rel=1e-6)
    for column in ("llr", "pval", "qval", "fsv", "length_scale", "delta", "mu_hat"):
        # The grids differ only by the rounding of the two distance formulas.
        np.testing.assert_allclose(table[column], fidelity[column], rtol=1e-9)


def test_counts_path_equals_pp_functions_and_input_is_untouched():
    adata = tissue(n_spots=250, n_genes=20, seed=4)
    counts = adata.layers["counts"].copy()
    x_before = adata.X.copy()
    internal = spatialde(adata, copy=True)
    assert (adata.layers["counts"] != counts).nnz == 0
    assert (adata.X != x_before).nnz == 0
    assert "spatialde" not in adata.uns.get("spatiome", {})
    explicit = spatialde(stabilized(adata), layer="regressed", normalize=None, copy=True)
    for column in ("llr", "ll", "fsv", "mu_hat", "s2_t_hat"):
        np.testing.assert_allclose(internal[column], explicit[column], rtol=1e-6, atol=1e-7)
    # At the bounds of log(delta) the curvature is ~0 and its inverse all rounding.
    interior = internal["log_delta"].between(-9.9, 19.9)
    assert interior.sum() >= 3
    np.testing.assert_allclose(
        internal.loc[interior, "log_delta_se"], explicit.loc[interior, "log_delta_se"], rtol=1e-5
    )
    adata.obs["totals"] = np.asarray(counts.sum(axis=1)).ravel()
    keyed = spatialde(adata, total_counts_key="totals", copy=True)
    np.testing.assert_allclose(keyed["llr"], internal["llr"], atol=1e-9)


def test_finds_simulated_spatial_genes_and_is_calibrated_on_noise():
    adata = tissue(n_spots=400, n_genes=60, seed=5)
    table = spatialde(adata, copy=True)
    truth = adata.var["is_spatial"].to_numpy()
    called = (table["qval"] < 0.05).to_numpy()
    assert called[truth].mean() > 0.7
    assert called[~truth].mean() < 0.1
    rng = np.random.default_rng(0)
    noise = anndata.AnnData(rng.normal(size=(300, 200)), obsm={"spatial": rng.random((300, 2))})
    null = spatialde(noise, layer=None, normalize=None, copy=True)
    assert (null["pval"] < 0.05).mean() < 0.08
    assert (null["qval"] < 0.05).sum() == 0


def test_lowrank_mode_agrees_with_exact_calls():
    adata = tissue(n_spots=1200, n_genes=40, seed=6)
    exact = spatialde(adata, copy=True)
    approx = spatialde(adata, exact_max_spots=1000, n_inducing=250)
    params = adata.uns["spatiome"]["spatialde"]
    assert params["method"] == "lowrank" and params["n_inducing"] == 250
    assert all(d.startswith("nystrom") for d in params["decompositions"])
    a = set(exact.index[exact["qval"] < 0.05])
    b = set(approx.index[approx["qval"] < 0.05])
    assert len(a & b) / len(a | b) >= 0.9
    assert np.corrcoef(exact["llr"], approx["llr"])[0, 1] > 0.99
    # The same inducing points and fits with the length scales on two threads.
    again = spatialde(adata, method="lowrank", n_inducing=250, n_jobs=2, copy=True)
    pd.testing.assert_frame_equal(again, approx)


class SerialClient:
    """Stands in for distributed.Client: map then gather, in order."""

    def __init__(self):
        self.calls = 0

    def scatter(self, data, broadcast=False, hash=True):
        return data

    def map(self, func, *iterables, pure=True):
        self.calls += 1
        return [func(*args) for args in zip(*iterables, strict=True)]

    def gather(self, futures):
        return futures


def test_results_do_not_depend_on_chunks_threads_or_client():
    adata = tissue(n_spots=200, n_genes=30, seed=7)
    reference = spatialde(adata, copy=True)
    threaded = spatialde(adata, n_jobs=2, chunk_size=7, copy=True)
    client = SerialClient()
    distributed = spatialde(adata, client=client, chunk_size=11, copy=True)
    assert client.calls == 10
    pd.testing.assert_frame_equal(threaded, reference, rtol=1e-9)
    pd.testing.assert_frame_equal(distributed, reference, rtol=1e-9)
    subset = spatialde(adata, genes=["Gene0005", "Gene0002"], copy=True)
    pd.testing.assert_frame_equal(
        subset.drop(columns=["qval", "qval_storey"]),
        reference.loc[["Gene0005", "Gene0002"]].drop(columns=["qval", "qval_storey"]),
        rtol=1e-9,
    )


def test_dask_cluster_gives_identical_results():
    distributed = pytest.importorskip("distributed", reason="dask.distributed is a dev extra")
    adata = tissue(n_spots=200, n_genes=20, seed=12)
    local = spatialde(adata, chunk_size=6, copy=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )
        with distributed.Client(cluster) as client:
            remote = spatialde(adata, chunk_size=6, client=client, copy=True)
        cluster.close()
    pd.testing.assert_frame_equal(local, remote, rtol=1e-9)


def test_results_written_to_var_and_uns():
    adata = tissue(n_spots=150, n_genes=12, seed=8)
    adata.layers["counts"][:, 3] = 0
    table = spatialde(adata)
    assert table.loc[adata.var_names[3]].isna().all()
    assert table.drop(index=adata.var_names[3])["pval"].notna().all()
    for column in table.columns:
        np.testing.assert_allclose(adata.var[f"spatialde_{column}"], table[column], equal_nan=True)
    params = adata.uns["spatiome"]["spatialde"]
    assert params["method"] == "exact" and len(params["length_scales"]) == 10
    assert params["phi"] > 0 and params["normalize"] == "naive_de"
    spatialde(adata, genes=["Gene0001"])
    assert adata.var["spatialde_llr"].notna().sum() == 1


def test_fidelity_reproduces_the_original_length_scale_grid():
    adata = stabilized(tissue(n_spots=150, n_genes=10, seed=11))
    adata.obsm["spatial"] = adata.obsm["spatial"] + 5e4  # large coordinates: rounding shows
    xy = adata.obsm["spatial"]
    squares = (xy**2).sum(1)
    r2 = np.clip(-2 * xy @ xy.T + squares[:, None] + squares[None, :], 0, np.inf)
    values = np.unique(r2.ravel())
    values = values[values > 1e-8]
    original = np.logspace(
        np.log10(np.sqrt(values.min()) / 2), np.log10(np.sqrt(values.max()) * 2), 10
    )
    spatialde(adata, layer="regressed", normalize=None, fidelity=True)
    np.testing.assert_allclose(adata.uns["spatiome"]["spatialde"]["length_scales"], original)
    assert original[0] < 1.0  # collapsed: the spots are 100 apart
    spatialde(adata, layer="regressed", normalize=None)
    assert adata.uns["spatiome"]["spatialde"]["length_scales"][0] == pytest.approx(50.0)


def test_storey_qvalues_follow_the_original_algorithm():
    rng = np.random.default_rng(9)
    p = np.concatenate([rng.uniform(size=400), rng.beta(0.2, 5, size=100)])
    lam = np.arange(0, 0.90, 0.01)
    pi0 = np.array([(p > x).sum() / (p.size * (1 - x)) for x in lam])
    pi0 = min(float(interpolate.splev(lam[-1], interpolate.splrep(lam, pi0, k=3))), 1.0)
    order = np.argsort(p)
    q = pi0 * p.size * p[order] / np.arange(1, p.size + 1)
    q[-1] = min(q[-1], 1.0)
    for i in range(p.size - 2, -1, -1):
        q[i] = min(q[i], q[i + 1])
    expected = np.empty_like(q)
    expected[order] = q
    np.testing.assert_allclose(spatialde_module._storey_qvalues(p), expected, rtol=1e-12)
    assert pi0 < 1


def test_model_search_classifies_trends():
    rng = np.random.default_rng(10)
    xy = np.array([(i, j) for i in range(14) for j in range(14)], dtype=float)
    values = np.column_stack(
        [
            0.4 * xy[:, 0] + rng.normal(0, 0.3, xy.shape[0]),
            np.cos(2 * np.pi * xy[:, 1] / 4.0) + rng.normal(0, 0.2, xy.shape[0]),
            np.exp(-((xy - 6.5) ** 2).sum(1) / 8) + rng.normal(0, 0.1, xy.shape[0]),
        ]
    )
    adata = anndata.AnnData(values, obsm={"spatial": xy})
    adata.var_names = ["trend", "wave", "blob"]
    with pytest.raises(SpatiomeInputError, match="run spatiome.svg.spatialde"):
        spatialde_model_search(adata, layer=None, normalize=None)
    spatialde(adata, layer=None, normalize=None)
    table = spatialde_model_search(adata, layer=None, normalize=None)
    assert table.loc["trend", "model"] == "linear"
    assert table.loc["wave", "model"] == "PER"
    assert table.loc["blob", "model"] == "SE"
    probs = table[["prob_se", "prob_per", "prob_linear"]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1)
    bics = table[["bic_se", "bic_per", "bic_linear"]].to_numpy()
    assert np.array_equal(np.argmax(probs, 1), np.argmin(bics, 1))
    assert "spatialde_model_search_model" in adata.var
    with pytest.raises(SpatiomeInputError, match="exact_max_spots"):
        spatialde_model_search(adata, layer=None, normalize=None, exact_max_spots=100)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "fast"}, "method must be one of"),
        ({"normalize": "log1p"}, "normalize must be"),
        ({"genes": ["nope"]}, "not in adata.var_names"),
        ({"length_scales": [1.0, -2.0]}, "positive"),
        ({"n_inducing": 0}, "n_inducing"),
        ({"layer": "scaled"}, "raw counts"),
        ({"spatial_key": "xy"}, "obsm\\['xy'\\] is missing"),
        ({"normalize": None, "total_counts_key": "x"}, "only used with normalize='naive_de'"),
        ({"fidelity": "yes"}, "fidelity"),
    ],
)
def test_bad_arguments(kwargs, message):
    adata = tissue(n_spots=100, n_genes=10)
    adata.X = adata.X.toarray() * 0.5 + 0.25
    adata.layers["scaled"] = adata.X
    with pytest.raises(SpatiomeInputError, match=message):
        spatialde(adata, **kwargs)


def test_counts_given_as_normalized_values_warn():
    adata = tissue(n_spots=100, n_genes=10)
    with pytest.warns(UserWarning, match="look like raw counts"):
        spatialde(adata, layer="counts", normalize=None, copy=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spatialde(stabilized(adata), layer="regressed", normalize=None, copy=True)


def test_mouse_olfactory_bulb_matches_spatialde(shared_data):
    folder = shared_data / "mouse_ob_rep11"
    adata = sm.datasets.load("mouse_ob_rep11", data_dir=shared_data)
    info = pd.read_csv(folder / "spatialde_sample_info.csv", index_col=0)
    reference = pd.read_csv(folder / "reference" / "spatialde_rerun.csv", index_col=0)
    reference = reference.set_index("g")
    keep = np.asarray(adata.layers["counts"].sum(axis=0)).ravel() >= 3
    adata = adata[info.index, keep].copy()
    adata.obs["log_total_counts"] = np.log(adata.obs["spatialde_total_counts"])
    sm.pp.stabilize(adata)
    sm.pp.regress_out(adata)
    table = spatialde(adata, layer="regressed", normalize=None, fidelity=True)
    ours = set(table.index[table["qval_storey"] < 0.05])
    theirs = set(reference.index[reference["qval"] < 0.05])
    assert len(ours & theirs) / len(ours | theirs) >= 0.9
    common = table.index.intersection(reference.index)
    rho = stats.spearmanr(table.loc[common, "llr"], reference.loc[common, "LLR"]).statistic
    assert rho >= 0.99
    # The global optimum is never below the original's local one.
    assert (table.loc[common, "llr"] - reference.loc[common, "LLR"]).quantile(0.01) > -0.05
