"""Gene selection, PCA, expression kNN graph and embeddings (computed by scanpy).

With ``neighbourhood_lambda`` the PCA runs on neighbourhood-augmented expression (BANKSY):
each spot's own expression next to the kernel-weighted mean of its spatial neighbours'
expression and, optionally, the azimuthal Gabor filter of its neighbourhood.
"""

from __future__ import annotations

import logging
import numbers
import warnings

import numpy as np
import scanpy as sc
import scipy.sparse as sp
from anndata import AnnData
from scipy.sparse.linalg import LinearOperator, svds

from .._core.neighbourhood import spatial_knn
from .._core.validate import (
    SpatiomeInputError,
    check_adata,
    check_counts,
    check_finite,
    get_matrix,
    get_spatial,
)
from ._hvg import seurat_v3_table

logger = logging.getLogger("spatiome")

SPATIAL_KERNELS = ("gaussian", "uniform")
TSNE_BACKENDS = ("scanpy", "opentsne", "auto")
# BANKSY's weights for the harmonics of the neighbourhood: the mean (m = 0) gets lambda / mu
# and the azimuthal Gabor filter (m = 1) lambda / (2 mu), with mu = 1.5, so that together
# they keep the share lambda.
_HARMONIC_MU = 1.5
# Neighbourhood features are formed in blocks of genes holding about this many values
# (32 MB as float64 per scratch array).
_BLOCK_ENTRIES = 4_000_000
# Exact PCA from the covariance of up to this many features (a 32 MB matrix), accumulated
# over blocks of rows holding about _GRAM_BLOCK_ENTRIES values (64 MB as float64).
_GRAM_MAX_FEATURES = 2_048 * 2
_GRAM_BLOCK_ENTRIES = 8_000_000
#: Most spots a UMAP layout is fitted on by default (see :func:`embed_umap`).
UMAP_MAX_SPOTS = 50_000
# Rounds of placing the spots left out of a subsampled UMAP from placed neighbours.
_UMAP_PLACEMENT_ROUNDS = 20


