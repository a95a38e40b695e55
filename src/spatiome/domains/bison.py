"""BISON: Bayesian biclustering of spots and genes with discriminating-gene selection.

Model (counts ``x_ji`` of gene j in spot i, spot size factor ``s_i``, gene factor ``g_j``):

- every spot has a domain ``z_i`` in 1..K with a Potts prior on the spatial graph,
  ``P(z_i = k | rest) ~ (n_k + gamma) exp(f * #{neighbours of i in k})``;
- every gene has ``rho_j`` in 0..R: 0 marks a non-discriminating gene (probability
  ``pi``, ``pi ~ Beta(a0, b0)``) with ``x_ji ~ Poisson(s_i g_j mu0_j)``; a discriminating
  gene of group ``l`` has ``x_ji ~ Poisson(s_i g_j mu_{l z_i})``, with a Polya-urn prior on
  the groups;
- every rate has a ``Gamma(alpha0, beta0)`` prior and is integrated out.

The sampler is a collapsed Gibbs sampler on ``(pi, rho, z)``. A block of summed counts ``T``
with summed exposure ``E`` under a ``Gamma(a, b)`` prior has the marginal likelihood

    l(T, E | a, b) = a log b - log G(a) + log G(a + T) - (a + T) log(b + E)

(terms common to every choice dropped), so each label's conditional only needs block sums.
The exposure of a block factorises, ``sum_{j in l, i in k} s_i g_j = G_l S_k``, and the
sampler keeps these sufficient statistics up to date as labels move:

- ``A`` (R+1 x K): counts per gene group x domain; ``S`` (K): summed size factors per domain;
  ``G`` (R+1): summed gene factors per group;
- ``T`` (genes x K): counts of each gene per domain, changed along one row of the count
  matrix (CSR) when a spot moves;
- ``U`` (spots x R+1): counts of each spot per gene group, changed along one column (CSC)
  when a gene moves.

A gene update then costs O(R K), a spot update O(R K + degree), and a sweep
O((genes + spots) R K + edges) plus O(nnz) for the rows and columns of the labels that
moved. The counts are never densified.
"""

from __future__ import annotations

import logging
import math
import numbers

import numba
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy.optimize import linear_sum_assignment
from threadpoolctl import threadpool_limits

from .._core.near_empty import warn_near_empty
from .._core.progress import Progress
from .._core.random import check_random_state
from .._core.validate import (
    SpatiomeInputError,
    check_adata,
    check_counts,
    get_matrix,
    resolve_counts_layer,
    resolve_genes,
)
from ..graph import build_graph, default_method, row_normalize, symmetrize
from .cluster import _labels_by_size

logger = logging.getLogger("spatiome")

INITS = ("random", "kmeans")
ESTIMATES = ("mode", "last")
#: Pseudo-count added to every gene group's size in the Polya-urn prior, as in the original.
GROUP_PSEUDOCOUNT = 0.001
#: Genes set non-discriminating at the random initialisation, as in the original.
INITIAL_NON_DISCRIMINATING = 10


