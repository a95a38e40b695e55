"""Tiny MERSCOPE, CosMx, Stereo-seq and CODEX output folders, written in code.

Each ``write_*`` function lays out a folder the way the vendor documents it, with only the
files (and columns) that ``spatialdata_io`` 0.7.1 needs under the least demanding reader
flags, plus optional extras behind keyword flags. ``READER_KWARGS`` gives the matching
reader keyword arguments and ``SIGNATURES`` the file patterns that identify each platform
in a folder (what ``spatiome.io.read`` can use for auto-detection).

Conventions shared by all writers:

* ``counts`` is an ``(n_cells, n_genes)`` non-negative integer array, ``xy`` the
  ``(n_cells, 2)`` cell centroids (x, y) in the vendor's native unit, ``genes`` the
  ``n_genes`` feature names.
* Cells are written in a fixed shuffled order (not the order given), so that readers are
  checked for matching by id rather than by row position.
* Every writer returns the folder it wrote (created if needed).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd

# Reader keyword arguments for the minimal folders the writers produce by default.
READER_KWARGS: dict[str, dict] = {
    "merscope": {"transcripts": False, "cells_boundaries": False, "mosaic_images": False},
    "cosmx": {"transcripts": False},
    # dataset_id is the Stereo-seq serial number the folder was written with (the ``sn``
    # argument of write_stereoseq); it is required because 02.count/ is not written.
    "stereoseq": {"read_square_bin": False},
    # The CODEX reader opens the csv (and tif) by bare file name, relative to the
    # current working directory: the caller must chdir into the folder first.
    "codex": {"fcs": False},
}

# File-name patterns (globs relative to the folder) that identify each platform. For
# CODEX the name alone is weak: also check that the csv header holds ``cell_id``,
# ``region``, ``x``, ``y`` and ``cyc<CCC>_ch<NNN>`` columns (or that a ``.fcs`` is present).
SIGNATURES: dict[str, tuple[str, ...]] = {
    "merscope": (
        "cell_by_gene.csv",
        "cell_metadata.csv",
        "images/micron_to_mosaic_pixel_transform.csv",
    ),
    "cosmx": ("*_exprMat_file.csv", "*_metadata_file.csv", "*_fov_positions_file.csv"),
    "stereoseq": ("041.cellcut/*.cellbin.gef", "051.cellcluster/*.cell.cluster.h5ad"),
    "codex": ("reg[0-9][0-9][0-9]_*.csv",),
}


def _check(counts, xy, genes) -> tuple[np.ndarray, np.ndarray, list[str]]:
    counts = np.asarray(counts)
    xy = np.asarray(xy, dtype=float)
    genes = [str(g) for g in genes]
    if counts.ndim != 2 or counts.shape[1] != len(genes):
        raise ValueError("counts must be (n_cells, n_genes) with one name per gene")
    if not np.issubdtype(counts.dtype, np.integer) or (counts < 0).any():
        raise ValueError("counts must be non-negative integers")
    if xy.shape != (counts.shape[0], 2):
        raise ValueError("xy must be (n_cells, 2)")
    if len(set(genes)) != len(genes):
        raise ValueError("gene names must be unique")
    return counts, xy, genes


def _order(n: int, seed: int = 7) -> np.ndarray:
    """The row order cells are written in (a fixed permutation)."""
    return np.random.default_rng(seed).permutation(n)


def _molecules(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cell index, gene index) of every molecule, one row per count."""
    cells, genes = np.nonzero(counts)
    reps = counts[cells, genes]
    return np.repeat(cells, reps), np.repeat(genes, reps)


# --------------------------------------------------------------------------- MERSCOPE


def write_merscope(
    folder,
    counts,
    xy,
    genes,
    *,
    cell_ids=None,
    blanks: int = 2,
    transcripts: bool = False,
    boundaries: bool = False,
    mosaic: bool = False,
    micron_to_pixel=((9.259259, 0.0, 120.5), (0.0, 9.259259, -80.25), (0.0, 0.0, 1.0)),
    z_layer: int = 3,
) -> Path:
    """Write a Vizgen MERSCOPE region folder (``<slide>/<region>/``).

    ``xy`` are cell centroids in the global micron coordinate system (``center_x``,
    ``center_y`` of cell_metadata.csv). ``cell_ids`` are the int64 ``EntityID`` values
    (default ``10**12 + i``). Gene names containing "blank" are moved out of ``table.X`` by
    the reader, so do not use them.

    Always written (the reader opens the transform unconditionally):

    * ``cell_by_gene.csv``: column ``cell`` (EntityID) then one column per gene and
      ``blanks`` all-zero ``Blank-<k>`` columns;
    * ``cell_metadata.csv``: ``EntityID, fov, volume, center_x, center_y, min_x, max_x,
      min_y, max_y``;
    * ``images/micron_to_mosaic_pixel_transform.csv``: the 3x3 affine ``micron_to_pixel``.

    Optional: ``transcripts`` writes ``detected_transcripts.csv`` (one row per count at
    the cell centroid), ``boundaries`` writes ``cell_boundaries.parquet`` (a square
    MultiPolygon per cell on ZIndex 0 and 1, geometry column ``Geometry``), ``mosaic``
    writes ``images/mosaic_DAPI_z<z_layer>.tif`` (64 x 64 uint16).

    Read with ``spatialdata_io.merscope(folder, transcripts=False,
    cells_boundaries=False, mosaic_images=False)`` (``READER_KWARGS["merscope"]``); with
    every extra written, the reader's defaults work (``z_layers=3``). The table is
    ``"table"``, annotating ``"<slide>_<region>_polygons"`` (parent folder name and folder
    name) by ``EntityID`` (str); centroids in microns are ``table.obsm["spatial"]``; blanks
    are ``table.obsm["blank"]``.
    """
    counts, xy, genes = _check(counts, xy, genes)
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    n = counts.shape[0]
    ids = np.asarray(cell_ids if cell_ids is not None else 10**12 + np.arange(n), dtype=np.int64)
    order = _order(n)

    by_gene = pd.DataFrame(counts[order], columns=genes)
    for k in range(blanks):
        by_gene[f"Blank-{k}"] = 0
    by_gene.insert(0, "cell", ids[order])
    by_gene.to_csv(folder / "cell_by_gene.csv", index=False)

    half = 2.5  # microns: cells are drawn as 5 um squares
    meta = pd.DataFrame(
        {
            "EntityID": ids,
            "fov": np.arange(n) // 4,
            "volume": (2 * half) ** 2 * 6.0,
            "center_x": xy[:, 0],
            "center_y": xy[:, 1],
            "min_x": xy[:, 0] - half,
            "max_x": xy[:, 0] + half,
            "min_y": xy[:, 1] - half,
            "max_y": xy[:, 1] + half,
        }
    ).iloc[order]
    meta.to_csv(folder / "cell_metadata.csv", index=False, float_format="%.17g")

    np.savetxt(
        folder / "images" / "micron_to_mosaic_pixel_transform.csv",
        np.asarray(micron_to_pixel, dtype=float),
        fmt="%.8g",
        delimiter=" ",
    )

    if transcripts:
        cell, gene = _molecules(counts)
        rows = pd.DataFrame(
            {
                "barcode_id": gene,
                "global_x": xy[cell, 0],
                "global_y": xy[cell, 1],
                "global_z": 0.0,
                "x": 100.0,
                "y": 100.0,
                "fov": cell // 4,
                "gene": np.asarray(genes, dtype=object)[gene],
                "transcript_id": [f"ENST{g:011d}" for g in gene],
                "cell_id": ids[cell],
            }
        )
        rows.to_csv(folder / "detected_transcripts.csv", index=True, float_format="%.17g")

    if boundaries:
        import geopandas
        from shapely.geometry import MultiPolygon, box

        shapes = [MultiPolygon([box(x - half, y - half, x + half, y + half)]) for x, y in xy[order]]
        frames = []
        for z in (0, 1):
            frames.append(
                pd.DataFrame(
                    {
                        "ID": np.arange(n) + z * n,
                        "EntityID": ids[order],
                        "ZIndex": z,
                        "Geometry": shapes,
                        "Type": "cell",
                        "ZLevel": 1.5 * (z + 1),
                        "Name": None,
                        "ParentID": None,
                        "ParentType": None,
                    }
                )
            )
        gdf = geopandas.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="Geometry")
        gdf.to_parquet(folder / "cell_boundaries.parquet")

    if mosaic:
        import tifffile

        image = np.random.default_rng(0).integers(0, 4000, size=(64, 64), dtype=np.uint16)
        tifffile.imwrite(folder / "images" / f"mosaic_DAPI_z{z_layer}.tif", image)
    return folder


