"""How well an embedding mixes samples and keeps biological labels apart."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from sklearn.metrics import silhouette_score
from sklearn.neighbors import NearestNeighbors

from .._core.validate import SpatiomeInputError, check_adata


def mixing_metrics(
    adata: AnnData,
    use_rep: str,
    *,
    sample_key: str = "sample",
    label_key: str | None = None,
    n_neighbors: int = 30,
    max_spots: int = 20000,
    random_state: int = 0,
) -> pd.Series:
    """Batch mixing and label conservation of an embedding, each scaled to [0, 1].

    - ``batch_mixing``: LISI-style: the inverse Simpson index of the samples among each
      spot's ``n_neighbors`` nearest neighbours, from 1 (one sample) to the number of
      samples, rescaled to [0, 1]: 0 when every neighbourhood holds one sample, 1 when
      every neighbourhood holds all samples in equal shares.
    - ``batch_silhouette``: 1 - |silhouette| of the sample labels (1: samples overlap).
    - ``label_purity`` (with ``label_key``): 1 - rescaled inverse Simpson index of the
      labels among the neighbours (1: neighbourhoods hold one label).
    - ``label_silhouette`` (with ``label_key``): silhouette of the labels, rescaled from
      [-1, 1] to [0, 1].

    Good correction raises batch mixing while keeping label purity and silhouette.
    Silhouettes use at most ``max_spots`` random spots.

    Examples
    --------
    >>> import numpy as np, anndata
    >>> rng = np.random.default_rng(0)
    >>> adata = anndata.AnnData(np.zeros((200, 1)), obsm={"X": rng.normal(size=(200, 3))})
    >>> adata.obs["sample"] = ["a", "b"] * 100
    >>> round(float(mixing_metrics(adata, "X")["batch_mixing"]), 1)
    0.9
    """
    check_adata(adata)
    if use_rep not in adata.obsm:
        raise SpatiomeInputError(f"adata.obsm[{use_rep!r}] is missing")
    for key in (sample_key, label_key):
        if key is not None and key not in adata.obs:
            raise SpatiomeInputError(f"adata.obs[{key!r}] is missing")
    x = np.asarray(adata.obsm[use_rep], dtype=np.float64)
    k = min(n_neighbors, adata.n_obs - 1)
    neighbours = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)[1][:, 1:]
    samples = pd.Categorical(adata.obs[sample_key].astype(str))
    rng = np.random.default_rng(random_state)
    subset = rng.choice(adata.n_obs, size=min(max_spots, adata.n_obs), replace=False)
    out = {
        "batch_mixing": _rescaled_simpson(np.asarray(samples.codes), neighbours),
        "batch_silhouette": 1.0 - abs(_silhouette(x, samples.codes, subset)),
    }
    if label_key is not None:
        labels = pd.Categorical(adata.obs[label_key].astype(str))
        out["label_purity"] = 1.0 - _rescaled_simpson(np.asarray(labels.codes), neighbours)
        out["label_silhouette"] = (_silhouette(x, labels.codes, subset) + 1.0) / 2.0
    return pd.Series(out, name=use_rep)


def _rescaled_simpson(codes: np.ndarray, neighbours: np.ndarray) -> float:
    """Mean inverse Simpson index over neighbourhoods, mapped from [1, n groups] to [0, 1]."""
    n_groups = int(codes.max()) + 1
    if n_groups < 2:
        return 0.0
    counts = np.zeros((neighbours.shape[0], n_groups))
    np.add.at(
        counts,
        (np.repeat(np.arange(neighbours.shape[0]), neighbours.shape[1]), codes[neighbours].ravel()),
        1.0,
    )
    shares = counts / neighbours.shape[1]
    inverse_simpson = 1.0 / np.sum(shares**2, axis=1)
    return float((np.mean(inverse_simpson) - 1.0) / (n_groups - 1))


def _silhouette(x: np.ndarray, codes, subset: np.ndarray) -> float:
    codes = np.asarray(codes)[subset]
    if np.unique(codes).size < 2:
        return 0.0
    return float(silhouette_score(x[subset], codes))
