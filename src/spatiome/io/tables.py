"""Readers for plain count tables (CSV/TSV, gzip or not, Matrix Market) plus coordinate tables."""

from __future__ import annotations

import csv
import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._core.validate import SpatiomeInputError, check_unique
from ._build import build_anndata
from ._tenx import find_first, match_ids, numeric_columns, read_feature_table, read_mtx, source
from ._tenx import read_name_list as _read_names

Orientation = Literal["auto", "spots_x_genes", "genes_x_spots"]
_ORIENTATIONS = ("auto", "spots_x_genes", "genes_x_spots")
# cells per chunk when turning a dense text table into CSR: bounds the float64 buffer (~64 MB)
_CHUNK_CELLS = 8_000_000
GENE_FILES = ("features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv")
BARCODE_FILES = ("barcodes.tsv.gz", "barcodes.tsv")


@dataclass
class _Table:
    """A labelled sparse matrix as stored in the file (rows x columns)."""

    counts: sp.csr_matrix
    row_ids: pd.Index
    col_ids: pd.Index
    paths: list[Path]
    fmt: str
    var: pd.DataFrame | None = None  # gene annotation when the file provides one
    fixed: str | None = None  # orientation implied by the files (MTX + gene/barcode lists)


def read_table(
    counts: str | os.PathLike[str],
    coords: str | os.PathLike[str],
    *,
    orientation: Orientation = "auto",
    spot_column: str | None = None,
    x: str = "x",
    y: str = "y",
    z: str | None = None,
    sep: str | None = None,
    genes: str | os.PathLike[str] | None = None,
    barcodes: str | os.PathLike[str] | None = None,
    spatial_unit: str = "unknown",
) -> AnnData:
    """Read a count table or Matrix Market matrix and join it to a coordinate table.

    Parameters
    ----------
    counts
        A delimited text table (``.csv``, ``.tsv``, ``.txt``, optionally ``.gz``) whose first
        column holds row ids and whose header holds column ids, or a Matrix Market file
        (``.mtx`` / ``.mtx.gz``) or a folder holding ``matrix.mtx(.gz)``.
    coords
        A delimited table with one row per spot: the spot id column plus the ``x``/``y``
        columns. Its other columns go to ``obs``.
    orientation
        ``"spots_x_genes"``, ``"genes_x_spots"`` or ``"auto"``: for text tables, the axis
        whose ids overlap the coordinate table's spot ids is the spot axis; for Matrix
        Market, the axis whose length matches the barcode list.
    spot_column
        Spot id column of ``coords``; defaults to its first column.
    x, y, z
        Coordinate columns of ``coords`` (``z`` optional, for 3-D data).
    sep
        Field separator of both tables; inferred from the extension (``.tsv``/``.txt``:
        tab, else comma) when None.
    genes, barcodes
        For Matrix Market: the gene list (``features.tsv``/``genes.tsv``: id[, name[, type]])
        and the spot id list; found beside the matrix when None.
    spatial_unit
        Unit of the coordinates, stored in ``uns['spatial_unit']``.

    Returns
    -------
    AnnData
        Spots x genes with raw counts, ``obsm['spatial']`` from ``x``/``y`` (and ``z``),
        in the row order of the count matrix.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "counts.tsv").write_text("gene\\ts1\\ts2\\nActb\\t3\\t0\\nGfap\\t1\\t7\\n")
    >>> _ = (folder / "coords.csv").write_text("spot,x,y,region\\ns2,1.0,2.0,a\\ns1,0.5,4.0,b\\n")
    >>> adata = read_table(folder / "counts.tsv", folder / "coords.csv")
    >>> adata.obs_names.tolist(), adata.var_names.tolist()
    (['s1', 's2'], ['Actb', 'Gfap'])
    >>> adata.X.toarray().tolist(), adata.obsm["spatial"].tolist()
    ([[3, 1], [0, 7]], [[0.5, 4.0], [1.0, 2.0]])
    >>> adata.obs["region"].tolist()
    ['b', 'a']
    """
    if orientation not in _ORIENTATIONS:
        raise SpatiomeInputError(f"orientation must be one of {_ORIENTATIONS}, got {orientation!r}")
    counts_path = _existing(counts, "count table")
    coords_path = _existing(coords, "coordinate table")
    if _is_mtx(counts_path):
        table = _read_mtx_table(counts_path, genes, barcodes)
    else:
        if genes is not None or barcodes is not None:
            raise SpatiomeInputError(
                f"{counts_path}: genes= and barcodes= apply to Matrix Market input only; "
                "a text table carries its ids in its first column and header"
            )
        table = _read_text_table(counts_path, sep or _infer_sep(counts_path))
    spot_table, spot_ids = _read_coords(coords_path, sep, spot_column)
    spots_are_rows = _spot_axis(table, spot_ids, orientation, coords_path)
    matrix = table.counts if spots_are_rows else table.counts.T.tocsr()
    spots, genes_index = (
        (table.row_ids, table.col_ids) if spots_are_rows else (table.col_ids, table.row_ids)
    )
    where = str(table.paths[0])
    check_unique(spots, what="spot ids", where=where)
    rows = match_ids(
        spots,
        spot_ids,
        matrix_where=where,
        table_where=str(coords_path),
        allow_extra=False,
        what="spot ids",
    )
    spot_table = spot_table.iloc[rows].reset_index(drop=True)
    columns = [x, y] if z is None else [x, y, z]
    coordinates = numeric_columns(spot_table, columns, where=str(coords_path))
    return build_anndata(
        matrix,
        obs_names=spots,
        var_names=genes_index,
        coordinates=coordinates,
        obs=spot_table,
        var=table.var,
        source=source(
            "read_table",
            [*table.paths, coords_path],
            table.fmt,
            orientation="spots_x_genes" if spots_are_rows else "genes_x_spots",
        ),
        spatial_unit=spatial_unit,
        where=where,
    )