# ---------------------------------------------------------------------------- CosMx


def write_cosmx(
    folder,
    counts,
    xy,
    genes,
    *,
    fov=None,
    cell_ids=None,
    dataset_id: str = "Run5000_S1",
    negprobes: int = 2,
    transcripts: bool = False,
) -> Path:
    """Write a NanoString CosMx SMI flat-file export.

    ``xy`` are cell centroids in global pixels (``CenterX_global_px``,
    ``CenterY_global_px``; CosMx flat files are in pixels, 0.12028 um per pixel on current
    instruments, 0.18 um on early ones). ``fov`` gives each cell's FOV number (default all
    1) and ``cell_ids`` its ``cell_ID`` within the FOV (default 1, 2, ... per FOV). Each FOV
    needs at least three non-collinear cells: the reader fits a local-to-global affine per
    FOV from the cell centroids. The FOV origin is placed 10 px below/left of its cells, and
    local = global - FOV origin.

    Written: ``<id>_exprMat_file.csv`` (``fov, cell_ID``, genes, ``negprobes`` all-zero
    ``NegPrb<k>`` columns, and the ``cell_ID`` 0 row of unassigned counts per FOV, which the
    reader drops), ``<id>_metadata_file.csv`` (``fov, cell_ID, Area, AspectRatio,
    CenterX_local_px, CenterY_local_px, CenterX_global_px, CenterY_global_px, Width,
    Height``), ``<id>_fov_positions_file.csv`` (``fov, x_global_px, y_global_px``) and the
    empty ``CellComposite/`` and ``CellLabels/`` folders (the reader requires them to
    exist). ``transcripts`` adds ``<id>_tx_file.csv`` (one row per count at its cell's
    centroid).

    Read with ``spatialdata_io.cosmx(folder, transcripts=False)``
    (``READER_KWARGS["cosmx"]``; ``dataset_id`` is inferred from the single exprMat file).
    The table is ``"table"``, indexed ``"<cell_ID>_<fov>"``, annotating ``"<fov>_labels"``
    (region key ``fov_labels``, instance key ``cell_ID``); ``table.obsm["global"]`` holds the
    global pixel centroids, ``table.obsm["spatial"]`` the FOV-local ones. The NegPrb columns
    stay in ``table.X``.
    """
    counts, xy, genes = _check(counts, xy, genes)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = counts.shape[0]
    fovs = np.ones(n, dtype=np.int64) if fov is None else np.asarray(fov, dtype=np.int64)
    if cell_ids is None:
        ids = np.zeros(n, dtype=np.int64)
        for f in np.unique(fovs):
            ids[fovs == f] = np.arange(1, int((fovs == f).sum()) + 1)
    else:
        ids = np.asarray(cell_ids, dtype=np.int64)
    if (ids <= 0).any():
        raise ValueError("CosMx cell_ID 0 is reserved for unassigned transcripts")
    unique_fovs = np.unique(fovs)
    origin = {int(f): np.floor(xy[fovs == f].min(axis=0)) - 10.0 for f in unique_fovs}
    offset = np.array([origin[int(f)] for f in fovs])
    local = xy - offset
    order = _order(n)

    expr = pd.DataFrame(counts[order], columns=genes)
    for k in range(negprobes):
        expr[f"NegPrb{k + 1}"] = 0
    expr.insert(0, "cell_ID", ids[order])
    expr.insert(0, "fov", fovs[order])
    background = pd.DataFrame(0, index=range(len(unique_fovs)), columns=expr.columns)
    background["fov"] = unique_fovs
    background[genes[0]] = 3  # unassigned molecules of the first gene
    expr = pd.concat([background, expr], ignore_index=True)
    expr.to_csv(folder / f"{dataset_id}_exprMat_file.csv", index=False)

    meta = pd.DataFrame(
        {
            "fov": fovs,
            "cell_ID": ids,
            "Area": 900,
            "AspectRatio": 1.0,
            "CenterX_local_px": local[:, 0],
            "CenterY_local_px": local[:, 1],
            "CenterX_global_px": xy[:, 0],
            "CenterY_global_px": xy[:, 1],
            "Width": 30,
            "Height": 30,
        }
    ).iloc[order]
    meta.to_csv(folder / f"{dataset_id}_metadata_file.csv", index=False, float_format="%.17g")

    positions = pd.DataFrame(
        {
            "fov": unique_fovs,
            "x_global_px": [origin[int(f)][0] for f in unique_fovs],
            "y_global_px": [origin[int(f)][1] for f in unique_fovs],
        }
    )
    positions.to_csv(folder / f"{dataset_id}_fov_positions_file.csv", index=False)
    (folder / "CellComposite").mkdir(exist_ok=True)
    (folder / "CellLabels").mkdir(exist_ok=True)

    if transcripts:
        cell, gene = _molecules(counts)
        tx = pd.DataFrame(
            {
                "fov": fovs[cell],
                "cell_ID": ids[cell],
                "cell": [f"c_1_{f}_{c}" for f, c in zip(fovs[cell], ids[cell], strict=True)],
                "x_local_px": local[cell, 0],
                "y_local_px": local[cell, 1],
                "x_global_px": xy[cell, 0],
                "y_global_px": xy[cell, 1],
                "z": 0,
                "target": np.asarray(genes, dtype=object)[gene],
                "CellComp": "Cytoplasm",
            }
        )
        tx.to_csv(folder / f"{dataset_id}_tx_file.csv", index=False, float_format="%.17g")
    return folder