def reduce(
    adata: AnnData,
    *,
    n_comps: int = 30,
    n_top_genes: int | None = 2000,
    umap: bool = True,
    tsne: bool = False,
    umap_max_spots: int | None = UMAP_MAX_SPOTS,
    n_neighbors: int = 15,
    neighbourhood_lambda: float | None = None,
    n_spatial_neighbors: int = 15,
    spatial_kernel: str = "gaussian",
    agf: bool = False,
    spatial_key: str = "spatial",
    key_added: str = "X_pca",
    tsne_backend: str = "scanpy",
    random_state: int = 0,
    copy: bool = False,
) -> AnnData | None:
    """Select variable genes, run PCA, build the expression kNN graph and embed the spots.

    Steps, all by scanpy unless ``neighbourhood_lambda`` is given:

    1. highly variable genes (:func:`scanpy.pp.highly_variable_genes`), the same selection
       as the domain methods': ``flavor="seurat_v3"`` on the raw counts layer after
       :func:`spatiome.pp.normalize` with ``method="log1p"`` (flags, rank, means, variances
       and normalized variances in ``adata.var``, as scanpy writes them);
       ``flavor="pearson_residuals"`` on the counts layer after ``method="pearson"``; and
       ``flavor="seurat"`` on ``adata.X`` only when no counts layer is recorded (``adata.X``
       normalized elsewhere). On the three DLPFC sections, the olfactory bulb and simulated
       tissues, the Seurat v3 genes gave Leiden clusters closer to the annotated layers
       (ARI +0.015 to +0.08) and a PCA in which a spot's 10 nearest neighbours predict its
       layer better (accuracy +0.04 to +0.10) than ``seurat`` on the log-normalized data
       (measured with ARPACK's PCA, before the covariance PCA below);
    2. exact PCA on those genes (:func:`covariance_pca`: their covariance accumulated over
       blocks of spots, so a sparse ``X`` is never densified as a whole, then its top
       eigenvectors; one pass over the data, where ARPACK needs dozens; scanpy's ARPACK
       for more than 4,096 genes) into ``adata.obsm[key_added]``, with loadings and
       variances stored as :func:`scanpy.pp.pca` stores them; ``n_comps`` is clipped to
       ``min(n_obs, n_features) - 1``;
    3. the kNN graph on that embedding (:func:`scanpy.pp.neighbors`) into
       ``adata.obsp["connectivities"]`` / ``["distances"]``;
    4. UMAP (:func:`scanpy.tl.umap`; above ``umap_max_spots`` spots fitted on a random
       subsample and the other spots placed from their expression neighbours, see
       :func:`embed_umap`) into ``adata.obsm["X_umap"]`` and, optionally, t-SNE
       into ``adata.obsm["X_tsne"]`` (:func:`scanpy.tl.tsne`, or openTSNE when asked for and
       installed).

    **Neighbourhood-augmented PCA** (BANKSY). With ``neighbourhood_lambda`` set, step 2 runs
    on the selected genes of each spot next to the same genes averaged over its
    ``n_spatial_neighbors`` nearest spatial neighbours (the spot itself excluded), weighted
    by a Gaussian kernel whose width is the median distance to those neighbours (BANKSY's
    ``kNN_median``) or uniformly. The features are ``[sqrt(1 - lambda) * X,
    sqrt(lambda) * W @ X]`` for the log-normalized expression ``X`` and the row-stochastic
    sparse spots x spots weights ``W``. With ``agf=True`` the azimuthal Gabor filter is
    appended: for each spot and gene the magnitude ``|sum_j w_ij (x_j - m_i) e^(i phi_ij)|``
    of the first azimuthal harmonic over ``2 * n_spatial_neighbors`` neighbours (``phi_ij``
    the direction from spot ``i`` to neighbour ``j``, ``m_i`` the weighted mean over the
    same neighbours), which responds to expression gradients across the neighbourhood; the
    share ``lambda`` is then split as in BANKSY, ``lambda / 1.5`` for the mean and
    ``lambda / 3`` for the filter. Features are not rescaled (BANKSY's default), so
    ``neighbourhood_lambda=0`` gives the plain PCA. Use about 0.2 to refine cell types and
    0.8 to find tissue domains.

    The neighbour mean is never formed: ARPACK (:func:`scipy.sparse.linalg.svds`) works on
    products with the implicitly centred operator ``[a X, b W X]``, which take the sparse
    ``X`` and ``W`` as they are. Besides a float64 copy of the selected genes of ``X``, only
    the Gabor filter is stored: a dense float64 spots x selected genes matrix (8 bytes per
    entry, 0.8 GB for 50,000 spots x 2,000 genes; lower ``n_top_genes`` on larger data).
    Gene loadings are not per gene in this mode, so ``adata.varm["PCs"]`` is removed when
    ``key_added="X_pca"`` would leave stale loadings there.

    Parameters
    ----------
    adata
        Normalized data (run :func:`spatiome.pp.normalize` first).
    n_comps
        Number of principal components.
    n_top_genes
        Number of highly variable genes; ``None`` (or at least the number of genes) uses
        all genes.
    umap, tsne
        Compute the UMAP / t-SNE embedding.
    umap_max_spots
        Most spots the UMAP layout is fitted on (``None``: all). Above, it is fitted on a
        random subsample of this size under ``random_state`` and the others are placed at
        the mean of their embedded expression neighbours; ``adata.uns["spatiome"]["reduce"]
        ["umap_subsample"]`` then counts the fitted and placed spots.
    n_neighbors
        Neighbours per spot in the expression graph (clipped to the number of spots).
    neighbourhood_lambda
        Weight in [0, 1] of the spatial neighbourhood; ``None`` (default) runs the plain
        PCA of the expression.
    n_spatial_neighbors
        Spatial neighbours averaged per spot (BANKSY's ``k_geom``, 15 by default; clipped to
        the number of spots - 1).
    spatial_kernel
        ``"gaussian"`` (weights ``exp(-d^2 / (2 s^2))`` with ``s`` the spot's median
        neighbour distance) or ``"uniform"``.
    agf
        Append the azimuthal Gabor filter (needs 2-D coordinates).
    spatial_key
        Coordinates in ``adata.obsm`` (used with ``neighbourhood_lambda`` only).
    key_added
        ``adata.obsm`` key of the embedding; the graph, UMAP and t-SNE are built on it.
        Variance and variance ratio go to ``adata.uns["pca"]`` for ``"X_pca"``, otherwise
        to ``adata.uns[key_added]``.
    tsne_backend
        ``"scanpy"`` (default), ``"opentsne"`` (openTSNE, an optional package; without it a
        warning is issued and scanpy is used) or ``"auto"`` (openTSNE when installed).
    random_state
        Seed for PCA initialization, the graph approximation and the embeddings; the same
        seed gives the same result.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    AnnData or None
        The copy when ``copy=True``; otherwise None. Parameters actually used go to
        ``adata.uns["spatiome"]["reduce"]`` (with the neighbourhood settings under
        ``"neighbourhood"`` and the t-SNE backend used under ``"tsne_backend"``).

    References
    ----------
    Singhal, Chou, Lee et al. (2024). BANKSY unifies cell typing and tissue domain
    segmentation for scalable spatial omics data analysis. Nature Genetics 56, 431-441.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp, anndata as ad
    >>> from spatiome.pp import normalize, reduce
    >>> rng = np.random.default_rng(0)
    >>> counts = sp.csr_matrix(rng.poisson(2.0, size=(60, 40)))
    >>> adata = ad.AnnData(counts.copy())
    >>> adata.layers["counts"] = counts
    >>> adata.obsm["spatial"] = rng.uniform(0, 1000, size=(60, 2))
    >>> normalize(adata)
    >>> reduce(adata, n_comps=5, n_top_genes=20, umap=False)
    >>> adata.obsm["X_pca"].shape, int(adata.var["highly_variable"].sum())
    ((60, 5), 20)
    >>> reduce(adata, n_comps=5, n_top_genes=20, umap=False, neighbourhood_lambda=0.8,
    ...        key_added="X_banksy")
    >>> adata.obsm["X_banksy"].shape, adata.uns["spatiome"]["reduce"]["neighbourhood"]["lambda"]
    ((60, 5), 0.8)
    """
    check_adata(adata)
    if adata.n_obs < 3:
        raise SpatiomeInputError(f"reduce needs at least 3 spots, got {adata.n_obs}")
    if n_comps < 1 or n_neighbors < 2:
        raise SpatiomeInputError(
            f"n_comps must be >= 1 and n_neighbors >= 2, got {n_comps} and {n_neighbors}"
        )
    _check_options(
        neighbourhood_lambda, n_spatial_neighbors, spatial_kernel, agf, key_added, tsne_backend
    )
    coords = None
    if neighbourhood_lambda is not None:
        coords = get_spatial(adata, spatial_key)
        if agf and coords.shape[1] != 2:
            raise SpatiomeInputError(
                f"agf=True needs 2-D coordinates but adata.obsm[{spatial_key!r}] has "
                f"{coords.shape[1]} columns: pass agf=False or 2-D coordinates"
            )
    matrix = get_matrix(adata)
    check_finite(matrix, where="adata.X")
    normalized = adata.uns.get("spatiome", {}).get("normalize")
    if normalized is None and _looks_like_counts(matrix):
        raise SpatiomeInputError(
            "adata.X holds raw counts: run spatiome.pp.normalize(adata) before reduce"
        )
    if umap_max_spots is not None and (
        isinstance(umap_max_spots, bool)
        or not isinstance(umap_max_spots, numbers.Integral)
        or umap_max_spots < 3
    ):
        raise SpatiomeInputError(
            f"umap_max_spots must be an integer >= 3 or None, got {umap_max_spots!r}"
        )
    random_state = 0 if random_state is None else int(random_state)
    adata = adata.copy() if copy else adata
    flavor = _select_genes(adata, n_top_genes, normalized)
    n_genes = int(adata.var["highly_variable"].sum())
    if n_genes < 2:
        raise SpatiomeInputError(
            f"PCA needs at least 2 selected genes, got {n_genes}: raise n_top_genes"
        )
    n_blocks = 1 if neighbourhood_lambda is None else (3 if agf else 2)
    n_pcs = int(min(n_comps, adata.n_obs - 1, n_blocks * n_genes - 1))
    neighbourhood = None
    pca_solver = "arpack"
    if neighbourhood_lambda is None:
        pca_solver = _plain_pca(adata, n_pcs, key_added, random_state)
    else:
        neighbourhood = _neighbourhood_pca(
            adata,
            coords,
            float(neighbourhood_lambda),
            n_spatial_neighbors=int(n_spatial_neighbors),
            kernel=spatial_kernel,
            agf=bool(agf),
            n_pcs=n_pcs,
            random_state=random_state,
            key_added=key_added,
        )
        neighbourhood["spatial_key"] = spatial_key
    k = int(min(n_neighbors, adata.n_obs))
    sc.pp.neighbors(adata, n_neighbors=k, use_rep=key_added, random_state=random_state)
    umap_spots = None
    if umap:
        umap_spots = embed_umap(
            adata, key_added, max_spots=umap_max_spots, random_state=random_state, n_neighbors=k
        )
    used_backend = _tsne(adata, key_added, tsne_backend, random_state) if tsne else None
    record: dict = {
        "n_comps": n_pcs,
        "n_top_genes": n_genes,
        "hvg_flavor": flavor,
        "n_neighbors": k,
        "pca_solver": pca_solver,
        "umap": bool(umap),
        "tsne": bool(tsne),
        "random_state": int(random_state),
        "key_added": key_added,
    }
    if used_backend is not None:
        record["tsne_backend"] = used_backend
    if umap_spots is not None and umap_spots["placed"] + umap_spots["unplaced"] > 0:
        record["umap_subsample"] = umap_spots
    if neighbourhood is not None:
        record["neighbourhood"] = neighbourhood
    adata.uns.setdefault("spatiome", {})
    adata.uns["spatiome"]["reduce"] = record
    logger.info(
        "reduce: %d components of %s on %d genes into obsm[%r]",
        n_pcs,
        "expression" if neighbourhood is None else "neighbourhood-augmented expression",
        n_genes,
        key_added,
    )
    return adata if copy else None


