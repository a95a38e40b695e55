"""The result tables of all SVG methods: no infinity, exact log10 p-values, progress."""

from __future__ import annotations

import warnings

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import spatiome as sm
from spatiome._core.progress import listen
from spatiome._core.stats import chi2_logsf
from spatiome.svg._result import PVAL_FLOOR, STATISTIC_CEILING

METHODS = ("moran", "geary", "sparkx", "spatialde", "trendseek")


def numeric_infinities(table: pd.DataFrame) -> list[str]:
    return [
        column
        for column in table.columns
        if table[column].dtype.kind in "fc" and np.isinf(table[column].to_numpy()).any()
    ]


def overwhelming_counts(n_spots: int = 3000, seed: int = 0) -> anndata.AnnData:
    """Random spots; one gene 200-fold higher on the right half, one Poisson noise gene."""
    rng = np.random.default_rng(seed)
    xy = rng.random((n_spots, 2))
    strong = rng.poisson(1 + 200 * (xy[:, 0] > 0.5))
    counts = np.column_stack([strong, rng.poisson(3, n_spots)])
    adata = anndata.AnnData(sp.csr_matrix(counts), obsm={"spatial": xy})
    adata.var_names = ["strong", "noise"]
    return adata


@pytest.mark.parametrize("pvalue_method", ["exact", "davies"])
def test_sparkx_statistic_beyond_the_double_range_is_finite_and_explained(pvalue_method):
    # The Cauchy statistic is about 1 / (pi p): here 10^477, which overflowed to inf (and
    # Davies' p-values underflowed to 0, giving log10_pval = -inf).
    table = sm.svg.sparkx(
        overwhelming_counts(), pvalue_method=pvalue_method, check_depth=False, copy=True
    )
    assert numeric_infinities(table) == []
    strong = table.loc["strong"]
    assert strong["statistic"] == STATISTIC_CEILING
    assert strong["pval"] == PVAL_FLOOR
    assert -490 < strong["log10_pval"] < -460
    # log10 C = -log10(p) - log10(pi), quoted in the note.
    log10_c = float(strong["note"].split("10^")[1].split(",")[0])
    assert log10_c == pytest.approx(-strong["log10_pval"] - np.log10(np.pi), abs=0.1)
    kernels = table.filter(like="pval_").loc["strong"].to_numpy(float)
    assert (kernels >= PVAL_FLOOR).all()
    assert table.loc["noise", "note"] == ""
    assert np.isfinite(table.loc["noise", "statistic"])


def test_spatialde_log10_pval_is_exact_beyond_the_double_range():
    rng = np.random.default_rng(0)
    xy = np.array([(i, j) for i in range(20) for j in range(20)], dtype=float)
    values = np.column_stack(
        [np.sin(xy[:, 0] / 4) + rng.normal(0, 0.01, 400), rng.normal(size=400)]
    )
    adata = anndata.AnnData(values, obsm={"spatial": xy})
    adata.var_names = ["strong", "noise"]
    table = sm.svg.spatialde(adata, layer=None, normalize=None, copy=True)
    assert numeric_infinities(table) == []
    strong = table.loc["strong"]
    assert strong["pval"] == PVAL_FLOOR  # chi2.sf(LLR, 1) was 0 here
    expected = chi2_logsf(np.array([strong["llr"]]), 1)[0] / np.log(10.0)
    assert strong["log10_pval"] == pytest.approx(expected, rel=1e-12)
    assert strong["log10_pval"] < -320
    noise = table.loc["noise"]
    assert noise["log10_pval"] == pytest.approx(np.log10(noise["pval"]), rel=1e-10)


def test_every_method_has_finite_log10_pval_on_a_simulated_tissue():
    adata = sm.datasets.simulate_tissue(n_spots=300, n_genes=30, random_state=3)
    sm.pp.normalize(adata)
    sm.graph.spatial_neighbors(adata, method="grid")
    tables = run_all(adata, list(adata.var_names))
    for method, table in tables.items():
        assert {"statistic", "pval", "log10_pval", "qval"} <= set(table.columns), method
        assert numeric_infinities(table) == [], method
        tested = table["pval"].notna()
        assert np.isfinite(table.loc[tested, "log10_pval"]).all(), method
        np.testing.assert_allclose(
            table.loc[tested, "log10_pval"], np.log10(table.loc[tested, "pval"]), rtol=1e-9
        )
        assert (table.loc[tested, "pval"] > 0).all(), method


def run_all(adata: anndata.AnnData, slow_genes: list[str]) -> dict[str, pd.DataFrame]:
    """Every SVG method as the pipeline runs it (SpatialDE and trendsceek on ``slow_genes``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "moran": sm.svg.moran(adata, copy=True),
            "geary": sm.svg.geary(adata, copy=True),
            "sparkx": sm.svg.sparkx(adata, layer="counts", copy=True),
            "spatialde": sm.svg.spatialde(adata, layer="counts", genes=slow_genes, copy=True),
            "trendseek": sm.svg.trendseek(
                adata, genes=slow_genes[:60], n_permutations=100, copy=True
            ),
        }


def test_mouse_olfactory_bulb_tables_are_finite(shared_data):
    adata = sm.datasets.load("mouse_ob_rep11", data_dir=shared_data)
    sm.pp.normalize(adata)
    sm.graph.spatial_neighbors(adata)
    counts = adata.layers["counts"]
    detected = np.asarray((counts > 0).sum(axis=0)).ravel()
    totals = np.asarray(counts.sum(axis=0)).ravel()
    # The slow methods get the most and the least expressed genes (down to one spot).
    order = np.argsort(totals)
    chosen = np.concatenate([order[::-1][:150], order[detected[order] > 0][:150]])
    slow_genes = list(adata.var_names[chosen])
    tables = run_all(adata, slow_genes)
    assert set(tables) == set(METHODS)
    for method, table in tables.items():
        assert numeric_infinities(table) == [], method
        tested = table["pval"].notna()
        assert tested.sum() > 0.9 * len(table), method
        assert np.isfinite(table.loc[tested, "log10_pval"]).all(), method
        assert (table.loc[tested, "pval"] >= PVAL_FLOOR).all(), method
    assert (tables["sparkx"]["note"] == "").sum() >= 0.9 * adata.n_vars


def progress_of(task: str, run) -> list[tuple[int, int]]:
    seen = []
    with listen(lambda name, done, total, unit, details: seen.append((name, done, total))):
        run()
    return [(done, total) for name, done, total in seen if name == task]


def test_spatialde_progress_counts_length_scales():
    adata = sm.datasets.simulate_tissue(n_spots=200, n_genes=20, random_state=0)
    updates = progress_of("svg.spatialde", lambda: sm.svg.spatialde(adata, copy=True))
    assert [d for d, _ in updates] == list(range(11))  # 0 when it starts
    assert updates[-1] == (10, 10)


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_trendseek_progress_counts_genes_from_every_thread(n_jobs):
    adata = sm.datasets.simulate_tissue(n_spots=150, n_genes=24, random_state=1)
    sm.pp.normalize(adata)
    adata.X[:, 3] = 0.0  # a constant gene is done at once
    updates = progress_of(
        "svg.trendseek",
        lambda: sm.svg.trendseek(adata, n_permutations=100, n_jobs=n_jobs, chunk_size=6, copy=True),
    )
    done = [d for d, _ in updates]
    assert len(done) >= 4
    assert all(b > a for a, b in zip(done, done[1:], strict=False))
    assert updates[-1] == (24, 24)
