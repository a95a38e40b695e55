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
from .bins import assign_bins, bins_to_cells, read_barcode_mappings
from .h5ad import read_h5ad, write_h5ad
from .spatialdata import read_spatialdata, read_vendor, write_spatialdata
from .tables import read_reference_table, read_slideseq, read_table
from .visium import read_visium, read_visium_hd
from .xenium import read_xenium

__all__ = [
    "PLATFORMS",
    "assign_bins",
    "bins_to_cells",
    "detect_platform",
    "read",
    "read_barcode_mappings",
    "read_h5ad",
    "read_reference_table",
    "read_slideseq",
    "read_spatialdata",
    "read_table",
    "read_vendor",
    "read_visium",
    "read_visium_hd",
    "read_xenium",
    "write_h5ad",
    "write_spatialdata",
]

#: Platforms :func:`read` knows, and which reader handles each (ours where it is faster or
#: its errors clearer, spatialdata-io's otherwise; see docs/io.md).
PLATFORMS = (
    "h5ad",
    "spatialdata",
    "visium",
    "visium_hd",
    "xenium",
    "merscope",
    "cosmx",
    "stereoseq",
    "codex",
    "table",
)
_OWN_READERS = {"visium", "visium_hd", "xenium"}

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


def read(
    path: str | os.PathLike[str],
    platform: str | None = None,
    *,
    as_spatialdata: bool = False,
    **kwargs: Any,
) -> Any:
    """Read spatial data, choosing the reader from what ``path`` holds.

    Parameters
    ----------
    path
        A file or output folder. Recognized (see :func:`detect_platform`):

        - an ``.h5ad`` file (:func:`read_h5ad`) or a SpatialData ``.zarr`` store
          (:func:`read_spatialdata`);
        - a Space Ranger folder with ``spatial/tissue_positions*.csv`` (Visium,
          :func:`read_visium`) or ``binned_outputs/`` (Visium HD, :func:`read_visium_hd`);
        - a Xenium bundle with ``cell_feature_matrix*`` and ``cells.*`` (:func:`read_xenium`);
        - MERSCOPE (``cell_by_gene.csv``), CosMx (``*_exprMat_file.csv``), Stereo-seq
          (``02.count/`` or ``041.cellcut/``) and CODEX (``*.fcs``) folders, read through
          spatialdata-io (:func:`read_vendor`; CosMx's negative probes and system controls
          are moved out of the genes, as Xenium's controls are);
        - a folder with a count table (``counts.csv[.gz]``, ``counts.tsv[.gz]``,
          ``matrix.mtx[.gz]``) and ``coords.csv`` (:func:`read_table`; the coordinate columns
          are the first of ``x``/``y``, ``pxl_col_in_fullres``/``pxl_row_in_fullres``,
          ``xcoord``/``ycoord``, ``x_centroid``/``y_centroid``, ``array_col``/``array_row``
          found). The field separator is detected unless ``sep=`` is given.
    platform
        Skip detection: one of :data:`PLATFORMS`.
    as_spatialdata
        Return a :class:`spatialdata.SpatialData` with everything the platform's output
        holds (transcripts, cell and nucleus boundaries, images; every bin size of a
        Visium HD run), read by spatialdata-io, instead of the count table as an AnnData.
    **kwargs
        Passed to the chosen reader (they override what :func:`read` chose), e.g.
        ``sep=";"`` for the tables of a folder or ``bin_size=16`` for Visium HD.

    Returns
    -------
    AnnData or SpatialData
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
    if not target.exists():
        raise SpatiomeInputError(f"{target}: no such file or folder")
    if platform is None:
        platform = detect_platform(target)
    elif platform not in PLATFORMS:
        raise SpatiomeInputError(f"platform={platform!r} is unknown; choose one of {PLATFORMS}")
    folder = target / "outs" if (target / "outs").is_dir() else target
    if as_spatialdata:
        if platform == "spatialdata":
            import spatialdata

            return spatialdata.read_zarr(target)
        return read_vendor(folder, platform, as_spatialdata=True, **kwargs)
    if platform == "h5ad":
        return read_h5ad(target, **kwargs)
    if platform == "spatialdata":
        return read_spatialdata(target, **kwargs)
    if platform == "table":
        return _read_table_folder(target, folder, kwargs)
    if platform in _OWN_READERS:
        reader = {"visium": read_visium, "visium_hd": read_visium_hd, "xenium": read_xenium}
        return reader[platform](folder, **kwargs)
    return read_vendor(folder, platform, **kwargs)


def detect_platform(path: str | os.PathLike[str]) -> str:
    """The platform whose output ``path`` holds (one of :data:`PLATFORMS`).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "cell_by_gene.csv").write_text("cell,Actb\\n1,3\\n")
    >>> _ = (folder / "cell_metadata.csv").write_text("cell,center_x,center_y\\n1,0,0\\n")
    >>> detect_platform(folder)
    'merscope'
    """
    from .spatialdata import is_spatialdata_store

    target = Path(path)
    if target.is_file():
        if target.name.endswith(".h5ad"):
            return "h5ad"
        raise SpatiomeInputError(
            f"{target}: cannot tell the format of this file; pass an .h5ad file, a "
            "SpatialData .zarr store or the output folder (Visium outs/, Xenium bundle, "
            "MERSCOPE, CosMx, Stereo-seq or CODEX folder, or a folder with counts + "
            "coords.csv), or pass platform="
        )
    if not target.is_dir():
        raise SpatiomeInputError(f"{target}: no such file or folder")
    if is_spatialdata_store(target):
        return "spatialdata"
    folder = target / "outs" if (target / "outs").is_dir() else target
    for platform, found in _SIGNATURES:
        if found(folder):
            return platform
    raise SpatiomeInputError(
        f"{target}: no known layout found. Looked for: an .h5ad file; a SpatialData .zarr "
        "store; spatial/tissue_positions.csv or spatial/tissue_positions_list.csv (Visium); "
        "binned_outputs/ (Visium HD); cell_feature_matrix.h5 or cell_feature_matrix/ with "
        "cells.parquet or cells.csv.gz (Xenium); cell_by_gene.csv with cell_metadata.csv "
        "(MERSCOPE); *_exprMat_file.csv (CosMx); 02.count/ or 041.cellcut/ (Stereo-seq); "
        "*.fcs (CODEX); counts.csv[.gz] / counts.tsv[.gz] / matrix.mtx[.gz] with coords.csv "
        "(tables). Pass one of these, or platform=, or call a spatiome.io.read_* function"
    )


def _is_visium_hd(folder: Path) -> bool:
    return (folder / "binned_outputs").is_dir() or (
        folder.name.startswith("square_") and (folder / "spatial").is_dir()
    )


def _is_codex_csv(path: Path) -> bool:
    """A CODEX processor region export: cell_id, region, x, y and cyc<C>_ch<N> columns."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        header = handle.readline().strip().split(",")
    return {"cell_id", "region", "x", "y"} <= set(header) and any(
        name.startswith("cyc") and "_ch" in name for name in header
    )


