"""Visium HD 2 µm bins to cells: assign each bin to a segmented cell and sum its counts.

A Visium HD run measures counts in 2 µm squares. With a nucleus or cell segmentation of the
tissue image, each bin is given the label under its centre; nuclei can be grown outward by
a fixed distance into unlabelled bins, as bin2cell does (Polański et al. 2024), so that the
cytoplasm around a nucleus is counted with it. The counts of the bins of a cell are then
summed with one sparse product (cells x bins indicator times bins x genes).

The segmentation can be an integer label image with the affine map from the bins'
``obsm['spatial']`` to its pixels, a per-bin cell id (an ``obs`` column or an array, for
example from Space Ranger 4's ``barcode_mappings.parquet``, see
:func:`read_barcode_mappings`), or the polygons of Space Ranger 4's
``cell_segmentations.geojson``.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy.spatial import cKDTree

from .._core.validate import (
    SpatiomeInputError,
    check_adata,
    check_counts,
    get_matrix,
    get_spatial,
)
from ._build import build_anndata

__all__ = ["assign_bins", "bins_to_cells", "read_barcode_mappings"]

Labels: TypeAlias = "np.ndarray | str | os.PathLike[str] | Sequence[Any] | pd.Series"
Affine: TypeAlias = "np.ndarray | Sequence[Sequence[float]] | float"
Transform: TypeAlias = "Affine | None"

DEFAULT_BIN_SIZE_UM = 2.0
_POLYGON_SUFFIXES = (".geojson", ".json")


@dataclass
class _Assignment:
    """Per-bin cell codes (-1: no cell) before and after expansion, and the cell ids."""

    codes: np.ndarray
    initial: np.ndarray
    names: np.ndarray
    kind: str
    affine: np.ndarray | None
    bin_size_um: float
    expand_bins: float
    paths: list[str]


def assign_bins(
    bins: AnnData,
    labels: Labels,
    *,
    transform: Transform = None,
    expand_um: float = 0.0,
    expand_bins: float = 0.0,
    bin_size_um: float | None = None,
    allow_outside: bool = False,
) -> pd.Series:
    """Give each bin the id of the segmented cell it falls in.

    Parameters
    ----------
    bins
        Bins x genes, with bin centres in ``obsm['spatial']`` (as
        :func:`spatiome.io.read_visium_hd` returns with ``bin_size=2``).
    labels
        The segmentation, one of:

        - a 2-D integer label image (0 = background): the bin takes the label of the pixel
          under its centre, found through ``transform``;
        - the name of a column of ``bins.obs``, or an array / Series with one cell id per
          bin; missing values (NaN, None), empty strings and 0 (or ``"0"``) mean no cell;
        - the path of a GeoJSON file of polygons (Space Ranger 4's
          ``cell_segmentations.geojson`` or ``nucleus_segmentations.geojson``): the bin
          takes the id of the polygon holding its centre; the id is the feature's
          ``cell_id`` or ``id`` property, else its ``id``, else its position from 1.
          Holes are ignored and where polygons overlap the first one wins.
    transform
        How ``obsm['spatial']`` maps onto the label image's pixels or the polygons'
        coordinates: an affine matrix (2 x 3, or 3 x 3 with last row 0, 0, 1) taking
        (x, y, 1) to (column, row), or one number, a scale (for example the
        ``tissue_hires_scalef`` of a mask drawn on the hires image). A scale ``s`` with an
        offset ``(dx, dy)`` is ``[[s, 0, dx], [0, s, dy]]``. ``None``: the same space (the
        full-resolution image of Space Ranger's output). Pixel centres sit at whole numbers.
    expand_um, expand_bins
        Grow the labels into unlabelled bins: a bin with no label takes the label of the
        nearest labelled bin whose centre lies within this distance (inclusive), in
        micrometres or in bins (one of the two; 0 = no growth). Use it to turn nuclei into
        cells; bin2cell's default is 2 bins.
    bin_size_um
        Edge of a bin in micrometres, to turn ``expand_um`` into bins; ``None`` reads it from
        the folder name in ``uns['spatiome']['source']`` (``square_002um``), else 2.
    allow_outside
        Treat bins that map outside the label image as background instead of raising.

    Returns
    -------
    pandas.Series
        Categorical cell id per bin (NaN: no cell), indexed like ``bins.obs_names``.

    Examples
    --------
    >>> import numpy as np, anndata
    >>> bins = anndata.AnnData(np.ones((4, 1)), obsm={"spatial": np.array(
    ...     [[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])})
    >>> mask = np.array([[5, 0, 0, 0]])
    >>> assign_bins(bins, mask).tolist()
    ['5', nan, nan, nan]
    >>> assign_bins(bins, mask, expand_bins=2).tolist()
    ['5', '5', '5', nan]
    """
    check_adata(bins, name="bins")
    result = _assign(
        bins,
        labels,
        transform=transform,
        expand_um=expand_um,
        expand_bins=expand_bins,
        bin_size_um=bin_size_um,
        allow_outside=allow_outside,
    )
    categorical = pd.Categorical.from_codes(result.codes, categories=result.names)
    return pd.Series(categorical, index=bins.obs_names.copy(), name="cell_id")


def bins_to_cells(
    bins: AnnData,
    labels: Labels,
    *,
    transform: Transform = None,
    expand_um: float = 0.0,
    expand_bins: float = 0.0,
    bin_size_um: float | None = None,
    layer: str | None = None,
    centroid: Literal["counts", "area"] = "counts",
    allow_outside: bool = False,
) -> AnnData:
    """Sum the counts of Visium HD bins into the cells of a segmentation.

    Bins are assigned as in :func:`assign_bins`; bins in no cell are dropped and their
    counts reported in ``uns['spatiome']['bins_to_cells']``. The input is not modified.

    Parameters
    ----------
    bins
        Bins x genes raw counts with bin centres in ``obsm['spatial']``.
    labels, transform, expand_um, expand_bins, bin_size_um, allow_outside
        The segmentation and how bins map onto it: see :func:`assign_bins`.
    layer
        Where the raw counts are; ``None``: ``layers['counts']`` when present, else ``X``.
    centroid
        The cell's position in ``obsm['spatial']``: the mean of its bin centres weighted
        by their counts (``"counts"``; the plain mean for cells without counts) or the
        plain mean (``"area"``).

    Returns
    -------
    AnnData
        Cells x genes, the standard spatiome object: integer CSR counts in ``X`` and
        ``layers['counts']``, ``obsm['spatial']`` in the bins' coordinates and
        ``uns['spatial_unit']``; ``obs`` columns ``cell_id``, ``n_bins``,
        ``n_bins_expanded`` (bins gained by growing the labels) and ``area_um2``;
        ``uns['spatial']`` (images) copied from the bins; provenance in
        ``uns['spatiome']['source']`` and counts kept and dropped in
        ``uns['spatiome']['bins_to_cells']``.

    References
    ----------
    Polański K. et al. (2024) Bin2cell reconstructs cells from high resolution Visium HD
    data. Bioinformatics 40(9), btae546.

    Examples
    --------
    >>> import numpy as np, anndata, scipy.sparse as sp
    >>> counts = sp.csr_matrix(np.array([[1, 0], [2, 1], [0, 3], [4, 4]]))
    >>> bins = anndata.AnnData(counts, obsm={"spatial": np.array(
    ...     [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])})
    >>> cells = bins_to_cells(bins, np.array([[7, 7], [9, 0]]))
    >>> cells.obs_names.tolist(), cells.X.toarray().tolist()
    (['7', '9'], [[3, 1], [0, 3]])
    >>> cells.uns["spatiome"]["bins_to_cells"]["unassigned_counts"]
    8
    """
    check_adata(bins, name="bins")
    if centroid not in ("counts", "area"):
        raise SpatiomeInputError(f"centroid={centroid!r}: pass 'counts' or 'area'")
    counts, where = _bin_counts(bins, layer)
    result = _assign(
        bins,
        labels,
        transform=transform,
        expand_um=expand_um,
        expand_bins=expand_bins,
        bin_size_um=bin_size_um,
        allow_outside=allow_outside,
    )
    coords = get_spatial(bins)[:, :2]
    bin_totals = np.asarray(counts.sum(axis=1)).ravel()
    keep = np.flatnonzero(result.codes >= 0)
    n_cells = len(result.names)
    indicator = sp.csr_matrix(
        (np.ones(len(keep), dtype=np.int64), (result.codes[keep], keep)),
        shape=(n_cells, bins.n_obs),
    )
    cell_counts = indicator @ counts
    obs = _cell_table(result, keep)
    cells = build_anndata(
        cell_counts,
        obs_names=result.names,
        var_names=bins.var_names,
        coordinates=_centroids(
            result.codes[keep], coords[keep], bin_totals[keep], n_cells, centroid
        ),
        obs=obs,
        var=bins.var,
        source=_source(bins, result, centroid, where),
        spatial_unit=bins.uns.get("spatial_unit", "unknown"),
        where="bins_to_cells",
    )
    cells.uns["spatiome"]["bins_to_cells"] = _summary(result, bin_totals, keep)
    if "spatial" in bins.uns:
        cells.uns["spatial"] = copy.deepcopy(bins.uns["spatial"])
    return cells


def read_barcode_mappings(
    path: str | os.PathLike[str],
    bins: AnnData,
    *,
    compartment: Literal["cell", "nucleus"] = "cell",
    barcode_column: str = "square_002um",
) -> pd.Series:
    """Per-bin cell ids from Space Ranger 4's ``barcode_mappings.parquet``.

    The table has one row per 2 µm bin: the bin's barcode at each bin size
    (``square_002um``, ``square_008um``, ...), ``cell_id`` (the cell holding it, null for
    none) and, when segmentation ran, ``in_nucleus`` and ``in_cell`` (booleans).

    Parameters
    ----------
    path
        The parquet file, or a folder searched for ``barcode_mappings.parquet``.
    bins
        The bins to label, whose ``obs_names`` are the barcodes of ``barcode_column``
        (:func:`spatiome.io.read_visium_hd` with ``bin_size=2``).
    compartment
        ``"cell"``: the bins Space Ranger gave to a cell (``in_cell`` when present, else
        every bin with a ``cell_id``); ``"nucleus"``: only the bins inside the nucleus, to
        grow with ``expand_um`` in :func:`bins_to_cells`.
    barcode_column
        The column holding the barcodes of ``bins``.

    Returns
    -------
    pandas.Series
        Categorical cell id per bin (NaN: none or not in the table), indexed like
        ``bins.obs_names``; pass it as ``labels`` to :func:`bins_to_cells`.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np, pandas as pd, anndata
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> pd.DataFrame({"square_002um": ["a-1", "b-1", "c-1"],
    ...     "cell_id": ["cellid_000000001-1", "cellid_000000001-1", None],
    ...     "in_nucleus": [True, False, False], "in_cell": [True, True, False]},
    ...     ).to_parquet(folder / "barcode_mappings.parquet")
    >>> bins = anndata.AnnData(np.ones((3, 1)), obs=pd.DataFrame(index=["c-1", "b-1", "a-1"]))
    >>> read_barcode_mappings(folder, bins).tolist()
    [nan, 'cellid_000000001-1', 'cellid_000000001-1']
    >>> read_barcode_mappings(folder, bins, compartment="nucleus").tolist()
    [nan, nan, 'cellid_000000001-1']
    """
    check_adata(bins, name="bins")
    if compartment not in ("cell", "nucleus"):
        raise SpatiomeInputError(f"compartment={compartment!r}: pass 'cell' or 'nucleus'")
    table_path = _mapping_file(Path(path))
    flag = "in_nucleus" if compartment == "nucleus" else "in_cell"
    table = _read_mapping_table(table_path, barcode_column, flag, required=compartment == "nucleus")
    rows = bins.obs_names.get_indexer(table[barcode_column])
    found = rows >= 0
    if not found.any():
        raise SpatiomeInputError(
            f"{table_path}: none of the bins' barcodes (e.g. {bins.obs_names[0]!r}) is in "
            f"column {barcode_column!r} (e.g. {table[barcode_column].iloc[0]!r}): pass the "
            "2 µm bins (read_visium_hd(path, bin_size=2)) or the matching barcode_column"
        )
    ids = table["cell_id"].to_numpy(dtype=object)
    if flag in table:
        ids = np.where(table[flag].fillna(False).to_numpy(dtype=bool), ids, None)
    per_bin = np.full(bins.n_obs, None, dtype=object)
    per_bin[rows[found]] = ids[found]
    return pd.Series(
        pd.Categorical(per_bin), index=bins.obs_names.copy(), name="cell_id", dtype="category"
    )


def _mapping_file(path: Path) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        found = sorted(path.glob("**/barcode_mappings.parquet"))
        if found:
            return found[0]
    raise SpatiomeInputError(
        f"{path}: no barcode_mappings.parquet found; pass the file or the Space Ranger 4 "
        "outs/ folder that holds it"
    )


def _read_mapping_table(path: Path, barcode: str, flag: str, *, required: bool) -> pd.DataFrame:
    import pyarrow.parquet as pq

    try:
        present = set(pq.read_schema(path).names)
    except (OSError, ValueError) as err:
        raise SpatiomeInputError(f"{path}: cannot read the parquet file ({err})") from None
    needed = [barcode, "cell_id"] + ([flag] if required else [])
    missing = [column for column in needed if column not in present]
    if missing:
        raise SpatiomeInputError(
            f"{path}: column(s) {missing} not found (columns: {sorted(present)}); "
            "pass Space Ranger 4's barcode_mappings.parquet from a run with segmentation"
        )
    columns = needed + ([flag] if flag in present and not required else [])
    return pd.read_parquet(path, columns=columns)


def _assign(
    bins: AnnData,
    labels: Labels,
    *,
    transform: Transform,
    expand_um: float,
    expand_bins: float,
    bin_size_um: float | None,
    allow_outside: bool,
) -> _Assignment:
    coords = get_spatial(bins)[:, :2]
    size = _bin_size(bins, bin_size_um)
    radius_bins = _expand_radius(expand_um, expand_bins, size)
    affine = None if transform is None else _affine(transform)
    paths: list[str] = []
    if _is_polygon_file(bins, labels):
        path = Path(labels)  # type: ignore[arg-type]
        codes, names = _polygon_codes(path, coords, affine)
        kind, paths = f"polygons {path.name}", [str(path.resolve())]
    elif isinstance(labels, str):
        if labels not in bins.obs.columns:
            raise SpatiomeInputError(
                f"labels={labels!r} is neither a column of bins.obs (columns: "
                f"{list(bins.obs.columns)[:20]}) nor a .geojson file: pass a label image, "
                "per-bin cell ids or an existing column"
            )
        codes, names = _id_codes(bins.obs[labels], bins.obs_names, where=f"bins.obs[{labels!r}]")
        kind = f"obs column {labels}"
    elif _is_image(labels):
        codes, names = _mask_codes(np.asarray(labels), coords, affine, allow_outside)
        kind = "label image"
    else:
        codes, names = _id_codes(labels, bins.obs_names, where="labels")  # type: ignore[arg-type]
        kind = "per-bin ids"
    if not (codes >= 0).any():
        raise SpatiomeInputError(
            f"no bin falls in a cell of the segmentation ({kind}): check that transform maps "
            "bins.obsm['spatial'] onto it and that it holds labels other than 0"
        )
    expanded = _expand(codes, coords, radius_bins * _bin_pitch(coords)) if radius_bins else codes
    return _Assignment(expanded, codes, names, kind, affine, size, radius_bins, paths)


def _is_polygon_file(bins: AnnData, labels: object) -> bool:
    if isinstance(labels, str) and labels in bins.obs.columns:
        return False
    return isinstance(labels, (str, os.PathLike)) and str(labels).lower().endswith(
        _POLYGON_SUFFIXES
    )


def _is_image(labels: object) -> bool:
    if isinstance(labels, (pd.Series, pd.Index, pd.Categorical, list, tuple)):
        return False
    return getattr(labels, "ndim", 1) == 2


def _bin_size(bins: AnnData, bin_size_um: float | None) -> float:
    if bin_size_um is not None:
        size = float(bin_size_um)
        if not np.isfinite(size) or size <= 0:
            raise SpatiomeInputError(f"bin_size_um={bin_size_um!r}: pass a positive number")
        return size
    source = bins.uns.get("spatiome", {}).get("source", {})
    if isinstance(source, dict):
        if "bin_size_um" in source:
            return float(source["bin_size_um"])
        match = re.search(r"square_(\d+)um", str(source.get("bin_folder", "")))
        if match:
            return float(int(match.group(1)))
    return DEFAULT_BIN_SIZE_UM


def _expand_radius(expand_um: float, expand_bins: float, bin_size_um: float) -> float:
    for name, value in (("expand_um", expand_um), ("expand_bins", expand_bins)):
        if not isinstance(value, (int, float, np.number)) or not np.isfinite(value) or value < 0:
            raise SpatiomeInputError(f"{name}={value!r}: pass a distance >= 0 (0: no growth)")
    if expand_um and expand_bins:
        raise SpatiomeInputError(
            f"expand_um={expand_um} and expand_bins={expand_bins}: pass only one of the two"
        )
    return float(expand_bins) if expand_bins else float(expand_um) / bin_size_um


def _affine(transform: Affine) -> np.ndarray:
    if np.ndim(transform) == 0:
        scale = float(transform)  # type: ignore[arg-type]
        if not np.isfinite(scale) or scale <= 0:
            raise SpatiomeInputError(f"transform={transform!r}: a scale must be a positive number")
        return np.array([[scale, 0.0, 0.0], [0.0, scale, 0.0]])
    try:
        matrix = np.asarray(transform, dtype=np.float64)
    except (TypeError, ValueError):
        raise SpatiomeInputError(
            "transform must be a number (scale) or a 2 x 3 / 3 x 3 affine matrix"
        ) from None
    if matrix.shape == (3, 3) and np.allclose(matrix[2], [0.0, 0.0, 1.0]):
        matrix = matrix[:2]
    if matrix.shape != (2, 3) or not np.isfinite(matrix).all():
        raise SpatiomeInputError(
            f"transform has shape {matrix.shape} or non-finite values: pass a 2 x 3 affine "
            "matrix [[a, b, dx], [c, d, dy]] taking (x, y, 1) to (column, row), or a 3 x 3 "
            "one with last row [0, 0, 1]"
        )
    return matrix


def _apply(affine: np.ndarray | None, coords: np.ndarray) -> np.ndarray:
    if affine is None:
        return coords
    return coords @ affine[:, :2].T + affine[:, 2]


def _mask_codes(
    mask: np.ndarray, coords: np.ndarray, affine: np.ndarray | None, allow_outside: bool
) -> tuple[np.ndarray, np.ndarray]:
    if not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == bool):
        if not np.issubdtype(mask.dtype, np.floating):
            raise SpatiomeInputError(
                f"the label image has dtype {mask.dtype}: pass integer labels (0 = background)"
            )
    # round half up, so that a centre on a pixel edge always goes the same way
    pixels = np.floor(_apply(affine, coords) + 0.5)
    cols, rows = pixels[:, 0], pixels[:, 1]
    height, width = mask.shape
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    if not inside.all() and not allow_outside:
        raise SpatiomeInputError(_outside_message(inside, cols, rows, mask.shape))
    values = np.zeros(len(coords), dtype=np.int64)
    sampled = mask[rows[inside].astype(np.intp), cols[inside].astype(np.intp)]
    if sampled.dtype.kind == "f" and (~np.isfinite(sampled) | (np.mod(sampled, 1) != 0)).any():
        raise SpatiomeInputError(
            "the label image holds non-integer values: pass integer labels (0 = background)"
        )
    values[inside] = sampled
    if values.min() < 0:
        raise SpatiomeInputError(
            f"the label image holds negative labels (e.g. {values.min()}): use 0 for "
            "background and positive integers for cells"
        )
    labels, inverse = np.unique(values, return_inverse=True)
    if labels[0] == 0:
        return inverse.astype(np.int64) - 1, labels[1:].astype(str)
    return inverse.astype(np.int64), labels.astype(str)


def _outside_message(inside: np.ndarray, cols, rows, shape: tuple[int, int]) -> str:
    n_out = int((~inside).sum())
    span = f"columns {cols.min():.0f}..{cols.max():.0f}, rows {rows.min():.0f}..{rows.max():.0f}"
    hint = ""
    height, width = shape
    if cols.min() >= 0 and rows.min() >= 0 and cols.max() < height and rows.max() < width:
        hint = " (they would fit the transposed image: rows are y, columns are x)"
    return (
        f"{n_out} of {len(inside)} bins map outside the label image of shape {shape} "
        f"(they span {span}){hint}: pass transform= mapping bins.obsm['spatial'] to the "
        "image's (column, row) pixels, or allow_outside=True to treat them as background"
    )


def _id_codes(values, obs_names: pd.Index, *, where: str) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(values, pd.Series) and not values.index.equals(obs_names):
        if len(values) == len(obs_names) and values.index.isin(obs_names).all():
            values = values.reindex(obs_names)
    array = values if isinstance(values, (pd.Series, pd.Categorical)) else np.asarray(values)
    if np.ndim(array) != 1 or len(array) != len(obs_names):
        raise SpatiomeInputError(
            f"{where} has shape {np.shape(array)} but bins has {len(obs_names)} bins: pass "
            "one cell id per bin, a 2-D label image, or a column name of bins.obs"
        )
    codes, uniques = pd.factorize(array, use_na_sentinel=True)
    names = _id_names(np.asarray(uniques))
    background = (names == "") | (names == "0")
    if background.any():
        remap = np.where(background, -1, np.cumsum(~background) - 1)
        codes = np.where(codes >= 0, remap[np.maximum(codes, 0)], -1)
        names = names[~background]
    return codes.astype(np.int64), names


def _id_names(uniques: np.ndarray) -> np.ndarray:
    if uniques.dtype.kind == "f" and np.all(np.mod(uniques, 1) == 0):
        uniques = uniques.astype(np.int64)
    return uniques.astype(str)


def _polygon_codes(
    path: Path, coords: np.ndarray, affine: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    from matplotlib.path import Path as Outline

    ids, rings = _read_polygons(path)
    # the parts of a MultiPolygon (or features sharing an id) make one cell
    ring_cell, cell_ids = pd.factorize(ids)
    points = _apply(affine, coords)
    tree = cKDTree(points)
    codes = np.full(len(points), -1, dtype=np.int64)
    for index, ring in enumerate(rings):
        low, high = ring.min(axis=0), ring.max(axis=0)
        candidates = np.asarray(
            tree.query_ball_point((low + high) / 2, np.hypot(*(high - low)) / 2 + 1e-9),
            dtype=np.intp,
        )
        candidates = candidates[codes[candidates] < 0]
        if len(candidates):
            inside = Outline(ring).contains_points(points[candidates])
            codes[candidates[inside]] = ring_cell[index]
    used, inverse = np.unique(codes, return_inverse=True)
    names = np.asarray(cell_ids, dtype=object).astype(str)
    if len(used) and used[0] == -1:
        return inverse.astype(np.int64) - 1, names[used[1:]]
    return inverse.astype(np.int64), names[used]


def _read_polygons(path: Path) -> tuple[np.ndarray, list[np.ndarray]]:
    try:
        with open(path) as handle:
            document = json.load(handle)
    except (OSError, ValueError) as err:
        raise SpatiomeInputError(f"{path}: cannot read the GeoJSON file ({err})") from None
    features = document.get("features") if isinstance(document, dict) else None
    if not isinstance(features, list):
        raise SpatiomeInputError(
            f"{path}: not a GeoJSON FeatureCollection (no 'features' list); pass Space "
            "Ranger's cell_segmentations.geojson or a label image"
        )
    ids, rings = [], []
    for position, feature in enumerate(features, start=1):
        geometry = feature.get("geometry") or {}
        kind, parts = geometry.get("type"), geometry.get("coordinates") or []
        polygons = [parts] if kind == "Polygon" else parts if kind == "MultiPolygon" else []
        identifier = _feature_id(feature, position)
        for polygon in polygons:
            if polygon and len(polygon[0]) >= 3:
                ids.append(identifier)
                rings.append(np.asarray(polygon[0], dtype=np.float64)[:, :2])
    if not rings:
        raise SpatiomeInputError(f"{path}: no Polygon or MultiPolygon features found")
    return np.array(ids, dtype=object).astype(str), rings


def _feature_id(feature: dict[str, Any], position: int) -> str:
    properties = feature.get("properties") or {}
    for key in ("cell_id", "id"):
        if properties.get(key) is not None:
            return str(properties[key])
    return str(feature.get("id", position))


def _bin_pitch(coords: np.ndarray) -> float:
    """The distance between neighbouring bin centres, in the units of ``coords``."""
    step = max(1, len(coords) // 20000)
    # an unbalanced tree builds 3x faster over a grid; few queries follow
    tree = cKDTree(coords, balanced_tree=False, compact_nodes=False)
    distances, _ = tree.query(coords[::step], k=2)
    nearest = distances[:, 1]
    pitch = float(np.median(nearest[nearest > 0])) if (nearest > 0).any() else 0.0
    if pitch <= 0:
        raise SpatiomeInputError(
            "bins.obsm['spatial'] has all bins at one position: cannot measure the bin "
            "spacing to grow labels; pass the bin centres"
        )
    return pitch


def _expand(codes: np.ndarray, coords: np.ndarray, radius: float) -> np.ndarray:
    labelled = np.flatnonzero(codes >= 0)
    free = np.flatnonzero(codes < 0)
    if not len(free):
        return codes
    # A relative tolerance keeps bins at exactly the radius (on a grid, 1 or 2 bins away).
    distances, nearest = cKDTree(coords[labelled]).query(
        coords[free], k=1, distance_upper_bound=radius * (1 + 1e-6)
    )
    hit = np.isfinite(distances)
    expanded = codes.copy()
    expanded[free[hit]] = codes[labelled[nearest[hit]]]
    return expanded


def _bin_counts(bins: AnnData, layer: str | None) -> tuple[sp.csr_matrix, str]:
    if layer is None:
        layer = "counts" if "counts" in bins.layers else None
    where = "bins.X" if layer is None else f"bins.layers[{layer!r}]"
    matrix = get_matrix(bins, layer)
    check_counts(matrix, where=where)
    counts = sp.csr_matrix(matrix)
    if counts.dtype.kind == "f":
        counts = counts.astype(np.int64)
    if not counts.nnz or counts.sum() == 0:
        raise SpatiomeInputError(
            f"{where} holds no counts (all zero): pass the raw counts with layer= naming the "
            "layer that holds them"
        )
    return counts, where


def _cell_table(result: _Assignment, keep: np.ndarray) -> pd.DataFrame:
    n_cells = len(result.names)
    codes = result.codes[keep]
    n_bins = np.bincount(codes, minlength=n_cells)
    grown = np.bincount(codes[result.initial[keep] < 0], minlength=n_cells)
    return pd.DataFrame(
        {
            "cell_id": result.names,
            "n_bins": n_bins.astype(np.int64),
            "n_bins_expanded": grown.astype(np.int64),
            "area_um2": n_bins * result.bin_size_um**2,
        }
    )


def _centroids(
    codes: np.ndarray, coords: np.ndarray, weights: np.ndarray, n_cells: int, centroid: str
) -> np.ndarray:
    n_bins = np.bincount(codes, minlength=n_cells).astype(np.float64)
    out = np.column_stack(
        [np.bincount(codes, coords[:, axis], minlength=n_cells) / n_bins for axis in (0, 1)]
    )
    if centroid == "counts":
        weights = weights.astype(np.float64)
        total = np.bincount(codes, weights, minlength=n_cells)
        has = total > 0
        for axis in (0, 1):
            weighted = np.bincount(codes, weights * coords[:, axis], minlength=n_cells)
            out[has, axis] = weighted[has] / total[has]
    return out


def _source(bins: AnnData, result: _Assignment, centroid: str, where: str) -> dict[str, Any]:
    origin = bins.uns.get("spatiome", {}).get("source", {})
    origin = copy.deepcopy(origin) if isinstance(origin, dict) else {}
    return {
        "reader": "bins_to_cells",
        "format": "cells_from_bins",
        "paths": list(origin.get("paths", [])) + result.paths,
        "bins_source": origin,
        "counts": where,
        "segmentation": result.kind,
        "transform": None if result.affine is None else result.affine.tolist(),
        "expand_bins": result.expand_bins,
        "bin_size_um": result.bin_size_um,
        "centroid": centroid,
    }


def _summary(result: _Assignment, bin_totals: np.ndarray, keep: np.ndarray) -> dict[str, Any]:
    total = int(bin_totals.sum())
    assigned = int(bin_totals[keep].sum())
    return {
        "n_bins": len(result.codes),
        "n_bins_assigned": len(keep),
        "n_bins_expanded": int(((result.initial < 0) & (result.codes >= 0)).sum()),
        "n_cells": len(result.names),
        "total_counts": total,
        "assigned_counts": assigned,
        "unassigned_counts": total - assigned,
        "unassigned_fraction": (total - assigned) / total if total else 0.0,
    }