# ------------------------------------------------------------------------ Stereo-seq

_CELL_DTYPE = np.dtype(
    [
        ("id", "<u4"),
        ("x", "<i4"),
        ("y", "<i4"),
        ("offset", "<u4"),
        ("geneCount", "<u2"),
        ("expCount", "<u2"),
        ("dnbCount", "<u2"),
        ("area", "<u2"),
        ("cellTypeID", "<u2"),
        ("clusterID", "<u2"),
    ]
)
_CELLBIN_GENE_DTYPE = np.dtype(
    [
        ("geneName", "S32"),
        ("offset", "<u4"),
        ("cellCount", "<u4"),
        ("expCount", "<u4"),
        ("maxMIDcount", "<u2"),
    ]
)
_BORDER_PAD = 32767


def _write_cellbin_gef(path: Path, counts, xy, genes, ids, half: int) -> None:
    n, g = counts.shape
    cells, gene_idx = np.nonzero(counts)  # row-major: grouped by cell
    values = counts[cells, gene_idx]
    with h5py.File(path, "w") as handle:
        handle.attrs["version"] = np.uint32(2)
        handle.attrs["resolution"] = np.uint32(500)  # nm per DNB
        handle.attrs["offsetX"] = np.int32(0)
        handle.attrs["offsetY"] = np.int32(0)
        handle.attrs["omics"] = np.bytes_("Transcriptomics")
        group = handle.create_group("cellBin")

        cell = np.zeros(n, dtype=_CELL_DTYPE)
        cell["id"] = ids
        cell["x"] = xy[:, 0]
        cell["y"] = xy[:, 1]
        cell["offset"] = np.concatenate([[0], np.cumsum((counts > 0).sum(axis=1))[:-1]])
        cell["geneCount"] = (counts > 0).sum(axis=1)
        cell["expCount"] = counts.sum(axis=1)
        cell["dnbCount"] = (2 * half + 1) ** 2
        cell["area"] = (2 * half + 1) ** 2
        group.create_dataset("cell", data=cell)
        group.create_dataset("cellExon", data=np.zeros(n, dtype="<u2"))

        by_gene = np.lexsort((cells, gene_idx))  # grouped by gene
        gene = np.zeros(g, dtype=_CELLBIN_GENE_DTYPE)
        gene["geneName"] = [name.encode() for name in genes]
        per_gene_cells = (counts > 0).sum(axis=0)
        gene["offset"] = np.concatenate([[0], np.cumsum(per_gene_cells)[:-1]])
        gene["cellCount"] = per_gene_cells
        gene["expCount"] = counts.sum(axis=0)
        gene["maxMIDcount"] = counts.max(axis=0)
        group.create_dataset("gene", data=gene)
        group.create_dataset("geneExon", data=np.zeros(g, dtype="<u4"))

        cell_exp = np.zeros(len(values), dtype=[("geneID", "<u4"), ("count", "<u2")])
        cell_exp["geneID"] = gene_idx
        cell_exp["count"] = values
        group.create_dataset("cellExp", data=cell_exp)
        group.create_dataset("cellExpExon", data=np.zeros(len(values), dtype="<u2"))
        gene_exp = np.zeros(len(values), dtype=[("cellID", "<u4"), ("count", "<u2")])
        gene_exp["cellID"] = cells[by_gene]
        gene_exp["count"] = values[by_gene]
        group.create_dataset("geneExp", data=gene_exp)
        group.create_dataset("geneExpExon", data=np.zeros(len(values), dtype="<u2"))

        # One block covering the whole chip region: blockSize = (block side, nx, ny).
        side = int(xy.max()) + half + 1
        group.create_dataset("blockSize", data=np.array([side, 1, 1], dtype="<u4"))
        group.create_dataset("blockIndex", data=np.array([0, n], dtype="<u4"))
        group.create_dataset("cellTypeList", data=np.array([b"default"], dtype="S32"))

        # Borders: up to 32 (dx, dy) vertex offsets from the centroid, padded with 32767.
        border = np.full((n, 32, 2), _BORDER_PAD, dtype="<i2")
        square = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
        border[:, :4, :] = square
        group.create_dataset("cellBorder", data=border)


def _write_bin_gef(path: Path, counts, xy, genes) -> None:
    """A bin GEF with geneExp/bin1: every cell's molecules at its centroid DNB."""
    cells, gene_idx = np.nonzero(counts)
    by_gene = np.lexsort((cells, gene_idx))
    cells, gene_idx = cells[by_gene], gene_idx[by_gene]
    expression = np.zeros(len(cells), dtype=[("x", "<i4"), ("y", "<i4"), ("count", "<u2")])
    expression["x"] = xy[cells, 0]
    expression["y"] = xy[cells, 1]
    expression["count"] = counts[cells, gene_idx]
    present = np.unique(gene_idx)
    per_gene = np.bincount(gene_idx, minlength=counts.shape[1])[present]
    gene = np.zeros(len(present), dtype=[("gene", "S32"), ("offset", "<u4"), ("count", "<u4")])
    gene["gene"] = [genes[i].encode() for i in present]
    gene["offset"] = np.concatenate([[0], np.cumsum(per_gene)[:-1]])
    gene["count"] = per_gene
    with h5py.File(path, "w") as handle:
        handle.attrs["version"] = np.uint32(2)
        handle.attrs["omics"] = np.bytes_("Transcriptomics")
        bin1 = handle.create_group("geneExp").create_group("bin1")
        dataset = bin1.create_dataset("expression", data=expression)
        dataset.attrs["minX"] = np.int32(xy[:, 0].min())
        dataset.attrs["minY"] = np.int32(xy[:, 1].min())
        dataset.attrs["maxX"] = np.int32(xy[:, 0].max())
        dataset.attrs["maxY"] = np.int32(xy[:, 1].max())
        dataset.attrs["maxExp"] = np.uint32(expression["count"].max())
        dataset.attrs["resolution"] = np.uint32(1)
        bin1.create_dataset("gene", data=gene)
        bin1.create_dataset("exon", data=np.zeros(len(cells), dtype="<u2"))


