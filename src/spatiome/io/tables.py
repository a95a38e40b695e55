"""Readers for plain count tables (CSV/TSV, gzip or not, Matrix Market) plus coordinate tables.

Text tables are read as spreadsheets save them: the field separator (comma, tab, semicolon
or pipe) is detected from the header line unless given, a UTF-8 byte-order mark (Excel's
"CSV UTF-8") is ignored, a separator at the end of every line adds no column, and decimal
commas (``1,5`` in a semicolon- or tab-separated file) are read as numbers.
"""

from __future__ import annotations

import csv
import gzip
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._core.validate import SpatiomeInputError, check_counts, check_unique
from ._build import (
    _make_unique,
    _smallest_int_dtype,
    add_spatial_entry,
    build_anndata,
    spot_diameter,
)
from ._tenx import find_first, match_ids, numeric_columns, read_feature_table, read_mtx, source
from ._tenx import read_name_list as _read_names

Orientation = Literal["auto", "spots_x_genes", "genes_x_spots"]
_ORIENTATIONS = ("auto", "spots_x_genes", "genes_x_spots")
# cells per chunk when turning a dense text table into CSR: bounds the float64 buffer (~64 MB)
_CHUNK_CELLS = 8_000_000
GENE_FILES = ("features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv")
BARCODE_FILES = ("barcodes.tsv.gz", "barcodes.tsv")
# "utf-8-sig" reads plain UTF-8 too, and drops the byte-order mark Excel writes
_ENCODING = "utf-8-sig"
SEPARATORS = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}
_SNIFF_LINES = 20
_QUOTED = re.compile(r'"[^"]*"')
_DECIMAL_COMMA = re.compile(r"^[+-]?\d+,\d+(?:[eE][+-]?\d+)?$")
_DECIMAL_POINT = re.compile(r"^[+-]?(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?$")
# names of a cell-type column, compared lowercase without separators ("Cell Type" matches)
_LABEL_COLUMNS = ("celltype", "celltypes", "label", "labels", "type")


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


