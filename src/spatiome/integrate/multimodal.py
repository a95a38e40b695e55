"""Integration of RNA with a second modality on the same spots (SpatialGlue-style).

Needs ``spatiome[deep]``: torch is imported only when :func:`multimodal` runs, so
``import spatiome`` stays free of it.
"""

from __future__ import annotations

import logging
import numbers
import time

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._core.progress import Progress
from .._core.torch_session import check_training, import_torch, resolve_device
from .._core.validate import (
    SpatiomeInputError,
    check_adata,
    check_counts,
    check_finite,
    check_unique,
    get_matrix,
    get_spatial,
    resolve_counts_layer,
)
from ..graph import build_graph

logger = logging.getLogger("spatiome")

MODALITIES = ("protein", "atac", "image")
COVARIANCE_TYPES = ("tied", "full", "diag", "spherical")
# SpatialGlue's presets: epochs and loss weights (RNA reconstruction, other reconstruction,
# RNA correspondence, other correspondence). "protein" is the 10x Visium CytAssist preset,
# "atac" the spatial epigenome-transcriptome one; images follow the protein preset.
_PRESETS = {
    "protein": {"n_epochs": 200, "loss_weights": (1.0, 5.0, 1.0, 10.0)},
    "atac": {"n_epochs": 1600, "loss_weights": (1.0, 5.0, 1.0, 1.0)},
    "image": {"n_epochs": 200, "loss_weights": (1.0, 5.0, 1.0, 10.0)},
}
# Above this many spots the model is trained by mini-batches (spatial parts of the tissue).
MINIBATCH_MIN_SPOTS = 10_000
# Mini-batch training with the default epochs takes as many Adam steps as the full-batch
# preset, in at least this many epochs (passes over the tissue).
_MIN_MINIBATCH_EPOCHS = 10
# Each mini-batch joins this many compact parts from across the tissue.
_PARTS_PER_BATCH = 8
# Components of the RNA PCA (and of the ATAC LSI after dropping its first one) by default.
_DEFAULT_COMPS = 50
_TARGET_SUM = 1e4