def bison(
    adata: AnnData,
    n_domains: int,
    n_gene_groups: int,
    *,
    layer: str | None = None,
    genes: str | list[str] | None = None,
    n_top_genes: int | None = 1000,
    min_spot_counts: float = 100,
    min_gene_fraction: float = 0.1,
    min_gene_max: float = 10,
    size_factors: str | np.ndarray | None = None,
    gene_factors: str | np.ndarray = "total",
    potts_beta: float = 1.0,
    graph_key: str = "spatial_connectivities",
    n_neighbors: int = 6,
    n_iterations: int = 2000,
    burn_in: int | None = None,
    init: str = "kmeans",
    estimate: str = "mode",
    gamma_shape: float = 1.0,
    gamma_rate: float = 1.0,
    pi_prior: tuple[float, float] = (1.0, 1.0),
    group_concentration: float = 1.0,
    domain_concentration: float = 1.0,
    random_state: int | np.random.Generator | None = 0,
    key_added: str = "bison",
    copy: bool = False,
) -> AnnData | None:
    """Spatial domains and discriminating gene groups by BISON (collapsed Gibbs sampling).

    Spots are clustered into ``n_domains`` domains and genes into ``n_gene_groups`` groups
    of discriminating genes plus one group of non-discriminating genes, with a Poisson-Gamma
    block model on the raw counts and a Potts prior that favours neighbouring spots in the
    same domain (see the module docstring for the model and the sufficient statistics).

    Preprocessing follows the original's tutorial: spots with fewer than
    ``min_spot_counts`` counts are left out; genes detected in at least
    ``min_gene_fraction`` of the remaining spots with a maximum count of at least
    ``min_gene_max`` are kept, and the ``n_top_genes`` with the largest biological
    variance among them (variance of log2-normalised expression above a running-median
    trend over the mean, as scran's ``modelGeneVar`` + ``getTopHVGs``) are modelled on
    their raw counts. Passing ``genes`` skips the gene filters and models exactly those
    genes (genes without counts in the kept spots are left out).

    Each iteration draws ``pi ~ Beta(a0 + q, b0 + p - q)`` (``q`` non-discriminating genes
    of ``p``), then updates every gene label in order, then every spot label in order, from
    their collapsed conditionals (rates integrated out). As in the original, K and R are
    fixed: a gene group or a domain that is down to one member keeps it. Draws after
    ``burn_in`` are aligned to the draw at the end of burn-in (Hungarian matching of the
    labels) and the per-spot and per-gene posterior modes are reported. Every sweep, with
    the log posterior, is reported as progress (``"spatiome"`` logger at INFO level).

    Parameters
    ----------
    adata
        Spots x genes with raw counts.
    n_domains
        Number of spot domains K (2 to the number of spots).
    n_gene_groups
        Number of groups R of discriminating genes (1 to the number of modelled genes).
    layer
        Layer holding the raw counts. ``None`` (default): ``adata.layers["counts"]`` when
        present, else ``adata.X`` when it holds counts.
    genes
        Genes to model; ``None`` selects them as described above.
    n_top_genes
        Number of highly variable genes to model (``None``: all genes that pass the filters).
    min_spot_counts
        Spots with fewer total counts (over all genes) are left out; spots without any
        count are always left out.
    min_gene_fraction, min_gene_max
        Gene filters: detected (count > 0) in at least this fraction of the kept spots, and
        at least this count in some spot.
    size_factors
        Spot size factors ``s_i``: ``None`` uses the library size (over all genes) divided
        by its mean over the kept spots; a column of ``adata.obs`` or an array over all
        spots can be given instead (must be positive).
    gene_factors
        Gene factors ``g_j``: ``"total"`` (default) uses ``sum_i x_ji / sum_i s_i``, so
        the rates measure fold changes relative to each gene's own level and genes of one
        group share a pattern rather than a level; ``"one"`` sets ``g_j = 1`` (the rates
        carry the level). A column of ``adata.var`` or an array over all genes can be given
        (must be positive). The original leaves this choice undocumented for real data.
    potts_beta
        Strength ``f`` of the Potts prior (0 turns the spatial prior off).
    graph_key
        Spatial graph in ``adata.obsp``; when absent, one is built with
        :func:`spatiome.graph.build_graph` (the 10x array grid, hex or square, when ``obs`` has
        ``array_row``/``array_col``, else ``n_neighbors`` nearest neighbours) without
        storing it. The graph is made symmetric and binary (every edge counts 1).
    n_neighbors
        Neighbours per spot of the kNN graph built when ``graph_key`` is absent.
    n_iterations
        Number of Gibbs sweeps.
    burn_in
        Sweeps discarded before the posterior summaries (default: half of
        ``n_iterations``).
    init
        ``"kmeans"`` (default): domains from k-means on 20 principal components of the
        log-normalised modelled genes; genes whose counts per initial domain fit one rate
        (Poisson deviance below the 99% chi-square quantile) start non-discriminating and
        the others are grouped by k-means on their log rate profiles over the domains.
        ``"random"``: the original's (uniform domains and gene groups, 10 genes
        non-discriminating); single-site Gibbs moves often stay in a poorer local mode
        from there (for instance two gene groups merged).
    estimate
        ``"mode"``: per-spot and per-gene posterior modes over the aligned draws after
        burn-in; ``"last"``: the last draw (what the original reports).
    gamma_shape, gamma_rate
        Gamma prior ``(alpha0, beta0)`` of every rate.
    pi_prior
        Beta prior ``(a0, b0)`` of the probability of a non-discriminating gene.
    group_concentration
        Concentration of the Polya urn over gene groups (``BETA`` in the original).
    domain_concentration
        Pseudo-count ``gamma`` added to every domain's size in the spot prior.
    random_state
        Seed or numpy Generator; the same seed gives the same chain.
    key_added
        Output names, see Returns.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    AnnData or None
        The copy when ``copy=True``; otherwise None and ``adata`` gets:

        - ``obs[key_added]``: categorical domains ``"0"``, ``"1"``, ... (``"0"`` the
          largest); NaN for spots that were left out;
        - ``var[f"{key_added}_gene_group"]``: 0 for a non-discriminating gene, 1..R for the
          group of a discriminating gene (1 the largest), -1 for genes not modelled;
        - ``var[f"{key_added}_prob_discriminating"]``: posterior probability that the gene
          is discriminating (the average over the draws after burn-in of its conditional
          probability, a Rao-Blackwellised estimate); NaN for genes not modelled;
        - ``uns["spatiome"][key_added]``: the parameters, the numbers of spots and genes
          modelled, ``log_posterior`` (the collapsed log joint density, up to a constant,
          after every sweep), ``pi`` (its draw at every sweep), ``spot_moves`` (spots that
          changed domain in every sweep), ``block_rates`` (posterior mean of each rate
          ``mu_lk`` given the reported labels, gene groups x domains) and
          ``spot_agreement`` (the share of the aligned draws after burn-in that agree with
          each spot's reported label, over the modelled spots).

    Raises
    ------
    SpatiomeInputError
        If the counts are not non-negative integers, the numbers of domains or groups are
        out of range, no spot or gene survives the filters, or coordinates are needed and
        missing.

    Notes
    -----
    Differences from the original implementation: the sufficient statistics are updated
    incrementally instead of being recomputed inside every conditional; the reported
    labels are posterior modes over aligned draws (``estimate="last"`` gives the
    original's last draw); the block rates are not sampled (the label updates are collapsed
    and never use them), their posterior means given the reported labels are stored
    instead; the default initialisation is data-driven (``init="random"`` is the
    original's); gene factors default to each gene's total (the original leaves them
    undocumented for real data).

    With ``gene_factors="total"`` a non-discriminating gene is fitted equally well by a
    discriminating group whose rates are flat across domains, so when ``n_gene_groups``
    exceeds the number of distinct domain patterns such a group can form and absorb the
    non-discriminating genes. ``prob_discriminating`` still ranks genes by how much they
    depend on the domains, but the hard split into group 0 and 1..R is then unreliable:
    lower ``n_gene_groups`` or pass known gene factors. Likewise, library-size spot factors
    absorb differences in total expression between domains. Counts are modelled as Poisson,
    so over-dispersed genes look more discriminating than they are.

    References
    ----------
    Zhu, Cassese, Vannucci, Guindani, Li (2025). BISON: Bi-clustering of spatial omics
    data with feature selection. Bioinformatics, btaf495 (arXiv:2502.13453).

    Examples
    --------
    >>> import spatiome as sm
    >>> from sklearn.metrics import adjusted_rand_score
    >>> from spatiome.domains.bison import bison
    >>> adata = sm.datasets.simulate_tissue(
    ...     n_spots=400, n_genes=60, n_domains=3, patterns=("domain",), frac_spatial=0.3,
    ...     effect_size=1.5, dispersion=0.0, random_state=0)
    >>> bison(adata, 3, 2, n_top_genes=None, min_gene_fraction=0.0, n_iterations=200)
    >>> adjusted_rand_score(adata.obs["domain"], adata.obs["bison"]) > 0.8
    True
    >>> prob = adata.var["bison_prob_discriminating"]
    >>> bool(prob[adata.var["is_spatial"]].mean() > prob[adata.var["pattern"] == "none"].mean())
    True
    """
    options = _check_options(
        adata, n_domains, n_gene_groups, n_top_genes, min_spot_counts, min_gene_fraction,
        min_gene_max, potts_beta, n_neighbors, n_iterations, burn_in, init, estimate,
        gamma_shape, gamma_rate, pi_prior, group_concentration, domain_concentration, key_added,
    )  # fmt: skip
    # Spots under min_spot_counts (and without counts) are left out of the model.
    ignore_below = max(float(min_spot_counts), 1.0)
    layer = resolve_counts_layer(adata, layer)
    warn_near_empty(adata, layer=layer, caller="domains.bison", ignore_below=ignore_below)
    counts = get_matrix(adata, layer)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    check_counts(counts, where=where)
    counts = sp.csr_matrix(counts, dtype=np.float64)

    spots, library = _select_spots(counts, min_spot_counts)
    model_counts = counts[spots]
    s = _size_factors(adata, size_factors, spots, library)
    gene_index = _select_genes(
        adata, model_counts, s, genes, n_top_genes, min_gene_fraction, min_gene_max
    )
    model_counts = sp.csr_matrix(model_counts[:, gene_index])
    g = _gene_factors(adata, gene_factors, gene_index, model_counts, s)
    n_spots, n_genes = model_counts.shape
    if n_domains > n_spots:
        raise SpatiomeInputError(
            f"n_domains={n_domains} is larger than the number of modelled spots ({n_spots}): "
            "lower n_domains or min_spot_counts"
        )
    if n_gene_groups > n_genes:
        raise SpatiomeInputError(
            f"n_gene_groups={n_gene_groups} is larger than the number of modelled genes "
            f"({n_genes}): lower n_gene_groups or pass more genes"
        )
    graph, graph_description = _spot_graph(adata, graph_key, n_neighbors, spots)
    rng = check_random_state(random_state)
    # The dense steps (PCA sketch, k-means) are small; BLAS and OpenMP threads on a busy
    # machine can make them slower by orders of magnitude, and the sampler is serial.
    with threadpool_limits(limits=1):
        z, rho = _initial_labels(
            model_counts, s, g, graph, n_domains, n_gene_groups, init, options, rng
        )
        with Progress("domains.bison", options["n_iterations"], "sweep") as progress:
            chain = _run_chain(model_counts, s, g, graph, z, rho, options, rng, progress)

    adata = adata.copy() if copy else adata
    _write(adata, chain, spots, gene_index, options, key_added, n_genes)
    adata.uns["spatiome"][key_added].update(
        {
            "layer": layer,
            "random_state": _describe_seed(random_state),
            "graph": graph_description,
        }
    )
    logger.info(
        "bison: %d spots x %d genes, %d domains, %d discriminating genes",
        n_spots,
        n_genes,
        adata.obs[key_added].nunique(),
        int((adata.var[f"{key_added}_gene_group"] > 0).sum()),
    )
    return adata if copy else None


