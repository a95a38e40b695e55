"""Spatial domains from graph neural networks (STAGATE and GraphST), needs ``spatiome[deep]``.

torch is imported only when :func:`gnn` runs, so ``import spatiome`` stays free of it.
"""

from __future__ import annotations

import logging
import numbers
import time
import warnings

import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from anndata import AnnData

from .._core.near_empty import warn_near_empty
from .._core.progress import Progress
from .._core.torch_session import check_training, import_torch, resolve_device
from .._core.validate import (
    SpatiomeInputError,
    check_adata,
    check_counts,
    get_matrix,
    resolve_counts_layer,
)
from ..graph import build_graph, default_method
from .cluster import _labels_by_size, kmeans, leiden

logger = logging.getLogger("spatiome")

OBJECTIVES = ("reconstruction", "contrastive")
HVG_FLAVORS = ("seurat_v3", "seurat")
CLUSTER_METHODS = ("gmm", "kmeans", "leiden")
COVARIANCE_TYPES = ("tied", "full", "diag", "spherical")
# Counts per spot after total-count normalization (Seurat and scanpy's usual 1e4).
_TARGET_SUM = 1e4
# Scaled values are clipped to this absolute value, as scanpy.pp.scale(max_value=10).
_SCALE_CLIP = 10.0
# Defaults that differ between the objectives: STAGATE's for the reconstruction, GraphST's
# for the contrastive model (the latter has one layer, of width hidden_dims[1]).
_OBJECTIVE_DEFAULTS = {
    "reconstruction": {
        "hidden_dims": (512, 30), "n_epochs": 500, "weight_decay": 1e-4,
    },
    "contrastive": {
        "hidden_dims": (64, 64), "n_epochs": 600, "weight_decay": 0.0,
    },
}  # fmt: skip
# Above this many spots the model is trained by mini-batches (spatial parts with a halo):
# full batch, an epoch takes seconds per 10,000 spots and 500 are needed.
MINIBATCH_MIN_SPOTS = 10_000
# Mini-batch training with the default epochs takes as many Adam steps as the full-batch
# default, in at least this many epochs (passes over the tissue).
_MIN_MINIBATCH_EPOCHS = 10
# Each mini-batch joins this many compact parts from across the tissue.
_PARTS_PER_BATCH = 8
_MODELS = {
    "reconstruction": "graph attention autoencoder (tied weights)",
    "contrastive": "graph convolution encoder, contrastive and reconstruction losses",
}


