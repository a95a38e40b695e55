"""BISON (domains.bison): recovery on simulations and the mouse olfactory bulb, and speed.

Accuracy:

- ``paper``: the original's simulation design (``DataGeneratorMOB.R``) on a layered hex
  tissue of 300 spots with 4 domains: 500 genes, 40% non-discriminating (rates U(2, 6)),
  three discriminating groups with rates 4 + delta (k - 1) + delta (l - 1) (+ U(-0.1, 0.1)),
  spot factors around 1 (log-normal, sd 0.3), gene factors U(0.5, 1.5), Poisson counts;
  200 sweeps, K = 4, R = 3. ``factors=true`` passes the true spot and gene factors (as the
  original's simulation does); ``factors=estimated`` uses the defaults (library size, gene
  totals), which here confound the domain signal because every group rises with k.
- ``simulate_tissue``: ``datasets.simulate_tissue`` with 600 spots, 200 genes, 4 layered
  domains, 30% domain genes (log fold change 1), NB dispersion 0.1; K = R = 4, 300 sweeps.
- ``mouse_ob``: ST replicate 11 (262 spots, MERINGUE layers on 260), the tutorial's
  preprocessing (1,000 HVGs), the original's ST neighbourhood (radius 1.21 spot spacings),
  R = 3, K = 4 and 5, default 2,000 sweeps; read from ``../shared/data`` when present.

Reported: spot ARI against the truth, gene ARI among truly discriminating genes, AUROC of
``prob_discriminating`` for discriminating against non-discriminating genes, sensitivity
and specificity of the hard split (group >= 1 vs 0).

Speed: ``simulate_tissue`` with 10,000 spots x 2,000 genes (5 domains), K = 5, R = 5, all
genes modelled, after an untimed warm-up that compiles the kernels; wall time of the whole
call and of the sweeps alone (total minus a 1-sweep call). Other jobs may share this
machine: the load average is recorded with each timing.

Run with a Python that has spatiome::

    python benchmarks/bison.py [--seeds 5] [--timing-spots 10000] [--timing-genes 2000]

Prints the tables and writes ``benchmarks/results/bison.csv``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score, roc_auc_score

import spatiome as sm
from spatiome.domains._simulate import paper_design
from spatiome.domains.bison import bison
from spatiome.graph import spatial_neighbors

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS_DIR,
    environment_line,
    package_version,
    with_environment,
    write_csv,
)

RESULTS = RESULTS_DIR / "bison.csv"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def scores(adata: ad.AnnData, domain: str, discriminating: np.ndarray | None, truth=None) -> dict:
    labelled = adata.obs[domain].notna().to_numpy()
    row = {
        "spot_ari": adjusted_rand_score(
            adata.obs[domain][labelled].astype(str), adata.obs["bison"][labelled].astype(str)
        ),
        "n_domains_found": int(adata.obs["bison"].nunique()),
    }
    groups = adata.var["bison_gene_group"].to_numpy()
    modelled = groups >= 0
    row["n_discriminating_called"] = int((groups > 0).sum())
    row["n_genes_modelled"] = int(modelled.sum())
    if discriminating is not None:
        dg, found = discriminating[modelled], groups[modelled]
        prob = adata.var["bison_prob_discriminating"].to_numpy()[modelled]
        row["auroc_discriminating"] = roc_auc_score(dg, prob)
        row["sensitivity"] = float((found[dg] > 0).mean())
        row["specificity"] = float((found[~dg] == 0).mean())
        if truth is not None:
            row["gene_ari"] = adjusted_rand_score(truth[modelled][dg], found[dg])
    return row


def accuracy(seeds: int) -> list[dict]:
    rows = []
    for delta in (0.5, 1.0, 1.5):
        for factors in ("true", "estimated"):
            for seed in range(seeds):
                adata = paper_design(delta=delta, seed=seed, n_genes=500)
                options = {"size_factors": "s_true", "gene_factors": "g_true"}
                start = time.perf_counter()
                bison(
                    adata, 4, 3, n_top_genes=None, min_spot_counts=0, min_gene_fraction=0.0,
                    min_gene_max=0, n_iterations=200, random_state=seed,
                    **(options if factors == "true" else {}),
                )  # fmt: skip
                seconds = time.perf_counter() - start
                truth = adata.var["group"].to_numpy()
                rows.append(
                    {"kind": "accuracy", "data": "paper", "delta": delta, "factors": factors}
                    | {"seed": seed, "K": 4, "R": 3, "n_iterations": 200, "seconds": seconds}
                    | scores(adata, "domain", truth >= 0, truth)
                )
            print(f"  paper delta={delta} factors={factors}: done", flush=True)
    for seed in range(seeds):
        adata = sm.datasets.simulate_tissue(
            n_spots=600, n_genes=200, n_domains=4, patterns=("domain",), frac_spatial=0.3,
            effect_size=1.0, random_state=seed,
        )  # fmt: skip
        start = time.perf_counter()
        bison(adata, 4, 4, n_top_genes=None, min_gene_fraction=0.0, n_iterations=300)
        seconds = time.perf_counter() - start
        kept = (adata.var["pattern"].isin(["domain", "none"])).to_numpy()
        sub = adata[:, kept]
        rows.append(
            {"kind": "accuracy", "data": "simulate_tissue", "factors": "estimated"}
            | {"seed": seed, "K": 4, "R": 4, "n_iterations": 300, "seconds": seconds}
            | scores(sub, "domain", (sub.var["pattern"] == "domain").to_numpy())
        )
    print("  simulate_tissue: done", flush=True)
    folder = SHARED_DATA / "mouse_ob_rep11"
    if not folder.is_dir():
        print(f"  {folder} not present: mouse olfactory bulb skipped", flush=True)
        return rows
    mob = sm.datasets.load("mouse_ob_rep11", data_dir=SHARED_DATA)
    spatial_neighbors(mob, method="radius", radius=1.21)
    for n_domains in (4, 5):
        for seed in range(seeds):
            start = time.perf_counter()
            bison(mob, n_domains, 3, random_state=seed)
            seconds = time.perf_counter() - start
            rows.append(
                {"kind": "accuracy", "data": "mouse_ob", "factors": "estimated", "seed": seed}
                | {"K": n_domains, "R": 3, "n_iterations": 2000, "seconds": seconds}
                | scores(mob, "layer", None)
            )
        print(f"  mouse_ob K={n_domains}: done", flush=True)
    return rows


def timing(n_spots: int, n_genes: int, n_iterations: int) -> list[dict]:
    warm = sm.datasets.simulate_tissue(n_spots=300, n_genes=60, random_state=0)
    bison(warm, 3, 2, n_iterations=5, min_gene_fraction=0.0)
    adata = sm.datasets.simulate_tissue(
        n_spots=n_spots, n_genes=n_genes, n_domains=5, patterns=("domain",), frac_spatial=0.2,
        effect_size=1.0, random_state=0,
    )  # fmt: skip
    options = {"n_top_genes": None, "min_gene_fraction": 0.0, "min_gene_max": 0}
    rows = []
    load = os.getloadavg()[0]
    start = time.perf_counter()
    bison(adata, 5, 5, n_iterations=1, burn_in=0, **options)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    bison(adata, 5, 5, n_iterations=n_iterations, **options)
    seconds = time.perf_counter() - start
    rows.append(
        {"kind": "timing", "data": "simulate_tissue", "n_spots": adata.n_obs}
        | {"n_genes": adata.n_vars, "nnz": int(adata.X.nnz), "K": 5, "R": 5}
        | {"n_iterations": n_iterations, "seconds": seconds, "setup_seconds": setup}
        | {"seconds_per_sweep": (seconds - setup) / max(n_iterations - 1, 1)}
        | {"load_before": load, "load_after": os.getloadavg()[0]}
        | scores(adata, "domain", None)
    )
    print(f"  {n_spots:,} x {n_genes:,} x {n_iterations:,} sweeps: {seconds:.1f} s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--timing-spots", type=int, default=10_000)
    parser.add_argument("--timing-genes", type=int, default=2_000)
    parser.add_argument("--timing-iterations", type=int, default=2_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    print("accuracy", flush=True)
    rows = accuracy(args.seeds)
    print("timing", flush=True)
    rows += timing(args.timing_spots, args.timing_genes, args.timing_iterations)
    table = pd.DataFrame(rows)
    table["spatiome_version"] = package_version("spatiome")

    print()
    print(environment_line())
    print(f"cores: {os.cpu_count()}")
    shown = ["spot_ari", "gene_ari", "auroc_discriminating", "sensitivity", "specificity",
             "n_discriminating_called", "seconds"]  # fmt: skip
    accuracy_rows = table[table["kind"] == "accuracy"].copy()
    accuracy_rows["delta"] = accuracy_rows["delta"].fillna("-")
    summary = accuracy_rows.groupby(["data", "delta", "factors", "K"], sort=False)[shown].mean()
    print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
    print()
    mob = accuracy_rows[accuracy_rows["data"] == "mouse_ob"]
    if len(mob):
        print("mouse olfactory bulb spot ARI by seed:")
        print(mob.pivot(index="seed", columns="K", values="spot_ari").round(3).to_string())
        print()
    timings = table[table["kind"] == "timing"]
    print(
        timings[["n_spots", "n_genes", "nnz", "K", "R", "n_iterations", "seconds",
                 "setup_seconds", "seconds_per_sweep", "spot_ari", "load_before",
                 "load_after"]].to_string(index=False)
    )  # fmt: skip
    write_csv(with_environment(table), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
