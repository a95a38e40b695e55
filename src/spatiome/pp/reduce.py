"""Gene selection, PCA, expression kNN graph and embeddings (computed by scanpy)."""

from __future__ import annotations

import numpy as np
import scanpy as sc
from anndata import AnnData

from .._core.validate import (
    SpatiomeInputError,
    check_adata,
    check_counts,
    check_finite,
    get_matrix,
)


def reduce(
    adata: AnnData,
    *,
    n_comps: int = 30,
    n_top_genes: int | None = 2000,
    umap: bool = True,
    tsne: bool = False,
    n_neighbors: int = 15,
    random_state: int = 0,
    copy: bool = False,
) -> AnnData | None:
    """Select variable genes, run PCA, build the expression kNN graph and embed the spots.

    Steps, all by scanpy:

    1. highly variable genes (:func:`scanpy.pp.highly_variable_genes`): ``flavor="seurat"``
       on the log-normalized ``adata.X``, or ``flavor="pearson_residuals"`` on the counts
       layer when :func:`spatiome.pp.normalize` used Pearson residuals; flags in
       ``adata.var["highly_variable"]`` (``seurat_v3`` is not used because it needs the
       optional scikit-misc package);
    2. PCA on those genes (:func:`scanpy.pp.pca`, ARPACK with implicit centering, so a sparse
       ``X`` is never densified) into ``adata.obsm["X_pca"]``; ``n_comps`` is clipped to
       ``min(n_obs, n_genes) - 1``;
    3. the kNN graph on ``X_pca`` (:func:`scanpy.pp.neighbors`) into
       ``adata.obsp["connectivities"]`` / ``["distances"]``;
    4. UMAP (:func:`scanpy.tl.umap`) into ``adata.obsm["X_umap"]`` and, optionally, t-SNE
       (:func:`scanpy.tl.tsne`) into ``adata.obsm["X_tsne"]``.

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
    n_neighbors
        Neighbours per spot in the expression graph (clipped to the number of spots).
    random_state
        Seed for PCA initialization, the graph approximation and the embeddings; the same
        seed gives the same result.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    AnnData or None
        The copy when ``copy=True``; otherwise None. Parameters actually used go to
        ``adata.uns["spatiome"]["reduce"]``.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp, anndata as ad
    >>> from spatiome.pp import normalize, reduce
    >>> rng = np.random.default_rng(0)
    >>> counts = sp.csr_matrix(rng.poisson(2.0, size=(60, 40)))
    >>> adata = ad.AnnData(counts.copy())
    >>> adata.layers["counts"] = counts
    >>> normalize(adata)
    >>> reduce(adata, n_comps=5, n_top_genes=20, umap=False)
    >>> adata.obsm["X_pca"].shape, int(adata.var["highly_variable"].sum())
    ((60, 5), 20)
    """
    check_adata(adata)
    if adata.n_obs < 3:
        raise SpatiomeInputError(f"reduce needs at least 3 spots, got {adata.n_obs}")
    if n_comps < 1 or n_neighbors < 2:
        raise SpatiomeInputError(
            f"n_comps must be >= 1 and n_neighbors >= 2, got {n_comps} and {n_neighbors}"
        )
    matrix = get_matrix(adata)
    check_finite(matrix, where="adata.X")
    normalized = adata.uns.get("spatiome", {}).get("normalize")
    if normalized is None and _looks_like_counts(matrix):
        raise SpatiomeInputError(
            "adata.X holds raw counts: run spatiome.pp.normalize(adata) before reduce"
        )
    random_state = 0 if random_state is None else int(random_state)
    adata = adata.copy() if copy else adata
    flavor = _select_genes(adata, n_top_genes, normalized)
    n_genes = int(adata.var["highly_variable"].sum())
    n_pcs = int(min(n_comps, adata.n_obs - 1, n_genes - 1))
    if n_pcs < 1:
        raise SpatiomeInputError(
            f"PCA needs at least 2 selected genes, got {n_genes}: raise n_top_genes"
        )
    sc.pp.pca(
        adata,
        n_comps=n_pcs,
        mask_var="highly_variable",
        svd_solver="arpack",
        random_state=random_state,
    )
    k = int(min(n_neighbors, adata.n_obs))
    sc.pp.neighbors(adata, n_neighbors=k, use_rep="X_pca", random_state=random_state)
    if umap:
        sc.tl.umap(adata, random_state=random_state)
    if tsne:
        # sklearn requires perplexity < n_samples; 30 is the usual value for larger data.
        perplexity = float(min(30.0, max(1.0, (adata.n_obs - 1) / 3)))
        sc.tl.tsne(adata, use_rep="X_pca", perplexity=perplexity, random_state=random_state)
    adata.uns.setdefault("spatiome", {})
    adata.uns["spatiome"]["reduce"] = {
        "n_comps": n_pcs,
        "n_top_genes": n_genes,
        "hvg_flavor": flavor,
        "n_neighbors": k,
        "umap": bool(umap),
        "tsne": bool(tsne),
        "random_state": int(random_state),
    }
    return adata if copy else None


def _looks_like_counts(matrix) -> bool:
    try:
        check_counts(matrix)
    except SpatiomeInputError:
        return False
    return True


def _select_genes(adata: AnnData, n_top_genes: int | None, normalized: dict | None) -> str:
    if n_top_genes is not None and n_top_genes < 2:
        raise SpatiomeInputError(f"n_top_genes must be >= 2 or None, got {n_top_genes}")
    if n_top_genes is None or n_top_genes >= adata.n_vars:
        adata.var["highly_variable"] = np.ones(adata.n_vars, dtype=bool)
        return "all"
    if normalized is not None and normalized.get("method") == "pearson":
        layer = normalized.get("layer", "counts")
        if layer == "X":
            # The counts were overwritten by the residuals; their variance is the very
            # ranking the pearson_residuals flavor computes.
            variance = np.var(np.asarray(adata.X), axis=0)
            top = np.argsort(-variance, kind="stable")[: int(n_top_genes)]
            adata.var["highly_variable"] = np.isin(np.arange(adata.n_vars), top)
            return "pearson_residuals_variance"
        clip = normalized.get("clip")
        sc.experimental.pp.highly_variable_genes(
            adata,
            flavor="pearson_residuals",
            n_top_genes=int(n_top_genes),
            layer=None if layer == "X" else layer,
            theta=float(normalized.get("theta", 100.0)),
            clip=clip if isinstance(clip, float) else None,
        )
        return "pearson_residuals"
    sc.pp.highly_variable_genes(adata, flavor="seurat", n_top_genes=int(n_top_genes))
    return "seurat"