@dataclass(frozen=True)
class Dialect:
    """How a delimited text file is written: field separator and decimal mark."""

    sep: str
    decimal: str = "."


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
    library_id: str | None = None,
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
        Field separator of both tables. When None it is detected in each table from its
        first lines (comma, tab, semicolon or pipe; the extension decides when the header
        has a single field). With a separator other than a comma, decimal commas
        (``1,5``) are detected and read as numbers.
    genes, barcodes
        For Matrix Market: the gene list (``features.tsv``/``genes.tsv``: id[, name[, type]])
        and the spot id list; found beside the matrix when None.
    spatial_unit
        Unit of the coordinates, stored in ``uns['spatial_unit']``.
    library_id
        Name of the sample in ``uns['spatial']``; default: the name of the folder holding
        the count table (the Matrix Market folder itself when a folder is given).

    Returns
    -------
    AnnData
        Spots x genes with raw counts, ``obsm['spatial']`` from ``x``/``y`` (and ``z``),
        in the row order of the count matrix, and ``uns['spatial'][library_id]`` as
        :func:`spatiome.io._build.add_spatial_entry` writes it: no image, scale factors
        of 1 and ``spot_diameter_fullres`` the median distance from a spot to its nearest
        neighbour, so that scanpy's ``sc.pl.spatial(adata, color=..., img_key=None)`` and
        squidpy's ``sq.pl.spatial_scatter(adata, color=..., img=False)`` draw the spots.

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
    >>> adata.uns["spatial"][folder.name]["scalefactors"]["spot_diameter_fullres"]
    2.0615528128088303

    A semicolon-separated coordinate table with decimal commas, as European spreadsheets
    save it:

    >>> _ = (folder / "xy.csv").write_text("spot;x;y\\ns1;0,5;4\\ns2;1;2,5\\n")
    >>> read_table(folder / "counts.tsv", folder / "xy.csv").obsm["spatial"].tolist()
    [[0.5, 4.0], [1.0, 2.5]]
    """
    if orientation not in _ORIENTATIONS:
        raise SpatiomeInputError(f"orientation must be one of {_ORIENTATIONS}, got {orientation!r}")
    _check_sep(sep)
    counts_path = _existing(counts, "count table")
    coords_path = _existing(coords, "coordinate table")
    table = _read_counts(counts_path, sep, genes, barcodes)
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
    _check_decimal_marks(spot_table, columns, coords_path)
    coordinates = numeric_columns(spot_table, columns, where=str(coords_path))
    adata = build_anndata(
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
    folder = counts_path if counts_path.is_dir() else counts_path.parent
    add_spatial_entry(
        adata,
        library_id or folder.resolve().name,
        diameter=spot_diameter(coordinates, spatial_unit=spatial_unit),
        metadata={"spot_diameter_rule": "median nearest-neighbour distance"},
    )
    return adata


def read_slideseq(
    counts: str | os.PathLike[str],
    locations: str | os.PathLike[str],
    *,
    orientation: Orientation = "auto",
    sep: str | None = None,
    spatial_unit: str = "unknown",
    library_id: str | None = None,
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
    sep
        Field separator of both tables; detected when None (see :func:`read_table`).
    spatial_unit
        Unit of the bead coordinates (puck pixels in the original release).
    library_id
        Name of the puck in ``uns['spatial']`` (default as in :func:`read_table`).

    Returns
    -------
    AnnData
        Beads x genes with raw counts and the bead positions in ``obsm['spatial']``;
        ``uns['spatial']`` as in :func:`read_table`, with the beads' 10 um diameter as
        ``spot_diameter_fullres`` when ``spatial_unit="um"`` (else the median distance
        between neighbouring beads).

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
    _check_sep(sep)
    locations_path = _existing(locations, "bead location table")
    dialect = sniff(locations_path, sep)
    header = _header(locations_path, dialect.sep)
    pairs = [("xcoord", "ycoord"), ("x", "y")]
    for x_name, y_name in pairs:
        if x_name in header and y_name in header:
            break
    else:
        raise SpatiomeInputError(
            f"{locations_path}: no xcoord/ycoord or x/y columns (found {header[:10]}): "
            "the bead location table needs a barcode column and two coordinate columns"
            f"{separator_hint(header, dialect.sep)}"
        )
    adata = read_table(
        counts,
        locations_path,
        orientation=orientation,
        spot_column=header[0],
        x=x_name,
        y=y_name,
        sep=sep,
        spatial_unit=spatial_unit,
        library_id=library_id,
    )
    if spatial_unit == "um":
        library = adata.uns["spatial"][next(iter(adata.uns["spatial"]))]
        library["scalefactors"]["spot_diameter_fullres"] = spot_diameter(
            adata.obsm["spatial"], platform="slideseq", spatial_unit="um"
        )
        library["metadata"]["spot_diameter_rule"] = "Slide-seq bead diameter, 10 um"
    adata.uns["spatiome"]["source"]["reader"] = "read_slideseq"
    adata.uns["spatiome"]["source"]["format"] = "slideseq"
    return adata


def read_reference_table(
    counts: str | os.PathLike[str],
    labels: str | os.PathLike[str],
    *,
    labels_column: str | None = None,
    key_added: str = "cell_type",
    orientation: Literal["auto", "cells_x_genes", "genes_x_cells"] = "auto",
    sep: str | None = None,
) -> AnnData:
    """Read a labelled single-cell reference: a count table plus a table of cell types.

    This is the layout of the shipped deconvolution references
    (``reference_counts.csv.gz`` + ``reference_celltypes.csv``) and of the tables R users
    write with ``write.csv``.

    Parameters
    ----------
    counts
        Cells x genes or genes x cells count table (delimited text, optionally ``.gz``), or
        a Matrix Market file with its gene and barcode lists beside it.
    labels
        Delimited table with one row per cell: the cell id in the first column and the cell
        type in ``labels_column``; its other columns go to ``obs``. Cells of this table
        that the count table lacks are ignored.
    labels_column
        Column of ``labels`` holding the cell types. When None: ``key_added`` if the table
        has it, else the first column named cell_type, celltype, label(s) or type (case and
        separators ignored), else the only column besides the cell id.
    key_added
        ``obs`` column receiving the cell types (categorical).
    orientation
        ``"cells_x_genes"``, ``"genes_x_cells"`` or ``"auto"`` (the axis whose ids match
        the cell ids of ``labels``).
    sep
        Field separator of both tables; detected when None (see :func:`read_table`).

    Returns
    -------
    AnnData
        Cells x genes with raw integer counts (CSR) in ``X`` and ``layers['counts']``, the
        cell types in ``obs[key_added]`` and no coordinates. ``uns['spatiome']['source']``
        names both files and the label column read.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "counts.csv").write_text("cell,Gad1,Slc17a7\\nc1,5,0\\nc2,0,7\\nc3,4,1\\n")
    >>> _ = (folder / "types.csv").write_text("cell,celltype\\nc2,Exc\\nc1,Inh\\nc3,Inh\\n")
    >>> reference = read_reference_table(folder / "counts.csv", folder / "types.csv")
    >>> reference.obs["cell_type"].tolist(), reference.X.toarray().tolist()
    (['Inh', 'Exc', 'Inh'], [[5, 0], [0, 7], [4, 1]])
    >>> reference.uns["spatiome"]["source"]["labels_column"]
    'celltype'
    """
    if orientation not in ("auto", "cells_x_genes", "genes_x_cells"):
        raise SpatiomeInputError(
            f"orientation must be 'auto', 'cells_x_genes' or 'genes_x_cells', got {orientation!r}"
        )
    _check_sep(sep)
    counts_path = _existing(counts, "reference count table")
    labels_path = _existing(labels, "cell-type table")
    table = _read_counts(counts_path, sep, None, None)
    label_table, cell_ids = _read_id_table(labels_path, sep, None, what="cell id")
    column = _label_column(label_table, labels_column, key_added, labels_path)
    spot_orientation = {"cells_x_genes": "spots_x_genes", "genes_x_cells": "genes_x_spots"}
    cells_are_rows = _spot_axis(
        table, cell_ids, spot_orientation.get(orientation, "auto"), labels_path, what="cell"
    )
    matrix = table.counts if cells_are_rows else table.counts.T.tocsr()
    cells, genes = (
        (table.row_ids, table.col_ids) if cells_are_rows else (table.col_ids, table.row_ids)
    )
    where = str(table.paths[0])
    check_unique(cells, what="cell ids", where=where)
    check_unique(cell_ids, what="cell ids", where=str(labels_path))
    rows = cell_ids.get_indexer(cells)
    if (rows < 0).any():
        missing = cells[rows < 0]
        raise SpatiomeInputError(
            f"{labels_path}: no row for {len(missing)} of {len(cells)} cells of {where} "
            f"(e.g. {missing[:3].tolist()}): use the cell-type table written with these "
            "counts, with one row per cell"
        )
    obs = label_table.iloc[rows].reset_index(drop=True)
    types = obs.pop(column)
    if types.isna().any():
        first = cells[int(np.flatnonzero(types.isna().to_numpy())[0])]
        raise SpatiomeInputError(
            f"{labels_path}: {int(types.isna().sum())} cells have no value in column "
            f"{column!r} (e.g. {first!r}): label them or remove them from both tables"
        )
    obs[key_added] = pd.Categorical(types.astype(str))
    obs.index = pd.Index(np.asarray(cells).astype(str))
    check_counts(matrix, where=f"{where}: counts")
    matrix = sp.csr_matrix(matrix)
    matrix.sum_duplicates()
    matrix.sort_indices()
    matrix = _smallest_int_dtype(matrix)
    gene_names = pd.Index(np.asarray(genes).astype(str))
    var = pd.DataFrame(index=gene_names) if table.var is None else table.var.copy()
    var.index = gene_names
    var["gene_symbol"] = gene_names.to_numpy()
    var.index = pd.Index(_make_unique(gene_names))
    adata = AnnData(X=matrix, obs=obs, var=var)
    adata.layers["counts"] = matrix.copy()
    adata.uns["spatiome"] = {
        "source": source(
            "read_reference_table",
            [*table.paths, labels_path],
            table.fmt,
            orientation="cells_x_genes" if cells_are_rows else "genes_x_cells",
            labels_column=column,
        )
    }
    return adata


def sniff(path: str | os.PathLike[str], sep: str | None = None) -> Dialect:
    """The separator and decimal mark of a delimited text file, from its first lines.

    Parameters
    ----------
    path
        A delimited text file, optionally gzip-compressed.
    sep
        The separator, when known; only the decimal mark is then detected.

    Returns
    -------
    Dialect
        ``sep``: among comma, tab, semicolon and pipe, the one the header line holds most
        often and the next line as often (up to a trailing separator); when the header has
        none, tab for ``.tsv``/``.txt``/``.tab`` and comma otherwise. ``decimal``: ``","``
        when the separator is not a comma and numbers such as ``1,5`` appear with no
        ``1.5``-style number, else ``"."``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "coords.csv"
    >>> _ = path.write_text("spot;x;y\\ns1;0,5;4\\n")
    >>> sniff(path)
    Dialect(sep=';', decimal=',')
    """
    file = Path(path)
    lines = _raw_lines(file, _SNIFF_LINES)
    if not lines:
        raise SpatiomeInputError(f"{file}: the file is empty")
    chosen = sep if sep is not None else _detect_sep(lines, file)
    return Dialect(chosen, _detect_decimal(lines[1:], chosen))


def separator_hint(header: list[str], sep: str) -> str:
    """A sentence to append to an error when a one-field header hides another separator."""
    if len(header) != 1:
        return ""
    others = [s for s in SEPARATORS if s != sep and s in header[0]]
    if not others:
        return ""
    return (
        f"; the header reads as one field with the {_sep_name(sep)} separator but contains "
        f"{_sep_name(others[0])}s: pass sep={others[0]!r}"
    )


def _existing(path: str | os.PathLike[str], what: str) -> Path:
    resolved = Path(path)
    if not resolved.exists():
        raise SpatiomeInputError(f"{resolved}: {what} not found; check the path")
    return resolved


def _check_sep(sep: str | None) -> None:
    if sep is not None and (not isinstance(sep, str) or len(sep) != 1 or sep in '"\r\n'):
        raise SpatiomeInputError(
            f"sep must be one character such as ',', ';' or '\\t', got {sep!r}"
        )


def _sep_name(sep: str) -> str:
    return SEPARATORS.get(sep, repr(sep))


def _is_mtx(path: Path) -> bool:
    return path.is_dir() or path.name.endswith((".mtx", ".mtx.gz"))


def _infer_sep(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    return "\t" if name.endswith((".tsv", ".txt", ".tab")) else ","


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding=_ENCODING, newline="")
    return open(path, encoding=_ENCODING, newline="")


def _unreadable(path: Path, err: Exception) -> SpatiomeInputError:
    if isinstance(err, UnicodeDecodeError):
        return SpatiomeInputError(
            f"{path}: not UTF-8 text ({err.reason} at byte {err.start}): save it from the "
            "spreadsheet as 'CSV UTF-8', or convert it to UTF-8 (iconv -f latin1 -t utf-8)"
        )
    return SpatiomeInputError(
        f"{path}: cannot read the table ({err}): check that the file is complete "
        "(a .gz file must be whole)"
    )


def _raw_lines(path: Path, n: int) -> list[str]:
    """The first ``n`` non-blank lines, without line endings."""
    lines: list[str] = []
    try:
        with _open_text(path) as handle:
            for line in handle:
                if line.strip():
                    lines.append(line.rstrip("\r\n"))
                if len(lines) == n:
                    break
    except (OSError, UnicodeDecodeError, EOFError) as err:
        raise _unreadable(path, err) from None
    return lines


def _detect_sep(lines: list[str], path: Path) -> str:
    header = _QUOTED.sub("", lines[0])
    row = _QUOTED.sub("", lines[1]) if len(lines) > 1 else None
    default = _infer_sep(path)
    in_header = {sep: header.count(sep) for sep in SEPARATORS}

    def consistent(sep: str) -> bool:
        # a data row may carry one field more (an R header without the corner cell) and a
        # trailing separator, or one field less (a trailing separator on the header only)
        n = in_header[sep]
        return n > 0 and (row is None or n - 1 <= row.count(sep) <= n + 2)

    candidates = [sep for sep in SEPARATORS if consistent(sep)] or [
        sep for sep in SEPARATORS if in_header[sep] > 0
    ]
    if not candidates:
        return default
    return max(candidates, key=lambda sep: (in_header[sep], sep == default))


def _detect_decimal(lines: list[str], sep: str) -> str:
    if sep == ",":
        return "."
    commas = points = 0
    for fields in csv.reader((line for line in lines if "," in line), delimiter=sep):
        for field in fields:
            value = field.strip()
            commas += bool(_DECIMAL_COMMA.match(value))
            points += bool(_DECIMAL_POINT.match(value))
    return "," if commas and not points else "."


def _first_lines(path: Path, sep: str, n: int = 2) -> list[list[str]]:
    try:
        with _open_text(path) as handle:
            reader = csv.reader(handle, delimiter=sep, skipinitialspace=True)
            lines = []
            for row in reader:
                if not row or not any(field.strip() for field in row):
                    continue
                lines.append(row)
                if len(lines) == n:
                    break
    except csv.Error as err:
        raise SpatiomeInputError(f"{path}: cannot read the table ({err})") from None
    except (OSError, UnicodeDecodeError, EOFError) as err:
        raise _unreadable(path, err) from None
    return lines


def _header(path: Path, sep: str) -> list[str]:
    lines = _first_lines(path, sep, n=1)
    if not lines:
        raise SpatiomeInputError(f"{path}: the file is empty")
    return lines[0]


def _read_counts(
    path: Path,
    sep: str | None,
    genes: str | os.PathLike[str] | None,
    barcodes: str | os.PathLike[str] | None,
) -> _Table:
    if _is_mtx(path):
        return _read_mtx_table(path, genes, barcodes)
    if genes is not None or barcodes is not None:
        raise SpatiomeInputError(
            f"{path}: genes= and barcodes= apply to Matrix Market input only; "
            "a text table carries its ids in its first column and header"
        )
    return _read_text_table(path, sniff(path, sep))


def _read_text_table(path: Path, dialect: Dialect) -> _Table:
    sep = dialect.sep
    lines = _first_lines(path, sep)
    if len(lines) < 2:
        raise SpatiomeInputError(
            f"{path}: the count matrix is empty (a header and at least one row are needed)"
            f"{separator_hint(lines[0], sep) if lines else ''}"
        )
    header, first = lines
    header, first, trailing = _strip_trailing(header, first)
    if len(header) == len(first) - 1:
        col_ids = header  # R-style header without a corner cell for the row ids
    elif len(header) == len(first):
        col_ids = header[1:]
    else:
        raise SpatiomeInputError(
            f"{path}: the header has {len(header)} fields but the first row {len(first)} "
            f"(read with the {_sep_name(sep)} separator): make every line hold the same "
            "fields, or pass sep= if the separator is another one"
            f"{separator_hint(header, sep)}"
        )
    n_cols = len(col_ids)
    if n_cols == 0:
        raise SpatiomeInputError(
            f"{path}: no columns besides the row ids (read with the {_sep_name(sep)} "
            f"separator){separator_hint(header, sep) or ': check the separator (sep=)'}"
        )
    chunk_rows = max(1, _CHUNK_CELLS // max(n_cols, 1))
    options = {
        "sep": sep,
        "header": None,
        "skiprows": 1,
        "skipinitialspace": True,
        "skip_blank_lines": True,
        "encoding": _ENCODING,
    }
    blocks = []
    try:
        # ids in their own pass keep them verbatim ("001" stays "001"); a per-column dtype
        # mapping on the wide body would make pandas several times slower
        ids = pd.read_csv(path, usecols=[0], dtype=str, keep_default_na=False, **options)
        row_ids = ids.iloc[:, 0]
        reader = pd.read_csv(
            path, engine="c", chunksize=chunk_rows, decimal=dialect.decimal, **options
        )
        offset = 0
        with reader:
            for chunk in reader:
                values = chunk.iloc[:, 1:]
                if trailing:
                    _check_trailing_empty(values.iloc[:, -1], path, sep, offset)
                    values = values.iloc[:, :-1]
                _check_numeric(values, col_ids, path, dialect)
                array = values.to_numpy(dtype=np.float64)
                _check_finite_counts(array, row_ids, col_ids, offset, path)
                blocks.append(sp.csr_matrix(array))
                offset += len(chunk)
    except SpatiomeInputError:
        raise
    except pd.errors.ParserError as err:
        raise SpatiomeInputError(
            f"{path}: cannot parse the table ({err}; read with the {_sep_name(sep)} "
            "separator): make every line hold the same number of fields"
        ) from None
    except (UnicodeDecodeError, OSError, EOFError) as err:
        raise _unreadable(path, err) from None
    except ValueError as err:
        raise SpatiomeInputError(f"{path}: cannot parse the table ({err})") from None
    counts = sp.vstack(blocks, format="csr")
    if counts.shape[1] != n_cols:
        raise SpatiomeInputError(
            f"{path}: rows have {counts.shape[1]} values but the header names {n_cols} columns"
            f" (read with the {_sep_name(sep)} separator): make every line hold the same fields"
        )
    return _Table(counts, pd.Index(row_ids.to_numpy(dtype=str)), pd.Index(col_ids), [path], "table")


def _strip_trailing(header: list[str], first: list[str]) -> tuple[list[str], list[str], bool]:
    """Drop the empty last field that a separator at the end of each line adds.

    Returns the header and first row as they would read without it, and whether the data
    rows carry it (their last column is then dropped, once checked to be empty).
    """
    header_trailing = len(header) > 1 and header[-1] == ""
    if len(first) > 1 and first[-1] == "":
        stripped_header = header[:-1] if header_trailing else header
        stripped_first = first[:-1]
        if len(stripped_header) in (len(stripped_first), len(stripped_first) - 1):
            return stripped_header, stripped_first, True
    if header_trailing and len(header) - 1 == len(first):
        return header[:-1], first, False
    return header, first, False


def _check_trailing_empty(column: pd.Series, path: Path, sep: str, offset: int) -> None:
    filled = column.notna().to_numpy()
    if filled.any():
        row = offset + int(np.flatnonzero(filled)[0]) + 2
        raise SpatiomeInputError(
            f"{path}: the first data row ends with an empty field, read as a {_sep_name(sep)} "
            f"at the end of each line, but line {row} has a value there: fill the empty cell "
            "of the first row or remove the separators at the ends of the lines"
        )


def _check_numeric(chunk: pd.DataFrame, col_ids: list[str], path: Path, dialect: Dialect) -> None:
    bad = [i for i, dtype in enumerate(chunk.dtypes) if dtype.kind not in "iuf"]
    if bad:
        column = chunk.columns[bad[0]]
        values = pd.to_numeric(chunk[column], errors="coerce")
        example = chunk[column][values.isna() & chunk[column].notna()].head(1).tolist()
        fix = "counts must be numbers"
        if example and _DECIMAL_COMMA.match(str(example[0]).strip()):
            fix = (
                f"{example[0]!r} uses a decimal comma, which a {_sep_name(dialect.sep)}-"
                "separated file cannot hold unquoted: save the table with '.' as decimal "
                "mark (counts should be whole numbers anyway)"
            )
        raise SpatiomeInputError(
            f"{path}: {len(bad)} column(s) hold non-numeric values (e.g. column "
            f"{col_ids[bad[0]]!r}: {example}); {fix}"
        )


def _check_finite_counts(
    array: np.ndarray, row_ids: pd.Series, col_ids: list[str], offset: int, path: Path
) -> None:
    bad = ~np.isfinite(array)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise SpatiomeInputError(
            f"{path}: {int(bad.sum())} empty, NaN or infinite counts (first at row "
            f"{row_ids.iloc[offset + row]!r}, column {col_ids[column]!r}): counts must be "
            "numbers; write 0 for genes not detected"
        )


def _check_decimal_marks(table: pd.DataFrame, columns: list[str], path: Path) -> None:
    """Name decimal commas in coordinate columns that could not be read as numbers."""
    for column in columns:
        if column not in table or table[column].dtype.kind != "O":
            continue
        values = table[column].dropna().astype(str).str.strip()
        commas = values[values.str.match(_DECIMAL_COMMA.pattern)]
        if len(commas):
            raise SpatiomeInputError(
                f"{path}: column {column!r} holds numbers with a decimal comma (e.g. "
                f"{commas.iloc[0]!r}) in a comma-separated file: save the table with '.' as "
                "decimal mark, or separate the fields with ';' (decimal commas are then read)"
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
    return _read_id_table(path, sep, spot_column, what="spot id")


def _read_id_table(
    path: Path, sep: str | None, id_column: str | None, *, what: str
) -> tuple[pd.DataFrame, pd.Index]:
    """A table with one row per spot or cell: its other columns and the ids."""
    dialect = sniff(path, sep)
    header = _header(path, dialect.sep)
    column = id_column or header[0]
    hint = separator_hint(header, dialect.sep)
    if hint:
        raise SpatiomeInputError(f"{path}: cannot read the columns{hint}")
    if column not in header:
        option = "spot_column=" if what == "spot id" else "a table whose first column is the id"
        raise SpatiomeInputError(
            f"{path}: {what} column {column!r} not found (columns: {header[:10]}); pass {option}"
        )
    try:
        table = pd.read_csv(
            path,
            sep=dialect.sep,
            decimal=dialect.decimal,
            dtype={column: str},
            index_col=False,  # rows with a trailing separator keep their first column
            skipinitialspace=True,
            encoding=_ENCODING,
        )
    except (UnicodeDecodeError, OSError, EOFError) as err:
        raise _unreadable(path, err) from None
    except (ValueError, pd.errors.ParserError) as err:
        raise SpatiomeInputError(
            f"{path}: cannot parse the table ({err}; read with the {_sep_name(dialect.sep)} "
            "separator): make every line hold the same number of fields"
        ) from None
    if header[-1] == "" and len(table.columns) == len(header):
        last = table.columns[-1]
        if table[last].isna().all():
            table = table.drop(columns=last)  # a separator at the end of every line
    if column not in table:
        raise SpatiomeInputError(
            f"{path}: {what} column {column!r} not found (columns: {list(table.columns)[:10]})"
        )
    ids = pd.Index(table[column].to_numpy(dtype=str))
    return table.drop(columns=column), ids


def _label_column(table: pd.DataFrame, given: str | None, key_added: str, path: Path) -> str:
    columns = [str(c) for c in table.columns]
    found = _find_label_column(columns, key_added)
    if given is not None:
        if given in table:
            return given
        hint = f"; the cell types seem to be in {found!r}" if found is not None else ""
        raise SpatiomeInputError(
            f"{path}: no column {given!r} (columns besides the cell id: {columns[:10]}){hint}: "
            "name the cell-type column (labels_column=, on the command line "
            f"--reference-labels {found or 'COLUMN'})"
        )
    if found is not None:
        return found
    if not columns:
        raise SpatiomeInputError(
            f"{path}: the table has only the cell id column; add a column with the cell types"
        )
    raise SpatiomeInputError(
        f"{path}: cannot tell which column holds the cell types (columns besides the id: "
        f"{columns[:10]}); name it cell_type, or pass its name (labels_column=, on the "
        "command line --reference-labels COLUMN)"
    )


def _find_label_column(columns: list[str], preferred: str) -> str | None:
    if preferred in columns:
        return preferred
    normalized = {re.sub(r"[^a-z0-9]", "", c.lower()): c for c in reversed(columns)}
    for name in _LABEL_COLUMNS:
        if name in normalized:
            return normalized[name]
    return columns[0] if len(columns) == 1 else None


def _spot_axis(
    table: _Table, spot_ids: pd.Index, orientation: str, coords_path: Path, what: str = "spot"
) -> bool:
    """True when the spots (or cells) are the rows of the stored matrix."""
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
        fix = "pass spot_column= or fix the ids" if what == "spot" else "fix the ids"
        raise SpatiomeInputError(
            f"{table.paths[0]}: neither its row ids (e.g. {table.row_ids[:3].tolist()}) nor "
            f"its column ids (e.g. {table.col_ids[:3].tolist()}) match the {what} ids in "
            f"{coords_path} (e.g. {spot_ids[:3].tolist()}): {fix}"
        )
    return row_hits >= col_hits
