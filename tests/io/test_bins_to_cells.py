"""Visium HD bins to cells: exact sums, the three segmentation inputs, growth, errors."""

from __future__ import annotations

import copy
import json

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from spatiome._core.validate import SpatiomeInputError
from spatiome.datasets.visium_hd import assigned_purity, right_cell_fraction, simulate_visium_hd
from spatiome.io.bins import assign_bins, bins_to_cells, read_barcode_mappings

BIN_UM = 2.0
# maps the bin centres of grid_bins to their (column, row) on the grid
AFFINE_HALF = np.array([[0.5, 0.0, -0.5], [0.0, 0.5, -0.5]])


def grid_bins(n_rows: int, n_cols: int, counts: np.ndarray | None = None) -> anndata.AnnData:
    """Bins of a ``n_rows`` x ``n_cols`` grid, centres in micrometres, row-major order."""
    row, col = np.divmod(np.arange(n_rows * n_cols), n_cols)
    if counts is None:
        counts = np.column_stack([np.arange(n_rows * n_cols) % 3, np.ones(n_rows * n_cols)])
    bins = anndata.AnnData(
        sp.csr_matrix(np.asarray(counts, dtype=np.int64)),
        obs=pd.DataFrame(
            {"array_row": row, "array_col": col},
            index=[f"s_002um_{r:05d}_{c:05d}-1" for r, c in zip(row, col, strict=True)],
        ),
        var=pd.DataFrame(index=[f"G{g}" for g in range(np.shape(counts)[1])]),
    )
    bins.layers["counts"] = bins.X.copy()
    bins.obsm["spatial"] = np.column_stack([(col + 0.5) * BIN_UM, (row + 0.5) * BIN_UM])
    bins.uns["spatial_unit"] = "um"
    return bins


def test_sums_match_hand_computed_values():
    # 2 x 3 grid; cells: A = bins 0, 1, 3; B = bin 5; bins 2 and 4 in no cell.
    counts = np.array([[1, 0], [2, 3], [5, 5], [0, 4], [7, 0], [1, 1]])
    bins = grid_bins(2, 3, counts)
    ids = ["A", "A", None, "A", "", "B"]
    cells = bins_to_cells(bins, ids)
    assert cells.obs_names.tolist() == ["A", "B"]
    assert cells.X.toarray().tolist() == [[3, 7], [1, 1]]
    assert cells.layers["counts"].toarray().tolist() == [[3, 7], [1, 1]]
    assert sp.isspmatrix_csr(cells.X) and cells.X.dtype.kind == "i"
    assert cells.obs["n_bins"].tolist() == [3, 1]
    assert cells.obs["area_um2"].tolist() == [12.0, 4.0]
    assert cells.obs["cell_id"].tolist() == ["A", "B"]
    # count-weighted centroid of A: bins (1,1) w=1, (3,1) w=5, (1,3) w=4
    assert np.allclose(cells.obsm["spatial"][0], [(1 + 15 + 4) / 10, (1 + 5 + 12) / 10])
    area = bins_to_cells(bins, ids, centroid="area")
    assert np.allclose(area.obsm["spatial"][0], [5 / 3, 5 / 3])
    summary = cells.uns["spatiome"]["bins_to_cells"]
    assert summary["unassigned_counts"] == 17 and summary["assigned_counts"] == 12
    assert summary["n_bins_assigned"] == 4 and summary["n_cells"] == 2
    assert cells.uns["spatial_unit"] == "um"
    assert cells.uns["spatiome"]["source"]["reader"] == "bins_to_cells"


def test_aggregation_equals_dense_reference_on_random_bins():
    rng = np.random.default_rng(3)
    bins = grid_bins(6, 7, rng.poisson(1.5, size=(42, 5)))
    ids = rng.integers(0, 6, size=42)  # 0 = no cell
    cells = bins_to_cells(bins, ids)
    dense = bins.X.toarray()
    for name, row in zip(cells.obs_names, cells.X.toarray(), strict=True):
        assert row.tolist() == dense[ids == int(name)].sum(axis=0).tolist()


def test_label_image_through_an_affine_matches_per_bin_ids():
    bins = grid_bins(4, 5)
    per_bin = np.array([1, 1, 0, 2, 2, 1, 1, 0, 2, 2, 0, 0, 0, 0, 0, 3, 3, 3, 0, 0])
    # image at 0.4 µm per pixel (5 pixels per bin), shifted by 7 pixels in x and 3 in y
    image = np.zeros((4 * 5 + 3, 5 * 5 + 7), dtype=np.int32)
    grid = per_bin.reshape(4, 5)
    image[3:, 7:] = np.kron(grid, np.ones((5, 5), dtype=np.int32))
    affine = np.array([[2.5, 0.0, -0.5 + 7], [0.0, 2.5, -0.5 + 3]])
    from_image = bins_to_cells(bins, image, transform=affine)
    from_ids = bins_to_cells(bins, per_bin)
    assert from_image.obs_names.tolist() == ["1", "2", "3"]
    assert (from_image.X != from_ids.X).nnz == 0
    assert from_image.uns["spatiome"]["source"]["transform"] == affine.tolist()
    three_by_three = np.vstack([affine, [0.0, 0.0, 1.0]])
    again = bins_to_cells(bins, image, transform=three_by_three)
    assert (again.X != from_ids.X).nnz == 0


