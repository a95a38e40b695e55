"""The SVG methods give identical results on a Dask cluster and in this process."""

from __future__ import annotations

import sys
import warnings

import pandas as pd
import pytest

import spatiome as sm

distributed = pytest.importorskip("distributed", reason="dask.distributed is a dev extra")


@pytest.fixture(scope="module")
def client():
    """A local cluster of two worker processes (so that every task really is pickled)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )
        with distributed.Client(cluster) as dask_client:
            yield dask_client
        cluster.close()


@pytest.fixture(scope="module")
def tissue():
    adata = sm.datasets.simulate_tissue(n_spots=600, n_genes=40, random_state=2)
    sm.pp.normalize(adata)
    sm.graph.spatial_neighbors(adata, method="knn", n_neighbors=6)
    return adata


def test_sparkx_on_a_cluster_is_identical(client, tissue, monkeypatch):
    # Several blocks of spots, so that the cluster really splits the work.
    module = sys.modules[sm.svg.sparkx.__module__]
    monkeypatch.setattr(module, "SPOT_BLOCK", 128)
    local = sm.svg.sparkx(tissue, copy=True, check_depth=False)
    remote = sm.svg.sparkx(tissue, copy=True, check_depth=False, client=client)
    pd.testing.assert_frame_equal(local, remote, check_exact=True)


def test_moran_on_a_cluster_is_identical(client, tissue):
    local = sm.svg.moran(tissue, chunk_size=7, n_permutations=20, copy=True)
    remote = sm.svg.moran(tissue, chunk_size=7, n_permutations=20, copy=True, client=client)
    pd.testing.assert_frame_equal(local, remote, check_exact=True)


def test_trendseek_on_a_cluster_is_identical(client, tissue):
    genes = list(tissue.var_names[:6])
    local = sm.svg.trendseek(tissue, genes=genes, n_permutations=30, chunk_size=2, copy=True)
    remote = sm.svg.trendseek(
        tissue, genes=genes, n_permutations=30, chunk_size=2, copy=True, client=client
    )
    pd.testing.assert_frame_equal(local, remote, check_exact=True)
