"""AnnData ``.h5ad`` files: reading with clear errors, writing atomically."""

from __future__ import annotations

import os
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._core.files import atomic_path
from .._core.validate import SpatiomeInputError, check_adata
from ._tenx import source

#: ``compression="auto"`` writes gzip up to this many bytes of arrays (expression, layers,
#: embeddings, graphs) and no compression beyond: gzip costs about 13 s a gigabyte, so
#: large results are written at disk speed and small ones stay small.
GZIP_MAX_BYTES = 256 * 2**20
_COMPRESSIONS = ("auto", "gzip", "lzf", None)


def read_h5ad(path: str | os.PathLike[str]) -> AnnData:
    """Read an ``.h5ad`` file as stored, recording where it came from.

    Parameters
    ----------
    path
        An AnnData HDF5 file (written by :func:`write_h5ad`, scanpy or squidpy).

    Returns
    -------
    AnnData
        The stored object; ``uns['spatiome']['source']`` names this file, and a source
        recorded by an earlier reader is kept under ``['source']['previous']``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np, scipy.sparse as sp
    >>> from spatiome.io._build import build_anndata
    >>> adata = build_anndata(sp.csr_matrix(np.eye(3, dtype=int)), obs_names=["a", "b", "c"],
    ...     var_names=["G1", "G2", "G3"], coordinates=np.eye(3)[:, :2])
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "tissue.h5ad"
    >>> _ = write_h5ad(adata, target)
    >>> back = read_h5ad(target)
    >>> back.shape, back.uns["spatiome"]["source"]["reader"]
    ((3, 3), 'read_h5ad')
    """
    file = Path(path)
    if not file.is_file():
        raise SpatiomeInputError(f"{file}: file not found; pass the path of an .h5ad file")
    try:
        adata = anndata.read_h5ad(file)
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise SpatiomeInputError(
            f"{file}: file is truncated or not an AnnData .h5ad file ({err})"
        ) from None
    record = source("read_h5ad", [file], "h5ad")
    spatiome_uns = dict(adata.uns.get("spatiome", {}))
    if "source" in spatiome_uns:
        record["previous"] = spatiome_uns["source"]
    spatiome_uns["source"] = record
    adata.uns["spatiome"] = spatiome_uns
    return adata


def write_h5ad(
    adata: AnnData, path: str | os.PathLike[str], *, compression: str | None = "auto"
) -> Path:
    """Write ``adata`` to ``path`` atomically: a reader never sees a partial file.

    The object is written to a temporary file in the target folder and moved into place
    with one ``os.replace``; on failure the temporary file is removed and an existing
    file at ``path`` is left untouched.

    Parameters
    ----------
    adata
        The AnnData to write.
    path
        Target file (conventionally ``.h5ad``); parent folders are created.
    compression
        HDF5 compression for the arrays (``"gzip"``, ``"lzf"`` or None); ``"auto"``:
        gzip when the arrays hold at most :data:`GZIP_MAX_BYTES`, otherwise none (see
        :func:`auto_compression`).

    Returns
    -------
    pathlib.Path
        The path written.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import anndata, numpy as np
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "out" / "x.h5ad"
    >>> write_h5ad(anndata.AnnData(np.ones((2, 2))), target).name
    'x.h5ad'
    >>> sorted(p.name for p in target.parent.iterdir())
    ['x.h5ad']
    """
    check_adata(adata)
    if compression not in _COMPRESSIONS:
        raise SpatiomeInputError(f"compression must be one of {_COMPRESSIONS}, got {compression!r}")
    if compression == "auto":
        compression = auto_compression(adata)
    target = Path(path)
    with atomic_path(target) as tmp:
        adata.write_h5ad(tmp, compression=compression)
    return target


def auto_compression(adata: AnnData) -> str | None:
    """``"gzip"`` when the arrays of ``adata`` hold at most :data:`GZIP_MAX_BYTES`, else None.

    Examples
    --------
    >>> import anndata, numpy as np
    >>> auto_compression(anndata.AnnData(np.ones((100, 10))))
    'gzip'
    """
    return "gzip" if array_bytes(adata) <= GZIP_MAX_BYTES else None


def array_bytes(adata: AnnData) -> int:
    """Bytes held by the arrays of ``adata``: X, layers, obsm, obsp, varm and varp.

    Examples
    --------
    >>> import anndata, numpy as np, scipy.sparse as sp
    >>> array_bytes(anndata.AnnData(sp.csr_matrix(np.eye(4, dtype=np.float32))))
    52
    """
    arrays = [adata.X]
    for mapping in (adata.layers, adata.obsm, adata.obsp, adata.varm, adata.varp):
        arrays.extend(mapping.values())
    return sum(_nbytes(array) for array in arrays if array is not None)


def _nbytes(array: object) -> int:
    if sp.issparse(array):
        return int(array.data.nbytes + array.indices.nbytes + array.indptr.nbytes)
    if isinstance(array, pd.DataFrame):
        return int(array.memory_usage(index=False, deep=False).sum())
    shape, dtype = getattr(array, "shape", None), getattr(array, "dtype", None)
    if shape is None or dtype is None:
        return 0
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
