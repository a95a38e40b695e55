"""spatiome run reads a SpatialData store and writes results.zarr beside or instead of
results.h5ad."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("spatialdata")

import spatiome as sm  # noqa: E402
from spatiome.cli import main  # noqa: E402
from spatiome.io import read_h5ad, read_spatialdata, write_spatialdata  # noqa: E402

OPTIONS = [
    "--no-umap", "--svg", "moran", "--modules", "none", "--n-domains", "3", "--no-progress",
]  # fmt: skip


def _dense(matrix) -> np.ndarray:
    return matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)


def test_run_on_a_store_writes_both_formats_then_drops_the_store(tmp_path):
    tissue = sm.datasets.simulate_tissue(n_spots=150, n_genes=40, random_state=5)
    store = write_spatialdata(tissue, tmp_path / "sample.zarr")
    out = tmp_path / "out"
    args = ["run", "--input", str(store), "--out", str(out), *OPTIONS]
    assert main([*args, "--output-format", "both"]) == 0

    h5ad = read_h5ad(out / "results.h5ad")
    zarr = read_spatialdata(out / "results.zarr")
    assert h5ad.n_obs == tissue.n_obs
    assert "sample.zarr" in (out / "provenance.json").read_text()
    assert zarr.obs_names.tolist() == h5ad.obs_names.tolist()
    np.testing.assert_array_equal(_dense(zarr.layers["counts"]), _dense(h5ad.layers["counts"]))
    np.testing.assert_allclose(_dense(zarr.X), _dense(h5ad.X))
    np.testing.assert_array_equal(zarr.obsm["spatial"], h5ad.obsm["spatial"])
    pd.testing.assert_frame_equal(zarr.obs, h5ad.obs)
    pd.testing.assert_frame_equal(zarr.var, h5ad.var)
    assert set(zarr.obsm) == set(h5ad.obsm)

    # a later run that writes only the h5ad removes the store of the earlier one
    assert main([*args, "--output-format", "h5ad"]) == 0
    assert (out / "results.h5ad").is_file()
    assert not (out / "results.zarr").exists()
    assert main([*args, "--output-format", "spatialdata"]) == 0
    assert (out / "results.zarr").is_dir() and not (out / "results.h5ad").exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".staging")]
