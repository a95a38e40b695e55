"""Xenium and Visium HD bundles read whole as SpatialData, and their tables back as AnnData.

The bundles are written by ``vendor_fixtures.write_xenium`` / ``write_visium_hd``, which both
spatiome's own readers and spatialdata-io (default arguments) read. The tables that
``read_spatialdata`` takes from the SpatialData must equal what spatiome's readers give,
matched by cell id or bin barcode (both write rows in a shuffled order).

Coordinate systems: spatialdata-io places every Xenium element in ``"global"``, which is
in morphology-image pixels (µm / ``pixel_size``), and every Visium HD bin in the system
named after the dataset id (here ``""``, as Space Ranger names ``feature_slice.h5`` without
a prefix), which is full-resolution pixels like ``read_visium_hd``'s ``obsm['spatial']``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("spatialdata")
pytest.importorskip("spatialdata_io")

import spatialdata  # noqa: E402
from vendor_fixtures import coarsen_bins, write_visium_hd, write_xenium  # noqa: E402

from spatiome.io import read, read_spatialdata, read_vendor  # noqa: E402

PIXEL_SIZE = 0.2125
N_GENES = 6
GENES = [f"Gene{i}" for i in range(N_GENES)]
HD_ROWS, HD_COLS = 24, 20  # 2 µm grid; 8 µm: 6 x 5, 16 µm: 3 x 3 (last row/column partial)


@pytest.fixture(autouse=True)
def _quiet():
    # spatialdata-io's notices (default changes, missing full-resolution image) and zarr's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x)


# ---------------------------------------------------------------------------- Xenium


@pytest.fixture(scope="module")
def xenium(tmp_path_factory):
    rng = np.random.default_rng(21)
    gx, gy = np.meshgrid(np.arange(6), np.arange(5))
    # cells 15 µm apart (6 µm squares): every label mask holds its cell whole
    xy = np.column_stack([gx.ravel(), gy.ravel()]) * 15.0 + 20.0 + rng.uniform(-2, 2, (30, 2))
    counts = rng.poisson(2.0, size=(30, N_GENES))
    counts[:, 0] += 1
    folder = write_xenium(
        tmp_path_factory.mktemp("xenium") / "bundle", counts, xy, GENES, pixel_size=PIXEL_SIZE
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata = read(folder, as_spatialdata=True)
    return folder, counts, sdata


def test_xenium_spatialdata_holds_every_element(xenium):
    folder, counts, sdata = xenium
    assert isinstance(sdata, spatialdata.SpatialData)
    assert list(sdata.tables) == ["table"]
    assert sdata["table"].shape == counts.shape
    assert {"cell_boundaries", "nucleus_boundaries"} <= set(sdata.shapes)
    assert len(sdata["cell_boundaries"]) == len(sdata["nucleus_boundaries"]) == counts.shape[0]
    assert list(sdata.points) == ["transcripts"]
    transcripts = sdata["transcripts"].compute()
    assigned = transcripts[transcripts["cell_id"] != "UNASSIGNED"]
    assert len(assigned) == counts.sum()
    assert list(sdata.images) == ["morphology_focus"]
    assert {"cell_labels", "nucleus_labels"} <= set(sdata.labels)


def test_xenium_table_matches_own_reader(xenium):
    folder, _, sdata = xenium
    own = read(folder)
    assert own.uns["spatiome"]["source"]["reader"] == "read_xenium"
    # images=False: see test_xenium_read_spatialdata_multiscale_image below
    table = read_spatialdata(sdata, images=False)
    assert table.uns["spatiome"]["source"]["coordinate_system"] == "global"
    assert sorted(table.obs_names) == sorted(own.obs_names)
    table = table[own.obs_names]
    assert table.var_names.tolist() == own.var_names.tolist() == GENES
    np.testing.assert_array_equal(_dense(table.layers["counts"]), _dense(own.layers["counts"]))
    # the table annotates the cell label masks, whose centroids are in pixels and rounded
    # to the pixel grid: within one pixel of the µm centroids once scaled
    np.testing.assert_allclose(
        table.obsm["spatial"] * PIXEL_SIZE, own.obsm["spatial"], rtol=0, atol=PIXEL_SIZE
    )
    # the cell boundaries (float32 vertices) centre on the cells, in pixels as well
    centres = spatialdata.get_centroids(sdata["cell_boundaries"], coordinate_system="global")
    centres = centres.compute() if hasattr(centres, "compute") else centres
    np.testing.assert_allclose(
        centres.loc[own.obs_names, ["x", "y"]].to_numpy() * PIXEL_SIZE,
        own.obsm["spatial"],
        rtol=0,
        atol=1e-4,
    )


def test_xenium_anndata_path_through_spatialdata_io_is_in_microns(xenium):
    folder, _, _ = xenium
    own = read(folder)
    via = read_vendor(folder, "xenium")
    assert via.uns["spatial_unit"] == own.uns["spatial_unit"] == "um"
    via = via[own.obs_names]
    np.testing.assert_array_equal(_dense(via.layers["counts"]), _dense(own.layers["counts"]))
    np.testing.assert_array_equal(via.obsm["spatial"], own.obsm["spatial"])


def test_xenium_read_spatialdata_multiscale_image(xenium):
    _, _, sdata = xenium
    table = read_spatialdata(sdata)
    (entry,) = table.uns["spatial"].values()
    hires = entry["images"]["hires"]
    assert hires.ndim == 3 and max(hires.shape[:2]) <= 2000
    assert entry["scalefactors"]["tissue_hires_scalef"] > 0


# ------------------------------------------------------------------------- Visium HD


@pytest.fixture(scope="module")
def visium_hd(tmp_path_factory):
    rng = np.random.default_rng(22)
    fine = rng.poisson(0.3, size=(HD_ROWS * HD_COLS, N_GENES))
    fine[: 2 * HD_COLS] = 0  # two empty rows: bins outside the tissue at every size
    counts = {2: fine, 8: coarsen_bins(fine, HD_COLS, 4), 16: coarsen_bins(fine, HD_COLS, 8)}
    outs = tmp_path_factory.mktemp("hd") / "run" / "outs"
    write_visium_hd(outs, counts, GENES, n_cols=HD_COLS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata = read(outs, as_spatialdata=True)
    return outs, counts, sdata


def test_visium_hd_spatialdata_has_a_table_per_bin_size(visium_hd):
    outs, counts, sdata = visium_hd
    assert sorted(sdata.tables) == ["square_002um", "square_008um", "square_016um"]
    for size in (2, 8, 16):
        name = f"square_{size:03d}um"
        table = sdata.tables[name]
        assert table.uns["spatialdata_attrs"]["region"] == f"_{name}"
        assert len(sdata.shapes[f"_{name}"]) == table.n_obs
        assert table.n_obs == int((_dense(counts[size]).sum(axis=1) > 0).sum())
        assert _dense(table.X).sum() == counts[2].sum()  # coarser bins are sums of 2 µm ones


@pytest.mark.parametrize("size", [16, 8, 2])
def test_visium_hd_table_matches_own_reader(visium_hd, size):
    outs, _, sdata = visium_hd
    own = read(outs, bin_size=size)
    assert own.uns["spatiome"]["source"]["reader"] == "read_visium_hd"
    table = read_spatialdata(sdata, table=f"square_{size:03d}um", images=False)
    # "" (the dataset id) is the full-resolution pixel system, where the bins sit untransformed
    assert table.uns["spatiome"]["source"]["coordinate_system"] == ""
    assert sorted(table.obs_names) == sorted(own.obs_names)
    table = table[own.obs_names]
    assert table.var_names.tolist() == own.var_names.tolist()
    np.testing.assert_array_equal(_dense(table.layers["counts"]), _dense(own.layers["counts"]))
    np.testing.assert_allclose(table.obsm["spatial"], own.obsm["spatial"], rtol=0, atol=1e-9)
    grid = ["in_tissue", "array_row", "array_col"]
    pd.testing.assert_frame_equal(
        table.obs[grid].astype(np.int64), own.obs[grid].astype(np.int64), check_index_type=False
    )
