"""read_visium / read_visium_hd on fixtures written in the Space Ranger layouts."""

from __future__ import annotations

import tempfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from spatiome._core.validate import SpatiomeInputError
from spatiome.io import read, read_visium, read_visium_hd


def _expected_positions(run) -> pd.DataFrame:
    return run.positions.set_index("barcode").loc[run.barcodes]


@pytest.mark.parametrize("matrix", ["h5", "mtx", "legacy"])
@pytest.mark.parametrize("positions", ["csv", "list"])
def test_visium_round_trip(tmp_path, build, matrix, positions):
    run = build.visium(tmp_path, matrix=matrix, positions=positions)
    adata = read_visium(run.outs)
    expected = _expected_positions(run)
    assert adata.obs_names.tolist() == run.barcodes
    assert adata.var_names.tolist() == run.features.names
    assert adata.var["gene_ids"].tolist() == run.features.ids
    assert (adata.var["feature_types"] == "Gene Expression").all()
    for layer in (adata.X, adata.layers["counts"]):
        assert sp.isspmatrix_csr(layer) or isinstance(layer, sp.csr_array)
        assert np.issubdtype(layer.dtype, np.integer)
        np.testing.assert_array_equal(layer.toarray(), run.counts)
    np.testing.assert_array_equal(
        adata.obsm["spatial"],
        expected[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=float),
    )
    for column in ("in_tissue", "array_row", "array_col"):
        np.testing.assert_array_equal(adata.obs[column].to_numpy(), expected[column].to_numpy())
    assert (adata.obs["in_tissue"] == 1).all()  # the off-tissue positions were dropped
    assert adata.uns["spatial_unit"] == "pixel"
    source = adata.uns["spatiome"]["source"]
    assert source["reader"] == "read_visium" and source["format"] == "visium"
    assert all(Path(p).is_absolute() and Path(p).exists() for p in source["paths"])
    if matrix == "h5":
        assert adata.var["genome"].tolist() == ["GRCh38"] * len(run.features)


def test_visium_images_and_scalefactors_stored_like_scanpy(tmp_path, build):
    run = build.visium(tmp_path)
    adata = read_visium(run.outs)
    assert list(adata.uns["spatial"]) == ["sample1"]
    library = adata.uns["spatial"]["sample1"]
    assert library["scalefactors"] == build.scalefactors
    for key, image in run.extra["images"].items():
        stored = library["images"][key]
        assert stored.shape[:2] == image.shape[:2]
        # PNG quantizes to 8 bits
        np.testing.assert_allclose(stored[..., :3], image, atol=1 / 255 + 1e-6)
    no_images = read_visium(run.outs, load_images=False)
    assert no_images.uns["spatial"]["sample1"]["images"] == {}


def test_visium_accepts_run_folder_and_read_dispatches(tmp_path, build):
    run = build.visium(tmp_path, images=False)
    via_run = read_visium(run.outs.parent)
    via_read = read(run.outs)
    np.testing.assert_array_equal(via_run.X.toarray(), run.counts)
    assert via_read.uns["spatiome"]["source"]["reader"] == "read_visium"


def test_visium_antibody_capture_goes_to_obsm_protein(tmp_path, build):
    run = build.visium(tmp_path, protein=3, images=False)
    adata = read_visium(run.outs)
    assert adata.n_vars == len(run.features) - 3
    np.testing.assert_array_equal(adata.X.toarray(), run.counts)
    protein = adata.obsm["protein"]
    assert isinstance(protein, pd.DataFrame)
    assert protein.columns.tolist() == ["CD0", "CD1", "CD2"]
    assert protein.index.tolist() == run.barcodes
    np.testing.assert_array_equal(protein.to_numpy(), run.protein)


def test_visium_library_id_from_h5_attrs(tmp_path, build):
    outs = tmp_path / "outs"
    feats = build.features(3)
    build.h5(
        outs / "filtered_feature_bc_matrix.h5",
        build.counts(3, 4),
        ["a", "b", "c", "d"],
        feats,
        library_ids=np.array([b"lib7"]),
        chemistry_description=b"Spatial 3' v1",
    )
    build.positions(outs / "spatial", build.positions_for(["a", "b", "c", "d"], 0), "csv")
    adata = read_visium(outs)
    assert list(adata.uns["spatial"]) == ["lib7"]
    assert adata.uns["spatial"]["lib7"]["metadata"]["chemistry_description"] == "Spatial 3' v1"