# ---------------------------------------------------------------------------------------
# Input checks and preprocessing


def _check_options(
    adata, n_domains, n_gene_groups, n_top_genes, min_spot_counts, min_gene_fraction,
    min_gene_max, potts_beta, n_neighbors, n_iterations, burn_in, init, estimate,
    gamma_shape, gamma_rate, pi_prior, group_concentration, domain_concentration, key_added,
) -> dict:  # fmt: skip
    check_adata(adata)
    _check_int("n_domains", n_domains, 2, adata.n_obs)
    _check_int("n_gene_groups", n_gene_groups, 1, adata.n_vars)
    if n_top_genes is not None:
        _check_int("n_top_genes", n_top_genes, 1, 10**9)
    _check_int("n_iterations", n_iterations, 1, 10**9)
    if burn_in is None:
        burn_in = n_iterations // 2
    _check_int("burn_in", burn_in, 0, n_iterations - 1)
    _check_int("n_neighbors", n_neighbors, 1, 10**6)
    _check_real("min_spot_counts", min_spot_counts, 0.0, math.inf)
    _check_real("min_gene_fraction", min_gene_fraction, 0.0, 1.0)
    _check_real("min_gene_max", min_gene_max, 0.0, math.inf)
    _check_real("potts_beta", potts_beta, 0.0, math.inf)
    for name, value in (
        ("gamma_shape", gamma_shape),
        ("gamma_rate", gamma_rate),
        ("group_concentration", group_concentration),
        ("domain_concentration", domain_concentration),
    ):
        _check_real(name, value, 0.0, math.inf, positive=True)
    if len(pi_prior) != 2:
        raise SpatiomeInputError(f"pi_prior must be a pair (a0, b0), got {pi_prior!r}")
    for value in pi_prior:
        _check_real("pi_prior", value, 0.0, math.inf, positive=True)
    if init not in INITS:
        raise SpatiomeInputError(f"init must be one of {INITS}, got {init!r}")
    if estimate not in ESTIMATES:
        raise SpatiomeInputError(f"estimate must be one of {ESTIMATES}, got {estimate!r}")
    if not isinstance(key_added, str) or not key_added:
        raise SpatiomeInputError(f"key_added must be a non-empty string, got {key_added!r}")
    return {
        "n_domains": int(n_domains),
        "n_gene_groups": int(n_gene_groups),
        "n_top_genes": None if n_top_genes is None else int(n_top_genes),
        "min_spot_counts": float(min_spot_counts),
        "min_gene_fraction": float(min_gene_fraction),
        "min_gene_max": float(min_gene_max),
        "potts_beta": float(potts_beta),
        "n_neighbors": int(n_neighbors),
        "n_iterations": int(n_iterations),
        "burn_in": int(burn_in),
        "init": init,
        "estimate": estimate,
        "gamma_shape": float(gamma_shape),
        "gamma_rate": float(gamma_rate),
        "pi_prior": [float(pi_prior[0]), float(pi_prior[1])],
        "group_concentration": float(group_concentration),
        "domain_concentration": float(domain_concentration),
    }


