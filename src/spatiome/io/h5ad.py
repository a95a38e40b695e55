"""AnnData ``.h5ad`` files: reading with clear errors, writing atomically."""

from __future__ import annotations

import os
from pathlib import Path

import anndata
from anndata import AnnData

from .._core.files import atomic_path
from .._core.validate import SpatiomeInputError, check_adata
from ._tenx import source


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
    adata: AnnData, path: str | os.PathLike[str], *, compression: str | None = "gzip"
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
        HDF5 compression for the arrays (``"gzip"``, ``"lzf"`` or None).

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
    target = Path(path)
    with atomic_path(target) as tmp:
        adata.write_h5ad(tmp, compression=compression)
    return target
