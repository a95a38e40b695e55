"""Simulated gene co-expression modules with known membership (tests and benchmarks).

The stIHC paper's simulations replicate four mouse-brain marker genes (Calb2, Ttr, Gpr88,
Cck) as noisy copies on 2,696 Visium spots: (a) 25 copies of each (100 genes), (b) module
sizes 25/16/6/2 (Cck/Gpr88/Calb2/Ttr, 49 genes) and (c) design (b) on a sparse subset of
260 spots. Here the four templates are synthetic fields with the same character: an outer
cortical band (Cck-like), a large blob (Gpr88-like), a narrow stripe (Calb2-like) and
small hot spots (Ttr-like). Each copy draws negative-binomial counts around its own level
and effect size; values are ``log1p`` counts, as in the paper's files.

:func:`pattern_modules` is closer to real data: many modules, each sharing one random
pattern (a gradient, a hot spot, a stripe or a wave, as in
:func:`spatiome.datasets.simulate_tissue`), of 2 to 12 genes, genes with a pattern of their
own that belong to no module, and expression levels that differ by orders of magnitude
between genes.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from .._core.random import check_random_state
from ..datasets.simulate import simulate_tissue

TEMPLATES = ("Calb2", "Ttr", "Gpr88", "Cck")
PATTERN_KINDS = ("gradient", "hotspot", "stripe", "periodic")
DESIGNS = {
    # design: (module sizes in TEMPLATES order, interleaved like the paper's columns)
    "equal": (25, 25, 25, 25),
    "imbalanced": (6, 2, 16, 25),
    "sparse": (6, 2, 16, 25),
}
N_SPOTS = 2696
N_SPARSE = 260


def template_fields(unit: np.ndarray) -> np.ndarray:
    """The four template fields in [0, 1] at unit-square coordinates, (n_spots, 4)."""
    centre = unit.mean(axis=0)
    radius = np.sqrt(((unit - centre) ** 2).sum(axis=1))
    outer = np.quantile(radius, 0.97)
    cck = np.exp(-(((radius - 0.8 * outer) / (0.12 * outer)) ** 2))
    gpr88 = np.exp(-((unit - (centre + [0.15, 0.15])) ** 2).sum(axis=1) / (2 * 0.1**2))
    direction = np.array([1.0, -1.0]) / np.sqrt(2.0)
    offset = (unit - centre) @ direction
    calb2 = np.exp(-(((offset - 0.2) / 0.05) ** 2))
    spots = centre + np.array([[-0.18, -0.18], [0.0, -0.28], [-0.28, 0.0]])
    ttr = np.zeros(unit.shape[0])
    for spot in spots:
        ttr = np.maximum(ttr, np.exp(-((unit - spot) ** 2).sum(axis=1) / (2 * 0.045**2)))
    return np.column_stack([calb2, ttr, gpr88, cck])


def coexpression_modules(
    design: str = "equal",
    *,
    n_spots: int = N_SPOTS,
    n_sparse: int = N_SPARSE,
    dispersion: float = 0.3,
    random_state: int | np.random.Generator | None = 0,
) -> AnnData:
    """Spots x genes ``log1p`` counts of noisy copies of the four templates.

    ``var["module"]`` holds the template index (0 = Calb2, 1 = Ttr, 2 = Gpr88, 3 = Cck) and
    ``var["template"]`` its name; ``obsm["templates"]`` the fields; raw counts are in
    ``layers["counts"]`` (CSR). Genes are interleaved (one copy of each template in turn
    while copies remain), like the columns of the paper's files.
    """
    rng = check_random_state(random_state)
    tissue = simulate_tissue(n_spots=n_spots, n_genes=10, random_state=rng)
    coords = np.asarray(tissue.obsm["spatial"], dtype=np.float64)
    if design == "sparse":
        keep = np.sort(rng.choice(n_spots, size=n_sparse, replace=False))
        coords = coords[keep]
    unit = (coords - coords.min(axis=0)) / np.ptp(coords, axis=0).max()
    fields = template_fields(unit)
    sizes = list(DESIGNS[design])
    order = []
    while any(sizes):
        for k in range(len(sizes)):
            if sizes[k]:
                order.append(k)
                sizes[k] -= 1
    module = np.array(order)
    level = rng.uniform(0.5, 2.0, size=module.size)
    effect = rng.uniform(1.5, 2.5, size=module.size)
    mean = level[None, :] * np.exp(effect[None, :] * fields[:, module])
    size = 1.0 / dispersion
    counts = rng.negative_binomial(size, size / (size + mean)).astype(np.float64)
    copies = np.zeros(len(TEMPLATES), dtype=np.int64)
    names = []
    for k in module:
        copies[k] += 1
        names.append(f"{TEMPLATES[k]}_Iter{copies[k]}")
    adata = AnnData(
        np.log1p(counts),
        obsm={"spatial": coords, "templates": fields},
        layers={"counts": sp.csr_matrix(counts)},
    )
    adata.var_names = names
    adata.obs_names = [f"spot{i}" for i in range(adata.n_obs)]
    adata.var["module"] = module
    adata.var["template"] = np.asarray(TEMPLATES)[module]
    return adata


def random_pattern(kind: str, unit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random pattern in [0, 1] at unit-square coordinates (n_spots,).

    The kinds and their parameter ranges follow :func:`spatiome.datasets.simulate_tissue`:
    a linear gradient along a random direction, a Gaussian hot spot of radius 0.07-0.12
    around a random spot, a narrow Gaussian stripe across a random direction and a sine
    wave of 2-4 periods across the tissue.
    """
    if kind == "hotspot":
        centre = unit[rng.integers(unit.shape[0])]
        radius = rng.uniform(0.07, 0.12)
        return np.exp(-((unit - centre) ** 2).sum(axis=1) / (2 * radius**2))
    angle = rng.uniform(0, 2 * np.pi if kind == "gradient" else np.pi)
    projected = unit @ np.array([np.cos(angle), np.sin(angle)])
    low, high = projected.min(), projected.max()
    if kind == "gradient":
        return (projected - low) / (high - low)
    if kind == "stripe":
        middle = low + (high - low) * rng.uniform(0.25, 0.75)
        width = (high - low) * rng.uniform(0.04, 0.08)
        return np.exp(-0.5 * ((projected - middle) / width) ** 2)
    if kind == "periodic":
        period = (high - low) / rng.uniform(2.0, 4.0)
        return 0.5 * (1.0 + np.sin(2 * np.pi * projected / period + rng.uniform(0, 2 * np.pi)))
    raise ValueError(f"unknown pattern kind {kind!r}; choose from {PATTERN_KINDS}")


