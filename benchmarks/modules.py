"""Gene co-expression modules (modules.stihc, modules.aeh): accuracy on simulations, and speed.

Tissues: ``spatiome.modules._simulate.coexpression_modules``, noisy negative-binomial copies
(``log1p`` values, raw counts in ``layers['counts']``) of four template fields (a cortical
band, a blob, a stripe and hot spots, after the stIHC paper's Calb2/Ttr/Gpr88/Cck), in the
paper's three designs: ``equal`` (2,696 spots, 25 copies each, 100 genes), ``imbalanced``
(2,696 spots, modules of 25/16/6/2, 49 genes) and ``sparse`` (the imbalanced genes on a
random subset of 260 spots). A fourth design, ``patterns``
(``spatiome.modules._simulate.pattern_modules``), is closer to real data: 8 modules of 2-12
genes sharing a random gradient, hot spot, stripe or wave, 10 genes with a pattern of their
own (in no module), and gene levels spread log-normally (sd 1).

Reported:

- stIHC with its defaults: ARI of the modules against the templates per design and seed
  (genes without a module count as clusters of their own);
- stIHC as the pipeline runs it on the built-in demo tissue
  (``simulate_tissue(n_spots=3000, n_genes=300, random_state=0)``) and two other seeds and
  sizes: normalize, Moran's I on the grid graph, the significant genes. Each spatial gene
  of these tissues has its own random pattern, so the pattern kinds are no modules
  (clustering the noise-free patterns perfectly scores ARI 0.07-0.16 against the kinds).
  Reported: modules, unassigned genes, ARI against the kinds, ARI against the
  average-linkage clusters of the noise-free patterns cut at Spearman 0.7, and the share
  of gene pairs put in one module whose noise-free patterns correlate above 0.5;
- AEH (``C = 4``, ``length_scale = 300`` um, counts through SpatialDE's preprocessing) on
  the equal design: ARI of the gene patterns, the correlation of each template with its
  best-matching pattern mean, exact against approximate (Nystrom) mode;
- wall time at 3,639 spots (100 genes) and at 100,000 spots. At 100,000 spots stIHC runs on
  20 genes with 10 trace probes: its time is dominated by SuperLU's multi-right-hand-side
  solves (one per grid value), which grow linearly with the genes. AEH runs in approximate
  mode there (1,000 inducing points) on 100 genes. Compiled kernels are warmed up first.
  Other jobs may share this machine: the load average is recorded with each timing.

Run with a Python that has spatiome::

    python benchmarks/modules.py [--seeds 3] [--timing-spots 100000]

Prints the tables and writes ``benchmarks/results/modules.csv``.

Scaling mode (``--scaling 50000 200000 500000``): stIHC with its defaults (spots pooled
into at most 10,000 mesh nodes above that size) on a tissue built cheaply, gene by gene:
spots on a jittered square lattice filling a disc, 300 genes of which 240 follow one of 12
shared random fields (sums of Gaussian bumps), ``log1p`` of Poisson counts as a sparse
float32 matrix (about half non-zero, like the pipeline's tissues). Reported per size: wall
and CPU time (on a busy machine the CPU time is the better measure of the cost), the peak
memory the call allocates (numpy and Python allocations, traced by ``tracemalloc``), the
load average, and the ARI of the modules against the shared fields.
Writes ``benchmarks/results/modules_scaling.csv``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import tracemalloc
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score

import spatiome as sm
from spatiome.modules._simulate import coexpression_modules, pattern_modules
from spatiome.modules.aeh import aeh
from spatiome.modules.stihc import stihc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS_DIR,
    environment_line,
    package_version,
    with_environment,
    write_csv,
)

RESULTS = RESULTS_DIR / "modules.csv"
SCALING_RESULTS = RESULTS_DIR / "modules_scaling.csv"
DESIGNS = ("equal", "imbalanced", "sparse", "patterns")
LENGTH_SCALE = 300.0
#: Demo tissues: (seed, spots, genes); the first is the built-in demo.
DEMO_TISSUES = ((0, 3000, 300), (1, 2000, 400), (2, 4000, 250))


def ari_with_loners(truth: np.ndarray, labels: np.ndarray) -> float:
    """ARI where every gene in no module (label < 0, or 0 for 1-based labels) stands alone."""
    truth, labels = np.asarray(truth), np.asarray(labels)
    own = -1000 - np.arange(truth.size)
    return adjusted_rand_score(np.where(truth >= 0, truth, own), np.where(labels > 0, labels, own))


def stihc_accuracy(seeds: int) -> list[dict]:
    rows = []
    for design in DESIGNS:
        for seed in range(seeds):
            if design == "patterns":
                adata = pattern_modules(random_state=seed)
            else:
                adata = coexpression_modules(design, random_state=seed)
            start = time.perf_counter()
            table = stihc(adata)
            seconds = time.perf_counter() - start
            params = adata.uns["spatiome"]["stihc"]
            rows.append(
                {
                    "kind": "accuracy",
                    "method": "stihc",
                    "design": design,
                    "seed": seed,
                    "n_spots": adata.n_obs,
                    "n_genes": adata.n_vars,
                    "ari": ari_with_loners(adata.var["module"], table["module"]),
                    "n_modules": params["n_modules"],
                    "n_unassigned": params["n_unassigned"],
                    "alpha": params["alpha"],
                    "penalty": params["penalty"],
                    "seconds": seconds,
                }
            )
            print(f"  stihc {design} seed {seed}: ARI {rows[-1]['ari']:.3f}", flush=True)
    return rows


def demo_modules() -> list[dict]:
    """stIHC as the pipeline runs it, on simulated tissues whose genes have own patterns."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform
    from scipy.stats import spearmanr

    from spatiome.datasets.simulate import _pattern_values

    rows = []
    for seed, n_spots, n_genes in DEMO_TISSUES:
        adata = sm.datasets.simulate_tissue(n_spots=n_spots, n_genes=n_genes, random_state=seed)
        sm.pp.normalize(adata)
        sm.graph.spatial_neighbors(adata, method="grid")
        moran = sm.svg.moran(adata, random_state=0, copy=True)
        moran = moran.sort_values(["qval", "log10_pval"], kind="stable")
        genes = list(moran.index[moran["qval"] < 0.05][:300])
        start = time.perf_counter()
        table = stihc(adata, genes=genes, random_state=0, key_added="module_stihc")
        seconds = time.perf_counter() - start
        labels = table["module"].to_numpy()
        kinds = adata.var.loc[genes, "pattern"].to_numpy()
        fields = np.column_stack([_pattern_values(adata, g) for g in genes])
        rho = np.nan_to_num(spearmanr(fields).statistic, nan=0.0)
        np.fill_diagonal(rho, 1.0)
        tree = linkage(squareform(np.clip(1.0 - rho, 0.0, None), checks=False), "average")
        truth = fcluster(tree, 0.3, criterion="distance")
        together = np.triu((labels[:, None] == labels[None, :]) & (labels[:, None] > 0), k=1)
        own = -1000 - np.arange(labels.size)
        params = adata.uns["spatiome"]["module_stihc"]
        rows.append(
            {
                "kind": "demo",
                "method": "stihc",
                "design": f"simulate_tissue({n_spots}, {n_genes}, seed {seed})",
                "seed": seed,
                "n_spots": n_spots,
                "n_genes": len(genes),
                "n_modules": params["n_modules"],
                "n_unassigned": params["n_unassigned"],
                "alpha": params["alpha"],
                "ari_pattern_kind": adjusted_rand_score(kinds, np.where(labels > 0, labels, own)),
                "ari_field_clusters": ari_with_loners(truth - 1, labels),
                "pair_precision": float((rho[together] > 0.5).mean()) if together.any() else np.nan,
                "seconds": seconds,
            }
        )
        row = rows[-1]
        print(f"  stihc demo {row['design']}: {row['n_modules']} modules, "
              f"{row['n_unassigned']} unassigned of {len(genes)}, ARI kinds "
              f"{row['ari_pattern_kind']:.3f}, ARI fields {row['ari_field_clusters']:.3f}, "
              f"pair precision {row['pair_precision']:.2f}", flush=True)  # fmt: skip
    return rows


