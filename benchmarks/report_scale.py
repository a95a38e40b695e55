"""Time the report and the results file of a run at scale: figures, HTML and ``.h5ad``.

The object has what a default run leaves for the report (QC metrics and flags, Leiden
clusters, a UMAP, spatial domains, two SVG tables with six maps each, gene modules), built
cheaply from a simulated tissue, so that only the report's own work is timed. The
``.h5ad`` is written with each HDF5 compression and with the default policy of
:func:`spatiome.io.write_h5ad`, and read back with anndata.

Usage::

    python benchmarks/report_scale.py --n-spots 50000 200000

Prints one table per size and writes ``results/report_scale.csv``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
from _common import RESULTS_DIR, environment_line, with_environment, write_csv

import spatiome as sm
from spatiome.workflow import PipelineConfig
from spatiome.workflow.report import write_report
from spatiome.workflow.sections import report_sections, subtitle

COMPRESSIONS = ("default", "gzip", "lzf", "none")


def run_like(n_spots: int, n_genes: int, seed: int = 0) -> tuple[anndata.AnnData, dict]:
    """A tissue with the annotations a default run gives the report."""
    data = sm.datasets.simulate_tissue(
        n_spots=n_spots, n_genes=n_genes, layout="hex", random_state=seed
    )
    sm.pp.qc_metrics(data)
    sm.pp.normalize(data)
    rng = np.random.default_rng(seed)
    data.obs["local_outlier"] = rng.random(n_spots) < 0.01
    data.obs["artifact"] = rng.random(n_spots) < 0.005
    domain = data.obs["domain"].astype("category")
    data.obs["leiden"] = domain.cat.rename_categories(
        [str(i) for i in range(len(domain.cat.categories))]
    )
    data.obs["spatial_domain"] = data.obs["leiden"].copy()
    centres = rng.normal(scale=5.0, size=(len(domain.cat.categories), 2))
    data.obsm["X_umap"] = centres[domain.cat.codes] + rng.normal(size=(n_spots, 2))
    genes = data.var_names
    tables = {}
    for method in ("moran", "sparkx"):
        order = rng.permutation(len(genes))
        tables[method] = pd.DataFrame(
            {
                "statistic": np.sort(rng.random(len(genes)))[::-1],
                "pval": np.sort(rng.random(len(genes))) ** 4,
                "qval": np.sort(rng.random(len(genes))) ** 3,
            },
            index=genes[order],
        )
    modules = pd.Series(np.nan, index=genes)
    modules.iloc[:300] = rng.integers(0, 6, size=300)
    data.var["module_stihc_module"] = modules
    module_table = pd.DataFrame({"module": modules.iloc[:300]})
    return data, {"tables": tables, "modules": {"stihc": module_table}}


def time_report(data: anndata.AnnData, parts: dict, folder: Path) -> tuple[float, int]:
    config = PipelineConfig(seed=0)
    summary = {"n_spots": data.n_obs, "n_genes": data.n_vars, "fdr": 0.05}
    provenance = {
        "parameters": {"steps": ["qc", "normalize", "reduce", "leiden", "moran", "sparkx"]},
        "seed": 0,
        "versions": {},
        "inputs": {},
        "steps": {},
    }
    start = time.perf_counter()
    sections = report_sections(
        data, parts["tables"], {}, summary, provenance, config, {"modules": parts["modules"]}
    )
    path = write_report(folder / "report.html", "benchmark", subtitle(summary), sections)
    return time.perf_counter() - start, path.stat().st_size


def time_h5ad(data: anndata.AnnData, folder: Path, compression) -> dict:
    path = folder / f"results-{compression}.h5ad"
    options = {}
    if compression != "default":
        options["compression"] = None if compression == "none" else compression
    start = time.perf_counter()
    sm.io.write_h5ad(data, path, **options)
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    back = anndata.read_h5ad(path)
    read_s = time.perf_counter() - start
    assert back.shape == data.shape
    size = path.stat().st_size
    path.unlink()
    return {"write_s": write_s, "read_s": read_s, "mb": size / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-spots", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument("--n-genes", type=int, default=2000)
    parser.add_argument(
        "--compressions", nargs="*", default=list(COMPRESSIONS), choices=COMPRESSIONS,
        help="h5ad settings to time ('default': what spatiome.io.write_h5ad chooses)",
    )  # fmt: skip
    args = parser.parse_args()
    print(environment_line())
    rows = []
    for n_spots in args.n_spots:
        data, parts = run_like(n_spots, args.n_genes)
        with tempfile.TemporaryDirectory(dir=RESULTS_DIR.parent) as name:
            folder = Path(name)
            report_s, report_bytes = time_report(data, parts, folder)
            load = os.getloadavg()[0]
            rows.append({"n_spots": n_spots, "what": "report.html", "seconds": report_s,
                         "mb": report_bytes / 1e6, "load": load})  # fmt: skip
            print(rows[-1], flush=True)
            for compression in args.compressions:
                timing = time_h5ad(data, folder, compression)
                rows.append({"n_spots": n_spots, "what": f"h5ad {compression}",
                             "seconds": timing["write_s"], "read_s": timing["read_s"],
                             "mb": timing["mb"], "load": os.getloadavg()[0]})  # fmt: skip
                print(rows[-1], flush=True)
        del data
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    write_csv(with_environment(table), RESULTS_DIR / "report_scale.csv")


if __name__ == "__main__":
    main()
