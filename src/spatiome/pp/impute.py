"""Spatial smoothing of log-normalized expression, validated on held-out counts."""

from __future__ import annotations

import logging
import numbers

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from .._core.parallel import default_chunk_size, map_gene_chunks, resolve_n_jobs
from .._core.random import check_random_state
from .._core.validate import (
    SpatiomeInputError,
    check_adata,
    check_counts,
    check_finite,
    get_matrix,
    resolve_genes,
)
from ..graph import build_graph, row_normalize
from .normalize import normalize

logger = logging.getLogger("spatiome")

METHODS = ("graph",)
#: Smoothing strengths tried by ``alpha="auto"``.
AUTO_ALPHAS = (0.2, 0.4, 0.6, 0.8)
#: Within-gene correlation on the held-out entries above which imputation counts as a
#: clear improvement (the unimputed data score 0: every held-out entry reads zero).
MIN_CORRELATION = 0.1


def impute(
    adata: AnnData,
    *,
    layer: str | None = None,
    genes=None,
    method: str = "graph",
    n_neighbors: int = 6,
    alpha: float | str = 0.5,
    n_steps: int = 3,
    validate: bool = True,
    holdout_fraction: float = 0.1,
    spatial_key: str = "spatial",
    key_added: str = "imputed",
    random_state: int = 0,
    n_jobs: int = 1,
    copy: bool = False,
) -> AnnData | None:
    """Smooth log-normalized expression over the spatial neighbour graph, checked on held-out data.

    Each step mixes every spot's values with the mean of its spatial neighbours,
    ``X <- (1 - alpha) X + alpha W X``, with ``W`` the row-normalized symmetric kNN graph of
    the spots (:func:`spatiome.graph.build_graph`); ``n_steps`` steps spread information
    about ``n_steps`` neighbours away. The result goes to ``adata.layers[key_added]``;
    genes outside ``genes`` are copied unchanged.

    **Validation** (``validate=True``): ``holdout_fraction`` of the non-zero counts of the
    selected genes are drawn at random and set to zero in a copy of the raw counts, which is
    re-normalized as :func:`spatiome.pp.normalize` did (library size and log1p with the
    recorded ``target_sum``) and smoothed. On the held-out entries the imputed values are
    compared with the true log-normalized values (those of the full counts): the mean
    absolute error (``mae_imputed``; ``mae_unimputed`` for the masked data, where every
    held-out entry reads 0) and the Pearson correlation within genes (values centred per
    gene, so that differences between gene means do not count; ``corr_unimputed`` is 0, a
    constant carries no information). The error drops for any smoothing, pure noise
    included, since a held-out entry was non-zero and smoothing lifts it; only the
    correlation tells whether the neighbours predict the spot. Imputation counts as an
    improvement when that correlation reaches ``MIN_CORRELATION``; otherwise a warning is
    logged. ``zero_mean_imputed`` is the mean value smoothing gives to the entries with
    zero counts (0 before smoothing): the price paid in spurious expression.
    ``alpha="auto"`` tries each of ``AUTO_ALPHAS`` and keeps the one with the highest
    held-out correlation, or leaves the data unimputed (``alpha`` 0, the layer a copy of the
    input) when none reaches ``MIN_CORRELATION``. The same held-out entries choose and
    score ``alpha``, so the reported figures are slightly optimistic for the chosen one.

    **Memory**: smoothed values are mostly non-zero, so the layer (CSR float32 for sparse
    input, 8 bytes per stored value) approaches a dense matrix over the selected genes:
    about 0.8 GB for 50,000 spots x 2,000 genes. Pass ``genes`` (for instance the highly
    variable genes) to bound it. Work is done one chunk of genes at a time: a dense
    spots x chunk block of about 10 million values (80 MB) per worker, plus, when
    validating, a masked copy of the counts and its normalized copy.

    Parameters
    ----------
    adata
        Spots x genes with coordinates in ``adata.obsm[spatial_key]`` and log-normalized
        expression (run :func:`spatiome.pp.normalize` first).
    layer
        Matrix to smooth: ``None`` for ``adata.X``, else a layer name.
    genes
        Gene names to smooth (default: all genes).
    method
        ``"graph"``: diffusion over the spatial kNN graph.
    n_neighbors
        Spatial neighbours per spot in the graph (6 is the first ring of a Visium grid).
    alpha
        Share of the neighbour mean in each step, in [0, 1] (0 leaves the data as is), or
        ``"auto"`` to choose it by validation.
    n_steps
        Number of smoothing steps.
    validate
        Score the imputation on held-out counts (needs the counts layer and the log1p
        normalization recorded by :func:`spatiome.pp.normalize`).
    holdout_fraction
        Fraction of the non-zero counts held out, in (0, 0.5].
    spatial_key
        Coordinates in ``adata.obsm``.
    key_added
        Layer receiving the imputed matrix; ``adata.var[key_added]`` flags the smoothed
        genes.
    random_state
        Seed of the held-out draw.
    n_jobs
        Threads over gene chunks (1: serial, -1: all cores); results do not depend on it.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    AnnData or None
        The copy when ``copy=True``; otherwise None. Parameters, the ``alpha`` used and the
        validation figures (``n_masked``, ``corr_imputed``, ``corr_unimputed``,
        ``mae_imputed``, ``mae_unimputed``, ``n_zero``, ``zero_mean_imputed``,
        ``improved``, ``holdout_fraction``, the ``alpha`` they were measured at, which for
        ``alpha="auto"`` without improvement is the best one tried while the data are left
        at 0, and, for ``alpha="auto"``, ``alpha_grid``, ``corr_grid`` and ``mae_grid``) go
        to ``adata.uns["spatiome"]["impute"]`` (figures under ``"validation"``). Nothing is
        printed; a summary is logged to the ``spatiome`` logger.

    Examples
    --------
    >>> from spatiome.datasets import simulate_tissue
    >>> from spatiome.pp import impute, normalize
    >>> adata = simulate_tissue(n_spots=400, n_genes=40, random_state=0)
    >>> normalize(adata)
    >>> impute(adata, genes=adata.var_names[adata.var["is_spatial"]], alpha="auto")
    >>> adata.layers["imputed"].shape, int(adata.var["imputed"].sum())
    ((400, 40), 9)
    >>> result = adata.uns["spatiome"]["impute"]
    >>> result["alpha"] in (0.2, 0.4, 0.6, 0.8), result["validation"]["improved"]
    (True, True)
    """
    check_adata(adata)
    grid = _check_arguments(
        adata, method, n_neighbors, alpha, n_steps, validate, holdout_fraction, key_added
    )
    matrix = get_matrix(adata, layer)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    check_finite(matrix, where=where)
    record = adata.uns.get("spatiome", {}).get("normalize")
    if record is None and _looks_like_counts(matrix):
        raise SpatiomeInputError(
            f"{where} holds raw counts: impute smooths log-normalized expression; run "
            "spatiome.pp.normalize(adata) first"
        )
    positions = resolve_genes(adata, genes)
    if positions.size == 0:
        raise SpatiomeInputError("genes is empty: pass at least one gene name or None")
    if np.unique(positions).size != positions.size:
        raise SpatiomeInputError("genes has duplicated names: pass each gene once")
    connectivities, _, _ = build_graph(
        adata, method="knn", n_neighbors=n_neighbors, symmetric=True, spatial_key=spatial_key
    )
    weights = row_normalize(connectivities)
    workers = resolve_n_jobs(n_jobs)
    # Chunks do not depend on the number of workers, so neither do the sums over them.
    chunk_size = default_chunk_size(adata.n_obs, positions.size)

    validation = None
    chosen = None if grid else float(alpha)
    if validate:
        counts, target_sum = _validation_counts(adata, record)
        scores = _validate(
            counts,
            target_sum,
            positions,
            weights,
            grid or (float(alpha),),
            int(n_steps),
            float(holdout_fraction),
            random_state,
            chunk_size,
            workers,
        )
        validation, chosen = _summarize(scores, grid)
        validation["holdout_fraction"] = float(holdout_fraction)
        _log_validation(validation, chosen, bool(grid))

    adata = adata.copy() if copy else adata
    adata.layers[key_added] = _smooth_layer(
        matrix, positions, weights, chosen, int(n_steps), chunk_size, workers
    )
    flags = np.zeros(adata.n_vars, dtype=bool)
    flags[positions] = True
    adata.var[key_added] = flags
    result = {
        "method": method,
        "layer": "X" if layer is None else layer,
        "n_neighbors": int(n_neighbors),
        "alpha": float(chosen),
        "alpha_requested": "auto" if grid else float(alpha),
        "n_steps": int(n_steps),
        "n_genes": int(positions.size),
        "key_added": key_added,
        "random_state": int(random_state),
    }
    if validation is not None:
        result["validation"] = validation
    adata.uns.setdefault("spatiome", {})
    adata.uns["spatiome"]["impute"] = result
    return adata if copy else None