def gnn(
    adata: AnnData,
    n_domains: int,
    *,
    layer: str | None = None,
    n_top_genes: int | None = 3000,
    hvg_flavor: str = "seurat_v3",
    scale: bool = True,
    n_comps: int | None = None,
    objective: str = "reconstruction",
    hidden_dims: tuple[int, int] | None = None,
    n_epochs: int | None = None,
    learning_rate: float = 1e-3,
    weight_decay: float | None = None,
    gradient_clip: float | None = 5.0,
    reconstruction_weight: float = 10.0,
    n_neighbors: int = 6,
    radius: float | None = None,
    graph_key: str | None = None,
    spatial_key: str = "spatial",
    cluster_method: str = "gmm",
    covariance_type: str = "tied",
    n_pcs: int | None = None,
    n_init: int = 5,
    refine_neighbors: int | None = None,
    extra_features: str | np.ndarray | None = None,
    extra_weight: float = 1.0,
    random_state: int = 0,
    n_jobs: int | None = None,
    minibatch: bool | None = None,
    batch_size: int = 4096,
    device: str = "cpu",
    key_added: str = "gnn",
    embedding_key: str = "X_gnn",
    copy: bool = False,
) -> AnnData | None:
    """Spatial domains by clustering the embedding of a graph neural network.

    Two models, chosen by ``objective``:

    - ``"reconstruction"`` (default) follows STAGATE: a two-layer encoder whose first
      layer is a graph attention layer over the spatial neighbour graph, and a decoder
      that mirrors it with tied (transposed) weights and the same attention, trained to
      reconstruct the expression. Each spot's embedding is pulled towards that of the
      spatial neighbours it attends to, which smooths expression noise inside a domain
      while the attention can down-weight neighbours across a domain border;
    - ``"contrastive"`` follows GraphST: a one-layer graph convolution encoder trained to
      reconstruct the expression and, at the same time, to tell each spot's embedding
      from that of a corrupted tissue (the same graph with the expression profiles
      shuffled between spots) given the summary of its spatial neighbourhood (a
      deep-graph-infomax loss).

    The embedding is then clustered.

    Steps:

    1. preprocessing, on copies: the ``n_top_genes`` highly variable genes are selected,
       by default with the Seurat v3 rule on the raw counts (``hvg_flavor="seurat_v3"``,
       as STAGATE and GraphST do; :func:`scanpy.pp.highly_variable_genes`
       ``flavor="seurat_v3"``, the selection of :func:`spatiome.pp.reduce`) or with
       :func:`scanpy.pp.highly_variable_genes` ``flavor="seurat"`` on the log-normalized
       values; counts are normalized to 10,000 per spot and log1p transformed. With
       ``scale`` each gene is divided by its standard deviation and clipped at 10 (as
       :func:`scanpy.pp.scale` with ``max_value=10``), after centring for the
       reconstruction objective; the contrastive objective, as GraphST, does not centre.
       The model's input is the genes themselves (the scaled matrix is never stored
       dense but rebuilt from the sparse one in row blocks when it is large) or, with
       ``n_comps``, their first ``n_comps`` principal components (ARPACK on the sparse
       matrix, centring implicit, no clipping; faster but less accurate, see Notes);
    2. the spatial graph with a self-loop on every spot: ``adata.obsp[graph_key]``, or
       built by :func:`spatiome.graph.build_graph` (the 10x array grid when ``obs`` has
       ``array_row``/``array_col``: 6 neighbours per interior Visium spot, 4 per Visium HD
       bin; otherwise the
       ``n_neighbors`` nearest spots, or all spots within ``radius``);
    3. the reconstruction model (``hidden_dims = (h, d)``, ``X`` the preprocessed
       expression, ``A(a)`` the graph with attention weights ``a``; trained full batch or
       by mini-batches of subgraphs, see below)::

           Y = X W1;  a_ij = softmax_j sigmoid(<Y_j, u> + <Y_i, v>)   (j neighbour of i)
           Z = elu(A(a) Y) W2                       embedding (d columns)
           X_hat = elu(A(a) Z W2^T) W1^T            tied decoder, same attention

       trained with Adam on the mean squared error of ``X_hat``. The error is
       computed from Gram matrices (``||X - H W1^T||^2 = ||X||^2 - 2 <X W1, H> +
       <W1^T W1, H^T H>``), so no spots x genes reconstruction is formed and memory grows
       linearly with the spots and edges. The contrastive model (``G`` the graph
       symmetrically normalized, ``M`` row-normalized, ``d = hidden_dims[1]``;
       ``hidden_dims[0]`` is not used)::

           Z = G X W1,  E = relu(Z),  E' = relu(G X[perm] W1)   a new shuffle each epoch
           g = sigmoid(normalize(M E)),  g' likewise from E'    neighbourhood summaries
           X_hat = G Z W2
           loss = reconstruction_weight * mse(X, X_hat)
                  + BCE(E vs g: real) + BCE(E' vs g: fake) + BCE(E' vs g': real)
                  + BCE(E vs g': fake)                          bilinear discriminator

       Its embedding is the principal component scores of ``X_hat`` (computed from the
       small factors, ``X_hat`` is not formed), as GraphST clusters the reconstruction.
       Both are trained with the gradient norm clipped at ``gradient_clip``;
    4. clustering of the embedding into ``n_domains``: ``"gmm"`` a Gaussian mixture
       (:class:`sklearn.mixture.GaussianMixture`; the default ``covariance_type="tied"``,
       one covariance shared by all components, is mclust's EEE model that STAGATE and
       GraphST use), ``"kmeans"`` or ``"leiden"`` (resolution searched for
       ``n_domains`` clusters, :func:`spatiome.domains.leiden`); optionally on the first
       ``n_pcs`` principal components of the embedding;
    5. optionally (``refine_neighbors``), each spot takes the majority label of its
       ``refine_neighbors`` nearest spots (:func:`refine_labels`), GraphST's refinement.
       It removes isolated labels inside wide domains but erodes thin ones.

    Above ``MINIBATCH_MIN_SPOTS`` (10,000) spots, or with ``minibatch=True``, the model is
    trained by mini-batches of sampled subgraphs instead of the whole graph: the tissue is
    cut into compact parts of about ``batch_size / 8`` spots (recursive bisection of the
    coordinates, a METIS-like partition of the spatial graph), and each batch joins 8
    parts drawn at random from the whole tissue (Cluster-GCN's stochastic multiple
    partitions). A step computes the model on the batch's spots plus their 2-hop halo;
    both models see at most two hops, so the loss of the batch's own spots is exactly
    their loss on the whole graph (only the contrastive shuffles stay within the
    subgraph). Each epoch takes one Adam step per batch, in a seeded random order; by
    default as many epochs as give the full-batch number of steps (500 or 600), and at
    least 10. At 100,000 spots this is about 20 epochs of ~25 batches instead of 500
    full-batch epochs (see ``docs/domains.md`` for measured times and the accuracy on
    DLPFC sections against full batch). Sections of Visium size (up to 5,000 spots)
    are trained full batch, as before.

    Training runs on the CPU by default (``device="cpu"``), deterministically: weights,
    the order of the batches and the contrastive shuffles are drawn from a torch
    ``Generator`` seeded with ``random_state`` (the global torch seed is not touched),
    there is no dropout, and deterministic algorithms are requested while training. The
    same seed and number of threads give the same embedding and labels; a different
    number of threads can change the last bits of the floating-point sums. With
    ``device="cuda"`` (or ``"auto"`` when torch sees a CUDA GPU) the products run on the
    GPU through ``torch.sparse``; the weights start from the same seeded values, but GPU
    sums are not bit-reproducible. Every epoch, with its loss, is reported as progress
    (``"spatiome"`` logger at INFO level).

    Parameters
    ----------
    adata
        Spots x genes with raw counts and coordinates in ``adata.obsm[spatial_key]``.
    n_domains
        Number of domains (clusters) to find.
    layer
        Raw integer counts: ``adata.layers[layer]``. ``None`` (default):
        ``adata.layers["counts"]`` when present, else ``adata.X`` when it holds counts.
    n_top_genes
        Number of highly variable genes given to the model; ``None`` (or at least the
        number of genes) uses all genes.
    hvg_flavor
        ``"seurat_v3"`` (variance of the counts standardized by a mean-variance trend,
        Stuart et al. 2019) or ``"seurat"`` (dispersion of the log-normalized values).
    scale
        Scale each gene to unit variance (clipped at 10), as GraphST does; ``False``
        feeds the log-normalized values as they are, as STAGATE does.
    n_comps
        Give the model the first ``n_comps`` principal components of the selected genes
        instead of the genes (``None``, the default).
    objective
        ``"reconstruction"`` (STAGATE) or ``"contrastive"`` (GraphST).
    hidden_dims
        Widths ``(h, d)`` of the hidden layer and of the embedding. Default ``(512, 30)``
        for the reconstruction objective; ``(64, 64)`` for the contrastive one, which
        uses ``d`` only.
    n_epochs
        Training epochs (passes over the tissue). Full batch: default 500 for the
        reconstruction objective (STAGATE uses 1,000; the loss has levelled off well
        before 500), 600 for the contrastive one (as GraphST). By mini-batches: by default
        as many epochs as give that number of Adam steps, at least 10.
    learning_rate
        Adam step size.
    weight_decay
        Adam's L2 penalty. Default ``1e-4`` for the reconstruction objective, 0 for the
        contrastive one.
    gradient_clip
        Maximum norm of the gradient; ``None`` for no clipping.
    reconstruction_weight
        Weight of the reconstruction error against the contrastive losses (contrastive
        objective only; GraphST's 10).
    n_neighbors
        Neighbours per spot when a kNN graph is built (not used on the Visium grid).
    radius
        Build the graph from all spots within this distance (coordinate units) instead.
    graph_key
        Use the precomputed graph ``adata.obsp[graph_key]`` (e.g.
        ``"spatial_connectivities"`` from :func:`spatiome.graph.spatial_neighbors`); its
        non-zero pattern is used, the values are ignored.
    spatial_key
        Coordinates in ``adata.obsm``.
    cluster_method
        ``"gmm"``, ``"kmeans"`` or ``"leiden"``.
    covariance_type
        Covariance of the Gaussian mixture components (``"tied"``, ``"full"``, ``"diag"``
        or ``"spherical"``).
    n_pcs
        Cluster the first ``n_pcs`` principal components of the embedding instead of the
        embedding itself (``None``, the default).
    n_init
        Initializations of the Gaussian mixture or k-means; the best is kept.
    refine_neighbors
        Relabel each spot by the majority of its ``refine_neighbors`` nearest spots after
        clustering (GraphST uses 50 on Visium); ``None`` (default) for no refinement.
    extra_features
        Per-spot features clustered next to the embedding (or its ``n_pcs`` components):
        an ``adata.obsm`` key or an ``(n_obs, m)`` array, for instance cell-type
        fractions from :func:`spatiome.deconv.deconvolve` or layer-marker scores. Each
        column is standardized and the block scaled to ``extra_weight`` times the total
        variance of the embedding, as in :func:`spatiome.domains.cluster`.
    extra_weight
        Total variance of the ``extra_features`` block relative to the embedding's.
    random_state
        Seed of the weight initialization, of the shuffles and of the clustering.
    n_jobs
        Threads used by torch while training (default: torch's setting); restored after.
    minibatch
        Train by mini-batches of subgraphs (``True``), on the whole graph (``False``), or
        (``None``, default) by mini-batches above ``MINIBATCH_MIN_SPOTS`` = 10,000 spots.
    batch_size
        Spots per mini-batch (before the halo), default 4,096.
    device
        ``"cpu"`` (default), ``"cuda"`` (a CUDA GPU; an error without one) or ``"auto"``
        (CUDA when torch sees a GPU, else the CPU).
    key_added
        Column of ``adata.obs`` receiving the categorical domain labels ``"0"``, ``"1"``,
        ... (``"0"`` is the largest domain); also the key of the parameters in
        ``adata.uns["spatiome"]``.
    embedding_key
        Key of the embedding in ``adata.obsm``.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    AnnData or None
        The copy when ``copy=True``; otherwise None. Written: ``obs[key_added]``,
        ``obsm[embedding_key]`` (float32, spots x ``hidden_dims[1]``) and
        ``uns["spatiome"][key_added]`` with the parameters, the genes used, the graph size,
        the training mode (``"minibatch"``, ``"batch_size"``, ``"n_batches"``), the
        ``"device"``, the training time and the loss of every epoch (``"loss"``; by
        mini-batches, the mean of the batches' losses weighted by their spots). Nothing
        else in ``adata`` is changed.

    Raises
    ------
    ImportError
        If PyTorch is not installed (``pip install "spatiome[deep]"``).
    SpatiomeInputError
        If an argument is out of range, the counts are not raw counts, coordinates or the
        graph are missing, or ``device="cuda"`` and torch sees no CUDA GPU.

    Notes
    -----
    What matters most for accuracy is the input (``benchmarks/gnn.py``, DLPFC section
    151673, 7 domains): with the ``"seurat"`` genes and their scaled principal components
    as input (the earlier defaults) the adjusted Rand index was about 0.32; with the
    Seurat v3 genes themselves it is 0.49-0.62 over seeds 0-2 (mean 0.57; 0.60-0.61 with
    mini-batches of 1,024 spots): the training seed moves it more than anything below.
    The tied covariance adds about 0.15
    over ``"full"`` on embeddings of the Seurat v3 genes. Scaling matters little on DLPFC
    (+0.02) but a lot on simulated tissues whose null genes are all kept (0.3-0.7
    unscaled, 0.95 scaled); on the 262-spot olfactory bulb it costs about 0.1.
    Majority-vote refinement over 50 spots adds about 0.02 on DLPFC but costs 0.15 on the
    olfactory bulb, whose layers are a few spots thick, so it is off by default.

    References
    ----------
    Chiang, Liu, Si et al. (2019). Cluster-GCN: an efficient algorithm for training deep
    and large graph convolutional networks. KDD 2019, 257-266 (mini-batches of clusters).

    Dong and Zhang (2022). Deciphering spatial domains from spatially resolved
    transcriptomics with an adaptive graph attention auto-encoder. Nature Communications
    13, 1739 (STAGATE).

    Long, Ang, Li et al. (2023). Spatially informed clustering, integration, and
    deconvolution of spatial transcriptomics with GraphST. Nature Communications 14, 1155.

    Stuart, Butler, Hoffman et al. (2019). Comprehensive integration of single-cell data.
    Cell 177, 1888-1902 (Seurat v3 highly variable genes).

    Examples
    --------
    >>> import pytest; _ = pytest.importorskip("torch")  # needs spatiome[deep]
    >>> from sklearn.metrics import adjusted_rand_score
    >>> from spatiome.datasets import simulate_tissue
    >>> from spatiome.domains.gnn import gnn
    >>> adata = simulate_tissue(n_spots=600, n_genes=100, n_domains=4, patterns=("domain",),
    ...                         frac_spatial=0.3, random_state=3)
    >>> gnn(adata, 4, hidden_dims=(64, 8), n_epochs=120)
    >>> adata.obsm["X_gnn"].shape, adata.obs["gnn"].cat.categories.tolist()
    ((600, 8), ['0', '1', '2', '3'])
    >>> adjusted_rand_score(adata.obs["domain"], adata.obs["gnn"]) > 0.7
    True
    >>> gnn(adata, 4, objective="contrastive", n_epochs=150, n_pcs=20, key_added="gnn_c",
    ...     embedding_key="X_gnn_c")
    >>> adata.obsm["X_gnn_c"].shape
    (600, 64)
    >>> adjusted_rand_score(adata.obs["domain"], adata.obs["gnn_c"]) > 0.5
    True

    Mini-batches of subgraphs (chosen automatically above 10,000 spots):

    >>> gnn(adata, 4, hidden_dims=(64, 8), n_epochs=80, minibatch=True, batch_size=200,
    ...     key_added="gnn_mb", embedding_key="X_gnn_mb")
    >>> adata.uns["spatiome"]["gnn_mb"]["n_batches"], adata.uns["spatiome"]["gnn_mb"]["device"]
    (3, 'cpu')
    >>> adjusted_rand_score(adata.obs["domain"], adata.obs["gnn_mb"]) > 0.5
    True
    """
    check_adata(adata)
    if objective not in OBJECTIVES:
        raise SpatiomeInputError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    defaults = _OBJECTIVE_DEFAULTS[objective]
    hidden_dims = defaults["hidden_dims"] if hidden_dims is None else hidden_dims
    weight_decay = defaults["weight_decay"] if weight_decay is None else weight_decay
    check_training(minibatch, batch_size, device)
    minibatch = adata.n_obs > MINIBATCH_MIN_SPOTS if minibatch is None else bool(minibatch)
    default_epochs = n_epochs is None
    n_epochs = defaults["n_epochs"] if default_epochs else n_epochs
    _check_parameters(
        adata, n_domains, n_top_genes, hvg_flavor, hidden_dims, n_epochs, learning_rate,
        weight_decay, gradient_clip, reconstruction_weight, cluster_method, covariance_type,
        n_pcs, n_comps, n_init, refine_neighbors, n_jobs, key_added, embedding_key,
    )  # fmt: skip
    from .cluster import _extra_block

    extra = None if extra_features is None else _extra_block(adata, extra_features)
    if not float(extra_weight) > 0.0:
        raise SpatiomeInputError(f"extra_weight must be positive, got {extra_weight!r}")
    torch = import_torch("spatiome.domains.gnn")
    torch_device = resolve_device(device, "spatiome.domains.gnn")
    layer = resolve_counts_layer(adata, layer)
    warn_near_empty(adata, layer=layer, caller="domains.gnn")
    counts = get_matrix(adata, layer)
    check_counts(counts, where="adata.X" if layer is None else f"adata.layers[{layer!r}]")
    graph, graph_info = _spatial_graph(adata, n_neighbors, radius, graph_key, spatial_key)
    random_state = 0 if random_state is None else int(random_state)
    expression, genes = _preprocess(
        counts, adata.var_names, n_top_genes, hvg_flavor, bool(scale),
        objective == "reconstruction", n_comps, random_state,
    )  # fmt: skip

    from ._torch_gat import train_autoencoder, train_contrastive

    parts = _parts(adata, graph, spatial_key, int(batch_size), random_state) if minibatch else None
    if default_epochs and parts is not None:
        n_epochs = _default_epochs(defaults["n_epochs"], len(parts), minibatch)
    training = {
        "hidden_dims": (int(hidden_dims[0]), int(hidden_dims[1])),
        "n_epochs": int(n_epochs),
        "learning_rate": float(learning_rate),
        "weight_decay": float(weight_decay),
        "gradient_clip": None if gradient_clip is None else float(gradient_clip),
        "seed": random_state,
        "n_threads": n_jobs,
        "parts": parts,
        "device": torch_device,
    }
    start = time.perf_counter()
    with Progress("domains.gnn", int(n_epochs), "epoch") as progress:
        if objective == "reconstruction":
            embedding, losses = train_autoencoder(expression, graph, progress=progress, **training)
        else:
            embedding, losses = train_contrastive(
                expression,
                graph,
                reconstruction_weight=float(reconstruction_weight),
                progress=progress,
                **training,
            )
    seconds = time.perf_counter() - start
    labels = _cluster(
        embedding, int(n_domains), cluster_method, covariance_type, n_pcs, n_init, random_state,
        None if extra is None else (extra, float(extra_weight)),
    )  # fmt: skip
    if refine_neighbors is not None:
        labels = refine_labels(
            np.asarray(adata.obsm[spatial_key], dtype=np.float64), labels, int(refine_neighbors)
        )
    adata = adata.copy() if copy else adata
    adata.obsm[embedding_key] = embedding
    adata.obs[key_added] = _labels_by_size(labels)
    adata.uns.setdefault("spatiome", {})
    adata.uns["spatiome"][key_added] = {
        "method": "gnn",
        "objective": objective,
        "model": _MODELS[objective],
        "n_domains": int(n_domains),
        "layer": "X" if layer is None else layer,
        "n_top_genes": int(genes.size),
        "hvg_flavor": hvg_flavor,
        "genes": np.asarray(genes, dtype=str),
        "scale": bool(scale),
        "n_comps": -1 if n_comps is None else int(n_comps),
        "hidden_dims": [int(d) for d in hidden_dims],
        "n_epochs": int(n_epochs),
        "learning_rate": float(learning_rate),
        "weight_decay": float(weight_decay),
        "gradient_clip": -1.0 if gradient_clip is None else float(gradient_clip),
        "reconstruction_weight": float(reconstruction_weight),
        "graph": graph_info,
        "cluster_method": cluster_method,
        "covariance_type": covariance_type,
        "n_pcs": -1 if n_pcs is None else int(n_pcs),
        "n_init": int(n_init),
        "refine_neighbors": -1 if refine_neighbors is None else int(refine_neighbors),
        "extra_features": 0 if extra is None else int(extra.shape[1]),
        "extra_weight": float(extra_weight),
        "random_state": random_state,
        "minibatch": bool(minibatch),
        "batch_size": int(batch_size) if minibatch else -1,
        "n_batches": 1 if parts is None else len(parts),
        "device": str(torch_device),
        "embedding_key": embedding_key,
        "torch": str(torch.__version__),
        "train_seconds": float(seconds),
        "loss": losses,
    }
    logger.info(
        "gnn (%s): %d epochs on %d spots x %d genes in %.1f s (loss %.4g -> %.4g), %d domains",
        objective,
        n_epochs,
        adata.n_obs,
        genes.size,
        seconds,
        losses[0] if losses.size else float("nan"),
        losses[-1] if losses.size else float("nan"),
        int(n_domains),
    )
    return adata if copy else None


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _default_epochs(full_batch_epochs: int, n_parts: int, minibatch: bool) -> int:
    """Full batch: the objective's default; by parts, as many Adam steps in total."""
    if not minibatch:
        return full_batch_epochs
    return max(-(-full_batch_epochs // n_parts), _MIN_MINIBATCH_EPOCHS)


def _parts(
    adata: AnnData, graph: sp.csr_matrix, spatial_key: str, batch_size: int, random_state: int
) -> list:
    from .._core.subgraphs import mixed_batches

    coordinates = adata.obsm[spatial_key] if spatial_key in adata.obsm else None
    if coordinates is not None:
        coordinates = np.asarray(coordinates, dtype=np.float64)
    return mixed_batches(coordinates, graph, batch_size, _PARTS_PER_BATCH, random_state)


def _check_parameters(
    adata, n_domains, n_top_genes, hvg_flavor, hidden_dims, n_epochs, learning_rate,
    weight_decay, gradient_clip, reconstruction_weight, cluster_method, covariance_type, n_pcs,
    n_comps, n_init, refine_neighbors, n_jobs, key_added, embedding_key,
) -> None:  # fmt: skip
    if not _is_int(n_domains) or not 1 <= n_domains <= adata.n_obs:
        raise SpatiomeInputError(
            f"n_domains must be an integer between 1 and the number of spots "
            f"({adata.n_obs}), got {n_domains!r}"
        )
    if n_top_genes is not None and (not _is_int(n_top_genes) or n_top_genes < 2):
        raise SpatiomeInputError(
            f"n_top_genes must be an integer >= 2 or None, got {n_top_genes!r}"
        )
    if hvg_flavor not in HVG_FLAVORS:
        raise SpatiomeInputError(f"hvg_flavor must be one of {HVG_FLAVORS}, got {hvg_flavor!r}")
    dims = tuple(hidden_dims) if isinstance(hidden_dims, list | tuple) else ()
    if len(dims) != 2 or not all(_is_int(d) and d >= 1 for d in dims):
        raise SpatiomeInputError(
            f"hidden_dims must be two positive integers (hidden, embedding), got {hidden_dims!r}"
        )
    if not _is_int(n_epochs) or n_epochs < 0:
        raise SpatiomeInputError(f"n_epochs must be a non-negative integer, got {n_epochs!r}")
    for name, value in (
        ("learning_rate", learning_rate),
        ("weight_decay", weight_decay),
        ("reconstruction_weight", reconstruction_weight),
    ):
        if not isinstance(value, numbers.Real) or not np.isfinite(value) or value < 0:
            raise SpatiomeInputError(f"{name} must be a finite number >= 0, got {value!r}")
    if gradient_clip is not None and (
        not isinstance(gradient_clip, numbers.Real) or not gradient_clip > 0
    ):
        raise SpatiomeInputError(f"gradient_clip must be positive or None, got {gradient_clip!r}")
    if cluster_method not in CLUSTER_METHODS:
        raise SpatiomeInputError(
            f"cluster_method must be one of {CLUSTER_METHODS}, got {cluster_method!r}"
        )
    if covariance_type not in COVARIANCE_TYPES:
        raise SpatiomeInputError(
            f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}"
        )
    if n_pcs is not None and (not _is_int(n_pcs) or not 1 <= n_pcs <= dims[1]):
        raise SpatiomeInputError(
            f"n_pcs must be None or an integer between 1 and the embedding width "
            f"({dims[1]}), got {n_pcs!r}"
        )
    if n_comps is not None and (not _is_int(n_comps) or n_comps < 1):
        raise SpatiomeInputError(f"n_comps must be a positive integer or None, got {n_comps!r}")
    if not _is_int(n_init) or n_init < 1:
        raise SpatiomeInputError(f"n_init must be a positive integer, got {n_init!r}")
    if refine_neighbors is not None and (
        not _is_int(refine_neighbors) or not 1 <= refine_neighbors < adata.n_obs
    ):
        raise SpatiomeInputError(
            f"refine_neighbors must be None or an integer between 1 and the number of spots "
            f"minus one ({adata.n_obs - 1}), got {refine_neighbors!r}"
        )
    if n_jobs is not None and (not _is_int(n_jobs) or n_jobs < 1):
        raise SpatiomeInputError(f"n_jobs must be a positive integer or None, got {n_jobs!r}")
    for name, value in (("key_added", key_added), ("embedding_key", embedding_key)):
        if not isinstance(value, str) or not value:
            raise SpatiomeInputError(f"{name} must be a non-empty string, got {value!r}")


def _spatial_graph(
    adata: AnnData,
    n_neighbors: int,
    radius: float | None,
    graph_key: str | None,
    spatial_key: str,
) -> tuple[sp.csr_matrix, dict]:
    if graph_key is not None:
        if graph_key not in adata.obsp:
            raise SpatiomeInputError(
                f"adata.obsp[{graph_key!r}] is missing: run "
                "spatiome.graph.spatial_neighbors(adata) first or pass graph_key=None to "
                "build the graph from the coordinates"
            )
        graph = sp.csr_matrix(adata.obsp[graph_key], dtype=np.float32)
        info = {"source": f"obsp[{graph_key!r}]"}
    else:
        method = "radius" if radius is not None else default_method(adata)
        graph, _, built = build_graph(
            adata, method=method, n_neighbors=n_neighbors, radius=radius, spatial_key=spatial_key
        )
        info = {"source": "built", **{k: v for k, v in built["params"].items() if v is not None}}
    # The pattern is what counts; a self-loop keeps each spot's own expression in its message.
    graph = sp.csr_matrix(graph)
    graph.data = np.ones_like(graph.data, dtype=np.float32)
    graph = sp.csr_matrix(graph + sp.eye(adata.n_obs, dtype=np.float32, format="csr"))
    graph.data[:] = 1.0
    graph.eliminate_zeros()
    graph.sort_indices()
    isolated = int(np.count_nonzero(np.diff(graph.indptr) == 1))
    if isolated:
        warnings.warn(
            f"gnn: {isolated} of {adata.n_obs} spots have no spatial neighbour and are "
            "embedded from their own expression only (raise n_neighbors or radius)",
            UserWarning,
            stacklevel=3,
        )
    info.update({"n_edges": int(graph.nnz - adata.n_obs), "n_isolated": isolated})
    return graph, info


def _preprocess(
    counts,
    var_names: pd.Index,
    n_top_genes: int | None,
    hvg_flavor: str,
    scale: bool,
    centre: bool,
    n_comps: int | None,
    random_state: int,
):
    from ._torch_gat import ScaledExpression

    counts = sp.csr_matrix(counts, dtype=np.float32, copy=True)
    if n_top_genes is None or n_top_genes >= counts.shape[1]:
        selected = np.arange(counts.shape[1])
    elif hvg_flavor == "seurat_v3":
        from ..pp._hvg import seurat_v3_genes

        selected = np.sort(seurat_v3_genes(counts, int(n_top_genes)))
    library = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    factor = np.divide(_TARGET_SUM, library, out=np.zeros_like(library), where=library > 0)
    counts.data *= np.repeat(factor, np.diff(counts.indptr)).astype(np.float32)
    np.log1p(counts.data, out=counts.data)
    if n_top_genes is not None and n_top_genes < counts.shape[1] and hvg_flavor == "seurat":
        flags = sc.pp.highly_variable_genes(
            AnnData(counts, var=pd.DataFrame(index=var_names.astype(str))),
            flavor="seurat",
            n_top_genes=int(n_top_genes),
            inplace=False,
        )
        selected = np.flatnonzero(flags["highly_variable"].to_numpy())
    matrix = sp.csr_matrix(counts[:, selected])
    genes = np.asarray(var_names[selected]).astype(str)
    n_obs = matrix.shape[0]
    mean = np.asarray(matrix.mean(axis=0), dtype=np.float64).ravel()
    if scale:
        square = np.asarray(matrix.multiply(matrix).mean(axis=0), dtype=np.float64).ravel()
        variance = np.maximum(square - mean**2, 0.0) * n_obs / max(n_obs - 1, 1)
        std = np.sqrt(variance)
        inv_std = np.divide(1.0, std, out=np.zeros_like(std), where=std > 0)
    else:
        inv_std = np.ones_like(mean)
    if n_comps is None:
        if not scale:
            return ScaledExpression(matrix), genes
        offset = mean if centre else np.zeros_like(mean)
        return (
            ScaledExpression(
                matrix, offset.astype(np.float32), inv_std.astype(np.float32), clip=_SCALE_CLIP
            ),
            genes,
        )
    # PCA of the centred (and scaled) genes; ARPACK centres implicitly, X stays sparse.
    scaled = sp.csr_matrix(matrix.multiply(inv_std[None, :].astype(np.float32)))
    n_comps = int(min(n_comps, min(scaled.shape) - 1))
    scores = sc.pp.pca(
        scaled, n_comps=n_comps, zero_center=True, svd_solver="arpack", random_state=random_state
    )
    return ScaledExpression(np.ascontiguousarray(scores, dtype=np.float32)), genes


def refine_labels(coordinates: np.ndarray, labels: np.ndarray, n_neighbors: int) -> np.ndarray:
    """Relabel each spot by the majority label of its ``n_neighbors`` nearest spots.

    The spot itself is not counted; on a tie that includes its own label the spot keeps
    it, otherwise the smallest tied label wins. This is GraphST's ``refine_label`` (and
    SpaGCN's refinement) with a k-d tree in place of the dense distance matrix.

    Parameters
    ----------
    coordinates
        Spot coordinates, ``(n_spots, n_dims)``.
    labels
        Integer labels ``0 .. K-1``, one per spot.
    n_neighbors
        Number of nearest spots that vote (fewer when there are fewer other spots).

    Returns
    -------
    numpy.ndarray
        The refined labels, same shape and dtype as ``labels``.

    Examples
    --------
    >>> import numpy as np
    >>> coordinates = np.c_[np.arange(6.0), np.zeros(6)]
    >>> refine_labels(coordinates, np.array([0, 0, 1, 0, 1, 1]), 2).tolist()
    [0, 0, 0, 1, 1, 1]
    """
    from scipy.spatial import cKDTree

    labels = np.asarray(labels)
    n_obs = labels.shape[0]
    n_neighbors = int(min(n_neighbors, n_obs - 1))
    if n_neighbors < 1:
        return labels.copy()
    codes, inverse = np.unique(labels, return_inverse=True)
    _, index = cKDTree(coordinates).query(coordinates, k=n_neighbors + 1)
    # Column 0 is the spot itself only when no other spot shares its position; drop the spot
    # wherever it appears and keep the first n_neighbors others.
    others = index != np.arange(n_obs)[:, None]
    others[:, -1] &= ~others[:, :-1].all(axis=1)
    votes = inverse[index[others].reshape(n_obs, n_neighbors)]
    counts = np.zeros((n_obs, codes.size), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(n_obs), n_neighbors), votes.ravel()), 1)
    best = counts.argmax(axis=1)
    keep = counts[np.arange(n_obs), inverse] == counts.max(axis=1)
    return codes[np.where(keep, inverse, best)]


