"""Pseudo-spots with known cell-type fractions, built from a labelled single-cell reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy.spatial import cKDTree

from .._core.random import check_random_state
from .._core.validate import (
    SpatiomeInputError,
    check_adata,
    check_counts,
    get_matrix,
    get_spatial,
    resolve_counts_layer,
)

TRUTH_KEY = "cell_type_proportions"


def split_reference(
    adata_sc: AnnData,
    labels: str = "cell_type",
    *,
    fraction: float = 0.5,
    random_state: int | np.random.Generator | None = 0,
) -> tuple[AnnData, AnnData]:
    """Split a labelled reference in two, stratified by type (one half builds spots).

    Parameters
    ----------
    adata_sc
        Labelled single cells.
    labels
        Column of ``adata_sc.obs`` with the cell types.
    fraction
        Share of each type's cells that goes to the first part.
    random_state
        Seed.

    Returns
    -------
    first, second
        Two AnnData copies with disjoint cells; every type with at least 2 cells has at
        least one cell in each.

    Examples
    --------
    >>> import numpy as np, pandas as pd, anndata
    >>> sc = anndata.AnnData(np.ones((10, 3)), obs=pd.DataFrame({"cell_type": list("AAAABBBBBB")}))
    >>> a, b = split_reference(sc, fraction=0.5)
    >>> a.n_obs, b.n_obs, sorted(set(a.obs["cell_type"])) == ["A", "B"]
    (5, 5, True)
    """
    check_adata(adata_sc, name="adata_sc")
    if labels not in adata_sc.obs:
        raise SpatiomeInputError(f"adata_sc.obs[{labels!r}] is missing: pass labels=")
    if not 0.0 < fraction < 1.0:
        raise SpatiomeInputError(f"fraction must be in (0, 1), got {fraction!r}")
    rng = check_random_state(random_state)
    codes = pd.factorize(adata_sc.obs[labels].astype(str))[0]
    first = np.zeros(adata_sc.n_obs, dtype=bool)
    for code in np.unique(codes):
        members = rng.permutation(np.flatnonzero(codes == code))
        n_first = int(round(fraction * members.size))
        if members.size >= 2:
            n_first = min(max(n_first, 1), members.size - 1)
        first[members[:n_first]] = True
    return adata_sc[first].copy(), adata_sc[~first].copy()


def pseudo_spots(
    adata_sc: AnnData,
    labels: str = "cell_type",
    *,
    n_spots: int = 500,
    cells_per_spot: tuple[int, int] = (2, 10),
    max_types_per_spot: int = 4,
    spot_radius: float | None = None,
    spatial_key: str = "spatial",
    depth: float = 1.0,
    gene_effect_sd: float = 0.0,
    layer: str | None = None,
    random_state: int | np.random.Generator | None = 0,
) -> AnnData:
    """Spots made of summed single cells, with the true fraction of each cell type.

    Without ``spot_radius``, each spot sums cells drawn at random: a number of cells
    uniform in ``cells_per_spot``, up to ``max_types_per_spot`` types present, with
    Dirichlet(1) shares among them (the "artificial" spots of published benchmarks).
    With ``spot_radius``, the cells have positions (``obsm[spatial_key]``, as in imaging
    data): spots of that radius on a hexagonal grid (centres ``2 * spot_radius`` apart)
    sum the cells inside them, so the fractions are spatially coherent like a tissue.

    Counts can then be made to look like another platform: ``gene_effect_sd`` multiplies
    each gene by a log-normal factor (a per-gene platform effect) and ``depth`` scales
    the expected counts; the result is redrawn as Poisson when either is used.

    Parameters
    ----------
    adata_sc
        Cells x genes raw counts with the cell type in ``adata_sc.obs[labels]``.
    labels
        Column with the cell types.
    n_spots
        Number of spots (random mode).
    cells_per_spot
        Inclusive range of cells per spot (random mode).
    max_types_per_spot
        At most this many types in a spot (random mode).
    spot_radius
        Spot radius in coordinate units: aggregate cells by position.
    spatial_key
        Cell coordinates in ``adata_sc.obsm`` (with ``spot_radius``).
    depth
        Factor on the expected counts (for example 0.3 for a shallower platform).
    gene_effect_sd
        Standard deviation of the natural-log per-gene platform factor.
    layer
        Layer with raw counts. ``None`` (default): ``layers["counts"]`` when present, else
        ``X`` when it holds counts.
    random_state
        Seed.

    Returns
    -------
    AnnData
        Spots x genes counts (CSR, also in ``layers["counts"]``), true cell fractions in
        ``obsm["cell_type_proportions"]`` (DataFrame), number of cells in
        ``obs["n_cells"]`` and, with ``spot_radius``, the spot centres in
        ``obsm["spatial"]``.

    Examples
    --------
    >>> import numpy as np, pandas as pd, anndata
    >>> rng = np.random.default_rng(0)
    >>> sc = anndata.AnnData(rng.poisson(2.0, (60, 20)).astype(np.float32),
    ...                      obs=pd.DataFrame({"cell_type": np.repeat(["A", "B", "C"], 20)}))
    >>> spots = pseudo_spots(sc, n_spots=50, random_state=1)
    >>> spots.obsm["cell_type_proportions"].sum(axis=1).round(6).unique().tolist()
    [1.0]
    >>> sc.obsm["spatial"] = rng.uniform(0, 100, (60, 2))
    >>> spots = pseudo_spots(sc, spot_radius=15.0)
    >>> int(spots.obs["n_cells"].sum()) <= 60
    True
    """
    check_adata(adata_sc, name="adata_sc")
    if labels not in adata_sc.obs:
        raise SpatiomeInputError(f"adata_sc.obs[{labels!r}] is missing: pass labels=")
    layer = resolve_counts_layer(adata_sc, layer)
    counts = sp.csr_matrix(get_matrix(adata_sc, layer), dtype=np.float64)
    check_counts(counts, where="the reference counts")
    if not depth > 0 or not gene_effect_sd >= 0:
        raise SpatiomeInputError("depth must be > 0 and gene_effect_sd >= 0")
    rng = check_random_state(random_state)
    names, codes = np.unique(adata_sc.obs[labels].astype(str).to_numpy(), return_inverse=True)
    if spot_radius is None:
        assignment = _random_assignment(
            codes, len(names), n_spots, cells_per_spot, max_types_per_spot, rng
        )
        centres = None
    else:
        if not spot_radius > 0:
            raise SpatiomeInputError(f"spot_radius must be > 0, got {spot_radius!r}")
        coords = get_spatial(adata_sc, spatial_key)[:, :2]
        assignment, centres = _spatial_assignment(coords, float(spot_radius))
    summed = assignment @ counts
    if depth != 1.0 or gene_effect_sd > 0:
        factor = depth * np.exp(rng.normal(0.0, gene_effect_sd, adata_sc.n_vars))
        expected = (summed @ sp.diags(factor)).tocsr()
        expected.data = rng.poisson(expected.data).astype(np.float64)
        expected.eliminate_zeros()
        summed = expected
    summed = sp.csr_matrix(summed, dtype=np.float32)
    composition = np.asarray(
        (
            assignment
            @ sp.csr_matrix(
                (np.ones(codes.size), (np.arange(codes.size), codes)),
                shape=(codes.size, len(names)),
            )
        ).todense()
    )
    n_cells = composition.sum(axis=1)
    index = pd.Index([f"spot{i}" for i in range(composition.shape[0])])
    spots = AnnData(
        X=summed,
        obs=pd.DataFrame({"n_cells": n_cells.astype(np.int64)}, index=index),
        var=pd.DataFrame(index=adata_sc.var_names.copy()),
    )
    spots.layers["counts"] = summed.copy()
    spots.obsm[TRUTH_KEY] = pd.DataFrame(
        composition / n_cells[:, None], index=index, columns=[str(n) for n in names]
    )
    if centres is not None:
        spots.obsm["spatial"] = centres
    return spots


def _random_assignment(codes, n_types, n_spots, cells_per_spot, max_types, rng):
    """Spots x cells 0/1 matrix of random spots (cells drawn with replacement)."""
    low, high = (int(v) for v in cells_per_spot)
    if n_spots < 1 or low < 1 or high < low or max_types < 1:
        raise SpatiomeInputError(
            "need n_spots >= 1, 1 <= cells_per_spot[0] <= cells_per_spot[1] and "
            "max_types_per_spot >= 1"
        )
    members = [np.flatnonzero(codes == t) for t in range(n_types)]
    rows, cols = [], []
    for i in range(n_spots):
        n_cells = rng.integers(low, high + 1)
        present = rng.choice(
            n_types, size=rng.integers(1, min(max_types, n_types) + 1), replace=False
        )
        per_type = rng.multinomial(n_cells, rng.dirichlet(np.ones(present.size)))
        for t, k in zip(present, per_type, strict=True):
            picks = rng.choice(members[t], size=k, replace=True)
            rows.extend([i] * k)
            cols.extend(picks.tolist())
    return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_spots, codes.size))


def _spatial_assignment(coords: np.ndarray, radius: float):
    """Spots x cells 0/1 matrix of hexagonal-grid spots, and the spot centres."""
    step = 2.0 * radius
    xs = np.arange(coords[:, 0].min(), coords[:, 0].max() + step, step)
    ys = np.arange(coords[:, 1].min(), coords[:, 1].max() + step, step * np.sqrt(3) / 2)
    grid = np.array([(x + (j % 2) * radius, y) for j, y in enumerate(ys) for x in xs])
    hits = cKDTree(coords).query_ball_point(grid, radius)
    kept = [i for i, h in enumerate(hits) if len(h) > 0]
    if not kept:
        raise SpatiomeInputError("no cell falls inside any spot: increase spot_radius")
    rows = np.concatenate([np.full(len(hits[i]), k) for k, i in enumerate(kept)])
    cols = np.concatenate([np.asarray(hits[i], dtype=np.int64) for i in kept])
    matrix = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(len(kept), len(coords)))
    return matrix, grid[kept]