def _check_arguments(
    adata: AnnData,
    method: str,
    n_neighbors: int,
    alpha: float | str,
    n_steps: int,
    validate: bool,
    holdout_fraction: float,
    key_added: str,
) -> tuple[float, ...]:
    """Validate the options; return the alpha grid for ``alpha="auto"``, else ()."""
    if method not in METHODS:
        raise SpatiomeInputError(f"method must be one of {METHODS}, got {method!r}")
    if adata.n_obs < 3:
        raise SpatiomeInputError(f"impute needs at least 3 spots, got {adata.n_obs}")
    for name, value in (("n_neighbors", n_neighbors), ("n_steps", n_steps)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise SpatiomeInputError(f"{name} must be a positive integer, got {value!r}")
    if n_neighbors >= adata.n_obs:
        raise SpatiomeInputError(
            f"n_neighbors={n_neighbors} must be smaller than the number of spots ({adata.n_obs})"
        )
    if isinstance(alpha, str):
        if alpha != "auto":
            raise SpatiomeInputError(f"alpha must be a number in [0, 1] or 'auto', got {alpha!r}")
        if not validate:
            raise SpatiomeInputError(
                "alpha='auto' chooses alpha by the held-out validation: pass validate=True "
                "or a number for alpha"
            )
        grid = AUTO_ALPHAS
    elif isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 <= alpha <= 1:
        raise SpatiomeInputError(f"alpha must be a number in [0, 1] or 'auto', got {alpha!r}")
    else:
        grid = ()
    if isinstance(holdout_fraction, bool) or not isinstance(holdout_fraction, numbers.Real):
        raise SpatiomeInputError(
            f"holdout_fraction must be a number in (0, 0.5], got {holdout_fraction!r}"
        )
    if not 0 < holdout_fraction <= 0.5:
        raise SpatiomeInputError(
            f"holdout_fraction must be a number in (0, 0.5], got {holdout_fraction!r}"
        )
    if not isinstance(key_added, str) or not key_added:
        raise SpatiomeInputError(f"key_added must be a non-empty string, got {key_added!r}")
    return grid


def _looks_like_counts(matrix) -> bool:
    try:
        check_counts(matrix)
    except SpatiomeInputError:
        return False
    return True


def _validation_counts(adata: AnnData, record: dict | None) -> tuple[sp.csr_matrix, float]:
    """The raw counts and target sum that :func:`spatiome.pp.normalize` used."""
    if record is None or record.get("method") != "log1p":
        raise SpatiomeInputError(
            "validation re-normalizes held-out counts as spatiome.pp.normalize(adata) "
            "(method='log1p') did, but no such normalization is recorded in "
            "adata.uns['spatiome']['normalize']: run it first or pass validate=False"
        )
    layer = record.get("layer", "counts")
    if layer == "X":
        raise SpatiomeInputError(
            "the raw counts were normalized in place (recorded layer 'X'), so none are left to "
            "hold out: keep them in adata.layers['counts'] and normalize from there, or pass "
            "validate=False"
        )
    counts = get_matrix(adata, layer)
    check_counts(counts, where=f"adata.layers[{layer!r}]")
    return sp.csr_matrix(counts), float(record["target_sum"])


def _log_normalize(counts: sp.csr_matrix, target_sum: float) -> sp.csc_matrix:
    work = AnnData(counts)
    normalize(work, target_sum=target_sum, layer=None)
    return sp.csc_matrix(work.X)


def _hold_out(
    counts: sp.csr_matrix, positions: np.ndarray, fraction: float, random_state
) -> tuple[np.ndarray, np.ndarray, np.ndarray, sp.csr_matrix]:
    """Set a random ``fraction`` of the non-zero counts of some genes to zero.

    Parameters
    ----------
    counts
        Spots x genes raw counts (CSR); not modified.
    positions
        Column positions of the genes whose counts may be held out.
    fraction
        Share of those genes' non-zero entries to hold out (rounded, at least one).
    random_state
        Seed or numpy Generator of the draw.

    Returns
    -------
    rows, cols, held, masked
        Spot and gene positions of the held-out entries (sorted by spot, then gene), their
        counts, and a CSR copy of the counts without them.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> counts = sp.csr_matrix(np.array([[1, 0, 2], [0, 3, 4]]))
    >>> rows, cols, held, masked = _hold_out(counts, np.array([2]), 0.5, 0)
    >>> cols.tolist(), int(counts.sum() - masked.sum()) == int(held[0])
    ([2], True)
    """
    counts = sp.csr_matrix(counts)
    selected = np.zeros(counts.shape[1], dtype=bool)
    selected[positions] = True
    candidates = np.flatnonzero(selected[counts.indices] & (counts.data != 0))
    if candidates.size == 0:
        raise SpatiomeInputError(
            "the selected genes have no non-zero counts to hold out: choose other genes or "
            "pass validate=False"
        )
    n_masked = max(1, int(round(fraction * candidates.size)))
    rng = check_random_state(random_state)
    chosen = np.sort(rng.choice(candidates, size=n_masked, replace=False))
    row_of_entry = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    held = counts.data[chosen].copy()
    masked = counts.copy()
    masked.data[chosen] = 0
    masked.eliminate_zeros()
    return row_of_entry[chosen], counts.indices[chosen].astype(np.int64), held, masked


def _diffuse(values: np.ndarray, weights: sp.csr_matrix, alpha: float, n_steps: int) -> np.ndarray:
    out = values
    if alpha == 0:
        return out
    for _ in range(n_steps):
        out = (1.0 - alpha) * out + alpha * (weights @ out)
    return out


def _validate(
    counts: sp.csr_matrix,
    target_sum: float,
    positions: np.ndarray,
    weights: sp.csr_matrix,
    alphas: tuple[float, ...],
    n_steps: int,
    fraction: float,
    random_state,
    chunk_size: int,
    n_jobs: int,
) -> list[dict]:
    """Held-out figures for each alpha (see :func:`impute`)."""
    rows, cols, held, masked = _hold_out(counts, positions, fraction, random_state)
    masked_values = _log_normalize(masked, target_sum)
    # The true values by the same recipe, from the full library sizes (looking them up in a
    # normalized copy would cost a search per entry).
    library = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    true_values = np.log1p(held.astype(np.float64) * target_sum / library[rows])
    present = sp.csc_matrix(counts)
    # Held-out entries grouped by gene, in the order of ``positions``.
    rank = np.full(counts.shape[1], -1, dtype=np.int64)
    rank[positions] = np.arange(positions.size)
    entry_rank = rank[cols]
    order = np.argsort(entry_rank, kind="stable")
    bounds = np.searchsorted(entry_rank[order], np.arange(positions.size + 1))

    def chunk(start: int, stop: int) -> tuple[list[np.ndarray], np.ndarray, int]:
        genes = positions[start:stop]
        block = masked_values[:, genes].toarray().astype(np.float64)
        entries = order[bounds[start] : bounds[stop]]
        local = entry_rank[entries] - start
        nonzero = present[:, genes].toarray() != 0
        n_zero = int(nonzero.size - np.count_nonzero(nonzero))
        predicted, zero_sums = [], np.empty(len(alphas))
        for a, alpha in enumerate(alphas):
            smoothed = _diffuse(block, weights, alpha, n_steps)
            predicted.append(smoothed[rows[entries], local])
            zero_sums[a] = smoothed.sum() - smoothed[nonzero].sum()
        return predicted, zero_sums, n_zero

    parts = map_gene_chunks(chunk, positions.size, chunk_size=chunk_size, n_jobs=n_jobs)
    n_zero = int(sum(part[2] for part in parts))
    zero_sums = np.sum([part[1] for part in parts], axis=0)
    true_sorted = true_values[order]
    genes_sorted = entry_rank[order]
    scores = []
    for a, alpha in enumerate(alphas):
        predicted = np.concatenate([part[0][a] for part in parts])
        scores.append(
            {
                "alpha": float(alpha),
                "n_masked": int(rows.size),
                "corr_imputed": _within_gene_correlation(true_sorted, predicted, genes_sorted),
                "corr_unimputed": 0.0,
                "mae_imputed": float(np.mean(np.abs(predicted - true_sorted))),
                "mae_unimputed": float(np.mean(np.abs(true_sorted))),
                "n_zero": n_zero,
                "zero_mean_imputed": float(zero_sums[a] / n_zero) if n_zero else 0.0,
            }
        )
    return scores


def _within_gene_correlation(truth: np.ndarray, predicted: np.ndarray, genes: np.ndarray) -> float:
    """Pearson correlation after removing each gene's mean from both; 0 for a constant."""
    n_genes = int(genes.max()) + 1
    sizes = np.bincount(genes, minlength=n_genes)
    scale = 1.0 / np.maximum(sizes, 1)
    truth = truth - (np.bincount(genes, truth, minlength=n_genes) * scale)[genes]
    predicted = predicted - (np.bincount(genes, predicted, minlength=n_genes) * scale)[genes]
    denominator = float(np.sqrt((truth @ truth) * (predicted @ predicted)))
    # Centred values this small are rounding noise around a constant prediction.
    if denominator <= 1e-12 * max(float(truth @ truth), 1e-300):
        return 0.0
    return float(truth @ predicted) / denominator


def _summarize(scores: list[dict], grid: tuple[float, ...]) -> tuple[dict, float]:
    """The validation record and the alpha to use."""
    if grid:
        best = max(scores, key=lambda s: s["corr_imputed"])
        chosen = best["alpha"] if best["corr_imputed"] >= MIN_CORRELATION else 0.0
    else:
        best = scores[0]
        chosen = best["alpha"]
    validation = {key: value for key, value in best.items() if key != "alpha"}
    validation["alpha"] = best["alpha"]
    validation["improved"] = bool(best["corr_imputed"] >= MIN_CORRELATION)
    if grid:
        validation["alpha_grid"] = [s["alpha"] for s in scores]
        validation["corr_grid"] = [s["corr_imputed"] for s in scores]
        validation["mae_grid"] = [s["mae_imputed"] for s in scores]
    return validation, float(chosen)


def _log_validation(validation: dict, chosen: float, auto: bool) -> None:
    logger.info(
        "impute: held-out correlation %.3f (unimputed 0), MAE %.3f (unimputed %.3f), "
        "zero entries raised to %.3f on average, alpha %.2f",
        validation["corr_imputed"],
        validation["mae_imputed"],
        validation["mae_unimputed"],
        validation["zero_mean_imputed"],
        validation["alpha"],
    )
    if not validation["improved"]:
        if auto and chosen == 0:
            action = "the data are left unimputed (alpha=0)"
        else:
            action = "consider not imputing"

        logger.warning(
            "impute: smoothing does not clearly improve the held-out entries (within-gene "
            "correlation %.3f < %.2f): %s",
            validation["corr_imputed"],
            MIN_CORRELATION,
            action,
        )


def _smooth_layer(
    matrix: sp.csr_matrix | np.ndarray,
    positions: np.ndarray,
    weights: sp.csr_matrix,
    alpha: float,
    n_steps: int,
    chunk_size: int,
    n_jobs: int,
) -> sp.csr_matrix | np.ndarray:
    """The input with the selected genes smoothed (float32, sparse stays sparse)."""
    if not sp.issparse(matrix):
        out = np.array(matrix, dtype=np.float32, copy=True)

        def dense_chunk(start: int, stop: int) -> None:
            genes = positions[start:stop]
            block = out[:, genes].astype(np.float64)
            out[:, genes] = _diffuse(block, weights, alpha, n_steps)

        map_gene_chunks(dense_chunk, positions.size, chunk_size=chunk_size, n_jobs=n_jobs)
        return out
    columns = sp.csc_matrix(matrix, dtype=np.float32)

    def sparse_chunk(start: int, stop: int) -> sp.csc_matrix:
        block = columns[:, positions[start:stop]]
        if alpha == 0:
            return block
        smoothed = _diffuse(block.toarray().astype(np.float64), weights, alpha, n_steps)
        return sp.csc_matrix(smoothed.astype(np.float32))

    parts = map_gene_chunks(sparse_chunk, positions.size, chunk_size=chunk_size, n_jobs=n_jobs)
    others = np.setdiff1d(np.arange(matrix.shape[1]), positions)
    combined = sp.hstack([columns[:, others], *parts], format="csc")
    layout = np.argsort(np.concatenate([others, positions]), kind="stable")
    if not np.array_equal(layout, np.arange(layout.size)):
        combined = combined[:, layout]
    return sp.csr_matrix(combined)
