"""Niches (interactions.niches): planted niches recovered on simulated tissues, and speed.

Tissues from ``spatiome.datasets.niches.simulate_niches``: a square split into 10 patches
with warped (curved, grid-free) borders, each patch one of 5 niches, each niche a mixture
of 3 of 8 cell types plus a 10% even background; ``niche_0`` and ``niche_1`` hold the same
three types in proportions 0.55/0.30/0.15 and 0.15/0.30/0.55. Cells: uniform random
positions about 10 µm apart, each cell's type drawn from its niche. Spots: a Visium-like
hexagonal lattice (100 µm), Poisson(8) cells per spot, and noisy cell-type fractions
(Dirichlet, concentration 50) as a deconvolution would give.

Accuracy: adjusted Rand index (ARI) between planted and found niches, mean and standard
deviation over seeds, for ``niches`` with its defaults and ``n_niches=5`` (k-means and the
Gaussian mixture), with the number of niches chosen by silhouette, and for a baseline that
clusters each cell's own type (one-hot; k-means, k = 5) or each spot's own fractions.
Criterion: the number of niches chosen by silhouette against the planted 3, 5 or 7.
Speed: one call (``n_niches=5``) at 1,000,000 cells, and one with ``n_niches=None``.

    python benchmarks/niches.py [--seeds 5] [--scale-cells 1000000]

Prints the tables and writes ``benchmarks/results/niches.csv``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from spatiome.datasets.niches import simulate_niches
from spatiome.interactions.niches import niches

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, environment_line, with_environment, write_csv  # noqa: E402

N_NICHES = 5
CELL_SIZES = (5_000, 20_000, 100_000)
SPOT_SIZES = (3_000, 10_000)


def _score(adata) -> float:
    return float(adjusted_rand_score(adata.obs["planted_niche"], adata.obs["niche"]))


def _run(adata, kind: str, **kwargs) -> tuple[float, float]:
    start = time.perf_counter()
    if kind == "cells":
        niches(adata, "cell_type", **kwargs)
    else:
        niches(adata, composition_key="cell_type_fractions", **kwargs)
    return _score(adata), time.perf_counter() - start


def _baseline(adata, kind: str, seed: int) -> float:
    if kind == "cells":
        own = pd.get_dummies(adata.obs["cell_type"]).to_numpy(float)
    else:
        own = np.asarray(adata.obsm["cell_type_fractions"])
    labels = KMeans(N_NICHES, n_init=10, random_state=seed).fit_predict(own)
    return float(adjusted_rand_score(adata.obs["planted_niche"], labels))


def accuracy(seeds: int) -> pd.DataFrame:
    rows = []
    cases = [("cells", n) for n in CELL_SIZES] + [("spots", n) for n in SPOT_SIZES]
    for kind, size in cases:
        for seed in range(seeds):
            adata = simulate_niches(size, n_niches=N_NICHES, kind=kind, random_state=seed)
            for method, kwargs in (
                ("kmeans", {"n_niches": N_NICHES}),
                ("gmm", {"n_niches": N_NICHES, "method": "gmm"}),
                ("kmeans, k by silhouette", {}),
            ):
                ari, seconds = _run(adata, kind, random_state=seed, **kwargs)
                rows.append(
                    {
                        "table": "accuracy",
                        "kind": kind,
                        "n_obs": adata.n_obs,
                        "seed": seed,
                        "method": method,
                        "ari": ari,
                        "n_niches_found": adata.uns["niche"]["params"]["n_niches"],
                        "seconds": seconds,
                    }
                )
            rows.append(
                {
                    "table": "accuracy",
                    "kind": kind,
                    "n_obs": adata.n_obs,
                    "seed": seed,
                    "method": "baseline: own type/fractions",
                    "ari": _baseline(adata, kind, seed),
                    "n_niches_found": N_NICHES,
                }
            )
            print(f"  {kind} {size} seed {seed} done", flush=True)
    return pd.DataFrame(rows)


def criterion(seeds: int) -> pd.DataFrame:
    rows = []
    for kind, size in (("cells", 10_000), ("spots", 4_000)):
        for planted in (3, 5, 7):
            for seed in range(seeds):
                adata = simulate_niches(size, n_niches=planted, kind=kind, random_state=seed)
                ari, seconds = _run(adata, kind, random_state=seed)
                rows.append(
                    {
                        "table": "criterion",
                        "kind": kind,
                        "n_obs": adata.n_obs,
                        "seed": seed,
                        "method": "kmeans, k by silhouette",
                        "n_niches_planted": planted,
                        "n_niches_found": adata.uns["niche"]["params"]["n_niches"],
                        "ari": ari,
                        "seconds": seconds,
                    }
                )
    return pd.DataFrame(rows)


def scale(n_cells: int) -> pd.DataFrame:
    start = time.perf_counter()
    adata = simulate_niches(n_cells, n_niches=N_NICHES, random_state=0)
    simulate_seconds = time.perf_counter() - start
    rows = []
    for method, kwargs in (("kmeans", {"n_niches": N_NICHES}), ("kmeans, k by silhouette", {})):
        ari, seconds = _run(adata, "cells", **kwargs)
        rows.append(
            {
                "table": "scale",
                "kind": "cells",
                "n_obs": n_cells,
                "seed": 0,
                "method": method,
                "ari": ari,
                "n_niches_found": adata.uns["niche"]["params"]["n_niches"],
                "seconds": seconds,
                "simulate_seconds": simulate_seconds,
            }
        )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--scale-cells", type=int, default=1_000_000)
    args = parser.parse_args()
    print(environment_line())
    table = accuracy(args.seeds)
    summary = (
        table.groupby(["kind", "n_obs", "method"], sort=False)["ari"]
        .agg(lambda v: f"{v.mean():.3f} ± {v.std(ddof=1):.3f}")
        .unstack("method")
    )
    print("\nARI, planted vs found niches (mean ± SD over seeds)")
    print(summary.to_string())
    chosen = criterion(args.seeds)
    chosen["correct"] = chosen["n_niches_found"] == chosen["n_niches_planted"]
    print("\nNumber of niches chosen by silhouette")
    print(
        chosen.groupby(["kind", "n_niches_planted"])
        .agg(
            correct=("correct", "mean"),
            found=("n_niches_found", lambda v: " ".join(map(str, v))),
            ari=("ari", "mean"),
            seconds=("seconds", "mean"),
        )
        .to_string()
    )
    timing = scale(args.scale_cells)
    print(f"\n{args.scale_cells:,} cells")
    print(timing[["method", "ari", "n_niches_found", "seconds", "simulate_seconds"]].to_string())
    write_csv(
        with_environment(pd.concat([table, chosen, timing], ignore_index=True)),
        RESULTS_DIR / "niches.csv",
    )


if __name__ == "__main__":
    main()