def write_stereoseq(
    folder,
    counts,
    xy,
    genes,
    *,
    cell_ids=None,
    sn: str = "SS200000000TL_A1",
    square_bin: bool = False,
    half_side: int = 5,
) -> Path:
    """Write the SAW (v6/v7) Stereo-seq result folders that spatialdata-io reads.

    ``xy`` are integer cell centroids in DNB (bin1) coordinates, 500 nm apart; ``cell_ids``
    are the uint32 GEF cell ids (default 0..n-1). ``sn`` is the chip serial number used in
    the file names.

    Written:

    * ``041.cellcut/<sn>.cellbin.gef``: HDF5 ``cellBin/`` with ``cell`` (compound: id, x,
      y, offset, geneCount, expCount, dnbCount, area, cellTypeID, clusterID), ``gene``
      (geneName, offset, cellCount, expCount, maxMIDcount), ``cellExp`` (geneID, count),
      ``geneExp`` (cellID, count), ``cellExon``, ``geneExon``, ``cellExpExon``,
      ``geneExpExon``, ``blockIndex``, ``blockSize``, ``cellTypeList`` and ``cellBorder``
      (n x 32 x 2 int16 vertex offsets from the centroid, padded with 32767); cells are
      ``(2 * half_side + 1)``-DNB squares;
    * ``051.cellcluster/<sn>.cell.cluster.h5ad``: AnnData (obs index = str cell id, var
      index = gene names) whose ``X`` holds the raw ``counts`` in the GEF cell order (the
      reader pairs h5ad rows and GEF cells by position);
    * empty ``03.register/`` and ``04.tissuecut/`` (the reader lists both).

    ``square_bin`` adds ``04.tissuecut/<sn>.tissuecut.gef`` (bin GEF, ``geneExp/bin1`` with
    every molecule at its cell's centroid). ``02.count/`` is not written, so pass
    ``dataset_id``.

    Read with ``spatialdata_io.stereoseq(folder, dataset_id=sn, read_square_bin=False)``
    (``READER_KWARGS["stereoseq"]`` plus ``dataset_id``), or ``read_square_bin=True`` when
    written with ``square_bin``. The table is ``"cells_table"`` annotating
    ``"cells_circles"`` (region key ``region``, instance key ``instance_id`` = str cell id);
    centroids in DNB are ``table.obsm["spatial"]`` and the circle centres.
    """
    counts, xy, genes = _check(counts, xy, genes)
    if not np.allclose(xy, np.round(xy)) or (xy < half_side).any():
        raise ValueError("Stereo-seq centroids are non-negative integer DNB coordinates")
    import anndata

    folder = Path(folder)
    for name in ("03.register", "04.tissuecut", "041.cellcut", "051.cellcluster"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    n = counts.shape[0]
    ids = np.asarray(cell_ids if cell_ids is not None else np.arange(n), dtype=np.uint32)
    order = _order(n)
    counts, xy, ids = counts[order], np.round(xy[order]).astype(np.int64), ids[order]

    _write_cellbin_gef(
        folder / "041.cellcut" / f"{sn}.cellbin.gef", counts, xy, genes, ids, half_side
    )
    adata = anndata.AnnData(
        X=counts.astype(np.int32),
        obs=pd.DataFrame(index=pd.Index(ids.astype(str))),
        var=pd.DataFrame(index=pd.Index(genes)),
    )
    adata.write_h5ad(folder / "051.cellcluster" / f"{sn}.cell.cluster.h5ad")
    if square_bin:
        _write_bin_gef(folder / "04.tissuecut" / f"{sn}.tissuecut.gef", counts, xy, genes)
    return folder


# ---------------------------------------------------------------------------- CODEX


def write_codex(
    folder,
    counts,
    xy,
    markers,
    *,
    cell_ids=None,
    region: int = 1,
    tile: tuple[int, int] = (1008, 1344),
    fcs: bool = False,
    image: bool = False,
) -> Path:
    """Write a CODEX processor region export (``reg<NNN>_compensated.csv``).

    ``xy`` are cell centres in stitched-region pixels (``x`` in 0..tileWidth * regionWidth);
    ``counts`` are the integrated marker intensities, written as the ``cyc<CCC>_ch<NNN>``
    columns (cycle = marker index // 4 + 1, channel = marker index % 4 + 1); ``markers``
    are their names (kept only in the FCS ``$PnS`` keywords; the reader names variables by
    the ``cyc`` column). ``cell_ids`` default to 1..n. Columns: ``cell_id, region,
    tile_num, x, y, z, x_tile, y_tile, size`` then the marker columns, bare names (the
    reader needs ``x``, ``y``, ``region``, ``cell_id``).

    ``fcs`` also writes ``reg<NNN>_compensated.fcs`` (FCS 3.1, ``$PnN`` = column name,
    ``$PnS`` = marker name) for platform detection; spatialdata-io 0.7.1 cannot read it
    with readfcs >= 2 (the data frame it gets has integer column labels). ``image`` writes
    a small stitched ``reg<NNN>_montage.tif``.

    Read with ``spatialdata_io.codex(folder, fcs=False)`` (``READER_KWARGS["codex"]``)
    *from inside the folder* (the reader opens the csv by bare name); the folder must hold
    exactly one ``.csv`` and at most one ``.tif``. The table is ``"table"`` annotating the
    circles element ``str(region)`` (region key ``region``, instance key ``cell_id``);
    centres in pixels are ``table.obsm["spatial"]`` and the circle centres.
    """
    counts, xy, markers = _check(counts, xy, markers)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = counts.shape[0]
    ids = np.asarray(cell_ids if cell_ids is not None else np.arange(1, n + 1), dtype=np.int64)
    order = _order(n)
    height, width = tile
    columns = [f"cyc{k // 4 + 1:03d}_ch{k % 4 + 1:03d}" for k in range(len(markers))]
    tile_x = (xy[:, 0] // width).astype(int)
    tile_y = (xy[:, 1] // height).astype(int)
    n_tiles_x = int(tile_x.max()) + 1
    table = pd.DataFrame(
        {
            "cell_id": ids,
            "region": region,
            "tile_num": tile_y * n_tiles_x + tile_x + 1,
            "x": xy[:, 0],
            "y": xy[:, 1],
            "z": 5,
            "x_tile": xy[:, 0] - tile_x * width,
            "y_tile": xy[:, 1] - tile_y * height,
            "size": 250,
        }
    )
    table = pd.concat([table, pd.DataFrame(counts, columns=columns)], axis=1).iloc[order]
    stem = f"reg{region:03d}_compensated"
    table.to_csv(folder / f"{stem}.csv", index=False, float_format="%.17g")

    if fcs:
        import flowio

        short = list(table.columns[: -len(columns)]) + markers
        with open(folder / f"{stem}.fcs", "wb") as handle:
            flowio.create_fcs(
                handle,
                table.to_numpy(dtype=float).ravel().tolist(),
                list(table.columns),
                opt_channel_names=short,
            )
    if image:
        import tifffile

        stack = np.random.default_rng(0).integers(0, 255, size=(2, 32, 32), dtype=np.uint8)
        tifffile.imwrite(folder / f"reg{region:03d}_montage.tif", stack)
    return folder


# ---------------------------------------------------------------------- 10x helpers

# Xenium and Visium HD are read by spatiome's own readers and, with as_spatialdata=True,
# by spatialdata-io with its default arguments (READER_KWARGS is empty for both).
READER_KWARGS.update({"xenium": {}, "visium_hd": {"load_segmentations_only": False}})
SIGNATURES.update(
    {
        "xenium": ("experiment.xenium", "cell_feature_matrix.h5", "cells.parquet"),
        "visium_hd": ("binned_outputs/square_*um/spatial/tissue_positions.parquet",),
    }
)


def _write_tenx_h5(path: Path, counts, barcodes, ids, names, types, **attrs) -> Path:
    """The Cell Ranger >= 3 HDF5 matrix: ``counts`` is barcodes x features, stored CSC
    over barcodes (features x barcodes)."""
    import scipy.sparse as sp

    matrix = sp.csc_matrix(sp.csr_matrix(counts).T)
    with h5py.File(path, "w") as handle:
        for key, value in attrs.items():
            handle.attrs[key] = value
        group = handle.create_group("matrix")
        group.create_dataset("data", data=matrix.data.astype(np.int32), compression="gzip")
        group.create_dataset("indices", data=matrix.indices.astype(np.int64), compression="gzip")
        group.create_dataset("indptr", data=matrix.indptr.astype(np.int64))
        group.create_dataset("shape", data=np.array(matrix.shape, dtype=np.int32))
        group.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        features = group.create_group("features")
        features.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
        features.create_dataset("id", data=np.array(ids, dtype="S"))
        features.create_dataset("name", data=np.array(names, dtype="S"))
        features.create_dataset("feature_type", data=np.array(types, dtype="S"))
        features.create_dataset("genome", data=np.array([b"Unknown"] * len(ids)))
    return path


# ---------------------------------------------------------------------------- Xenium

XENIUM_VERSION = "xenium-2.0.0.10"
XENIUM_CELL_SUMMARY = (
    "cell_centroid_x",
    "cell_centroid_y",
    "cell_area",
    "nucleus_centroid_x",
    "nucleus_centroid_y",
    "nucleus_area",
    "z_level",
    "nucleus_count",
)


def xenium_cell_ids(prefixes, suffix: int = 1) -> list[str]:
    """Xenium cell id strings from uint32 prefixes: the 8 hexadecimal digits of each prefix
    written with the letters a-p for 0-f, then ``-<suffix>`` (e.g. 0 -> ``aaaaaaaa-1``)."""
    prefixes = np.asarray(prefixes, dtype=np.uint32)
    digits = (prefixes[:, None] >> np.arange(28, -1, -4, dtype=np.uint32)) & 0xF
    letters = (digits + ord("a")).astype(np.uint8)
    return [row.tobytes().decode() + f"-{suffix}" for row in letters]


def _xenium_prefix_suffix(cell_ids: list[str]) -> np.ndarray:
    """The inverse of :func:`xenium_cell_ids`: an (n, 2) uint32 array (prefix, suffix)."""
    out = np.zeros((len(cell_ids), 2), dtype=np.uint32)
    for row, cell_id in enumerate(cell_ids):
        head, _, tail = cell_id.partition("-")
        if len(head) != 8 or not set(head) <= set("abcdefghijklmnop") or not tail.isdigit():
            raise ValueError(f"{cell_id!r} is not a Xenium cell id (8 letters a-p, '-', digits)")
        out[row, 0] = int("".join(f"{ord(c) - ord('a'):x}" for c in head), 16)
        out[row, 1] = int(tail)
    return out


def _square_rings(xy: np.ndarray, half: float) -> tuple[np.ndarray, np.ndarray]:
    """Closed square rings (5 vertices, the first repeated) around each centre."""
    corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1], [-1, -1]], dtype=float) * half
    rings = xy[:, None, :] + corners[None, :, :]
    return rings[..., 0].ravel(), rings[..., 1].ravel()


