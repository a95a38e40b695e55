"""The pipeline's SVG steps in this process and on a Dask cluster: time and identity.

For each size, simulated Visium-like tissue (2,000 genes, hex layout) is normalized and
given its grid graph; then the pipeline's default SVG tests (Moran's I and SPARK-X, as
``workflow.run_svg_method`` runs them) run once locally and once through a client of an
in-process ``LocalCluster`` (2 workers x 1 thread), connected as ``spatiome run
--dask-scheduler`` connects. The tables must be identical (exact comparison). An
in-process cluster measures the cost of scheduling and gathering, not of sending the
matrix over a network.

    python benchmarks/dask_svg.py --sizes 50000 200000
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import pandas as pd
from _common import RESULTS_DIR, environment_line, with_environment, write_csv

import spatiome as sm
from spatiome.workflow import PipelineConfig, run_svg_method
from spatiome.workflow.dask_cluster import connect_scheduler

METHODS = ("moran", "sparkx")


def prepared_tissue(n_spots: int):
    tissue = sm.datasets.simulate_tissue(
        n_spots=n_spots, n_genes=2000, layout="hex", random_state=0
    )
    sm.pp.normalize(tissue)
    sm.graph.spatial_neighbors(tissue, method="grid")
    return tissue


def time_sizes(sizes: list[int]) -> pd.DataFrame:
    import distributed

    rows = []
    config = PipelineConfig()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        )
    tic = time.perf_counter()
    client = connect_scheduler(cluster.scheduler_address)
    connect_s = time.perf_counter() - tic
    try:
        for n_spots in sizes:
            tissue = prepared_tissue(n_spots)
            for method in METHODS:
                timings = {}
                tables = {}
                for where, used in (("local", None), ("dask", client)):
                    load = os.getloadavg()[0]
                    tic = time.perf_counter()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        tables[where] = run_svg_method(tissue, method, config, client=used)
                    timings[where] = (time.perf_counter() - tic, load)
                pd.testing.assert_frame_equal(tables["local"], tables["dask"], check_exact=True)
                rows.append(
                    {
                        "n_spots": n_spots,
                        "method": method,
                        "local_s": round(timings["local"][0], 2),
                        "dask_s": round(timings["dask"][0], 2),
                        "ratio": round(timings["dask"][0] / timings["local"][0], 2),
                        "identical": True,
                        "load_local": round(timings["local"][1], 1),
                        "load_dask": round(timings["dask"][1], 1),
                        "connect_s": round(connect_s, 3),
                    }
                )
                print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1))
            del tissue
    finally:
        client.close()
        cluster.close()
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000])
    args = parser.parse_args()
    print(environment_line())
    table = time_sizes(args.sizes)
    print(table.to_string(index=False))
    path = write_csv(with_environment(table), RESULTS_DIR / "dask_svg.csv")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
