"""The one place that assembles a spatiome AnnData from parts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._core.validate import SpatiomeInputError, check_coordinates, check_counts, check_unique


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