def _write_zarr_zip(path: Path, arrays: dict[str, np.ndarray], attrs: dict[str, dict]) -> None:
    """A zarr v2 store in a zip file (the format of Xenium's ``*.zarr.zip``)."""
    import zarr

    store = zarr.storage.ZipStore(path, mode="w")
    try:
        root = zarr.open_group(store=store, mode="w", zarr_format=2)
        for name, data in arrays.items():
            chunks = tuple(min(s, 4096) for s in data.shape)
            array = root.create_array(
                name, shape=data.shape, dtype=data.dtype, chunks=chunks, attributes=attrs.get(name)
            )
            array[...] = data
    finally:
        store.close()


def write_xenium(
    folder,
    counts,
    xy,
    genes,
    *,
    cell_ids=None,
    controls: int = 2,
    pixel_size: float = 0.2125,
    half_side_um: float = 3.0,
    transcripts: bool = True,
    boundaries: bool = True,
    labels: bool = True,
    morphology: bool = True,
    unassigned: int = 3,
    version: str = XENIUM_VERSION,
) -> Path:
    """Write a 10x Xenium Onboard Analysis (v2) output bundle.

    ``xy`` are cell centroids in microns (``x_centroid``, ``y_centroid`` of cells.parquet);
    every cell is drawn as a square of side ``2 * half_side_um`` (its nucleus as one of
    half that side) centred on its centroid, so centroids of boundaries and masks equal the
    cell table's. Keep cells at least ``2 * half_side_um`` apart for the label masks to
    hold every cell whole. ``cell_ids`` must be Xenium ids (``aaaaaaaa-1`` style, see
    :func:`xenium_cell_ids`); by default ids of spaced prefixes. ``controls`` adds that
    many ``NegControlProbe_<k>`` features (type "Negative Control Probe", counts of 1 in
    every other cell) after the genes of the matrix.

    Written (cells in the same shuffled order in every file):

    * ``experiment.xenium``: JSON with ``pixel_size`` (µm per morphology pixel) and
      ``analysis_sw_version`` (``version``; >= 2.0 selects the morphology_focus/ folder and
      the polygon_sets of cells.zarr.zip) plus the usual run fields;
    * ``cell_feature_matrix.h5``: 10x HDF5, genes then controls;
    * ``cells.parquet``: ``cell_id, x_centroid, y_centroid, transcript_counts,
      control_probe_counts, control_codeword_counts, unassigned_codeword_counts,
      deprecated_codeword_counts, total_counts, cell_area, nucleus_area, nucleus_count,
      segmentation_method``;
    * ``cells.zarr.zip`` (zarr v2): ``cell_id`` (n x 2 uint32 prefix, suffix),
      ``cell_summary`` (n x 8 float64, ``column_names`` attribute),
      ``polygon_sets/{0,1}/{cell_index,num_vertices,vertices}`` (0 = nuclei, 1 = cells, one
      polygon per cell), and with ``labels`` the uint32 masks ``masks/0`` (nuclei) and
      ``masks/1`` (cells) in morphology pixels, polygon p labelled p + 1, plus
      ``masks/homogeneous_transform``. spatialdata-io 0.7.1 opens this file whatever its
      flags, so it is always written;
    * with ``boundaries``: ``cell_boundaries.parquet`` and ``nucleus_boundaries.parquet``
      (``cell_id, vertex_x, vertex_y, label_id``; closed 5-vertex rings in µm);
    * with ``transcripts``: ``transcripts.parquet``, one row per count at a random place
      inside its cell's nucleus (``transcript_id, cell_id, overlaps_nucleus, feature_name,
      x_location, y_location, z_location, qv, fov_name, nucleus_distance,
      codeword_index``), plus ``unassigned`` molecules of the first gene outside every
      cell (``cell_id`` "UNASSIGNED");
    * with ``morphology``: ``morphology_focus/morphology_focus_0000.ome.tif``, a one-channel
      (DAPI) uint16 OME-TIFF covering the masks' extent.

    Read with ``spatialdata_io.xenium(folder)`` (all defaults) when every part is written;
    without ``labels`` pass ``cells_labels=False, nucleus_labels=False``, without
    ``boundaries`` ``cells_boundaries=False, nucleus_boundaries=False``, without
    ``transcripts`` ``transcripts=False``, without ``morphology`` ``morphology_focus=False``.
    The table is ``"table"`` (gene features only: controls dropped), ``obsm["spatial"]`` the
    µm centroids; it annotates ``"cell_labels"`` (instance key ``cell_labels``, the mask
    value) when the labels are read, else names ``"cell_labels"`` without it being present.
    Boundaries are indexed by ``cell_id`` (cells) and by label (nuclei); every element's
    ``"global"`` coordinate system is in morphology pixels (µm / ``pixel_size``).
    """
    import json

    counts, xy, genes = _check(counts, xy, genes)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = counts.shape[0]
    if cell_ids is None:
        cell_ids = xenium_cell_ids(4097 * np.arange(n) + 35)
    cell_ids = [str(c) for c in cell_ids]
    prefix_suffix = _xenium_prefix_suffix(cell_ids)
    order = _order(n)
    counts, xy = counts[order], xy[order]
    cell_ids, prefix_suffix = [cell_ids[i] for i in order], prefix_suffix[order]
    half, nucleus_half = float(half_side_um), float(half_side_um) / 2
    extent_px = np.ceil((xy.max(axis=0) + 2 * half) / pixel_size).astype(int)  # (x, y)

    specs = {
        "major_version": 5,
        "minor_version": 0,
        "patch_version": 0,
        "run_name": "fixture_run",
        "region_name": "region_1",
        "preservation_method": "FFPE",
        "num_cells": n,
        "transcripts_per_cell": int(np.median(counts.sum(axis=1))),
        "panel_name": "fixture panel",
        "panel_organism": "Human",
        "panel_num_targets_predesigned": len(genes),
        "panel_num_targets_custom": 0,
        "pixel_size": pixel_size,
        "instrument_sw_version": "2.0.0.0",
        "analysis_sw_version": version,
        "z_step_size": 3.0,
        "images": {
            "morphology_filepath": "morphology.ome.tif",
            "morphology_focus_filepath": "morphology_focus/morphology_focus_0000.ome.tif",
        },
        "xenium_explorer_files": {"cells_zarr_filepath": "cells.zarr.zip"},
    }
    (folder / "experiment.xenium").write_text(json.dumps(specs, indent=4))

    control_names = [f"NegControlProbe_{k:05d}" for k in range(controls)]
    control_counts = np.zeros((n, controls), dtype=np.int64)
    control_counts[::2] = 1
    _write_tenx_h5(
        folder / "cell_feature_matrix.h5",
        np.hstack([counts, control_counts]),
        cell_ids,
        [f"ENSG{i:08d}" for i in range(len(genes))] + control_names,
        genes + control_names,
        ["Gene Expression"] * len(genes) + ["Negative Control Probe"] * controls,
        software_version=version,
        filetype="matrix",
        version=2,
    )

    cell_area, nucleus_area = (2 * half) ** 2, (2 * nucleus_half) ** 2
    totals = counts.sum(axis=1)
    pd.DataFrame(
        {
            "cell_id": cell_ids,
            "x_centroid": xy[:, 0],
            "y_centroid": xy[:, 1],
            "transcript_counts": totals,
            "control_probe_counts": control_counts.sum(axis=1),
            "control_codeword_counts": 0,
            "unassigned_codeword_counts": 0,
            "deprecated_codeword_counts": 0,
            "total_counts": totals + control_counts.sum(axis=1),
            "cell_area": cell_area,
            "nucleus_area": nucleus_area,
            "nucleus_count": 1,
            "segmentation_method": "Segmented by nucleus expansion",
        }
    ).to_parquet(folder / "cells.parquet", index=False)

    summary = np.column_stack(
        [xy, np.full(n, cell_area), xy, np.full(n, nucleus_area), np.zeros(n), np.ones(n)]
    )
    arrays = {"cell_id": prefix_suffix, "cell_summary": summary.astype(np.float64)}
    attrs = {"cell_summary": {"column_names": list(XENIUM_CELL_SUMMARY)}}
    for mask_index, side in ((0, nucleus_half), (1, half)):
        ring_x, ring_y = _square_rings(xy, side)
        vertices = np.column_stack([ring_x, ring_y]).reshape(n, -1) / pixel_size
        arrays[f"polygon_sets/{mask_index}/cell_index"] = np.arange(n, dtype=np.uint32)
        arrays[f"polygon_sets/{mask_index}/num_vertices"] = np.full(n, 5, dtype=np.int32)
        arrays[f"polygon_sets/{mask_index}/vertices"] = vertices.astype(np.float32)
        if labels:
            mask = np.zeros((extent_px[1], extent_px[0]), dtype=np.uint32)
            low = np.round((xy - side) / pixel_size).astype(int)
            high = np.round((xy + side) / pixel_size).astype(int)
            for label, ((x0, y0), (x1, y1)) in enumerate(zip(low, high, strict=True), start=1):
                mask[y0:y1, x0:x1] = label
            arrays[f"masks/{mask_index}"] = mask
    if labels:
        arrays["masks/homogeneous_transform"] = np.diag([1 / pixel_size] * 2 + [1.0, 1.0])
    _write_zarr_zip(folder / "cells.zarr.zip", arrays, attrs)

    if boundaries:
        for name, side in (("cell_boundaries", half), ("nucleus_boundaries", nucleus_half)):
            ring_x, ring_y = _square_rings(xy, side)
            pd.DataFrame(
                {
                    "cell_id": np.repeat(cell_ids, 5),
                    "vertex_x": ring_x.astype(np.float32),
                    "vertex_y": ring_y.astype(np.float32),
                    "label_id": np.repeat(np.arange(1, n + 1, dtype=np.uint32), 5),
                }
            ).to_parquet(folder / f"{name}.parquet", index=False)

    if transcripts:
        rng = np.random.default_rng(5)
        cell, gene = _molecules(counts)
        offset = rng.uniform(-0.8 * nucleus_half, 0.8 * nucleus_half, size=(len(cell), 2))
        location = xy[cell] + offset
        # unassigned molecules sit beyond the last cell, outside every square
        far = xy.max(axis=0) + half + 1.0
        location = np.vstack([location, np.tile(far, (unassigned, 1))])
        ids = np.asarray(cell_ids, dtype=object)[cell].tolist() + ["UNASSIGNED"] * unassigned
        gene = np.concatenate([gene, np.zeros(unassigned, dtype=gene.dtype)])
        inside = np.concatenate(
            [np.ones(len(cell), dtype=np.uint8), np.zeros(unassigned, np.uint8)]
        )
        m = len(ids)
        pd.DataFrame(
            {
                "transcript_id": np.arange(m, dtype=np.uint64) + 281474976710656,
                "cell_id": ids,
                "overlaps_nucleus": inside,
                "feature_name": np.asarray(genes, dtype=object)[gene],
                "x_location": location[:, 0].astype(np.float32),
                "y_location": location[:, 1].astype(np.float32),
                "z_location": rng.uniform(10.0, 20.0, m).astype(np.float32),
                "qv": np.full(m, 40.0, dtype=np.float32),
                "fov_name": "A1",
                "nucleus_distance": np.where(inside == 1, 0.0, 5.0).astype(np.float32),
                "codeword_index": gene.astype(np.int32),
            }
        ).to_parquet(folder / "transcripts.parquet", index=False)

    if morphology:
        import tifffile

        (folder / "morphology_focus").mkdir(exist_ok=True)
        image = np.random.default_rng(0).integers(
            0, 4000, size=(1, extent_px[1], extent_px[0]), dtype=np.uint16
        )
        tifffile.imwrite(
            folder / "morphology_focus" / "morphology_focus_0000.ome.tif",
            image,
            ome=True,
            photometric="minisblack",
            metadata={
                "axes": "CYX",
                "Channel": {"Name": ["DAPI"]},
                "PhysicalSizeX": pixel_size,
                "PhysicalSizeY": pixel_size,
            },
        )
    return folder


