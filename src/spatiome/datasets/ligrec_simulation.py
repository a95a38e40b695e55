"""Simulated tissues with planted ligand-receptor interactions and decoys.

:func:`simulate_interactions` places cells at random in a square, splits the square into
patches (cells nearest to one of a few random centres) and gives every patch a kind:
type ``A``, type ``B``, a ``mixed`` patch whose cells are ``C`` or ``D`` at random, or the
filler type ``O``. A and B therefore meet only along the borders of their patches, while C
and D are interspersed. The truth table ``uns["ligrec_truth"]`` lists four kinds of pairs:

- ``planted``: the ligand is expressed by A cells and the receptor by B cells, at a low
  base level (``PLANTED_BASE`` x a marker's level) that is raised by
  ``interaction_strength`` x a marker's level only in cells with a neighbour of the other
  type (one planted receptor is a two-subunit complex, both subunits raised);
- ``decoy``: ligand in A and receptor in B at a constant level, whatever the neighbours
  (the types are apart, so there is no co-location to find);
- ``decoy_colocalized``: ligand in C and receptor in D at a constant level. The types share
  their patches, so ligand and receptor are co-located although nothing depends on
  adjacency: the global statistic calls such pairs, a within-type test should not;
- ``null``: random pairs of genes expressed uniformly in all cells.

Counts are Poisson with a cell's mean = library size x the gene's level; the library size
can follow a spatial pattern (``depth_gradient``: its log-fold range across the tissue;
``depth_pattern``: a gradient along x, a radial one, or smooth patches), the confounder
that survives naive normalization.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy.spatial import cKDTree

from .._core.random import check_random_state
from .._core.validate import SpatiomeInputError

__all__ = ["simulate_interactions"]

CELL_SPACING_UM = 10.0
#: Share of the patches of each kind (A, B, mixed C/D, filler O).
PATCH_KINDS = ("A", "B", "mixed", "O")
PATCH_SHARES = (0.25, 0.25, 0.2, 0.3)
#: Mean counts of an expressed marker at library size 1, and of background expression.
EXPRESSED_LEVEL = 1.5
BACKGROUND_LEVEL = 0.05
#: Level of planted genes in their type away from contacts, relative to EXPRESSED_LEVEL.
PLANTED_BASE = 0.25
DEPTH_PATTERNS = ("linear", "radial", "patches")
#: Smooth bumps of the ``"patches"`` depth pattern, and their width relative to the side.
DEPTH_BUMPS = 6
DEPTH_BUMP_WIDTH = 0.15


def simulate_interactions(
    n_cells: int = 3000,
    *,
    n_planted: int = 4,
    n_decoys: int = 4,
    n_colocalized: int = 2,
    n_null_genes: int = 300,
    n_null_pairs: int = 60,
    interaction_strength: float = 3.0,
    depth_gradient: float = 0.0,
    depth_pattern: str = "linear",
    cells_per_patch: int = 150,
    n_neighbors: int = 6,
    random_state: int | np.random.Generator | None = 0,
) -> AnnData:
    """A tissue of cell types with planted ligand-receptor interactions, decoys and nulls.

    Parameters
    ----------
    n_cells
        Number of cells (at least 200).
    n_planted, n_decoys, n_colocalized
        Numbers of planted, decoy and co-localized decoy pairs (see the module docstring).
        The last planted pair has a two-subunit receptor complex (``R{k}A_R{k}B``).
    n_null_genes, n_null_pairs
        Genes expressed uniformly at random levels, and random pairs of them in the truth
        table (no interaction, no spatial pattern). They also make up most of every
        cell's library, as in real data, so that normalizing by total counts does not
        imprint the cell types' markers on them.
    interaction_strength
        Increase of planted ligands and receptors in cells next to the partner type, in
        units of a marker's level; 0 gives a tissue without any interaction.
    depth_gradient
        Natural-log change of the library size from the left to the right edge
        (1.0: e-fold), on top of log-normal noise (sd 0.25).
    depth_pattern
        Shape of the log library size, scaled to a range of ``depth_gradient``:
        ``"linear"`` (rising along x), ``"radial"`` (rising from the centre to the
        corners) or ``"patches"`` (a sum of a few smooth random bumps).
    cells_per_patch
        Mean number of cells per patch.
    n_neighbors
        A cell is "next to" another type when one of its ``n_neighbors`` nearest cells is.
    random_state
        Seed or generator.

    Returns
    -------
    AnnData
        Raw counts in ``X`` (CSR) and ``layers["counts"]``; ``obs["cell_type"]``
        (categorical A, B, C, D, O), ``obs["library_size"]``, ``obs["contact"]`` (True for
        A cells next to B and B cells next to A); coordinates in ``obsm["spatial"]`` (µm);
        ``uns["ligrec_truth"]``: ``ligand``, ``receptor``, ``kind``.

    Examples
    --------
    >>> adata = simulate_interactions(n_cells=500, random_state=0)
    >>> adata.uns["ligrec_truth"]["kind"].value_counts().to_dict()["planted"]
    4
    >>> sorted(adata.obs["cell_type"].cat.categories)
    ['A', 'B', 'C', 'D', 'O']
    """
    if int(n_cells) < 200:
        raise SpatiomeInputError(f"n_cells must be at least 200, got {n_cells}")
    if interaction_strength < 0:
        raise SpatiomeInputError(f"interaction_strength must be >= 0, got {interaction_strength}")
    if depth_pattern not in DEPTH_PATTERNS:
        raise SpatiomeInputError(
            f"depth_pattern must be one of {DEPTH_PATTERNS}, got {depth_pattern!r}"
        )
    if n_null_pairs and n_null_genes < 2:
        raise SpatiomeInputError("null pairs need n_null_genes >= 2")
    rng = check_random_state(random_state)
    n = int(n_cells)
    side = np.sqrt(n) * CELL_SPACING_UM
    xy = rng.random((n, 2)) * side
    n_patches = max(8, n // cells_per_patch)
    centres = rng.random((n_patches, 2)) * side
    kinds = np.array(PATCH_KINDS)[rng.choice(4, size=n_patches, p=PATCH_SHARES)]
    # Every kind at least once, so that the truth table always has its types.
    kinds[:4] = PATCH_KINDS
    _, patch = cKDTree(centres).query(xy)
    cell_type = kinds[patch].astype(object)
    mixed = cell_type == "mixed"
    cell_type[mixed] = np.where(rng.random(int(mixed.sum())) < 0.5, "C", "D")
    cell_type = cell_type.astype(str)

    _, neighbours = cKDTree(xy).query(xy, k=n_neighbors + 1)
    neighbour_types = cell_type[neighbours[:, 1:]]
    is_a, is_b = cell_type == "A", cell_type == "B"
    contact = (is_a & (neighbour_types == "B").any(axis=1)) | (
        is_b & (neighbour_types == "A").any(axis=1)
    )
    # Planted genes: a low base level in their type, raised only at contacts.
    boost = PLANTED_BASE + interaction_strength * contact

    names: list[str] = []
    levels: list[np.ndarray] = []
    truth: list[tuple[str, str, str]] = []

    def marker(types: np.ndarray, scale: np.ndarray | float = 1.0) -> np.ndarray:
        return np.where(types, EXPRESSED_LEVEL * scale, BACKGROUND_LEVEL)

    for k in range(n_planted):
        names.append(f"L{k}")
        levels.append(marker(is_a, boost))
        if k == n_planted - 1:
            subunits = [f"R{k}A", f"R{k}B"]
            for name in subunits:
                names.append(name)
                levels.append(marker(is_b, boost))
            truth.append((f"L{k}", "_".join(subunits), "planted"))
        else:
            names.append(f"R{k}")
            levels.append(marker(is_b, boost))
            truth.append((f"L{k}", f"R{k}", "planted"))
    for k in range(n_decoys):
        names += [f"DL{k}", f"DR{k}"]
        levels += [marker(is_a), marker(is_b)]
        truth.append((f"DL{k}", f"DR{k}", "decoy"))
    for k in range(n_colocalized):
        names += [f"CL{k}", f"CR{k}"]
        levels += [marker(cell_type == "C"), marker(cell_type == "D")]
        truth.append((f"CL{k}", f"CR{k}", "decoy_colocalized"))
    null_names = [f"N{k}" for k in range(n_null_genes)]
    for name in null_names:
        names.append(name)
        levels.append(np.full(n, rng.gamma(2.0, 0.5)))
    if n_null_pairs:
        drawn: set[tuple[int, int]] = set()
        limit = n_null_genes * (n_null_genes - 1)
        while len(drawn) < min(n_null_pairs, limit):
            a, b = rng.choice(n_null_genes, size=2, replace=False)
            drawn.add((int(a), int(b)))
        truth += [(null_names[a], null_names[b], "null") for a, b in sorted(drawn)]

    shape = _depth_shape(xy / side, depth_pattern, rng)
    library = np.exp(depth_gradient * shape + rng.normal(0.0, 0.25, n))
    rates = np.column_stack(levels) * library[:, None]
    counts = sp.csr_matrix(rng.poisson(rates).astype(np.float32))
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(cell_type, categories=["A", "B", "C", "D", "O"]),
            "library_size": library,
            "contact": contact,
        },
        index=[f"cell{i}" for i in range(n)],
    )
    adata = AnnData(counts, obs=obs, var=pd.DataFrame(index=names))
    adata.layers["counts"] = counts.copy()
    adata.obsm["spatial"] = xy
    adata.uns["spatial_unit"] = "um"
    adata.uns["ligrec_truth"] = pd.DataFrame(truth, columns=["ligand", "receptor", "kind"])
    return adata


def _depth_shape(unit_xy: np.ndarray, pattern: str, rng: np.random.Generator) -> np.ndarray:
    """Log library size pattern over the unit square, with a range of about 1."""
    if pattern == "linear":
        return unit_xy[:, 0] - 0.5
    if pattern == "radial":
        shape = np.linalg.norm(unit_xy - 0.5, axis=1)
    else:
        centres = rng.random((DEPTH_BUMPS, 2))
        signs = rng.choice([-1.0, 1.0], size=DEPTH_BUMPS)
        squared = ((unit_xy[:, None, :] - centres[None]) ** 2).sum(axis=2)
        shape = (signs * np.exp(-squared / (2 * DEPTH_BUMP_WIDTH**2))).sum(axis=1)
    spread = np.ptp(shape)
    return (shape - shape.mean()) / spread if spread > 0 else np.zeros_like(shape)
