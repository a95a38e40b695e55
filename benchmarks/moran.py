"""Moran's I on 50,000 spots x 1,000 genes: spatiome against squidpy, in the same process.

Simulated sparse counts (a tenth of the genes follow smooth spatial patterns), library-size
normalized and log1p-transformed, a symmetric 6-nearest-neighbour graph, no permutations.
squidpy's ``sq.gr.spatial_autocorr(mode="moran", n_perms=None, n_jobs=1)`` row-normalizes the
weights (``transformation=True``), so spatiome runs with ``transformation="row"``. Both get the
same graph and matrix; one untimed warm-up call each compiles the numba kernels first.

Run with a Python that has spatiome (and, for the comparison, squidpy)::

    python benchmarks/moran.py [--n-spots 50000] [--n-genes 1000] [--repeats 3]

Prints a table and writes ``benchmarks/results/moran.csv``. Without squidpy, spatiome is
timed alone and the table says so.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

import spatiome as sm
from spatiome._core.files import atomic_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, machine, package_version, timed  # noqa: E402

RESULTS = RESULTS_DIR / "moran.csv"


def simulate(n_spots: int, n_genes: int, seed: int = 0) -> AnnData:
    """Log-normalized sparse counts on random coordinates; 10% of genes are spatial."""
    rng = np.random.default_rng(seed)
    side = np.sqrt(n_spots) * 100.0
    xy = rng.random((n_spots, 2)) * side
    gene_means = rng.lognormal(mean=-1.0, sigma=1.2, size=n_genes)
    n_spatial = n_genes // 10
    centres = rng.random((n_spatial, 2)) * side
    blocks = []
    for start in range(0, n_spots, 5_000):
        part = xy[start : start + 5_000]
        rates = np.broadcast_to(gene_means, (part.shape[0], n_genes)).copy()
        dist2 = ((part[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
        rates[:, :n_spatial] *= 1.0 + 4.0 * np.exp(-dist2 / (2 * (side / 8) ** 2))
        blocks.append(sp.csr_matrix(rng.poisson(rates).astype(np.float32)))
    counts = sp.vstack(blocks).tocsr()
    totals = np.asarray(counts.sum(axis=1)).ravel()
    scale = 1e4 / np.maximum(totals, 1.0)
    normalized = sp.diags(scale.astype(np.float32)) @ counts
    normalized.data = np.log1p(normalized.data)
    adata = AnnData(
        sp.csr_matrix(normalized, dtype=np.float32),
        obsm={"spatial": xy},
    )
    adata.obs_names = [f"spot{i}" for i in range(n_spots)]
    adata.var_names = [f"gene{j}" for j in range(n_genes)]
    return adata


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-spots", type=int, default=50_000)
    parser.add_argument("--n-genes", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    try:
        import squidpy as sq
    except ImportError:
        sq = None

    adata = simulate(args.n_spots, args.n_genes)
    sm.graph.spatial_neighbors(adata, method="knn", n_neighbors=6)
    density = adata.X.nnz / (adata.n_obs * adata.n_vars)
    print(
        f"data: {adata.n_obs:,} spots x {adata.n_vars:,} genes, {density:.1%} non-zero; "
        f"kNN graph k=6, {adata.obsp['spatial_connectivities'].nnz:,} edges",
        flush=True,
    )

    warm = adata[:500, :5].copy()
    sm.graph.spatial_neighbors(warm, n_neighbors=6)
    sm.svg.moran(warm, copy=True)
    spatiome_s, table = timed(lambda: sm.svg.moran(adata, copy=True), args.repeats)
    rows = [
        {
            "tool": "spatiome",
            "call": 'svg.moran(adata, transformation="row", n_jobs=1)',
            "version": package_version("spatiome"),
            "seconds": spatiome_s,
        }
    ]

    cores = os.cpu_count() or 1
    if cores > 1:
        threaded_s, _ = timed(lambda: sm.svg.moran(adata, n_jobs=-1, copy=True), args.repeats)
        rows.append(
            {
                "tool": "spatiome",
                "call": f'svg.moran(adata, transformation="row", n_jobs=-1)  # {cores} threads',
                "version": package_version("spatiome"),
                "seconds": threaded_s,
            }
        )

    max_diff = float("nan")
    if sq is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sq.gr.spatial_autocorr(warm, mode="moran", n_perms=None, n_jobs=1, copy=True)
            squidpy_s, reference = timed(
                lambda: sq.gr.spatial_autocorr(
                    adata, mode="moran", n_perms=None, n_jobs=1, copy=True
                ),
                args.repeats,
            )
        max_diff = float(
            np.nanmax(np.abs(reference["I"].reindex(table.index) - table["statistic"]))
        )
        rows.append(
            {
                "tool": "squidpy",
                "call": 'gr.spatial_autocorr(mode="moran", n_perms=None, n_jobs=1)',
                "version": package_version("squidpy"),
                "seconds": squidpy_s,
            }
        )
        # n_jobs only governs squidpy's permutations: the statistic itself runs in scanpy's
        # numba-parallel kernel on every core. Time it on one thread as well.
        import numba

        threads = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                single_s, _ = timed(
                    lambda: sq.gr.spatial_autocorr(
                        adata, mode="moran", n_perms=None, n_jobs=1, copy=True
                    ),
                    args.repeats,
                )
        finally:
            numba.set_num_threads(threads)
        rows.append(
            {
                "tool": "squidpy",
                "call": "same call, numba limited to 1 thread",
                "version": package_version("squidpy"),
                "seconds": single_s,
            }
        )
    else:
        print("squidpy is not importable: timing spatiome alone", flush=True)

    result = pd.DataFrame(rows)
    result["speedup_vs_squidpy"] = (
        result.loc[result["tool"] == "squidpy", "seconds"].iloc[0] / result["seconds"]
        if sq is not None
        else np.nan
    )
    result["max_abs_diff_I"] = max_diff
    result["n_spots"] = adata.n_obs
    result["n_genes"] = adata.n_vars
    result["repeats"] = args.repeats
    result["machine"] = machine()
    result["python"] = platform.python_version()
    for name in ("numpy", "scipy", "numba", "anndata", "scanpy"):
        result[name] = package_version(name)

    print()
    print(f"machine: {machine()}; python {platform.python_version()}")
    print(
        "versions: "
        + ", ".join(f"{n} {package_version(n)}" for n in ("numpy", "scipy", "numba", "anndata"))
    )
    print(
        result[["tool", "call", "seconds", "speedup_vs_squidpy", "max_abs_diff_I"]].to_string(
            index=False, float_format=lambda v: f"{v:.4g}"
        )
    )
    with atomic_path(args.out) as tmp:
        result.to_csv(tmp, index=False)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