# ------------------------------------------------------------------------- Visium HD


def coarsen_bins(counts, n_cols: int, factor: int):
    """Sum a row-major grid of bins (``(n_rows * n_cols, n_genes)``, dense or sparse) over
    ``factor`` x ``factor`` blocks: the counts of the bins ``factor`` times larger, on a
    grid of ``ceil(n_cols / factor)`` columns (Space Ranger's 8 and 16 µm bins are sums of
    its 2 µm bins). Returns a CSR matrix."""
    import scipy.sparse as sp

    matrix = sp.csr_matrix(counts)
    rows, cols = np.divmod(np.arange(matrix.shape[0]), n_cols)
    coarse_cols = -(-n_cols // factor)
    target = (rows // factor) * coarse_cols + cols // factor
    n_rows = -(-(matrix.shape[0] // n_cols) // factor)
    merge = sp.csr_matrix(
        (np.ones(matrix.shape[0]), (target, np.arange(matrix.shape[0]))),
        shape=(n_rows * coarse_cols, matrix.shape[0]),
    )
    return (merge @ matrix).astype(np.int64).tocsr()


def write_visium_hd(
    folder,
    counts_by_bin_size,
    genes,
    *,
    n_cols: int,
    microns_per_pixel: float = 0.5,
    origin_px: tuple[float, float] = (120.0, 80.0),
    images: bool = True,
    dataset_id: str = "",
) -> Path:
    """Write a Space Ranger (3.x) Visium HD ``outs/`` folder with ``binned_outputs/``.

    ``counts_by_bin_size`` maps a bin size in µm (2, 8, 16) to that size's counts,
    ``(n_bins, n_genes)`` dense or sparse, over a full rectangular grid in row-major order;
    ``n_cols`` is the number of columns of the grid of the smallest size given, and a size
    ``k`` times larger has ``ceil(n_cols / k)`` columns (what :func:`coarsen_bins` makes).
    Bins with no count are outside the tissue (``in_tissue`` 0, left out of the filtered
    matrix). Bin (row, col) of size ``s`` is centred at full-resolution pixel
    ``origin_px + (col + 0.5, row + 0.5) * s / microns_per_pixel`` (x, y); the grid is not
    rotated. ``dataset_id`` prefixes ``feature_slice.h5`` (and names the SpatialData
    elements and coordinate system); Space Ranger writes it unprefixed.

    Written, for each size ``s`` as ``binned_outputs/square_<sss>um/``:

    * ``filtered_feature_bc_matrix.h5``: 10x HDF5, barcodes ``s_<sss>um_<rrrrr>_<ccccc>-1``;
    * ``spatial/tissue_positions.parquet``: every bin of the grid, columns ``barcode,
      in_tissue, array_row, array_col, pxl_row_in_fullres, pxl_col_in_fullres`` (that
      order: spatialdata-io checks it);
    * ``spatial/scalefactors_json.json``: ``spot_diameter_fullres`` (= ``s`` /
      ``microns_per_pixel``), ``bin_size_um``, ``microns_per_pixel``,
      ``tissue_hires_scalef``, ``tissue_lowres_scalef``, ``fiducial_diameter_fullres``,
      ``regist_target_img_scalef``;
    * with ``images``: ``spatial/tissue_hires_image.png`` and ``tissue_lowres_image.png``
      (RGB, at most 400 and 120 pixels a side), also in ``outs/spatial/``.

    And in ``outs/``: ``<dataset_id>feature_slice.h5`` (only its ``metadata_json``
    attribute, holding ``hd_layout_json`` with ``file_format`` "1.0", which
    spatialdata-io requires) and ``spatial/scalefactors_json.json``.

    Read with ``spatiome.io.read_visium_hd(outs, bin_size=s)`` or
    ``spatialdata_io.visium_hd(outs)`` (pass ``load_segmentations_only=False`` to silence
    its FutureWarning). spatialdata-io makes one table per size, named
    ``square_<sss>um``, annotating the squares ``<dataset_id>_square_<sss>um`` (instance
    key ``location_id``); coordinate system ``<dataset_id>`` is full-resolution pixels.
    """
    import json

    import scipy.sparse as sp

    folder = Path(folder)
    genes = [str(g) for g in genes]
    sizes = sorted(int(s) for s in counts_by_bin_size)
    smallest = sizes[0]
    extent_um = None
    matrices = {}
    for size in sizes:
        matrix = sp.csr_matrix(counts_by_bin_size[size]).astype(np.int64)
        if matrix.shape[1] != len(genes) or (matrix.data < 0).any():
            raise ValueError(f"counts for {size} um must be non-negative (n_bins, {len(genes)})")
        if size % smallest:
            raise ValueError("every bin size must be a multiple of the smallest")
        columns = -(-n_cols // (size // smallest))
        if matrix.shape[0] % columns:
            raise ValueError(f"{matrix.shape[0]} bins of {size} um do not fill {columns} columns")
        matrices[size] = (matrix, columns)
        extent = np.array([columns, matrix.shape[0] // columns]) * size
        extent_um = extent if extent_um is None else np.maximum(extent_um, extent)
    extent_px = np.asarray(origin_px) + extent_um / microns_per_pixel + 50
    hires = 400 / extent_px.max()
    lowres = 120 / extent_px.max()

    (folder / "spatial").mkdir(parents=True, exist_ok=True)
    layout = {
        "file_format": "1.0",
        "num_rows": int(extent_um[1] // 2),
        "num_cols": int(extent_um[0] // 2),
        "spot_pitch": 2.0,
        "transform": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
    }
    metadata = {"hd_layout_json": json.dumps(layout), "library_ids": [dataset_id or "fixture"]}
    with h5py.File(
        folder / f"{dataset_id}{'_' if dataset_id else ''}feature_slice.h5", "w"
    ) as handle:
        handle.attrs["metadata_json"] = json.dumps(metadata)

    def scalefactors(size: int) -> dict:
        return {
            "spot_diameter_fullres": size / microns_per_pixel,
            "bin_size_um": float(size),
            "microns_per_pixel": microns_per_pixel,
            "tissue_hires_scalef": hires,
            "tissue_lowres_scalef": lowres,
            "fiducial_diameter_fullres": 60.0,
            "regist_target_img_scalef": hires,
        }

    def write_images(spatial: Path) -> None:
        from PIL import Image

        rng = np.random.default_rng(1)
        for name, scale in (("hires", hires), ("lowres", lowres)):
            shape = tuple(np.ceil(extent_px[::-1] * scale).astype(int)) + (3,)
            pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(pixels, mode="RGB").save(spatial / f"tissue_{name}_image.png")

    (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps(scalefactors(smallest)))
    if images:
        write_images(folder / "spatial")

    for size in sizes:
        matrix, columns = matrices[size]
        n_bins = matrix.shape[0]
        bin_dir = folder / "binned_outputs" / f"square_{size:03d}um"
        (bin_dir / "spatial").mkdir(parents=True, exist_ok=True)
        rows, cols = np.divmod(np.arange(n_bins), columns)
        barcodes = np.char.add(
            np.char.add(
                np.char.add(f"s_{size:03d}um_", np.char.zfill(rows.astype(str), 5)),
                np.char.add("_", np.char.zfill(cols.astype(str), 5)),
            ),
            "-1",
        )
        in_tissue = np.asarray(matrix.sum(axis=1)).ravel() > 0
        pitch = size / microns_per_pixel
        pd.DataFrame(
            {
                "barcode": barcodes,
                "in_tissue": in_tissue.astype(np.int32),
                "array_row": rows,
                "array_col": cols,
                "pxl_row_in_fullres": origin_px[1] + (rows + 0.5) * pitch,
                "pxl_col_in_fullres": origin_px[0] + (cols + 0.5) * pitch,
            }
        ).to_parquet(bin_dir / "spatial" / "tissue_positions.parquet", index=False)
        kept = np.flatnonzero(in_tissue)
        kept = kept[_order(len(kept))]
        _write_tenx_h5(
            bin_dir / "filtered_feature_bc_matrix.h5",
            matrix[kept],
            barcodes[kept].tolist(),
            [f"ENSG{i:08d}" for i in range(len(genes))],
            genes,
            ["Gene Expression"] * len(genes),
            software_version="spaceranger-3.1.2",
            filetype="matrix",
            version=2,
            library_ids=np.array([dataset_id or "fixture"], dtype="S"),
        )
        (bin_dir / "spatial" / "scalefactors_json.json").write_text(json.dumps(scalefactors(size)))
        if images:
            write_images(bin_dir / "spatial")
    return folder