def _check_options(
    neighbourhood_lambda: float | None,
    n_spatial_neighbors: int,
    spatial_kernel: str,
    agf: bool,
    key_added: str,
    tsne_backend: str,
) -> None:
    if neighbourhood_lambda is not None and (
        isinstance(neighbourhood_lambda, bool)
        or not isinstance(neighbourhood_lambda, numbers.Real)
        or not 0.0 <= float(neighbourhood_lambda) <= 1.0
    ):
        raise SpatiomeInputError(
            "neighbourhood_lambda must be a number in [0, 1] (about 0.2 for cell types, 0.8 "
            f"for domains) or None for plain PCA, got {neighbourhood_lambda!r}"
        )
    if (
        isinstance(n_spatial_neighbors, bool)
        or not isinstance(n_spatial_neighbors, numbers.Integral)
        or n_spatial_neighbors < 1
    ):
        raise SpatiomeInputError(
            f"n_spatial_neighbors must be a positive integer, got {n_spatial_neighbors!r}"
        )
    if spatial_kernel not in SPATIAL_KERNELS:
        raise SpatiomeInputError(
            f"spatial_kernel must be one of {SPATIAL_KERNELS}, got {spatial_kernel!r}"
        )
    if agf and neighbourhood_lambda is None:
        raise SpatiomeInputError(
            "agf=True augments the neighbourhood embedding: also pass neighbourhood_lambda "
            "(e.g. 0.8)"
        )
    if not isinstance(key_added, str) or not key_added:
        raise SpatiomeInputError(f"key_added must be a non-empty string, got {key_added!r}")
    if tsne_backend not in TSNE_BACKENDS:
        raise SpatiomeInputError(
            f"tsne_backend must be one of {TSNE_BACKENDS}, got {tsne_backend!r}"
        )


