"""Spatially aware QC at scale: pp.local_outliers on 1,000,000 spots, pp.find_artifacts on 100,000.

The spots sit on a Visium-like hexagonal lattice (100 um apart) filling a square. The QC
metrics are written straight into ``obs`` (no count matrix is needed by either function):
log-normal library sizes, detected genes following them, mitochondrial percentages and
counts, with a dry patch (uniform 25% mitochondrial share, a tenth of the library) in the
centre so that find_artifacts has an artifact to find. ``local_outliers`` runs the three
default metrics (k = 36); ``find_artifacts`` the default five rings (k = 6 ... 90). Each
call gets one untimed warm-up on a small tissue first (numba kernels are compiled and
cached then). Other jobs may share the machine, so the load average is recorded before and
after each timing.

The table also reports how much of the patch find_artifacts flags (``patch_recall``) and
how much of the rest (``clean_flagged``). This lattice is a speed test, not an accuracy
test: with a patch whose mitochondrial share is exactly 25%, k-means can split the
patch's high-variance rim from everything else, and the larger cluster, having the lower
mean variance, is then labelled as artifact (the function warns when more than half of a
sample is flagged). Accuracy is tested in ``tests/pp/test_spatial_qc.py``.

Run with a Python that has spatiome::

    python benchmarks/spatial_qc.py [--n-spots 1000000] [--artifact-spots 100000] [--repeats 3]

Prints a table and writes ``benchmarks/results/spatial_qc.csv``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

import spatiome as sm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS_DIR,
    environment_line,
    package_version,
    timed,
    with_environment,
    write_csv,
)

RESULTS = RESULTS_DIR / "spatial_qc.csv"


def qc_tissue(n_spots: int, seed: int = 0) -> AnnData:
    """QC metrics on a hexagonal lattice, with a dry patch of 2% of the spots in the middle."""
    rng = np.random.default_rng(seed)
    n_cols = int(np.ceil(np.sqrt(n_spots * 2 / np.sqrt(3))))
    rows, cols = np.divmod(np.arange(n_spots), n_cols)
    xy = np.column_stack([(cols + 0.5 * (rows % 2)) * 100.0, rows * 100.0 * np.sqrt(3) / 2])
    centre = xy.mean(axis=0)
    patch = np.zeros(n_spots, dtype=bool)
    patch[np.argsort(((xy - centre) ** 2).sum(axis=1))[: n_spots // 50]] = True
    total = rng.lognormal(np.log(2000.0), 0.3, size=n_spots)
    total[patch] *= 0.1
    total = np.maximum(np.round(total), 1.0)
    detected = np.round(total**0.8 * rng.lognormal(0.0, 0.05, size=n_spots))
    mito_share = np.clip(rng.normal(0.05, 0.01, size=n_spots), 0.001, None)
    mito_share[patch] = 0.25
    mito = rng.binomial(total.astype(np.int64), mito_share).astype(float)
    mito[patch] = np.round(0.25 * total[patch])
    adata = AnnData(sp.csr_matrix((n_spots, 1), dtype=np.float32))
    adata.obsm["spatial"] = xy
    adata.uns["spatial_unit"] = "um"
    adata.obs["total_counts"] = total
    adata.obs["n_genes_by_counts"] = detected
    adata.obs["total_counts_mt"] = mito
    adata.obs["pct_counts_mt"] = 100.0 * mito / total
    adata.obs["dry_patch"] = patch
    return adata


def load_average() -> float:
    return float(os.getloadavg()[0])


def time_local_outliers(n_spots: int, repeats: int) -> list[dict]:
    adata = qc_tissue(n_spots)
    print(f"local_outliers: {adata.n_obs:,} spots, 3 metrics, k = 36", flush=True)
    rows = []
    for n_jobs in (1, 2):
        before = load_average()
        # In place: the timing covers the computation, not a copy of the AnnData.
        seconds, _ = timed(
            lambda n_jobs=n_jobs: sm.pp.local_outliers(adata, n_jobs=n_jobs), repeats
        )
        rows.append(
            {
                "call": f"pp.local_outliers(adata, n_jobs={n_jobs})",
                "n_spots": adata.n_obs,
                "n_jobs": n_jobs,
                "seconds": seconds,
                "flagged_fraction": float(adata.obs["local_outlier"].mean()),
                "load_before": before,
                "load_after": load_average(),
            }
        )
    return rows


def time_find_artifacts(n_spots: int, repeats: int) -> list[dict]:
    adata = qc_tissue(n_spots)
    print(f"find_artifacts: {adata.n_obs:,} spots, 5 rings (k = 6 ... 90)", flush=True)
    patch = adata.obs["dry_patch"].to_numpy()
    rows = []
    for n_jobs in (1, 2):
        before = load_average()
        seconds, _ = timed(
            lambda n_jobs=n_jobs: sm.pp.find_artifacts(adata, n_jobs=n_jobs), repeats
        )
        flagged = adata.obs["artifact"].to_numpy()
        rows.append(
            {
                "call": f"pp.find_artifacts(adata, n_jobs={n_jobs})",
                "n_spots": adata.n_obs,
                "n_jobs": n_jobs,
                "seconds": seconds,
                "flagged_fraction": float(flagged.mean()),
                "patch_recall": float(flagged[patch].mean()),
                "clean_flagged": float(flagged[~patch].mean()),
                "load_before": before,
                "load_after": load_average(),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-spots", type=int, default=1_000_000)
    parser.add_argument("--artifact-spots", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    warm = qc_tissue(2_000)
    sm.pp.local_outliers(warm, copy=True)
    sm.pp.find_artifacts(warm, copy=True)

    rows = time_local_outliers(args.n_spots, args.repeats)
    rows += time_find_artifacts(args.artifact_spots, args.repeats)
    table = pd.DataFrame(rows)
    table["repeats"] = args.repeats
    table["spatiome_version"] = package_version("spatiome")
    print()
    print(environment_line())
    print(f"cores: {os.cpu_count()}; load average (1 min) before/after each timing below")
    print(table.drop(columns=["repeats", "spatiome_version"]).to_string(index=False))
    write_csv(with_environment(table), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