def _check_int(name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SpatiomeInputError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise SpatiomeInputError(f"{name} must be between {low} and {high}, got {value}")


def _check_real(name: str, value, low: float, high: float, *, positive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SpatiomeInputError(f"{name} must be a number, got {value!r}")
    in_range = (low < value if positive else low <= value) and value <= high
    if not (math.isfinite(value) and in_range):
        bound = "positive" if positive else f"between {low:g} and {high:g}"
        raise SpatiomeInputError(f"{name} must be finite and {bound}, got {value}")


def _select_spots(counts: sp.csr_matrix, min_spot_counts: float) -> tuple[np.ndarray, np.ndarray]:
    library = np.asarray(counts.sum(axis=1)).ravel()
    spots = np.flatnonzero((library >= min_spot_counts) & (library > 0))
    if spots.size == 0:
        raise SpatiomeInputError(
            f"no spot has at least min_spot_counts={min_spot_counts:g} counts (largest total "
            f"{library.max():g}): lower min_spot_counts or check that the counts are raw"
        )
    return spots, library[spots]


def _size_factors(adata: AnnData, size_factors, spots: np.ndarray, library: np.ndarray):
    if size_factors is None:
        return library / library.mean()
    if isinstance(size_factors, str):
        if size_factors not in adata.obs.columns:
            raise SpatiomeInputError(
                f"size_factors={size_factors!r} is not a column of adata.obs: pass a column "
                "name, an array with one value per spot, or None"
            )
        values = pd.to_numeric(adata.obs[size_factors], errors="coerce").to_numpy(float)
    else:
        values = np.asarray(size_factors, dtype=np.float64).ravel()
        if values.shape[0] != adata.n_obs:
            raise SpatiomeInputError(
                f"size_factors has {values.shape[0]} values but adata has {adata.n_obs} spots"
            )
    values = values[spots]
    if not (np.isfinite(values).all() and (values > 0).all()):
        raise SpatiomeInputError("size_factors must be positive and finite for every spot")
    return values.astype(np.float64)


def _select_genes(
    adata: AnnData,
    counts: sp.csr_matrix,
    s: np.ndarray,
    genes,
    n_top_genes: int | None,
    min_gene_fraction: float,
    min_gene_max: float,
) -> np.ndarray:
    totals = np.asarray(counts.sum(axis=0)).ravel()
    if genes is not None:
        index = resolve_genes(adata, genes)
        index = np.unique(index)
        kept = index[totals[index] > 0]
        if kept.size == 0:
            raise SpatiomeInputError(
                "none of the genes passed in genes= has counts in the kept spots: pass "
                "expressed genes or lower min_spot_counts"
            )
        if kept.size < index.size:
            logger.info("bison: %d genes without counts left out", index.size - kept.size)
        return kept
    n_spots = counts.shape[0]
    detected = np.bincount(counts.indices[counts.data > 0], minlength=counts.shape[1])
    maximum = counts.max(axis=0).toarray().ravel()
    passing = np.flatnonzero(
        (detected >= min_gene_fraction * n_spots) & (maximum >= min_gene_max) & (totals > 0)
    )
    if passing.size == 0:
        raise SpatiomeInputError(
            f"no gene is detected in >= {min_gene_fraction:g} of the {n_spots} kept spots with "
            f"a maximum count >= {min_gene_max:g}: lower min_gene_fraction or min_gene_max, "
            "or pass genes="
        )
    if n_top_genes is None or passing.size <= n_top_genes:
        return passing
    variance = _biological_variance(counts[:, passing], s)
    top = np.sort(np.argsort(-variance, kind="stable")[:n_top_genes])
    return passing[top]


def _biological_variance(counts: sp.csr_matrix, s: np.ndarray) -> np.ndarray:
    """Variance of log2(x / s + 1) per gene minus a running-median trend over its mean."""
    logged = sp.csr_matrix(counts, dtype=np.float64, copy=True)
    logged.data /= np.repeat(s, np.diff(logged.indptr))
    np.log2(logged.data + 1.0, out=logged.data)
    n_spots = logged.shape[0]
    mean = np.asarray(logged.mean(axis=0)).ravel()
    mean_sq = np.asarray(logged.multiply(logged).sum(axis=0)).ravel() / n_spots
    variance = (mean_sq - mean**2) * n_spots / max(n_spots - 1, 1)
    order = np.argsort(mean, kind="stable")
    window = max(25, order.size // 50) | 1
    trend_sorted = (
        pd.Series(variance[order]).rolling(window, center=True, min_periods=1).median().to_numpy()
    )
    trend = np.empty_like(variance)
    trend[order] = trend_sorted
    return variance - trend


def _gene_factors(adata, gene_factors, gene_index, counts, s) -> np.ndarray:
    if isinstance(gene_factors, str) and gene_factors == "total":
        return np.asarray(counts.sum(axis=0)).ravel() / s.sum()
    if isinstance(gene_factors, str) and gene_factors == "one":
        return np.ones(gene_index.size)
    if isinstance(gene_factors, str):
        if gene_factors not in adata.var.columns:
            raise SpatiomeInputError(
                f"gene_factors={gene_factors!r} is neither 'total', 'one' nor a column of adata.var"
            )
        values = pd.to_numeric(adata.var[gene_factors], errors="coerce").to_numpy(float)
    else:
        values = np.asarray(gene_factors, dtype=np.float64).ravel()
        if values.shape[0] != adata.n_vars:
            raise SpatiomeInputError(
                f"gene_factors has {values.shape[0]} values but adata has {adata.n_vars} genes"
            )
    values = values[gene_index]
    if not (np.isfinite(values).all() and (values > 0).all()):
        raise SpatiomeInputError("gene_factors must be positive and finite for every gene")
    return values.astype(np.float64)


def _spot_graph(
    adata: AnnData, graph_key: str, n_neighbors: int, spots: np.ndarray
) -> tuple[sp.csr_matrix, str]:
    if graph_key in adata.obsp:
        graph = sp.csr_matrix(adata.obsp[graph_key], dtype=np.float64)
        description = f"obsp[{graph_key!r}]"
    else:
        method = default_method(adata)
        n_neighbors = min(n_neighbors, adata.n_obs - 1)
        if method == "knn" and n_neighbors < 1:
            raise SpatiomeInputError("a spatial graph needs at least 2 spots")
        graph, _, _ = build_graph(adata, method=method, n_neighbors=n_neighbors)
        description = "grid" if method == "grid" else f"knn (n_neighbors={n_neighbors})"
    graph = graph[spots][:, spots]
    graph = sp.csr_matrix(graph != 0, dtype=np.float64)
    graph.setdiag(0.0)
    graph.eliminate_zeros()
    return symmetrize(graph), description


def _describe_seed(random_state) -> int | str:
    if random_state is None:
        return 0
    if isinstance(random_state, np.random.Generator):
        return "numpy.random.Generator"
    return int(random_state)


# ---------------------------------------------------------------------------------------
# The chain


def _initial_labels(
    counts: sp.csr_matrix,
    s: np.ndarray,
    g: np.ndarray,
    graph: sp.csr_matrix,
    n_domains: int,
    n_groups: int,
    init: str,
    options: dict,
    rng,
) -> tuple[np.ndarray, np.ndarray]:
    n_spots, n_genes = counts.shape
    if init == "kmeans":
        z = _kmeans_domains(counts, s, n_domains, graph, rng)
        rho = _kmeans_gene_groups(counts, s, g, z, n_domains, n_groups, options, rng)
        return z, rho
    z = _balanced_uniform(n_spots, n_domains, rng)
    rho = _balanced_uniform(n_genes, n_groups, rng) + 1
    sizes = np.bincount(rho, minlength=n_groups + 1)
    for j in rng.permutation(n_genes)[: min(INITIAL_NON_DISCRIMINATING, n_genes)]:
        if sizes[rho[j]] > 1:
            sizes[rho[j]] -= 1
            rho[j] = 0
    return z, rho


def _balanced_uniform(n: int, k: int, rng) -> np.ndarray:
    """Uniform labels in 0..k-1 with every label used at least once."""
    labels = rng.integers(0, k, size=n)
    labels[rng.permutation(n)[:k]] = np.arange(k)
    return labels.astype(np.int64)


def _kmeans_domains(
    counts: sp.csr_matrix, s: np.ndarray, n_domains: int, graph: sp.csr_matrix, rng
) -> np.ndarray:
    logged = sp.csr_matrix(counts, dtype=np.float64, copy=True)
    logged.data /= np.repeat(s, np.diff(logged.indptr))
    np.log1p(logged.data, out=logged.data)
    seed = int(rng.integers(0, 2**31 - 1))
    n_comps = int(min(20, min(logged.shape) - 1))
    if n_comps >= 1:
        embedding = _principal_components(logged, n_comps, np.random.default_rng(seed))
    else:
        embedding = logged.toarray()
    # Averaging each spot with its spatial neighbours, as the Potts prior will, keeps noisy
    # spots from seeding spurious domains.
    embedding = 0.5 * (embedding + row_normalize(graph) @ embedding)
    labels = _kmeans(embedding, n_domains, seed)
    # Every domain must start non-empty; k-means can leave one empty on degenerate data.
    missing = np.setdiff1d(np.arange(n_domains), labels)
    if missing.size:
        labels[rng.permutation(labels.size)[: missing.size]] = missing
    return labels


def _principal_components(matrix: sp.csr_matrix, n_comps: int, rng) -> np.ndarray:
    """Scores on the top principal components by randomized SVD with implicit centering.

    Four power iterations over a sketch of ``n_comps + 10`` columns: about 20 passes over the
    non-zero values, against hundreds for ARPACK, and the counts are never densified.
    """
    mean = np.asarray(matrix.mean(axis=0)).ravel()
    transposed = matrix.T.tocsr()

    def times(right):  # (X - 1 mean') @ right
        return matrix @ right - mean @ right

    def transpose_times(left):  # (X - 1 mean')' @ left
        return transposed @ left - np.outer(mean, left.sum(axis=0))

    sketch = n_comps + 10
    basis = np.linalg.qr(times(rng.standard_normal((matrix.shape[1], sketch))))[0]
    for _ in range(4):
        basis = np.linalg.qr(transpose_times(basis))[0]
        basis = np.linalg.qr(times(basis))[0]
    small = transpose_times(basis).T
    left, values, _ = np.linalg.svd(small, full_matrices=False)
    return (basis @ left[:, :n_comps]) * values[:n_comps]


def _kmeans(points: np.ndarray, n_clusters: int, seed: int) -> np.ndarray:
    """k-means labels (scikit-learn, 10 starts)."""
    from sklearn.cluster import KMeans

    labels = KMeans(n_clusters, n_init=10, random_state=seed).fit_predict(points)
    return labels.astype(np.int64)


def _kmeans_gene_groups(counts, s, g, z, n_domains, n_groups, options, rng) -> np.ndarray:
    """Initial gene labels from the initial domains.

    Genes whose counts per domain are consistent with one rate (Poisson deviance below the
    99% quantile of chi-square with K - 1 degrees of freedom) start non-discriminating; the
    others are split into groups by k-means on their log rate profiles over the domains.
    """
    from scipy.stats import chi2

    n_genes = counts.shape[1]
    one_hot = sp.csr_matrix((np.ones(z.size), (np.arange(z.size), z)), shape=(z.size, n_domains))
    per_domain = (counts.T @ one_hot).toarray()
    domain_exposure = np.bincount(z, weights=s, minlength=n_domains)
    expected = np.outer(per_domain.sum(axis=1), domain_exposure / domain_exposure.sum())
    ratio = np.divide(per_domain, expected, out=np.ones_like(per_domain), where=per_domain > 0)
    deviance = 2.0 * (per_domain * np.log(ratio)).sum(axis=1)
    flat = deviance < chi2.ppf(0.99, n_domains - 1)
    profile = np.log(
        (options["gamma_shape"] + per_domain)
        / (options["gamma_rate"] + np.outer(g, domain_exposure))
    )
    rho = np.zeros(n_genes, dtype=np.int64)
    candidates = np.flatnonzero(~flat)
    if candidates.size < n_groups:
        # Too few genes look discriminating: take the most domain-dependent ones.
        candidates = np.argsort(-deviance, kind="stable")[:n_groups]
    if n_groups == 1:
        rho[candidates] = 1
        return rho
    seed = int(rng.integers(0, 2**31 - 1))
    labels = _kmeans(profile[candidates], n_groups, seed)
    missing = np.setdiff1d(np.arange(n_groups), labels)
    if missing.size:
        labels[rng.permutation(labels.size)[: missing.size]] = missing
    rho[candidates] = labels + 1
    return rho


def _run_chain(counts, s, g, graph, z, rho, options, rng, progress: Progress | None = None) -> dict:
    """The Gibbs sampler; ``progress`` (a :class:`Progress`) is updated after every sweep."""
    n_spots, n_genes = counts.shape
    n_domains, n_groups = options["n_domains"], options["n_gene_groups"]
    n_iterations, burn_in = options["n_iterations"], options["burn_in"]
    alpha0, beta0 = options["gamma_shape"], options["gamma_rate"]
    a0, b0 = options["pi_prior"]
    csr = sp.csr_matrix(counts)
    csr.sort_indices()
    csc = csr.tocsc()
    csc.sort_indices()
    row_values = np.rint(csr.data).astype(np.int64)
    col_values = np.rint(csc.data).astype(np.int64)
    gene_total = np.asarray(csc.sum(axis=0)).ravel().round().astype(np.int64)
    indptr = graph.indptr.astype(np.int64)
    indices = graph.indices.astype(np.int64)
    weights = graph.data.astype(np.float64)

    T, U, A, n_cluster, n_group = _statistics(csr, csc, z, rho, n_domains, n_groups)
    refresh = _refresh_sweeps(burn_in) if options["init"] == "kmeans" else ()

    log_posterior = np.empty(n_iterations)
    pi_trace = np.empty(n_iterations)
    moves = np.empty(n_iterations, dtype=np.int64)
    prob_dg = np.zeros(n_genes)
    spot_votes = np.zeros((n_spots, n_domains), dtype=np.int64)
    gene_votes = np.zeros((n_genes, n_groups + 1), dtype=np.int64)
    reference_z = reference_rho = None
    spot_rows = np.arange(n_spots)
    gene_rows = np.arange(n_genes)
    for iteration in range(n_iterations):
        # Recomputed every sweep so that float round-off cannot accumulate in the sums.
        S = np.bincount(z, weights=s, minlength=n_domains)
        G = np.bincount(rho, weights=g, minlength=n_groups + 1)
        q = int(n_group[0])
        pi = rng.beta(a0 + q, b0 + n_genes - q)
        pi = min(max(pi, 1e-300), 1.0 - 1e-16)
        pi_trace[iteration] = pi
        uniforms = rng.random(n_genes + n_spots)
        keep = iteration >= burn_in
        _gene_sweep(
            csc.indptr, csc.indices, col_values, gene_total, g, T, U, A, S, G, n_group, rho,
            math.log(pi), math.log1p(-pi), alpha0, beta0, options["group_concentration"],
            uniforms[:n_genes], prob_dg, keep,
        )  # fmt: skip
        moves[iteration] = _spot_sweep(
            csr.indptr, csr.indices, row_values, s, indptr, indices, weights, T, U, A, S, G,
            n_cluster, z, alpha0, beta0, options["domain_concentration"],
            options["potts_beta"], uniforms[n_genes:],
        )  # fmt: skip
        log_posterior[iteration] = _log_joint(
            A, S, G, n_cluster, n_group, z, rho, gene_total, g, indptr, indices, weights,
            pi, alpha0, beta0, a0, b0, options["domain_concentration"],
            options["potts_beta"],
        )  # fmt: skip
        if iteration in refresh:
            # Single-site moves rarely split two merged gene groups, so the k-means
            # grouping is redone on the improved domains and kept when it scores higher.
            candidate = _kmeans_gene_groups(csr, s, g, z, n_domains, n_groups, options, rng)
            stats = _statistics(csr, csc, z, candidate, n_domains, n_groups)
            G_candidate = np.bincount(candidate, weights=g, minlength=n_groups + 1)
            score = _log_joint(
                stats[2], S, G_candidate, stats[3], stats[4], z, candidate, gene_total, g,
                indptr, indices, weights, pi, alpha0, beta0, a0, b0,
                options["domain_concentration"], options["potts_beta"],
            )  # fmt: skip
            if score > log_posterior[iteration]:
                rho[:] = candidate
                T, U, A, n_cluster, n_group = stats
                log_posterior[iteration] = score
        if keep:
            if reference_z is None:
                reference_z, reference_rho = z.copy(), rho.copy()
            spot_map = _align(reference_z, z, n_domains)
            spot_votes[spot_rows, spot_map[z]] += 1
            group_map = np.concatenate([[0], 1 + _align(reference_rho - 1, rho - 1, n_groups)])
            gene_votes[gene_rows, group_map[rho]] += 1
        if progress is not None:
            phase = "" if keep else "burn-in, "
            progress.update(iteration + 1, f"{phase}log posterior {log_posterior[iteration]:.6g}")

    n_kept = n_iterations - burn_in
    if options["estimate"] == "mode":
        z_hat = spot_votes.argmax(axis=1)
        rho_hat = gene_votes.argmax(axis=1)
    else:
        z_hat = _align(reference_z, z, n_domains)[z]
        rho_hat = np.concatenate([[0], 1 + _align(reference_rho - 1, rho - 1, n_groups)])[rho]
    agreement = spot_votes[spot_rows, z_hat] / n_kept
    return {
        "z": z_hat,
        "rho": rho_hat,
        "prob_discriminating": prob_dg / n_kept,
        "log_posterior": log_posterior,
        "pi": pi_trace,
        "spot_moves": moves,
        "spot_agreement": agreement,
        "counts": csr,
        "s": s,
        "g": g,
    }


def _statistics(csr, csc, z, rho, n_domains, n_groups):
    """Sufficient statistics T, U, A and the domain and group sizes, from scratch."""
    n_spots, n_genes = csr.shape
    domain_one_hot = sp.csr_matrix(
        (np.ones(n_spots), (np.arange(n_spots), z)), shape=(n_spots, n_domains)
    )
    group_one_hot = sp.csr_matrix(
        (np.ones(n_genes), (np.arange(n_genes), rho)), shape=(n_genes, n_groups + 1)
    )
    T = np.rint((csc.T @ domain_one_hot).toarray()).astype(np.int64)
    U = np.rint((csr @ group_one_hot).toarray()).astype(np.int64)
    A = np.rint(group_one_hot.T @ T).astype(np.int64)
    n_cluster = np.bincount(z, minlength=n_domains).astype(np.int64)
    n_group = np.bincount(rho, minlength=n_groups + 1).astype(np.int64)
    return T, U, A, n_cluster, n_group


def _refresh_sweeps(burn_in: int) -> frozenset[int]:
    """Sweeps 4, 9, 19, 39, ... in the first half of burn-in."""
    sweeps, step = [], 5
    while step <= burn_in // 2:
        sweeps.append(step - 1)
        step *= 2
    return frozenset(sweeps)


def _align(reference: np.ndarray, labels: np.ndarray, n_labels: int) -> np.ndarray:
    """Permutation taking ``labels`` to the matching labels of ``reference`` (< 0: ignored)."""
    both = (reference >= 0) & (labels >= 0)
    confusion = np.bincount(
        reference[both] * n_labels + labels[both], minlength=n_labels * n_labels
    ).reshape(n_labels, n_labels)
    rows, cols = linear_sum_assignment(-confusion)
    mapping = np.empty(n_labels, dtype=np.int64)
    mapping[cols] = rows
    return mapping


def _write(adata, chain, spots, gene_index, options, key_added, n_genes) -> None:
    z_hat, rho_hat = chain["z"], chain["rho"]
    labels = _labels_by_size(z_hat)
    codes = np.full(adata.n_obs, -1, dtype=np.int64)
    codes[spots] = labels.codes
    adata.obs[key_added] = pd.Categorical.from_codes(codes, categories=labels.categories)

    # Gene groups 1..R ordered by decreasing size; 0 stays the non-discriminating genes.
    sizes = np.bincount(rho_hat, minlength=options["n_gene_groups"] + 1)[1:]
    order = np.argsort(-sizes, kind="stable")
    rank = np.zeros(options["n_gene_groups"] + 1, dtype=np.int64)
    rank[order + 1] = np.arange(1, order.size + 1)
    groups = np.full(adata.n_vars, -1, dtype=np.int64)
    groups[gene_index] = rank[rho_hat]
    prob = np.full(adata.n_vars, np.nan)
    prob[gene_index] = chain["prob_discriminating"]
    adata.var[f"{key_added}_gene_group"] = groups
    adata.var[f"{key_added}_prob_discriminating"] = prob

    counts, s, g = chain["counts"], chain["s"], chain["g"]
    domain_codes = labels.codes.astype(np.int64)
    n_domains_found = len(labels.categories)
    group_codes = rank[rho_hat]
    n_groups = options["n_gene_groups"]
    block_counts = np.zeros((n_groups + 1, n_domains_found))
    spot_by_group = counts @ sp.csr_matrix(
        (np.ones(n_genes), (np.arange(n_genes), group_codes)), shape=(n_genes, n_groups + 1)
    )
    for k in range(n_domains_found):
        block_counts[:, k] = np.asarray(spot_by_group[domain_codes == k].sum(axis=0)).ravel()
    exposure = np.outer(
        np.bincount(group_codes, weights=g, minlength=n_groups + 1),
        np.bincount(domain_codes, weights=s, minlength=n_domains_found),
    )
    rates = (options["gamma_shape"] + block_counts) / (options["gamma_rate"] + exposure)
    block_rates = pd.DataFrame(
        rates[1:],
        index=[str(l) for l in range(1, n_groups + 1)],  # noqa: E741
        columns=list(labels.categories),
    )
    adata.uns.setdefault("spatiome", {})
    adata.uns["spatiome"][key_added] = {
        "method": "bison",
        **options,
        "n_spots_modelled": int(spots.size),
        "n_genes_modelled": int(gene_index.size),
        "n_domains_found": int(n_domains_found),
        "log_posterior": chain["log_posterior"],
        "pi": chain["pi"],
        "spot_moves": chain["spot_moves"],
        "spot_agreement": chain["spot_agreement"],
        "block_rates": block_rates,
    }


# ---------------------------------------------------------------------------------------
# Numba kernels


@numba.njit(cache=True, inline="always")
def _marginal(total, exposure, shape, rate):
    """Poisson-Gamma log marginal of a block (terms shared by all choices dropped)."""
    return (
        shape * math.log(rate)
        - math.lgamma(shape)
        + math.lgamma(shape + total)
        - (shape + total) * math.log(rate + exposure)
    )


@numba.njit(cache=True, inline="always")
def _draw(log_weights, n, u):
    """Index drawn from softmax(log_weights[:n]) with the uniform ``u``; and P(index 0)."""
    top = log_weights[0]
    for k in range(1, n):
        if log_weights[k] > top:
            top = log_weights[k]
    total = 0.0
    for k in range(n):
        log_weights[k] = math.exp(log_weights[k] - top)
        total += log_weights[k]
    target = u * total
    chosen = n - 1
    running = 0.0
    for k in range(n):
        running += log_weights[k]
        if target < running:
            chosen = k
            break
    return chosen, log_weights[0] / total


@numba.njit(cache=True, nogil=True)
def _gene_log_weights(
    j, T, gene_total, g, A, S, G, n_group, log_pi, log_1m_pi, alpha0, beta0, concentration, out
):
    """Log conditional weights of gene j over 0..R with gene j removed from the statistics."""
    n_genes, n_domains = T.shape
    n_groups = A.shape[0] - 1
    s_total = 0.0
    for k in range(n_domains):
        s_total += S[k]
    out[0] = log_pi + _marginal(gene_total[j], g[j] * s_total, alpha0, beta0)
    n_discriminating = n_genes - 1 - n_group[0]
    log_norm = math.log(n_discriminating + concentration)
    for l in range(1, n_groups + 1):  # noqa: E741
        value = log_1m_pi + math.log(n_group[l] + GROUP_PSEUDOCOUNT) - log_norm
        for k in range(n_domains):
            value += _marginal(T[j, k], g[j] * S[k], alpha0 + A[l, k], beta0 + G[l] * S[k])
        out[l] = value


@numba.njit(cache=True, nogil=True)
def _gene_sweep(
    col_ptr, col_idx, col_val, gene_total, g, T, U, A, S, G, n_group, rho,
    log_pi, log_1m_pi, alpha0, beta0, concentration, uniforms, prob_dg, keep,
):  # fmt: skip
    n_genes, n_domains = T.shape
    n_groups = A.shape[0] - 1
    log_weights = np.empty(n_groups + 1)
    for j in range(n_genes):
        old = rho[j]
        if old > 0 and n_group[old] == 1:
            # The original never lets a gene group empty: its last member stays.
            if keep:
                prob_dg[j] += 1.0
            continue
        n_group[old] -= 1
        G[old] -= g[j]
        for k in range(n_domains):
            A[old, k] -= T[j, k]
        _gene_log_weights(
            j, T, gene_total, g, A, S, G, n_group, log_pi, log_1m_pi, alpha0, beta0,
            concentration, log_weights,
        )  # fmt: skip
        new, p_zero = _draw(log_weights, n_groups + 1, uniforms[j])
        if keep:
            prob_dg[j] += 1.0 - p_zero
        n_group[new] += 1
        G[new] += g[j]
        for k in range(n_domains):
            A[new, k] += T[j, k]
        if new != old:
            rho[j] = new
            for e in range(col_ptr[j], col_ptr[j + 1]):
                U[col_idx[e], old] -= col_val[e]
                U[col_idx[e], new] += col_val[e]


@numba.njit(cache=True, nogil=True)
def _spot_log_weights(
    i, U, s, A, S, G, n_cluster, neighbour_weight, alpha0, beta0, concentration, potts, out
):
    """Log conditional weights of spot i over the domains with spot i removed."""
    n_domains = S.shape[0]
    n_groups = A.shape[0] - 1
    for k in range(n_domains):
        value = math.log(n_cluster[k] + concentration) + potts * neighbour_weight[k]
        for l in range(1, n_groups + 1):  # noqa: E741
            value += _marginal(U[i, l], s[i] * G[l], alpha0 + A[l, k], beta0 + G[l] * S[k])
        out[k] = value


@numba.njit(cache=True, nogil=True)
def _spot_sweep(
    row_ptr, row_idx, row_val, s, nb_ptr, nb_idx, nb_w, T, U, A, S, G, n_cluster, z,
    alpha0, beta0, concentration, potts, uniforms,
):  # fmt: skip
    n_spots = z.shape[0]
    n_domains = S.shape[0]
    n_groups = A.shape[0] - 1
    log_weights = np.empty(n_domains)
    neighbour_weight = np.empty(n_domains)
    moved = 0
    for i in range(n_spots):
        old = z[i]
        if n_cluster[old] == 1:
            continue
        n_cluster[old] -= 1
        S[old] -= s[i]
        for l in range(n_groups + 1):  # noqa: E741
            A[l, old] -= U[i, l]
        neighbour_weight[:] = 0.0
        for e in range(nb_ptr[i], nb_ptr[i + 1]):
            neighbour_weight[z[nb_idx[e]]] += nb_w[e]
        _spot_log_weights(
            i, U, s, A, S, G, n_cluster, neighbour_weight, alpha0, beta0, concentration, potts,
            log_weights,
        )  # fmt: skip
        new, _ = _draw(log_weights, n_domains, uniforms[i])
        n_cluster[new] += 1
        S[new] += s[i]
        for l in range(n_groups + 1):  # noqa: E741
            A[l, new] += U[i, l]
        if new != old:
            z[i] = new
            moved += 1
            for e in range(row_ptr[i], row_ptr[i + 1]):
                T[row_idx[e], old] -= row_val[e]
                T[row_idx[e], new] += row_val[e]
    return moved


@numba.njit(cache=True, nogil=True)
def _log_joint(
    A, S, G, n_cluster, n_group, z, rho, gene_total, g, nb_ptr, nb_idx, nb_w, pi,
    alpha0, beta0, a0, b0, domain_concentration, potts,
):  # fmt: skip
    """Collapsed log joint of (pi, rho, z) and the counts, up to an additive constant."""
    n_groups = A.shape[0] - 1
    n_domains = S.shape[0]
    s_total = 0.0
    for k in range(n_domains):
        s_total += S[k]
    value = 0.0
    for l in range(1, n_groups + 1):  # noqa: E741
        for k in range(n_domains):
            value += _marginal(A[l, k], G[l] * S[k], alpha0, beta0)
    for j in range(rho.shape[0]):
        if rho[j] == 0:
            value += _marginal(gene_total[j], g[j] * s_total, alpha0, beta0)
    for k in range(n_domains):
        value += math.lgamma(n_cluster[k] + domain_concentration)
    agree = 0.0
    for i in range(z.shape[0]):
        for e in range(nb_ptr[i], nb_ptr[i + 1]):
            if z[nb_idx[e]] == z[i]:
                agree += nb_w[e]
    value += potts * agree / 2.0
    n_discriminating = rho.shape[0] - n_group[0]
    for l in range(1, n_groups + 1):  # noqa: E741
        value += math.lgamma(n_group[l] + GROUP_PSEUDOCOUNT)
    value -= math.lgamma(n_discriminating + n_groups * GROUP_PSEUDOCOUNT)
    value += (a0 - 1.0 + n_group[0]) * math.log(pi)
    value += (b0 - 1.0 + n_discriminating) * math.log1p(-pi)
    return value