def _looks_like_counts(matrix) -> bool:
    try:
        check_counts(matrix)
    except SpatiomeInputError:
        return False
    return True


def _select_genes(adata: AnnData, n_top_genes: int | None, normalized: dict | None) -> str:
    """Mark ``adata.var["highly_variable"]`` and return the flavour used.

    The one gene selection of :func:`reduce` and the domain methods: Seurat v3 on the raw
    counts where :func:`spatiome.pp.normalize` (``method="log1p"``) kept them in a layer;
    the variance of the Pearson residuals after ``method="pearson"``; otherwise (no counts,
    or an ``adata.X`` normalized elsewhere) scanpy's ``seurat`` flavour on ``adata.X``.
    """
    if n_top_genes is not None and n_top_genes < 2:
        raise SpatiomeInputError(f"n_top_genes must be >= 2 or None, got {n_top_genes}")
    if n_top_genes is None or n_top_genes >= adata.n_vars:
        adata.var["highly_variable"] = np.ones(adata.n_vars, dtype=bool)
        return "all"
    method = (normalized or {}).get("method")
    layer = (normalized or {}).get("layer", "counts")
    if method == "pearson":
        return _select_pearson_genes(adata, int(n_top_genes), normalized, layer)
    if method == "log1p" and layer != "X" and layer in adata.layers:
        table = seurat_v3_table(adata.layers[layer], int(n_top_genes))
        for column in ("highly_variable", "highly_variable_rank", "means", "variances"):
            adata.var[column] = table[column].to_numpy()
        adata.var["variances_norm"] = table["variances_norm"].to_numpy(dtype=np.float64)
        adata.uns["hvg"] = {"flavor": "seurat_v3"}
        return "seurat_v3"
    sc.pp.highly_variable_genes(adata, flavor="seurat", n_top_genes=int(n_top_genes))
    return "seurat"


def _select_pearson_genes(adata: AnnData, n_top_genes: int, normalized: dict, layer: str) -> str:
    if layer == "X":
        # The counts were overwritten by the residuals; their variance is the very
        # ranking the pearson_residuals flavor computes.
        variance = np.var(np.asarray(adata.X), axis=0)
        top = np.argsort(-variance, kind="stable")[:n_top_genes]
        adata.var["highly_variable"] = np.isin(np.arange(adata.n_vars), top)
        return "pearson_residuals_variance"
    clip = normalized.get("clip")
    sc.experimental.pp.highly_variable_genes(
        adata,
        flavor="pearson_residuals",
        n_top_genes=n_top_genes,
        layer=layer,
        theta=float(normalized.get("theta", 100.0)),
        clip=clip if isinstance(clip, float) else None,
    )
    return "pearson_residuals"


