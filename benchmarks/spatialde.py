"""SpatialDE: spatiome against SpatialDE 1.1.3 on the same input, and the approximate mode.

Three measurements on simulated tissues (``spatiome.datasets.simulate_tissue``, hex grid,
1,000 genes of which a quarter are spatial):

1. **Exact mode against the original** at 1,000 and 3,000 spots. The counts are
   preprocessed once with ``pp.stabilize`` and ``pp.regress_out`` (NaiveDE's recipe), the
   resulting table is written to a temporary folder, and SpatialDE 1.1.3's
   ``SpatialDE.run(X, table)`` is timed in a subprocess of its own environment (numpy < 2,
   scipy < 1.12; never a spatiome dependency) while spatiome runs ``svg.spatialde(adata,
   layer="regressed", normalize=None, n_jobs=threads)`` on the same values, with
   coordinates in array units (spots 1 apart; in micrometres the original's rounding
   collapses its smallest length scales at 3,000 spots, see ``fidelity``). Reported:
   both times (medians of ``--repeats`` runs, 3 by default), the speed ratio, the largest
   LLR difference and the Spearman correlation of the LLRs, and the Jaccard index of the
   genes called at Storey q < 0.05. In the same run spatiome is also timed on one thread
   (``n_jobs=1``, one BLAS thread) and with its former path (one thread, ``eigh`` with
   eigenvectors for every high-rank kernel instead of the tridiagonal reduction whose
   eigenvectors are never formed), with the largest LLR difference between the former
   path and the timed one and whether they call the same genes.
2. **Approximate against exact mode** at 5,000 spots, from raw counts: Jaccard index of the
   genes called at q < 0.05 (Benjamini-Hochberg) and both times.
3. **Approximate mode alone** at 50,000 spots, from raw counts (sparse throughout).

Both sides get the same number of cores, ``--threads`` (2 by default): the original as
``OPENBLAS_NUM_THREADS`` (numpy's ``eigh`` and products are its only multi-threaded part),
spatiome as ``n_jobs`` (the BLAS threads of its decompositions and projections).

Run with a Python that has spatiome::

    python benchmarks/spatialde.py [--original PYTHON] [--repeats 3] [--threads 2]
        [--sizes 1000 3000] [--skip-lowrank] [--skip-large]

``--original`` is the interpreter of an environment with SpatialDE 1.1.3 (default
``../venv-spatialde/bin/python`` beside the checkout); without it the comparison rows say
so. Inputs are written under the system temporary folder, never into the repository.
Prints a table and appends its rows to ``benchmarks/results/spatialde.csv``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import stats
from threadpoolctl import threadpool_limits

import spatiome as sm
from spatiome._core.files import atomic_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, package_version  # noqa: E402

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "spatialde.csv"
DEFAULT_ORIGINAL = ROOT.parent.parent / "venv-spatialde" / "bin" / "python"
spatialde_module = importlib.import_module("spatiome.svg.spatialde")

RUNNER = """
import sys, time, warnings
warnings.filterwarnings("ignore")
import pandas as pd
import SpatialDE
table = pd.read_csv(sys.argv[1], index_col=0)
coords = pd.read_csv(sys.argv[2], index_col=0)
times = []
cpu = []
for _ in range(int(sys.argv[4])):
    start, start_cpu = time.perf_counter(), time.process_time()
    result = SpatialDE.run(coords[["x", "y"]].values, table)
    times.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)
