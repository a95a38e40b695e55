"""Graph attention autoencoder domains (domains.gnn): accuracy on DLPFC 151673, and speed.

Accuracy: ``domains.gnn(adata, 7)`` with its defaults on the LIBD human DLPFC Visium section
151673 (3,639 spots; the shared copy holds raw counts for a 7,319-gene subset), for several
seeds; adjusted Rand index against the manual ``layer_guess`` annotation (Layer1-6, WM),
spots without a label left out. Published means over the 12 DLPFC sections, for scale:
STAGATE 0.503, GraphST 0.557 (their own gene sets, 1,000 epochs on GPU).

Speed: one call with the defaults (training time and total time, peak resident memory of
the process) on ``datasets.simulate_tissue`` tissues of growing size (hex layout, 300
genes, 7 layered domains); the largest size can be trained for fewer epochs and the time
extrapolated linearly in the epochs (``epochs_run`` vs ``epochs_default``). Other jobs may
share this machine: the load average is recorded with each timing.

Run with a Python that has spatiome[deep]::

    python benchmarks/gnn.py [--seeds 5] [--sizes 3639 20000 100000] [--threads 1]

Prints the tables and writes ``benchmarks/results/gnn.csv``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

import spatiome as sm
from spatiome.domains.gnn import gnn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS_DIR,
    environment_line,
    package_version,
    with_environment,
    write_csv,
)

RESULTS = RESULTS_DIR / "gnn.csv"
DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_EPOCHS = 500


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (GB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def dlpfc_accuracy(seeds: int, threads: int) -> pd.DataFrame:
    adata = sm.datasets.load("dlpfc_151673", data_dir=DATA_DIR)
    labelled = adata.obs["layer_guess"].notna().to_numpy()
    truth = adata.obs["layer_guess"].astype(str).to_numpy()[labelled]
    rows = []
    for seed in range(seeds):
        start = time.perf_counter()
        out = gnn(adata, 7, random_state=seed, n_jobs=threads, copy=True)
        seconds = time.perf_counter() - start
        record = out.uns["spatiome"]["gnn"]
        score = adjusted_rand_score(truth, out.obs["gnn"].to_numpy()[labelled])
        rows.append(
            {
                "benchmark": "dlpfc_151673_ari",
                "n_spots": adata.n_obs,
                "n_genes": int(record["n_top_genes"]),
                "seed": seed,
                "ari": float(score),
                "train_seconds": float(record["train_seconds"]),
                "total_seconds": float(seconds),
                "epochs_run": int(record["n_epochs"]),
                "epochs_default": DEFAULT_EPOCHS,
                "threads": threads,
                "load_average": os.getloadavg()[0],
            }
        )
        print(f"  seed {seed}: ARI {score:.3f} in {seconds:.1f} s", flush=True)
    return pd.DataFrame(rows)


def speed(sizes: list[int], threads: int, epochs_large: int) -> pd.DataFrame:
    rows = []
    for n_spots in sizes:
        adata = sm.datasets.simulate_tissue(
            n_spots=n_spots, n_genes=300, n_domains=7, random_state=0
        )
        epochs = DEFAULT_EPOCHS if n_spots <= 5_000 else epochs_large
        start = time.perf_counter()
        gnn(adata, 7, n_epochs=epochs, n_jobs=threads)
        seconds = time.perf_counter() - start
        record = adata.uns["spatiome"]["gnn"]
        train = float(record["train_seconds"])
        score = adjusted_rand_score(adata.obs["domain"], adata.obs["gnn"])
        rows.append(
            {
                "benchmark": "simulated_speed",
                "n_spots": n_spots,
                "n_genes": 300,
                "seed": 0,
                "ari": float(score),
                "train_seconds": train,
                "total_seconds": float(seconds),
                "train_seconds_default_epochs": train * DEFAULT_EPOCHS / max(epochs, 1),
                "epochs_run": epochs,
                "epochs_default": DEFAULT_EPOCHS,
                "peak_rss_gb": peak_rss_gb(),
                "threads": threads,
                "load_average": os.getloadavg()[0],
            }
        )
        print(
            f"  {n_spots} spots: {epochs} epochs trained in {train:.1f} s "
            f"(total {seconds:.1f} s, ARI {score:.3f}), peak RSS {peak_rss_gb():.2f} GB",
            flush=True,
        )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[3639, 100_000])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs-large", type=int, default=30)
    parser.add_argument("--skip-dlpfc", action="store_true")
    args = parser.parse_args()
    print(environment_line())
    print(f"torch {package_version('torch')}, {args.threads} thread(s)")
    tables = []
    if not args.skip_dlpfc:
        print("DLPFC 151673, 7 domains, defaults:")
        accuracy = dlpfc_accuracy(args.seeds, args.threads)
        summary = accuracy["ari"].agg(["mean", "min", "max"])
        print(
            f"  ARI mean {summary['mean']:.3f}, min {summary['min']:.3f}, "
            f"max {summary['max']:.3f} over {len(accuracy)} seeds"
        )
        tables.append(accuracy)
    print("Simulated tissues, 300 genes, 7 domains, defaults:")
    timing = speed(args.sizes, args.threads, args.epochs_large)
    tables.append(timing)
    table = pd.concat(tables, ignore_index=True)
    table["torch"] = package_version("torch")
    columns = ["benchmark", "n_spots", "seed", "ari", "train_seconds", "total_seconds"]
    columns += [c for c in ("train_seconds_default_epochs", "epochs_run", "peak_rss_gb")
                if c in table]  # fmt: skip
    print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    write_csv(with_environment(table), RESULTS)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
