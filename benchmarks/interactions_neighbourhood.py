"""Neighbourhood enrichment and interaction matrix: speed at 1,000,000 cells, ratio to squidpy.

Tissue: cells uniform in a square (density 1 per unit area), 20 groups laid out as patches
(each cell takes the group of the nearest of 400 random centres), kNN graph with k = 6
built by ``spatiome.graph.spatial_neighbors`` (symmetric).

Timed (median of ``--repeats``): ``interactions.nhood_enrichment`` (analytic; and with
100 permutations at the smaller size) and ``interactions.interaction_matrix`` at
``--cells`` (default 1,000,000); at ``--peer-cells`` (default 100,000) the same calls and
squidpy's ``gr.nhood_enrichment`` (``--peer-perms`` permutations, one job, after a warm-up
call that compiles its numba kernel) and ``gr.interaction_matrix`` on the same graph.
Peak memory: the largest traced allocation (tracemalloc) of one call above what was
allocated before it, measured in a separate untimed call. Other jobs may share the
machine: the load average is recorded with each timing.

Calibration (``--null``): type-I error of the analytic z-test (two-sided, normal) at 0.05
on labels without spatial association: 5 groups (shares 0.4, 0.25, 0.15, 0.12, 0.08)
drawn at random over 5,000 uniform cells with a kNN (k = 6) graph, 200 labellings, the
15 distinct group pairs of each (3,000 tests; Clopper-Pearson 95% interval); also with
two libraries (``library_key``). Written to ``interactions_neighbourhood_null.csv``.

Run with a Python that has spatiome and squidpy::

    nice python benchmarks/interactions_neighbourhood.py [--cells 1000000] [--repeats 3]
    nice python benchmarks/interactions_neighbourhood.py --null

Prints the table and writes ``benchmarks/results/interactions_neighbourhood.csv``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy.spatial import cKDTree

from spatiome.graph import spatial_neighbors
from spatiome.interactions.neighbourhood import interaction_matrix, nhood_enrichment

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, environment_line, timed, with_environment, write_csv  # noqa: E402

RESULTS = RESULTS_DIR / "interactions_neighbourhood.csv"
N_GROUPS = 20
N_PATCHES = 400


def tissue(n_cells: int, seed: int = 0) -> AnnData:
    """Cells uniform in a square, in patches of 20 groups, with a kNN (k = 6) graph."""
    rng = np.random.default_rng(seed)
    side = np.sqrt(n_cells)
    xy = rng.random((n_cells, 2)) * side
    centres = rng.random((N_PATCHES, 2)) * side
    _, patch = cKDTree(centres).query(xy)
    groups = rng.integers(0, N_GROUPS, N_PATCHES)[patch]
    adata = AnnData(sp.csr_matrix((n_cells, 1)))  # one empty gene: only obs and the graph matter
    adata.obsm["spatial"] = xy
    names = [f"group_{g:02d}" for g in range(N_GROUPS)]
    adata.obs["group"] = pd.Categorical.from_codes(groups, categories=names)
    return adata


def peak_mb(func: Callable[[], Any]) -> float:
    """Largest traced allocation of one call of ``func`` above the allocations before it."""
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    func()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return (peak - base) / 2**20


def measure(rows: list[dict], tool: str, call: str, func, adata: AnnData, repeats: int, **extra):
    seconds, _ = timed(func, repeats)
    row = {
        "tool": tool,
        "call": call,
        "n_cells": adata.n_obs,
        "n_edges": int(adata.obsp["spatial_connectivities"].nnz),
        "n_groups": N_GROUPS,
        "seconds": seconds,
        "peak_mb": peak_mb(func),
        "load_average": os.getloadavg()[0],
        **extra,
    }
    rows.append(row)
    print(f"  {tool:8s} {call:45s} {adata.n_obs:>9,d} cells  {seconds:8.3f} s  "
          f"{row['peak_mb']:8.1f} MB")  # fmt: skip


def compare_with_squidpy(rows: list[dict], args: argparse.Namespace, squidpy) -> tuple[bool, float]:
    """The calls on the smaller tissue, squidpy's beside spatiome's; count and z agreement."""
    peer = tissue(args.peer_cells)
    spatial_neighbors(peer, n_neighbors=6)
    squidpy.gr.nhood_enrichment(  # compiles squidpy's kernel for 20 groups, untimed
        peer[:2000].copy(), "group", n_perms=2, seed=0, copy=True, show_progress_bar=False
    )
    squidpy.gr.interaction_matrix(peer[:2000].copy(), "group", copy=True)
    perms = args.peer_perms
    measure(
        rows,
        "spatiome",
        "nhood_enrichment(analytic)",
        lambda: nhood_enrichment(peer, "group", copy=True),
        peer,
        args.repeats,
    )
    measure(
        rows,
        "spatiome",
        f"nhood_enrichment(permutation, n_perms={perms})",
        lambda: nhood_enrichment(peer, "group", method="permutation", n_perms=perms, copy=True),
        peer,
        1,
        n_perms=perms,
    )
    measure(
        rows,
        "squidpy",
        f"gr.nhood_enrichment(n_perms={perms}, n_jobs=1)",
        lambda: squidpy.gr.nhood_enrichment(
            peer, "group", n_perms=perms, seed=0, copy=True, n_jobs=1, show_progress_bar=False
        ),
        peer,
        1,
        n_perms=perms,
    )
    measure(
        rows,
        "spatiome",
        "interaction_matrix",
        lambda: interaction_matrix(peer, "group", copy=True),
        peer,
        args.repeats,
    )
    measure(
        rows,
        "squidpy",
        "gr.interaction_matrix",
        lambda: squidpy.gr.interaction_matrix(peer, "group", copy=True),
        peer,
        args.repeats,
    )
    ours = nhood_enrichment(peer, "group", copy=True)
    zscore, count = squidpy.gr.nhood_enrichment(peer, "group", n_perms=perms, seed=0, copy=True,
                                                n_jobs=1, show_progress_bar=False)  # fmt: skip
    same_count = bool(np.array_equal(ours["count"], count))
    difference = float(np.abs(ours["zscore"] - zscore).max())
    largest = float(np.abs(zscore).max())
    print(f"  count identical to squidpy: {same_count}; largest |z difference| {difference:.3f} "
          f"(squidpy with {perms} permutations; largest |z| {largest:.1f})")  # fmt: skip
    return same_count, difference


def null_rows(n_cells: int = 5000, n_labellings: int = 200) -> list[dict]:
    """Rejections at 0.05 of the analytic z-test on labels with no spatial association."""
    from scipy import stats

    rng = np.random.default_rng(0)
    adata = AnnData(sp.csr_matrix((n_cells, 1)), obsm={"spatial": rng.random((n_cells, 2))})
    spatial_neighbors(adata, n_neighbors=6)
    adata.obs["library"] = pd.Categorical(np.where(np.arange(n_cells) < n_cells // 2, "a", "b"))
    shares = np.array([0.4, 0.25, 0.15, 0.12, 0.08])
    upper = np.triu_indices(len(shares))
    rows = []
    for library_key in (None, "library"):
        rejected = []
        for _ in range(n_labellings):
            adata.obs["group"] = pd.Categorical(rng.choice(len(shares), n_cells, p=shares))
            z = nhood_enrichment(adata, "group", library_key=library_key, copy=True)["zscore"]
            rejected.append(2 * stats.norm.sf(np.abs(z[upper])) < 0.05)
        hits = np.concatenate(rejected)
        interval = stats.binomtest(int(hits.sum()), hits.size).proportion_ci()
        rows.append(
            {
                "library_key": library_key or "none",
                "n_tests": hits.size,
                "type1": hits.mean(),
                "low": interval.low,
                "high": interval.high,
            }
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--peer-cells", type=int, default=100_000)
    parser.add_argument("--peer-perms", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--null", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.null:
        table = pd.DataFrame(null_rows())
        write_csv(with_environment(table), RESULTS_DIR / "interactions_neighbourhood_null.csv")
        return
    import squidpy

    print(environment_line())
    rows: list[dict] = []

    same_count, difference = compare_with_squidpy(rows, args, squidpy)

    large = tissue(args.cells)
    start = time.perf_counter()
    spatial_neighbors(large, n_neighbors=6)
    graph_seconds = time.perf_counter() - start
    print(f"  spatial_neighbors(k=6) on {args.cells:,d} cells: {graph_seconds:.1f} s")
    measure(
        rows,
        "spatiome",
        "nhood_enrichment(analytic)",
        lambda: nhood_enrichment(large, "group", copy=True),
        large,
        args.repeats,
    )
    measure(
        rows,
        "spatiome",
        "interaction_matrix",
        lambda: interaction_matrix(large, "group", copy=True),
        large,
        args.repeats,
    )
    measure(rows, "squidpy", "gr.interaction_matrix",
            lambda: squidpy.gr.interaction_matrix(large, "group", copy=True), large,
            args.repeats)  # fmt: skip

    table = pd.DataFrame(rows)
    table["count_identical_to_squidpy"] = same_count
    table["max_abs_zscore_difference"] = difference
    table["graph_seconds_large"] = graph_seconds
    write_csv(with_environment(table), RESULTS)


if __name__ == "__main__":
    main()
