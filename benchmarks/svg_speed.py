"""Speed of the spatially variable gene tests against their original implementations.

In the same run, on the same input:

- SPARK-X: ``spatiome.svg.sparkx`` against the R package SPARK (``sparkx(...,
  option="mixture")``, single thread) on the mouse olfactory bulb (262 x 16,218) and on
  simulated tissues of 50,000 x 1,000 and 200,000 x 200; spatiome alone on 1,000,000 x
  1,000 with the peak memory of a process that loads the counts and runs the test;
- Moran's I: see ``moran.py`` (squidpy), run from here when squidpy is importable;
- SpatialDE: see ``spatialde.py`` (SpatialDE 1.1.3 in a side environment).

R is never a dependency. Point ``--r-runner`` at a script that runs SPARK's ``sparkx`` on a
Matrix Market file (spots x genes) and a ``spot,x,y`` CSV, and prints
``SPARKX_SECONDS <elapsed>`` (the elapsed time of the ``sparkx()`` call alone) on its last
line; without it, spatiome is timed alone and the R figures measured earlier on a machine
like this one are listed for reference.

Run::

    python benchmarks/svg_speed.py [--r-runner run_sparkx.R] [--repeats 3] [--skip-million]

Writes ``benchmarks/results/svg_speed.csv``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.io
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

#: R SPARK-X single-thread times measured earlier on a machine like this one (seconds).
R_REFERENCE_SECONDS = {"mouse_ob_rep11": 16.9, "50000x1000": 10.9, "200000x200": 4.6}

#: Simulated shapes: (spots, genes, mean depth). The depths give about 17-20% non-zero
#: entries, close to the sparsity of the shapes the R references were measured on.
SHAPES = {
    "50000x1000": (50_000, 1_000, 200.0),
    "200000x200": (200_000, 200, 50.0),
}
MILLION = (1_000_000, 1_000, 500.0)


def simulated(n_spots: int, n_genes: int, depth: float) -> AnnData:
    adata = sm.datasets.simulate_tissue(
        n_spots=n_spots, n_genes=n_genes, mean_depth=depth, random_state=0
    )
    del adata.X
    return adata


def time_sparkx(adata: AnnData, repeats: int, n_jobs: int) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seconds, _ = timed(lambda: sm.svg.sparkx(adata, copy=True, n_jobs=n_jobs), repeats)
    return seconds


def time_r(adata: AnnData, runner: Path, repeats: int) -> float:
    """Median elapsed time of R's sparkx() call on the same counts and coordinates."""
    with tempfile.TemporaryDirectory() as folder:
        counts = Path(folder) / "counts.mtx"
        coords = Path(folder) / "coords.csv"
        scipy.io.mmwrite(counts, sp.csr_matrix(adata.layers["counts"]))
        xy = adata.obsm["spatial"]
        pd.DataFrame({"spot": adata.obs_names, "x": xy[:, 0], "y": xy[:, 1]}).to_csv(
            coords, index=False
        )
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        times = []
        for _ in range(repeats):
            done = subprocess.run(
                ["Rscript", str(runner), str(counts), str(coords), str(Path(folder) / "o.csv")],
                check=True,
                capture_output=True,
                text=True,
                env=env,
            )
            last = done.stdout.strip().splitlines()[-1]
            times.append(float(last.split()[-1]))
    return float(np.median(times))