result.to_csv(sys.argv[3])
print(sorted(times)[len(times) // 2], sorted(cpu)[len(cpu) // 2])
"""


def simulate(n_spots: int, n_genes: int) -> AnnData:
    """A hex-grid tissue, a quarter of its genes spatial (truth in ``var["is_spatial"]``)."""
    return sm.datasets.simulate_tissue(n_spots=n_spots, n_genes=n_genes, random_state=0)


def prepared(n_spots: int, n_genes: int) -> AnnData:
    """The exact comparison's input: :func:`simulate` in array units (spots 1 apart; in
    micrometres the original's |x|^2 + |y|^2 - 2 x.y rounding collapses its smallest length
    scales and puts noise on the kernel's diagonal, see svg.spatialde, fidelity), with
    NaiveDE's recipe in ``layers["regressed"]``."""
    adata = simulate(n_spots, n_genes)
    adata.obsm["spatial"] = adata.obsm["spatial"] / 100.0
    sm.pp.stabilize(adata)
    sm.pp.regress_out(adata)
    return adata


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def run_original(
    python: Path, adata, folder: Path, repeats: int, threads: int
) -> tuple[float, float, pd.DataFrame]:
    """SpatialDE 1.1.3's run() on the regressed layer, timed inside its own process: median
    wall-clock and CPU seconds, and its table."""
    table = pd.DataFrame(adata.layers["regressed"], index=adata.obs_names, columns=adata.var_names)
    coords = pd.DataFrame(adata.obsm["spatial"], index=adata.obs_names, columns=["x", "y"])
    paths = [folder / "expression.csv", folder / "coords.csv", folder / "result.csv"]
    table.to_csv(paths[0])
    coords.to_csv(paths[1])
    runner = folder / "run_spatialde.py"
    runner.write_text(RUNNER)
    variables = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    done = subprocess.run(
        [str(python), str(runner), *map(str, paths), str(repeats)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **dict.fromkeys(variables, str(threads))},
    )
    seconds, cpu_seconds = map(float, done.stdout.strip().splitlines()[-1].split())
    result = pd.read_csv(paths[2], index_col=0).set_index("g")
    # The original returns one row per length scale that ties for the best likelihood.
    return seconds, cpu_seconds, result[~result.index.duplicated(keep="first")]


def timed_spatialde(
    adata: AnnData, repeats: int, threads: int
) -> tuple[float, float, pd.DataFrame]:
    """Median wall-clock and CPU seconds of exact-mode spatialde on the regressed layer, and
    its table."""
    times = []
    cpu = []
    with threadpool_limits(limits=threads, user_api="blas"):
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            table = sm.svg.spatialde(
                adata, layer="regressed", normalize=None, n_jobs=threads, copy=True
            )
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return float(np.median(times)), float(np.median(cpu)), table


def timed_former_path(adata: AnnData, repeats: int) -> tuple[float, float, pd.DataFrame]:
    """The former exact path: one length scale at a time, full ``eigh`` with eigenvectors
    for every dense kernel, on one thread."""
    tridiagonal = spatialde_module._tridiagonal_spectrum
    spatialde_module._tridiagonal_spectrum = spatialde_module._eigen_spectrum
    try:
        return timed_spatialde(adata, repeats, threads=1)
    finally:
        spatialde_module._tridiagonal_spectrum = tridiagonal


def compare_with_original(
    n_spots: int, n_genes: int, python: Path | None, folder: Path, repeats: int, threads: int
) -> dict:
    adata = prepared(n_spots, n_genes)
    load_before = load()
    seconds, cpu_seconds, ours = timed_spatialde(adata, repeats, threads)
    serial_seconds, _, _ = timed_spatialde(adata, repeats, threads=1)
    former_seconds, _, former = timed_former_path(adata, repeats)
    row = {
        "comparison": "exact vs SpatialDE 1.1.3",
        "n_spots": adata.n_obs,
        "n_genes": adata.n_vars,
        "repeats": repeats,
        "spatiome_seconds": seconds,
        "spatiome_cpu_seconds": cpu_seconds,
        "spatiome_one_thread_seconds": serial_seconds,
        "spatiome_former_seconds": former_seconds,
        "max_abs_diff_llr_former": float((ours["llr"] - former["llr"]).abs().max()),
        "calls_spatiome": int((ours["qval_storey"] < 0.05).sum()),
        "same_calls_as_former": bool(
            ((ours["qval_storey"] < 0.05) == (former["qval_storey"] < 0.05)).all()
        ),
        "load_average_before": load_before,
    }
    if python is None:
        return row
    original_seconds, original_cpu, original = run_original(python, adata, folder, repeats, threads)
    original = original.loc[ours.index]
    difference = ours["llr"] - original["LLR"]
    row.update(
        {
            "other_seconds": original_seconds,
            "other_cpu_seconds": original_cpu,
            "speedup": original_seconds / seconds,
            # CPU seconds are less sensitive than wall time to other jobs on the machine.
            "cpu_ratio": original_cpu / cpu_seconds,
            "former_speedup": original_seconds / former_seconds,
            "max_abs_diff_llr": float(difference.abs().max()),
            "median_abs_diff_llr": float(difference.abs().median()),
            "min_diff_llr": float(difference.min()),
            "spearman_llr": float(stats.spearmanr(ours["llr"], original["LLR"]).statistic),
            "calls_other": int((original["qval"] < 0.05).sum()),
            "jaccard_calls": jaccard(
                set(ours.index[ours["qval_storey"] < 0.05]),
                set(original.index[original["qval"] < 0.05]),
            ),
        }
    )
    return row


def compare_lowrank(n_spots: int, n_genes: int) -> dict:
    adata = simulate(n_spots, n_genes)
    start = time.perf_counter()
    exact = sm.svg.spatialde(adata, method="exact", copy=True)
    exact_seconds = time.perf_counter() - start
    start = time.perf_counter()
    approx = sm.svg.spatialde(adata, method="lowrank")
    seconds = time.perf_counter() - start
    a = set(exact.index[exact["qval"] < 0.05])
    b = set(approx.index[approx["qval"] < 0.05])
    truth = set(adata.var_names[adata.var["is_spatial"]])
    return {
        "comparison": "lowrank vs exact (spatiome)",
        "n_spots": adata.n_obs,
        "n_genes": adata.n_vars,
        "spatiome_seconds": seconds,
        "other_seconds": exact_seconds,
        "speedup": exact_seconds / seconds,
        "spearman_llr": float(stats.spearmanr(exact["llr"], approx["llr"]).statistic),
        "calls_spatiome": len(b),
        "calls_other": len(a),
        "jaccard_calls": jaccard(a, b),
        "recall_truth": len(b & truth) / len(truth),
        "ranks": " ".join(
            d.split("=")[1].rstrip(")")
            for d in adata.uns["spatiome"]["spatialde"]["decompositions"]
        ),
    }


def lowrank_alone(n_spots: int, n_genes: int) -> dict:
    adata = simulate(n_spots, n_genes)
    start = time.perf_counter()
    table = sm.svg.spatialde(adata, method="lowrank")
    seconds = time.perf_counter() - start
    truth = set(adata.var_names[adata.var["is_spatial"]])
    called = set(table.index[table["qval"] < 0.05])
    return {
        "comparison": "lowrank alone",
        "n_spots": adata.n_obs,
        "n_genes": adata.n_vars,
        "spatiome_seconds": seconds,
        "calls_spatiome": len(called),
        "recall_truth": len(called & truth) / len(truth),
        "ranks": " ".join(
            d.split("=")[1].rstrip(")")
            for d in adata.uns["spatiome"]["spatialde"]["decompositions"]
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--original", type=Path, default=DEFAULT_ORIGINAL)
    parser.add_argument("--n-genes", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=3, help="runs per exact-mode timing")
    parser.add_argument(
        "--threads", type=int, default=2, help="cores for each side in the exact comparison"
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[1_000, 3_000], help="spots, exact comparison"
    )
    parser.add_argument("--skip-lowrank", action="store_true", help="skip the approximate mode")
    parser.add_argument("--skip-large", action="store_true", help="skip the 50,000-spot run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    python = args.original if args.original.exists() else None
    if python is None:
        print(f"{args.original} not found: timing spatiome alone", flush=True)

    # Compile the numba kernels before anything is timed.
    sm.svg.spatialde(simulate(200, 20), copy=True)
    sm.svg.spatialde(simulate(200, 20), method="lowrank", n_inducing=50, copy=True)

    rows = []
    with tempfile.TemporaryDirectory(prefix="spatiome-bench-spatialde-") as tmp:
        for n_spots in args.sizes:
            rows.append(
                compare_with_original(
                    n_spots, args.n_genes, python, Path(tmp), args.repeats, args.threads
                )
            )
            rows[-1]["load_average"] = load()
            print(rows[-1], flush=True)
    if not args.skip_lowrank:
        rows.append(compare_lowrank(5_000, args.n_genes))
        rows[-1]["load_average"] = load()
        print(rows[-1], flush=True)
    if not (args.skip_lowrank or args.skip_large):
        rows.append(lowrank_alone(50_000, args.n_genes))
        rows[-1]["load_average"] = load()
        print(rows[-1], flush=True)

    result = pd.DataFrame(rows)
    result["machine"] = machine()
    result["python"] = platform.python_version()
    for name in ("spatiome", "numpy", "scipy", "numba", "anndata", "scanpy"):
        result[name] = package_version(name)
    result["original"] = "SpatialDE 1.1.3" if python is not None else "not run"
    # The exact comparison gives both sides these BLAS threads (spatiome: as many n_jobs).
    result["openblas_threads"] = args.threads
    result["date"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())

    print()
    print(f"machine: {machine()}; python {platform.python_version()}")
    columns = [
        "comparison",
        "n_spots",
        "spatiome_seconds",
        "spatiome_one_thread_seconds",
        "spatiome_former_seconds",
        "other_seconds",
        "speedup",
        "cpu_ratio",
        "former_speedup",
        "max_abs_diff_llr",
        "spearman_llr",
        "jaccard_calls",
    ]
    print(
        result[[c for c in columns if c in result]].to_string(
            index=False, float_format=lambda v: f"{v:.4g}"
        )
    )
    if args.out.exists():
        earlier = pd.read_csv(args.out, float_precision="round_trip")
        result = pd.concat([earlier, result], ignore_index=True)
    with atomic_path(args.out) as tmp_path:
        result.to_csv(tmp_path, index=False)
    print(f"\nappended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
