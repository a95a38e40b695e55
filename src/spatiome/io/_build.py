"""The one place that assembles a spatiome AnnData from parts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._core.validate import SpatiomeInputError, check_coordinates, check_counts, check_unique

#: Spot or bead diameters fixed by the platform, in micrometres.
PLATFORM_DIAMETER_UM = {"slideseq": 10.0, "visium": 55.0}
#: Visium spots are 55 um wide on a 100 um centre-to-centre lattice.
VISIUM_DIAMETER_PER_SPACING = 0.55


def build_anndata(
    counts: sp.spmatrix | np.ndarray,
    *,
    obs_names,
    var_names,
    coordinates: np.ndarray,
    obs: pd.DataFrame | None = None,
    var: pd.DataFrame | None = None,
    source: Mapping[str, Any] | None = None,
    spatial_unit: str = "unknown",
    where: str = "input",
) -> AnnData:
    """Assemble the standard AnnData: CSR integer counts in ``X`` and ``layers['counts']``.

    Parameters
    ----------
    counts
        Spots x genes raw counts.
    obs_names, var_names
        Spot ids (must be unique) and gene names (made unique with a suffix if needed;
        the original names stay in ``var['gene_symbol']``).
    coordinates
        (n_spots, 2|3) coordinates, stored as float64 in ``obsm['spatial']``.
    obs, var
        Extra per-spot / per-gene columns, aligned with the rows / columns of ``counts``.
    source
        Provenance of the data (reader, paths, format), stored in ``uns['spatiome']['source']``.
    spatial_unit
        Unit of the coordinates (``"pixel"``, ``"um"``, ``"array"``), in ``uns['spatial_unit']``.
    where
        What to name in error messages (usually the file path).
    """
    matrix = sp.csr_matrix(counts)
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise SpatiomeInputError(f"{where}: the count matrix is empty (shape {matrix.shape})")
    check_counts(matrix, where=f"{where}: counts")
    matrix.sum_duplicates()
    matrix.sort_indices()
    matrix = _smallest_int_dtype(matrix)
    obs_index = pd.Index(np.asarray(obs_names).astype(str), name=None)
    check_unique(obs_index, what="barcodes", where=where)
    if len(obs_index) != matrix.shape[0]:
        raise SpatiomeInputError(
            f"{where}: {len(obs_index)} spot ids for {matrix.shape[0]} matrix rows"
        )
    genes = pd.Index(np.asarray(var_names).astype(str))
    if len(genes) != matrix.shape[1]:
        raise SpatiomeInputError(f"{where}: {len(genes)} gene names for {matrix.shape[1]} columns")
    coords = check_coordinates(coordinates, n_obs=matrix.shape[0], where=f"{where}: coordinates")

    obs_frame = pd.DataFrame(index=obs_index) if obs is None else obs.copy()
    obs_frame.index = obs_index
    var_frame = pd.DataFrame(index=genes) if var is None else var.copy()
    var_frame.index = genes
    if "gene_symbol" not in var_frame:
        var_frame["gene_symbol"] = genes.to_numpy()

    var_frame.index = pd.Index(_make_unique(genes))
    adata = AnnData(X=matrix, obs=obs_frame, var=var_frame)
    adata.layers["counts"] = matrix.copy()
    adata.obsm["spatial"] = coords
    adata.uns["spatial_unit"] = spatial_unit
    adata.uns["spatiome"] = {"source": dict(source or {})}
    return adata


def spot_diameter(
    coordinates: np.ndarray, *, platform: str | None = None, spatial_unit: str = "unknown"
) -> float:
    """The diameter to draw a spot with, in the units of its coordinates.

    The rule: the platform's own spot or bead size when the coordinates are in
    micrometres (Slide-seq beads 10 um, Visium spots 55 um); for Visium in other units
    0.55 times the median distance between neighbouring spots (55 um spots, 100 um
    apart); otherwise the median distance from each spot to its nearest neighbour, so
    that neighbouring spots just touch. Spots sharing a position are counted once; with
    fewer than two positions the diameter is 1.

    Parameters
    ----------
    coordinates
        (n_spots, 2|3) coordinates.
    platform
        ``"slideseq"``, ``"visium"`` or None (any other source).
    spatial_unit
        Unit of the coordinates (``"um"``, ``"pixel"``, ``"array"``, ``"unknown"``).

    Returns
    -------
    float
        The diameter, positive.

    Examples
    --------
    >>> grid = np.array([[x, y] for x in range(5) for y in range(5)], dtype=float) * 20.0
    >>> spot_diameter(grid), spot_diameter(grid, platform="slideseq", spatial_unit="um")
    (20.0, 10.0)
    >>> spot_diameter(grid, platform="visium", spatial_unit="pixel")
    11.0
    """
    if platform in PLATFORM_DIAMETER_UM and spatial_unit == "um":
        return PLATFORM_DIAMETER_UM[platform]
    spacing = _median_spacing(np.asarray(coordinates, dtype=np.float64))
    return spacing * VISIUM_DIAMETER_PER_SPACING if platform == "visium" else spacing


def _median_spacing(coordinates: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    positions = np.unique(coordinates[np.isfinite(coordinates).all(axis=1)], axis=0)
    if positions.shape[0] < 2:
        return 1.0
    distances, _ = cKDTree(positions).query(positions, k=2)
    spacing = float(np.median(distances[:, 1]))
    return spacing if spacing > 0 else 1.0


def add_spatial_entry(
    adata: AnnData,
    library_id: str,
    *,
    diameter: float,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Give ``adata.uns["spatial"][library_id]`` the minimal entry plotting tools read.

    The entry is ``{"images": {}, "scalefactors": {"spot_diameter_fullres": diameter,
    "tissue_hires_scalef": 1.0, "tissue_lowres_scalef": 1.0}, "metadata": {...}}``: no
    tissue image, coordinates used as they are. scanpy's ``sc.pl.spatial(adata,
    color=..., img_key=None)`` and squidpy's ``sq.pl.spatial_scatter(adata, color=...,
    img=False)`` then draw the spots at their size; both need those arguments because
    their defaults draw the ``"hires"`` image. An existing entry is left as it is.

    Parameters
    ----------
    adata
        Modified in place.
    library_id
        Name of the sample in ``uns["spatial"]``.
    diameter
        Spot diameter in coordinate units (see :func:`spot_diameter`).
    metadata
        Extra facts about the sample (e.g. the diameter rule), stored under ``metadata``.

    Examples
    --------
    >>> adata = AnnData(np.ones((2, 1)))
    >>> add_spatial_entry(adata, "s1", diameter=10.0)
    >>> adata.uns["spatial"]["s1"]["scalefactors"]["spot_diameter_fullres"]
    10.0
    """
    libraries = adata.uns.setdefault("spatial", {})
    if library_id in libraries:
        return
    libraries[library_id] = {
        "images": {},
        "scalefactors": {
            "spot_diameter_fullres": float(diameter),
            "tissue_hires_scalef": 1.0,
            "tissue_lowres_scalef": 1.0,
        },
        "metadata": dict(metadata or {}),
    }


def _make_unique(names: pd.Index) -> list[str]:
    """Suffix repeated names with -1, -2, ... (as anndata does), before building the object."""
    seen: dict[str, int] = {}
    taken = set(names)
    unique = []
    for name in names:
        if name not in seen:
            seen[name] = 0
            unique.append(name)
            continue
        while True:
            seen[name] += 1
            candidate = f"{name}-{seen[name]}"
            if candidate not in taken:
                break
        taken.add(candidate)
        unique.append(candidate)
    return unique


def _smallest_int_dtype(matrix: sp.csr_matrix) -> sp.csr_matrix:
    high = matrix.data.max(initial=0)
    dtype = np.int32 if high < np.iinfo(np.int32).max else np.int64
    if matrix.dtype != dtype:
        matrix = matrix.astype(dtype)
    return matrix
