"""Simulated Visium HD 2 µm bins over segmented cells, with lateral diffusion.

Ground truth for turning bins into cells (:func:`spatiome.io.bins.bins_to_cells`): every
count remembers the cell that made it, so the share of counts given to the right cell can
be measured (:func:`right_cell_fraction`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy.spatial import cKDTree

from .._core.random import check_random_state
from .._core.validate import SpatiomeInputError
from ..io._build import build_anndata

__all__ = ["assigned_purity", "right_cell_fraction", "simulate_visium_hd"]


def simulate_visium_hd(
    *,
    width_um: float = 200.0,
    height_um: float = 200.0,
    bin_size_um: float = 2.0,
    cell_spacing_um: float = 14.0,
    cell_radius_um: tuple[float, float] = (5.5, 8.5),
    nucleus_radius_um: tuple[float, float] = (2.5, 3.5),
    occupancy: float = 0.85,
    n_cell_types: int = 4,
    n_genes: int = 100,
    counts_per_bin: float = 4.0,
    diffusion_fraction: float = 0.2,
    diffusion_um: float = 3.0,
    background_per_bin: float = 0.2,
    random_state: int | np.random.Generator | None = None,
) -> AnnData:
    """Simulate a Visium HD bin grid over cells of known identity.

    Cell centres sit on a jittered hexagonal lattice (``cell_spacing_um`` apart, a share
    ``occupancy`` of the sites filled); a cell holds the bins whose centre is within its
    radius and nearer its centre than any other (touching, Voronoi-cut disks), and its
    nucleus the bins within the smaller nucleus radius. Each cell has one of
    ``n_cell_types`` expression profiles (10% of the genes as markers per type, five-fold
    up). Each cell bin draws Poisson(``counts_per_bin``) transcripts from its cell's
    profile; each bin outside cells draws Poisson(``background_per_bin``) from the mean
    profile. Lateral diffusion then moves a share ``diffusion_fraction`` of all
    transcripts by a Gaussian offset (standard deviation ``diffusion_um`` per axis) to the
    bin it lands in; those leaving the grid are lost.

    Parameters
    ----------
    width_um, height_um
        Size of the captured area.
    bin_size_um
        Edge of a bin (Visium HD: 2).
    cell_spacing_um, cell_radius_um, nucleus_radius_um, occupancy
        Cell layout: lattice spacing, ranges of the cell and nucleus radii (uniform per
        cell), share of lattice sites holding a cell.
    n_cell_types, n_genes
        Number of expression profiles and genes.
    counts_per_bin, background_per_bin
        Mean transcripts per bin inside cells and outside them.
    diffusion_fraction, diffusion_um
        Share of transcripts displaced, and the spread of the displacement.
    random_state
        Seed or generator.

    Returns
    -------
    AnnData
        Bins x genes in the layout of :func:`spatiome.io.read_visium_hd`: integer counts
        in ``X`` and ``layers['counts']``, bin centres in micrometres in
        ``obsm['spatial']`` (``uns['spatial_unit'] = 'um'``), ``obs`` columns
        ``array_row``, ``array_col``, ``in_tissue``, ``cell_label`` and ``nucleus_label``
        (the true segmentation, 0 = none) and ``cell_type``. ``obsm['true_cell_counts']``
        (bins x cells, sparse) holds each bin's counts by the cell that made them
        (column ``j`` is label ``j + 1``); ``uns['simulation']`` the parameters and the
        type of each cell.

    Examples
    --------
    >>> bins = simulate_visium_hd(width_um=60, height_um=60, random_state=0)
    >>> bins.shape, bins.uns["spatial_unit"]
    ((900, 100), 'um')
    >>> int(bins.obs["cell_label"].max()) == bins.obsm["true_cell_counts"].shape[1]
    True
    """
    _check(width_um, height_um, bin_size_um, cell_radius_um, nucleus_radius_um, occupancy)
    rng = check_random_state(random_state)
    n_rows, n_cols = int(height_um // bin_size_um), int(width_um // bin_size_um)
    row, col = np.divmod(np.arange(n_rows * n_cols), n_cols)
    coords = np.column_stack([(col + 0.5) * bin_size_um, (row + 0.5) * bin_size_um])
    centres = _cell_centres(width_um, height_um, cell_spacing_um, occupancy, rng)
    n_cells = len(centres)
    cell_radius = rng.uniform(*cell_radius_um, size=n_cells)
    nucleus_radius = rng.uniform(*nucleus_radius_um, size=n_cells)
    distance, nearest = cKDTree(centres).query(coords)
    cell_label = np.where(distance <= cell_radius[nearest], nearest + 1, 0)
    nucleus_label = np.where(distance <= nucleus_radius[nearest], nearest + 1, 0)
    cell_types = rng.integers(0, n_cell_types, size=n_cells)
    profiles = _profiles(n_cell_types, n_genes, rng)
    source_bin, source_cell, gene = _transcripts(
        cell_label, cell_types, profiles, counts_per_bin, background_per_bin, rng
    )
    target = _diffuse(
        source_bin, n_rows, n_cols, diffusion_fraction, diffusion_um / bin_size_um, rng
    )
    kept = target >= 0
    target, source_cell, gene = target[kept], source_cell[kept], gene[kept]
    n_bins = n_rows * n_cols
    counts = sp.coo_matrix(
        (np.ones(len(target), dtype=np.int64), (target, gene)), shape=(n_bins, n_genes)
    ).tocsr()
    from_cell = source_cell > 0
    truth = sp.coo_matrix(
        (np.ones(int(from_cell.sum()), dtype=np.int64),
         (target[from_cell], source_cell[from_cell] - 1)),
        shape=(n_bins, n_cells),
    ).tocsr()  # fmt: skip
    type_names = np.array([f"type_{t}" for t in range(n_cell_types)])
    obs = pd.DataFrame(
        {
            "array_row": row,
            "array_col": col,
            "in_tissue": np.ones(n_bins, dtype=np.int64),
            "cell_label": cell_label,
            "nucleus_label": nucleus_label,
            "cell_type": pd.Categorical(
                np.where(cell_label > 0, type_names[cell_types[cell_label - 1]], "background")
            ),
        }
    )
    parameters = {
        "width_um": width_um,
        "height_um": height_um,
        "bin_size_um": bin_size_um,
        "cell_spacing_um": cell_spacing_um,
        "cell_radius_um": list(cell_radius_um),
        "nucleus_radius_um": list(nucleus_radius_um),
        "occupancy": occupancy,
        "n_cell_types": n_cell_types,
        "counts_per_bin": counts_per_bin,
        "diffusion_fraction": diffusion_fraction,
        "diffusion_um": diffusion_um,
        "background_per_bin": background_per_bin,
    }
    bins = build_anndata(
        counts,
        obs_names=_barcodes(row, col, bin_size_um),
        var_names=[f"gene_{g}" for g in range(n_genes)],
        coordinates=coords,
        obs=obs,
        source={
            "reader": "simulate_visium_hd",
            "format": "simulation",
            "bin_size_um": bin_size_um,
            "random_state": random_state if isinstance(random_state, int) else None,
        },
        spatial_unit="um",
        where="simulate_visium_hd",
    )
    bins.obsm["true_cell_counts"] = truth
    bins.uns["simulation"] = {**parameters, "cell_type": type_names[cell_types].tolist()}
    return bins


def right_cell_fraction(bins: AnnData, cell_ids: pd.Series) -> float:
    """Share of the counts made by cells that an assignment gives to the right cell.

    Parameters
    ----------
    bins
        Bins from :func:`simulate_visium_hd`.
    cell_ids
        Cell id per bin (the cell labels as text, NaN for none), as
        :func:`spatiome.io.bins.assign_bins` returns for labels taken from ``bins.obs``.

    Returns
    -------
    float
        Counts whose assigned cell is the cell that made them, over all counts made by
        cells (background counts are left out of both).

    Examples
    --------
    >>> bins = simulate_visium_hd(width_um=60, height_um=60, random_state=0)
    >>> truth = bins.obs["cell_label"].astype(str).where(bins.obs["cell_label"] > 0)
    >>> 0.8 < right_cell_fraction(bins, truth) < 1.0
    True
    """
    truth, assigned, columns = _matched(bins, cell_ids)
    return float(np.asarray(truth[assigned, columns]).sum() / truth.sum())


def assigned_purity(bins: AnnData, cell_ids: pd.Series) -> float:
    """Share of the counts given to cells that the right cell made.

    The complement counts what an assignment adds to cells wrongly: background and the
    neighbours' transcripts. Parameters as in :func:`right_cell_fraction`.

    Examples
    --------
    >>> bins = simulate_visium_hd(width_um=60, height_um=60, random_state=0)
    >>> truth = bins.obs["cell_label"].astype(str).where(bins.obs["cell_label"] > 0)
    >>> 0.8 < assigned_purity(bins, truth) < 1.0
    True
    """
    truth, assigned, columns = _matched(bins, cell_ids)
    counts = sp.csr_matrix(bins.layers["counts"] if "counts" in bins.layers else bins.X)
    total = counts[assigned].sum()
    return float(np.asarray(truth[assigned, columns]).sum() / total) if total else 0.0


def _matched(bins: AnnData, cell_ids: pd.Series) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """The truth matrix, the bins given a simulated cell, and that cell's column."""
    if "true_cell_counts" not in bins.obsm:
        raise SpatiomeInputError(
            "bins.obsm['true_cell_counts'] is missing: pass bins from simulate_visium_hd"
        )
    truth = sp.csr_matrix(bins.obsm["true_cell_counts"])
    ids = pd.Series(cell_ids).to_numpy(dtype=object)
    if len(ids) != bins.n_obs:
        raise SpatiomeInputError(f"cell_ids has {len(ids)} entries for {bins.n_obs} bins")
    labels = pd.to_numeric(pd.Series(ids), errors="coerce").to_numpy(dtype=np.float64)
    assigned = np.flatnonzero(np.isfinite(labels) & (labels >= 1) & (labels <= truth.shape[1]))
    return truth, assigned, labels[assigned].astype(np.int64) - 1


