"""Readers for 10x Visium (Space Ranger ``outs/``) and Visium HD binned outputs."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from .._core.validate import SpatiomeInputError
from ._build import build_anndata, spot_diameter
from ._tenx import (
    TenxMatrix,
    check_matrix,
    find_first,
    match_ids,
    numeric_columns,
    read_json,
    read_tenx_matrix,
    source,
    split_features,
    var_table,
)

POSITION_COLUMNS = [
    "barcode",
    "in_tissue",
    "array_row",
    "array_col",
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
]
POSITION_FILES = ("tissue_positions.csv", "tissue_positions_list.csv", "tissue_positions.parquet")
IMAGE_FILES = {"hires": "tissue_hires_image.png", "lowres": "tissue_lowres_image.png"}


def read_visium(
    path: str | os.PathLike[str],
    *,
    count_file: str = "filtered_feature_bc_matrix.h5",
    load_images: bool = True,
    library_id: str | None = None,
) -> AnnData:
    """Read a Space Ranger ``outs/`` folder of a 10x Visium run.

    Parameters
    ----------
    path
        The ``outs/`` folder (or the run folder that contains it) with the count matrix and
        ``spatial/`` (``tissue_positions.csv`` or the older header-less
        ``tissue_positions_list.csv``, ``scalefactors_json.json``, images).
    count_file
        The 10x HDF5 matrix inside ``path``; when it is absent the Matrix Market folder of
        the same name without ``.h5`` is read (e.g. ``filtered_feature_bc_matrix/``).
    load_images
        Read ``tissue_hires_image.png`` / ``tissue_lowres_image.png`` into
        ``uns['spatial'][library_id]['images']``.
    library_id
        Key in ``uns['spatial']``; defaults to the library id stored in the HDF5 file, else
        the run folder name.

    Returns
    -------
    AnnData
        Spots under tissue x genes with raw counts in ``X`` and ``layers['counts']``,
        ``obsm['spatial']`` = full-resolution pixel (column, row), i.e. (x, y),
        ``obs`` columns ``in_tissue``, ``array_row``, ``array_col``, gene ids in
        ``var['gene_ids']``, non-gene features (e.g. antibodies) in ``obsm['protein']``.
        Positions for barcodes that the matrix does not hold (spots off tissue) are dropped.
        ``uns['spatial'][library_id]`` holds the images, the scale factors and metadata
        as squidpy and scanpy read them; without ``scalefactors_json.json`` the spot
        diameter is 0.55 times the median spacing of neighbouring spots (55 um spots on
        a 100 um lattice), and without images the scale factors are 1.

    Examples
    --------
    >>> import tempfile, pathlib, json
    >>> import numpy as np, pandas as pd, scipy.io, scipy.sparse as sp
    >>> outs = pathlib.Path(tempfile.mkdtemp())
    >>> mtx = outs / "filtered_feature_bc_matrix"
    >>> (outs / "spatial").mkdir(); mtx.mkdir()
    >>> scipy.io.mmwrite(mtx / "matrix.mtx", sp.coo_matrix(np.array([[1, 0], [3, 4], [0, 2]])))
    >>> pd.DataFrame({"id": ["G1", "G2", "G3"], "name": ["A", "B", "C"],
    ...     "type": ["Gene Expression"] * 3}).to_csv(mtx / "features.tsv", sep="\\t",
    ...     header=False, index=False)
    >>> _ = (mtx / "barcodes.tsv").write_text("AC-1\\nGT-1\\n")
    >>> _ = (outs / "spatial" / "tissue_positions.csv").write_text(
    ...     "barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres\\n"
    ...     "AC-1,1,0,0,100,200\\nGT-1,1,0,2,100,300\\nTT-1,0,1,1,150,250\\n")
    >>> _ = (outs / "spatial" / "scalefactors_json.json").write_text(json.dumps(
    ...     {"tissue_hires_scalef": 0.2, "tissue_lowres_scalef": 0.05,
    ...      "spot_diameter_fullres": 90.0}))
    >>> adata = read_visium(outs)
    >>> adata.shape
    (2, 3)
    >>> adata.obsm["spatial"].tolist()
    [[200.0, 100.0], [300.0, 100.0]]
    >>> adata.layers["counts"].toarray().tolist()
    [[1, 3, 0], [0, 4, 2]]
    """
    folder = _outs_folder(path)
    matrix = read_tenx_matrix(folder, count_file)
    spatial_dir = folder / "spatial"
    positions_path = find_first(spatial_dir, POSITION_FILES, what="spot position table")
    library = library_id or _library_id(matrix, folder)
    return _assemble(
        matrix,
        positions_path,
        spatial_dir,
        reader="read_visium",
        fmt="visium",
        library_id=library,
        load_images=load_images,
    )


def read_visium_hd(
    path: str | os.PathLike[str],
    *,
    bin_size: int = 8,
    load_images: bool = True,
    library_id: str | None = None,
) -> AnnData:
    """Read one bin size of a 10x Visium HD run.

    Parameters
    ----------
    path
        The Space Ranger ``outs/`` folder (holding ``binned_outputs/``), the
        ``binned_outputs/`` folder, or one bin folder such as ``square_008um/``. A bin folder
        holds ``filtered_feature_bc_matrix.h5`` (or the Matrix Market folder) and
        ``spatial/tissue_positions.parquet`` plus ``scalefactors_json.json``.
    bin_size
        Bin edge in micrometres (2, 8 or 16 in Space Ranger output); ignored when ``path``
        is a bin folder itself.
    load_images
        Read the tissue images of the bin folder into ``uns['spatial']``.
    library_id
        Key in ``uns['spatial']``; defaults to the run folder name and the bin size.

    Returns
    -------
    AnnData
        Bins x genes, with full-resolution pixel (x, y) in ``obsm['spatial']`` and
        ``in_tissue``, ``array_row``, ``array_col`` in ``obs``; ``uns['spatiome']['source']``
        records the bin size.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np, pandas as pd, scipy.io, scipy.sparse as sp
    >>> outs = pathlib.Path(tempfile.mkdtemp())
    >>> bins = outs / "binned_outputs" / "square_008um"
    >>> mtx = bins / "filtered_feature_bc_matrix"
    >>> mtx.mkdir(parents=True); (bins / "spatial").mkdir()
    >>> scipy.io.mmwrite(mtx / "matrix.mtx", sp.coo_matrix(np.array([[5, 1], [0, 2]])))
    >>> _ = (mtx / "features.tsv").write_text(
    ...     "G1\\tA\\tGene Expression\\nG2\\tB\\tGene Expression\\n")
    >>> _ = (mtx / "barcodes.tsv").write_text("s_008um_00000_00000-1\\ns_008um_00000_00001-1\\n")
    >>> pd.DataFrame({"barcode": ["s_008um_00000_00000-1", "s_008um_00000_00001-1"],
    ...     "in_tissue": [1, 1], "array_row": [0, 0], "array_col": [0, 1],
    ...     "pxl_row_in_fullres": [10.5, 10.5], "pxl_col_in_fullres": [20.0, 50.0]},
    ...     ).to_parquet(bins / "spatial" / "tissue_positions.parquet")
    >>> adata = read_visium_hd(outs, bin_size=8)
    >>> adata.shape, adata.obsm["spatial"][1].tolist()
    ((2, 2), [50.0, 10.5])
    """
    folder = _hd_bin_folder(Path(path), bin_size)
    matrix = read_tenx_matrix(folder, "filtered_feature_bc_matrix.h5")
    spatial_dir = folder / "spatial"
    positions_path = find_first(
        spatial_dir,
        ("tissue_positions.parquet", "tissue_positions.csv"),
        what="bin position table",
    )
    run = folder.parent.parent
    run_name = run.parent.name if run.name == "outs" else run.name
    library = library_id or f"{run_name}_{folder.name}"
    return _assemble(
        matrix,
        positions_path,
        spatial_dir,
        reader="read_visium_hd",
        fmt="visium_hd",
        library_id=library,
        load_images=load_images,
        extra={"bin_folder": str(folder.resolve())},
    )


def _outs_folder(path: str | os.PathLike[str]) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise SpatiomeInputError(
            f"{folder}: not a folder; pass the Space Ranger outs/ folder of a Visium run"
        )
    if not (folder / "spatial").is_dir() and (folder / "outs").is_dir():
        folder = folder / "outs"
    return folder


def _hd_bin_folder(path: Path, bin_size: int) -> Path:
    if not path.is_dir():
        raise SpatiomeInputError(
            f"{path}: not a folder; pass the Space Ranger outs/ folder of a Visium HD run"
        )
    name = f"square_{int(bin_size):03d}um"
    if path.name.startswith("square_") and (path / "spatial").is_dir():
        return path
    for candidate in (
        path / "binned_outputs" / name,
        path / "outs" / "binned_outputs" / name,
        path / name,
    ):
        if candidate.is_dir():
            return candidate
    available = sorted(p.name for p in path.glob("**/square_*um") if p.is_dir())
    raise SpatiomeInputError(
        f"{path}: no binned_outputs/{name}/ found (available bin folders: {available}); "
        "pass the Visium HD outs/ folder and an existing bin_size"
    )


def _library_id(matrix: TenxMatrix, folder: Path) -> str:
    ids = matrix.metadata.get("library_ids")
    if isinstance(ids, list) and ids:
        return str(ids[0])
    return folder.parent.name if folder.name == "outs" else folder.name


def read_positions(path: Path) -> pd.DataFrame:
    """A Space Ranger position table (CSV with or without header, or parquet)."""
    try:
        if path.suffix == ".parquet":
            table = pd.read_parquet(path)
        else:
            with open(path) as handle:
                first = handle.readline()
            has_header = first.split(",")[0].strip().strip('"') == "barcode"
            table = pd.read_csv(
                path,
                header=0 if has_header else None,
                names=None if has_header else POSITION_COLUMNS,
                dtype={"barcode": str} if has_header else {0: str},
            )
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise SpatiomeInputError(f"{path}: cannot read the position table ({err})") from None
    missing = [c for c in POSITION_COLUMNS if c not in table.columns]
    if missing:
        raise SpatiomeInputError(
            f"{path}: missing column(s) {missing}; expected {POSITION_COLUMNS} "
            f"(found {list(table.columns)[:10]})"
        )
    barcodes = table["barcode"]
    if barcodes.dtype != object:
        barcodes = barcodes.astype(str)
    table["barcode"] = [b.decode() if isinstance(b, bytes) else str(b) for b in barcodes]
    return table


def _assemble(
    matrix: TenxMatrix,
    positions_path: Path,
    spatial_dir: Path,
    *,
    reader: str,
    fmt: str,
    library_id: str,
    load_images: bool,
    extra: dict[str, Any] | None = None,
) -> AnnData:
    check_matrix(matrix)
    positions = read_positions(positions_path)
    rows = match_ids(
        matrix.barcodes,
        pd.Index(positions["barcode"]),
        matrix_where=str(matrix.path),
        table_where=str(positions_path),
        allow_extra=True,
    )
    positions = positions.iloc[rows].reset_index(drop=True)
    coords = numeric_columns(
        positions, ["pxl_col_in_fullres", "pxl_row_in_fullres"], where=str(positions_path)
    )
    grid = numeric_columns(
        positions, ["in_tissue", "array_row", "array_col"], where=str(positions_path)
    ).astype(np.int64)
    obs = pd.DataFrame(grid, columns=["in_tissue", "array_row", "array_col"])
    counts, var, other = split_features(matrix)
    names, var_frame = var_table(var)
    paths = [matrix.path, positions_path]
    scalefactors_path = spatial_dir / "scalefactors_json.json"
    scalefactors: dict[str, Any] = {}
    if scalefactors_path.is_file():
        scalefactors = read_json(scalefactors_path)
        paths.append(scalefactors_path)
    images: dict[str, np.ndarray] = {}
    if load_images:
        images = _read_images(spatial_dir)
        paths.extend(spatial_dir / IMAGE_FILES[key] for key in images)
        if images and not scalefactors:
            warnings.warn(
                f"{scalefactors_path} not found: the images cannot be aligned to the spots",
                stacklevel=3,
            )
    adata = build_anndata(
        counts,
        obs_names=matrix.barcodes,
        var_names=names,
        coordinates=coords,
        obs=obs,
        var=var_frame,
        source=source(reader, paths, fmt, matrix_format=matrix.format, **(extra or {})),
        spatial_unit="pixel",
        where=str(matrix.path),
    )
    if other is not None:
        other.index = adata.obs_names
        adata.obsm["protein"] = other
    if "spot_diameter_fullres" not in scalefactors:
        # Space Ranger's scalefactors_json.json gives it; without that file, 55 um spots
        # on their 100 um lattice, measured in full-resolution pixels.
        platform = "visium" if reader == "read_visium" else None  # HD bins touch
        scalefactors["spot_diameter_fullres"] = spot_diameter(coords, platform=platform)
    if not images:
        scalefactors.setdefault("tissue_hires_scalef", 1.0)
        scalefactors.setdefault("tissue_lowres_scalef", 1.0)
    adata.uns["spatial"] = {
        library_id: {
            "images": images,
            "scalefactors": scalefactors,
            "metadata": {k: v for k, v in matrix.metadata.items() if k != "library_ids"},
        }
    }
    return adata


def _read_images(spatial_dir: Path) -> dict[str, np.ndarray]:
    from matplotlib.image import imread

    images = {}
    for key, name in IMAGE_FILES.items():
        image_path = spatial_dir / name
        if not image_path.is_file():
            continue
        try:
            images[key] = imread(image_path)
        except (OSError, ValueError, SyntaxError) as err:
            raise SpatiomeInputError(
                f"{image_path}: cannot read the image ({err}); replace it or pass load_images=False"
            ) from None
    return images
