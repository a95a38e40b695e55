"""The results file and the report at scale: gzip for small results, no compression for
large ones, written atomically and read back by anndata unchanged; report figures of many
spots drawn from a seeded subsample."""

from __future__ import annotations

import anndata
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import spatiome as sm
from spatiome._core.validate import SpatiomeInputError
from spatiome.io import h5ad
from spatiome.workflow import PipelineConfig
from spatiome.workflow.sections import report_sections


def _results(n_obs: int = 300, n_vars: int = 40) -> anndata.AnnData:
    rng = np.random.default_rng(0)
    counts = sp.random(n_obs, n_vars, density=0.4, format="csr", random_state=0, dtype=np.float32)
    adata = anndata.AnnData(counts)
    adata.layers["counts"] = counts.copy()
    adata.obsm["spatial"] = rng.random((n_obs, 2))
    adata.obs["leiden"] = pd.Categorical(rng.integers(0, 3, n_obs).astype(str))
    return adata


def _compression(path) -> str | None:
    with h5py.File(path, "r") as handle:
        return handle["X"]["data"].compression


def test_small_results_stay_gzip_and_large_ones_are_written_uncompressed(tmp_path, monkeypatch):
    adata = _results()
    small = h5ad.write_h5ad(adata, tmp_path / "small.h5ad")
    assert h5ad.array_bytes(adata) <= h5ad.GZIP_MAX_BYTES
    assert _compression(small) == "gzip"
    monkeypatch.setattr(h5ad, "GZIP_MAX_BYTES", h5ad.array_bytes(adata) - 1)
    large = h5ad.write_h5ad(adata, tmp_path / "large.h5ad")
    assert _compression(large) is None
    assert large.stat().st_size > small.stat().st_size
    for path in (small, large):
        back = anndata.read_h5ad(path)
        assert (back.X != adata.X).nnz == 0
        assert (back.layers["counts"] != adata.layers["counts"]).nnz == 0
        np.testing.assert_array_equal(back.obsm["spatial"], adata.obsm["spatial"])
        assert back.obs["leiden"].equals(adata.obs["leiden"])
    # Written atomically: nothing but the two files in the folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["large.h5ad", "small.h5ad"]


def test_array_bytes_counts_every_array():
    adata = _results()
    x = adata.X.data.nbytes + adata.X.indices.nbytes + adata.X.indptr.nbytes
    assert h5ad.array_bytes(adata) == 2 * x + adata.obsm["spatial"].nbytes


@pytest.mark.parametrize("compression", ["gzip", "lzf", None])
def test_explicit_compression_is_kept(tmp_path, compression):
    path = h5ad.write_h5ad(_results(), tmp_path / "x.h5ad", compression=compression)
    assert _compression(path) == compression


def test_unknown_compression_is_one_clear_error(tmp_path):
    with pytest.raises(SpatiomeInputError, match="compression must be one of"):
        h5ad.write_h5ad(_results(), tmp_path / "x.h5ad", compression="zstd")
    assert list(tmp_path.iterdir()) == []


def test_report_maps_follow_the_run_seed(monkeypatch):
    """The report's maps pass the run's seed, so that the subsample drawn beyond the cap is
    the run's (checked with a cap below the data's size)."""
    from spatiome import pl

    seeds = []
    original = pl.spatial

    def spy(*args, **kwargs):
        seeds.append(kwargs.get("random_state"))
        return original(*args, **kwargs)

    monkeypatch.setattr(pl, "spatial", spy)
    data = sm.datasets.simulate_tissue(n_spots=300, n_genes=20, random_state=0)
    sm.pp.normalize(data)
    data.obs["leiden"] = data.obs["domain"].astype(str).astype("category")
    config = PipelineConfig(seed=11, svg_methods=("moran",), domain_methods=(), module_methods=())
    provenance = {
        "parameters": {"steps": ["normalize"]},
        "seed": 11,
        "versions": {},
        "inputs": {},
        "steps": {},
    }
    summary = {"n_spots": data.n_obs, "n_genes": data.n_vars}
    report_sections(data, {}, {}, summary, provenance, config, {})
    assert seeds and set(seeds) == {11}
