"""How well an embedding mixes samples and keeps biological labels apart."""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd
from anndata import AnnData
from sklearn.metrics import silhouette_score

from .._core.validate import SpatiomeInputError, check_adata


def mixing_metrics(
    adata: AnnData,
    use_rep: str,
    *,
    sample_key: str = "sample",
    label_key: str | None = None,
    perplexity: float = 30.0,
    max_spots: int = 10000,
    random_state: int = 0,
) -> pd.Series:
    """Batch mixing and label conservation of an embedding: LISI and silhouettes.

    The local inverse Simpson indices are harmonypy's ``compute_lisi`` (Korsunsky et al.
    2019): for each spot, the effective number of samples (iLISI) or labels (cLISI) among
    its ``3 * perplexity`` nearest neighbours in ``obsm[use_rep]``, weighted by a Gaussian
    kernel calibrated to the given perplexity. The summaries are the medians over spots,
    and the rescaled scores are scIB's (Luecken et al. 2022):

    - ``ilisi``: median iLISI, from 1 (each neighbourhood holds one sample) to the number
      of samples (every neighbourhood holds all samples in equal shares).
    - ``batch_mixing``: ``(ilisi - 1) / (n_samples - 1)``, from 0 to 1.
    - ``batch_silhouette``: 1 - |silhouette| of the sample labels (1: samples overlap).
    - ``clisi`` (with ``label_key``): median cLISI, 1 when neighbourhoods hold one label.
    - ``label_purity`` (with ``label_key``): ``(n_labels - clisi) / (n_labels - 1)``, 1
      when neighbourhoods hold one label.
    - ``label_silhouette`` (with ``label_key``): silhouette of the labels, rescaled from
      [-1, 1] to [0, 1].

    Good correction raises batch mixing while keeping label purity and silhouette.

    Parameters
    ----------
    adata
        Spots of several samples with the embedding in ``obsm[use_rep]``.
    use_rep
        Embedding to assess (``"X_pca"``, ``"X_harmony"``, ...).
    sample_key
        ``obs`` column naming each spot's sample.
    label_key
        ``obs`` column of biological labels (domains, cell types) whose separation should
        survive the correction; omitted, only the mixing is measured.
    perplexity
        Effective neighbourhood size of the LISI (30, harmonypy's and LISI's default).
    max_spots
        The LISI and silhouettes are computed on at most this many spots, drawn at random
        (harmonypy's neighbour search takes seconds per 10,000 spots); all spots when
        there are fewer.
    random_state
        Seed of the spot subsample.

    Returns
    -------
    pandas.Series
        The metrics above, named ``use_rep``.

    Raises
    ------
    SpatiomeInputError
        If the embedding or a column is missing, the embedding holds NaN, or an argument
        is out of range.

    References
    ----------
    Korsunsky et al. (2019). Fast, sensitive and accurate integration of single-cell data
    with Harmony. Nature Methods 16, 1289-1296.

    Luecken et al. (2022). Benchmarking atlas-level data integration in single-cell
    genomics. Nature Methods 19, 41-50.

    Examples
    --------
    >>> import numpy as np, anndata
    >>> rng = np.random.default_rng(0)
    >>> adata = anndata.AnnData(np.zeros((200, 1)), obsm={"X": rng.normal(size=(200, 3))})
    >>> adata.obs["sample"] = ["a", "b"] * 100
    >>> metrics = mixing_metrics(adata, "X")
    >>> round(float(metrics["ilisi"]), 1), round(float(metrics["batch_mixing"]), 1)
    (1.9, 0.9)
    """
    x, groups = _checked_inputs(adata, use_rep, sample_key, label_key, perplexity, max_spots)
    rng = np.random.default_rng(random_state)
    if adata.n_obs > max_spots:
        subset = np.sort(rng.choice(adata.n_obs, size=max_spots, replace=False))
    else:
        subset = np.arange(adata.n_obs)
    lisi = _median_lisi(x[subset], {k: v[subset] for k, v in groups.items()}, perplexity)
    samples = groups["sample"]
    n_samples = samples.max() + 1
    out = {
        "ilisi": lisi["sample"],
        "batch_mixing": (lisi["sample"] - 1.0) / (n_samples - 1) if n_samples > 1 else 0.0,
        "batch_silhouette": 1.0 - abs(_silhouette(x[subset], samples[subset])),
    }
    if "label" in groups:
        labels = groups["label"]
        n_labels = labels.max() + 1
        out["clisi"] = lisi["label"]
        out["label_purity"] = (n_labels - lisi["label"]) / (n_labels - 1) if n_labels > 1 else 1.0
        out["label_silhouette"] = (_silhouette(x[subset], labels[subset]) + 1.0) / 2.0
    return pd.Series({k: float(v) for k, v in out.items()}, name=use_rep)


def _checked_inputs(
    adata: AnnData,
    use_rep: str,
    sample_key: str,
    label_key: str | None,
    perplexity: float,
    max_spots: int,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The embedding and the integer codes of the samples (and labels)."""
    check_adata(adata)
    if use_rep not in adata.obsm:
        raise SpatiomeInputError(
            f"adata.obsm[{use_rep!r}] is missing: pass the key of an embedding "
            f"(has {sorted(adata.obsm)})"
        )
    for key in (sample_key, label_key):
        if key is not None and key not in adata.obs:
            raise SpatiomeInputError(f"adata.obs[{key!r}] is missing: pass an obs column")
    if (
        not isinstance(perplexity, numbers.Real)
        or not np.isfinite(perplexity)
        or not perplexity > 0
    ):
        raise SpatiomeInputError(f"perplexity must be a positive number, got {perplexity!r}")
    if not isinstance(max_spots, numbers.Integral) or isinstance(max_spots, bool) or max_spots < 2:
        raise SpatiomeInputError(f"max_spots must be an integer >= 2, got {max_spots!r}")
    x = np.asarray(adata.obsm[use_rep], dtype=np.float64)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise SpatiomeInputError(f"adata.obsm[{use_rep!r}] must be a finite (n_obs, n_dims) array")
    groups = {"sample": _codes(adata.obs[sample_key])}
    if label_key is not None:
        groups["label"] = _codes(adata.obs[label_key])
    return x, groups


def _codes(column: pd.Series) -> np.ndarray:
    return np.asarray(pd.Categorical(column.astype(str)).codes, dtype=np.int64)


def _median_lisi(
    x: np.ndarray, groups: dict[str, np.ndarray], perplexity: float
) -> dict[str, float]:
    """Median over spots of harmonypy's LISI of each grouping."""
    from harmonypy import compute_lisi

    names = list(groups)
    # Codes as strings: harmonypy factorizes the column itself.
    metadata = pd.DataFrame({name: groups[name].astype(str) for name in names})
    per_spot = compute_lisi(x, metadata, names, perplexity=float(perplexity))
    return {name: float(np.median(per_spot[:, i])) for i, name in enumerate(names)}


def _silhouette(x: np.ndarray, codes: np.ndarray) -> float:
    if np.unique(codes).size < 2:
        return 0.0
    return float(silhouette_score(x, codes))