def test_scale_transform_and_identity():
    bins = grid_bins(2, 2)
    bins.obsm["spatial"] = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    half = np.array([[4, 5], [6, 0]])
    assert assign_bins(bins, half, transform=0.5).tolist() == ["4", "5", "6", np.nan]
    full = np.zeros((3, 3), dtype=int)
    full[0, 2] = 8
    assert assign_bins(bins, full).tolist() == [np.nan, "8", np.nan, np.nan]


@pytest.mark.parametrize(
    "make",
    [
        lambda bins, ids: ids,
        lambda bins, ids: np.asarray(ids),
        lambda bins, ids: pd.Series(ids, index=bins.obs_names)[::-1],  # aligned by name
        lambda bins, ids: pd.Categorical(ids),
        lambda bins, ids: pd.Series(ids).replace({"0": np.nan}),
    ],
    ids=["list", "array", "series_by_name", "categorical", "series_nan"],
)
def test_per_bin_id_forms(make):
    bins = grid_bins(2, 3)
    ids = ["c1", "c2", "0", "c1", "c2", "c2"]
    assigned = assign_bins(bins, make(bins, ids))
    assert assigned.tolist() == ["c1", "c2", np.nan, "c1", "c2", "c2"]
    assert assigned.index.equals(bins.obs_names)


def test_obs_column_of_integer_labels():
    bins = grid_bins(2, 3)
    bins.obs["nucleus"] = [3, 3, 0, 0, 9, 9]
    cells = bins_to_cells(bins, "nucleus")
    assert cells.obs_names.tolist() == ["3", "9"]
    assert cells.uns["spatiome"]["source"]["segmentation"] == "obs column nucleus"


def test_growth_reaches_the_nearest_label_within_the_distance_only():
    bins = grid_bins(1, 10)  # centres 2 µm apart
    nuclei = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 2])
    none = [np.nan] * 4
    grown_um = assign_bins(bins, nuclei, expand_um=4.0).tolist()
    assert grown_um == ["1", "1", "1", *none, "2", "2", "2"]
    assert assign_bins(bins, nuclei, expand_bins=2).tolist() == grown_um
    assert assign_bins(bins, nuclei, expand_um=3.9).tolist()[:3] == ["1", "1", np.nan]
    assert assign_bins(bins, nuclei).tolist()[1:9] == [np.nan] * 8
    # two nuclei 8 µm apart: each bin takes the nearer one, labelled bins keep theirs
    close = np.array([1, 0, 0, 0, 2, 0, 0, 0, 0, 0])
    grown = assign_bins(bins, close, expand_um=6.0).tolist()
    assert grown[:2] == ["1", "1"] and grown[3:8] == ["2", "2", "2", "2", "2"]
    assert grown[8:] == [np.nan, np.nan]
    cells = bins_to_cells(bins, close, expand_um=6.0)
    assert cells.obs["n_bins_expanded"].sum() == cells.obs["n_bins"].sum() - 2


def test_growth_uses_the_bin_spacing_in_pixel_coordinates():
    bins = grid_bins(1, 10)
    bins.obsm["spatial"] = bins.obsm["spatial"] * 3.65 + 100.0  # ~0.55 µm per pixel
    nuclei = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    image_ids = assign_bins(bins, nuclei, expand_um=4.0).tolist()
    assert image_ids[:4] == ["1", "1", "1", np.nan]
    bins.uns["spatiome"] = {"source": {"bin_folder": "/run/binned_outputs/square_008um"}}
    assert assign_bins(bins, nuclei, expand_um=8.0).tolist()[:3] == ["1", "1", np.nan]


def test_inputs_are_not_modified():
    bins = grid_bins(3, 3)
    bins.uns["spatial"] = {"lib": {"images": {"hires": np.zeros((2, 2, 3))}, "scalefactors": {}}}
    mask = np.array([[1, 0, 2], [0, 0, 0], [3, 3, 0]])
    before, mask_before = bins.copy(), mask.copy()
    uns_before = copy.deepcopy(dict(bins.uns))
    cells = bins_to_cells(bins, mask, transform=AFFINE_HALF, expand_bins=1)
    cells.uns["spatial"]["lib"]["images"]["hires"][:] = 1
    assert (bins.X != before.X).nnz == 0 and (bins.layers["counts"] != before.X).nnz == 0
    assert np.array_equal(bins.obsm["spatial"], before.obsm["spatial"])
    assert bins.obs.equals(before.obs) and list(bins.obs.columns) == ["array_row", "array_col"]
    assert np.array_equal(mask, mask_before)
    assert bins.uns["spatial"]["lib"]["images"]["hires"].sum() == 0
    assert bins.uns.keys() == uns_before.keys()


