"""The BISON paper's simulation design with known domains, gene groups and factors.

Used by the tests and ``benchmarks/bison.py``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ..datasets.simulate import simulate_tissue


def paper_design(
    *, delta: float, frac_null: float = 0.4, n_spots: int = 300, n_genes: int = 300, seed: int = 0
) -> AnnData:
    """The original's simulation design (DataGeneratorMOB.R) on a layered hex tissue.

    Four layered domains, three discriminating-gene groups with rates
    4 + delta (k - 1) + delta (l - 1) (plus U(-0.1, 0.1) jitter), non-discriminating rates
    U(2, 6), spot factors around 1, gene factors U(0.5, 1.5), Poisson counts. The true
    factors are kept in obs['s_true'] and var['g_true'], as the original passes them.
    """
    tissue = simulate_tissue(
        n_spots=n_spots, n_genes=10, n_domains=4, n_mito_genes=0, random_state=seed
    )
    rng = np.random.default_rng(seed)
    domain = tissue.obs["domain"].cat.codes.to_numpy()
    n_null = int(round(frac_null * n_genes))
    n_dg = n_genes - n_null
    group = np.concatenate([rng.integers(0, 3, n_dg), np.full(n_null, -1)])
    rates = 4.0 + delta * (np.arange(3)[:, None] + np.arange(4)[None, :])
    rates += rng.uniform(-0.1, 0.1, rates.shape)
    s = np.exp(rng.normal(0.0, 0.3, n_spots))
    s /= s.mean()
    g = rng.uniform(0.5, 1.5, n_genes)
    mean = np.empty((n_spots, n_genes))
    mean[:, :n_dg] = rates[group[:n_dg]][:, domain].T
    mean[:, n_dg:] = rng.uniform(2.0, 6.0, n_null)[None, :]
    mean *= s[:, None] * g[None, :]
    adata = AnnData(
        sp.csr_matrix(rng.poisson(mean).astype(np.float32)),
        obs=pd.DataFrame(
            {"domain": tissue.obs["domain"].to_numpy(), "s_true": s}, index=tissue.obs_names
        ),
        var=pd.DataFrame(index=[f"G{j}" for j in range(n_genes)]),
        obsm={"spatial": tissue.obsm["spatial"]},
    )
    adata.var["group"] = group
    adata.var["g_true"] = g
    return adata
