"""Simulated tissues with planted cellular niches.

:func:`simulate_niches` splits a square tissue into patches with wavy borders, gives every
patch one of a few niches, and gives every niche its own mixture of cell types. Cells are
placed at random and take a type drawn from the mixture of the niche they fall in; spots
(``kind="spots"``) hold a few such cells each and carry noisy cell-type fractions, as a
deconvolution would give. A niche is therefore only visible in the neighbourhood of a cell,
never in the cell itself: clustering the cells' own types cannot find it.

Two niches (``niche_0`` and ``niche_1``) are made of the same three cell types in different
proportions, the hardest pair to tell apart; every other pair of niches differs at least as
much as they do. Patches are cells nearest to one patch centre after a smooth random warp of
the plane, so their borders are curves that follow no grid, and a niche may occur in several
patches.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy.spatial import cKDTree

from .._core.random import check_random_state
from .._core.validate import SpatiomeInputError

__all__ = ["simulate_niches"]

KINDS = ("cells", "spots")
CELL_SPACING_UM = 10.0  # typical distance between neighbouring cells
SPOT_SPACING_UM = 100.0  # Visium centre-to-centre distance
#: Proportions of the three shared cell types in the two look-alike niches.
PAIR_PROPORTIONS = ((0.55, 0.30, 0.15), (0.15, 0.30, 0.55))
#: Types in the mixture of every other niche (their proportions are drawn at random).
TYPES_PER_NICHE = 3
#: Redraws of a niche mixture that is too close to an earlier one before giving up.
MAX_REDRAWS = 1000
#: Best-candidate sampling of the patch centres: candidates per centre (spreads them out).
CENTRE_CANDIDATES = 20


def simulate_niches(
    n_obs: int = 10_000,
    *,
    n_niches: int = 5,
    n_types: int = 8,
    n_patches: int | None = None,
    kind: str = "cells",
    background: float = 0.1,
    warp: float = 0.08,
    cells_per_spot: float = 8.0,
    fraction_concentration: float = 50.0,
    random_state: int | np.random.Generator | None = 0,
) -> AnnData:
    """Simulate cells or spots in a tissue with known niches.

    Parameters
    ----------
    n_obs
        Number of cells (``kind="cells"``) or, approximately, of spots (``kind="spots"``,
        a hexagonal lattice cut to a square).
    n_niches
        Number of niches (at least 2): ``niche_0`` and ``niche_1`` share their three cell
        types in proportions 0.55/0.30/0.15 and 0.15/0.30/0.55; every other niche has three
        types drawn at random with Dirichlet(2, 2, 2) proportions, redrawn until it differs
        from every earlier niche by at least as much (L1 distance) as those two.
    n_types
        Number of cell types (at least 3).
    n_patches
        Number of patches (default ``2 * n_niches``); the first ``n_niches`` patches take
        the niches in order, the others a niche at random, so every niche occurs.
    kind
        ``"cells"``: single cells at uniform random positions, about 10 µm apart;
        ``"spots"``: Visium-like spots 100 µm apart, each with a Poisson number (mean
        ``cells_per_spot``, at least 1) of cells drawn from the niche at the spot centre.
    background
        Share of every niche mixture spread evenly over all types (every type occurs
        everywhere, as stray or migrating cells do).
    warp
        Amplitude of the random warp of the patch borders, as a fraction of the tissue
        side (0: straight Voronoi borders).
    cells_per_spot
        Mean number of cells per spot (``kind="spots"``).
    fraction_concentration
        Noise of the spots' estimated fractions: they are drawn from a Dirichlet with mean
        the spot's true fractions and this total concentration (larger is less noisy; 50
        gives a standard deviation of about 0.07 for a fraction of 0.5).
    random_state
        Seed or numpy Generator.

    Returns
    -------
    AnnData
        ``obs["planted_niche"]`` (the planted niche, categorical ``niche_0``, ...), ``obs["patch"]``
        and ``obsm["spatial"]`` (µm). Cells: ``obs["cell_type"]`` (categorical ``type_0``,
        ...) and ``X``, one marker count per type (the cell's own type). Spots:
        ``obsm["cell_type_fractions"]`` (the noisy estimate, a DataFrame) and
        ``obsm["cell_type_fractions_true"]``, ``obs["n_cells"]`` and ``X``, the cell counts
        per type. ``uns["niche_mixtures"]`` holds the niche x type mixtures and
        ``uns["simulation"]`` the parameters.

    Examples
    --------
    >>> adata = simulate_niches(2_000, n_niches=4, random_state=1)
    >>> adata.obs["planted_niche"].cat.categories.tolist()
    ['niche_0', 'niche_1', 'niche_2', 'niche_3']
    >>> adata.uns["niche_mixtures"].sum(axis=1).round(6).tolist()
    [1.0, 1.0, 1.0, 1.0]
    >>> spots = simulate_niches(1_000, kind="spots")
    >>> spots.obsm["cell_type_fractions"].shape[1]
    8
    """
    _check_arguments(
        n_obs, n_niches, n_types, n_patches, kind, background, warp, cells_per_spot,
        fraction_concentration,
    )  # fmt: skip
    n_patches = 2 * n_niches if n_patches is None else int(n_patches)
    rng = check_random_state(random_state)
    mixtures = _niche_mixtures(n_niches, n_types, background, rng)
    if kind == "cells":
        side = CELL_SPACING_UM * math.sqrt(n_obs)
        coords = rng.random((n_obs, 2)) * side
    else:
        side = SPOT_SPACING_UM * math.sqrt(n_obs * math.sqrt(3) / 2)
        coords = _hex_spots(side)
    patch = _patches(coords / side, n_patches, warp, rng)
    patch_niche = np.concatenate(
        [np.arange(n_niches), rng.integers(0, n_niches, n_patches - n_niches)]
    )
    niche = patch_niche[patch]
    type_names = [f"type_{t}" for t in range(n_types)]
    niche_names = [f"niche_{k}" for k in range(n_niches)]
    obs = pd.DataFrame(
        {
            "planted_niche": pd.Categorical.from_codes(niche, niche_names),
            "patch": pd.Categorical.from_codes(patch, [f"patch_{p}" for p in range(n_patches)]),
        },
        index=pd.Index([f"{kind[:-1]}_{i}" for i in range(coords.shape[0])]),
    )
    var = pd.DataFrame(index=pd.Index([f"marker_{name}" for name in type_names]))
    if kind == "cells":
        types = _draw_types(mixtures[niche], rng)
        obs["cell_type"] = pd.Categorical.from_codes(types, type_names)
        ones = np.ones(n_obs, dtype=np.float32)
        counts = sp.csr_matrix((ones, (np.arange(n_obs), types)), shape=(n_obs, n_types))
        obsm: dict = {"spatial": coords}
    else:
        cells = np.maximum(rng.poisson(cells_per_spot, coords.shape[0]), 1)
        counts_dense = rng.multinomial(cells, mixtures[niche])
        true = counts_dense / cells[:, None]
        noisy = _noisy_fractions(true, fraction_concentration, rng)
        obs["n_cells"] = cells
        counts = sp.csr_matrix(counts_dense.astype(np.float32))
        obsm = {
            "spatial": coords,
            "cell_type_fractions": pd.DataFrame(noisy, index=obs.index, columns=type_names),
            "cell_type_fractions_true": pd.DataFrame(true, index=obs.index, columns=type_names),
        }
    adata = AnnData(counts, obs=obs, var=var, obsm=obsm)
    adata.uns["niche_mixtures"] = pd.DataFrame(mixtures, index=niche_names, columns=type_names)
    adata.uns["spatial_unit"] = "um"
    adata.uns["simulation"] = {
        "kind": kind,
        "n_niches": int(n_niches),
        "n_types": int(n_types),
        "n_patches": int(n_patches),
        "background": float(background),
        "warp": float(warp),
        "cells_per_spot": float(cells_per_spot),
        "fraction_concentration": float(fraction_concentration),
        "random_state": random_state if isinstance(random_state, int) else None,
    }
    return adata


def _check_arguments(
    n_obs, n_niches, n_types, n_patches, kind, background, warp, cells_per_spot,
    fraction_concentration,
) -> None:  # fmt: skip
    def integer(name, value, low):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise SpatiomeInputError(f"{name} must be an integer >= {low}, got {value!r}")

    integer("n_obs", n_obs, 50)
    integer("n_niches", n_niches, 2)
    integer("n_types", n_types, 3)
    if n_patches is not None:
        integer("n_patches", n_patches, n_niches)
    if kind not in KINDS:
        raise SpatiomeInputError(f"kind must be one of {KINDS}, got {kind!r}")
    for name, value, low, high in (
        ("background", background, 0.0, 1.0),
        ("warp", warp, 0.0, 0.5),
        ("cells_per_spot", cells_per_spot, 1.0, 1e4),
        ("fraction_concentration", fraction_concentration, 1.0, 1e9),
    ):
        if not isinstance(value, int | float) or not low <= value <= high:
            raise SpatiomeInputError(f"{name} must be a number in [{low}, {high}], got {value!r}")


def _niche_mixtures(
    n_niches: int, n_types: int, background: float, rng: np.random.Generator
) -> np.ndarray:
    """Cell-type mixtures (n_niches x n_types); the first two share their types."""
    shared = rng.choice(n_types, TYPES_PER_NICHE, replace=False)
    pure = np.zeros((n_niches, n_types))
    for row, proportions in enumerate(PAIR_PROPORTIONS):
        pure[row, shared] = proportions
    closest = np.abs(pure[0] - pure[1]).sum()
    for row in range(2, n_niches):
        for _ in range(MAX_REDRAWS):
            candidate = np.zeros(n_types)
            chosen = rng.choice(n_types, TYPES_PER_NICHE, replace=False)
            candidate[chosen] = rng.dirichlet(np.full(TYPES_PER_NICHE, 2.0))
            if np.abs(pure[:row] - candidate).sum(axis=1).min() >= closest:
                break
        else:
            raise SpatiomeInputError(
                f"could not draw {n_niches} distinct niche mixtures from {n_types} cell "
                "types: use more types or fewer niches"
            )
        pure[row] = candidate
    return (1.0 - background) * pure + background / n_types


def _hex_spots(side: float) -> np.ndarray:
    """Centres of a hexagonal lattice (Visium spacing) that fall inside the square."""
    row_step = SPOT_SPACING_UM * math.sqrt(3) / 2
    rows = np.arange(int(side / row_step) + 1)
    cols = np.arange(int(side / SPOT_SPACING_UM) + 1)
    row, col = np.meshgrid(rows, cols, indexing="ij")
    x = col * SPOT_SPACING_UM + (row % 2) * SPOT_SPACING_UM / 2
    y = row * row_step
    keep = x <= side
    return np.column_stack([x[keep], y[keep]]).astype(np.float64)


def _patches(unit: np.ndarray, n_patches: int, warp: float, rng: np.random.Generator):
    """Patch of every point: nearest spread-out centre after a smooth random warp."""
    centres = [rng.random(2)]
    for _ in range(n_patches - 1):
        candidates = rng.random((CENTRE_CANDIDATES, 2))
        gaps = np.linalg.norm(candidates[:, None] - np.array(centres)[None], axis=2).min(1)
        centres.append(candidates[np.argmax(gaps)])
    frequencies = rng.uniform(1.5, 3.0, size=(2, 2))
    phases = rng.random((2, 2))
    shifted = unit.copy()
    for axis in range(2):
        other = 1 - axis
        shifted[:, axis] += warp * (
            np.sin(2 * np.pi * (frequencies[axis, 0] * unit[:, other] + phases[axis, 0]))
            + 0.5 * np.sin(2 * np.pi * (frequencies[axis, 1] * unit[:, axis] + phases[axis, 1]))
        )
    _, patch = cKDTree(np.array(centres)).query(shifted)
    return np.asarray(patch, dtype=np.int64)


def _draw_types(mixtures: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One type per row, drawn from that row's mixture (inverse CDF, vectorised)."""
    cumulative = np.cumsum(mixtures, axis=1)
    draws = rng.random(mixtures.shape[0]) * cumulative[:, -1]
    return (cumulative < draws[:, None]).sum(axis=1).astype(np.int64)


def _noisy_fractions(
    true: np.ndarray, concentration: float, rng: np.random.Generator
) -> np.ndarray:
    """Dirichlet noise around the true fractions (a floor keeps every type possible)."""
    alpha = concentration * (true + 1e-2) / (1.0 + 1e-2 * true.shape[1])
    draws = rng.gamma(alpha)
    return draws / draws.sum(axis=1, keepdims=True)