def test_counts_from_x_when_no_counts_layer():
    bins = grid_bins(1, 3, np.array([[1], [2], [3]]))
    del bins.layers["counts"]
    cells = bins_to_cells(bins, [1, 1, 0])
    assert cells.X.toarray().tolist() == [[3]]
    assert cells.uns["spatiome"]["source"]["counts"] == "bins.X"


def test_output_feeds_the_rest_of_spatiome(tmp_path):
    import spatiome as sm

    bins = simulate_visium_hd(width_um=60, height_um=60, random_state=0)
    cells = bins_to_cells(bins, "nucleus_label", expand_um=4)
    sm.pp.qc_metrics(cells)
    path = tmp_path / "cells.h5ad"
    sm.io.write_h5ad(cells, path)
    back = sm.io.read_h5ad(path)
    assert back.shape == cells.shape and back.uns["spatial_unit"] == "um"


def test_errors_say_what_to_fix():
    bins = grid_bins(2, 3)
    with pytest.raises(SpatiomeInputError, match="map outside the label image of shape"):
        bins_to_cells(bins, np.ones((2, 2), dtype=int))
    # coordinates in µm against a 1-pixel-per-bin image: fits only after transposing
    tall = np.ones((6, 4), dtype=int)
    with pytest.raises(SpatiomeInputError, match="transposed image"):
        bins_to_cells(bins, tall)
    wide = np.ones((2, 3), dtype=int)
    cells = bins_to_cells(bins, wide, transform=AFFINE_HALF)
    assert cells.n_obs == 1
    clipped = bins_to_cells(
        bins, np.ones((1, 1), dtype=int), transform=AFFINE_HALF, allow_outside=True
    )
    assert clipped.obs["n_bins"].tolist() == [1]
    with pytest.raises(SpatiomeInputError, match="no bin falls in a cell"):
        bins_to_cells(bins, np.zeros((2, 3), dtype=int), transform=AFFINE_HALF)
    with pytest.raises(SpatiomeInputError, match="negative labels"):
        bins_to_cells(bins, -np.ones((2, 3), dtype=int), transform=AFFINE_HALF)
    empty = grid_bins(2, 3, np.zeros((6, 2)))
    with pytest.raises(SpatiomeInputError, match="holds no counts"):
        bins_to_cells(empty, [1] * 6)
    with pytest.raises(SpatiomeInputError, match="one cell id per bin"):
        bins_to_cells(bins, [1, 2])
    with pytest.raises(SpatiomeInputError, match="neither a column of bins.obs"):
        bins_to_cells(bins, "cell")
    with pytest.raises(SpatiomeInputError, match="only one of the two"):
        bins_to_cells(bins, [1] * 6, expand_um=2, expand_bins=1)
    with pytest.raises(SpatiomeInputError, match="distance >= 0"):
        bins_to_cells(bins, [1] * 6, expand_um=-1)
    with pytest.raises(SpatiomeInputError, match="affine"):
        bins_to_cells(bins, wide, transform=np.eye(2))
    with pytest.raises(SpatiomeInputError, match="centroid="):
        bins_to_cells(bins, [1] * 6, centroid="middle")
    floats = bins.copy()
    floats.layers["counts"] = floats.layers["counts"] * 0.5
    with pytest.raises(SpatiomeInputError, match="non-integer"):
        bins_to_cells(floats, [1] * 6)


def _square(x0: float, y0: float, size: float) -> list[list[float]]:
    return [[x0, y0], [x0 + size, y0], [x0 + size, y0 + size], [x0, y0 + size], [x0, y0]]


def test_geojson_polygons(tmp_path):
    bins = grid_bins(3, 4)  # centres at 1, 3, 5, 7 µm (x) and 1, 3, 5 µm (y)
    features = [
        {"type": "Feature", "properties": {"cell_id": 11},
         "geometry": {"type": "Polygon", "coordinates": [_square(0, 0, 4)]}},
        {"type": "Feature", "properties": {"cell_id": 12},
         "geometry": {"type": "MultiPolygon",
                      "coordinates": [[_square(6, 4, 2)], [_square(6, 2, 2)]]}},
        {"type": "Feature", "properties": {"cell_id": 13},  # no bin centre inside
         "geometry": {"type": "Polygon", "coordinates": [_square(4.2, 0.2, 0.5)]}},
    ]  # fmt: skip
    path = tmp_path / "cell_segmentations.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    assigned = assign_bins(bins, path)
    expected = ["11", "11", None, None, "11", "11", None, "12", None, None, None, "12"]
    assert assigned.tolist() == [np.nan if e is None else e for e in expected]
    cells = bins_to_cells(bins, str(path), transform=1.0)
    assert cells.obs_names.tolist() == ["11", "12"]
    assert cells.obs["n_bins"].tolist() == [4, 2]
    assert str(path.resolve()) in cells.uns["spatiome"]["source"]["paths"]


