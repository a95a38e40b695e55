"""read_table / read_slideseq / read on text tables and Matrix Market, both orientations."""

from __future__ import annotations

import gzip
import time

import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from spatiome._core.validate import SpatiomeInputError
from spatiome.io import read, read_slideseq, read_table


def _truth(n_spots=7, n_genes=5, seed=0):
    rng = np.random.default_rng(seed)
    counts = rng.poisson(2.0, size=(n_spots, n_genes))
    spots = [f"{i}x{i + 1}" for i in range(n_spots)]
    genes = [f"Gene{j}" for j in range(n_genes)]
    coords = pd.DataFrame(
        {
            "spot": spots,
            "x": rng.uniform(0, 30, n_spots).round(3),
            "y": rng.uniform(0, 30, n_spots).round(3),
            "region": [f"r{i % 2}" for i in range(n_spots)],
        }
    )
    return counts, spots, genes, coords


def _write_table(path, counts, spots, genes, orientation, sep):
    frame = pd.DataFrame(counts, index=pd.Index(spots, name="spot"), columns=genes)
    if orientation == "genes_x_spots":
        frame = frame.T
        frame.index.name = "gene"
    frame.to_csv(path, sep=sep)


@pytest.mark.parametrize("orientation", ["spots_x_genes", "genes_x_spots"])
@pytest.mark.parametrize("name", ["counts.csv", "counts.csv.gz", "counts.tsv", "counts.tsv.gz"])
@pytest.mark.parametrize("given", ["auto", "explicit"])
def test_table_round_trip(tmp_path, orientation, name, given):
    counts, spots, genes, coords = _truth()
    sep = "\t" if ".tsv" in name else ","
    _write_table(tmp_path / name, counts, spots, genes, orientation, sep)
    shuffled = coords.sample(frac=1.0, random_state=1)
    shuffled.to_csv(tmp_path / "coords.csv", index=False)
    adata = read_table(
        tmp_path / name,
        tmp_path / "coords.csv",
        orientation="auto" if given == "auto" else orientation,
    )
    assert adata.obs_names.tolist() == spots
    assert adata.var_names.tolist() == genes
    np.testing.assert_array_equal(adata.X.toarray(), counts)
    np.testing.assert_array_equal(adata.layers["counts"].toarray(), counts)
    np.testing.assert_array_equal(adata.obsm["spatial"], coords[["x", "y"]].to_numpy())
    assert adata.obs["region"].tolist() == coords["region"].tolist()
    source = adata.uns["spatiome"]["source"]
    assert source["orientation"] == orientation and source["reader"] == "read_table"


def test_r_style_header_without_corner_cell_and_verbatim_ids(tmp_path):
    (tmp_path / "counts.tsv").write_text('"001"\t"010"\nGa\t1\t2\nGb\t0\t5\n')
    (tmp_path / "coords.csv").write_text("cell,x,y,z\n010,1,2,3\n001,4,5,6\n")
    adata = read_table(tmp_path / "counts.tsv", tmp_path / "coords.csv", z="z")
    assert adata.obs_names.tolist() == ["001", "010"]
    np.testing.assert_array_equal(adata.X.toarray(), [[1, 0], [2, 5]])
    np.testing.assert_array_equal(adata.obsm["spatial"], [[4, 5, 6], [1, 2, 3]])