def multimodal(
    adata_rna: AnnData,
    adata_other: AnnData,
    *,
    modality: str = "protein",
    n_domains: int | None = None,
    rna_layer: str | None = None,
    other_layer: str | None = None,
    n_top_genes: int | None = 3000,
    min_cells: int = 10,
    n_comps: int | None = None,
    spatial_key: str = "spatial",
    n_spatial_neighbors: int = 3,
    n_feature_neighbors: int = 20,
    latent_dim: int = 64,
    n_epochs: int | None = None,
    learning_rate: float = 1e-4,
    weight_decay: float = 0.0,
    loss_weights: tuple[float, float, float, float] | None = None,
    covariance_type: str = "tied",
    n_pcs: int | None = 20,
    n_init: int = 1,
    random_state: int = 2022,
    n_jobs: int | None = None,
    minibatch: bool | None = None,
    batch_size: int = 4096,
    device: str = "cpu",
    key_added: str = "X_multimodal",
    cluster_key: str = "multimodal",
    copy: bool = False,
) -> AnnData | None:
    """Integrate RNA with protein, chromatin accessibility or image features of the same spots.

    A SpatialGlue-style dual-attention graph autoencoder:

    1. each modality is preprocessed as SpatialGlue does. RNA: genes detected in fewer than
       ``min_cells`` spots are dropped, the ``n_top_genes`` highly variable genes are
       chosen by scanpy's ``seurat_v3`` rule on the counts (as :func:`spatiome.pp.reduce`),
       counts are normalized to 10,000 per spot, log1p transformed, scaled to unit
       variance and reduced by PCA (the matrix stays sparse; centring is implicit).
       Protein: per-spot centred log ratio
       (``log1p(x / exp(mean_j log1p(x_j)))``), scaling, PCA. ATAC: TF-IDF, L1 row
       normalization, ``log1p(1e4 x)``, randomized SVD, the first component dropped and
       each spot's vector standardized (LSI). Image features (e.g. from
       :func:`spatiome.integrate.image.image_features`): standardization and PCA;
    2. graphs: a spatial kNN graph (``n_spatial_neighbors``) on the coordinates and, per
       modality, a kNN graph (``n_feature_neighbors``, correlation distance) on its
       features; each is symmetrized, binarized and normalized as
       ``D^-1/2 (A + I) D^-1/2``. All graphs are sparse: no spots x spots dense matrix is
       formed;
    3. per modality, one linear graph-convolution encoder (width ``latent_dim``) applied
       over both graphs, an attention layer that weighs the spatial against the feature
       view of each spot, then a cross-modality attention layer that weighs the two
       modalities per spot into the integrated embedding. Decoders (graph convolutions on
       the spatial graph) reconstruct each modality from the integrated embedding; the
       loss adds the two reconstruction errors and the two correspondence errors (each
       modality's embedding sent through the other modality's decoder and encoder must
       come back unchanged), weighted by ``loss_weights``. Adam, full batch or, above
       ``MINIBATCH_MIN_SPOTS`` (10,000) spots or with ``minibatch=True``, by mini-batches:
       compact spatial parts of about ``batch_size / 8`` spots, 8 drawn from across the
       tissue per batch, each step computed on the rows of the spatial and feature
       graphs that the batch's loss needs (two spatial hops, then one hop along any
       graph), so the loss of the batch's spots is exactly their full-graph loss. Each
       epoch takes one step per batch in a seeded order; by default as many epochs as
       give the preset's number of steps, at least 10;
    4. optionally (``n_domains``), a Gaussian mixture on the first ``n_pcs`` principal
       components of the integrated embedding, the Python analogue of SpatialGlue's mclust
       ``EEE`` model (``covariance_type="tied"``); labels can differ from mclust's.

    Training runs on the CPU by default, deterministically: weights and the order of the
    batches are drawn from a torch ``Generator`` seeded with ``random_state`` (the global
    seed is not touched), there is no dropout, and deterministic algorithms are
    requested. The same seed and number of threads give the same embedding, weights and
    labels. ``device="cuda"`` (or ``"auto"`` with a CUDA GPU present) trains on the GPU
    from the same initial weights; GPU sums are not bit-reproducible. Every epoch, with its weighted
    loss, is reported as progress (``"spatiome"`` logger at INFO level).

    Parameters
    ----------
    adata_rna
        Spots x genes with raw counts and coordinates in ``adata_rna.obsm[spatial_key]``.
        Results are written here.
    adata_other
        The second modality on the same spots (same ``obs_names``, any order): protein
        (antibody-derived tag counts), ATAC (peak or gene-activity counts) or image
        features (any finite values). Not modified.
    modality
        ``"protein"``, ``"atac"`` or ``"image"``: the kind of ``adata_other``, which sets
        its preprocessing and the presets.
    n_domains
        Cluster the integrated embedding into this many domains; ``None`` (default) skips
        clustering.
    rna_layer, other_layer
        Matrices to use: ``adata.layers[...]``. Default: ``layers["counts"]`` when present,
        else ``X`` (for the RNA, only when ``X`` holds counts).
    n_top_genes
        Highly variable genes of the RNA; ``None`` keeps all genes.
    min_cells
        Drop genes detected in fewer spots (SpatialGlue uses 10).
    n_comps
        Principal components per modality. Default as SpatialGlue: the number of proteins
        minus one for ``"protein"``; 50 for ``"atac"`` (LSI components after the first);
        the number of image features minus one, at most 50, for ``"image"``. RNA gets the
        same number, so both modalities have equal width (always capped by the data).
    spatial_key
        Coordinates in ``adata_rna.obsm``.
    n_spatial_neighbors
        Neighbours per spot in the spatial graph (SpatialGlue uses 3 for Visium, 6 for
        Stereo-CITE-seq and spatial epigenome-transcriptome data).
    n_feature_neighbors
        Neighbours per spot in each feature graph.
    latent_dim
        Width of the embeddings.
    n_epochs
        Training epochs (passes over the spots). Default 200 for protein and image, 1600
        for ATAC; by mini-batches, as many epochs as give that number of steps, at least
        10.
    learning_rate, weight_decay
        Adam's step size and L2 penalty (SpatialGlue: ``1e-4`` and 0).
    loss_weights
        Weights of RNA reconstruction, other reconstruction, RNA correspondence and other
        correspondence. Default ``(1, 5, 1, 10)`` for protein and image, ``(1, 5, 1, 1)``
        for ATAC.
    covariance_type
        Covariance of the mixture components.
    n_pcs
        Cluster the first ``n_pcs`` principal components of the embedding (all of it when
        ``n_pcs >= latent_dim``); ``None`` clusters the embedding itself.
    n_init
        Initializations of the Gaussian mixture; the best is kept.
    random_state
        Seed of the PCA, the weights and the mixture (SpatialGlue's seed is 2022).
    n_jobs
        Threads used by torch while training (default: torch's setting); restored after.
    minibatch
        Train by mini-batches (``True``), full batch (``False``), or (``None``, default)
        by mini-batches above ``MINIBATCH_MIN_SPOTS`` = 10,000 spots.
    batch_size
        Spots per mini-batch (before the rows the graphs add), default 4,096.
    device
        ``"cpu"`` (default), ``"cuda"`` (an error without a CUDA GPU) or ``"auto"`` (CUDA
        when available, else the CPU).
    key_added
        Key of the integrated embedding in ``adata_rna.obsm`` and of the parameters in
        ``adata_rna.uns["spatiome"]``.
    cluster_key
        Column of ``adata_rna.obs`` receiving the domains ``"0"``, ``"1"``, ... (``"0"``
        the largest) when ``n_domains`` is given.
    copy
        Return a modified copy of ``adata_rna`` instead of writing into it.

    Returns
    -------
    AnnData or None
        The copy when ``copy=True``; otherwise None. Written into ``adata_rna``:
        ``obsm[key_added]`` (float32, spots x ``latent_dim``, rows of unit length);
        ``obsm[f"{key_added}_weights"]``, a DataFrame with columns ``"rna"`` and
        ``modality`` (per-spot modality weights, rows sum to 1);
        ``obsm[f"{key_added}_view_weights"]``, a DataFrame of the within-modality weights
        (``"rna_spatial"``, ``"rna_feature"``, ``f"{modality}_spatial"``,
        ``f"{modality}_feature"``); ``obsm[f"{key_added}_rna"]`` and
        ``obsm[f"{key_added}_{modality}"]``, the per-modality embeddings; with
        ``n_domains``, ``obs[cluster_key]``; ``uns["spatiome"][key_added]`` with the
        parameters, the genes used, the graph sizes, the training mode (``"minibatch"``,
        ``"batch_size"``, ``"n_batches"``), the ``"device"``, the training time and the
        loss terms of every epoch (``"loss"``, epochs x 4; by mini-batches, averaged over
        the batches by their spots).

    Raises
    ------
    ImportError
        If PyTorch is not installed (``pip install "spatiome[deep]"``).
    SpatiomeInputError
        If the spots of the two modalities differ, the RNA is not raw counts, protein or
        ATAC values are negative, values or coordinates are not finite, or an argument is
        out of range, or ``device="cuda"`` and torch sees no CUDA GPU.

    References
    ----------
    Long, Ang, Sethi et al. (2024). Deciphering spatial domains from spatial multi-omics
    with SpatialGlue. Nature Methods 21, 1658-1667.

    Examples
    --------
    >>> import pytest; _ = pytest.importorskip("torch")  # needs spatiome[deep]
    >>> import anndata, numpy as np
    >>> from spatiome.datasets import simulate_tissue
    >>> from spatiome.integrate.multimodal import multimodal
    >>> rna = simulate_tissue(n_spots=300, n_genes=60, n_domains=3, random_state=0)
    >>> codes = rna.obs["domain"].cat.codes.to_numpy()
    >>> rng = np.random.default_rng(0)
    >>> adt = rng.poisson(20.0 * np.exp(np.eye(3)[codes] @ rng.normal(0, 1, (3, 8))))
    >>> protein = anndata.AnnData(adt.astype(np.float32), obs=rna.obs[[]])
    >>> multimodal(rna, protein, n_domains=3, n_epochs=20, learning_rate=1e-3, n_jobs=1)
    >>> rna.obsm["X_multimodal"].shape, rna.obs["multimodal"].cat.categories.tolist()
    ((300, 64), ['0', '1', '2'])
    >>> weights = rna.obsm["X_multimodal_weights"]
    >>> weights.columns.tolist(), bool(np.allclose(weights.sum(axis=1), 1.0))
    (['rna', 'protein'], True)
    """
    check_adata(adata_rna, name="adata_rna")
    check_adata(adata_other, name="adata_other")
    if modality not in MODALITIES:
        raise SpatiomeInputError(f"modality must be one of {MODALITIES}, got {modality!r}")
    preset = _PRESETS[modality]
    check_training(minibatch, batch_size, device)
    minibatch = adata_rna.n_obs > MINIBATCH_MIN_SPOTS if minibatch is None else bool(minibatch)
    default_epochs = n_epochs is None
    n_epochs = preset["n_epochs"] if default_epochs else n_epochs
    loss_weights = preset["loss_weights"] if loss_weights is None else loss_weights
    loss_weights = _check_parameters(
        adata_rna, n_domains, n_top_genes, min_cells, n_comps, n_spatial_neighbors,
        n_feature_neighbors, latent_dim, n_epochs, learning_rate, weight_decay, loss_weights,
        covariance_type, n_pcs, n_init, random_state, n_jobs, key_added, cluster_key,
    )  # fmt: skip
    order = _aligned_spots(adata_rna, adata_other)
    coordinates = get_spatial(adata_rna, spatial_key)
    rna_layer = resolve_counts_layer(adata_rna, rna_layer, argument="rna_layer")
    other_layer = (
        "counts" if other_layer is None and "counts" in adata_other.layers else other_layer
    )
    counts = get_matrix(adata_rna, rna_layer)
    check_counts(counts, where=_where("adata_rna", rna_layer))
    other = get_matrix(adata_other, other_layer)
    other = other[order] if order is not None else other
    _check_other(other, modality, _where("adata_other", other_layer))
    torch = import_torch("spatiome.integrate.multimodal")
    torch_device = resolve_device(device, "spatiome.integrate.multimodal")
    random_state = int(random_state)

    width = _default_comps(modality, other.shape[1]) if n_comps is None else int(n_comps)
    rna_features, genes = _rna_features(
        counts, adata_rna.var_names, n_top_genes, min_cells, width, random_state
    )
    other_features = _OTHER_FEATURES[modality](other, width, random_state)
    spatial_graph, spatial_info = _spatial_graph(coordinates, n_spatial_neighbors)
    feature_graphs = [
        _feature_graph(features, n_feature_neighbors) for features in (rna_features, other_features)
    ]

    from .._core.subgraphs import mixed_batches
    from ._multimodal_torch import train_dual_attention

    parts = None
    if minibatch:
        parts = mixed_batches(
            coordinates, spatial_graph, int(batch_size), _PARTS_PER_BATCH, random_state
        )
        if default_epochs:
            n_epochs = max(-(-int(n_epochs) // len(parts)), _MIN_MINIBATCH_EPOCHS)

    start = time.perf_counter()
    with Progress("integrate.multimodal", int(n_epochs), "epoch") as progress:
        trained = train_dual_attention(
            [rna_features, other_features],
            spatial_graph,
            feature_graphs,
            latent_dim=int(latent_dim),
            n_epochs=int(n_epochs),
            learning_rate=float(learning_rate),
            weight_decay=float(weight_decay),
            loss_weights=loss_weights,
            seed=random_state,
            n_threads=n_jobs,
            progress=progress,
            parts=parts,
            device=torch_device,
        )
    seconds = time.perf_counter() - start
    labels = None
    if n_domains is not None:
        labels = _cluster(trained.embedding, int(n_domains), covariance_type, n_pcs, n_init,
                          random_state)  # fmt: skip

    adata = adata_rna.copy() if copy else adata_rna
    names = ("rna", modality)
    adata.obsm[key_added] = trained.embedding
    adata.obsm[f"{key_added}_weights"] = _weights_frame(
        trained.modality_weights, list(names), adata.obs_names
    )
    adata.obsm[f"{key_added}_view_weights"] = pd.concat(
        [
            _weights_frame(alpha, [f"{name}_spatial", f"{name}_feature"], adata.obs_names)
            for name, alpha in zip(names, trained.view_weights, strict=True)
        ],
        axis=1,
    )
    for name, embedding in zip(names, trained.modality_embeddings, strict=True):
        adata.obsm[f"{key_added}_{name}"] = embedding
    if labels is not None:
        from ..domains.cluster import _labels_by_size

        adata.obs[cluster_key] = _labels_by_size(labels)
    adata.uns.setdefault("spatiome", {})
    adata.uns["spatiome"][key_added] = {
        "method": "multimodal",
        "model": "dual-attention graph autoencoder (SpatialGlue)",
        "modality": modality,
        "n_domains": -1 if n_domains is None else int(n_domains),
        "cluster_key": cluster_key if n_domains is not None else "",
        "rna_layer": "X" if rna_layer is None else rna_layer,
        "other_layer": "X" if other_layer is None else other_layer,
        "genes": np.asarray(genes, dtype=str),
        "other_features": np.asarray(adata_other.var_names, dtype=str),
        "n_comps": [int(rna_features.shape[1]), int(other_features.shape[1])],
        "min_cells": int(min_cells),
        "spatial_graph": spatial_info,
        "n_feature_neighbors": int(n_feature_neighbors),
        "feature_graph_edges": [int(g.nnz - g.shape[0]) for g in feature_graphs],
        "latent_dim": int(latent_dim),
        "n_epochs": int(n_epochs),
        "learning_rate": float(learning_rate),
        "weight_decay": float(weight_decay),
        "loss_weights": list(loss_weights),
        "loss_terms": [
            "rna_reconstruction",
            f"{modality}_reconstruction",
            "rna_correspondence",
            f"{modality}_correspondence",
        ],  # fmt: skip
        "loss": trained.losses,
        "final_loss": trained.final_losses,
        "covariance_type": covariance_type,
        "n_pcs": -1 if n_pcs is None else int(n_pcs),
        "n_init": int(n_init),
        "random_state": random_state,
        "minibatch": bool(minibatch),
        "batch_size": int(batch_size) if minibatch else -1,
        "n_batches": 1 if parts is None else len(parts),
        "device": str(torch_device),
        "torch": str(torch.__version__),
        "train_seconds": float(seconds),
    }
    logger.info(
        "multimodal (rna + %s): %d epochs on %d spots in %.1f s, mean weights %s",
        modality,
        n_epochs,
        adata.n_obs,
        seconds,
        np.round(trained.modality_weights.mean(axis=0), 3).tolist(),
    )
    return adata if copy else None


def _where(name: str, layer: str | None) -> str:
    return f"{name}.X" if layer is None else f"{name}.layers[{layer!r}]"


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_parameters(
    adata, n_domains, n_top_genes, min_cells, n_comps, n_spatial_neighbors,
    n_feature_neighbors, latent_dim, n_epochs, learning_rate, weight_decay, loss_weights,
    covariance_type, n_pcs, n_init, random_state, n_jobs, key_added, cluster_key,
) -> tuple[float, float, float, float]:  # fmt: skip
    n_obs = adata.n_obs
    if n_domains is not None and (not _is_int(n_domains) or not 1 <= n_domains <= n_obs):
        raise SpatiomeInputError(
            f"n_domains must be None or an integer between 1 and the number of spots "
            f"({n_obs}), got {n_domains!r}"
        )
    if n_top_genes is not None and (not _is_int(n_top_genes) or n_top_genes < 2):
        raise SpatiomeInputError(
            f"n_top_genes must be an integer >= 2 or None, got {n_top_genes!r}"
        )
    if not _is_int(min_cells) or min_cells < 0:
        raise SpatiomeInputError(f"min_cells must be a non-negative integer, got {min_cells!r}")
    if n_comps is not None and (not _is_int(n_comps) or n_comps < 1):
        raise SpatiomeInputError(f"n_comps must be a positive integer or None, got {n_comps!r}")
    for name, value in (
        ("n_spatial_neighbors", n_spatial_neighbors),
        ("n_feature_neighbors", n_feature_neighbors),
    ):
        if not _is_int(value) or not 1 <= value < n_obs:
            raise SpatiomeInputError(
                f"{name} must be an integer between 1 and the number of spots minus one "
                f"({n_obs - 1}), got {value!r}"
            )
    if not _is_int(latent_dim) or latent_dim < 1:
        raise SpatiomeInputError(f"latent_dim must be a positive integer, got {latent_dim!r}")
    if not _is_int(n_epochs) or n_epochs < 0:
        raise SpatiomeInputError(f"n_epochs must be a non-negative integer, got {n_epochs!r}")
    for name, value in (("learning_rate", learning_rate), ("weight_decay", weight_decay)):
        if not isinstance(value, numbers.Real) or not np.isfinite(value) or value < 0:
            raise SpatiomeInputError(f"{name} must be a finite number >= 0, got {value!r}")
    try:
        weights = tuple(float(w) for w in loss_weights)
    except (TypeError, ValueError):
        weights = ()
    if len(weights) != 4 or not all(np.isfinite(w) and w >= 0 for w in weights):
        raise SpatiomeInputError(
            "loss_weights must be four finite numbers >= 0 (RNA reconstruction, other "
            f"reconstruction, RNA correspondence, other correspondence), got {loss_weights!r}"
        )
    if covariance_type not in COVARIANCE_TYPES:
        raise SpatiomeInputError(
            f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}"
        )
    if n_pcs is not None and (not _is_int(n_pcs) or n_pcs < 1):
        raise SpatiomeInputError(f"n_pcs must be None or a positive integer, got {n_pcs!r}")
    if not _is_int(n_init) or n_init < 1:
        raise SpatiomeInputError(f"n_init must be a positive integer, got {n_init!r}")
    if not _is_int(random_state):
        raise SpatiomeInputError(f"random_state must be an integer, got {random_state!r}")
    if n_jobs is not None and (not _is_int(n_jobs) or n_jobs < 1):
        raise SpatiomeInputError(f"n_jobs must be a positive integer or None, got {n_jobs!r}")
    for name, value in (("key_added", key_added), ("cluster_key", cluster_key)):
        if not isinstance(value, str) or not value:
            raise SpatiomeInputError(f"{name} must be a non-empty string, got {value!r}")
    return weights  # type: ignore[return-value]


def _aligned_spots(adata_rna: AnnData, adata_other: AnnData) -> np.ndarray | None:
    """Rows of ``adata_other`` in the order of ``adata_rna`` (None when already aligned)."""
    check_unique(adata_rna.obs_names, what="spot names", where="adata_rna.obs_names")
    check_unique(adata_other.obs_names, what="spot names", where="adata_other.obs_names")
    rna, other = adata_rna.obs_names, adata_other.obs_names
    if rna.equals(other):
        return None
    missing, extra = rna.difference(other), other.difference(rna)
    if missing.size or extra.size:
        raise SpatiomeInputError(
            f"the two modalities must cover the same spots: {missing.size} of adata_rna's "
            f"{rna.size} spots are not in adata_other (e.g. {missing[:3].tolist()}) and "
            f"{extra.size} of adata_other's are not in adata_rna (e.g. {extra[:3].tolist()}); "
            "keep the shared ones: common = adata_rna.obs_names.intersection("
            "adata_other.obs_names); pass adata_rna[common] and adata_other[common]"
        )
    return other.get_indexer(rna)


def _check_other(matrix, modality: str, where: str) -> None:
    if matrix.ndim != 2 or matrix.shape[1] < 2:
        raise SpatiomeInputError(
            f"{where} must have at least 2 features (columns), got shape {matrix.shape}"
        )
    if not np.issubdtype(matrix.dtype, np.number) or np.issubdtype(
        matrix.dtype, np.complexfloating
    ):
        raise SpatiomeInputError(f"{where} must be real numbers, got dtype {matrix.dtype}")
    check_finite(matrix, where=where)
    if modality == "image":
        return
    values = matrix.data if sp.issparse(matrix) else matrix
    if values.size and values.min() < 0:
        raise SpatiomeInputError(
            f"{where} contains negative values (min {values.min():g}); {modality} counts "
            "are expected (pass other_layer= with the raw counts)"
        )


def _default_comps(modality: str, n_features: int) -> int:
    if modality == "protein":
        return max(n_features - 1, 1)
    if modality == "image":
        return max(min(n_features - 1, _DEFAULT_COMPS), 1)
    return _DEFAULT_COMPS


def _cap(n_comps: int, shape: tuple[int, int]) -> int:
    return max(1, min(int(n_comps), shape[0] - 1, shape[1] - 1))


def _dense_pca(values: np.ndarray, n_comps: int, random_state: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    n_comps = _cap(n_comps, values.shape) if values.shape[1] > 1 else 1
    model = PCA(n_components=n_comps, svd_solver="full", random_state=random_state)
    return model.fit_transform(values).astype(np.float32)


def _standardize(values: np.ndarray) -> np.ndarray:
    """Centre and scale each column (ddof 1, as scanpy.pp.scale); constant columns give 0."""
    values = np.asarray(values, dtype=np.float64)
    std = values.std(axis=0, ddof=1) if values.shape[0] > 1 else np.zeros(values.shape[1])
    scale = np.divide(1.0, std, out=np.zeros_like(std), where=std > 0)
    return (values - values.mean(axis=0)) * scale


def _rna_features(
    counts,
    var_names: pd.Index,
    n_top_genes: int | None,
    min_cells: int,
    n_comps: int,
    random_state: int,
) -> tuple[np.ndarray, np.ndarray]:
    import scanpy as sc

    counts = sp.csr_matrix(counts, dtype=np.float32, copy=True)
    detected = np.bincount(counts.indices[counts.data > 0], minlength=counts.shape[1])
    kept = np.flatnonzero(detected >= min_cells)
    if kept.size < 2:
        raise SpatiomeInputError(
            f"only {kept.size} genes are detected in at least min_cells={min_cells} spots: "
            "lower min_cells or check adata_rna's counts"
        )
    counts = sp.csr_matrix(counts[:, kept])
    if n_top_genes is None or n_top_genes >= kept.size:
        selected = np.arange(kept.size)
    else:
        from ..pp._hvg import seurat_v3_genes

        selected = np.sort(seurat_v3_genes(counts, int(n_top_genes)))
    library = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    factor = np.divide(_TARGET_SUM, library, out=np.zeros_like(library), where=library > 0)
    counts.data *= np.repeat(factor, np.diff(counts.indptr)).astype(np.float32)
    np.log1p(counts.data, out=counts.data)
    matrix = sp.csr_matrix(counts[:, selected])
    mean = np.asarray(matrix.mean(axis=0), dtype=np.float64).ravel()
    square = np.asarray(matrix.multiply(matrix).mean(axis=0), dtype=np.float64).ravel()
    n_obs = matrix.shape[0]
    std = np.sqrt(np.maximum(square - mean**2, 0.0) * n_obs / max(n_obs - 1, 1))
    inv_std = np.divide(1.0, std, out=np.zeros_like(std), where=std > 0)
    # Scaling then PCA with implicit centring equals PCA of the scaled, centred matrix.
    scaled = sp.csr_matrix(matrix.multiply(inv_std[None, :].astype(np.float32)))
    n_comps = _cap(n_comps, scaled.shape)
    scores = sc.pp.pca(
        scaled, n_comps=n_comps, zero_center=True, svd_solver="arpack", random_state=random_state
    )
    genes = np.asarray(var_names[kept[selected]]).astype(str)
    return np.ascontiguousarray(scores, dtype=np.float32), genes


def _protein_features(counts, n_comps: int, random_state: int) -> np.ndarray:
    """Seurat's per-spot CLR, scaling and PCA (SpatialGlue's protein preprocessing)."""
    values = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    values = values.astype(np.float64)
    logs = np.log1p(values)
    geometric = np.exp(logs.sum(axis=1, keepdims=True) / values.shape[1])
    return _dense_pca(_standardize(np.log1p(values / geometric)), n_comps, random_state)


def _atac_features(counts, n_comps: int, random_state: int) -> np.ndarray:
    """Latent semantic indexing as SpatialGlue's ``lsi``: TF-IDF, log, SVD, drop the first."""
    from sklearn.utils.extmath import randomized_svd

    matrix = sp.csr_matrix(counts, dtype=np.float64)
    column = np.asarray(matrix.sum(axis=0)).ravel()
    matrix = sp.csr_matrix(matrix[:, np.flatnonzero(column > 0)])
    idf = matrix.shape[0] / column[column > 0]
    row = np.asarray(matrix.sum(axis=1)).ravel()
    tf = sp.csr_matrix(
        matrix.multiply(np.divide(1.0, row, out=np.zeros_like(row), where=row > 0)[:, None])
    )
    tfidf = sp.csr_matrix(tf.multiply(idf[None, :]))
    total = np.asarray(tfidf.sum(axis=1)).ravel()
    tfidf = sp.csr_matrix(
        tfidf.multiply(np.divide(1.0, total, out=np.zeros_like(total), where=total > 0)[:, None])
    )
    tfidf.data = np.log1p(tfidf.data * _TARGET_SUM)
    n_components = max(2, min(int(n_comps) + 1, min(tfidf.shape) - 1))
    left, _, _ = randomized_svd(tfidf, n_components, random_state=random_state)
    left = left - left.mean(axis=1, keepdims=True)
    std = left.std(axis=1, ddof=1, keepdims=True)
    left = np.divide(left, std, out=np.zeros_like(left), where=std > 0)
    return np.ascontiguousarray(left[:, 1:], dtype=np.float32)


def _image_features(values, n_comps: int, random_state: int) -> np.ndarray:
    values = values.toarray() if sp.issparse(values) else np.asarray(values)
    return _dense_pca(_standardize(values), n_comps, random_state)


_OTHER_FEATURES = {"protein": _protein_features, "atac": _atac_features, "image": _image_features}


def _normalized(adjacency: sp.csr_matrix) -> sp.csr_matrix:
    """``D^-1/2 (A + I) D^-1/2`` of the binarized symmetric ``A``, as float32 CSR."""
    n_obs = adjacency.shape[0]
    graph = sp.csr_matrix(adjacency, dtype=np.float64)
    graph = sp.csr_matrix(graph + graph.T)
    graph.data[:] = 1.0
    graph.setdiag(0.0)
    graph.eliminate_zeros()
    graph = sp.csr_matrix(graph + sp.eye(n_obs, format="csr"))
    degree = np.asarray(graph.sum(axis=1)).ravel()
    inv_sqrt = sp.diags(1.0 / np.sqrt(degree))
    graph = sp.csr_matrix(inv_sqrt @ graph @ inv_sqrt, dtype=np.float32)
    graph.sort_indices()
    return graph


def _spatial_graph(coordinates: np.ndarray, n_neighbors: int) -> tuple[sp.csr_matrix, dict]:
    shell = AnnData(
        sp.csr_matrix((coordinates.shape[0], 1), dtype=np.float32),
        obsm={"spatial": coordinates},
    )
    connectivities, _, info = build_graph(shell, method="knn", n_neighbors=int(n_neighbors))
    return _normalized(connectivities), {
        "method": "knn",
        "n_neighbors": int(n_neighbors),
        "n_edges": int(info["n_edges"]),
    }


def _feature_graph(features: np.ndarray, n_neighbors: int) -> sp.csr_matrix:
    """kNN graph by correlation distance, without self loops, normalized.

    Rows centred and scaled to unit length make the Euclidean distance a monotone function
    of the correlation distance, so exact Euclidean neighbours are correlation neighbours.
    """
    from sklearn.neighbors import NearestNeighbors

    rows = features.astype(np.float64) - features.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(rows, axis=1, keepdims=True)
    rows = np.divide(rows, norm, out=np.zeros_like(rows), where=norm > 0).astype(np.float32)
    n_obs = rows.shape[0]
    k = min(int(n_neighbors), n_obs - 1)
    search = NearestNeighbors(n_neighbors=k + 1, algorithm="brute", n_jobs=1).fit(rows)
    _, index = search.kneighbors(rows)
    # Drop each spot itself (column 0 unless duplicates tie with it), keep k others.
    others = index != np.arange(n_obs)[:, None]
    others[:, -1] &= ~others[:, :-1].all(axis=1)
    cols = index[others].reshape(n_obs, k)
    adjacency = sp.csr_matrix(
        (np.ones(n_obs * k), (np.repeat(np.arange(n_obs), k), cols.ravel())),
        shape=(n_obs, n_obs),
    )
    return _normalized(adjacency)


def _cluster(
    embedding: np.ndarray,
    n_domains: int,
    covariance_type: str,
    n_pcs: int | None,
    n_init: int,
    random_state: int,
) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    features = embedding.astype(np.float64)
    if n_pcs is not None and n_pcs < features.shape[1]:
        features = PCA(n_components=n_pcs, random_state=random_state).fit_transform(features)
    model = GaussianMixture(
        n_components=n_domains,
        covariance_type=covariance_type,
        n_init=n_init,
        random_state=random_state,
        reg_covar=1e-5,
    )
    return model.fit_predict(features)


def _weights_frame(weights: np.ndarray, columns: list[str], index: pd.Index) -> pd.DataFrame:
    weights = np.asarray(weights, dtype=np.float64)
    weights = weights / weights.sum(axis=1, keepdims=True)
    return pd.DataFrame(weights, index=index.copy(), columns=columns)
