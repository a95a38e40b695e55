"""Spatial doublet detection (pp.doublets): accuracy against injected doublets, and speed.

Tissues: ``datasets.simulate_tissue(layout="random", n_cell_types=5, single_cells=True)``
(single cells about 10 um apart, one type each, 10 marker genes per type), 300 genes.
``datasets.inject_artifacts(doublet_fraction=0.05)`` then merges 5% of the cells with their
nearest free neighbour (``adjacent``, a segmentation merge) or with a random cell
(``random``, droplet-like); a merge sums the counts, moves the centroid to the midpoint and
removes the partner. A doublet is *homotypic* when both cells had the same type. Scenarios:
``plain`` (2,000 counts per cell on average, library size independent of position),
``depth_gradient`` (library size changing by e^1.5 across the tissue, so raw counts mislead
and local counts do not) and ``low_depth`` (300 counts per cell, as in imaging panels).

Four scorers, on the same tissues:

- ``spatial``: ``pp.doublets`` with its defaults (half of the simulated doublets from
  spatial neighbours, spatial features, classifier);
- ``spatial_knn``: the kNN score of the same run (``doublet_knn_score``);
- ``expression_classifier``: the same classifier trained on random pairs only and without
  the spatial features (scDblFinder-like);
- ``expression_knn``: ``pp.doublets(spatial_fraction=0, classifier=False)``, Scrublet's
  estimator on random pairs.

Reported: AUROC over all doublets, over heterotypic doublets against singlets and over
homotypic ones against singlets, average precision, and precision / recall / call rate at
the automatic threshold; then the time of the default call on 100,000 cells x 300 genes
(after an untimed warm-up that compiles the kernels), on 1 and 2 threads. Other jobs may
share this machine: the load average is recorded with each timing.

Run with a Python that has spatiome::

    python benchmarks/doublets.py [--n-cells 5000] [--seeds 3] [--timing-cells 100000]

Prints the tables and writes ``benchmarks/results/doublets.csv``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from sklearn.metrics import average_precision_score, roc_auc_score

import spatiome as sm
from spatiome._core.random import check_random_state
from spatiome.pp.doublets import _score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS_DIR,
    environment_line,
    package_version,
    timed,
    with_environment,
    write_csv,
)

RESULTS = RESULTS_DIR / "doublets.csv"
SCENARIOS = {
    "plain": {},
    "depth_gradient": {"depth_gradient": 1.5},
    "low_depth": {"mean_depth": 300.0},
}
MODES = ("adjacent", "random")
SCORERS = ("spatial", "spatial_knn", "expression_classifier", "expression_knn")


def tissue(
    n_cells: int, mode: str, seed: int, depth_gradient: float = 0.0, mean_depth: float = 2000.0
) -> AnnData:
    """Single cells with 5% injected doublets; ``obs['homotypic']`` marks same-type merges."""
    cells = sm.datasets.simulate_tissue(
        n_spots=n_cells,
        n_genes=300,
        layout="random",
        n_cell_types=5,
        single_cells=True,
        depth_gradient=depth_gradient,
        mean_depth=mean_depth,
        random_state=seed,
    )
    merged = sm.datasets.inject_artifacts(
        cells,
        dry_patch_fraction=0,
        edge_fraction=0,
        doublet_fraction=0.05,
        doublet_mode=mode,
        random_state=seed,
    )
    truth = (merged.obs["injected"] == "doublet").to_numpy()
    kind = cells.obs["cell_type"].astype(str)
    partner = merged.obs["doublet_partner"].to_numpy()
    homotypic = np.zeros(merged.n_obs, dtype=bool)
    homotypic[truth] = (
        merged.obs["cell_type"].astype(str).to_numpy()[truth] == kind.loc[partner[truth]].to_numpy()
    )
    merged.obs["truth"] = truth
    merged.obs["homotypic"] = homotypic
    return merged


def expression_classifier(adata: AnnData, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Scores, calls and threshold method of the classifier on random pairs, no spatial
    features."""
    result = _score(
        adata.layers["counts"].tocsr(),
        np.asarray(adata.obsm["spatial"], dtype=np.float64),
        area=None,
        labels=None,
        type_names=[],
        expected_rate=0.05,
        sim_ratio=2.0,
        spatial_k=6,
        n_pcs=30,
        spatial_fraction=0.0,
        threshold="auto",
        classifier=True,
        spatial_features=False,
        rng=check_random_state(seed),
        workers=1,
    )
    return result.score, result.calls, result.threshold_method


