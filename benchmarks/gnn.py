"""Graph neural network domains (domains.gnn): accuracy on real and simulated tissues, speed.

Accuracy: ``domains.gnn(adata, n_domains)`` with its defaults for each objective
(``--objectives``, default both) on

- the LIBD human DLPFC Visium section 151673 (3,639 spots; the shared copy holds raw counts
  for a 7,319-gene subset), 7 domains, scored against the manual ``layer_guess`` annotation
  (Layer1-6, WM), spots without a label left out;
- the mouse olfactory bulb (ST replicate 11, 262 spots), 5 domains, MERINGUE's layers;
- simulated tissues with known layered domains (``datasets.simulate_tissue``, 3,000 spots x
  1,000 genes, 5 domains; one tissue per data seed), as in ``domains.py``;

for several seeds on the real data; adjusted Rand index (ARI). Each run is also scored
after majority-vote refinement over the 50 nearest spots (``ari_refined50``: the
``refine_neighbors=50`` option, applied to the same labels). Published means over the 12
DLPFC sections, for scale: STAGATE 0.503, GraphST 0.557 (their own gene sets, on GPU).

Speed: one call with the defaults (training time and total time, peak resident memory of
the process) on ``datasets.simulate_tissue`` tissues of growing size (hex layout,
``--speed-genes`` genes, default 2,000, 7 layered domains); the largest size can be
trained for fewer epochs and the time extrapolated linearly in the epochs (``epochs_run``
vs ``epochs_default``). Other jobs may share this machine: the load average is recorded
with each timing.

Mini-batches against full batch (``--minibatch-sections``): on each DLPFC section, for
each seed, the default reconstruction call trained full batch and by forced mini-batches of
``--minibatch-batch-size`` spots (default 1,024, so that a 3,600-spot section makes 4
batches); the per-seed ARIs, the means and the paired mean difference (with its standard
error over seeds) are printed, also from saved rows with ``--summarize CSV``. Runs can be
split over processes with ``--seed-list`` and ``--minibatch-modes``.

Run with a Python that has spatiome[deep]::

    python benchmarks/gnn.py [--seeds 5] [--sim-seeds 3] [--objectives reconstruction]
        [--sizes 3639 20000 100000] [--threads 1]
    python benchmarks/gnn.py --skip-accuracy --sizes --minibatch-sections dlpfc_151673 \
        dlpfc_151674 [--seed-list 0 1 2] [--minibatch-modes minibatch full]
    python benchmarks/gnn.py --summarize benchmarks/results/gnn.csv

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
from spatiome._core.progress import listen
from spatiome.domains.gnn import gnn, refine_labels

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


def _dataset(name: str, data_seed: int):
    """``(adata, label column, number of domains)`` of a named dataset."""
    if name == "simulated":
        adata = sm.datasets.simulate_tissue(
            n_spots=3000, n_genes=1000, n_domains=5, domains="layers", random_state=data_seed
        )
        return adata, "domain", 5
    adata = sm.datasets.load(name, data_dir=DATA_DIR, download=False)
    label = "layer_guess" if name.startswith("dlpfc") else "layer"
    return adata, label, int(adata.obs[label].dropna().nunique())


def _ari(truth: pd.Series, labels) -> float:
    keep = truth.notna().to_numpy()
    return float(
        adjusted_rand_score(
            truth[keep].astype(str).to_numpy(), np.asarray(labels)[keep].astype(str)
        )
    )


def accuracy(objective: str, seeds: int, sim_seeds: int, threads: int) -> pd.DataFrame:
    runs = [("dlpfc_151673", -1, seed) for seed in range(seeds)]
    runs += [("mouse_ob_rep11", -1, seed) for seed in range(seeds)]
    runs += [("simulated", data_seed, 0) for data_seed in range(sim_seeds)]
    rows, loaded = [], {}
    for name, data_seed, seed in runs:
        if (name, data_seed) not in loaded:
            loaded = {(name, data_seed): _dataset(name, data_seed)}
        adata, label, n_domains = loaded[(name, data_seed)]
        start = time.perf_counter()
        out = gnn(adata, n_domains, objective=objective, random_state=seed, n_jobs=threads,
                  copy=True)  # fmt: skip
        seconds = time.perf_counter() - start
        record = out.uns["spatiome"]["gnn"]
        labels = out.obs["gnn"].cat.codes.to_numpy()
        coordinates = np.asarray(adata.obsm["spatial"], dtype=np.float64)
        score = _ari(adata.obs[label], labels)
        refined = _ari(adata.obs[label], refine_labels(coordinates, labels, 50))
        rows.append(
            {
                "benchmark": f"{name}_ari",
                "objective": objective,
                "n_spots": adata.n_obs,
                "n_genes": int(record["n_top_genes"]),
                "data_seed": data_seed,
                "seed": seed,
                "ari": score,
                "ari_refined50": refined,
                "train_seconds": float(record["train_seconds"]),
                "total_seconds": float(seconds),
                "epochs_run": int(record["n_epochs"]),
                "threads": threads,
                "load_average": os.getloadavg()[0],
            }
        )
        print(f"  {objective} {name} data {data_seed} seed {seed}: ARI {score:.3f} "
              f"(refined {refined:.3f}) in {seconds:.1f} s", flush=True)  # fmt: skip
    return pd.DataFrame(rows)


def minibatch_accuracy(
    sections: list[str],
    seeds: list[int],
    batch_size: int,
    threads: int,
    modes: tuple[str, ...] = ("minibatch", "full"),
) -> pd.DataFrame:
    """Full batch against mini-batches forced on DLPFC-size sections, same seeds."""
    rows = []
    for name in sections:
        adata, label, n_domains = _dataset(name, -1)
        for seed in seeds:
            for minibatch in [mode == "minibatch" for mode in modes]:
                start = time.perf_counter()
                out = gnn(adata, n_domains, random_state=seed, n_jobs=threads, copy=True,
                          minibatch=minibatch, batch_size=batch_size)  # fmt: skip
                seconds = time.perf_counter() - start
                record = out.uns["spatiome"]["gnn"]
                score = _ari(adata.obs[label], out.obs["gnn"].cat.codes.to_numpy())
                rows.append(
                    {
                        "benchmark": f"{name}_{'minibatch' if minibatch else 'full'}_ari",
                        "objective": "reconstruction",
                        "n_spots": adata.n_obs,
                        "seed": seed,
                        "ari": score,
                        "batch_size": batch_size if minibatch else -1,
                        "n_batches": int(record["n_batches"]),
                        "train_seconds": float(record["train_seconds"]),
                        "total_seconds": float(seconds),
                        "epochs_run": int(record["n_epochs"]),
                        "threads": threads,
                        "load_average": os.getloadavg()[0],
                    }
                )
                print(f"  {name} seed {seed} {'mini-batch' if minibatch else 'full batch'}: "
                      f"ARI {score:.3f}, {record['n_epochs']} epochs x {record['n_batches']} "
                      f"batches in {seconds:.1f} s", flush=True)  # fmt: skip
    return pd.DataFrame(rows)


def minibatch_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per-seed ARI of each training mode on each section, their means and the difference.

    Rows are ``{section}_minibatch_ari`` and ``{section}_full_ari``; where a seed was run
    more than once, its last row counts.
    """
    rows = []
    minibatch = table[table["benchmark"].str.endswith("_minibatch_ari")]
    for benchmark, runs in minibatch.groupby("benchmark", sort=False):
        section = benchmark.removesuffix("_minibatch_ari")
        full = table[table["benchmark"] == f"{section}_full_ari"]
        full_by_seed = full.groupby("seed")["ari"].last().to_dict()
        for seed, ari in runs.groupby("seed")["ari"].last().items():
            rows.append({"section": section, "seed": int(seed), "minibatch": ari,
                         "full": full_by_seed.get(seed, np.nan)})  # fmt: skip
    per_seed = pd.DataFrame(rows, columns=["section", "seed", "minibatch", "full"])
    if per_seed.empty:
        return per_seed
    per_seed["difference"] = per_seed["minibatch"] - per_seed["full"]
    print(per_seed.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    means = per_seed.dropna().groupby("section")[["minibatch", "full", "difference"]].mean()
    grouped = per_seed.dropna().groupby("section")
    means["n_seeds"] = grouped["seed"].count()
    # Paired over seeds: the standard error of the mean difference.
    means["difference_se"] = grouped["difference"].std(ddof=1) / np.sqrt(means["n_seeds"])
    print("Means over seeds (difference = mini-batch - full batch, paired by seed):")
    print(means.to_string(float_format=lambda v: f"{v:.3f}"))
    return per_seed


def speed(
    sizes: list[int], threads: int, epochs_large: int, n_genes: int, modes: list[str]
) -> pd.DataFrame:
    """Time one call per size and training mode; large sizes run ``epochs_large`` epochs
    and the training time is extrapolated linearly to the default number of epochs."""
    module = sys.modules["spatiome.domains.gnn"]
    rows = []
    for n_spots in sizes:
        adata = sm.datasets.simulate_tissue(
            n_spots=n_spots, n_genes=n_genes, n_domains=7, random_state=0
        )
        for mode in modes:
            minibatch = {"auto": None, "full": False, "minibatch": True}[mode]
            chosen = n_spots > module.MINIBATCH_MIN_SPOTS if minibatch is None else minibatch
            n_parts = -(-n_spots // 4096) if chosen else 1
            default_epochs = module._default_epochs(DEFAULT_EPOCHS, n_parts, chosen)
            epochs = default_epochs if n_spots <= 5_000 else min(epochs_large, default_epochs)
            stamps: list[float] = []
            load_start = os.getloadavg()[0]
            start, cpu_start = time.perf_counter(), time.process_time()
            with listen(lambda *_, stamps=stamps: stamps.append(time.perf_counter())):
                out = gnn(adata, 7, n_epochs=epochs, n_jobs=threads, minibatch=minibatch,
                          copy=True)  # fmt: skip
            # CPU seconds of all this process's threads: what the call costs on an idle
            # machine when the other jobs sharing it stretch the wall time.
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
            record = out.uns["spatiome"]["gnn"]
            train = float(record["train_seconds"])
            score = adjusted_rand_score(adata.obs["domain"], out.obs["gnn"])
            # stamps: training start, then each epoch's end. The first epoch carries the
            # set-up (subgraphs); the later ones give the time per epoch.
            if len(stamps) >= 3:
                epoch = (stamps[-1] - stamps[1]) / (len(stamps) - 2)
                extrapolated = train + epoch * (default_epochs - epochs)
            else:
                epoch = train / max(epochs, 1)
                extrapolated = train * default_epochs / max(epochs, 1)
            rows.append(
                {
                    "benchmark": f"simulated_speed_{'minibatch' if chosen else 'full'}",
                    "n_spots": n_spots,
                    "n_genes": int(record["n_top_genes"]),
                    "seed": 0,
                    "ari": float(score),
                    "n_batches": int(record["n_batches"]),
                    "train_seconds": train,
                    "total_seconds": float(seconds),
                    "cpu_seconds": float(cpu_seconds),
                    "seconds_per_epoch": epoch,
                    "train_seconds_default_epochs": extrapolated,
                    "total_seconds_default_epochs": float(seconds) - train + extrapolated,
                    "epochs_run": epochs,
                    "epochs_default": default_epochs,
                    "peak_rss_gb": peak_rss_gb(),
                    "threads": threads,
                    "load_average_start": load_start,
                    "load_average": os.getloadavg()[0],
                }
            )
            print(
                f"  {n_spots} spots, {'mini-batch' if chosen else 'full batch'}: {epochs} of "
                f"{default_epochs} epochs trained in {train:.1f} s ({epoch:.1f} s per later "
                f"epoch; total {seconds:.1f} s, "
                f"extrapolated {float(seconds) - train + extrapolated:.0f} s, ARI {score:.3f}), "
                f"peak RSS {peak_rss_gb():.2f} GB, {cpu_seconds:.0f} CPU s, "
                f"load {load_start:.1f} -> {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            del out
        del adata
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sim-seeds", type=int, default=3)
    parser.add_argument("--objectives", default="reconstruction,contrastive")
    parser.add_argument("--sizes", type=int, nargs="*", default=[3639, 100_000])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs-large", type=int, default=30)
    parser.add_argument("--speed-genes", type=int, default=2000)
    parser.add_argument(
        "--speed-modes",
        nargs="*",
        default=["auto"],
        choices=["auto", "full", "minibatch"],
        help="training modes timed at each size (auto: mini-batch above 10,000 spots)",
    )
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument(
        "--minibatch-sections",
        nargs="*",
        default=[],
        help="DLPFC sections (e.g. dlpfc_151673 dlpfc_151674) on which to compare full-batch "
        "with forced mini-batch training (--minibatch-batch-size spots per part)",
    )
    parser.add_argument("--minibatch-batch-size", type=int, default=1024)
    parser.add_argument(
        "--minibatch-modes",
        nargs="*",
        default=["minibatch", "full"],
        choices=["minibatch", "full"],
        help="training modes run on --minibatch-sections (both by default)",
    )
    parser.add_argument(
        "--seed-list",
        type=int,
        nargs="*",
        default=None,
        help="seeds of the mini-batch comparison (default: 0 .. --seeds - 1)",
    )
    parser.add_argument(
        "--min-dlpfc-ari",
        type=float,
        default=0.56,
        help="exit with status 1 when the default objective's mean ARI on DLPFC 151673 is "
        "below this (GraphST's published mean over the 12 sections is 0.557)",
    )
    parser.add_argument(
        "--summarize",
        type=Path,
        default=None,
        help="only print the full-batch vs mini-batch summary of the rows in this CSV",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.summarize is not None:
        minibatch_summary(pd.read_csv(args.summarize))
        return
    print(environment_line())
    print(f"torch {package_version('torch')}, {args.threads} thread(s)")
    tables = []
    if not args.skip_accuracy:
        for objective in args.objectives.split(","):
            print(f"Accuracy, objective={objective!r}, defaults:")
            table = accuracy(objective, args.seeds, args.sim_seeds, args.threads)
            summary = table.groupby("benchmark", sort=False)[["ari", "ari_refined50"]].agg(
                ["mean", "min", "max"]
            )
            print(summary.round(3).to_string())
            tables.append(table)
    if args.minibatch_sections:
        print(f"Full batch vs mini-batches of {args.minibatch_batch_size} spots:")
        tables.append(
            minibatch_accuracy(
                args.minibatch_sections,
                list(range(args.seeds)) if args.seed_list is None else args.seed_list,
                args.minibatch_batch_size,
                args.threads,
                tuple(args.minibatch_modes),
            )
        )
    if args.sizes:
        print(f"Simulated tissues, {args.speed_genes} genes, 7 domains, defaults:")
        tables.append(
            speed(args.sizes, args.threads, args.epochs_large, args.speed_genes, args.speed_modes)
        )
    table = pd.concat(tables, ignore_index=True)
    table["torch"] = package_version("torch")
    columns = ["benchmark", "objective", "n_spots", "data_seed", "seed", "ari", "ari_refined50"]
    columns += ["train_seconds", "total_seconds"]
    columns = [c for c in columns if c in table]
    columns += [c for c in ("train_seconds_default_epochs", "epochs_run", "peak_rss_gb")
                if c in table]  # fmt: skip
    print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.minibatch_sections:
        minibatch_summary(table)
    write_csv(with_environment(table), args.out)
    dlpfc = table[
        (table["benchmark"] == "dlpfc_151673_ari") & (table.get("objective") == "reconstruction")
    ]
    if len(dlpfc):
        mean = float(dlpfc["ari"].mean())
        verdict = "meets" if mean >= args.min_dlpfc_ari else "MISSES"
        print(f"DLPFC 151673 mean ARI {mean:.3f} {verdict} the target {args.min_dlpfc_ari}")
        if mean < args.min_dlpfc_ari:
            sys.exit(1)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
