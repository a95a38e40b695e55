"""SpatialData stores in and out, and io.read on every platform's output folder."""

from __future__ import annotations

import os
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

pytest.importorskip("spatialdata")
pytest.importorskip("spatialdata_io")

import spatialdata  # noqa: E402
from vendor_fixtures import write_codex, write_cosmx, write_merscope, write_stereoseq  # noqa: E402

from spatiome._core.validate import SpatiomeInputError  # noqa: E402
from spatiome.datasets import simulate_tissue  # noqa: E402
from spatiome.io import (  # noqa: E402
    detect_platform,
    read,
    read_spatialdata,
    read_visium,
    write_spatialdata,
)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _dense(matrix) -> np.ndarray:
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)


def _analysed(adata):
    """A Visium object carrying results, as the pipeline leaves it."""
    adata = adata.copy()
    adata.obs["spatial_domain"] = pd.Categorical(np.arange(adata.n_obs) % 3).astype(str)
    adata.obs["total_counts"] = np.asarray(adata.layers["counts"].sum(axis=1)).ravel()
    adata.var["moran_I"] = np.linspace(-0.1, 0.9, adata.n_vars)
    adata.obsm["X_pca"] = np.random.default_rng(0).normal(size=(adata.n_obs, 3))
    adata.uns["moranI"] = pd.DataFrame({"I": adata.var["moran_I"]}, index=adata.var_names)
    return adata


def test_round_trip_keeps_counts_coordinates_columns_results_and_images(tmp_path, build):
    run = build.visium(tmp_path)
    adata = _analysed(read_visium(run.outs))
    before = adata.copy()
    store = write_spatialdata(adata, tmp_path / "sample.zarr")

    back = read_spatialdata(store)
    assert back.obs_names.tolist() == adata.obs_names.tolist()
    assert back.var_names.tolist() == adata.var_names.tolist()
    np.testing.assert_array_equal(_dense(back.layers["counts"]), _dense(adata.layers["counts"]))
    np.testing.assert_array_equal(_dense(back.X), _dense(adata.X))
    np.testing.assert_array_equal(back.obsm["spatial"], adata.obsm["spatial"])
    np.testing.assert_allclose(back.obsm["X_pca"], adata.obsm["X_pca"])
    pd.testing.assert_frame_equal(back.obs, adata.obs)
    pd.testing.assert_frame_equal(back.var, adata.var)
    pd.testing.assert_frame_equal(back.uns["moranI"], adata.uns["moranI"])
    assert back.uns["spatial_unit"] == adata.uns["spatial_unit"]
    (library,) = adata.uns["spatial"]
    for kind, image in adata.uns["spatial"][library]["images"].items():
        np.testing.assert_array_equal(back.uns["spatial"][library]["images"][kind], image)
    assert (
        back.uns["spatial"][library]["scalefactors"]
        == (adata.uns["spatial"][library]["scalefactors"])
    )
    # the input is untouched (write_spatialdata moves images out of a copy only)
    assert set(adata.uns["spatial"][library]["images"]) == set(
        before.uns["spatial"][library]["images"]
    )
    pd.testing.assert_frame_equal(adata.obs, before.obs)


def test_written_store_is_valid_spatialdata_with_real_spot_diameter(tmp_path, build):
    run = build.visium(tmp_path)
    adata = read_visium(run.outs)
    store = write_spatialdata(adata, tmp_path / "sample.zarr")
    sdata = spatialdata.read_zarr(store)
    table = sdata.tables["table"]
    attrs = table.uns["spatialdata_attrs"]
    assert attrs["region"] == "spots"
    circles = sdata.shapes["spots"]
    diameter = build.scalefactors["spot_diameter_fullres"]
    np.testing.assert_allclose(2 * circles["radius"].to_numpy(), diameter)
    centres = np.column_stack([circles.geometry.x, circles.geometry.y])
    np.testing.assert_array_equal(centres, adata.obsm["spatial"])
    assert {"sample1_hires_image", "sample1_lowres_image"} <= set(sdata.images)
    # files are readable by the group, as every other output
    mode = os.stat(store / "zarr.json").st_mode & 0o777
    assert mode == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_cells_get_their_own_diameter_from_their_area(tmp_path):
    tissue = simulate_tissue(n_spots=100, n_genes=10, random_state=0)
    tissue.obs["cell_area"] = np.linspace(20.0, 80.0, tissue.n_obs)
    store = write_spatialdata(tissue, tmp_path / "cells.zarr")
    radius = spatialdata.read_zarr(store).shapes["spots"]["radius"].to_numpy()
    np.testing.assert_allclose(np.pi * radius**2, tissue.obs["cell_area"].to_numpy())