@settings(max_examples=25, deadline=None)
@given(
    n_genes=st.integers(1, 8),
    n_spots=st.integers(1, 10),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_property_random_sparse_counts_round_trip_through_h5(
    build, n_genes, n_spots, density, seed
):
    rng = np.random.default_rng(seed)
    dense = rng.integers(1, 1000, size=(n_genes, n_spots)) * (
        rng.random((n_genes, n_spots)) < density
    )
    barcodes = [f"B{i}-1" for i in range(n_spots)]
    with tempfile.TemporaryDirectory() as folder:
        outs = Path(folder)
        build.h5(
            outs / "filtered_feature_bc_matrix.h5",
            sp.csr_matrix(dense),
            barcodes,
            build.features(n_genes),
        )
        table = build.positions_for(barcodes, n_extra=int(rng.integers(0, 4)), seed=seed)
        build.positions(outs / "spatial", table, "csv")
        adata = read_visium(outs, load_images=False)
        np.testing.assert_array_equal(adata.layers["counts"].toarray(), dense.T)
        np.testing.assert_array_equal(adata.X.toarray(), dense.T)
        assert adata.obs_names.tolist() == barcodes
        expected = table.set_index("barcode").loc[barcodes]
        np.testing.assert_array_equal(
            adata.obsm["spatial"][:, 1], expected["pxl_row_in_fullres"].to_numpy()
        )


# --- Visium HD -------------------------------------------------------------------------


def _make_hd(root: Path, build, bin_sizes=(8, 16), matrix="h5"):
    truth = {}
    for size in bin_sizes:
        folder = root / "outs" / "binned_outputs" / f"square_{size:03d}um"
        n = 40 // size + 3
        barcodes = [f"s_{size:03d}um_{i:05d}_00000-1" for i in range(n)]
        counts = build.counts(5, n, seed=size)
        if matrix == "h5":
            build.h5(folder / "filtered_feature_bc_matrix.h5", counts, barcodes, build.features(5))
        else:
            build.mtx(folder / "filtered_feature_bc_matrix", counts, barcodes, build.features(5))
        table = build.positions_for(barcodes, n_extra=4, seed=size)
        table["pxl_row_in_fullres"] = table["pxl_row_in_fullres"] + 0.25
        build.positions(folder / "spatial", table, "parquet")
        build.images(folder / "spatial", {**build.scalefactors, "bin_size_um": float(size)})
        truth[size] = (counts.T.toarray(), barcodes, table.set_index("barcode").loc[barcodes])
    return truth


@pytest.mark.parametrize("matrix", ["h5", "mtx"])
def test_visium_hd_bin_sizes_and_path_forms(tmp_path, build, matrix):
    truth = _make_hd(tmp_path, build, matrix=matrix)
    for size, (counts, barcodes, expected) in truth.items():
        adata = read_visium_hd(tmp_path / "outs", bin_size=size)
        np.testing.assert_array_equal(adata.X.toarray(), counts)
        assert adata.obs_names.tolist() == barcodes
        np.testing.assert_array_equal(
            adata.obsm["spatial"],
            expected[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(),
        )
        assert adata.uns["spatial_unit"] == "pixel"
        (library,) = adata.uns["spatial"].values()
        assert library["scalefactors"]["bin_size_um"] == size
        assert set(library["images"]) == {"hires", "lowres"}
    bin_folder = tmp_path / "outs" / "binned_outputs" / "square_016um"
    direct = read_visium_hd(bin_folder)
    np.testing.assert_array_equal(direct.X.toarray(), truth[16][0])
    assert read(tmp_path / "outs").uns["spatiome"]["source"]["reader"] == "read_visium_hd"
    assert read(tmp_path).uns["spatiome"]["source"]["format"] == "visium_hd"


def test_visium_hd_missing_bin_size_names_available(tmp_path, build):
    _make_hd(tmp_path, build, bin_sizes=(8,))
    with pytest.raises(SpatiomeInputError, match="square_002um.*square_008um"):
        read_visium_hd(tmp_path / "outs", bin_size=2)


# --- bad input -------------------------------------------------------------------------


def test_missing_matrix_lists_accepted_names(tmp_path, build):
    run = build.visium(tmp_path, images=False)
    (run.outs / "filtered_feature_bc_matrix.h5").unlink()
    with pytest.raises(SpatiomeInputError) as err:
        read_visium(run.outs)
    assert str(run.outs) in str(err.value)
    assert "filtered_feature_bc_matrix.h5" in str(err.value)
    assert "filtered_feature_bc_matrix/" in str(err.value)


def test_missing_positions_lists_accepted_names(tmp_path, build):
    run = build.visium(tmp_path, images=False)
    (run.outs / "spatial" / "tissue_positions.csv").unlink()
    with pytest.raises(SpatiomeInputError, match="tissue_positions_list.csv") as err:
        read_visium(run.outs)
    assert "tissue_positions.csv" in str(err.value)


def test_matrix_barcodes_missing_from_positions(tmp_path, build):
    run = build.visium(tmp_path, images=False, n_extra=0)
    path = run.outs / "spatial" / "tissue_positions.csv"
    kept = run.positions[~run.positions["barcode"].isin(run.barcodes[:2])]
    kept.to_csv(path, index=False)
    with pytest.raises(SpatiomeInputError, match=r"2 of 30 barcodes") as err:
        read_visium(run.outs)
    assert str(path) in str(err.value) and run.barcodes[0] in str(err.value)


def test_duplicated_barcodes_in_positions(tmp_path, build):
    run = build.visium(tmp_path, images=False)
    path = run.outs / "spatial" / "tissue_positions.csv"
    pd.concat([run.positions, run.positions.iloc[:1]]).to_csv(path, index=False)
    with pytest.raises(SpatiomeInputError, match="duplicated barcodes") as err:
        read_visium(run.outs)
    assert str(path) in str(err.value)


def test_duplicated_barcodes_in_matrix(tmp_path, build):
    outs = tmp_path / "outs"
    path = build.h5(
        outs / "filtered_feature_bc_matrix.h5",
        build.counts(3, 3),
        ["a", "a", "b"],
        build.features(3),
    )
    build.positions(outs / "spatial", build.positions_for(["a", "b"], 0), "csv")
    with pytest.raises(SpatiomeInputError, match="duplicated barcodes") as err:
        read_visium(outs)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("value", ["abc", ""])
def test_non_numeric_or_nan_coordinates(tmp_path, build, value):
    run = build.visium(tmp_path, images=False)
    path = run.outs / "spatial" / "tissue_positions.csv"
    table = run.positions.astype({"pxl_col_in_fullres": object})
    table.loc[table["barcode"] == run.barcodes[3], "pxl_col_in_fullres"] = value
    table.to_csv(path, index=False)
    with pytest.raises(SpatiomeInputError, match="pxl_col_in_fullres") as err:
        read_visium(run.outs)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("bad", [-1, 2.5])
def test_negative_or_non_integer_counts(tmp_path, build, bad):
    outs = tmp_path / "outs"
    counts = build.counts(3, 4).astype(float).tolil()
    counts[1, 2] = bad
    path = outs / "filtered_feature_bc_matrix.h5"
    build.h5(path, counts.tocsr(), ["a", "b", "c", "d"], build.features(3))
    with h5py.File(path, "a") as handle:  # the fixture writes int32: store floats here
        csc = sp.csc_matrix(counts)
        del handle["matrix/data"]
        handle["matrix/data"] = csc.data
    build.positions(outs / "spatial", build.positions_for(["a", "b", "c", "d"], 0), "csv")
    with pytest.raises(SpatiomeInputError, match="negative|non-integer") as err:
        read_visium(outs)
    assert str(path) in str(err.value)


def test_empty_matrix(tmp_path, build):
    outs = tmp_path / "outs"
    path = build.h5(
        outs / "filtered_feature_bc_matrix.h5", sp.csr_matrix((3, 0)), [], build.features(3)
    )
    build.positions(outs / "spatial", build.positions_for(["a"], 0), "csv")
    with pytest.raises(SpatiomeInputError, match="empty") as err:
        read_visium(outs)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("damage", ["truncate", "not_hdf5", "missing_key"])
def test_corrupt_h5(tmp_path, build, damage):
    run = build.visium(tmp_path, images=False)
    path = run.outs / "filtered_feature_bc_matrix.h5"
    if damage == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "not_hdf5":
        path.write_text("barcode,count\n")
    else:
        with h5py.File(path, "a") as handle:
            del handle["matrix/indptr"]
    with pytest.raises(SpatiomeInputError, match="truncated or not a 10x HDF5 matrix") as err:
        read_visium(run.outs)
    assert str(path) in str(err.value)


def test_input_folder_is_not_modified(tmp_path, build):
    run = build.visium(tmp_path)
    before = {p: p.read_bytes() for p in run.outs.rglob("*") if p.is_file()}
    read_visium(run.outs)
    after = {p: p.read_bytes() for p in run.outs.rglob("*") if p.is_file()}
    assert before == after


@pytest.mark.filterwarnings("ignore:Variable names are not unique")
def test_duplicated_gene_symbols_made_unique_ids_kept(tmp_path, build):
    outs = tmp_path / "outs"
    features = build.features(3)
    features.names = ["Actb", "Pisd-ps1", "Pisd-ps1"]
    build.h5(outs / "filtered_feature_bc_matrix.h5", build.counts(3, 2), ["a", "b"], features)
    build.positions(outs / "spatial", build.positions_for(["a", "b"], 0), "list")
    adata = read_visium(outs)
    assert adata.var_names.is_unique
    assert adata.var["gene_symbol"].tolist() == features.names
    assert adata.var["gene_ids"].tolist() == features.ids