def _neighbourhood_pca(
    adata: AnnData,
    coords: np.ndarray,
    neighbourhood_lambda: float,
    *,
    n_spatial_neighbors: int,
    kernel: str,
    agf: bool,
    n_pcs: int,
    random_state: int,
    key_added: str,
) -> dict:
    """PCA of the neighbourhood-augmented selected genes into ``adata.obsm[key_added]``."""
    mask = adata.var["highly_variable"].to_numpy()
    expression = get_matrix(adata)[:, mask]
    # One float64 copy: products of float32 sparse data with float64 vectors would convert
    # the data again at every ARPACK step.
    if sp.issparse(expression):
        expression = sp.csr_matrix(expression, dtype=np.float64)
    else:
        expression = np.asarray(expression, dtype=np.float64)
    k = int(min(n_spatial_neighbors, adata.n_obs - 1))
    indices, weights = _neighbour_weights(coords, k, kernel)
    mean_weights = _weight_matrix(indices, weights)
    if agf:
        k_gabor = int(min(2 * k, adata.n_obs - 1))
        gabor = _gabor_magnitude(expression, coords, k_gabor, kernel)
        block_weights = (
            np.sqrt(1.0 - neighbourhood_lambda),
            np.sqrt(neighbourhood_lambda / _HARMONIC_MU),
            np.sqrt(neighbourhood_lambda / (2.0 * _HARMONIC_MU)),
        )
    else:
        k_gabor, gabor = 0, None
        block_weights = (np.sqrt(1.0 - neighbourhood_lambda), np.sqrt(neighbourhood_lambda), 0.0)
    embedding, variance, total = _augmented_pca(
        expression, mean_weights, gabor, block_weights, n_pcs, random_state
    )
    adata.obsm[key_added] = embedding.astype(np.float32)
    uns_key = "pca" if key_added == "X_pca" else key_added
    if key_added == "X_pca":
        adata.varm.pop("PCs", None)
    adata.uns[uns_key] = {
        "params": {
            "zero_center": True,
            "mask_var": "highly_variable",
            "neighbourhood_lambda": neighbourhood_lambda,
        },
        "variance": variance,
        "variance_ratio": variance / total if total > 0 else np.zeros_like(variance),
    }
    return {
        "lambda": neighbourhood_lambda,
        "n_spatial_neighbors": k,
        "kernel": kernel,
        "agf": agf,
        "agf_n_neighbors": k_gabor,
        "block_weights": [float(w) for w in block_weights],
    }


def _neighbour_weights(coords: np.ndarray, k: int, kernel: str) -> tuple[np.ndarray, np.ndarray]:
    """Each spot's k nearest neighbours and their kernel weights (rows sum to 1)."""
    indices, distances = spatial_knn(coords, k)
    if kernel == "uniform":
        weights = np.ones_like(distances)
    else:
        # BANKSY's kNN_median: the bandwidth is the spot's median neighbour distance; spots
        # stacked on one position fall back to the farthest neighbour, then to equal weights.
        width = np.median(distances, axis=1)
        width = np.where(width > 0, width, distances.max(axis=1))
        width = np.where(width > 0, width, 1.0)
        weights = np.exp(-0.5 * (distances / width[:, None]) ** 2)
    weights /= weights.sum(axis=1, keepdims=True)
    return indices, weights


def _weight_matrix(indices: np.ndarray, weights: np.ndarray) -> sp.csr_matrix:
    n_obs, k = indices.shape
    # Copies: sorting the indices in place would reorder the caller's arrays too.
    matrix = sp.csr_matrix(
        (weights.ravel().copy(), indices.ravel().copy(), np.arange(0, n_obs * k + 1, k)),
        shape=(n_obs, n_obs),
    )
    matrix.sort_indices()
    return matrix


