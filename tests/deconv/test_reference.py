"""Cell-type signatures from a labelled reference."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest

from spatiome._core.validate import SpatiomeInputError
from spatiome.deconv import reference_signatures


def test_mean_signatures_are_per_type_mean_counts(reference):
    adata, _ = reference
    signatures = reference_signatures(adata, select_genes=False)
    dense = adata.X
    for name in signatures.columns:
        mask = (adata.obs["cell_type"] == name).to_numpy()
        np.testing.assert_allclose(
            signatures[name].to_numpy(),
            dense[mask][:, adata.var_names.get_indexer(signatures.index)].mean(axis=0),
            rtol=1e-6,
        )
    assert signatures.attrs["n_cells"] == {f"type{t}": 60 for t in range(5)}


def test_gene_selection_keeps_markers_and_drops_flat_genes():
    rng = np.random.default_rng(0)
    profiles = np.full((3, 40), 2.0)
    profiles[0, :5] = 20.0  # markers of type0
    profiles[1, 5:10] = 20.0
    profiles[2, 10:15] = 20.0  # equal library sizes, so flat genes have equal shares
    codes = np.repeat(np.arange(3), 50)
    counts = rng.poisson(profiles[codes]).astype(np.float32)
    adata = anndata.AnnData(counts, obs=pd.DataFrame({"cell_type": codes.astype(str)}))
    kept = reference_signatures(adata).index.astype(int).tolist()
    assert set(range(15)).issubset(kept)
    assert len(kept) < 20  # flat genes dropped (a few may pass by sampling noise)


def test_nb_regression_removes_batch_effects():
    rng = np.random.default_rng(1)
    n_genes = 80
    profiles = rng.gamma(1.0, 3.0, (3, n_genes))
    codes = np.tile(np.repeat(np.arange(3), 40), 2)
    batch = np.repeat([0, 1], 120)
    batch_effect = np.exp(rng.normal(0, 0.8, n_genes))
    # batch 1 only has type 0 and 1 cells boosted: unbalanced design confounds the means
    keep = ~((batch == 0) & (codes == 2))
    codes, batch = codes[keep], batch[keep]
    mean = profiles[codes] * np.where(batch[:, None] == 1, batch_effect[None, :], 1.0)
    adata = anndata.AnnData(
        rng.poisson(mean).astype(np.float32),
        obs=pd.DataFrame({"cell_type": codes.astype(str), "batch": batch.astype(str)}),
    )
    plain = reference_signatures(adata, method="mean", select_genes=False)
    fitted = reference_signatures(adata, method="nb", batch_key="batch", select_genes=False)
    # true relative profile of type 2 against type 0, free of batch effects
    truth = np.log(profiles[2] / profiles[0])
    err_mean = np.abs(np.log(plain["2"] / plain["0"]).to_numpy() - truth).mean()
    err_nb = np.abs(np.log(fitted["2"] / fitted["0"]).to_numpy() - truth).mean()
    assert err_nb < 0.5 * err_mean


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"labels": "missing"}, "is missing"),
        ({"method": "deep"}, "method must be"),
        ({"batch_key": "cell_type"}, "needs method='nb'"),
    ],
)
def test_bad_arguments(reference, kwargs, message):
    adata, _ = reference
    with pytest.raises(SpatiomeInputError, match=message):
        reference_signatures(adata, **kwargs)


def test_bad_labels_and_counts():
    adata = anndata.AnnData(np.ones((6, 4)), obs=pd.DataFrame({"cell_type": list("AAABBB")}))
    adata.obs.loc[adata.obs_names[0], "cell_type"] = np.nan
    with pytest.raises(SpatiomeInputError, match="missing labels"):
        reference_signatures(adata)
    single = anndata.AnnData(np.ones((6, 4)), obs=pd.DataFrame({"cell_type": ["A"] * 6}))
    with pytest.raises(SpatiomeInputError, match="at least 2 cell types"):
        reference_signatures(single, min_cells=1)
    negative = anndata.AnnData(-np.ones((6, 4)), obs=pd.DataFrame({"cell_type": list("AAABBB")}))
    with pytest.raises(SpatiomeInputError, match="negative"):
        reference_signatures(negative, min_cells=1)
