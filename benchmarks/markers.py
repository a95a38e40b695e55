"""Domain markers (Wilcoxon, one domain against the rest): spatiome against scanpy.

Simulated Visium-like tissue (``datasets.simulate_tissue(n_spots=N, n_genes=2000,
layout="hex", random_state=0)``, five layered domains, about 47% non-zero),
normalized with ``pp.normalize`` (library size + log1p, float32 CSR). The counts layer is
dropped after normalizing so that only one copy of the matrix is held. Each size is
simulated, timed and freed before the next one, so one process holds one object at a time.

Timed calls, in the same process on the same matrix:

- spatiome: ``domains.markers(adata, "domain")`` (all genes, ``fraction_in``/``fraction_out``)
- scanpy: ``tl.rank_genes_groups(adata, "domain", method="wilcoxon", pts=True,
  n_genes=n_vars)``, the call spatiome made before its own rank-sum kernel.

Both tables are compared (largest absolute difference of the z-scores, p-values, adjusted
p-values, log fold changes and detection fractions). A warm-up call on 500 spots compiles the
numba kernels first. The peak resident memory above the level before each call is sampled
every 20 ms.

Run with a Python that has spatiome and scanpy::

    nice python benchmarks/markers.py [--sizes 50000 200000] [--n-genes 2000]

Prints a table and writes ``benchmarks/results/markers.csv``.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

import spatiome as sm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS_DIR,
    environment_line,
    package_version,
    with_environment,
    write_csv,
)

RESULTS = RESULTS_DIR / "markers.csv"
COMPARED = {
    "score": "scores",
    "pval": "pvals",
    "qval": "pvals_adj",
    "logfoldchange": "logfoldchanges",
    "fraction_in": "pct_nz_group",
    "fraction_out": "pct_nz_reference",
}


def simulated(n_spots: int, n_genes: int) -> AnnData:
    """Normalized simulated tissue without its counts layer (one matrix in memory)."""
    adata = sm.datasets.simulate_tissue(
        n_spots=n_spots, n_genes=n_genes, layout="hex", random_state=0
    )
    sm.pp.normalize(adata)
    del adata.layers["counts"]
    gc.collect()
    return adata


def measured(call: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall seconds, peak resident memory above the starting level (GB), and the result."""
    import psutil

    process = psutil.Process()
    start_rss = process.memory_info().rss
    peak = [start_rss]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    try:
        result = call()
    finally:
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
    return seconds, (peak[0] - start_rss) / 1e9, result


def scanpy_markers(adata: AnnData) -> pd.DataFrame:
    """scanpy's Wilcoxon one-vs-rest table with detection fractions."""
    import scanpy as sc

    view = AnnData(X=adata.X, obs=adata.obs[["domain"]].copy())
    view.var_names = adata.var_names.copy()
    view.uns["log1p"] = {"base": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.tl.rank_genes_groups(view, "domain", method="wilcoxon", pts=True, n_genes=adata.n_vars)
    return sc.get.rank_genes_groups_df(view, group=None)


def largest_differences(ours: pd.DataFrame, theirs: pd.DataFrame) -> dict[str, float]:
    """Largest absolute difference per compared column, matched on (domain, gene)."""
    left = ours.set_index(["domain", "gene"])
    right = theirs.assign(group=theirs["group"].astype(str)).set_index(["group", "names"])
    right = right.reindex(left.index)
    return {
        f"max_abs_diff_{ours_name}": float(
            np.nanmax(np.abs(left[ours_name].to_numpy(float) - right[theirs_name].to_numpy(float)))
        )
        for ours_name, theirs_name in COMPARED.items()
    }


def run_size(n_spots: int, n_genes: int) -> list[dict[str, Any]]:
    adata = simulated(n_spots, n_genes)
    density = adata.X.nnz / (adata.n_obs * adata.n_vars)
    print(
        f"data: {adata.n_obs:,} spots x {adata.n_vars:,} genes, {density:.1%} non-zero, "
        f"{adata.obs['domain'].nunique()} domains; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    ours_s, ours_gb, ours = measured(lambda: sm.domains.markers(adata, "domain"))
    load_after_ours = os.getloadavg()[0]
    theirs_s, theirs_gb, theirs = measured(lambda: scanpy_markers(adata))
    load_after_theirs = os.getloadavg()[0]
    differences = largest_differences(ours, theirs)
    common = {"n_spots": adata.n_obs, "n_genes": adata.n_vars, "density": density}
    rows = [
        {
            "tool": "spatiome",
            "call": 'domains.markers(adata, "domain")',
            "version": package_version("spatiome"),
            "seconds": ours_s,
            "peak_extra_gb": ours_gb,
            "load_average_1min": load_after_ours,
            **common,
            **differences,
        },
        {
            "tool": "scanpy",
            "call": 'tl.rank_genes_groups(method="wilcoxon", pts=True)',
            "version": package_version("scanpy"),
            "seconds": theirs_s,
            "peak_extra_gb": theirs_gb,
            "load_average_1min": load_after_theirs,
            **common,
        },
    ]
    for row in rows:
        row["speedup_vs_scanpy"] = theirs_s / row["seconds"]
    return rows


def warm_up() -> None:
    """Compile the numba kernels of both tools on a small tissue."""
    small = simulated(500, 50)
    sm.domains.markers(small, "domain")
    scanpy_markers(small)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument("--n-genes", type=int, default=2_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    warm_up()
    rows = []
    for n_spots in args.sizes:
        rows.extend(run_size(n_spots, args.n_genes))
        gc.collect()
    result = with_environment(pd.DataFrame(rows))
    shown = ["n_spots", "tool", "seconds", "speedup_vs_scanpy", "peak_extra_gb"]
    shown += ["load_average_1min"] + [f"max_abs_diff_{name}" for name in COMPARED]
    print()
    print(environment_line())
    print(result[shown].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    write_csv(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