def test_barcode_mappings_table(tmp_path):
    bins = grid_bins(2, 2)
    names = bins.obs_names.tolist()
    pd.DataFrame(
        {
            "square_002um": names + ["s_002um_09999_09999-1"],
            "square_008um": ["s_008um_00000_00000-1"] * 5,
            "cell_id": ["cellid_000000001-1"] * 2 + ["cellid_000000002-1", None, "x"],
            "in_nucleus": [True, False, True, False, True],
            "in_cell": [True, True, True, False, True],
        }
    ).to_parquet(tmp_path / "barcode_mappings.parquet")
    cell = read_barcode_mappings(tmp_path, bins)
    assert cell.tolist() == ["cellid_000000001-1"] * 2 + ["cellid_000000002-1", np.nan]
    nucleus = read_barcode_mappings(
        tmp_path / "barcode_mappings.parquet", bins, compartment="nucleus"
    )
    assert nucleus.tolist() == ["cellid_000000001-1", np.nan, "cellid_000000002-1", np.nan]
    cells = bins_to_cells(bins, cell)
    assert cells.obs_names.tolist() == ["cellid_000000001-1", "cellid_000000002-1"]
    renamed = bins.copy()
    renamed.obs_names = [f"other{i}" for i in range(4)]
    with pytest.raises(SpatiomeInputError, match="none of the bins' barcodes"):
        read_barcode_mappings(tmp_path, renamed)
    with pytest.raises(SpatiomeInputError, match="no barcode_mappings.parquet"):
        read_barcode_mappings(tmp_path / "missing", bins)


def test_simulated_right_cell_fractions():
    # Measured over seeds 0-9 (200 x 200 µm, defaults): nuclei alone 0.19-0.21,
    # nuclei grown 4 µm 0.76-0.79, 6 µm 0.92-0.93, true cells 0.93-0.94.
    bins = simulate_visium_hd(random_state=11)
    scores = {
        expand: right_cell_fraction(bins, assign_bins(bins, "nucleus_label", expand_um=expand))
        for expand in (0, 2, 4, 6)
    }
    assert scores[0] < 0.3
    assert scores[0] < scores[2] < scores[4] < scores[6]
    assert scores[6] > 0.88
    cells = assign_bins(bins, "cell_label")
    assert right_cell_fraction(bins, cells) > 0.9
    assert assigned_purity(bins, cells) > 0.85


def test_from_read_visium_hd(tmp_path):
    import scipy.io

    from spatiome.io import read_visium_hd

    folder = tmp_path / "outs" / "binned_outputs" / "square_002um"
    matrix = folder / "filtered_feature_bc_matrix"
    matrix.mkdir(parents=True)
    (folder / "spatial").mkdir()
    counts = np.array([[5, 1, 0, 2], [0, 2, 3, 1]])  # genes x bins
    scipy.io.mmwrite(matrix / "matrix.mtx", sp.coo_matrix(counts))
    (matrix / "features.tsv").write_text("G1\tA\tGene Expression\nG2\tB\tGene Expression\n")
    barcodes = [f"s_002um_00000_{c:05d}-1" for c in range(4)]
    (matrix / "barcodes.tsv").write_text("\n".join(barcodes) + "\n")
    pd.DataFrame(
        {
            "barcode": barcodes,
            "in_tissue": [1] * 4,
            "array_row": [0] * 4,
            "array_col": range(4),
            "pxl_row_in_fullres": [40.0] * 4,
            "pxl_col_in_fullres": [100.0, 107.3, 114.6, 121.9],  # 3.65 pixels per µm
        }
    ).to_parquet(folder / "spatial" / "tissue_positions.parquet")
    bins = read_visium_hd(tmp_path / "outs", bin_size=2, load_images=False)
    cells = bins_to_cells(bins, [0, 4, 0, 0], expand_um=2)
    assert cells.X.toarray().tolist() == [[6, 5]]
    assert cells.obs["n_bins"].tolist() == [3] and cells.obs["area_um2"].tolist() == [12.0]
    assert cells.uns["spatial_unit"] == "pixel"
    source = cells.uns["spatiome"]["source"]
    assert source["bin_size_um"] == 2.0 and source["bins_source"]["reader"] == "read_visium_hd"
