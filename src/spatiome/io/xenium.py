"""Reader for 10x Xenium output bundles (cell-feature matrix + cell table)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from anndata import AnnData

from .._core.validate import SpatiomeInputError
from ._build import add_spatial_entry, build_anndata, spot_diameter
from ._tenx import (
    check_matrix,
    find_first,
    match_ids,
    numeric_columns,
    read_tenx_matrix,
    source,
    split_features,
    var_table,
)

CELL_FILES = ("cells.parquet", "cells.csv.gz", "cells.csv")


def read_xenium(path: str | os.PathLike[str]) -> AnnData:
    """Read a Xenium output folder into cells x genes.

    Parameters
    ----------
    path
        The Xenium output folder with ``cell_feature_matrix.h5`` (or the
        ``cell_feature_matrix/`` Matrix Market folder) and ``cells.parquet``
        (or ``cells.csv.gz``) holding ``cell_id``, ``x_centroid``, ``y_centroid`` (µm).

    Returns
    -------
    AnnData
        Cells x gene-expression features: counts in ``X`` / ``layers['counts']``, cell
        centroids (µm) in ``obsm['spatial']``, the other cell-table columns in ``obs``,
        and the counts of control probes and codewords (every feature type other than
        "Gene Expression") in ``obsm['control_counts']``, one column per feature, with
        their feature types in ``uns['control_feature_types']``. ``uns['spatial']``
        holds the folder's name with no image and ``spot_diameter_fullres`` the median
        distance (µm) between neighbouring cell centroids (see
        :func:`spatiome.io.read_table`).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np, pandas as pd, scipy.io, scipy.sparse as sp
    >>> run = pathlib.Path(tempfile.mkdtemp())
    >>> mtx = run / "cell_feature_matrix"; mtx.mkdir()
    >>> scipy.io.mmwrite(mtx / "matrix.mtx", sp.coo_matrix(np.array([[2, 0], [1, 1], [0, 1]])))
    >>> _ = (mtx / "features.tsv").write_text(
    ...     "E1\\tActb\\tGene Expression\\nE2\\tGfap\\tGene Expression\\n"
    ...     "N1\\tNegControlProbe_1\\tNegative Control Probe\\n")
    >>> _ = (mtx / "barcodes.tsv").write_text("aaa-1\\naab-1\\n")
    >>> pd.DataFrame({"cell_id": ["aab-1", "aaa-1"], "x_centroid": [5.0, 1.5],
    ...     "y_centroid": [7.0, 2.5], "cell_area": [30.0, 40.0]}).to_csv(
    ...     run / "cells.csv.gz", index=False)
    >>> adata = read_xenium(run)
    >>> adata.var_names.tolist(), adata.obsm["spatial"].tolist()
    (['Actb', 'Gfap'], [[1.5, 2.5], [5.0, 7.0]])
    >>> adata.obsm["control_counts"]["NegControlProbe_1"].tolist()
    [0, 1]
    """
    folder = Path(path)
    if not folder.is_dir():
        raise SpatiomeInputError(f"{folder}: not a folder; pass the Xenium output folder")
    matrix = read_tenx_matrix(folder, "cell_feature_matrix.h5")
    check_matrix(matrix)
    cells_path = find_first(folder, CELL_FILES, what="cell table")
    cells = _read_cells(cells_path)
    rows = match_ids(
        matrix.barcodes,
        pd.Index(cells["cell_id"]),
        matrix_where=str(matrix.path),
        table_where=str(cells_path),
        allow_extra=False,
        what="cell ids",
    )
    cells = cells.iloc[rows].reset_index(drop=True)
    coords = numeric_columns(cells, ["x_centroid", "y_centroid"], where=str(cells_path))
    counts, var, controls = split_features(matrix)
    names, var_frame = var_table(var)
    adata = build_anndata(
        counts,
        obs_names=matrix.barcodes,
        var_names=names,
        coordinates=coords,
        obs=cells.drop(columns="cell_id"),
        var=var_frame,
        source=source(
            "read_xenium", [matrix.path, cells_path], "xenium", matrix_format=matrix.format
        ),
        spatial_unit="um",
        where=str(matrix.path),
    )
    add_spatial_entry(
        adata,
        folder.resolve().name,
        diameter=spot_diameter(coords, spatial_unit="um"),
        metadata={"spot_diameter_rule": "median nearest-neighbour distance"},
    )
    if controls is not None:
        controls.index = adata.obs_names
        adata.obsm["control_counts"] = controls
        other = matrix.features[matrix.features["feature_types"] != "Gene Expression"]
        adata.uns["control_feature_types"] = dict(
            zip(controls.columns, other["feature_types"].to_numpy(dtype=str), strict=True)
        )
    return adata


def _read_cells(path: Path) -> pd.DataFrame:
    try:
        if path.suffix == ".parquet":
            cells = pd.read_parquet(path)
        else:
            cells = pd.read_csv(path, dtype={"cell_id": str})
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise SpatiomeInputError(f"{path}: cannot read the cell table ({err})") from None
    if "cell_id" not in cells.columns:
        raise SpatiomeInputError(
            f"{path}: no 'cell_id' column (found {list(cells.columns)[:10]}); "
            "pass the cells table of the same Xenium run"
        )
    # older bundles store ids as bytes or integers in parquet
    cells["cell_id"] = [v.decode() if isinstance(v, bytes) else str(v) for v in cells["cell_id"]]
    return cells