def test_spatialdata_io_visium_equals_our_reader(tmp_path, build):
    import spatialdata_io

    run = build.visium(tmp_path)
    ours = read_visium(run.outs)
    theirs = read_spatialdata(spatialdata_io.visium(run.outs, dataset_id="s1"))[ours.obs_names]
    np.testing.assert_array_equal(_dense(theirs.layers["counts"]), _dense(ours.layers["counts"]))
    np.testing.assert_allclose(theirs.obsm["spatial"], ours.obsm["spatial"])
    entry = theirs.uns["spatial"]["s1"]
    assert entry["scalefactors"]["spot_diameter_fullres"] == pytest.approx(
        build.scalefactors["spot_diameter_fullres"]
    )
    assert entry["scalefactors"]["tissue_hires_scalef"] == pytest.approx(
        build.scalefactors["tissue_hires_scalef"]
    )
    assert (
        entry["images"]["hires"].shape[:2]
        == ours.uns["spatial"]["sample1"]["images"]["hires"].shape[:2]
    )


def test_overwrite_is_refused_unless_asked_and_replaces_whole_store(tmp_path):
    tissue = simulate_tissue(n_spots=100, n_genes=10, random_state=0)
    store = write_spatialdata(tissue, tmp_path / "t.zarr")
    with pytest.raises(SpatiomeInputError, match="overwrite=True"):
        write_spatialdata(tissue, store)
    write_spatialdata(tissue[:20].copy(), store, overwrite=True)
    assert read_spatialdata(store).n_obs == 20
    assert [p.name for p in tmp_path.iterdir()] == ["t.zarr"]  # no temporary left


