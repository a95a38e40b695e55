"""The vendor-layout fixtures are read back by spatialdata-io with the documented kwargs.

Centroids are written to csv with 17 significant digits, which round-trips float64
exactly, and to Stereo-seq GEF as integers; the 1e-9 tolerance only absorbs the affine
round trip of derived quantities (polygon centroids, FOV-local offsets).
"""

from __future__ import annotations

import fnmatch
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("spatialdata")
sio = pytest.importorskip("spatialdata_io")

from spatialdata.transformations import get_transformation  # noqa: E402
from vendor_fixtures import (  # noqa: E402
    READER_KWARGS,
    SIGNATURES,
    write_codex,
    write_cosmx,
    write_merscope,
    write_stereoseq,
)

ATOL = 1e-9
N_CELLS, N_GENES = 12, 5
GENES = [f"Gene{i}" for i in range(N_GENES)]
MICRON_TO_PIXEL = "micron_to_mosaic_pixel_transform.csv"


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture
def truth():
    rng = np.random.default_rng(11)
    counts = rng.poisson(2.0, size=(N_CELLS, N_GENES))
    counts[:, 0] += 1
    xy = rng.uniform(50.0, 900.0, size=(N_CELLS, 2))
    return counts, xy


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x)


def _assert_counts(table, counts, keys, genes=GENES) -> list[int]:
    """Rows of ``table`` (found by ``keys``, one per true cell) equal ``counts``."""
    position = {str(k): i for i, k in enumerate(keys)}
    assert len(table.obs_names) == len(keys)
    rows = [position[str(k)] for k in table.obs_names]
    got = _dense(table[:, genes].X)
    np.testing.assert_array_equal(got, counts[rows])
    return rows


def _matches(folder: Path, platform: str) -> bool:
    files = [p.relative_to(folder).as_posix() for p in folder.rglob("*")]
    return all(any(fnmatch.fnmatch(f, pat) for f in files) for pat in SIGNATURES[platform])


def test_merscope_minimal(tmp_path, truth):
    counts, xy = truth
    ids = 3_000_000_000_000 + np.arange(N_CELLS) * 7
    folder = write_merscope(tmp_path / "slide1" / "region_0", counts, xy, GENES, cell_ids=ids)
    assert sorted(p.name for p in folder.rglob("*") if p.is_file()) == [
        "cell_by_gene.csv",
        "cell_metadata.csv",
        "micron_to_mosaic_pixel_transform.csv",
    ]
    sdata = sio.merscope(folder, **READER_KWARGS["merscope"])
    table = sdata.tables["table"]
    attrs = table.uns["spatialdata_attrs"]
    assert attrs == {
        "region": "slide1_region_0_polygons",
        "region_key": "cells_region",
        "instance_key": "EntityID",
    }
    assert list(table.var_names) == GENES
    assert table.obsm["blank"].shape == (N_CELLS, 2)
    rows = _assert_counts(table, counts, ids)
    np.testing.assert_allclose(table.obsm["spatial"], xy[rows], rtol=0, atol=ATOL)


def test_merscope_all_files(tmp_path, truth):
    counts, xy = truth
    folder = write_merscope(
        tmp_path / "slide1" / "region_0",
        counts,
        xy,
        GENES,
        transcripts=True,
        boundaries=True,
        mosaic=True,
    )
    sdata = sio.merscope(folder)  # the reader's defaults: every element
    assert set(sdata.shapes) == {"slide1_region_0_polygons"}
    assert set(sdata.points) == {"slide1_region_0_transcripts"}
    assert set(sdata.images) == {"slide1_region_0_z3"}
    assert sdata.coordinate_systems == ["global"]
    ids = 10**12 + np.arange(N_CELLS)
    _assert_counts(sdata.tables["table"], counts, ids)
    polygons = sdata.shapes["slide1_region_0_polygons"]
    # "global" is the mosaic pixel space: elements stay in microns plus the written affine
    affine = get_transformation(polygons, "global").to_affine_matrix(("x", "y"), ("x", "y"))
    np.testing.assert_allclose(affine, np.loadtxt(folder / "images" / MICRON_TO_PIXEL))
    centroid = polygons.geometry.centroid
    np.testing.assert_allclose(centroid.x.loc[[str(i) for i in ids]], xy[:, 0], atol=ATOL)
    np.testing.assert_allclose(centroid.y.loc[[str(i) for i in ids]], xy[:, 1], atol=ATOL)
    assert len(sdata.points["slide1_region_0_transcripts"]) == counts.sum()