def pattern_modules(
    *,
    n_spots: int = 1500,
    n_modules: int = 8,
    n_unassigned: int = 10,
    module_sizes: tuple[int, int] = (2, 12),
    level_sd: float = 1.0,
    effect: tuple[float, float] = (0.8, 1.6),
    dispersion: float = 0.1,
    random_state: int | np.random.Generator | None = 0,
) -> AnnData:
    """Spots x genes ``log1p`` counts of many modules with random shared patterns.

    Module ``k`` has one random pattern (kinds taken in turn from ``PATTERN_KINDS``) and
    a random number of member genes in ``module_sizes`` (inclusive); ``n_unassigned``
    further genes each follow a pattern of their own. Every gene has its own level,
    log-normal with ``level_sd`` (natural log) around 2 counts, and its own effect size
    (log fold change where the pattern is fully on), and draws negative-binomial counts.
    Genes are shuffled.

    Returns
    -------
    AnnData
        ``var["module"]``: the module (0 .. n_modules - 1), ``-1`` for genes with a
        pattern of their own; ``var["pattern"]``: the pattern kind; ``var["level"]``,
        ``var["effect"]``; ``obsm["templates"]``: every pattern (modules first);
        ``layers["counts"]`` (CSR).

    Examples
    --------
    >>> adata = pattern_modules(n_spots=300, n_modules=3, n_unassigned=2, random_state=1)
    >>> int(adata.var["module"].max()), int((adata.var["module"] == -1).sum())
    (2, 2)
    """
    rng = check_random_state(random_state)
    tissue = simulate_tissue(n_spots=n_spots, n_genes=10, random_state=rng)
    coords = np.asarray(tissue.obsm["spatial"], dtype=np.float64)
    unit = (coords - coords.min(axis=0)) / np.ptp(coords, axis=0).max()
    n_patterns = n_modules + n_unassigned
    kinds = [PATTERN_KINDS[k % len(PATTERN_KINDS)] for k in range(n_patterns)]
    fields = np.column_stack([random_pattern(kind, unit, rng) for kind in kinds])
    sizes = rng.integers(module_sizes[0], module_sizes[1] + 1, size=n_modules)
    source = np.concatenate(
        [np.repeat(np.arange(n_modules), sizes), n_modules + np.arange(n_unassigned)]
    )
    source = source[rng.permutation(source.size)]
    level = 2.0 * np.exp(rng.normal(0.0, level_sd, size=source.size))
    effects = rng.uniform(effect[0], effect[1], size=source.size)
    mean = level[None, :] * np.exp(effects[None, :] * fields[:, source])
    size = 1.0 / dispersion
    counts = rng.negative_binomial(size, size / (size + mean)).astype(np.float64)
    adata = AnnData(
        np.log1p(counts),
        obsm={"spatial": coords, "templates": fields},
        layers={"counts": sp.csr_matrix(counts)},
    )
    adata.var_names = [f"gene{j}" for j in range(source.size)]
    adata.obs_names = [f"spot{i}" for i in range(adata.n_obs)]
    adata.var["module"] = np.where(source < n_modules, source, -1)
    adata.var["pattern"] = np.asarray(kinds)[source]
    adata.var["level"] = level
    adata.var["effect"] = effects
    return adata
