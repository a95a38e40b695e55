"""SpaNorm (``pp.spanorm``): SVG false positives under a depth gradient, power, and scale.

Three parts, each a block of rows in one CSV:

1. ``svg_calls``: simulated tissues whose library size varies e-fold across the tissue
   (``depth_gradient=1``), without spatial genes ("null") and with 10% spatial genes at a
   moderate effect ("10% spatial"). Each tissue is normalized three ways: library size
   (``pp.normalize``: log1p of counts scaled to the median total), ``pp.spanorm`` with the
   original's ridge penalty (logPAC, ``lambda_a=1e-4``) and with its default firmer one
   (``lambda_a=1e-2``). Moran's I (default kNN graph) and SPARK-X
   (``require_counts=False``) test every layer; SpaNorm's own F-test (``svg=True``) runs
   with each SpaNorm fit (its timing includes it). Reported: the fraction of null genes called
   at BH q < 0.05 and at p < 0.05, and the fraction of spatial genes called at q < 0.05.
2. ``scale``: one simulated tissue of 50,000 spots x 2,000 genes, ``pp.spanorm`` with one
   and with all threads; wall time, the load average around the run (other jobs may share
   the machine), the peak of memory allocated during the call (tracemalloc, numpy arrays
   included; a separate run) and the process's peak resident memory.
3. ``nb_quantile``: the numba NB quantile used by logPAC against ``scipy.stats.nbinom.ppf``
   on the same million draws (probabilities and means as in the scale tissue).

Run::

    python benchmarks/spanorm.py [--n-spots 2000] [--n-genes 300] [--seeds 5]
                                 [--scale-spots 50000] [--scale-genes 2000] [--skip-scale]

Prints the tables and writes ``benchmarks/results/spanorm.csv``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import resource
import sys
import time
import tracemalloc
import warnings
from pathlib import Path

import numba
import numpy as np
import pandas as pd
from scipy import stats

import spatiome as sm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, environment_line, with_environment, write_csv  # noqa: E402

ALPHA = 0.05
SCENARIOS = {
    "null": {"frac_spatial": 0.0},
    "10% spatial": {"frac_spatial": 0.1, "effect_size": 0.5},
}
NORMALIZATIONS = {
    "library size (pp.normalize)": None,
    "spanorm (original penalty, lambda_a=1e-4)": {"lambda_a": 1e-4},
    "spanorm (default, lambda_a=1e-2)": {},
}


def svg_calls(args: argparse.Namespace) -> pd.DataFrame:
    rows = []
    for scenario, settings in SCENARIOS.items():
        for seed in range(args.seeds):
            adata = sm.datasets.simulate_tissue(
                n_spots=args.n_spots,
                n_genes=args.n_genes,
                depth_gradient=1.0,
                random_state=1000 + seed,
                **settings,
            )
            sm.pp.normalize(adata)
            sm.graph.spatial_neighbors(adata)
            spatial = adata.var["is_spatial"].to_numpy(dtype=bool)
            for k, (name, options) in enumerate(NORMALIZATIONS.items()):
                layer, seconds = None, 0.0
                if options is not None:
                    layer = f"spanorm_{k}"
                    start = time.perf_counter()
                    sm.pp.spanorm(adata, key_added=layer, svg=True, **options)
                    seconds = time.perf_counter() - start
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    tables = {
                        "moran": sm.svg.moran(adata, layer=layer, copy=True),
                        "sparkx": sm.svg.sparkx(
                            adata, layer=layer, require_counts=False, copy=True
                        ),
                    }
                if options is not None:
                    tables["spanorm F-test"] = pd.DataFrame(
                        {column: adata.var[f"spanorm_svg_{column}"] for column in ("pval", "qval")}
                    )
                for method, table in tables.items():
                    q = table["qval"].to_numpy(dtype=float)
                    p = table["pval"].to_numpy(dtype=float)
                    rows.append(
                        {
                            "part": "svg_calls",
                            "scenario": scenario,
                            "seed": 1000 + seed,
                            "normalization": name,
                            "method": method,
                            "null_called_q05": float((q[~spatial] < ALPHA).mean()),
                            "null_called_p05": float((p[~spatial] < ALPHA).mean()),
                            "power_q05": float((q[spatial] < ALPHA).mean())
                            if spatial.any()
                            else np.nan,
                            "n_null": int((~spatial).sum()),
                            "n_spatial": int(spatial.sum()),
                            "spanorm_seconds": seconds,
                            "n_spots": args.n_spots,
                            "n_genes": args.n_genes,
                        }
                    )
        print(f"  scenario '{scenario}' done", flush=True)
    return pd.DataFrame(rows)


def scale(args: argparse.Namespace) -> pd.DataFrame:
    start = time.perf_counter()
    adata = sm.datasets.simulate_tissue(
        n_spots=args.scale_spots,
        n_genes=args.scale_genes,
        depth_gradient=1.0,
        frac_spatial=0.1,
        random_state=0,
    )
    density = adata.layers["counts"].nnz / (adata.n_obs * adata.n_vars)
    print(
        f"  simulated {adata.n_obs:,} x {adata.n_vars:,} ({density:.0%} non-zero) in "
        f"{time.perf_counter() - start:.1f} s",
        flush=True,
    )
    warm = sm.datasets.simulate_tissue(n_spots=300, n_genes=20, random_state=1)
    sm.pp.spanorm(warm)  # compile (or load) the numba kernels outside the timing
    rows = []
    cores = os.cpu_count() or 1
    for n_jobs in (1, -1) if cores > 1 else (1,):
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        sm.pp.spanorm(adata, n_jobs=n_jobs)
        seconds = time.perf_counter() - start
        params = adata.uns["spatiome"]["spanorm"]
        rows.append(
            {
                "part": "scale",
                "n_jobs": n_jobs,
                "threads": 1 if n_jobs == 1 else cores,
                "seconds": seconds,
                "load_average_1min_before": load_before,
                "load_average_1min_after": os.getloadavg()[0],
                "n_spots": adata.n_obs,
                "n_genes": adata.n_vars,
                "density": density,
                "fit_spots": len(params["fit_spots"]),
                "dispersion_updates": len(params["loglik"]),
                "irls_iterations": sum(params["n_irls_iterations"]),
            }
        )
        print(f"  n_jobs={n_jobs}: {seconds:.1f} s (load {load_before:.1f})", flush=True)
    tracemalloc.start()
    sm.pp.spanorm(adata, n_jobs=-1)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    output_gb = adata.layers["spanorm"].nbytes / 1e9
    counts = adata.layers["counts"]
    counts_gb = (counts.data.nbytes + counts.indices.nbytes + counts.indptr.nbytes) / 1e9
    for row in rows:
        row["peak_allocated_gb"] = peak / 1e9
        row["output_layer_gb"] = output_gb
        row["counts_layer_gb"] = counts_gb
        row["process_peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return pd.DataFrame(rows)


def nb_quantile(args: argparse.Namespace) -> pd.DataFrame:
    module = importlib.import_module("spatiome.pp.spanorm")

    @numba.njit(nogil=True)
    def quantiles(p, size, mu):
        out = np.empty(p.shape[0])
        for i in range(p.shape[0]):
            out[i] = module._nb_quantile(p[i], size[i], mu[i])
        return out

    rng = np.random.default_rng(0)
    n = 1_000_000
    # Means as in the scale tissue (log-normal gene abundances at depth 2,000 over 2,000
    # genes, spot depth varying e-fold), dispersion 0.1.
    mu = 2000.0 / args.scale_genes * np.exp(rng.normal(0.0, 1.0, n) + rng.uniform(-0.5, 0.5, n))
    size = np.full(n, 10.0)
    p = rng.uniform(0.001, 0.999, n)
    quantiles(p[:10], size[:10], mu[:10])
    start = time.perf_counter()
    ours = quantiles(p, size, mu)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    reference = stats.nbinom.ppf(p, size, size / (size + mu))
    scipy_s = time.perf_counter() - start
    return pd.DataFrame(
        [
            {
                "part": "nb_quantile",
                "method": name,
                "seconds": seconds,
                "ns_per_value": seconds / n * 1e9,
                "n_values": n,
                "mismatches_vs_scipy": int((ours != reference).sum()),
            }
            for name, seconds in (("spanorm numba", ours_s), ("scipy.stats.nbinom.ppf", scipy_s))
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-spots", type=int, default=2000)
    parser.add_argument("--n-genes", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--scale-spots", type=int, default=50_000)
    parser.add_argument("--scale-genes", type=int, default=2_000)
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "spanorm.csv")
    args = parser.parse_args(argv)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 20)
    print(environment_line(), flush=True)

    print(f"SVG calls: {args.n_spots} spots x {args.n_genes} genes, {args.seeds} seeds", flush=True)
    calls = svg_calls(args)
    summary = calls.groupby(["scenario", "normalization", "method"], sort=False)[
        ["null_called_q05", "null_called_p05", "power_q05"]
    ].mean()
    print("\nFraction of genes called (mean over seeds): null genes at q < 0.05 and p < 0.05;")
    print("spatial genes at q < 0.05 (power)")
    print(summary.round(3).to_string())

    parts = [calls, nb_quantile(args)]
    print("\nNB quantile, 1,000,000 values")
    print(parts[1][["method", "seconds", "ns_per_value", "mismatches_vs_scipy"]].to_string())
    if not args.skip_scale:
        print(f"\nScale: {args.scale_spots:,} spots x {args.scale_genes:,} genes", flush=True)
        timing = scale(args)
        print(timing.round(3).to_string(index=False))
        parts.append(timing)
    write_csv(with_environment(pd.concat(parts, ignore_index=True)), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
