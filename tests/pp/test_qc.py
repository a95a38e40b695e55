"""pp.qc_metrics against hand-computed totals and percentages."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from spatiome._core.validate import SpatiomeInputError
from spatiome.pp import detect_species, qc_metrics


def _adata(genes: list[str], seed: int = 0, n_obs: int = 40) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    counts = sp.csr_matrix(rng.poisson(1.5, size=(n_obs, len(genes))))
    adata = ad.AnnData(counts.copy(), var=pd.DataFrame(index=genes))
    adata.obs_names = [f"spot{i}" for i in range(n_obs)]
    adata.layers["counts"] = counts
    return adata


HUMAN = ["MT-CO1", "MT-ND2", "RPS6", "RPL13", "HBA1", "HBB", "ACTB", "GAPDH", "MTOR", "HBEGF"]
MOUSE = ["mt-Co1", "mt-Nd2", "Rps6", "Rpl13", "Hba-a1", "Hbb-bs", "Actb", "Gapdh", "Mtor", "Hbegf"]


def _reference(counts: np.ndarray, mask: np.ndarray) -> np.ndarray:
    total = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 100 * counts[:, mask].sum(axis=1) / total, 0.0)


@pytest.mark.parametrize("genes, species", [(HUMAN, "human"), (MOUSE, "mouse")])
def test_totals_and_percentages_match_hand_computation(genes, species):
    adata = _adata(genes)
    dense = adata.layers["counts"].toarray().astype(float)
    qc_metrics(adata)
    assert adata.uns["spatiome"]["qc_metrics"]["species"] == species
    np.testing.assert_allclose(adata.obs["total_counts"], dense.sum(axis=1))
    np.testing.assert_array_equal(adata.obs["n_genes_by_counts"], (dense > 0).sum(axis=1))
    expected = {
        "mt": np.array([True, True] + [False] * 8),
        "ribo": np.array([False, False, True, True] + [False] * 6),
        "hb": np.array([False] * 4 + [True, True] + [False] * 4),
    }
    for name, mask in expected.items():
        np.testing.assert_array_equal(adata.var[name].to_numpy(), mask)
        np.testing.assert_allclose(adata.obs[f"pct_counts_{name}"], _reference(dense, mask))
    np.testing.assert_array_equal(adata.var["n_cells_by_counts"], (dense > 0).sum(axis=0))


def test_reads_counts_layer_not_x():
    adata = _adata(HUMAN)
    adata.X = sp.csr_matrix(np.log1p(adata.X.toarray().astype(float)))
    qc_metrics(adata)
    np.testing.assert_allclose(
        adata.obs["total_counts"], adata.layers["counts"].toarray().sum(axis=1)
    )


def test_prefix_overrides_and_species_argument():
    adata = _adata(["chrM-1", "chrM-2", "A", "B"])
    qc_metrics(adata, mito_prefix="chrM-", ribo_prefix="A", hb_pattern="^B$")
    assert adata.var["mt"].tolist() == [True, True, False, False]
    assert adata.var["ribo"].tolist() == [False, False, True, False]
    assert adata.var["hb"].tolist() == [False, False, False, True]
    forced = _adata(MOUSE)
    qc_metrics(forced, species="human")
    assert not forced.var["mt"].any()
    with pytest.raises(SpatiomeInputError, match="species"):
        qc_metrics(_adata(HUMAN), species="zebrafish")


def test_detect_species():
    assert detect_species(MOUSE) == "mouse"
    assert detect_species(HUMAN) == "human"
    assert detect_species(["ENSG000001", "ENSG000002", "Actb", "Gapdh"]) == "mouse"
    assert detect_species(MOUSE_IDS) == "mouse"
    assert detect_species(HUMAN_IDS) == "human"


HUMAN_IDS = ["ENSG00000198804.2", "ENSG00000198712", "ENSG00000075624", "ENSG00000111640"]
MOUSE_IDS = ["ENSMUSG00000064351", "ENSMUSG00000065947", "ENSMUSG00000029580", "ENSMUSG00000057666"]


@pytest.mark.parametrize("ids, species", [(HUMAN_IDS, "human"), (MOUSE_IDS, "mouse")])
def test_ensembl_ids_alone_find_mitochondrial_genes_by_id(ids, species):
    # CO1 and CO2 (the first with a version suffix), then ACTB and GAPDH.
    adata = _adata(ids)
    dense = adata.layers["counts"].toarray().astype(float)
    qc_metrics(adata)
    record = adata.uns["spatiome"]["qc_metrics"]
    assert record["species"] == species
    assert record["n_mito_genes"] == 2
    assert "Ensembl ids" in record["gene_names"]
    mask = np.array([True, True, False, False])
    np.testing.assert_array_equal(adata.var["mt"].to_numpy(), mask)
    np.testing.assert_allclose(adata.obs["pct_counts_mt"], _reference(dense, mask))
    # An explicit prefix is taken as given.
    qc_metrics(adata, mito_prefix="MT-")
    assert not adata.var["mt"].any()


def test_symbol_column_is_used_when_var_names_are_ensembl_ids():
    ids = [f"ENSG{i:011d}" for i in range(len(HUMAN))]
    adata = _adata(ids)
    adata.var["feature_name"] = HUMAN
    by_symbol = _adata(HUMAN)
    qc_metrics(adata)
    qc_metrics(by_symbol)
    assert adata.uns["spatiome"]["qc_metrics"]["gene_names"] == "var['feature_name']"
    for name in ("mt", "ribo", "hb"):
        np.testing.assert_array_equal(adata.var[name].to_numpy(), by_symbol.var[name].to_numpy())
    np.testing.assert_allclose(adata.obs["pct_counts_mt"], by_symbol.obs["pct_counts_mt"])
    assert adata.var_names.tolist() == ids


def test_copy_leaves_input_untouched():
    adata = _adata(HUMAN)
    before = adata.copy()
    result = qc_metrics(adata, copy=True)
    assert "total_counts" in result.obs and "total_counts" not in adata.obs
    assert list(adata.var.columns) == list(before.var.columns)
    assert "spatiome" not in adata.uns
    assert (adata.layers["counts"] != before.layers["counts"]).nnz == 0


def test_rejects_non_counts_and_missing_layer():
    adata = _adata(HUMAN)
    adata.layers["counts"] = adata.layers["counts"] * 0.5
    with pytest.raises(SpatiomeInputError, match="non-integer"):
        qc_metrics(adata)
    with pytest.raises(SpatiomeInputError, match="raw"):
        qc_metrics(_adata(HUMAN), layer="raw")
