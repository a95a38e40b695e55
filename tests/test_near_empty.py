"""Near-empty spots: each SVG and domain entry point warns once and names them; clean data don't."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import spatiome as sm
from spatiome._core.near_empty import library_sizes, near_empty_checked, warn_near_empty

THINNED = 7  # the spot left with 2 counts

# The cheapest settings each method allows: the check runs before any fitting.
ENTRY_POINTS = {
    "svg.moran": lambda a: sm.svg.moran(a, copy=True, check_depth=False),
    "svg.geary": lambda a: sm.svg.geary(a, copy=True, check_depth=False),
    "svg.sparkx": lambda a: sm.svg.sparkx(a, copy=True, check_depth=False),
    "svg.spatialde": lambda a: sm.svg.spatialde(a, genes=a.var_names[:3], copy=True),
    "svg.spatialde_model_search": lambda a: sm.svg.spatialde_model_search(
        a, genes=a.var_names[:2], copy=True
    ),
    "svg.trendseek": lambda a: sm.svg.trendseek(
        a, genes=a.var_names[:1], n_permutations=10, copy=True
    ),
    "domains.cluster": lambda a: sm.domains.cluster(a, 3, n_top_genes=None, copy=True),
    "domains.choose_n_domains": lambda a: sm.domains.choose_n_domains(
        a, method="bic", k_range=(2, 3), n_comps=5, n_top_genes=None
    ),
    "domains.kmeans": lambda a: sm.domains.kmeans(a, 3, n_init=1, copy=True),
    "domains.gaussian_mixture": lambda a: sm.domains.gaussian_mixture(a, 3, copy=True),
    "domains.hierarchical": lambda a: sm.domains.hierarchical(a, 3, copy=True),
    "domains.leiden": lambda a: sm.domains.leiden(a, copy=True),
    "domains.bison": lambda a: sm.domains.bison(
        a, 2, 1, layer="counts", n_top_genes=None, min_spot_counts=1, n_iterations=2, copy=True
    ),
    "domains.markers": lambda a: sm.domains.markers(a, "domain", method="t-test"),
}


def _tissue(thin: bool) -> ad.AnnData:
    """A small normalized tissue with a graph, PCA features and domains."""
    adata = sm.datasets.simulate_tissue(n_spots=120, n_genes=20, n_domains=3, random_state=0)
    if thin:
        counts = adata.layers["counts"].toarray()
        counts[THINNED] = 0
        counts[THINNED, :2] = 1
        adata.layers["counts"] = sp.csr_matrix(counts)
        adata.X = adata.layers["counts"].copy()
    sm.pp.normalize(adata)
    sm.graph.spatial_neighbors(adata)
    adata.obsm["X_pca"] = np.asarray(adata.X[:, :5].todense())
    # A graph stored as built on X_pca spares Leiden scanpy's kNN search (and its compilation).
    adata.uns["neighbors"] = {
        "params": {"use_rep": "X_pca"},
        "connectivities_key": "spatial_connectivities",
    }
    return adata


@pytest.fixture(scope="module")
def thinned() -> ad.AnnData:
    return _tissue(thin=True)


@pytest.fixture(scope="module")
def clean() -> ad.AnnData:
    return _tissue(thin=False)


def _near_empty_warnings(call, adata: ad.AnnData) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call(adata.copy())
    return [str(w.message) for w in caught if "near-empty" in str(w.message)]


@pytest.mark.parametrize("caller", sorted(ENTRY_POINTS))
def test_each_entry_point_warns_once_and_names_the_spot(thinned, caller):
    messages = _near_empty_warnings(ENTRY_POINTS[caller], thinned)
    assert len(messages) == 1, messages
    assert messages[0].startswith(f"{caller}: 1 of 120 spots is near-empty")
    assert f"{thinned.obs_names[THINNED]!r} (2 counts)" in messages[0]
    assert "quality_flags" in messages[0]


@pytest.mark.parametrize("caller", sorted(ENTRY_POINTS))
def test_clean_data_give_no_warning(clean, caller):
    assert _near_empty_warnings(ENTRY_POINTS[caller], clean) == []


def test_gnn_warns_once(thinned, clean):
    pytest.importorskip("torch", reason="domains.gnn needs the deep extra")

    def call(adata):
        sm.domains.gnn(
            adata, 3, hidden_dims=(8, 4), n_epochs=1, n_top_genes=None, n_init=1, n_jobs=1,
            copy=True,
        )  # fmt: skip

    messages = _near_empty_warnings(call, thinned)
    assert len(messages) == 1 and messages[0].startswith("domains.gnn: 1 of 120 spots")
    assert _near_empty_warnings(call, clean) == []


def test_bison_ignores_the_spots_it_leaves_out(thinned):
    def call(adata):
        # The default min_spot_counts=100 leaves the 2-count spot out of the model.
        sm.domains.bison(adata, 2, 1, layer="counts", n_top_genes=None, n_iterations=2)

    assert _near_empty_warnings(call, thinned) == []


def test_library_sizes_follow_what_the_method_reads(thinned):
    raw, source = library_sizes(thinned, "counts")
    assert source == "np.ravel(adata.layers['counts'].sum(axis=1))" and raw[THINNED] == 2
    # adata.X is log-normalized: the counts layer gives the library sizes.
    fallback, source = library_sizes(thinned)
    np.testing.assert_array_equal(fallback, raw)
    with_totals = thinned.copy()
    with_totals.obs["total_counts"] = raw
    assert library_sizes(with_totals)[1] == "adata.obs['total_counts']"
    assert library_sizes(ad.AnnData(np.full((3, 2), 0.5))) is None


def test_message_lists_five_spots_and_the_fix():
    counts = np.full((20, 3), 1000)
    counts[:7] = [[1, 0, 0]]
    adata = ad.AnnData(sp.csr_matrix(counts))
    with pytest.warns(UserWarning, match="7 of 20 spots are near-empty") as caught:
        warn_near_empty(adata, caller="svg.test")
    message = str(caught[0].message)
    assert "'4' (1 count) and 2 more" in message
    assert "adata = adata[np.ravel(adata.X.sum(axis=1)) >= 30].copy()" in message


@pytest.mark.parametrize(
    "adata",
    [
        ad.AnnData(np.zeros((4, 2))),  # no counts at all
        ad.AnnData(sp.csr_matrix((4, 2))),  # nothing stored
        ad.AnnData(np.array([["a"], ["b"]], dtype=object)),  # not numeric
        ad.AnnData(np.array([[np.nan, 1.0], [2.0, 3.0]])),  # not counts, no fallback
    ],
)
def test_valid_inputs_without_library_sizes_never_warn_or_fail(adata, recwarn):
    warn_near_empty(adata, caller="svg.test")
    warn_near_empty(adata, layer="missing", caller="svg.test")
    assert not [w for w in recwarn if "near-empty" in str(w.message)]


def test_nested_calls_are_silenced():
    adata = ad.AnnData(np.array([[900], [1000], [1]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with near_empty_checked():
            warn_near_empty(adata, caller="svg.test")
    with pytest.warns(UserWarning, match="near-empty"):
        warn_near_empty(adata, caller="svg.test")
