"""Time of the pipeline's two domain steps at scale: ``choose_n_domains`` then ``cluster``.

Each size runs in a fresh Python process: a simulated Visium-like tissue
(``datasets.simulate_tissue(n_spots=N, n_genes=G, layout="hex", random_state=0)``),
normalized with ``pp.normalize``, then ``domains.choose_n_domains`` and ``domains.cluster``
with their defaults, as ``spatiome run`` calls them. Reports the seconds of each step, the
time of the features inside them, the peak resident memory of the process (the
simulation's own peak included, and the peak once the data were ready), the ARI of the
domains against the simulated truth and the load average, since the figures are only
comparable between runs on an equally busy machine.

Run with a Python that has spatiome::

    python benchmarks/domains_scale.py [--sizes 50000,200000] [--n-genes 2000]

Prints the table and writes ``benchmarks/results/domains_scale.csv``. Hold at most one
large tissue at a time: 200,000 spots x 2,000 genes take about 4 GB before the steps.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, environment_line, with_environment, write_csv  # noqa: E402

RESULTS = RESULTS_DIR / "domains_scale.csv"


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def one(n_spots: int, n_genes: int) -> dict:
    """Both steps on one simulated tissue, in this process."""
    from sklearn.metrics import adjusted_rand_score

    import spatiome as sm

    # The feature step is timed inside both public calls.
    cluster_module = importlib.import_module("spatiome.domains.cluster")
    n_domains_module = importlib.import_module("spatiome.domains.n_domains")
    feature_seconds: list[float] = []
    compute = cluster_module._domain_features

    def timed_features(*args, **kwargs):
        start = time.perf_counter()
        result = compute(*args, **kwargs)
        feature_seconds.append(time.perf_counter() - start)
        return result

    cluster_module._domain_features = timed_features
    n_domains_module._domain_features = timed_features
    adata = sm.datasets.simulate_tissue(
        n_spots=n_spots, n_genes=n_genes, layout="hex", random_state=0
    )
    sm.pp.normalize(adata)
    loaded_gb = _peak_rss_gb()
    start = time.perf_counter()
    chosen = sm.domains.choose_n_domains(adata, random_state=0)
    choose_seconds = time.perf_counter() - start
    start = time.perf_counter()
    sm.domains.cluster(adata, chosen, random_state=0)
    cluster_seconds = time.perf_counter() - start
    record = adata.uns["spatiome"]["spatial_domain"]["clusterer"]
    return {
        "n_spots": n_spots,
        "n_genes": n_genes,
        "n_domains": int(chosen),
        "choose_n_domains_s": round(choose_seconds, 1),
        "cluster_s": round(cluster_seconds, 1),
        "both_s": round(choose_seconds + cluster_seconds, 1),
        "features_s": " + ".join(f"{s:.1f}" for s in feature_seconds),
        "mixture_fit_spots": int(record.get("fit_spots", n_spots)),
        "ari_truth": round(
            float(adjusted_rand_score(adata.obs["domain"], adata.obs["spatial_domain"])), 3
        ),
        "peak_rss_gb": round(_peak_rss_gb(), 2),
        "peak_rss_after_data_gb": round(loaded_gb, 2),
        "load_average_1min": round(os.getloadavg()[0], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50000,200000", help="comma-separated spot counts")
    parser.add_argument("--n-genes", type=int, default=2000)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.n_genes)))
        return
    rows = []
    for size in (int(value) for value in args.sizes.split(",")):
        command = [sys.executable, __file__, "--one", str(size), "--n-genes", str(args.n_genes)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    print(environment_line())
    print(table.to_string(index=False))
    write_csv(with_environment(table), args.out)


if __name__ == "__main__":
    main()