def _check(width_um, height_um, bin_size_um, cell_radius_um, nucleus_radius_um, occupancy):
    if min(width_um, height_um) < bin_size_um or bin_size_um <= 0:
        raise SpatiomeInputError(
            f"width_um={width_um}, height_um={height_um}, bin_size_um={bin_size_um}: the area "
            "must hold at least one bin of positive size"
        )
    if max(nucleus_radius_um) > min(cell_radius_um):
        raise SpatiomeInputError(
            f"nucleus_radius_um={nucleus_radius_um} exceeds cell_radius_um={cell_radius_um}: "
            "nuclei must be smaller than cells"
        )
    if not 0 < occupancy <= 1:
        raise SpatiomeInputError(f"occupancy={occupancy}: pass a share in (0, 1]")


def _cell_centres(width, height, spacing, occupancy, rng) -> np.ndarray:
    row_step = spacing * np.sqrt(3) / 2
    rows = np.arange(0, height + row_step, row_step)
    cols = np.arange(0, width + spacing, spacing)
    y, x = np.meshgrid(rows, cols, indexing="ij")
    x = x + (np.arange(len(rows))[:, None] % 2) * spacing / 2
    sites = np.column_stack([x.ravel(), y.ravel()])
    sites = sites + rng.uniform(-0.15, 0.15, size=sites.shape) * spacing
    inside = (sites[:, 0] >= 0) & (sites[:, 0] < width) & (sites[:, 1] >= 0)
    sites = sites[inside & (sites[:, 1] < height)]
    return sites[rng.random(len(sites)) < occupancy]