def read_slideseq(
    counts: str | os.PathLike[str],
    locations: str | os.PathLike[str],
    *,
    orientation: Orientation = "auto",
    spatial_unit: str = "unknown",
) -> AnnData:
    """Read Slide-seq beads: a count table (either orientation, or Matrix Market) + locations.

    Parameters
    ----------
    counts
        Bead x gene or gene x bead table (e.g. ``MappedDGEForR.csv``), or Matrix Market
        with ``barcodes.tsv``/``genes.tsv`` beside it.
    locations
        CSV with the bead barcode in the first column and ``xcoord, ycoord`` (or ``x, y``).
    orientation
        As in :func:`read_table`; ``"auto"`` matches ids against the bead barcodes.
    spatial_unit
        Unit of the bead coordinates (puck pixels in the original release).

    Returns
    -------
    AnnData
        Beads x genes with raw counts and the bead positions in ``obsm['spatial']``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "MappedDGEForR.csv").write_text("Row,AAAC,CCGT\\nGad1,4,0\\nPcp2,0,9\\n")
    >>> _ = (folder / "BeadLocationsForR.csv").write_text(
    ...     "barcodes,xcoord,ycoord\\nCCGT,10.5,3.0\\nAAAC,2.0,8.0\\n")
    >>> beads = read_slideseq(folder / "MappedDGEForR.csv", folder / "BeadLocationsForR.csv")
    >>> beads.obs_names.tolist(), beads.obsm["spatial"].tolist()
    (['AAAC', 'CCGT'], [[2.0, 8.0], [10.5, 3.0]])
    """
    locations_path = _existing(locations, "bead location table")
    header = _header(locations_path, _infer_sep(locations_path))
    pairs = [("xcoord", "ycoord"), ("x", "y")]
    for x_name, y_name in pairs:
        if x_name in header and y_name in header:
            break
    else:
        raise SpatiomeInputError(
            f"{locations_path}: no xcoord/ycoord or x/y columns (found {header[:10]}): "
            "the bead location table needs a barcode column and two coordinate columns"
        )
    adata = read_table(
        counts,
        locations_path,
        orientation=orientation,
        spot_column=header[0],
        x=x_name,
        y=y_name,
        spatial_unit=spatial_unit,
    )
    adata.uns["spatiome"]["source"]["reader"] = "read_slideseq"
    adata.uns["spatiome"]["source"]["format"] = "slideseq"
    return adata


