"""read_xenium on h5 + parquet and mtx + csv.gz bundles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from spatiome._core.validate import SpatiomeInputError
from spatiome.io import read, read_xenium

CONTROLS = {
    "NegControlProbe_00001": "Negative Control Probe",
    "NegControlCodeword_0500": "Negative Control Codeword",
    "UnassignedCodeword_0001": "Unassigned Codeword",
    "DeprecatedCodeword_0002": "Deprecated Codeword",
    "Intergenic_Region_1": "Genomic Control",
}


def _make_xenium(root, build, *, matrix="h5", cells="parquet", n_cells=25, n_genes=9):
    root.mkdir(parents=True, exist_ok=True)
    features = build.features(n_genes, CONTROLS)
    counts = build.counts(len(features), n_cells, seed=3)
    cell_ids = [f"{chr(97 + i % 26)}{chr(97 + i // 26)}aaaaa-1" for i in range(n_cells)]
    if matrix == "h5":
        build.h5(root / "cell_feature_matrix.h5", counts, cell_ids, features)
    else:
        build.mtx(root / "cell_feature_matrix", counts, cell_ids, features)
    rng = np.random.default_rng(4)
    table = pd.DataFrame(
        {
            "cell_id": cell_ids,
            "x_centroid": rng.uniform(0, 5000, n_cells),
            "y_centroid": rng.uniform(0, 5000, n_cells),
            "transcript_counts": np.asarray(counts.sum(axis=0)).ravel(),
            "total_counts": np.asarray(counts.sum(axis=0)).ravel(),
            "cell_area": rng.uniform(20, 200, n_cells),
            "nucleus_area": rng.uniform(5, 50, n_cells),
        }
    ).sample(frac=1.0, random_state=2)
    if cells == "parquet":
        table.to_parquet(root / "cells.parquet", index=False)
    else:
        table.to_csv(root / "cells.csv.gz", index=False)
    dense = counts.T.toarray()
    return dense, cell_ids, table.set_index("cell_id").loc[cell_ids], features


@pytest.mark.parametrize(("matrix", "cells"), [("h5", "parquet"), ("mtx", "csv.gz")])
def test_xenium_round_trip(tmp_path, build, matrix, cells):
    dense, cell_ids, table, features = _make_xenium(tmp_path, build, matrix=matrix, cells=cells)
    adata = read_xenium(tmp_path)
    n_genes = 9
    assert adata.obs_names.tolist() == cell_ids
    assert adata.var_names.tolist() == features.names[:n_genes]
    np.testing.assert_array_equal(adata.X.toarray(), dense[:, :n_genes])
    np.testing.assert_array_equal(adata.layers["counts"].toarray(), dense[:, :n_genes])
    np.testing.assert_allclose(
        adata.obsm["spatial"], table[["x_centroid", "y_centroid"]].to_numpy(), rtol=0, atol=1e-12
    )
    assert adata.uns["spatial_unit"] == "um"
    for column in ("transcript_counts", "total_counts", "cell_area", "nucleus_area"):
        np.testing.assert_allclose(adata.obs[column].to_numpy(), table[column].to_numpy())
    controls = adata.obsm["control_counts"]
    assert controls.columns.tolist() == list(CONTROLS)
    np.testing.assert_array_equal(controls.to_numpy(), dense[:, n_genes:])
    assert adata.uns["control_feature_types"] == CONTROLS
    assert adata.uns["spatiome"]["source"]["format"] == "xenium"
    assert read(tmp_path).uns["spatiome"]["source"]["reader"] == "read_xenium"


def test_xenium_cells_missing_from_table(tmp_path, build):
    _make_xenium(tmp_path, build)
    path = tmp_path / "cells.parquet"
    pd.read_parquet(path).iloc[3:].to_parquet(path)
    with pytest.raises(SpatiomeInputError, match="3 of 25 cell ids") as err:
        read_xenium(tmp_path)
    assert str(path) in str(err.value)


def test_xenium_extra_cells_in_table(tmp_path, build):
    _make_xenium(tmp_path, build)
    path = tmp_path / "cells.parquet"
    table = pd.read_parquet(path)
    extra = table.iloc[:2].assign(cell_id=["zzz-1", "zzy-1"])
    pd.concat([table, extra]).to_parquet(path)
    with pytest.raises(SpatiomeInputError, match="2 cell ids are not in") as err:
        read_xenium(tmp_path)
    assert str(path) in str(err.value) and "zzz-1" in str(err.value)


def test_xenium_missing_cell_table_lists_names(tmp_path, build):
    _make_xenium(tmp_path, build)
    (tmp_path / "cells.parquet").unlink()
    with pytest.raises(SpatiomeInputError, match="cells.parquet, cells.csv.gz") as err:
        read_xenium(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_xenium_nan_centroid(tmp_path, build):
    _make_xenium(tmp_path, build, cells="csv.gz")
    path = tmp_path / "cells.csv.gz"
    table = pd.read_csv(path)
    table.loc[5, "y_centroid"] = np.nan
    table.to_csv(path, index=False)
    with pytest.raises(SpatiomeInputError, match="y_centroid") as err:
        read_xenium(tmp_path)
    assert str(path) in str(err.value)


def test_xenium_bytes_cell_ids_in_parquet(tmp_path, build):
    dense, cell_ids, _, _ = _make_xenium(tmp_path, build)
    path = tmp_path / "cells.parquet"
    table = pd.read_parquet(path)
    table["cell_id"] = [c.encode() for c in table["cell_id"]]
    table.to_parquet(path)
    adata = read_xenium(tmp_path)
    assert adata.obs_names.tolist() == cell_ids


def test_xenium_result_writes_to_h5ad(tmp_path, build):
    from spatiome.io import read_h5ad, write_h5ad

    dense, *_ = _make_xenium(tmp_path / "run", build)
    adata = read_xenium(tmp_path / "run")
    back = read_h5ad(write_h5ad(adata, tmp_path / "x.h5ad"))
    np.testing.assert_array_equal(back.obsm["control_counts"].to_numpy(), dense[:, 9:])
    assert back.uns["control_feature_types"] == CONTROLS
