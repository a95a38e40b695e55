"""Known technical artifacts injected into a tissue, as ground truth for quality control.

:func:`inject_artifacts` takes a tissue (simulated or real) and returns a copy with spots
damaged in ways seen in real data, and records which spots were touched:

- a **dry patch**: a compact region whose RNA was lost (library size thinned) and whose
  mitochondrial fraction is raised to one homogeneous level, like the dry spots and
  hangnails SpotSweeper's ``findArtifacts`` targets, or left as it was (a pure low-depth
  region);
- a **low-quality edge**: a thin band of spots along one side of the tissue with thinned
  counts, the local outliers of ``localOutliers``;
- **scattered failures**: isolated spots, none adjacent to another, whose counts are
  thinned (failed spots among good ones);
- **doublets** (single-cell-resolution data): cells merged with a spatial neighbour (a
  segmentation merge: counts summed, the centroid moved to the midpoint, the neighbour
  removed), or with a random cell.

Counts are thinned binomially, so the damaged spots still hold integer counts drawn from
the same genes.
"""

from __future__ import annotations

import numbers
import re

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from .._core.random import check_random_state
from .._core.validate import (
    SpatiomeInputError,
    check_adata,
    check_counts,
    get_matrix,
    get_spatial,
    resolve_counts_layer,
)

INJECTED = ("none", "dry_patch", "low_quality_edge", "doublet", "scattered_failure")
DOUBLET_MODES = ("adjacent", "random")
_MITO = re.compile(r"^(MT-|mt-|Mt-)")