def matched_correlation(fields: np.ndarray, templates: np.ndarray) -> np.ndarray:
    c = fields.shape[1]
    return np.corrcoef(fields.T, templates.T)[:c, c:].max(axis=0)


def aeh_accuracy(seeds: int) -> list[dict]:
    rows = []
    for seed in range(seeds):
        adata = coexpression_modules("equal", random_state=seed)
        results = {}
        for approximate in (False, True):
            start = time.perf_counter()
            table = aeh(adata, 4, LENGTH_SCALE, layer="counts", approximate=approximate)
            seconds = time.perf_counter() - start
            results[approximate] = (table, adata.obsm["aeh_patterns"].copy())
            params = adata.uns["spatiome"]["aeh"]
            corr = matched_correlation(results[approximate][1], adata.obsm["templates"])
            rows.append(
                {
                    "kind": "accuracy",
                    "method": "aeh_approximate" if approximate else "aeh_exact",
                    "design": "equal",
                    "seed": seed,
                    "n_spots": adata.n_obs,
                    "n_genes": adata.n_vars,
                    "ari": adjusted_rand_score(adata.var["module"], table["pattern"]),
                    "min_template_corr": float(corr.min()),
                    "mean_template_corr": float(corr.mean()),
                    "n_iter": params["n_iter"],
                    "rank": params["rank"],
                    "seconds": seconds,
                }
            )
        exact, approx = results[False], results[True]
        mapping = exact[0]["pattern"].groupby(approx[0]["pattern"]).first()
        corr = np.corrcoef(approx[1].T, exact[1].T)[:4, 4:]
        rows[-1]["ari_vs_exact"] = adjusted_rand_score(exact[0]["pattern"], approx[0]["pattern"])
        rows[-1]["min_field_corr_vs_exact"] = float(
            np.min([corr[k, mapping.get(k, 0)] for k in range(4)])
        )
        print(f"  aeh seed {seed}: ARI exact {rows[-2]['ari']:.3f}, approx {rows[-1]['ari']:.3f}",
              flush=True)  # fmt: skip
    return rows


