"""Simulated gene co-expression modules with known membership (tests and benchmarks).

The stIHC paper's simulations replicate four mouse-brain marker genes (Calb2, Ttr, Gpr88,
Cck) as noisy copies on 2,696 Visium spots: (a) 25 copies of each (100 genes), (b) module
sizes 25/16/6/2 (Cck/Gpr88/Calb2/Ttr, 49 genes) and (c) design (b) on a sparse subset of
260 spots. Here the four templates are synthetic fields with the same character: an outer
cortical band (Cck-like), a large blob (Gpr88-like), a narrow stripe (Calb2-like) and
small hot spots (Ttr-like). Each copy draws negative-binomial counts around its own level
and effect size; values are ``log1p`` counts, as in the paper's files.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from .._core.random import check_random_state
from ..datasets.simulate import simulate_tissue

TEMPLATES = ("Calb2", "Ttr", "Gpr88", "Cck")
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