def test_cosmx(tmp_path, truth):
    counts, xy = truth
    xy = xy * 8.0  # global pixels
    fov = np.repeat([3, 7], N_CELLS // 2)
    folder = write_cosmx(tmp_path / "cosmx", counts, xy, GENES, fov=fov)
    sdata = sio.cosmx(folder, **READER_KWARGS["cosmx"])
    table = sdata.tables["table"]
    attrs = table.uns["spatialdata_attrs"]
    assert sorted(attrs["region"]) == ["3_labels", "7_labels"]
    assert (attrs["region_key"], attrs["instance_key"]) == ("fov_labels", "cell_ID")
    keys = [f"{c}_{f}" for c, f in zip(np.tile(np.arange(1, 7), 2), fov, strict=True)]
    rows = _assert_counts(table, counts, keys)
    np.testing.assert_array_equal(_dense(table[:, ["NegPrb1", "NegPrb2"]].X), 0)
    np.testing.assert_allclose(table.obsm["global"], xy[rows], rtol=0, atol=ATOL)
    # FOV-local = global - FOV origin (the fov_positions_file row)
    origin = table.obsm["global"] - table.obsm["spatial"]
    for f in (3, 7):
        block = origin[(table.obs["fov"].astype(int) == f).to_numpy()]
        np.testing.assert_allclose(block, block[:1].repeat(len(block), 0), atol=ATOL)


def test_cosmx_transcripts(tmp_path, truth):
    counts, xy = truth
    folder = write_cosmx(tmp_path / "cosmx", counts, xy * 8.0, GENES, transcripts=True)
    sdata = sio.cosmx(folder)
    assert set(sdata.points) == {"1_points"}
    assert set(sdata.coordinate_systems) == {"1", "global", "global_only_labels"}
    assert len(sdata.points["1_points"]) == counts.sum()


@pytest.mark.parametrize("square_bin", [False, True])
def test_stereoseq(tmp_path, truth, square_bin):
    counts, xy = truth
    xy = np.round(xy * 20)  # DNB
    ids = np.arange(N_CELLS) * 3 + 100
    folder = write_stereoseq(
        tmp_path / "stereo", counts, xy, GENES, cell_ids=ids, sn="SS2X", square_bin=square_bin
    )
    sdata = sio.stereoseq(folder, dataset_id="SS2X", read_square_bin=square_bin)
    table = sdata.tables["cells_table"]
    attrs = table.uns["spatialdata_attrs"]
    assert attrs == {
        "region": "cells_circles",
        "region_key": "region",
        "instance_key": "instance_id",
    }
    rows = _assert_counts(table, counts, ids)
    np.testing.assert_array_equal(table.obsm["spatial"], xy[rows])
    circles = sdata.shapes["cells_circles"].loc[table.obs_names]
    np.testing.assert_allclose(circles.geometry.x, xy[rows, 0], atol=ATOL)
    np.testing.assert_allclose(circles.geometry.y, xy[rows, 1], atol=ATOL)
    polygons = sdata.shapes["cells_polygons"].loc[table.obs_names]
    np.testing.assert_allclose(polygons.geometry.centroid.x, xy[rows, 0], atol=ATOL)
    assert sdata.coordinate_systems == ["global"]
    if square_bin:
        bins = sdata.tables["bin1_table"]
        totals = _dense(bins[:, GENES].X).sum(axis=0)
        np.testing.assert_array_equal(totals, counts.sum(axis=0))
        assert len(sdata.points["bin1_genes"]) == N_CELLS


def test_codex(tmp_path, truth, monkeypatch):
    counts, xy = truth
    xy = xy * 4.0  # stitched-region pixels
    markers = ["DAPI", "CD3", "CD20", "CD45", "PanCK"]
    ids = np.arange(N_CELLS) + 41
    folder = write_codex(tmp_path / "codex", counts, xy, markers, cell_ids=ids, image=True)
    monkeypatch.chdir(folder)  # the reader opens the csv and tif relative to the cwd
    sdata = sio.codex(folder, **READER_KWARGS["codex"])
    table = sdata.tables["table"]
    attrs = table.uns["spatialdata_attrs"]
    assert (attrs["region_key"], attrs["instance_key"]) == ("region", "cell_id")
    assert set(sdata.shapes) == {"1"} and set(sdata.images) == {"images"}
    columns = [f"cyc{k // 4 + 1:03d}_ch{k % 4 + 1:03d}" for k in range(len(markers))]
    table.obs_names = table.obs["cell_id"].astype(str).to_numpy()
    rows = _assert_counts(table, counts, ids, genes=columns)
    np.testing.assert_allclose(table.obsm["spatial"], xy[rows], rtol=0, atol=ATOL)
    circles = sdata.shapes["1"]
    np.testing.assert_allclose(circles.geometry.x, xy[rows, 0], atol=ATOL)


def test_signatures_identify_each_folder(tmp_path, truth):
    counts, xy = truth
    folders = {
        "merscope": write_merscope(tmp_path / "s" / "merscope", counts, xy, GENES),
        "cosmx": write_cosmx(tmp_path / "cosmx", counts, xy, GENES),
        "stereoseq": write_stereoseq(tmp_path / "stereo", counts, np.round(xy), GENES),
        "codex": write_codex(tmp_path / "codex", counts, xy, GENES, fcs=True),
    }
    for platform, folder in folders.items():
        found = [name for name in SIGNATURES if _matches(folder, name)]
        assert found == [platform]