def _existing(path: str | os.PathLike[str], what: str) -> Path:
    resolved = Path(path)
    if not resolved.exists():
        raise SpatiomeInputError(f"{resolved}: {what} not found; check the path")
    return resolved


def _is_mtx(path: Path) -> bool:
    return path.is_dir() or path.name.endswith((".mtx", ".mtx.gz"))


def _infer_sep(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    return "\t" if name.endswith((".tsv", ".txt", ".tab")) else ","


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", newline="")
    return open(path, newline="")


def _first_lines(path: Path, sep: str, n: int = 2) -> list[list[str]]:
    try:
        with _open_text(path) as handle:
            reader = csv.reader(handle, delimiter=sep)
            lines = []
            for row in reader:
                lines.append(row)
                if len(lines) == n:
                    break
    except (OSError, UnicodeDecodeError, csv.Error, EOFError) as err:
        raise SpatiomeInputError(f"{path}: cannot read the table ({err})") from None
    return lines


def _header(path: Path, sep: str) -> list[str]:
    lines = _first_lines(path, sep, n=1)
    if not lines:
        raise SpatiomeInputError(f"{path}: the file is empty")
    return lines[0]


def _read_text_table(path: Path, sep: str) -> _Table:
    lines = _first_lines(path, sep)
    if len(lines) < 2:
        raise SpatiomeInputError(
            f"{path}: the count matrix is empty (a header and at least one row are needed)"
        )
    header, first = lines
    if len(header) == len(first) - 1:
        col_ids = header  # R-style header without a corner cell for the row ids
    elif len(header) == len(first):
        col_ids = header[1:]
    else:
        raise SpatiomeInputError(
            f"{path}: the header has {len(header)} fields but the first row {len(first)}; "
            f"check the separator (used {sep!r}, pass sep=)"
        )
    n_cols = len(col_ids)
    chunk_rows = max(1, _CHUNK_CELLS // max(n_cols, 1))
    blocks = []
    try:
        # ids in their own pass keep them verbatim ("001" stays "001"); a per-column dtype
        # mapping on the wide body would make pandas several times slower
        row_ids = pd.read_csv(
            path, sep=sep, header=None, skiprows=1, usecols=[0], dtype=str, keep_default_na=False
        ).iloc[:, 0]
        reader = pd.read_csv(
            path, sep=sep, header=None, skiprows=1, engine="c", chunksize=chunk_rows
        )
        with reader:
            for chunk in reader:
                values = chunk.iloc[:, 1:]
                _check_numeric(values, col_ids, path)
                blocks.append(sp.csr_matrix(values.to_numpy(dtype=np.float64)))
    except (ValueError, pd.errors.ParserError, OSError, EOFError) as err:
        raise SpatiomeInputError(f"{path}: cannot parse the table ({err})") from None
    counts = sp.vstack(blocks, format="csr")
    if counts.shape[1] != n_cols:
        raise SpatiomeInputError(
            f"{path}: rows have {counts.shape[1]} values but the header names {n_cols} columns"
        )
    return _Table(counts, pd.Index(row_ids.to_numpy(dtype=str)), pd.Index(col_ids), [path], "table")


def _check_numeric(chunk: pd.DataFrame, col_ids: list[str], path: Path) -> None:
    bad = [i for i, dtype in enumerate(chunk.dtypes) if dtype.kind not in "iuf"]
    if bad:
        column = chunk.columns[bad[0]]
        values = pd.to_numeric(chunk[column], errors="coerce")
        example = chunk[column][values.isna() & chunk[column].notna()].head(1).tolist()
        raise SpatiomeInputError(
            f"{path}: {len(bad)} column(s) hold non-numeric values (e.g. column "
            f"{col_ids[bad[0]]!r}: {example}); counts must be numbers"
        )


def _read_mtx_table(
    path: Path,
    genes: str | os.PathLike[str] | None,
    barcodes: str | os.PathLike[str] | None,
) -> _Table:
    if path.is_dir():
        folder = path
        path = find_first(folder, ("matrix.mtx.gz", "matrix.mtx"), what="Matrix Market file")
    else:
        folder = path.parent
    gene_path = (
        _existing(genes, "gene list")
        if genes is not None
        else find_first(folder, GENE_FILES, what="gene list")
    )
    barcode_path = (
        _existing(barcodes, "barcode list")
        if barcodes is not None
        else find_first(folder, BARCODE_FILES, what="barcode list")
    )
    matrix = read_mtx(path).tocsr()
    features = read_feature_table(gene_path)
    spot_ids = _read_names(barcode_path)
    n_rows, n_cols = matrix.shape
    var = pd.DataFrame(
        {"gene_ids": features["gene_ids"].to_numpy(), "feature_types": features["feature_types"]}
    )
    gene_names = pd.Index(features["name"].to_numpy(dtype=str))
    paths = [path, gene_path, barcode_path]
    if len(features) == n_rows and len(spot_ids) == n_cols:
        return _Table(matrix, gene_names, spot_ids, paths, "mtx", var, fixed="genes_x_spots")
    if len(features) == n_cols and len(spot_ids) == n_rows:
        return _Table(matrix, spot_ids, gene_names, paths, "mtx", var, fixed="spots_x_genes")
    raise SpatiomeInputError(
        f"{path}: the matrix is {n_rows} x {n_cols} but {gene_path.name} lists "
        f"{len(features)} genes and {barcode_path.name} {len(spot_ids)} spots: "
        "use the gene and barcode lists written with this matrix"
    )


def _read_coords(
    path: Path, sep: str | None, spot_column: str | None
) -> tuple[pd.DataFrame, pd.Index]:
    sep = sep or _infer_sep(path)
    header = _header(path, sep)
    spot = spot_column or header[0]
    if spot not in header:
        raise SpatiomeInputError(
            f"{path}: spot id column {spot!r} not found (columns: {header[:10]}); pass spot_column="
        )
    try:
        table = pd.read_csv(path, sep=sep, dtype={spot: str})
    except (ValueError, pd.errors.ParserError, OSError) as err:
        raise SpatiomeInputError(f"{path}: cannot parse the table ({err})") from None
    ids = pd.Index(table[spot].to_numpy(dtype=str))
    return table.drop(columns=spot), ids


def _spot_axis(table: _Table, spot_ids: pd.Index, orientation: str, coords_path: Path) -> bool:
    """True when the spots are the rows of the stored matrix."""
    if table.fixed is not None:
        if orientation not in ("auto", table.fixed):
            raise SpatiomeInputError(
                f"{table.paths[0]}: orientation={orientation!r} but the gene and barcode "
                f"lists say the matrix is {table.fixed.replace('_x_', ' x ')}"
            )
        return table.fixed == "spots_x_genes"
    if orientation != "auto":
        return orientation == "spots_x_genes"
    row_hits = int(table.row_ids.isin(spot_ids).sum())
    col_hits = int(table.col_ids.isin(spot_ids).sum())
    if row_hits == 0 and col_hits == 0:
        raise SpatiomeInputError(
            f"{table.paths[0]}: neither its row ids (e.g. {table.row_ids[:3].tolist()}) nor "
            f"its column ids (e.g. {table.col_ids[:3].tolist()}) match the spot ids in "
            f"{coords_path} (e.g. {spot_ids[:3].tolist()}): pass spot_column= or fix the ids"
        )
    return row_hits >= col_hits
