"""read_h5ad / write_h5ad: round trip, provenance, atomic writes, clear errors."""

from __future__ import annotations

import anndata
import numpy as np
import pytest

from spatiome._core.validate import SpatiomeInputError
from spatiome.io import read, read_h5ad, read_visium, write_h5ad


def test_round_trip_keeps_everything_from_a_reader(tmp_path, build):
    run = build.visium(tmp_path, protein=2)
    adata = read_visium(run.outs)
    target = write_h5ad(adata, tmp_path / "out" / "sample.h5ad")
    back = read(target)
    np.testing.assert_array_equal(back.layers["counts"].toarray(), run.counts)
    np.testing.assert_array_equal(back.X.toarray(), run.counts)
    np.testing.assert_array_equal(back.obsm["spatial"], adata.obsm["spatial"])
    np.testing.assert_array_equal(back.obsm["protein"].to_numpy(), run.protein)
    assert back.var["gene_ids"].tolist() == run.features.ids[:-2]
    library = back.uns["spatial"]["sample1"]
    np.testing.assert_array_equal(
        library["images"]["hires"], adata.uns["spatial"]["sample1"]["images"]["hires"]
    )
    assert back.uns["spatial_unit"] == "pixel"
    source = back.uns["spatiome"]["source"]
    assert source["reader"] == "read_h5ad" and source["paths"] == [str(target.resolve())]
    assert source["previous"]["reader"] == "read_visium"


def test_write_is_atomic_when_the_writer_fails(tmp_path, monkeypatch):
    adata = anndata.AnnData(np.ones((3, 2)))
    target = tmp_path / "result.h5ad"

    def half_write(self, filename, **kwargs):
        with open(filename, "wb") as handle:
            handle.write(b"\x89HDF partial")
        raise OSError("disk full")

    monkeypatch.setattr(anndata.AnnData, "write_h5ad", half_write)
    with pytest.raises(OSError, match="disk full"):
        write_h5ad(adata, target)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "result.h5ad"
    write_h5ad(anndata.AnnData(np.ones((3, 2))), target)
    before = target.read_bytes()

    def fail(self, filename, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(anndata.AnnData, "write_h5ad", fail)
    with pytest.raises(RuntimeError):
        write_h5ad(anndata.AnnData(np.zeros((4, 4))), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["result.h5ad"]


def test_read_h5ad_errors_name_the_file(tmp_path):
    with pytest.raises(SpatiomeInputError, match="not found") as err:
        read_h5ad(tmp_path / "absent.h5ad")
    assert "absent.h5ad" in str(err.value)
    good = write_h5ad(anndata.AnnData(np.ones((5, 5))), tmp_path / "good.h5ad")
    broken = tmp_path / "broken.h5ad"
    broken.write_bytes(good.read_bytes()[:200])
    with pytest.raises(SpatiomeInputError, match="truncated") as err:
        read_h5ad(broken)
    assert str(broken) in str(err.value)