def inject_artifacts(
    adata: AnnData,
    *,
    dry_patch_fraction: float = 0.04,
    dry_patch_depth: float = 0.3,
    dry_patch_mito_fraction: float | None = 0.25,
    edge_fraction: float = 0.03,
    edge_depth: float = 0.25,
    scattered_fraction: float = 0.0,
    scattered_depth: float = 0.1,
    doublet_fraction: float = 0.0,
    doublet_mode: str = "adjacent",
    layer: str | None = None,
    random_state: int | np.random.Generator | None = 0,
) -> AnnData:
    """Return a copy of ``adata`` with a dry patch, a low-quality edge, failed spots, doublets.

    Parameters
    ----------
    adata
        Spots (or cells) x genes with raw counts (see ``layer``) and coordinates in
        ``obsm['spatial']``. Not modified.
    dry_patch_fraction
        Share of the spots in the dry patch (the spots nearest to a random centre); 0 for
        none.
    dry_patch_depth
        Fraction of the non-mitochondrial counts kept in the dry patch (of all counts when
        ``dry_patch_mito_fraction`` is None).
    dry_patch_mito_fraction
        Mitochondrial share of the counts in every dry-patch spot (set exactly, split over
        the mitochondrial genes as in the tissue), which makes the patch locally
        homogeneous. Needs genes named ``MT-``/``mt-``; ignored without them. None: every
        gene is thinned alike, so each spot keeps its mitochondrial share (a pure
        low-depth region).
    edge_fraction
        Share of the spots in the low-quality band: the spots furthest along a random
        direction (a thin band along one side of the tissue); 0 for none.
    edge_depth
        Fraction of the counts kept in the edge band.
    scattered_fraction
        Share of the spots that fail on their own: drawn at random among the untouched
        spots, never next to one another (none among another's six nearest spots), all
        genes thinned to ``scattered_depth``; 0 for none.
    scattered_depth
        Fraction of the counts kept in the scattered failed spots.
    doublet_fraction
        Share of the cells turned into doublets (each absorbs another cell, which is
        removed). Meant for single-cell-resolution data.
    doublet_mode
        ``"adjacent"``: merge with the nearest cell not yet used (segmentation merge);
        ``"random"``: merge with a random cell (droplet-like).
    layer
        Layer with the raw counts; ``X`` of the result holds the same counts. ``None``
        (default): ``adata.layers["counts"]`` when present, else ``adata.X`` when it holds
        counts (the result then has no counts layer either).
    random_state
        Seed or generator.

    Returns
    -------
    AnnData
        The damaged copy with ``obs['injected']`` (categorical: none, dry_patch,
        low_quality_edge, doublet, scattered_failure), ``obs['doublet_partner']`` (name
        of the absorbed cell, empty otherwise) and the parameters in ``uns['artifacts']``.
        Spots hit by both the patch and the edge are labelled as the patch; failed spots
        are drawn among the spots neither touches.

    Examples
    --------
    >>> import spatiome as sm
    >>> tissue = sm.datasets.simulate_tissue(n_spots=1000, n_genes=60, random_state=0)
    >>> damaged = inject_artifacts(tissue, random_state=0)
    >>> damaged.obs["injected"].value_counts().to_dict()
    {'none': 930, 'dry_patch': 40, 'low_quality_edge': 30, 'doublet': 0, 'scattered_failure': 0}
    >>> failed = inject_artifacts(tissue, dry_patch_fraction=0, edge_fraction=0,
    ...                           scattered_fraction=0.02)
    >>> int((failed.obs["injected"] == "scattered_failure").sum())
    20
    >>> cells = sm.datasets.simulate_tissue(n_spots=1000, n_genes=60, layout="random")
    >>> merged = inject_artifacts(cells, dry_patch_fraction=0, edge_fraction=0,
    ...                           doublet_fraction=0.05)
    >>> merged.n_obs, int((merged.obs["injected"] == "doublet").sum())
    (950, 50)
    """
    check_adata(adata)
    _check_fraction("dry_patch_fraction", dry_patch_fraction)
    _check_fraction("edge_fraction", edge_fraction)
    _check_fraction("doublet_fraction", doublet_fraction, upper=0.5)
    _check_fraction("scattered_fraction", scattered_fraction)
    for name, value in (
        ("dry_patch_depth", dry_patch_depth),
        ("edge_depth", edge_depth),
        ("scattered_depth", scattered_depth),
    ):
        _check_fraction(name, value, upper=1.0)
    if dry_patch_mito_fraction is not None:
        _check_fraction("dry_patch_mito_fraction", dry_patch_mito_fraction, upper=1.0)
    if doublet_mode not in DOUBLET_MODES:
        raise SpatiomeInputError(
            f"doublet_mode must be one of {DOUBLET_MODES}, got {doublet_mode!r}"
        )
    layer = resolve_counts_layer(adata, layer)
    counts = sp.csr_matrix(get_matrix(adata, layer), copy=True)
    check_counts(counts, where="adata.X" if layer is None else f"adata.layers[{layer!r}]")
    coords = get_spatial(adata).copy()
    rng = check_random_state(random_state)
    n = adata.n_obs
    label = np.zeros(n, dtype=np.int64)
    mito = np.array([bool(_MITO.match(str(g))) for g in adata.var_names])

    edge = _edge_band(coords, edge_fraction, rng)
    label[edge] = INJECTED.index("low_quality_edge")
    counts = _thin_rows(counts, edge, np.ones(adata.n_vars, bool), edge_depth, rng)

    patch = _patch(coords, dry_patch_fraction, rng)
    label[patch] = INJECTED.index("dry_patch")
    if dry_patch_mito_fraction is None:
        counts = _thin_rows(counts, patch, np.ones(adata.n_vars, bool), dry_patch_depth, rng)
    else:
        counts = _thin_rows(counts, patch, ~mito, dry_patch_depth, rng)
        if mito.any() and patch.any():
            counts = _set_mito_share(counts, patch, mito, dry_patch_mito_fraction)

    if scattered_fraction > 0:
        failed = _scattered(coords, label == 0, scattered_fraction, rng)
        label[failed] = INJECTED.index("scattered_failure")
        counts = _thin_rows(counts, failed, np.ones(adata.n_vars, bool), scattered_depth, rng)

    partner = np.full(n, "", dtype=object)
    keep = np.ones(n, dtype=bool)
    if doublet_fraction > 0:
        first, second = _doublet_pairs(coords, label, doublet_fraction, doublet_mode, rng)
        counts = _merge_rows(counts, first, second)
        coords[first] = (coords[first] + coords[second]) / 2.0
        label[first] = INJECTED.index("doublet")
        partner[first] = np.asarray(adata.obs_names)[second]
        keep[second] = False

    result = adata[keep].copy()
    counts = counts[keep]
    counts.eliminate_zeros()
    if layer is not None:
        result.layers[layer] = counts
    result.X = counts.copy()
    result.obsm["spatial"] = coords[keep]
    result.obs["injected"] = pd.Categorical.from_codes(label[keep], categories=list(INJECTED))
    result.obs["doublet_partner"] = partner[keep].astype(str)
    result.uns["artifacts"] = {
        "dry_patch_fraction": float(dry_patch_fraction),
        "dry_patch_depth": float(dry_patch_depth),
        "dry_patch_mito_fraction": (
            None if dry_patch_mito_fraction is None else float(dry_patch_mito_fraction)
        ),
        "edge_fraction": float(edge_fraction),
        "edge_depth": float(edge_depth),
        "scattered_fraction": float(scattered_fraction),
        "scattered_depth": float(scattered_depth),
        "doublet_fraction": float(doublet_fraction),
        "doublet_mode": doublet_mode,
        "mito_genes_found": int(mito.sum()),
    }
    return result


def _check_fraction(name: str, value: object, upper: float = 0.5) -> None:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 <= value <= upper:
        raise SpatiomeInputError(f"{name} must be a number in [0, {upper}], got {value!r}")