def _cluster(
    embedding: np.ndarray,
    n_domains: int,
    method: str,
    covariance_type: str,
    n_pcs: int | None,
    n_init: int,
    random_state: int,
    extra: tuple[np.ndarray, float] | None = None,
) -> np.ndarray:
    features = embedding.astype(np.float64)
    if n_pcs is not None:
        from sklearn.decomposition import PCA

        features = PCA(n_components=n_pcs, random_state=random_state).fit_transform(features)
    if extra is not None:
        from .cluster import _append_scaled

        features = _append_scaled(features, *extra)
    if method == "gmm":
        from sklearn.mixture import GaussianMixture

        model = GaussianMixture(
            n_components=n_domains,
            covariance_type=covariance_type,
            n_init=n_init,
            random_state=random_state,
        )
        return model.fit_predict(features)
    shell = AnnData(sp.csr_matrix((features.shape[0], 1), dtype=np.float32))
    shell.obsm["features"] = features
    if method == "kmeans":
        kmeans(shell, n_domains, use_rep="features", key_added="labels", n_init=n_init,
               random_state=random_state)  # fmt: skip
    else:
        leiden(shell, n_clusters=n_domains, use_rep="features", key_added="labels",
               random_state=random_state)  # fmt: skip
    return shell.obs["labels"].cat.codes.to_numpy()