def _has_table(folder: Path) -> bool:
    counts = _first_existing(
        folder, tuple(stem + suffix for stem in _TABLE_STEMS for suffix in _TABLE_SUFFIXES)
    )
    return counts is not None and _first_existing(folder, _COORD_NAMES) is not None


#: How each platform's output folder is recognized, tried in order.
_SIGNATURES = (
    (
        "visium",
        lambda f: _has_any(f / "spatial", ("tissue_positions.csv", "tissue_positions_list.csv")),
    ),
    ("visium_hd", _is_visium_hd),
    (
        "xenium",
        lambda f: (
            _has_any(f, ("cell_feature_matrix.h5", "cell_feature_matrix"))
            and _has_any(f, ("cells.parquet", "cells.csv.gz", "cells.csv"))
        ),
    ),
    (
        "merscope",
        lambda f: _has_any(f, ("cell_by_gene.csv",)) and _has_any(f, ("cell_metadata.csv",)),
    ),
    ("cosmx", lambda f: any(f.glob("*exprMat_file.csv*"))),
    ("stereoseq", lambda f: _has_any(f, ("02.count", "041.cellcut"))),
    ("codex", lambda f: any(f.glob("*.fcs")) or any(map(_is_codex_csv, f.glob("reg*.csv")))),
    ("table", _has_table),
)


def _read_table_folder(target: Path, folder: Path, kwargs: dict[str, Any]) -> AnnData:
    counts = _first_existing(
        folder, tuple(stem + suffix for stem in _TABLE_STEMS for suffix in _TABLE_SUFFIXES)
    )
    coords = _first_existing(folder, _COORD_NAMES)
    if counts is None or coords is None:
        raise SpatiomeInputError(
            f"{target}: platform='table' needs counts.csv[.gz] / counts.tsv[.gz] / "
            "matrix.mtx[.gz] and coords.csv in the folder"
        )
    options = _coordinate_options(coords, kwargs.get("sep"))
    return read_table(counts, coords, **{**options, **kwargs})


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