def _gene_blocks(n_obs: int, n_genes: int) -> list[slice]:
    size = max(1, _BLOCK_ENTRIES // max(n_obs, 1))
    return [slice(start, min(start + size, n_genes)) for start in range(0, n_genes, size)]


def _dense_columns(expression: sp.csr_matrix | np.ndarray, columns: slice) -> np.ndarray:
    block = expression[:, columns]
    return block.toarray() if sp.issparse(block) else np.asarray(block)


def _gabor_magnitude(
    expression: sp.csr_matrix | np.ndarray, coords: np.ndarray, k: int, kernel: str
) -> np.ndarray:
    """First azimuthal harmonic of each gene over each spot's neighbourhood (dense float64)."""
    indices, weights = _neighbour_weights(coords, k, kernel)
    offsets = coords[indices, :2] - coords[:, None, :2]
    length = np.hypot(offsets[..., 0], offsets[..., 1])
    # A neighbour at the spot's own position has no direction: it enters the mean only.
    safe = np.where(length > 0, length, 1.0)
    cosine = np.where(length > 0, offsets[..., 0] / safe, 0.0)
    sine = np.where(length > 0, offsets[..., 1] / safe, 0.0)
    mean_w = _weight_matrix(indices, weights)
    cos_w = _weight_matrix(indices, weights * cosine)
    sin_w = _weight_matrix(indices, weights * sine)
    phase_cos = (weights * cosine).sum(axis=1)
    phase_sin = (weights * sine).sum(axis=1)
    n_obs, n_genes = expression.shape
    out = np.empty((n_obs, n_genes), dtype=np.float64)
    for columns in _gene_blocks(n_obs, n_genes):
        block = _dense_columns(expression, columns)
        mean = mean_w @ block
        real = cos_w @ block - phase_cos[:, None] * mean
        imaginary = sin_w @ block - phase_sin[:, None] * mean
        out[:, columns] = np.hypot(real, imaginary)
    return out


def _augmented_pca(
    expression: sp.csr_matrix | np.ndarray,
    mean_weights: sp.csr_matrix,
    gabor: np.ndarray | None,
    block_weights: tuple[float, float, float],
    n_pcs: int,
    random_state: int,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Truncated PCA of ``[a X, b W X(, c G)]`` without forming ``W X``.

    Returns the scores (n_obs x n_pcs), the variance of each component and the total
    variance of the augmented features (both with ddof=1, as scanpy).
    """
    from sklearn.utils.extmath import svd_flip

    own_w, mean_w, gabor_w = block_weights
    n_obs, n_genes = expression.shape
    n_blocks = 2 if gabor is None else 3
    n_features = n_blocks * n_genes
    weights_t = mean_weights.T.tocsr()
    column_mass = np.asarray(weights_t.sum(axis=1)).ravel()  # W^T 1
    mean_own = np.asarray(expression.mean(axis=0)).ravel()
    mean_mean = np.asarray(expression.T @ column_mass).ravel() / n_obs
    means = [own_w * mean_own, mean_w * mean_mean]
    if gabor is not None:
        means.append(gabor_w * gabor.mean(axis=0))
    center = np.concatenate(means)

    def matmat(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64).reshape(n_features, -1)
        m = v.shape[1]
        both = expression @ np.hstack([own_w * v[:n_genes], mean_w * v[n_genes : 2 * n_genes]])
        out = both[:, :m] + mean_weights @ both[:, m:]
        if gabor is not None:
            out += gabor_w * (gabor @ v[2 * n_genes :])
        return out - center @ v

    def rmatmat(u: np.ndarray) -> np.ndarray:
        u = np.asarray(u, dtype=np.float64).reshape(n_obs, -1)
        m = u.shape[1]
        both = expression.T @ np.hstack([u, weights_t @ u])
        parts = [own_w * both[:, :m], mean_w * both[:, m:]]
        if gabor is not None:
            parts.append(gabor_w * (gabor.T @ u))
        return np.vstack(parts) - np.outer(center, u.sum(axis=0))

    operator = LinearOperator(
        shape=(n_obs, n_features),
        dtype=np.float64,
        matvec=lambda v: matmat(v).ravel(),
        rmatvec=lambda u: rmatmat(u).ravel(),
        matmat=matmat,
        rmatmat=rmatmat,
    )
    # The starting vector scikit-learn's ARPACK PCA draws, so the seed plays the same role.
    v0 = np.random.RandomState(random_state).uniform(-1, 1, min(n_obs, n_features))
    u, s, vt = svds(operator, k=n_pcs, v0=v0, solver="arpack")
    order = np.argsort(-s, kind="stable")
    u, s, vt = u[:, order], s[order], vt[order]
    u, vt = svd_flip(u, vt, u_based_decision=False)
    scores = u * s
    variance = s**2 / (n_obs - 1)
    total = (
        own_w**2 * _total_variance_own(expression)
        + mean_w**2 * _total_variance_mean(expression, mean_weights)
        + (0.0 if gabor is None else gabor_w**2 * float(gabor.var(axis=0, ddof=1).sum()))
    )
    return scores, variance, float(total)


def _total_variance_own(expression: sp.csr_matrix | np.ndarray) -> float:
    n_obs = expression.shape[0]
    if sp.issparse(expression):
        square_sum = float(np.dot(expression.data, expression.data))
    else:
        square_sum = float(np.square(expression).sum())
    mean = np.asarray(expression.mean(axis=0)).ravel()
    return (square_sum - n_obs * float(mean @ mean)) / (n_obs - 1)


def _total_variance_mean(expression: sp.csr_matrix | np.ndarray, weights: sp.csr_matrix) -> float:
    """Summed column variance (ddof=1) of ``W @ X``, formed a block of genes at a time."""
    n_obs, n_genes = expression.shape
    total = 0.0
    for columns in _gene_blocks(n_obs, n_genes):
        total += float(np.var(weights @ _dense_columns(expression, columns), axis=0, ddof=1).sum())
    return total


def _tsne(adata: AnnData, use_rep: str, backend: str, random_state: int) -> str:
    """t-SNE of ``adata.obsm[use_rep]`` into ``obsm["X_tsne"]``; returns the backend used."""
    # sklearn requires perplexity < n_samples; 30 is the usual value for larger data.
    perplexity = float(min(30.0, max(1.0, (adata.n_obs - 1) / 3)))
    if backend != "scanpy":
        try:
            from openTSNE import TSNE
        except ImportError:
            if backend == "opentsne":
                warnings.warn(
                    "tsne_backend='opentsne' but openTSNE is not installed "
                    "(pip install openTSNE): t-SNE is computed by scanpy instead",
                    UserWarning,
                    stacklevel=3,
                )
        else:
            points = np.asarray(adata.obsm[use_rep], dtype=np.float64)
            embedding = TSNE(perplexity=perplexity, random_state=random_state).fit(points)
            adata.obsm["X_tsne"] = np.asarray(embedding, dtype=np.float64)
            adata.uns["tsne"] = {
                "params": {
                    "perplexity": perplexity,
                    "use_rep": use_rep,
                    "random_state": int(random_state),
                    "backend": "opentsne",
                }
            }
            return "opentsne"
    sc.tl.tsne(adata, use_rep=use_rep, perplexity=perplexity, random_state=random_state)
    return "scanpy"


def covariance_pca(matrix, n_comps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Exact PCA of the rows of ``matrix`` from its feature x feature covariance.

    The covariance is accumulated over blocks of rows (each densified on its own, about 64
    MB), so a sparse matrix is never densified as a whole and the cost is one pass over
    the data plus an eigendecomposition of the ``p x p`` covariance: the right tool for
    many rows and up to a few thousand features (here ``p`` is at most
    ``_GRAM_MAX_FEATURES``), where ARPACK needs dozens of passes. Components are signed so
    that the largest absolute loading is positive.

    Parameters
    ----------
    matrix
        Rows x features, dense or sparse.
    n_comps
        Number of components (at most ``min(n_rows, n_features) - 1``).

    Returns
    -------
    scores, loadings, variance, total_variance
        Scores ``(n_rows, n_comps)`` (float32), loadings ``(n_features, n_comps)``, the
        variance of each component and the total variance of the features (``ddof=1``).

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> x = sp.random(500, 40, density=0.3, random_state=0, format="csr")
    >>> scores, loadings, variance, total = covariance_pca(x, 5)
    >>> reference = np.linalg.svd(x.toarray() - x.toarray().mean(0), compute_uv=False)
    >>> bool(np.allclose(variance, reference[:5] ** 2 / 499))
    True
    """
    import scipy.linalg

    n, p = matrix.shape
    gram = np.zeros((p, p), dtype=np.float64, order="F")
    sums = np.zeros(p, dtype=np.float64)
    rows = max(1, _GRAM_BLOCK_ENTRIES // max(p, 1))
    for start in range(0, n, rows):
        block = matrix[start : start + rows]
        block = block.toarray() if sp.issparse(block) else np.asarray(block)
        block = np.asarray(block, dtype=np.float64, order="F")
        # Upper triangle of block' block, accumulated in place.
        gram = scipy.linalg.blas.dsyrk(1.0, block, beta=1.0, c=gram, trans=1, overwrite_c=1)
        sums += block.sum(axis=0)
    gram = np.triu(gram) + np.triu(gram, 1).T
    mean = sums / n
    covariance = (gram - n * np.outer(mean, mean)) / (n - 1)
    values, vectors = scipy.linalg.eigh(covariance, subset_by_index=[p - n_comps, p - 1])
    values, vectors = values[::-1], vectors[:, ::-1]
    largest = np.abs(vectors).argmax(axis=0)
    vectors = vectors * np.sign(vectors[largest, np.arange(vectors.shape[1])])
    scores = np.asarray(matrix @ vectors) - mean @ vectors
    return (
        scores.astype(np.float32),
        vectors,
        np.maximum(values, 0.0),
        float(np.trace(covariance)),
    )


def _plain_pca(adata: AnnData, n_pcs: int, key_added: str, random_state: int) -> str:
    """PCA of the highly variable genes of ``adata.X``, stored as :func:`scanpy.pp.pca` does.

    Exact, from the covariance of the selected genes when there are at most
    ``_GRAM_MAX_FEATURES`` of them (one pass over the data); otherwise scanpy's ARPACK.
    Returns the solver used.
    """
    mask = np.asarray(adata.var["highly_variable"], dtype=bool)
    if mask.sum() > _GRAM_MAX_FEATURES:
        sc.pp.pca(
            adata, n_comps=n_pcs, mask_var="highly_variable", svd_solver="arpack",
            random_state=random_state, key_added=None if key_added == "X_pca" else key_added,
        )  # fmt: skip
        return "arpack"
    matrix = get_matrix(adata)
    selected = matrix if mask.all() else matrix[:, np.flatnonzero(mask)]
    scores, vectors, variance, total = covariance_pca(selected, n_pcs)
    del selected
    loadings = np.zeros((adata.n_vars, n_pcs), dtype=np.float64)
    loadings[mask] = vectors
    adata.obsm[key_added] = scores
    record = {
        "params": {"zero_center": True, "use_highly_variable": True, "mask_var": "highly_variable"},
        "variance": variance,
        "variance_ratio": variance / total if total > 0 else np.zeros_like(variance),
    }
    if key_added == "X_pca":
        adata.varm["PCs"] = loadings
        adata.uns["pca"] = record
    else:
        adata.uns[key_added] = {**record, "PCs": loadings}
    return "covariance"


def embed_umap(
    adata: AnnData, use_rep: str, *, max_spots: int | None, random_state: int, n_neighbors: int = 15
) -> dict:
    """UMAP into ``adata.obsm["X_umap"]``, fitted on at most ``max_spots`` spots.

    Up to ``max_spots`` spots (or with ``None``) this is :func:`scanpy.tl.umap` on the
    expression graph already in ``adata.obsp``. Above, UMAP is fitted on a random
    subsample of ``max_spots`` spots (its own kNN graph on ``use_rep``), and every other
    spot is placed at the mean position of its embedded neighbours in the full expression
    graph (``adata.obsp["connectivities"]``), spreading outwards round by round so that
    spots whose neighbours were all left out are placed from placed ones. The layout's cost
    stops growing with the data (UMAP is the only step of the pipeline whose time grows
    faster than linearly). A spot with no path to the subsample stays NaN.

    Returns
    -------
    dict
        ``{"fitted": spots fitted, "placed": spots placed from neighbours, "unplaced": n}``.

    Examples
    --------
    >>> import numpy as np, anndata as ad, scanpy as sc
    >>> rng = np.random.default_rng(0)
    >>> adata = ad.AnnData(rng.normal(size=(600, 10)).astype(np.float32))
    >>> adata.obsm["X_pca"] = adata.X[:, :5]
    >>> sc.pp.neighbors(adata, n_neighbors=10, use_rep="X_pca")
    >>> embed_umap(adata, "X_pca", max_spots=300, random_state=0)["fitted"]
    300
    >>> bool(np.isfinite(adata.obsm["X_umap"]).all())
    True
    """
    n = adata.n_obs
    if max_spots is None or n <= max_spots:
        sc.tl.umap(adata, random_state=random_state)
        return {"fitted": int(n), "placed": 0, "unplaced": 0}
    rng = np.random.default_rng(random_state)
    chosen = np.sort(rng.choice(n, size=int(max_spots), replace=False))
    sub = AnnData(obs={"spot": np.arange(chosen.size)})
    sub.obsm[use_rep] = np.asarray(adata.obsm[use_rep])[chosen]
    k = int(min(n_neighbors, chosen.size))
    sc.pp.neighbors(sub, n_neighbors=k, use_rep=use_rep, random_state=random_state)
    sc.tl.umap(sub, random_state=random_state)
    embedding = np.full((n, 2), np.nan, dtype=np.float32)
    embedding[chosen] = sub.obsm["X_umap"]
    graph = sp.csr_matrix(adata.obsp["connectivities"])
    graph = ((graph + graph.T) > 0).astype(np.float32)
    placed = np.zeros(n, dtype=bool)
    placed[chosen] = True
    for _ in range(_UMAP_PLACEMENT_ROUNDS):
        weight = graph @ placed.astype(np.float32)
        todo = ~placed & (weight > 0)
        if not todo.any():
            break
        known = np.where(placed[:, None], embedding, 0.0)
        position = (graph[todo] @ known) / weight[todo, None]
        embedding[todo] = position
        placed |= todo
    adata.obsm["X_umap"] = embedding
    adata.uns["umap"] = {"params": {"subsample": int(max_spots), "random_state": random_state}}
    return {
        "fitted": int(chosen.size),
        "placed": int(placed.sum() - chosen.size),
        "unplaced": int(n - placed.sum()),
    }
