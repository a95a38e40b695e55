"""Highly variable genes: the one selection of pp.reduce, domains and integrate is scanpy's
seurat_v3, gene for gene and in the same order."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

import spatiome as sm
from spatiome._core.validate import SpatiomeInputError
from spatiome.pp import normalize, reduce
from spatiome.pp._hvg import seurat_v3_genes, seurat_v3_table


def _scanpy_table(counts, n_top_genes: int, batch=None) -> pd.DataFrame:
    adata = ad.AnnData(counts.copy())
    batch_key = None
    if batch is not None:
        batch_key = "sample"
        adata.obs[batch_key] = pd.Categorical(np.asarray(batch).astype(str))
    return sc.pp.highly_variable_genes(
        adata, flavor="seurat_v3", n_top_genes=n_top_genes, batch_key=batch_key, inplace=False
    )


def _assert_same_as_scanpy(counts, n_top_genes: int) -> None:
    ours = seurat_v3_genes(counts, n_top_genes)
    table = _scanpy_table(counts, n_top_genes)
    expected = np.flatnonzero(table["highly_variable"].to_numpy())
    assert ours.size == n_top_genes
    np.testing.assert_array_equal(np.sort(ours), expected)
    # One sample: the ranks are 0 .. n_top_genes - 1, so the order is scanpy's exactly.
    rank = table["highly_variable_rank"].to_numpy()
    np.testing.assert_array_equal(rank[ours], np.arange(n_top_genes))


@pytest.mark.parametrize(("seed", "n_genes", "n_top_genes"), [(0, 300, 50), (1, 500, 120)])
def test_same_genes_and_order_as_scanpy_on_simulated_tissues(seed, n_genes, n_top_genes):
    tissue = sm.datasets.simulate_tissue(800, n_genes, random_state=seed)
    _assert_same_as_scanpy(tissue.layers["counts"], n_top_genes)


@pytest.mark.parametrize(
    ("name", "n_top_genes"),
    [("dlpfc_151673", 2000), ("dlpfc_151673", 3000), ("mouse_ob_rep11", 3000)],
)
def test_same_genes_and_order_as_scanpy_on_real_sections(shared_data, name, n_top_genes):
    adata = sm.datasets.load(name, data_dir=shared_data, download=False)
    _assert_same_as_scanpy(adata.layers["counts"], n_top_genes)


def test_batch_aware_selection_is_scanpys():
    tissue = sm.datasets.simulate_tissue(900, 300, random_state=2)
    batch = np.repeat(["a", "b", "c"], 300)
    ours = seurat_v3_genes(tissue.layers["counts"], 60, batch=batch)
    table = _scanpy_table(tissue.layers["counts"], 60, batch=batch)
    np.testing.assert_array_equal(
        np.sort(ours), np.flatnonzero(table["highly_variable"].to_numpy())
    )
    # Ordered by median rank, ties by the number of samples (most first), as scanpy sorts.
    rank = table["highly_variable_rank"].to_numpy()[ours]
    n_batches = table["highly_variable_nbatches"].to_numpy()[ours]
    assert np.all(np.diff(rank) >= 0)
    ties = np.diff(rank) == 0
    assert np.all(np.diff(n_batches)[ties] <= 0)
    # The per-sample ranking differs from the pooled one on these counts.
    assert set(ours) != set(seurat_v3_genes(tissue.layers["counts"], 60))


def test_dense_csr_and_csc_counts_give_the_same_genes():
    tissue = sm.datasets.simulate_tissue(400, 200, random_state=4)
    counts = tissue.layers["counts"]
    expected = seurat_v3_genes(counts, 40)
    np.testing.assert_array_equal(seurat_v3_genes(counts.toarray(), 40), expected)
    np.testing.assert_array_equal(seurat_v3_genes(sp.csc_matrix(counts), 40), expected)


def test_prefers_overdispersed_genes():
    rng = np.random.default_rng(1)
    means = np.exp(rng.uniform(-2, 3, size=300))
    counts = rng.poisson(means, size=(400, 300)).astype(np.float32)
    # Genes 0-9 switch between a low and a high rate: far above the Poisson trend.
    switch = rng.random(400) < 0.5
    counts[:, :10] = rng.poisson(np.where(switch[:, None], 0.2, 5.0), size=(400, 10))
    counts[:, 10] = 0.0
    top = seurat_v3_genes(sp.csr_matrix(counts), 20)
    assert set(range(10)) == set(top[:10].tolist()) and 10 not in top


def test_too_few_varying_genes_is_a_clear_error():
    constant = np.tile([[1.0, 2.0, 0.0, 5.0, 3.0]], (30, 1))
    constant[::2, 0] = 4.0
    with pytest.raises(SpatiomeInputError, match="n_top_genes=None"):
        seurat_v3_genes(sp.csr_matrix(constant), 2)
    batch = np.repeat(["a", "b"], 15)
    rng = np.random.default_rng(0)
    counts = rng.poisson(3.0, size=(30, 50)).astype(np.float32)
    counts[15:] = 1.0
    with pytest.raises(SpatiomeInputError, match="sample 'b'"):
        seurat_v3_genes(sp.csr_matrix(counts), 10, batch=batch)


def test_reduce_writes_scanpys_seurat_v3_columns():
    tissue = sm.datasets.simulate_tissue(600, 300, random_state=5)
    normalize(tissue)
    before = tissue.layers["counts"].copy()
    reduce(tissue, n_comps=10, n_top_genes=60, umap=False)
    assert tissue.uns["spatiome"]["reduce"]["hvg_flavor"] == "seurat_v3"
    expected = ad.AnnData(before.copy(), var=pd.DataFrame(index=tissue.var_names))
    sc.pp.highly_variable_genes(expected, flavor="seurat_v3", n_top_genes=60)
    for column in ("highly_variable", "highly_variable_rank", "means", "variances"):
        np.testing.assert_array_equal(tissue.var[column], expected.var[column], err_msg=column)
    np.testing.assert_allclose(tissue.var["variances_norm"], expected.var["variances_norm"])
    assert (tissue.layers["counts"] != before).nnz == 0


def test_reduce_without_counts_layer_uses_seurat_on_the_log_data():
    tissue = sm.datasets.simulate_tissue(400, 200, random_state=6)
    normalize(tissue)
    del tissue.layers["counts"]
    reduce(tissue, n_comps=5, n_top_genes=40, umap=False)
    expected = sc.pp.highly_variable_genes(tissue, flavor="seurat", n_top_genes=40, inplace=False)[
        "highly_variable"
    ]
    assert tissue.uns["spatiome"]["reduce"]["hvg_flavor"] == "seurat"
    np.testing.assert_array_equal(tissue.var["highly_variable"], expected.to_numpy())


def test_domain_methods_select_the_same_genes_and_leave_var_alone():
    tissue = sm.datasets.simulate_tissue(500, 200, n_domains=3, random_state=7)
    normalize(tissue)
    columns = list(tissue.var.columns)
    result = sm.domains.cluster(tissue, 3, n_top_genes=40, n_comps=5, copy=True)
    assert result.uns["spatiome"]["spatial_domain"]["hvg_flavor"] == "seurat_v3"
    assert list(result.var.columns) == columns and list(tissue.var.columns) == columns
    torch = pytest.importorskip("torch")
    assert torch is not None
    from spatiome.domains.gnn import _preprocess

    _, genes = _preprocess(
        tissue.layers["counts"], tissue.var_names, 40, "seurat_v3", True, True, None, 0
    )
    expected = sc.pp.highly_variable_genes(
        ad.AnnData(tissue.layers["counts"].copy(), var=pd.DataFrame(index=tissue.var_names)),
        flavor="seurat_v3",
        n_top_genes=40,
        inplace=False,
    )
    assert set(genes) == set(tissue.var_names[expected["highly_variable"].to_numpy()])


def test_multimodal_rna_genes_are_scanpys_after_the_detection_filter():
    from spatiome.integrate.multimodal import _rna_features

    tissue = sm.datasets.simulate_tissue(500, 200, random_state=8)
    counts = tissue.layers["counts"]
    _, genes = _rna_features(counts, tissue.var_names, 40, 10, 5, 0)
    detected = np.flatnonzero(np.bincount(counts.indices, minlength=counts.shape[1]) >= 10)
    table = _scanpy_table(counts[:, detected], 40)
    expected = tissue.var_names[detected[table["highly_variable"].to_numpy()]]
    assert set(genes) == set(expected)


def test_table_is_scanpys():
    tissue = sm.datasets.simulate_tissue(300, 100, random_state=9)
    ours = seurat_v3_table(tissue.layers["counts"], 20)
    theirs = _scanpy_table(tissue.layers["counts"], 20)
    pd.testing.assert_frame_equal(ours.reset_index(drop=True), theirs.reset_index(drop=True))
