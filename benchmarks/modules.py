"""Gene co-expression modules (modules.stihc, modules.aeh): accuracy on simulations, and speed.

Tissues: ``spatiome.modules._simulate.coexpression_modules``, noisy negative-binomial copies
(``log1p`` values, raw counts in ``layers['counts']``) of four template fields (a cortical
band, a blob, a stripe and hot spots, after the stIHC paper's Calb2/Ttr/Gpr88/Cck), in the
paper's three designs: ``equal`` (2,696 spots, 25 copies each, 100 genes), ``imbalanced``
(2,696 spots, modules of 25/16/6/2, 49 genes) and ``sparse`` (the imbalanced genes on a
random subset of 260 spots).

Reported:

- stIHC with its defaults: ARI of the modules against the templates per design and seed;
- AEH (``C = 4``, ``length_scale = 300`` um, counts through SpatialDE's preprocessing) on
  the equal design: ARI of the gene patterns, the correlation of each template with its
  best-matching pattern mean, exact against approximate (Nystrom) mode;
- wall time at 3,639 spots (100 genes) and at 100,000 spots. At 100,000 spots stIHC runs on
  20 genes with 10 trace probes: its time is dominated by SuperLU's multi-right-hand-side
  solves (one per grid value), which grow linearly with the genes. AEH runs in approximate
  mode there (1,000 inducing points) on 100 genes. Compiled kernels are warmed up first.
  Other jobs may share this machine: the load average is recorded with each timing.

Run with a Python that has spatiome::

    python benchmarks/modules.py [--seeds 3] [--timing-spots 100000]

Prints the tables and writes ``benchmarks/results/modules.csv``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

from spatiome.modules._simulate import coexpression_modules
from spatiome.modules.aeh import aeh
from spatiome.modules.stihc import stihc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS_DIR,
    environment_line,
    package_version,
    with_environment,
    write_csv,
)

RESULTS = RESULTS_DIR / "modules.csv"
DESIGNS = ("equal", "imbalanced", "sparse")
LENGTH_SCALE = 300.0


def stihc_accuracy(seeds: int) -> list[dict]:
    rows = []
    for design in DESIGNS:
        for seed in range(seeds):
            adata = coexpression_modules(design, random_state=seed)
            start = time.perf_counter()
            table = stihc(adata)
            seconds = time.perf_counter() - start
            params = adata.uns["spatiome"]["stihc"]
            rows.append(
                {
                    "kind": "accuracy",
                    "method": "stihc",
                    "design": design,
                    "seed": seed,
                    "n_spots": adata.n_obs,
                    "n_genes": adata.n_vars,
                    "ari": adjusted_rand_score(adata.var["module"], table["module"]),
                    "n_modules": params["n_modules"],
                    "alpha": params["alpha"],
                    "penalty": params["penalty"],
                    "seconds": seconds,
                }
            )
            print(f"  stihc {design} seed {seed}: ARI {rows[-1]['ari']:.3f}", flush=True)
    return rows


def matched_correlation(fields: np.ndarray, templates: np.ndarray) -> np.ndarray:
    c = fields.shape[1]
    return np.corrcoef(fields.T, templates.T)[:c, c:].max(axis=0)


def aeh_accuracy(seeds: int) -> list[dict]:
    rows = []
    for seed in range(seeds):
        adata = coexpression_modules("equal", random_state=seed)
        results = {}
        for approximate in (False, True):
            start = time.perf_counter()
            table = aeh(adata, 4, LENGTH_SCALE, layer="counts", approximate=approximate)
            seconds = time.perf_counter() - start
            results[approximate] = (table, adata.obsm["aeh_patterns"].copy())
            params = adata.uns["spatiome"]["aeh"]
            corr = matched_correlation(results[approximate][1], adata.obsm["templates"])
            rows.append(
                {
                    "kind": "accuracy",
                    "method": "aeh_approximate" if approximate else "aeh_exact",
                    "design": "equal",
                    "seed": seed,
                    "n_spots": adata.n_obs,
                    "n_genes": adata.n_vars,
                    "ari": adjusted_rand_score(adata.var["module"], table["pattern"]),
                    "min_template_corr": float(corr.min()),
                    "mean_template_corr": float(corr.mean()),
                    "n_iter": params["n_iter"],
                    "rank": params["rank"],
                    "seconds": seconds,
                }
            )
        exact, approx = results[False], results[True]
        mapping = exact[0]["pattern"].groupby(approx[0]["pattern"]).first()
        corr = np.corrcoef(approx[1].T, exact[1].T)[:4, 4:]
        rows[-1]["ari_vs_exact"] = adjusted_rand_score(exact[0]["pattern"], approx[0]["pattern"])
        rows[-1]["min_field_corr_vs_exact"] = float(
            np.min([corr[k, mapping.get(k, 0)] for k in range(4)])
        )
        print(f"  aeh seed {seed}: ARI exact {rows[-2]['ari']:.3f}, approx {rows[-1]['ari']:.3f}",
              flush=True)  # fmt: skip
    return rows


def timing(n_spots: int, label: str, run, n_genes: int, **extra) -> dict:
    adata = coexpression_modules("equal", n_spots=n_spots, random_state=0)
    adata = adata[:, :n_genes].copy()
    before = os.getloadavg()[0]
    start = time.perf_counter()
    run(adata)
    seconds = time.perf_counter() - start
    after = os.getloadavg()[0]
    print(f"  {label}: {n_spots:,} spots x {n_genes} genes: {seconds:.1f} s", flush=True)
    return {
        "kind": "timing",
        "method": label,
        "n_spots": n_spots,
        "n_genes": n_genes,
        "seconds": seconds,
        "load_before": before,
        "load_after": after,
        **extra,
    }


def timings(small: int, large: int) -> list[dict]:
    warm = coexpression_modules("sparse", random_state=0)
    stihc(warm, copy=True)
    aeh(warm, 4, LENGTH_SCALE, layer="counts", n_init=1, approximate=True, copy=True)
    return [
        timing(small, "stihc", lambda a: stihc(a, copy=True), 100),
        timing(
            small,
            "aeh_exact",
            lambda a: aeh(a, 4, LENGTH_SCALE, layer="counts", approximate=False, copy=True),
            100,
        ),  # fmt: skip
        timing(
            small,
            "aeh_approximate",
            lambda a: aeh(a, 4, LENGTH_SCALE, layer="counts", approximate=True, copy=True),
            100,
        ),  # fmt: skip
        timing(large, "stihc", lambda a: stihc(a, n_probes=10, copy=True), 20, n_probes=10),
        timing(
            large,
            "aeh_approximate",
            lambda a: aeh(a, 4, LENGTH_SCALE, layer="counts", approximate=True, copy=True),
            100,
        ),  # fmt: skip
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--timing-small", type=int, default=3_639)
    parser.add_argument("--timing-spots", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    print("accuracy", flush=True)
    rows = stihc_accuracy(args.seeds) + aeh_accuracy(min(args.seeds, 2))
    print("timing", flush=True)
    rows += timings(args.timing_small, args.timing_spots)
    table = pd.DataFrame(rows)
    table["spatiome_version"] = package_version("spatiome")

    print()
    print(environment_line())
    print(f"cores: {os.cpu_count()}")
    accuracy = table[table["kind"] == "accuracy"]
    shown = ["ari", "min_template_corr", "ari_vs_exact", "min_field_corr_vs_exact", "seconds"]
    shown = [c for c in shown if c in accuracy]
    print(accuracy.groupby(["method", "design"], sort=False)[shown].agg(["min", "mean"])
          .to_string(float_format=lambda v: f"{v:.3f}"))  # fmt: skip
    print()
    columns = ["method", "n_spots", "n_genes", "seconds", "load_before", "load_after"]
    print(table[table["kind"] == "timing"][columns].to_string(index=False))
    write_csv(with_environment(table), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