def timing(n_spots: int, label: str, run, n_genes: int, **extra) -> dict:
    adata = coexpression_modules("equal", n_spots=n_spots, random_state=0)
    adata = adata[:, :n_genes].copy()
    before = os.getloadavg()[0]
    start = time.perf_counter()
    run(adata)
    seconds = time.perf_counter() - start
    after = os.getloadavg()[0]
    print(f"  {label}: {n_spots:,} spots x {n_genes} genes: {seconds:.1f} s", flush=True)
    return {
        "kind": "timing",
        "method": label,
        "n_spots": n_spots,
        "n_genes": n_genes,
        "seconds": seconds,
        "load_before": before,
        "load_after": after,
        **extra,
    }


def timings(small: int, large: int) -> list[dict]:
    warm = coexpression_modules("sparse", random_state=0)
    stihc(warm, copy=True)
    aeh(warm, 4, LENGTH_SCALE, layer="counts", n_init=1, approximate=True, copy=True)
    return [
        timing(small, "stihc", lambda a: stihc(a, copy=True), 100),
        timing(
            small,
            "aeh_exact",
            lambda a: aeh(a, 4, LENGTH_SCALE, layer="counts", approximate=False, copy=True),
            100,
        ),  # fmt: skip
        timing(
            small,
            "aeh_approximate",
            lambda a: aeh(a, 4, LENGTH_SCALE, layer="counts", approximate=True, copy=True),
            100,
        ),  # fmt: skip
        timing(large, "stihc", lambda a: stihc(a, n_probes=10, copy=True), 20, n_probes=10),
        timing(
            large,
            "aeh_approximate",
            lambda a: aeh(a, 4, LENGTH_SCALE, layer="counts", approximate=True, copy=True),
            100,
        ),  # fmt: skip
    ]


