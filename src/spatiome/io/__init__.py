"""Readers and writers: every reader returns the standard spatiome AnnData.

Raw integer counts sit in ``X`` and ``layers['counts']`` (CSR), coordinates in
``obsm['spatial']`` (unit in ``uns['spatial_unit']``), and the files read in
``uns['spatiome']['source']``. :func:`read` picks the reader from what a path holds.
:func:`read_reference_table` reads a labelled single-cell reference (counts + cell types).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from anndata import AnnData

from .._core.validate import SpatiomeInputError
from .h5ad import read_h5ad, write_h5ad
from .tables import read_reference_table, read_slideseq, read_table
from .visium import read_visium, read_visium_hd
from .xenium import read_xenium

__all__ = [
    "read",
    "read_h5ad",
    "read_reference_table",
    "read_slideseq",
    "read_table",
    "read_visium",
    "read_visium_hd",
    "read_xenium",
    "write_h5ad",
]

_TABLE_STEMS = ("counts", "spatial_counts", "matrix")
_TABLE_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt", ".txt.gz", ".mtx", ".mtx.gz")
_COORD_NAMES = tuple(
    f"{stem}{suffix}"
    for stem in ("coords", "coordinates", "locations")
    for suffix in (".csv", ".csv.gz", ".tsv", ".tsv.gz")
)
# coordinate column pairs tried in order, with the unit they imply
_XY_COLUMNS = (
    ("x", "y", "unknown"),
    ("pxl_col_in_fullres", "pxl_row_in_fullres", "pixel"),
    ("xcoord", "ycoord", "unknown"),
    ("x_centroid", "y_centroid", "um"),
    ("imagecol", "imagerow", "pixel"),
    ("array_col", "array_row", "array"),
)


def read(path: str | os.PathLike[str], **kwargs: Any) -> AnnData:
    """Read spatial data, choosing the reader from what ``path`` holds.

    Parameters
    ----------
    path
        One of: an ``.h5ad`` file (:func:`read_h5ad`); a Space Ranger folder with
        ``spatial/tissue_positions*.csv`` (:func:`read_visium`); one with
        ``binned_outputs/`` (:func:`read_visium_hd`); a Xenium folder with
        ``cell_feature_matrix*`` and ``cells.*`` (:func:`read_xenium`); or a folder with a
        count table (``counts.csv[.gz]``, ``counts.tsv[.gz]``, ``matrix.mtx[.gz]``) and
        ``coords.csv`` (:func:`read_table`; the coordinate columns are the first of
        ``x``/``y``, ``pxl_col_in_fullres``/``pxl_row_in_fullres``, ``xcoord``/``ycoord``,
        ``x_centroid``/``y_centroid``, ``array_col``/``array_row`` found). The tables'
        field separator is detected (comma, tab, semicolon or pipe) unless ``sep=`` is
        given.
    **kwargs
        Passed to the chosen reader (they override what :func:`read` chose), e.g.
        ``sep=";"`` for the tables of a folder.

    Returns
    -------
    AnnData
        What the chosen reader returns.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "counts.csv").write_text("spot,Actb,Gfap\\ns1,3,1\\ns2,0,7\\n")
    >>> _ = (folder / "coords.csv").write_text("spot,x,y\\ns1,0.5,4.0\\ns2,1.0,2.0\\n")
    >>> adata = read(folder)
    >>> adata.shape, adata.uns["spatiome"]["source"]["reader"]
    ((2, 2), 'read_table')
    >>> read("/work/shared/data/dlpfc_151673").shape  # doctest: +SKIP
    (3639, 7319)
    """
    target = Path(path)
    if target.is_file():
        if target.name.endswith(".h5ad"):
            return read_h5ad(target, **kwargs)
        raise SpatiomeInputError(
            f"{target}: cannot tell the format of this file; pass an .h5ad file or the output "
            "folder (Visium outs/, Xenium bundle, or a folder with counts + coords.csv), or "
            "call a spatiome.io.read_* function directly"
        )
    if not target.is_dir():
        raise SpatiomeInputError(f"{target}: no such file or folder")
    folder = target / "outs" if (target / "outs").is_dir() else target
    if _has_any(folder / "spatial", ("tissue_positions.csv", "tissue_positions_list.csv")):
        return read_visium(folder, **kwargs)
    if (folder / "binned_outputs").is_dir() or (
        folder.name.startswith("square_") and (folder / "spatial").is_dir()
    ):
        return read_visium_hd(folder, **kwargs)
    if _has_any(folder, ("cell_feature_matrix.h5", "cell_feature_matrix")) and _has_any(
        folder, ("cells.parquet", "cells.csv.gz", "cells.csv")
    ):
        return read_xenium(folder, **kwargs)
    counts = _first_existing(
        folder, tuple(stem + suffix for stem in _TABLE_STEMS for suffix in _TABLE_SUFFIXES)
    )
    coords = _first_existing(folder, _COORD_NAMES)
    if counts is not None and coords is not None:
        options = _coordinate_options(coords, kwargs.get("sep"))
        return read_table(counts, coords, **{**options, **kwargs})
    raise SpatiomeInputError(
        f"{target}: no known layout found. Looked for: an .h5ad file; "
        "spatial/tissue_positions.csv or spatial/tissue_positions_list.csv (Visium); "
        "binned_outputs/ (Visium HD); cell_feature_matrix.h5 or cell_feature_matrix/ with "
        "cells.parquet or cells.csv.gz (Xenium); counts.csv[.gz] / counts.tsv[.gz] / "
        "matrix.mtx[.gz] with coords.csv (tables). Pass one of these or call a "
        "spatiome.io.read_* function directly"
    )


def _has_any(folder: Path, names: tuple[str, ...]) -> bool:
    return any((folder / name).exists() for name in names)


def _first_existing(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / name for name in names if (folder / name).exists()), None)


def _coordinate_options(coords: Path, sep: str | None) -> dict[str, Any]:
    from .tables import _check_sep, _header, separator_hint, sniff

    _check_sep(sep)
    dialect = sniff(coords, sep)
    header = _header(coords, dialect.sep)
    for x, y, unit in _XY_COLUMNS:
        if x in header and y in header:
            return {"x": x, "y": y, "spatial_unit": unit}
    raise SpatiomeInputError(
        f"{coords}: no coordinate columns found (columns: {header[:10]}); looked for "
        f"{[pair[:2] for pair in _XY_COLUMNS]}: rename them or call read_table(x=, y=)"
        f"{separator_hint(header, dialect.sep)}"
    )
