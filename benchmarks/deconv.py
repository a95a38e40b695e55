"""Cell-type deconvolution (deconv.deconvolve): accuracy on spots of known composition, and speed.

Designs (every method sees the same spots; fractions are of cells):

- ``merfish_random``: the MERFISH hypothalamus scRNA-seq reference (1,308 cells, 14 types,
  134 genes) split in half by type; one half gives the signatures, the other is summed
  into 300 random pseudo-spots (2-10 cells, up to 4 types), as is, or with a log-normal
  per-gene platform factor (sd 0.5, ``+platform``).
- ``merfish_radius``: the 750 real MERFISH cells summed within a radius (50 or 100 um) on a
  hexagonal grid, deconvolved against the whole scRNA-seq reference: a real cross-platform
  problem. The truth is each cell's type from RCTD's doublet mode on the single cells
  (``first_type``); ``agree`` keeps only the cells whose type a correlation classifier
  also gives, so the truth does not rest on RCTD alone.
- ``simulated``: ``datasets.simulate_tissue`` single cells (6 types in 5 layered domains,
  random positions about 10 um apart); 30% of the cells are the reference, the rest are
  summed into 55 um Visium-like spots, at full depth (about 3,000 counts per spot), at
  5% depth (about 150), where the CAR smoothing has something to do, and at full depth
  with a per-gene platform factor (sd 0.5).
- ``cerebellum``: the Slide-seq beads and their snRNA-seq reference (19 types): RCTD
  doublet-mode classes as a real-data check (there is no truth).
- ``--rctd-speed``: the default method's time on small data, where the likelihood tables
  dominate: the 100 Slide-seq beads (19 types), the 750 MERFISH cells (14 types) and 2,300
  random pseudo-spots of ``simulate_tissue`` cells (6 types); the first call of the process
  (no table computed yet) and a second call on the same data (tables cached), wall and
  CPU time (all threads).

Metrics as in published benchmarks: RMSE over all spots and types, mean per-spot
Jensen-Shannon divergence, mean per-type Pearson correlation. ``nb_vi`` runs with one
torch thread. Scale: 100,000 spots x 20 types x 2,000 genes (Poisson mixtures of 3-11
cells, about 2,200 counts per spot), the default method, wall time and peak memory. Other
jobs may share this machine: the load average is recorded with each row.

Run with a Python that has spatiome (and torch for ``nb_vi``)::

    python benchmarks/deconv.py [--data-dir ../shared/data] [--seeds 3] [--scale-spots 100000]
    python benchmarks/deconv.py --scale-only
    python benchmarks/deconv.py --rctd-speed

Prints the tables and writes ``benchmarks/results/deconv.csv`` (``deconv_scale.csv`` with
``--scale-only``, ``deconv_rctd_speed.csv`` with ``--rctd-speed``).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, environment_line, with_environment, write_csv  # noqa: E402

import spatiome as sm  # noqa: E402
from spatiome import deconv  # noqa: E402

TRUTH = "cell_type_proportions"


def _methods(spatial: bool) -> list[tuple[str, dict]]:
    methods = [("nnls", {}), ("rctd", {})]
    if spatial:
        methods += [("rctd", {"smoothing": 0.3}), ("rctd", {"smoothing": 1.0})]
    try:
        import torch

        torch.set_num_threads(1)
        methods.append(("nb_vi", {}))
    except ImportError:
        print("torch not installed: nb_vi skipped")
    return methods


def _score(spots, reference, design, seed, methods) -> list[dict]:
    rows = []
    for method, kwargs in methods:
        if method == "nb_vi":
            kwargs = {"cells_per_spot": float(spots.obs["n_cells"].mean()), **kwargs}
        start = time.perf_counter()
        fractions = deconv.deconvolve(spots, reference, method=method, random_state=seed, **kwargs)
        seconds = time.perf_counter() - start
        summary = deconv.compare_fractions(fractions, spots.obsm[TRUTH]).loc["all"]
        label = method + (f"+smooth{kwargs['smoothing']:g}" if "smoothing" in kwargs else "")
        rows.append(
            {
                "design": design,
                "seed": seed,
                "method": label,
                "n_spots": spots.n_obs,
                "cells_per_spot": float(spots.obs["n_cells"].mean()),
                "counts_per_spot": float(spots.X.sum() / spots.n_obs),
                "rmse": summary["rmse"],
                "jsd": summary["jsd"],
                "pearson": summary["pearson"],
                "seconds": seconds,
                "load": os.getloadavg()[0],
            }
        )
        print(
            f"{design:<28} seed {seed} {label:<16} RMSE {summary['rmse']:.4f} "
            f"JSD {summary['jsd']:.3f} r {summary['pearson']:.3f} {seconds:6.1f} s"
        )
    return rows


def merfish_random(data_dir: Path, seeds: int) -> list[dict]:
    reference = sm.datasets.load(
        "rctd_merfish_hypothalamus", data_dir=data_dir, download=False, reference=True
    )
    rows = []
    for seed in range(seeds):
        train, test = deconv.split_reference(reference, random_state=seed)
        signatures = deconv.reference_signatures(train)
        for platform in (0.0, 0.5):
            spots = deconv.pseudo_spots(
                test, n_spots=300, gene_effect_sd=platform, random_state=seed
            )
            design = "merfish_random" + ("+platform" if platform else "")
            rows += _score(spots, signatures, design, seed, _methods(spatial=False))
    return rows


def merfish_radius(data_dir: Path) -> list[dict]:
    reference = sm.datasets.load(
        "rctd_merfish_hypothalamus", data_dir=data_dir, download=False, reference=True
    )
    cells = sm.datasets.load("rctd_merfish_hypothalamus", data_dir=data_dir, download=False)
    deconv.deconvolve(cells, reference, method="rctd", mode="doublet")
    first = cells.obs["cell_type_fractions_first_type"].astype(str).to_numpy()
    agree = first == _correlation_labels(cells, reference)
    print(
        f"MERFISH cells: RCTD first type and the correlation classifier agree on "
        f"{agree.sum()} of {agree.size}"
    )
    rows = []
    for subset, mask in (("all", np.ones(agree.size, dtype=bool)), ("agree", agree)):
        labelled = cells[mask].copy()
        labelled.obs["cell_type"] = first[mask]
        for radius in (50.0, 100.0):
            spots = deconv.pseudo_spots(labelled, spot_radius=radius)
            spots.uns["spatial_unit"] = "um"
            design = f"merfish_radius{radius:g}_{subset}"
            rows += _score(spots, reference, design, 0, _methods(spatial=True))
    return rows


def _correlation_labels(cells, reference) -> np.ndarray:
    """Type whose log mean profile correlates best with each cell (an independent labeller)."""
    signatures = deconv.reference_signatures(reference, select_genes=False)
    genes = cells.var_names.intersection(signatures.index)
    x = np.asarray(cells[:, genes].X.todense(), dtype=float)
    profiles = signatures.loc[genes].to_numpy()
    log_x = np.log1p(1e3 * x / x.sum(axis=1, keepdims=True))
    log_p = np.log1p(1e3 * profiles / profiles.sum(axis=0, keepdims=True))
    log_x = (log_x - log_x.mean(axis=1, keepdims=True)) / log_x.std(axis=1, keepdims=True)
    log_p = (log_p - log_p.mean(axis=0)) / log_p.std(axis=0)
    return np.asarray(signatures.columns)[np.argmax(log_x @ log_p, axis=1)]


def simulated(seeds: int) -> list[dict]:
    rows = []
    for seed in range(seeds):
        cells = sm.datasets.simulate_tissue(
            n_spots=20000,
            n_genes=300,
            layout="random",
            single_cells=True,
            n_cell_types=6,
            n_domains=5,
            mean_depth=300,
            random_state=seed,
        )
        reference, spatial = deconv.split_reference(cells, fraction=0.3, random_state=seed)
        signatures = deconv.reference_signatures(reference)
        for depth, platform in ((1.0, 0.0), (0.05, 0.0), (1.0, 0.5)):
            spots = deconv.pseudo_spots(
                spatial, spot_radius=27.5, depth=depth, gene_effect_sd=platform, random_state=seed
            )
            design = f"simulated_depth{depth:g}" + ("+platform" if platform else "")
            rows += _score(spots, signatures, design, seed, _methods(spatial=True))
    return rows


def cerebellum(data_dir: Path) -> pd.DataFrame:
    beads = sm.datasets.load("rctd_cerebellum_slideseq", data_dir=data_dir, download=False)
    reference = sm.datasets.load(
        "rctd_cerebellum_slideseq", data_dir=data_dir, download=False, reference=True
    )
    start = time.perf_counter()
    deconv.deconvolve(beads, reference, method="rctd", mode="doublet")
    seconds = time.perf_counter() - start
    classes = beads.obs["cell_type_fractions_class"].value_counts()
    first = beads.obs["cell_type_fractions_first_type"].value_counts().head(5)
    print(f"cerebellum Slide-seq, {beads.n_obs} beads, doublet mode {seconds:.1f} s")
    print("  classes:", classes.to_dict())
    print("  most frequent first types:", first.to_dict())
    return pd.DataFrame(
        [
            {
                "design": "cerebellum_doublet_mode",
                "method": "rctd",
                "n_spots": beads.n_obs,
                "seconds": seconds,
                **{f"n_{k}": int(v) for k, v in classes.items()},
            }
        ]
    )


def scale(n_spots: int, n_types: int = 20, n_genes: int = 2000) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    profiles = rng.gamma(0.3, 1.0, (n_types, n_genes))
    profiles *= 300 / profiles.sum(axis=1, keepdims=True)
    effect = np.exp(rng.normal(0, 0.3, n_genes))
    blocks, truth = [], []
    for lo in range(0, n_spots, 10000):
        size = min(10000, n_spots - lo)
        shares = rng.dirichlet(np.full(n_types, 0.3), size)
        cells = rng.integers(3, 12, size)[:, None]
        blocks.append(
            sp.csr_matrix(rng.poisson((shares * cells) @ profiles * effect).astype(np.float32))
        )
        truth.append(shares)
    adata = anndata.AnnData(
        sp.vstack(blocks).tocsr(), var=pd.DataFrame(index=[f"g{g}" for g in range(n_genes)])
    )
    del blocks
    signatures = pd.DataFrame(
        profiles.T, index=adata.var_names, columns=[f"type{t}" for t in range(n_types)]
    )
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    start = time.perf_counter()
    fractions = deconv.deconvolve(adata, signatures)
    seconds = time.perf_counter() - start
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    error = float(np.sqrt(np.mean((fractions.to_numpy() - np.vstack(truth)) ** 2)))
    print(
        f"scale: {n_spots:,} spots x {n_types} types x {n_genes:,} genes, default method: "
        f"{seconds:.1f} s, RMSE {error:.4f}, peak RSS {rss_after:.2f} GB "
        f"(before the call {rss_before:.2f} GB), load {os.getloadavg()[0]:.1f}"
    )
    return pd.DataFrame(
        [
            {
                "design": f"scale_{n_spots}",
                "method": "rctd",
                "n_spots": n_spots,
                "seconds": seconds,
                "rmse": error,
                "peak_rss_gb": rss_after,
                "load": os.getloadavg()[0],
            }
        ]
    )


def _speed_cases(data_dir: Path):
    beads = sm.datasets.load("rctd_cerebellum_slideseq", data_dir=data_dir, download=False)
    cerebellum_ref = sm.datasets.load(
        "rctd_cerebellum_slideseq", data_dir=data_dir, download=False, reference=True
    )
    yield "slideseq_cerebellum", beads, deconv.reference_signatures(cerebellum_ref)
    cells = sm.datasets.load("rctd_merfish_hypothalamus", data_dir=data_dir, download=False)
    merfish_ref = sm.datasets.load(
        "rctd_merfish_hypothalamus", data_dir=data_dir, download=False, reference=True
    )
    yield "merfish_hypothalamus", cells, deconv.reference_signatures(merfish_ref)
    tissue = sm.datasets.simulate_tissue(
        n_spots=20000,
        n_genes=300,
        layout="random",
        single_cells=True,
        n_cell_types=6,
        n_domains=5,
        mean_depth=300,
        random_state=0,
    )
    reference, spatial = deconv.split_reference(tissue, fraction=0.3, random_state=0)
    spots = deconv.pseudo_spots(spatial, n_spots=2300, random_state=0)
    yield "simulated_2300", spots, deconv.reference_signatures(reference)


def rctd_speed(data_dir: Path) -> pd.DataFrame:
    """Default-method time on small data: first call of the process, then a second call."""
    from spatiome.deconv import _pln

    rows = []
    for design, spots, signatures in _speed_cases(data_dir):
        _pln.clear_table_cache()
        for call in ("first", "second"):
            adata = spots.copy()
            wall, cpu = time.perf_counter(), time.process_time()
            deconv.deconvolve(adata, signatures, method="rctd")
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            info = adata.uns["spatiome"]["cell_type_fractions"]
            rows.append(
                {
                    "design": design,
                    "method": "rctd",
                    "call": call,
                    "n_spots": adata.n_obs,
                    "n_genes": info["n_genes"],
                    "n_types": signatures.shape[1],
                    "sigma": info["sigma"],
                    "seconds": wall,
                    "cpu_seconds": cpu,
                    "table_columns": _pln.table_cache_info().columns_computed,
                    "load": os.getloadavg()[0],
                }
            )
    table = pd.DataFrame(rows)
    print(table.round(3).to_string(index=False))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data"
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--scale-spots", type=int, default=100_000)
    parser.add_argument("--scale-only", action="store_true", help="only the timing at scale")
    parser.add_argument(
        "--rctd-speed", action="store_true", help="only the default method's time on small data"
    )
    args = parser.parse_args()
    print(environment_line())
    if args.rctd_speed:
        write_csv(
            with_environment(rctd_speed(args.data_dir)), RESULTS_DIR / "deconv_rctd_speed.csv"
        )
        return
    if args.scale_only:
        write_csv(with_environment(scale(args.scale_spots)), RESULTS_DIR / "deconv_scale.csv")
        return
    rows = merfish_random(args.data_dir, args.seeds)
    rows += merfish_radius(args.data_dir)
    rows += simulated(args.seeds)
    table = pd.DataFrame(rows)
    summary = (
        table.groupby(["design", "method"], sort=False)
        .agg(
            rmse=("rmse", "mean"),
            rmse_min=("rmse", "min"),
            rmse_max=("rmse", "max"),
            jsd=("jsd", "mean"),
            pearson=("pearson", "mean"),
            seconds=("seconds", "mean"),
        )
        .reset_index()
    )
    baseline = summary[summary["method"] == "nnls"].set_index("design")["rmse"]
    summary["vs_nnls"] = summary["rmse"] / summary["design"].map(baseline) - 1.0
    print(summary.round(4).to_string(index=False))
    extra = [cerebellum(args.data_dir)]
    if args.scale_spots:
        extra.append(scale(args.scale_spots))
    out = pd.concat([table, *extra], ignore_index=True)
    write_csv(with_environment(out), RESULTS_DIR / "deconv.csv")


if __name__ == "__main__":
    main()