def metrics(score: np.ndarray, calls: np.ndarray | None, obs: pd.DataFrame) -> dict:
    """AUROCs (all, heterotypic, homotypic), average precision and, given calls, precision
    and recall at the threshold."""
    truth = obs["truth"].to_numpy()
    homotypic = obs["homotypic"].to_numpy()
    heterotypic = truth & ~homotypic
    row = {
        "auroc": roc_auc_score(truth, score),
        "auroc_heterotypic": roc_auc_score(heterotypic[~homotypic], score[~homotypic]),
        "auroc_homotypic": roc_auc_score(homotypic[~heterotypic], score[~heterotypic]),
        "average_precision": average_precision_score(truth, score),
        "n_doublets": int(truth.sum()),
        "n_homotypic": int(homotypic.sum()),
    }
    if calls is not None:
        hits = int((calls & truth).sum())
        row["precision"] = hits / int(calls.sum()) if calls.any() else np.nan
        row["recall"] = hits / int(truth.sum())
        row["recall_heterotypic"] = int((calls & heterotypic).sum()) / max(
            int(heterotypic.sum()), 1
        )
        row["call_rate"] = float(calls.mean())
    return row


def accuracy(n_cells: int, seeds: int) -> list[dict]:
    rows = []
    for scenario, options in SCENARIOS.items():
        for mode in MODES:
            for seed in range(seeds):
                adata = tissue(n_cells, mode, seed, **options)
                base = {"kind": "accuracy", "scenario": scenario, "mode": mode, "seed": seed}
                base["n_cells"] = adata.n_obs
                start = time.perf_counter()
                sm.pp.doublets(adata, random_state=seed)
                seconds = time.perf_counter() - start
                obs = adata.obs
                method = adata.uns["spatiome"]["doublets"]["threshold_method"]
                rows.append(
                    {**base, "scorer": "spatial", "seconds": seconds, "threshold": method}
                    | metrics(obs["doublet_score"].to_numpy(), obs["doublet"].to_numpy(), obs)
                )
                knn = obs["doublet_knn_score"].to_numpy()
                rows.append({**base, "scorer": "spatial_knn"} | metrics(knn, None, obs))
                start = time.perf_counter()
                score, calls, method = expression_classifier(adata, seed)
                seconds = time.perf_counter() - start
                rows.append(
                    {**base, "scorer": "expression_classifier", "seconds": seconds}
                    | {"threshold": method}
                    | metrics(score, calls, obs)
                )
                plain = sm.pp.doublets(
                    adata, spatial_fraction=0.0, classifier=False, random_state=seed, copy=True
                )
                rows.append(
                    {
                        **base,
                        "scorer": "expression_knn",
                        "threshold": plain.uns["spatiome"]["doublets"]["threshold_method"],
                    }
                    | metrics(
                        plain.obs["doublet_score"].to_numpy(), plain.obs["doublet"].to_numpy(), obs
                    )
                )
                print(f"  {scenario} {mode} seed {seed}: done", flush=True)
    return rows


def timing(n_cells: int, repeats: int) -> list[dict]:
    warm = tissue(2_000, "adjacent", 0)
    sm.pp.doublets(warm)
    adata = tissue(n_cells, "adjacent", 0)
    rows = []
    for n_jobs in (1, 2):
        before = os.getloadavg()[0]
        seconds, result = timed(
            lambda n=n_jobs: sm.pp.doublets(adata, n_jobs=n, copy=True), repeats
        )
        after = os.getloadavg()[0]
        rows.append(
            {
                "kind": "timing",
                "scenario": "plain",
                "mode": "adjacent",
                "scorer": "spatial",
                "n_cells": adata.n_obs,
                "n_genes": adata.n_vars,
                "n_jobs": n_jobs,
                "seconds": seconds,
                "load_before": before,
                "load_after": after,
            }
            | metrics(
                result.obs["doublet_score"].to_numpy(), result.obs["doublet"].to_numpy(), adata.obs
            )
        )
        print(f"  {n_cells:,} cells, n_jobs={n_jobs}: {seconds:.1f} s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cells", type=int, default=5_000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--timing-cells", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    print("accuracy", flush=True)
    rows = accuracy(args.n_cells, args.seeds)
    print("timing", flush=True)
    rows += timing(args.timing_cells, args.repeats)
    table = pd.DataFrame(rows)
    table["spatiome_version"] = package_version("spatiome")

    print()
    print(environment_line())
    print(f"cores: {os.cpu_count()}")
    shown = ["auroc", "auroc_heterotypic", "auroc_homotypic", "average_precision",
             "precision", "recall", "call_rate"]  # fmt: skip
    summary = (
        table[table["kind"] == "accuracy"]
        .groupby(["scenario", "mode", "scorer"], sort=False)[shown]
        .mean()
    )
    print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
    print()
    timings = table[table["kind"] == "timing"]
    print(
        timings[["n_cells", "n_genes", "n_jobs", "seconds", "load_before", "load_after",
                 "auroc", "precision", "recall"]].to_string(index=False)
    )  # fmt: skip
    write_csv(with_environment(table), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