def million_in_subprocess() -> dict[str, float]:
    """Time sparkx on 1,000,000 x 1,000 in a fresh process; report its peak memory."""
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "million.npz"
        adata = simulated(*MILLION)
        counts = adata.layers["counts"]
        np.savez(
            data,
            data=counts.data,
            indices=counts.indices,
            indptr=counts.indptr,
            shape=counts.shape,
            xy=adata.obsm["spatial"],
        )
        density = counts.nnz / (counts.shape[0] * counts.shape[1])
        del adata, counts
        code = f"""
import json, resource, time, warnings, numpy as np, scipy.sparse as sp, anndata
import spatiome as sm
f = np.load({str(data)!r})
counts = sp.csr_matrix((f["data"], f["indices"], f["indptr"]), shape=tuple(f["shape"]))
adata = anndata.AnnData(counts, obsm={{"spatial": f["xy"]}})
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
warm = adata[:2000].copy()
warnings.simplefilter("ignore")
sm.svg.sparkx(warm, copy=True)
times = {{}}
for n_jobs in (1, 2):
    start = time.perf_counter()
    sm.svg.sparkx(adata, copy=True, n_jobs=n_jobs)
    times[n_jobs] = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
print(json.dumps({{"seconds_1": times[1], "seconds_2": times[2], "peak_gb": peak,
                  "loaded_gb": loaded}}))
"""
        done = subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True
        )
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["density"] = density
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--r-runner", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=None, help="folder of public datasets")
    parser.add_argument("--skip-million", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "svg_speed.csv")
    args = parser.parse_args(argv)
    print(environment_line(), flush=True)

    inputs: dict[str, AnnData] = {}
    try:
        inputs["mouse_ob_rep11"] = sm.datasets.load("mouse_ob_rep11", data_dir=args.data_dir)
    except (FileNotFoundError, sm._core.validate.SpatiomeInputError) as err:
        print(f"mouse_ob_rep11 not available ({err}); skipped", flush=True)
    for name, shape in SHAPES.items():
        inputs[name] = simulated(*shape)

    warm = next(iter(inputs.values()))[:500].copy()
    time_sparkx(warm, 1, 1)
    rows = []
    for name, adata in inputs.items():
        counts = adata.layers["counts"]
        row = {
            "method": "sparkx",
            "dataset": name,
            "n_spots": adata.n_obs,
            "n_genes": adata.n_vars,
            "density": counts.nnz / (adata.n_obs * adata.n_vars),
            "spatiome_seconds_1_thread": time_sparkx(adata, args.repeats, 1),
            "spatiome_seconds_2_threads": time_sparkx(adata, args.repeats, 2),
        }
        if args.r_runner is not None:
            row["peer_seconds"] = time_r(adata, args.r_runner, args.repeats)
            row["peer"] = "R SPARK 1.1.1 sparkx(), same run, 1 thread"
        else:
            row["peer_seconds"] = R_REFERENCE_SECONDS.get(name, np.nan)
            row["peer"] = "R SPARK sparkx(), measured earlier (not this run)"
        row["speedup_1_thread"] = row["peer_seconds"] / row["spatiome_seconds_1_thread"]
        row["speedup_2_threads"] = row["peer_seconds"] / row["spatiome_seconds_2_threads"]
        rows.append(row)
        print(
            f"  sparkx {name}: {row['spatiome_seconds_1_thread']:.3f} s "
            f"(peer {row['peer_seconds']:.2f} s)",
            flush=True,
        )
    if not args.skip_million:
        million = million_in_subprocess()
        rows.append(
            {
                "method": "sparkx",
                "dataset": "1000000x1000",
                "n_spots": MILLION[0],
                "n_genes": MILLION[1],
                "density": million["density"],
                "spatiome_seconds_1_thread": million["seconds_1"],
                "spatiome_seconds_2_threads": million["seconds_2"],
                "peak_memory_gb": million["peak_gb"],
                "memory_after_loading_gb": million["loaded_gb"],
                "peer": "none (R needs hours and more memory at this size)",
            }
        )
        print(
            f"  sparkx 1,000,000 x 1,000: {million['seconds_1']:.1f} s, peak "
            f"{million['peak_gb']:.2f} GB (counts loaded: {million['loaded_gb']:.2f} GB)",
            flush=True,
        )

    table = pd.DataFrame(rows)
    table["r_runner"] = str(args.r_runner) if args.r_runner else ""
    table["spatiome_version"] = package_version("spatiome")
    print()
    shown = [
        "dataset",
        "density",
        "spatiome_seconds_1_thread",
        "spatiome_seconds_2_threads",
        "peer_seconds",
        "speedup_1_thread",
        "speedup_2_threads",
    ]
    print(table[[c for c in shown if c in table]].to_string(index=False, float_format="%.3g"))
    write_csv(with_environment(table), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
