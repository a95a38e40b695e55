"""Calibration and power of the spatially variable gene tests on simulated tissues.

Nulls (no spatial gene): the fraction of p < 0.05 and the Kolmogorov-Smirnov distance of the
p-values from uniform, with spatially uniform sequencing depth and with a depth gradient
across the tissue (library size varying e-fold from one side to the other). Patterns
(gradient, hotspot, stripe, periodic) at three effect sizes: power at BH q < 0.05 and the
observed false discovery proportion. Each method gets the input it is designed for, as in
``spatiome run``: Moran's I, Geary's C and trendsceek the log-normalized matrix on the
default spatial graph, SPARK-X and SpatialDE the raw counts.

Run::

    python benchmarks/svg_accuracy.py [--n-spots 1000] [--n-genes 300] [--seeds 3]

Prints two tables and writes ``benchmarks/results/svg_calibration.csv`` and
``benchmarks/results/svg_power.csv``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import stats

import spatiome as sm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, environment_line, with_environment, write_csv  # noqa: E402

PATTERNS = ("gradient", "hotspot", "stripe", "periodic")
EFFECT_SIZES = (0.3, 0.6, 1.2)
NULLS = {"uniform depth": 0.0, "depth gradient": 1.0}
ALPHA = 0.05


def method_runners(
    trendseek_permutations: int, *, null: bool = False
) -> dict[str, Callable[[AnnData], pd.DataFrame]]:
    """Each method called on the input it expects.

    For the nulls trendsceek also runs without early stopping: early-stopped genes get
    coarse, conservative p-values, so only the full run shows whether its p-values are
    uniform.
    """
    runners: dict[str, Callable[[AnnData], pd.DataFrame]] = {
        "moran": lambda a: sm.svg.moran(a, copy=True),
        "geary": lambda a: sm.svg.geary(a, copy=True),
        "sparkx": lambda a: sm.svg.sparkx(a, layer="counts", copy=True),
    }
    if hasattr(sm.svg, "spatialde"):
        runners["spatialde"] = lambda a: sm.svg.spatialde(a, layer="counts", copy=True)
    runners["trendseek"] = lambda a: sm.svg.trendseek(
        a, n_permutations=trendseek_permutations, copy=True
    )
    if null:
        runners["trendseek (no early stopping, 200 permutations)"] = lambda a: sm.svg.trendseek(
            a, n_permutations=200, early_stopping=False, copy=True
        )
    return runners


def tissue(n_spots: int, n_genes: int, seed: int, **kwargs) -> AnnData:
    adata = sm.datasets.simulate_tissue(
        n_spots=n_spots, n_genes=n_genes, random_state=seed, **kwargs
    )
    sm.pp.normalize(adata)
    sm.graph.spatial_neighbors(adata)
    return adata


def run_all(
    adata: AnnData, runners: dict[str, Callable[[AnnData], pd.DataFrame]]
) -> dict[str, tuple[pd.DataFrame, float]]:
    out = {}
    for name, run in runners.items():
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = run(adata)
        out[name] = (table.reindex(adata.var_names), time.perf_counter() - start)
    return out


def calibration(args: argparse.Namespace, runners) -> pd.DataFrame:
    rows = []
    for null, gradient in NULLS.items():
        pvalues: dict[str, list[np.ndarray]] = {name: [] for name in runners}
        seconds: dict[str, float] = dict.fromkeys(runners, 0.0)
        for seed in range(args.seeds):
            adata = tissue(
                args.n_spots, args.n_genes, 100 + seed, frac_spatial=0.0, depth_gradient=gradient
            )
            for name, (table, elapsed) in run_all(adata, runners).items():
                pvalues[name].append(table["pval"].to_numpy(dtype=float))
                seconds[name] += elapsed
        for name, chunks in pvalues.items():
            p = np.concatenate(chunks)
            p = p[np.isfinite(p)]
            rows.append(
                {
                    "null": null,
                    "method": name,
                    "n_genes": p.size,
                    "type1_error_at_0.05": float((p < ALPHA).mean()),
                    "ks_distance": float(stats.kstest(p, "uniform").statistic),
                    "seconds_per_tissue": seconds[name] / args.seeds,
                }
            )
        print(f"  null '{null}' done", flush=True)
    return pd.DataFrame(rows)


def power(args: argparse.Namespace, runners) -> pd.DataFrame:
    rows = []
    for pattern in PATTERNS:
        for effect in EFFECT_SIZES:
            called = {name: [0, 0, 0] for name in runners}  # true calls, false calls, truths
            for seed in range(args.seeds):
                adata = tissue(
                    args.n_spots,
                    args.n_genes,
                    200 + seed,
                    frac_spatial=0.2,
                    patterns=(pattern,),
                    effect_size=effect,
                )
                truth = adata.var["is_spatial"].to_numpy(dtype=bool)
                for name, (table, _) in run_all(adata, runners).items():
                    hits = table["qval"].to_numpy(dtype=float) < ALPHA
                    called[name][0] += int((hits & truth).sum())
                    called[name][1] += int((hits & ~truth).sum())
                    called[name][2] += int(truth.sum())
            for name, (true_calls, false_calls, n_true) in called.items():
                total = true_calls + false_calls
                rows.append(
                    {
                        "pattern": pattern,
                        "effect_size": effect,
                        "method": name,
                        "power": true_calls / n_true,
                        "observed_fdr": false_calls / total if total else 0.0,
                        "n_true": n_true,
                    }
                )
        print(f"  pattern '{pattern}' done", flush=True)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-spots", type=int, default=1000)
    parser.add_argument("--n-genes", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trendseek-permutations", type=int, default=1000)
    parser.add_argument("--methods", default=None, help="comma-separated subset")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)

    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 20)
    runners = method_runners(args.trendseek_permutations)
    null_runners = method_runners(args.trendseek_permutations, null=True)
    if args.methods:
        keep = args.methods.split(",")
        runners = {name: run for name, run in runners.items() if name in keep}
        null_runners = {
            name: run for name, run in null_runners.items() if name.split(" ")[0] in keep
        }
    print(environment_line(), flush=True)
    print(
        f"{args.n_spots} spots x {args.n_genes} genes per tissue, {args.seeds} seeds; "
        f"methods: {', '.join(runners)}",
        flush=True,
    )
    null_table = calibration(args, null_runners)
    power_table = power(args, runners)
    settings = {"n_spots": args.n_spots, "n_genes_per_tissue": args.n_genes, "seeds": args.seeds}
    for frame in (null_table, power_table):
        for key, value in settings.items():
            frame[key] = value

    print("\nCalibration under the null (fraction of p < 0.05; KS distance from uniform)")
    print(
        null_table.pivot(index="method", columns="null", values="type1_error_at_0.05")
        .round(3)
        .to_string()
    )
    print(null_table.pivot(index="method", columns="null", values="ks_distance").round(3))
    print("\nPower at BH q < 0.05 (observed FDR in brackets)")
    shown = power_table.assign(
        cell=lambda t: (
            t["power"].map("{:.2f}".format) + " (" + t["observed_fdr"].map("{:.2f}".format) + ")"
        )
    )
    print(shown.pivot(index=["pattern", "effect_size"], columns="method", values="cell"))
    write_csv(with_environment(null_table), args.out_dir / "svg_calibration.csv")
    write_csv(with_environment(power_table), args.out_dir / "svg_power.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