def _profiles(n_types: int, n_genes: int, rng) -> np.ndarray:
    base = rng.gamma(0.8, 1.0, size=n_genes)
    profiles = np.tile(base, (n_types, 1))
    n_markers = max(1, n_genes // 10)
    for t in range(n_types):
        markers = rng.choice(n_genes, size=n_markers, replace=False)
        profiles[t, markers] *= 5.0
    return profiles / profiles.sum(axis=1, keepdims=True)


def _transcripts(cell_label, cell_types, profiles, counts_per_bin, background_per_bin, rng):
    rate = np.where(cell_label > 0, counts_per_bin, background_per_bin)
    per_bin = rng.poisson(rate)
    source_bin = np.repeat(np.arange(len(cell_label)), per_bin)
    source_cell = cell_label[source_bin]
    profile = np.where(source_cell > 0, cell_types[np.maximum(source_cell - 1, 0)], -1)
    gene = np.empty(len(source_bin), dtype=np.int64)
    ambient = profiles.mean(axis=0)
    for t in range(-1, len(profiles)):
        chosen = np.flatnonzero(profile == t)
        p = ambient if t < 0 else profiles[t]
        gene[chosen] = rng.choice(len(p), size=len(chosen), p=p)
    return source_bin, source_cell, gene


def _diffuse(source_bin, n_rows, n_cols, fraction, spread_bins, rng) -> np.ndarray:
    """Target bin of each transcript after diffusion (-1: left the grid)."""
    row, col = np.divmod(source_bin, n_cols)
    moved = np.flatnonzero(rng.random(len(source_bin)) < fraction)
    shift = np.rint(rng.normal(0.0, spread_bins, size=(len(moved), 2))).astype(np.int64)
    row, col = row.copy(), col.copy()
    row[moved] += shift[:, 0]
    col[moved] += shift[:, 1]
    inside = (row >= 0) & (row < n_rows) & (col >= 0) & (col < n_cols)
    return np.where(inside, row * n_cols + col, -1)


def _barcodes(row: np.ndarray, col: np.ndarray, bin_size_um: float) -> list[str]:
    """Space Ranger's bin barcodes, ``s_002um_<row>_<col>-1``."""
    prefix = f"s_{round(bin_size_um):03d}um_"
    return [f"{prefix}{r:05d}_{c:05d}-1" for r, c in zip(row.tolist(), col.tolist(), strict=True)]