@pytest.mark.parametrize("orientation", ["genes_x_spots", "spots_x_genes"])
def test_mtx_round_trip_with_gene_and_barcode_lists(tmp_path, orientation):
    counts, spots, genes, coords = _truth(n_spots=6, n_genes=4)
    matrix = counts.T if orientation == "genes_x_spots" else counts
    scipy.io.mmwrite(tmp_path / "matrix.mtx", sp.coo_matrix(matrix))
    with open(tmp_path / "matrix.mtx", "rb") as src, gzip.open(tmp_path / "m.mtx.gz", "wb") as dst:
        dst.write(src.read())
    pd.DataFrame({"id": [f"ENS{g}" for g in genes], "name": genes}).to_csv(
        tmp_path / "genes.tsv", sep="\t", header=False, index=False
    )
    (tmp_path / "barcodes.tsv").write_text("\n".join(spots) + "\n")
    coords.to_csv(tmp_path / "coords.csv", index=False)
    for counts_path in (tmp_path / "m.mtx.gz", tmp_path):
        adata = read_table(counts_path, tmp_path / "coords.csv")
        np.testing.assert_array_equal(adata.X.toarray(), counts)
        assert adata.var_names.tolist() == genes
        assert adata.var["gene_ids"].tolist() == [f"ENS{g}" for g in genes]
        assert adata.obs_names.tolist() == spots
    wrong = "spots_x_genes" if orientation == "genes_x_spots" else "genes_x_spots"
    with pytest.raises(SpatiomeInputError, match="orientation"):
        read_table(tmp_path / "m.mtx.gz", tmp_path / "coords.csv", orientation=wrong)


def test_slideseq_both_orientations(tmp_path):
    counts, spots, genes, coords = _truth(n_spots=5, n_genes=3)
    _write_table(tmp_path / "MappedDGEForR.csv", counts, spots, genes, "genes_x_spots", ",")
    locations = coords.rename(columns={"spot": "barcodes", "x": "xcoord", "y": "ycoord"})
    locations[["barcodes", "xcoord", "ycoord"]].to_csv(tmp_path / "Beads.csv", index=False)
    beads = read_slideseq(tmp_path / "MappedDGEForR.csv", tmp_path / "Beads.csv")
    np.testing.assert_array_equal(beads.X.toarray(), counts)
    np.testing.assert_array_equal(beads.obsm["spatial"], coords[["x", "y"]].to_numpy())
    assert beads.uns["spatiome"]["source"]["reader"] == "read_slideseq"
    _write_table(tmp_path / "beads_x_genes.csv.gz", counts, spots, genes, "spots_x_genes", ",")
    coords[["spot", "x", "y"]].to_csv(tmp_path / "xy.csv", index=False)
    beads = read_slideseq(tmp_path / "beads_x_genes.csv.gz", tmp_path / "xy.csv")
    np.testing.assert_array_equal(beads.X.toarray(), counts)


def test_wide_table_is_fast_and_exact(tmp_path):
    rng = np.random.default_rng(5)
    n_spots, n_genes = 300, 16000
    counts = rng.poisson(0.3, size=(n_spots, n_genes))
    spots = [f"s{i}" for i in range(n_spots)]
    genes = [f"g{j}" for j in range(n_genes)]
    _write_table(tmp_path / "counts.csv", counts, spots, genes, "spots_x_genes", ",")
    pd.DataFrame({"spot": spots, "x": np.arange(n_spots), "y": 0.0}).to_csv(
        tmp_path / "coords.csv", index=False
    )
    start = time.perf_counter()
    adata = read_table(tmp_path / "counts.csv", tmp_path / "coords.csv")
    elapsed = time.perf_counter() - start
    np.testing.assert_array_equal(adata.X.toarray(), counts)
    assert elapsed < 10, f"reading a 300 x 16000 CSV took {elapsed:.1f} s"


