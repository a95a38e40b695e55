"""The single entry check used by every public function.

Internals trust their inputs; public functions call these helpers first so that
bad input gets one clear error that says what to fix.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData


class SpatiomeInputError(ValueError):
    """Raised when user input is malformed; the message says how to fix it."""


def check_adata(adata: object, *, name: str = "adata") -> AnnData:
    """Check that ``adata`` is a non-empty AnnData."""
    if not isinstance(adata, AnnData):
        raise SpatiomeInputError(
            f"{name} must be an anndata.AnnData, got {type(adata).__name__}: "
            "read data with spatiome.io.read_* or build one with anndata.AnnData(X)"
        )
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise SpatiomeInputError(
            f"{name} is empty ({adata.n_obs} spots x {adata.n_vars} genes): "
            "check the input files or filters"
        )
    return adata


def check_coordinates(
    coords: object, *, n_obs: int | None = None, where: str = "coordinates"
) -> np.ndarray:
    """Return coordinates as a float64 (n, 2|3) array, rejecting NaN/inf/non-numeric."""
    try:
        array = np.asarray(coords, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise SpatiomeInputError(
            f"{where} must be numeric: {err}; fix the coordinate columns"
        ) from None
    if array.ndim != 2 or array.shape[1] not in (2, 3):
        raise SpatiomeInputError(
            f"{where} must have shape (n_spots, 2) or (n_spots, 3), got {array.shape}"
        )
    if n_obs is not None and array.shape[0] != n_obs:
        raise SpatiomeInputError(
            f"{where} has {array.shape[0]} rows but the data has {n_obs} spots: "
            "pass one coordinate row per spot"
        )
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        raise SpatiomeInputError(
            f"{where} has {int(bad.sum())} spots with NaN or infinite coordinates "
            f"(first at row {int(np.flatnonzero(bad)[0])}): remove those spots or fix the values"
        )
    return array


def get_spatial(adata: AnnData, key: str = "spatial") -> np.ndarray:
    """Return validated ``adata.obsm[key]`` as float64."""
    if key not in adata.obsm:
        raise SpatiomeInputError(
            f"adata.obsm[{key!r}] is missing: read data with spatiome.io.read_* or set "
            f"adata.obsm[{key!r}] to an (n_obs, 2) array of coordinates"
        )
    return check_coordinates(adata.obsm[key], n_obs=adata.n_obs, where=f"adata.obsm[{key!r}]")


def get_matrix(adata: AnnData, layer: str | None = None) -> sp.csr_matrix | np.ndarray:
    """Return ``adata.X`` or ``adata.layers[layer]`` (CSR if sparse), without copying."""
    if layer is None:
        matrix = adata.X
        where = "adata.X"
    else:
        if layer not in adata.layers:
            raise SpatiomeInputError(
                f"adata.layers[{layer!r}] is missing; available layers: "
                f"{sorted(adata.layers.keys())}"
            )
        matrix = adata.layers[layer]
        where = f"adata.layers[{layer!r}]"
    if matrix is None:
        raise SpatiomeInputError(f"{where} is empty (None): set a matrix or pass layer=")
    if sp.issparse(matrix):
        return sp.csr_matrix(matrix) if matrix.format != "csr" else matrix
    return np.asarray(matrix)


def _values(matrix: sp.spmatrix | np.ndarray) -> np.ndarray:
    return matrix.data if sp.issparse(matrix) else np.asarray(matrix).ravel()


def check_counts(matrix: sp.spmatrix | np.ndarray, *, where: str = "counts") -> None:
    """Raise unless ``matrix`` holds finite, non-negative integer counts."""
    values = _values(matrix)
    if values.size == 0:
        return
    # Integer storage is finite and integral by construction: only the sign can be wrong.
    is_integer = np.issubdtype(values.dtype, np.integer)
    if not is_integer and not np.isfinite(values).all():
        raise SpatiomeInputError(f"{where} contains NaN or infinite values: fix the input")
    if values.min() < 0:
        raise SpatiomeInputError(
            f"{where} contains negative values (min {values.min():g}); raw counts are expected"
        )
    if not is_integer and not np.all(np.equal(np.mod(values, 1), 0)):
        raise SpatiomeInputError(
            f"{where} contains non-integer values; raw counts are expected "
            "(pass layer='counts' or the unnormalized matrix)"
        )


def check_finite(matrix: sp.spmatrix | np.ndarray, *, where: str = "matrix") -> None:
    """Raise if ``matrix`` holds NaN or infinite values."""
    values = _values(matrix)
    if values.size and not np.isfinite(values).all():
        raise SpatiomeInputError(f"{where} contains NaN or infinite values: fix the input")


def check_unique(names, *, what: str, where: str) -> None:
    """Raise if ``names`` has duplicates, naming a few of them."""
    import pandas as pd

    index = pd.Index(names)
    if not index.is_unique:
        dup = index[index.duplicated()].unique()[:5].tolist()
        raise SpatiomeInputError(
            f"{where} has {int(index.duplicated().sum())} duplicated {what} (e.g. {dup}): "
            f"make {what} unique before reading"
        )


def resolve_genes(adata: AnnData, genes) -> np.ndarray:
    """Return integer positions of ``genes`` (None = all), with a clear error for unknown ones."""
    if genes is None:
        return np.arange(adata.n_vars)
    genes = [genes] if isinstance(genes, str) else list(genes)
    index = adata.var_names.get_indexer(genes)
    if (index < 0).any():
        missing = [g for g, i in zip(genes, index, strict=True) if i < 0][:5]
        raise SpatiomeInputError(f"genes not in adata.var_names: {missing}")
    return index