def _patch(coords: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """The spots nearest to a random interior centre (away from the tissue border)."""
    n = coords.shape[0]
    size = int(round(fraction * n))
    mask = np.zeros(n, dtype=bool)
    if size == 0:
        return mask
    centre_of_mass = coords.mean(axis=0)
    central = np.argsort(((coords - centre_of_mass) ** 2).sum(axis=1))[: max(1, n // 4)]
    centre = coords[rng.choice(central)]
    mask[np.argsort(((coords - centre) ** 2).sum(axis=1), kind="stable")[:size]] = True
    return mask


def _edge_band(coords: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """The spots furthest along a random direction: a thin band along one side."""
    n = coords.shape[0]
    size = int(round(fraction * n))
    mask = np.zeros(n, dtype=bool)
    if size == 0:
        return mask
    angle = rng.uniform(0, 2 * np.pi)
    direction = np.zeros(coords.shape[1])
    direction[:2] = np.cos(angle), np.sin(angle)
    mask[np.argsort(-(coords @ direction), kind="stable")[:size]] = True
    return mask


def _scattered(
    coords: np.ndarray, free: np.ndarray, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Random free spots, none among the six nearest spots of another chosen one."""
    from scipy.spatial import cKDTree

    n = coords.shape[0]
    wanted = int(round(fraction * n))
    mask = np.zeros(n, dtype=bool)
    if wanted == 0:
        return mask
    k = min(n, 7)
    _, near = cKDTree(coords).query(coords, k=k)
    near = np.asarray(near).reshape(n, k)
    blocked = ~free
    placed = 0
    for spot in rng.permutation(np.flatnonzero(free)):
        # Neither spot may be among the other's nearest (not symmetric off a lattice).
        if blocked[spot] or mask[near[spot]].any():
            continue
        mask[spot] = True
        blocked[near[spot]] = True
        placed += 1
        if placed == wanted:
            return mask
    raise SpatiomeInputError(
        f"could only place {placed} of {wanted} isolated failed spots: lower scattered_fraction"
    )


def _thin_rows(
    counts: sp.csr_matrix,
    rows: np.ndarray,
    genes: np.ndarray,
    keep: float,
    rng: np.random.Generator,
) -> sp.csr_matrix:
    """Binomial thinning of the chosen genes' counts in the chosen rows."""
    if not rows.any() or keep >= 1.0:
        return counts
    counts = counts.copy()
    row_of = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    hit = rows[row_of] & genes[counts.indices]
    values = counts.data[hit].astype(np.int64)
    counts.data[hit] = rng.binomial(values, keep)
    return counts


def _set_mito_share(
    counts: sp.csr_matrix, rows: np.ndarray, mito: np.ndarray, share: float
) -> sp.csr_matrix:
    """Set the mitochondrial counts of the rows so that they make ``share`` of the total."""
    counts = counts.tolil()
    tissue_mito = np.asarray(counts[:, mito].sum(axis=0), dtype=np.float64).ravel()
    split = tissue_mito / tissue_mito.sum() if tissue_mito.sum() > 0 else None
    if split is None:
        split = np.full(int(mito.sum()), 1.0 / mito.sum())
    mito_columns = np.flatnonzero(mito)
    for row in np.flatnonzero(rows):
        other = float(counts[row, ~mito].sum())
        total_mito = share / (1.0 - share) * other if share < 1 else other
        counts[row, mito_columns] = np.round(total_mito * split)
    return counts.tocsr()


def _doublet_pairs(
    coords: np.ndarray,
    label: np.ndarray,
    fraction: float,
    mode: str,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (first absorbs second) among untouched cells, each cell used at most once."""
    from scipy.spatial import cKDTree

    n = coords.shape[0]
    candidates = np.flatnonzero(label == 0)
    wanted = int(round(fraction * n))
    used = np.zeros(n, dtype=bool)
    used[label != 0] = True
    order = rng.permutation(candidates)
    tree = cKDTree(coords)
    first, second = [], []
    for cell in order:
        if len(first) == wanted:
            break
        if used[cell]:
            continue
        if mode == "adjacent":
            _, near = tree.query(coords[cell], k=min(n, 12))
            partners = [j for j in np.atleast_1d(near) if j != cell and not used[j]]
        else:
            partners = [j for j in rng.permutation(candidates)[:50] if j != cell and not used[j]]
        if not partners:
            continue
        partner = int(partners[0])
        used[cell] = used[partner] = True
        first.append(int(cell))
        second.append(partner)
    if len(first) < wanted:
        raise SpatiomeInputError(
            f"could only form {len(first)} of {wanted} doublets: lower doublet_fraction"
        )
    return np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64)


def _merge_rows(counts: sp.csr_matrix, first: np.ndarray, second: np.ndarray) -> sp.csr_matrix:
    """Add row ``second[i]`` to row ``first[i]`` (the second rows are dropped later)."""
    n = counts.shape[0]
    mover = sp.csr_matrix((np.ones(first.size), (first, second)), shape=(n, n), dtype=np.float64)
    merged = counts + (mover @ counts).astype(counts.dtype)
    return sp.csr_matrix(merged)


__all__ = ["inject_artifacts", "INJECTED"]