def test_read_dispatches_folder_with_table_and_pixel_columns(tmp_path):
    counts, spots, genes, coords = _truth()
    _write_table(tmp_path / "counts.csv.gz", counts, spots, genes, "genes_x_spots", ",")
    coords = coords.rename(
        columns={"spot": "barcode", "x": "pxl_col_in_fullres", "y": "pxl_row_in_fullres"}
    )
    coords.to_csv(tmp_path / "coords.csv", index=False)
    adata = read(tmp_path)
    assert adata.uns["spatial_unit"] == "pixel"
    np.testing.assert_array_equal(
        adata.obsm["spatial"], coords[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy()
    )
    np.testing.assert_array_equal(adata.X.toarray(), counts)


def test_read_lists_layouts_when_nothing_matches(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SpatiomeInputError) as err:
        read(tmp_path)
    message = str(err.value)
    for expected in (
        "tissue_positions.csv",
        "binned_outputs",
        "cell_feature_matrix.h5",
        "counts.csv",
        "coords.csv",
        str(tmp_path),
    ):
        assert expected in message
    with pytest.raises(SpatiomeInputError, match="cannot tell the format"):
        read(tmp_path / "notes.txt")
    with pytest.raises(SpatiomeInputError, match="no such file"):
        read(tmp_path / "absent")


# --- bad input -------------------------------------------------------------------------


@pytest.fixture
def table_files(tmp_path):
    counts, spots, genes, coords = _truth()
    _write_table(tmp_path / "counts.csv", counts, spots, genes, "spots_x_genes", ",")
    coords.to_csv(tmp_path / "coords.csv", index=False)
    return tmp_path / "counts.csv", tmp_path / "coords.csv", counts, spots, coords


def _rewrite_cell(path, row, column, value):
    lines = path.read_text().splitlines()
    fields = lines[row].split(",")
    fields[column] = value
    lines[row] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("value", "message"),
    [("-2", "negative"), ("1.5", "non-integer"), ("", "NaN"), ("lots", "non-numeric")],
)
def test_bad_count_values(table_files, value, message):
    counts_path, coords_path, *_ = table_files
    _rewrite_cell(counts_path, 3, 2, value)
    with pytest.raises(SpatiomeInputError, match=message) as err:
        read_table(counts_path, coords_path)
    assert str(counts_path) in str(err.value)


def test_spots_missing_from_coords(table_files):
    counts_path, coords_path, _, spots, coords = table_files
    coords.iloc[2:].to_csv(coords_path, index=False)
    with pytest.raises(SpatiomeInputError, match="2 of 7 spot ids") as err:
        read_table(counts_path, coords_path)
    assert str(coords_path) in str(err.value) and spots[0] in str(err.value)


def test_coords_with_spots_not_in_counts(table_files):
    counts_path, coords_path, _, _, coords = table_files
    extra = pd.DataFrame({"spot": ["99x99"], "x": [1.0], "y": [2.0], "region": ["r0"]})
    pd.concat([coords, extra]).to_csv(coords_path, index=False)
    with pytest.raises(SpatiomeInputError, match="1 spot ids are not in") as err:
        read_table(counts_path, coords_path)
    assert str(coords_path) in str(err.value) and "99x99" in str(err.value)


def test_duplicated_spot_ids_in_counts(table_files):
    counts_path, coords_path, *_ = table_files
    _rewrite_cell(counts_path, 2, 0, "0x1")
    with pytest.raises(SpatiomeInputError, match="duplicated spot ids") as err:
        read_table(counts_path, coords_path)
    assert str(counts_path) in str(err.value)


def test_duplicated_spot_ids_in_coords(table_files):
    counts_path, coords_path, _, _, coords = table_files
    pd.concat([coords, coords.iloc[:1]]).to_csv(coords_path, index=False)
    with pytest.raises(SpatiomeInputError, match="duplicated spot ids") as err:
        read_table(counts_path, coords_path)
    assert str(coords_path) in str(err.value)


@pytest.mark.parametrize("value", ["north", ""])
def test_non_numeric_or_nan_coordinates(table_files, value):
    counts_path, coords_path, *_ = table_files
    _rewrite_cell(coords_path, 4, 2, value)
    with pytest.raises(SpatiomeInputError, match="column 'y'") as err:
        read_table(counts_path, coords_path)
    assert str(coords_path) in str(err.value)


def test_ids_that_match_nothing(table_files):
    counts_path, coords_path, _, _, coords = table_files
    coords.assign(spot=[f"other{i}" for i in range(len(coords))]).to_csv(coords_path, index=False)
    with pytest.raises(SpatiomeInputError, match="neither its row ids") as err:
        read_table(counts_path, coords_path)
    assert str(counts_path) in str(err.value)


