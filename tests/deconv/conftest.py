"""Synthetic references and spots with known cell-type fractions."""

from __future__ import annotations

from types import SimpleNamespace

import anndata
import numpy as np
import pandas as pd
import pytest


def make_reference(n_types=5, n_genes=150, cells_per_type=60, depth=60.0, seed=0):
    """Labelled single cells drawn from known type profiles (expected counts per cell)."""
    rng = np.random.default_rng(seed)
    shares = rng.gamma(0.4, 1.0, size=(n_types, n_genes))
    shares /= shares.sum(axis=1, keepdims=True)
    profiles = depth * shares
    codes = np.repeat(np.arange(n_types), cells_per_type)
    library = rng.lognormal(0.0, 0.3, codes.size)
    counts = rng.poisson(profiles[codes] * library[:, None]).astype(np.float32)
    names = [f"type{t}" for t in range(n_types)]
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(np.asarray(names)[codes])},
        index=[f"cell{i}" for i in range(codes.size)],
    )
    var = pd.DataFrame(index=[f"gene{g}" for g in range(n_genes)])
    return anndata.AnnData(counts, obs=obs, var=var), profiles


def make_spots(
    profiles, n_spots=200, cells=8.0, gene_effect_sd=0.0, depth=1.0, seed=1, max_types=3
):
    """Spots mixing a few types with Dirichlet shares; truth in obsm['truth']."""
    rng = np.random.default_rng(seed)
    n_types, n_genes = profiles.shape
    fractions = np.zeros((n_spots, n_types))
    for i in range(n_spots):
        present = rng.choice(n_types, size=rng.integers(1, max_types + 1), replace=False)
        fractions[i, present] = rng.dirichlet(np.ones(present.size))
    effect = np.exp(rng.normal(0.0, gene_effect_sd, n_genes))
    mean = depth * cells * (fractions @ profiles) * effect
    counts = rng.poisson(mean).astype(np.float32)
    index = [f"spot{i}" for i in range(n_spots)]
    adata = anndata.AnnData(
        counts,
        obs=pd.DataFrame(index=index),
        var=pd.DataFrame(index=[f"gene{g}" for g in range(n_genes)]),
    )
    adata.obsm["truth"] = pd.DataFrame(
        fractions, index=index, columns=[f"type{t}" for t in range(n_types)]
    )
    return adata


def rmse(estimated: pd.DataFrame, truth: pd.DataFrame) -> float:
    return float(np.sqrt(np.nanmean((estimated[truth.columns].to_numpy() - truth.to_numpy()) ** 2)))


@pytest.fixture(scope="session")
def synth() -> SimpleNamespace:
    """The synthetic-data helpers of this folder."""
    return SimpleNamespace(make_reference=make_reference, make_spots=make_spots, rmse=rmse)


@pytest.fixture(scope="module")
def reference():
    return make_reference()
