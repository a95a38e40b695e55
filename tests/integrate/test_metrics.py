"""Batch mixing and label conservation (integrate.mixing_metrics): harmonypy's LISI."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
from harmonypy import compute_lisi

from spatiome._core.validate import SpatiomeInputError
from spatiome.integrate import mixing_metrics


def _embedded(n_per_group=60, n_batches=2, n_labels=3, batch_shift=0.0, seed=0):
    """Well-separated label clusters; each batch moved by ``batch_shift`` along one axis."""
    rng = np.random.default_rng(seed)
    rows, batches, labels = [], [], []
    for batch in range(n_batches):
        for label in range(n_labels):
            centre = np.zeros(5)
            centre[0] = 20.0 * label
            centre[1] = batch_shift * batch
            rows.append(centre + rng.normal(0.0, 1.0, (n_per_group, 5)))
            batches += [f"b{batch}"] * n_per_group
            labels += [f"l{label}"] * n_per_group
    adata = anndata.AnnData(np.zeros((len(batches), 1)), obsm={"X_emb": np.vstack(rows)})
    adata.obs["sample"] = pd.Categorical(batches)
    adata.obs["label"] = pd.Categorical(labels)
    return adata


@pytest.mark.parametrize("perplexity", [30.0, 10.0])
def test_lisi_equals_harmonypy(perplexity):
    adata = _embedded(batch_shift=2.0)
    metrics = mixing_metrics(adata, "X_emb", label_key="label", perplexity=perplexity)
    lisi = compute_lisi(adata.obsm["X_emb"], adata.obs, ["sample", "label"], perplexity)
    assert metrics["ilisi"] == pytest.approx(np.median(lisi[:, 0]), rel=1e-12)
    assert metrics["clisi"] == pytest.approx(np.median(lisi[:, 1]), rel=1e-12)
    # scIB's rescaling: (iLISI - 1) / (B - 1) and (L - cLISI) / (L - 1)
    assert metrics["batch_mixing"] == pytest.approx(metrics["ilisi"] - 1.0)
    assert metrics["label_purity"] == pytest.approx((3.0 - metrics["clisi"]) / 2.0)
    assert list(metrics.index) == [
        "ilisi", "batch_mixing", "batch_silhouette", "clisi", "label_purity", "label_silhouette",
    ]  # fmt: skip


@pytest.mark.parametrize("n_batches", [2, 3])
def test_well_mixed_batches_score_the_number_of_batches(n_batches):
    metrics = mixing_metrics(_embedded(n_batches=n_batches), "X_emb", label_key="label")
    # A random mixture falls a little short of B: about 30 effective neighbours sample
    # the shares with noise (measured 1.93 for 2 batches, 2.70 for 3).
    assert n_batches - 0.4 < metrics["ilisi"] <= n_batches
    assert metrics["batch_mixing"] > 0.8
    assert metrics["clisi"] == pytest.approx(1.0, abs=1e-3)  # labels 20 sd apart
    assert metrics["label_purity"] > 0.99
    assert metrics["batch_silhouette"] > 0.95


def test_separated_batches_score_one():
    metrics = mixing_metrics(_embedded(batch_shift=40.0), "X_emb", label_key="label")
    assert metrics["ilisi"] == pytest.approx(1.0, abs=1e-3)
    assert metrics["batch_mixing"] < 0.01
    assert metrics["batch_silhouette"] < 0.5


def test_subsample_is_seeded_and_close_to_all_spots():
    adata = _embedded(n_per_group=100, batch_shift=1.5)
    whole = mixing_metrics(adata, "X_emb", label_key="label")
    part = mixing_metrics(adata, "X_emb", label_key="label", max_spots=300, random_state=3)
    again = mixing_metrics(adata, "X_emb", label_key="label", max_spots=300, random_state=3)
    pd.testing.assert_series_equal(part, again)
    assert part["ilisi"] != whole["ilisi"]
    assert part["ilisi"] == pytest.approx(whole["ilisi"], abs=0.15)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"use_rep": "X_missing"}, "obsm\\['X_missing'\\] is missing"),
        ({"sample_key": "batch"}, "obs\\['batch'\\] is missing"),
        ({"label_key": "cell_type"}, "obs\\['cell_type'\\] is missing"),
        ({"perplexity": 0}, "perplexity must be"),
        ({"max_spots": 1}, "max_spots must be"),
    ],
)
def test_bad_input(kwargs, match):
    adata = _embedded(n_per_group=10)
    arguments = {"use_rep": "X_emb", **kwargs}
    with pytest.raises(SpatiomeInputError, match=match):
        mixing_metrics(adata, arguments.pop("use_rep"), **arguments)


def test_nan_embedding_is_refused():
    adata = _embedded(n_per_group=10)
    adata.obsm["X_emb"][0, 0] = np.nan
    with pytest.raises(SpatiomeInputError, match="finite"):
        mixing_metrics(adata, "X_emb")
