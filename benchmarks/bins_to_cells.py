"""Visium HD bins to cells (io.bins.bins_to_cells): counts given to the right cell, and speed.

Tissues: ``datasets.visium_hd.simulate_visium_hd`` (2 µm bins; cells on a jittered
hexagonal lattice 14 µm apart, radius 5.5-8.5 µm, nuclei 2.5-3.5 µm, 85% of the sites
filled; 4 cell types over 100 genes; 4 transcripts per cell bin, 0.2 per background bin).
Two diffusion scenarios: ``default`` (20% of the transcripts moved by a Gaussian offset of
3 µm per axis) and ``strong`` (40%, 4 µm).

Segmentations: the true nuclei grown by 0, 2, 4, 6 and 8 µm, and the true cells. Reported
over seeds: the right-cell fraction (counts given to the cell that made them over all
counts made by cells) and the purity (counts given to cells that the right cell made,
over all counts given to cells). For the growth itself, the bins' labels are compared with
scikit-image's ``expand_labels`` on the bin grid (what bin2cell runs): share of bins with
the same label (ties between two nuclei may go either way).

Timing: ``bins_to_cells`` on 1,000,000 bins (2,000 x 2,000 µm, 500 genes; median of
``--repeats``) with per-bin nucleus ids, grown by 0 and 4 µm, with a label image at 5
pixels per bin through an affine, and ``expand_labels`` on the bin grid for comparison.
Other jobs may share this machine: the load average is recorded with each timing.

Run with a Python that has spatiome::

    python benchmarks/bins_to_cells.py [--seeds 5] [--timing-bins 1000000] [--repeats 3]

Prints the tables and writes ``benchmarks/results/bins_to_cells.csv``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from skimage.segmentation import expand_labels

from spatiome.datasets.visium_hd import assigned_purity, right_cell_fraction, simulate_visium_hd
from spatiome.io.bins import assign_bins, bins_to_cells

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, environment_line, timed, with_environment, write_csv  # noqa: E402

RESULTS = RESULTS_DIR / "bins_to_cells.csv"
SCENARIOS = {
    "default": {},
    "strong": {"diffusion_fraction": 0.4, "diffusion_um": 4.0},
}
EXPANSIONS_UM = (0.0, 2.0, 4.0, 6.0, 8.0)


def segmentations() -> list[tuple[str, str, float]]:
    """(name, obs column, growth in µm) for every setting measured."""
    settings = [(f"nuclei + {e:g} um", "nucleus_label", e) for e in EXPANSIONS_UM]
    return settings + [("cells", "cell_label", 0.0)]


def grid_labels(bins: AnnData, column: str) -> np.ndarray:
    """The labels of ``bins.obs[column]`` as an image with one pixel per bin."""
    image = np.zeros((bins.obs["array_row"].max() + 1, bins.obs["array_col"].max() + 1), int)
    image[bins.obs["array_row"], bins.obs["array_col"]] = bins.obs[column]
    return image


def reference_agreement(bins: AnnData, expand_um: float, assigned: pd.Series) -> float:
    """Share of bins whose label matches scikit-image's expand_labels on the bin grid."""
    grown = expand_labels(grid_labels(bins, "nucleus_label"), distance=expand_um / 2.0)
    reference = grown[bins.obs["array_row"], bins.obs["array_col"]]
    ours = pd.to_numeric(assigned.astype(object), errors="coerce").fillna(0).to_numpy()
    return float(np.mean(ours == reference))


def accuracy(n_seeds: int, size_um: float) -> pd.DataFrame:
    rows = []
    for scenario, options in SCENARIOS.items():
        for seed in range(n_seeds):
            bins = simulate_visium_hd(
                width_um=size_um, height_um=size_um, random_state=seed, **options
            )
            for name, column, expand in segmentations():
                assigned = assign_bins(bins, column, expand_um=expand)
                agree = (
                    reference_agreement(bins, expand, assigned)
                    if column == "nucleus_label"
                    else float("nan")
                )
                rows.append(
                    {
                        "kind": "accuracy",
                        "scenario": scenario,
                        "seed": seed,
                        "segmentation": name,
                        "right_cell_fraction": right_cell_fraction(bins, assigned),
                        "purity": assigned_purity(bins, assigned),
                        "agreement_with_expand_labels": agree,
                        "n_bins": bins.n_obs,
                        "n_cells": bins.obsm["true_cell_counts"].shape[1],
                    }
                )
    return pd.DataFrame(rows)


def timing(n_bins: int, repeats: int) -> pd.DataFrame:
    side_um = 2.0 * round(np.sqrt(n_bins))
    bins = simulate_visium_hd(width_um=side_um, height_um=side_um, n_genes=500, random_state=0)
    print(f"timing data: {bins.n_obs:,} bins x {bins.n_vars} genes, {bins.X.nnz:,} non-zero")
    image = np.kron(grid_labels(bins, "nucleus_label"), np.ones((5, 5), dtype=np.int32))
    to_pixels = np.array([[2.5, 0.0, -0.5], [0.0, 2.5, -0.5]])
    calls = {
        "bins_to_cells(bins, 'nucleus_label')": lambda: bins_to_cells(bins, "nucleus_label"),
        "bins_to_cells(bins, 'nucleus_label', expand_um=4)": lambda: bins_to_cells(
            bins, "nucleus_label", expand_um=4
        ),
        f"bins_to_cells(bins, image {image.shape}, transform=affine, expand_um=4)": (
            lambda: bins_to_cells(bins, image, transform=to_pixels, expand_um=4)
        ),
        "skimage expand_labels(bin grid, 2 bins), reference": lambda: expand_labels(
            grid_labels(bins, "nucleus_label"), distance=2
        ),
    }
    rows = []
    for call, func in calls.items():
        before = os.getloadavg()[0]
        seconds, result = timed(func, repeats)
        rows.append(
            {
                "kind": "timing",
                "call": call,
                "seconds": seconds,
                "n_bins": bins.n_obs,
                "n_cells": getattr(result, "n_obs", np.nan),
                "load_before": before,
                "load_after": os.getloadavg()[0],
            }
        )
        print(f"{seconds:8.2f} s  {call}", flush=True)
    return pd.DataFrame(rows)


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    grouped = table.groupby(["scenario", "segmentation"], sort=False)
    summary = grouped[["right_cell_fraction", "purity", "agreement_with_expand_labels"]].agg(
        ["mean", "min", "max"]
    )
    return summary.round(3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--size-um", type=float, default=400.0)
    parser.add_argument("--timing-bins", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    print(environment_line())
    scores = accuracy(args.seeds, args.size_um)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(summarize(scores).to_string())
    times = timing(args.timing_bins, args.repeats)
    write_csv(with_environment(pd.concat([scores, times], ignore_index=True)), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
