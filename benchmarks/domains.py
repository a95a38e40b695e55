"""Spatial domains: ARI / NMI against manual labels and simulated truth; time and memory.

Methods (same defaults on every dataset; nothing is tuned to a section):

- ``cluster_gmm``, ``cluster_kmeans``, ``cluster_leiden``, ``cluster_ward``:
  ``domains.cluster`` (BANKSY-style neighbourhood-augmented PCA, lambda = 0.8, 2,000 highly
  variable genes, 20 components) with each clusterer;
- ``expression_kmeans``: the same with ``neighbourhood_lambda=0`` (expression alone), the
  non-spatial baseline;
- ``bison``: ``domains.bison`` on the counts (4 gene groups, 2,000 sweeps);
- ``gnn``, ``gnn_contrastive``: ``domains.gnn`` with ``objective="reconstruction"``
  (STAGATE-style) or ``"contrastive"`` (GraphST-style), when torch is installed.

Datasets: ``dlpfc_151673`` (3,639 Visium spots, 7 manual layers; the 28 unlabelled spots
are left out of the scores), ``mouse_ob_rep11`` (262 ST spots, 5 MERINGUE layers) from
``../shared/data`` (or ``$SPATIOME_DATA``), and simulated tissues with known layered
domains (3,000 spots x 1,000 genes, 5 domains, 3 seeds). Each run is a fresh Python process
that loads the data and runs one method, so the method's peak resident memory above the
loaded data is measured alone (``peak_rss_added_gb``). ``--scale`` adds runtimes on 100,000
simulated spots x 2,000 genes, and of the cluster baselines on 1,000,000 spots x 500 genes.

Run with a Python that has spatiome::

    python benchmarks/domains.py [--seeds 5] [--methods cluster_gmm,bison] [--scale]

Prints the tables and writes ``benchmarks/results/domains.csv``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

import spatiome as sm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, environment_line, with_environment, write_csv  # noqa: E402
from _common import domain_scores as score  # noqa: E402

RESULTS = RESULTS_DIR / "domains.csv"
N_GENE_GROUPS = 4  # BISON's discriminating gene groups, the pipeline's default
SHARED = Path(
    os.environ.get("SPATIOME_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


def _normalized(adata: AnnData) -> AnnData:
    adata = adata.copy()
    sm.pp.normalize(adata)
    return adata


def _cluster(method: str, neighbourhood_lambda: float = 0.8) -> Callable:
    def run(adata: AnnData, n_domains: int, seed: int) -> np.ndarray:
        adata = _normalized(adata)
        sm.domains.cluster(
            adata, n_domains, method=method, neighbourhood_lambda=neighbourhood_lambda,
            random_state=seed,
        )  # fmt: skip
        return adata.obs["spatial_domain"].to_numpy()

    return run


def _bison(adata: AnnData, n_domains: int, seed: int) -> np.ndarray:
    adata = adata.copy()
    sm.domains.bison(adata, n_domains, N_GENE_GROUPS, random_state=seed)
    return adata.obs["bison"].to_numpy()


def _gnn(objective: str) -> Callable:
    def run(adata: AnnData, n_domains: int, seed: int) -> np.ndarray:
        from spatiome.domains.gnn import gnn

        adata = adata.copy()
        gnn(adata, n_domains, objective=objective, random_state=seed)
        return adata.obs["gnn"].to_numpy()

    return run


def available_methods() -> dict[str, Callable]:
    methods = {
        "cluster_gmm": _cluster("gmm"),
        "cluster_kmeans": _cluster("kmeans"),
        "cluster_leiden": _cluster("leiden"),
        "cluster_ward": _cluster("hierarchical"),
        "expression_kmeans": _cluster("kmeans", 0.0),
    }
    methods["bison"] = _bison
    if (
        importlib.util.find_spec("torch") is not None
        and importlib.util.find_spec("spatiome.domains.gnn") is not None
    ):
        methods["gnn"] = _gnn("reconstruction")
        methods["gnn_contrastive"] = _gnn("contrastive")
    return methods


def _rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1e6
    return float("nan")


def _load(dataset: str, data_seed: int) -> tuple[AnnData, str, int]:
    """A dataset by name: ``(adata, label column, number of domains)``."""
    if dataset in ("dlpfc_151673", "mouse_ob_rep11"):
        label = "layer_guess" if dataset == "dlpfc_151673" else "layer"
        adata = sm.datasets.load(dataset, data_dir=SHARED, download=False)
        return adata, label, int(adata.obs[label].dropna().nunique())
    n_spots, n_genes = (int(v) for v in dataset.split("x"))
    adata = sm.datasets.simulate_tissue(
        n_spots=n_spots, n_genes=n_genes, n_domains=5, domains="layers", random_state=data_seed
    )
    return adata, "domain", 5


def _one(dataset: str, data_seed: int, method: str, seed: int) -> None:
    """Child process: load, run one method, print one JSON line with the result."""
    warnings.simplefilter("ignore")
    adata, label, n_domains = _load(dataset, data_seed)
    baseline = _rss_gb()
    start = time.perf_counter()
    try:
        labels, error = available_methods()[method](adata, n_domains, seed), ""
    except Exception as exc:  # reported in the table, the benchmark goes on
        labels, error = None, f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    ari, nmi = score(adata.obs[label], labels)
    print("RESULT " + json.dumps({
        "n_spots": adata.n_obs, "n_genes": adata.n_vars, "n_domains": n_domains, "ari": ari,
        "nmi": nmi, "seconds": seconds, "peak_rss_added_gb": max(peak - baseline, 0.0),
        "error": error,
    }), flush=True)  # fmt: skip


def measure(dataset: str, data_seed: int, method: str, seed: int) -> dict:
    """Run one method on one dataset in a fresh Python process (memory measured alone)."""
    command = [sys.executable, __file__, "--one", dataset, str(data_seed), method, str(seed)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": f"exit {done.returncode}: {done.stderr.strip()[-300:]}"}


def _real_datasets() -> list[str]:
    names = []
    for name in ("dlpfc_151673", "mouse_ob_rep11"):
        if (SHARED / name).is_dir():
            names.append(name)
        else:
            print(f"skipping {name}: not in {SHARED}")
    return names


def _row(part: str, dataset: str, data_seed: int, method: str, seed: int, result: dict) -> dict:
    row = {"part": part, "dataset": dataset, "data_seed": data_seed, "method": method,
           "seed": seed, **result, "load_average_1min": os.getloadavg()[0]}  # fmt: skip
    nan = float("nan")
    ari, seconds = row.get("ari", nan), row.get("seconds", nan)
    memory, error = row.get("peak_rss_added_gb", nan), row.get("error", "")
    print(f"  {dataset:>16} {method:>18} seed {seed}: ARI {ari:.3f} {seconds:7.1f} s "
          f"{memory:5.2f} GB {error}")  # fmt: skip
    return row


def accuracy(methods: list[str], sim_seeds: int, method_seeds: int) -> pd.DataFrame:
    rows = []
    for dataset in _real_datasets():
        for method in methods:
            for seed in range(method_seeds):
                rows.append(_row("accuracy", dataset, -1, method, seed,
                                 measure(dataset, -1, method, seed)))  # fmt: skip
    for data_seed in range(sim_seeds):
        for method in methods:
            rows.append(_row("accuracy", "3000x1000", data_seed, method, 0,
                             measure("3000x1000", data_seed, method, 0)))  # fmt: skip
    return pd.DataFrame(rows)


def scale(methods: list[str]) -> pd.DataFrame:
    rows = []
    for method in methods:
        if method.startswith("gnn"):
            # 500 full-batch epochs take about half an hour here; benchmarks/gnn.py times
            # 30 epochs at this size and extrapolates.
            print("  gnn at 100,000 spots: see benchmarks/gnn.py")
            continue
        rows.append(
            _row("scale", "100000x2000", 0, method, 0, measure("100000x2000", 0, method, 0))
        )
    for method in methods:
        if method.startswith("cluster_") and method != "cluster_leiden":
            rows.append(_row("scale", "1000000x500", 0, method, 0,
                             measure("1000000x500", 0, method, 0)))  # fmt: skip
    return pd.DataFrame(rows)


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--one":
        _one(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="method seeds on real data")
    parser.add_argument("--sim-seeds", type=int, default=3)
    parser.add_argument("--methods", default=None, help="comma-separated subset")
    parser.add_argument("--scale", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    methods = list(available_methods())
    if args.methods:
        wanted = args.methods.split(",")
        unknown = set(wanted) - set(methods)
        if unknown:
            raise SystemExit(f"unknown or unavailable methods {sorted(unknown)}; have {methods}")
        methods = wanted
    print(environment_line())
    tables = [accuracy(methods, args.sim_seeds, args.seeds)]
    if args.scale:
        tables.append(scale(methods))
    table = pd.concat(tables, ignore_index=True)
    summary = (
        table.groupby(["part", "dataset", "method"])
        .agg(ari_mean=("ari", "mean"), ari_min=("ari", "min"), ari_max=("ari", "max"),
             nmi_mean=("nmi", "mean"), seconds=("seconds", "median"),
             peak_gb=("peak_rss_added_gb", "max"), runs=("ari", "size"))
    )  # fmt: skip
    print(summary.round(3).to_string())
    write_csv(with_environment(table), args.out)


if __name__ == "__main__":
    main()