def test_read_errors_name_the_fix(tmp_path):
    with pytest.raises(SpatiomeInputError, match="no such SpatialData store"):
        read_spatialdata(tmp_path / "missing.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(SpatiomeInputError, match="not a SpatialData zarr store"):
        read_spatialdata(tmp_path / "plain")
    tissue = simulate_tissue(n_spots=100, n_genes=10, random_state=0)
    sdata = spatialdata.read_zarr(write_spatialdata(tissue, tmp_path / "t.zarr"))
    sdata.tables["other"] = sdata.tables["table"].copy()
    with pytest.raises(SpatiomeInputError, match="several tables .* pass table="):
        read_spatialdata(sdata)
    assert read_spatialdata(sdata, table="other").n_obs == 100
    with pytest.raises(SpatiomeInputError, match="choose one of \\['global'\\]"):
        read_spatialdata(sdata, table="table", coordinate_system="microns")


def test_several_coordinate_systems_need_a_choice_unless_one_is_native(tmp_path):
    from spatialdata.transformations import Scale, set_transformation

    tissue = simulate_tissue(n_spots=100, n_genes=10, random_state=0)
    sdata = spatialdata.read_zarr(write_spatialdata(tissue, tmp_path / "t.zarr"))
    set_transformation(sdata.shapes["spots"], Scale([2.0, 2.0], axes=("x", "y")), "doubled")
    native = read_spatialdata(sdata)
    np.testing.assert_allclose(native.obsm["spatial"], tissue.obsm["spatial"])
    doubled = read_spatialdata(sdata, coordinate_system="doubled")
    np.testing.assert_allclose(doubled.obsm["spatial"], 2 * tissue.obsm["spatial"])
    set_transformation(sdata.shapes["spots"], Scale([3.0, 3.0], axes=("x", "y")), "global")
    with pytest.raises(SpatiomeInputError, match="several coordinate systems"):
        read_spatialdata(sdata)


def test_x_counts_become_the_counts_layer(tmp_path):
    tissue = simulate_tissue(n_spots=100, n_genes=10, random_state=0)
    del tissue.layers["counts"]
    back = read_spatialdata(write_spatialdata(tissue, tmp_path / "t.zarr"))
    np.testing.assert_array_equal(_dense(back.layers["counts"]), _dense(tissue.X))


# ---- io.read on each platform's folder ----------------------------------------------


@pytest.fixture
def cells():
    rng = np.random.default_rng(3)
    counts = rng.poisson(2.0, size=(12, 5))
    counts[:, 0] += 1
    xy = rng.uniform(50.0, 900.0, size=(12, 2))
    return counts, xy, [f"Gene{i}" for i in range(5)]


def _by_id(adata, ids, counts, xy, id_column=None):
    keys = adata.obs[id_column].astype(str) if id_column else adata.obs_names.astype(str)
    rows = [list(map(str, ids)).index(k) for k in keys]
    genes = [g for g in adata.var_names if g.startswith("Gene")]
    np.testing.assert_array_equal(_dense(adata[:, genes].layers["counts"]), counts[rows])
    np.testing.assert_allclose(adata.obsm["spatial"], xy[rows], atol=1e-9)


def test_read_merscope_folder(tmp_path, cells):
    counts, xy, genes = cells
    ids = 10**12 + np.arange(len(counts))
    folder = write_merscope(tmp_path / "slide" / "region_0", counts, xy, genes, cell_ids=ids)
    assert detect_platform(folder) == "merscope"
    adata = read(folder)
    assert adata.uns["spatial_unit"] == "um"
    assert adata.uns["spatiome"]["source"]["platform"] == "merscope"
    _by_id(adata, ids, counts, xy)


def test_read_cosmx_folder_uses_global_coordinates(tmp_path, cells):
    counts, xy, genes = cells
    fov = np.repeat([1, 2], 6)
    folder = write_cosmx(tmp_path / "cosmx", counts, xy, genes, fov=fov)
    assert detect_platform(folder) == "cosmx"
    adata = read(folder)
    ids = [f"{i + 1}_{f}" for f, i in zip(fov, np.r_[np.arange(6), np.arange(6)], strict=True)]
    _by_id(adata, ids, counts, xy)


def test_read_cosmx_moves_negative_probes_out_of_the_genes(tmp_path, cells):
    counts, xy, genes = cells
    folder = write_cosmx(tmp_path / "cosmx", counts, xy, genes, negprobes=2)
    path = next(folder.glob("*exprMat_file.csv"))
    table = pd.read_csv(path)
    is_cell = table["cell_ID"] > 0
    table.loc[is_cell, "NegPrb2"] = np.arange(1, int(is_cell.sum()) + 1)
    table.to_csv(path, index=False)
    adata = read(folder)
    assert list(adata.var_names) == genes
    controls = adata.obsm["control_counts"]
    assert list(controls.columns) == ["NegPrb1", "NegPrb2"]
    expected = dict(zip(table["cell_ID"].astype(str) + "_" + table["fov"].astype(str),
                        table["NegPrb2"], strict=True))  # fmt: skip
    np.testing.assert_array_equal(controls["NegPrb2"], [expected[n] for n in adata.obs_names])
    np.testing.assert_array_equal(controls["NegPrb1"], 0)
    assert set(adata.uns["control_feature_types"].values()) == {"Negative Control Probe"}
    ids = [f"{i + 1}_1" for i in range(len(counts))]
    _by_id(adata, ids, counts, xy)
    # X and the counts layer still share one copy of the values.
    assert np.shares_memory(adata.X.data, adata.layers["counts"].data)


def test_cosmx_controls_under_atomx_names():
    from spatiome.io.spatialdata import _CONTROL_PREFIXES, _split_controls

    values = np.arange(12).reshape(3, 4)
    adata = ad.AnnData(
        sp.csr_matrix(values),
        var=pd.DataFrame(index=["ACTB", "Negative1", "SystemControl3", "CD3E"]),
    )
    adata.layers["counts"] = sp.csr_matrix(adata.X)
    genes = _split_controls(adata, _CONTROL_PREFIXES["cosmx"])
    assert list(genes.var_names) == ["ACTB", "CD3E"]
    np.testing.assert_array_equal(genes.layers["counts"].toarray(), values[:, [0, 3]])
    np.testing.assert_array_equal(genes.obsm["control_counts"].to_numpy(), values[:, [1, 2]])
    assert genes.uns["control_feature_types"] == {
        "Negative1": "Negative Control Probe",
        "SystemControl3": "System Control",
    }


def test_read_stereoseq_folder(tmp_path, cells):
    counts, xy, genes = cells
    folder = write_stereoseq(tmp_path / "stereo", counts, np.round(xy), genes)
    assert detect_platform(folder) == "stereoseq"
    adata = read(folder)
    assert adata.n_obs == len(counts)
    np.testing.assert_array_equal(
        np.sort(_dense(adata.layers["counts"]).sum(axis=1)), np.sort(counts.sum(axis=1))
    )


def test_read_codex_folder_from_any_working_folder(tmp_path, cells):
    counts, xy, _ = cells
    folder = write_codex(tmp_path / "codex", counts, xy, [f"M{i}" for i in range(5)])
    assert detect_platform(folder) == "codex"
    cwd = os.getcwd()
    adata = read(folder)
    assert os.getcwd() == cwd
    np.testing.assert_allclose(np.sort(_dense(adata.X).sum(axis=1)), np.sort(counts.sum(1)))
    np.testing.assert_allclose(np.sort(adata.obsm["spatial"][:, 0]), np.sort(xy[:, 0]))


def test_read_spatialdata_store_and_as_spatialdata(tmp_path):
    tissue = simulate_tissue(n_spots=100, n_genes=10, random_state=0)
    store = write_spatialdata(tissue, tmp_path / "t.zarr")
    assert detect_platform(store) == "spatialdata"
    assert read(store).shape == (100, 10)
    assert isinstance(read(store, as_spatialdata=True), spatialdata.SpatialData)


def test_unknown_folder_and_platform_errors(tmp_path):
    with pytest.raises(SpatiomeInputError, match="MERSCOPE"):
        read(tmp_path)
    with pytest.raises(SpatiomeInputError, match="platform='nanostring' is unknown"):
        read(tmp_path, platform="nanostring")
    with pytest.raises(SpatiomeInputError, match="merscope reader failed"):
        read(tmp_path, platform="merscope")


def test_visium_outs_as_spatialdata_names_the_library_like_our_reader(tmp_path, build):
    run = build.visium(tmp_path)
    sdata = read(run.outs, as_spatialdata=True)
    assert "sample1" in sdata.shapes
    back = read_spatialdata(sdata)[read_visium(run.outs).obs_names]
    assert back.uns["spatial"]["sample1"]["scalefactors"]["spot_diameter_fullres"] == (
        pytest.approx(build.scalefactors["spot_diameter_fullres"])
    )
