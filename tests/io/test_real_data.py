"""The shared public datasets load with the documented shapes (skipped when absent)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.io

from spatiome.io import read, read_slideseq, read_table

TABLES = {
    "mouse_ob_rep11": (262, 16218),
    "breast_cancer_layer2": (251, 14789),
    "seqfish_field43": (257, 249),
}


def _folder(shared_data, name):
    folder = shared_data / name
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    return folder


@pytest.mark.parametrize("name", sorted(TABLES))
def test_count_tables_match_pandas_reference(shared_data, name):
    folder = _folder(shared_data, name)
    adata = read_table(folder / "counts.csv.gz", folder / "coords.csv")
    assert adata.shape == TABLES[name]
    reference = pd.read_csv(folder / "counts.csv.gz", index_col=0)
    coords = pd.read_csv(folder / "coords.csv", index_col=0)
    np.testing.assert_array_equal(adata.layers["counts"].toarray(), reference.to_numpy())
    np.testing.assert_array_equal(adata.obsm["spatial"], coords.loc[reference.index, ["x", "y"]])
    assert adata.obs_names.tolist() == reference.index.astype(str).tolist()
    via_read = read(folder)
    assert via_read.shape == TABLES[name]
    assert (via_read.X != adata.X).nnz == 0


def test_dlpfc_matrix_market(shared_data):
    folder = _folder(shared_data, "dlpfc_151673")
    kwargs = {"x": "pxl_col_in_fullres", "y": "pxl_row_in_fullres", "spatial_unit": "pixel"}
    adata = read_table(folder / "matrix.mtx.gz", folder / "coords.csv", **kwargs)
    assert adata.shape == (3639, 7319)
    genes_x_spots = scipy.io.mmread(folder / "matrix.mtx.gz").tocsc()
    assert (adata.layers["counts"] != genes_x_spots.T.tocsr()).nnz == 0
    coords = pd.read_csv(folder / "coords.csv", index_col="barcode").loc[adata.obs_names]
    np.testing.assert_array_equal(
        adata.obsm["spatial"], coords[["pxl_col_in_fullres", "pxl_row_in_fullres"]]
    )
    np.testing.assert_array_equal(adata.obs["array_row"], coords["array_row"])
    assert adata.var_names[0].startswith("ENSG")
    via_read = read(folder)
    assert via_read.shape == (3639, 7319)
    assert via_read.uns["spatial_unit"] == "pixel"
    np.testing.assert_array_equal(via_read.obsm["spatial"], adata.obsm["spatial"])


def test_slideseq_cerebellum(shared_data):
    folder = _folder(shared_data, "rctd_cerebellum_slideseq")
    beads = read_slideseq(folder / "spatial_counts.csv.gz", folder / "coords.csv")
    assert beads.shape == (100, 378)
    coords = pd.read_csv(folder / "coords.csv")
    # the file's own totals are over all genes, the shipped table is a gene subset
    assert (np.asarray(beads.X.sum(axis=1)).ravel() <= coords["total_counts_in_file"]).all()