def scaling_tissue(
    n_spots: int, n_genes: int = 300, n_fields: int = 12, seed: int = 0
) -> anndata.AnnData:
    """Spots in a disc, ``log1p`` Poisson counts (CSR float32), ``var['module']`` the field
    of each gene (-1: no field); built one gene at a time so nothing is dense."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_spots * 4 / np.pi))) + 2
    grid = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)
    grid = grid[((grid - side / 2) ** 2).sum(axis=1) <= (side / 2) ** 2][:n_spots]
    xy = (grid + rng.uniform(-0.3, 0.3, size=grid.shape)) * 100.0
    unit = (xy - xy.min(axis=0)) / np.ptp(xy, axis=0).max()
    fields = np.empty((n_fields, xy.shape[0]), dtype=np.float32)
    for index in range(n_fields):
        centres = rng.uniform(0.1, 0.9, size=(3, 2))
        widths = rng.uniform(0.05, 0.2, size=3)
        bumps = [
            np.exp(-((unit - centre) ** 2).sum(axis=1) / (2 * width**2))
            for centre, width in zip(centres, widths, strict=True)
        ]
        fields[index] = np.max(bumps, axis=0)
    module = np.where(np.arange(n_genes) < 0.8 * n_genes, np.arange(n_genes) % n_fields, -1)
    columns = []
    for gene in range(n_genes):
        level = rng.uniform(-1.5, 0.5)
        effect = 0.0 if module[gene] < 0 else rng.uniform(1.0, 2.0)
        shape = fields[module[gene]] if module[gene] >= 0 else np.zeros(xy.shape[0])
        counts = rng.poisson(np.exp(level + effect * shape)).astype(np.float32)
        columns.append(sp.csc_matrix(np.log1p(counts)[:, None]))
    matrix = sp.hstack(columns, format="csr", dtype=np.float32)
    adata = anndata.AnnData(matrix, obsm={"spatial": xy})
    adata.var["module"] = module
    return adata


def _peak_during(run) -> tuple[float, float, int]:
    """Wall and CPU seconds of ``run()`` and the peak of the memory it allocated through
    Python and numpy (tracemalloc; CPU seconds tell the cost on a busy machine, where the
    wall time mostly waits)."""
    tracemalloc.start()
    start, cpu = time.perf_counter(), time.process_time()
    run()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return seconds, cpu, peak


def scaling(sizes: list[int]) -> list[dict]:
    stihc(coexpression_modules("sparse", random_state=0), copy=True)  # compile the kernels
    rows = []
    for n_spots in sizes:
        adata = scaling_tissue(n_spots)
        load = os.getloadavg()[0]
        seconds, cpu, peak = _peak_during(functools.partial(stihc, adata, random_state=0))
        params = adata.uns["spatiome"]["stihc"]
        rows.append({
            "kind": "scaling", "method": "stihc", "n_spots": n_spots, "n_genes": adata.n_vars,
            "seconds": seconds, "cpu_seconds": cpu, "extra_peak_gb": peak / 1e9,
            "load_before": load, "load_after": os.getloadavg()[0], "n_nodes": params["n_nodes"],
            "n_modules": params["n_modules"],
            "ari_fields": ari_with_loners(adata.var["module"], adata.var["stihc_module"]),
        })  # fmt: skip
        row = rows[-1]
        print(f"  stihc {n_spots:,} spots: {seconds:.1f} s (CPU {cpu:.1f} s), "
              f"+{row['extra_peak_gb']:.2f} GB, load {load:.1f}, ARI {row['ari_fields']:.3f}",
              flush=True)  # fmt: skip
        del adata
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--timing-small", type=int, default=3_639)
    parser.add_argument("--timing-spots", type=int, default=100_000)
    parser.add_argument("--scaling", type=int, nargs="+", metavar="N_SPOTS")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.scaling:
        table = with_environment(pd.DataFrame(scaling(args.scaling)))
        print(environment_line())
        print(table.drop(columns=table.columns[table.columns.get_loc("ari_fields") + 1 :])
              .to_string(index=False, float_format="{:.3f}".format))  # fmt: skip
        write_csv(table, args.out or SCALING_RESULTS)
        return 0
    args.out = args.out or RESULTS

    print("accuracy", flush=True)
    rows = stihc_accuracy(args.seeds) + demo_modules() + aeh_accuracy(min(args.seeds, 2))
    print("timing", flush=True)
    rows += timings(args.timing_small, args.timing_spots)
    table = pd.DataFrame(rows)
    table["spatiome_version"] = package_version("spatiome")

    print()
    print(environment_line())
    print(f"cores: {os.cpu_count()}")
    accuracy = table[table["kind"] == "accuracy"]
    shown = ["ari", "min_template_corr", "ari_vs_exact", "min_field_corr_vs_exact", "seconds"]
    shown = [c for c in shown if c in accuracy]
    print(accuracy.groupby(["method", "design"], sort=False)[shown].agg(["min", "mean"])
          .to_string(float_format=lambda v: f"{v:.3f}"))  # fmt: skip
    print()
    demo = ["design", "n_genes", "n_modules", "n_unassigned", "ari_pattern_kind",
            "ari_field_clusters", "pair_precision"]  # fmt: skip
    print(table[table["kind"] == "demo"][demo].to_string(index=False, float_format="{:.3f}".format))
    print()
    columns = ["method", "n_spots", "n_genes", "seconds", "load_before", "load_after"]
    print(table[table["kind"] == "timing"][columns].to_string(index=False))
    write_csv(with_environment(table), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