def test_missing_coordinate_column_lists_columns(table_files):
    counts_path, coords_path, *_ = table_files
    with pytest.raises(SpatiomeInputError, match=r"\['col'\] not found.*'region'") as err:
        read_table(counts_path, coords_path, x="col")
    assert str(coords_path) in str(err.value)


def test_empty_table(tmp_path):
    (tmp_path / "counts.csv").write_text("spot,Ga,Gb\n")
    (tmp_path / "coords.csv").write_text("spot,x,y\n")
    with pytest.raises(SpatiomeInputError, match="empty") as err:
        read_table(tmp_path / "counts.csv", tmp_path / "coords.csv")
    assert str(tmp_path / "counts.csv") in str(err.value)


def test_missing_files_named(tmp_path):
    with pytest.raises(SpatiomeInputError, match="count table not found") as err:
        read_table(tmp_path / "absent.csv", tmp_path / "coords.csv")
    assert "absent.csv" in str(err.value)
    scipy.io.mmwrite(tmp_path / "matrix.mtx", sp.coo_matrix(np.eye(2, dtype=int)))
    (tmp_path / "coords.csv").write_text("spot,x,y\na,1,2\nb,3,4\n")
    with pytest.raises(SpatiomeInputError, match="features.tsv.gz, features.tsv, genes.tsv.gz"):
        read_table(tmp_path / "matrix.mtx", tmp_path / "coords.csv")


def test_truncated_gzip_table(table_files, tmp_path):
    counts_path, coords_path, *_ = table_files
    data = gzip.compress(counts_path.read_bytes())
    broken = tmp_path / "broken.csv.gz"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(SpatiomeInputError) as err:
        read_table(broken, coords_path)
    assert str(broken) in str(err.value)


def test_table_data_plot_with_scanpy_and_squidpy(tmp_path):
    """uns['spatial'] without an image is enough for scanpy's and squidpy's spot plots."""
    import matplotlib.pyplot as plt

    sc = pytest.importorskip("scanpy")
    sq = pytest.importorskip("squidpy")
    counts, spots, genes, coords = _truth(n_spots=30)
    coords["x"], coords["y"] = np.divmod(np.arange(30), 6)
    coords["x"] *= 20.0
    coords["y"] *= 20.0
    _write_table(tmp_path / "counts.csv", counts, spots, genes, "spots_x_genes", ",")
    coords.to_csv(tmp_path / "coords.csv", index=False)
    adata = read_table(tmp_path / "counts.csv", tmp_path / "coords.csv", library_id="s1")
    entry = adata.uns["spatial"]["s1"]
    assert entry["images"] == {}
    assert entry["scalefactors"]["spot_diameter_fullres"] == 20.0  # grid spacing
    assert entry["scalefactors"]["tissue_hires_scalef"] == 1.0
    sq.pl.spatial_scatter(adata, color="Gene0", img=False)
    sc.pl.spatial(adata, color="Gene0", spot_size=None, img_key=None, show=False)
    plt.close("all")
    adata.write_h5ad(tmp_path / "back.h5ad")
    import anndata

    back = anndata.read_h5ad(tmp_path / "back.h5ad")
    assert back.uns["spatial"]["s1"]["scalefactors"]["spot_diameter_fullres"] == 20.0


def test_slideseq_beads_get_their_diameter_in_micrometres(tmp_path):
    counts, spots, genes, coords = _truth()
    _write_table(tmp_path / "dge.csv", counts, spots, genes, "genes_x_spots", ",")
    coords.rename(columns={"x": "xcoord", "y": "ycoord"}).to_csv(
        tmp_path / "beads.csv", index=False
    )
    beads = read_slideseq(tmp_path / "dge.csv", tmp_path / "beads.csv", spatial_unit="um")
    (entry,) = beads.uns["spatial"].values()
    assert entry["scalefactors"]["spot_diameter_fullres"] == 10.0
    assert next(iter(beads.uns["spatial"])) == tmp_path.resolve().name
