"""Combined quality control (pp.quality_flags) against injected defects, on real tissues, at scale.

Simulated part: ``datasets.simulate_tissue`` (Visium-like hexagonal lattice, 300 genes of
which 5 mitochondrial ``MT-`` genes holding about 5% of the counts) damaged with
``datasets.inject_artifacts``, one defect kind per tissue, at three severities (the share of
the counts kept: 0.1, 0.25, 0.5) and over several seeds:

- ``region_mito``: a compact region (5% of the spots) thinned, its mitochondrial share set
  to 25% (a dry patch);
- ``region_depth``: the same region thinned, mitochondrial share unchanged;
- ``scattered``: 2% of the spots, isolated, thinned;
- ``edge``: a band of 3% of the spots along one side, thinned;
- ``default``: ``inject_artifacts`` with its defaults (dry patch of 4% at 0.3 with a 25%
  mitochondrial share, plus a 3% edge at 0.25);
- ``clean``: nothing injected.

For ``pp.quality_flags`` (defaults) and the baseline ``pp.local_outliers`` (SpotSweeper,
defaults): AUROC of the continuous score against the injected spots (``low_quality_score``;
for the baseline the largest of ``-z`` of counts and genes and ``+z`` of the mitochondrial
share), precision and recall of the flag, and the share of untouched spots flagged.

Real part: every dataset in ``../shared/data`` with default settings: share flagged by
either method and per reason; for the DLPFC sections, the share per manual layer and white
matter against the cortical layers; for the olfactory bulb, the flagged spots.

Timing: ``pp.quality_flags`` on 1,000,000 spots of a hexagonal lattice with QC metrics
written into ``obs`` (as ``spatial_qc.py`` builds them: log-normal library sizes and a
central dry patch of 2% of the spots), on 1 and 2 threads, after an untimed warm-up that
compiles the kernels. Other jobs may share the machine: the load average is recorded.

Run with a Python that has spatiome::

    python benchmarks/qc.py [--n-spots 2500] [--seeds 3] [--timing-spots 1000000]

Prints the tables and writes ``benchmarks/results/qc.csv``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from sklearn.metrics import roc_auc_score

import spatiome as sm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS_DIR,
    environment_line,
    package_version,
    with_environment,
    write_csv,
)
from spatial_qc import qc_tissue  # noqa: E402

RESULTS = RESULTS_DIR / "qc.csv"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SEVERITIES = (0.1, 0.25, 0.5)
N_GENES = 300


def scenarios(severity: float) -> dict[str, dict]:
    """``inject_artifacts`` arguments of each defect kind at one severity (share kept)."""
    return {
        "region_mito": dict(dry_patch_fraction=0.05, dry_patch_depth=severity, edge_fraction=0),
        "region_depth": dict(
            dry_patch_fraction=0.05,
            dry_patch_depth=severity,
            dry_patch_mito_fraction=None,
            edge_fraction=0,
        ),
        "scattered": dict(
            dry_patch_fraction=0,
            edge_fraction=0,
            scattered_fraction=0.02,
            scattered_depth=severity,
        ),  # fmt: skip
        "edge": dict(dry_patch_fraction=0, edge_fraction=0.03, edge_depth=severity),
    }


def baseline_score(adata: AnnData) -> tuple[np.ndarray, np.ndarray]:
    """``pp.local_outliers`` flag and its score on the flagged side of each metric."""
    result = sm.pp.local_outliers(adata, copy=True).obs
    score = np.maximum.reduce(
        [
            -result["total_counts_z"].to_numpy(),
            -result["n_genes_by_counts_z"].to_numpy(),
            result["pct_counts_mt_z"].to_numpy(),
        ]
    )
    return result["local_outlier"].to_numpy(), score


def judge(adata: AnnData) -> list[dict]:
    """Both methods on one damaged tissue, scored against ``obs['injected']``."""
    truth = (adata.obs["injected"] != "none").to_numpy()
    flagged = sm.pp.quality_flags(adata, copy=True).obs
    methods = {
        "quality_flags": (
            flagged["low_quality"].to_numpy(),
            flagged["low_quality_score"].to_numpy(),
        ),
        "local_outliers": baseline_score(adata),
    }
    rows = []
    for method, (flag, score) in methods.items():
        rows.append(
            {
                "method": method,
                "auroc": roc_auc_score(truth, score) if truth.any() else np.nan,
                "precision": (
                    flag[truth].sum() / flag.sum() if flag.any() and truth.any() else np.nan
                ),
                "recall": flag[truth].mean() if truth.any() else np.nan,
                "clean_flagged": flag[~truth].mean(),
            }
        )
    return rows


def simulated(n_spots: int, n_seeds: int) -> list[dict]:
    rows = []
    for seed in range(n_seeds):
        tissue = sm.datasets.simulate_tissue(n_spots=n_spots, n_genes=N_GENES, random_state=seed)
        clean = tissue.copy()
        clean.obs["injected"] = "none"
        cases = [("clean", "-", clean)]
        for severity in SEVERITIES:
            for name, arguments in scenarios(severity).items():
                damaged = sm.datasets.inject_artifacts(tissue, random_state=seed, **arguments)
                cases.append((name, severity, damaged))
        cases.append(
            ("default", "default", sm.datasets.inject_artifacts(tissue, random_state=seed))
        )
        for name, severity, adata in cases:
            n_injected = int((adata.obs["injected"] != "none").sum())
            for row in judge(adata):
                rows.append(
                    {"section": "simulated", "case": name, "severity": str(severity),
                     "seed": seed, "n_spots": adata.n_obs, "n_injected": n_injected, **row}
                )  # fmt: skip
        print(f"  seed {seed} done", flush=True)
    return rows


def real(data: Path) -> list[dict]:
    rows = []
    names = sorted(p.name for p in data.iterdir() if (p / "README.md").is_file())
    for name in names:
        try:
            adata = sm.datasets.load(name, data_dir=data)
        except Exception as err:  # a dataset that cannot be read is reported, not fatal
            rows.append({"section": "real", "case": name, "detail": f"skipped: {err}"})
            continue
        start = time.perf_counter()
        sm.pp.quality_flags(adata)
        seconds = time.perf_counter() - start
        baseline, _ = baseline_score(adata)
        info = adata.uns["spatiome"]["quality_flags"]
        reasons = {r: n for r, n in info["n_by_reason"].items() if n}
        row = {
            "section": "real",
            "case": name,
            "n_spots": adata.n_obs,
            "flagged": float(adata.obs["low_quality"].mean()),
            "local_outliers_flagged": float(baseline.mean()),
            "seconds": seconds,
            "detail": "; ".join(f"{r} {n}" for r, n in reasons.items()),
        }
        row.update(layer_shares(adata))
        if name == "mouse_ob_rep11":
            spots = adata.obs.loc[adata.obs["low_quality"], ["total_counts", "low_quality_reason"]]
            row["flagged_spots"] = "; ".join(
                f"{spot} ({int(c)} counts: {r})" for spot, (c, r) in spots.iterrows()
            )
        rows.append(row)
        print(f"  {name}: {row['flagged']:.3f} flagged", flush=True)
    return rows


def layer_shares(adata: AnnData) -> dict:
    """Share flagged in each manual layer, white matter and the cortical layers together."""
    if "layer_guess" not in adata.obs:
        return {}
    layer = adata.obs["layer_guess"].astype(str).to_numpy()
    flagged = adata.obs["low_quality"].to_numpy()
    cortex = pd.Series(layer).str.startswith("Layer").to_numpy()
    shares = {
        f"flagged_{name}": float(flagged[layer == name].mean())
        for name in sorted(set(layer[cortex])) + ["WM"]
    }
    shares["flagged_cortex"] = float(flagged[cortex].mean())
    shares["wm_over_cortex"] = shares["flagged_WM"] / max(shares["flagged_cortex"], 1e-12)
    return shares


def timing(n_spots: int, repeats: int) -> list[dict]:
    sm.pp.quality_flags(qc_tissue(2_000), copy=True)
    adata = qc_tissue(n_spots)
    patch = adata.obs["dry_patch"].to_numpy()
    rows = []
    for n_jobs in (1, 2):
        before = os.getloadavg()[0]
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            sm.pp.quality_flags(adata, n_jobs=n_jobs)
            times.append(time.perf_counter() - start)
        flagged = adata.obs["low_quality"].to_numpy()
        rows.append(
            {
                "section": "timing",
                "case": f"pp.quality_flags(adata, n_jobs={n_jobs})",
                "n_spots": adata.n_obs,
                "n_jobs": n_jobs,
                "seconds": float(np.median(times)),
                "recall": float(flagged[patch].mean()),
                "clean_flagged": float(flagged[~patch].mean()),
                "load_before": before,
                "load_after": os.getloadavg()[0],
            }
        )
        print(f"  n_jobs={n_jobs}: {rows[-1]['seconds']:.1f} s", flush=True)
    return rows


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Mean [min, max] over seeds of each simulated case, severity and method."""
    sim = table[table["section"] == "simulated"]
    keys = ["case", "severity", "method"]
    stats = ["auroc", "precision", "recall", "clean_flagged"]
    mean = sim.groupby(keys, sort=False)[stats].mean()
    low = sim.groupby(keys, sort=False)[stats].min()
    high = sim.groupby(keys, sort=False)[stats].max()
    shown = mean.copy().astype(object)
    for stat in stats:
        shown[stat] = [
            f"{m:.3f} [{lo:.3f}, {hi:.3f}]" if np.isfinite(m) else "-"
            for m, lo, hi in zip(mean[stat], low[stat], high[stat], strict=True)
        ]
    return shown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-spots", type=int, default=2_500)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--timing-spots", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    print("simulated tissues", flush=True)
    rows = simulated(args.n_spots, args.seeds)
    if args.data.is_dir():
        print("real tissues", flush=True)
        rows += real(args.data)
    else:
        print(f"real tissues skipped: {args.data} not found", flush=True)
    if args.timing_spots:
        print("timing", flush=True)
        rows += timing(args.timing_spots, args.repeats)
    table = pd.DataFrame(rows)
    table["spatiome_version"] = package_version("spatiome")

    print()
    print(environment_line())
    print(f"cores: {os.cpu_count()}")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(summarize(table).to_string())
        print()
        real_rows = table[table["section"] == "real"]
        if not real_rows.empty:
            shown = ["case", "n_spots", "flagged", "local_outliers_flagged", "detail"]
            print(real_rows[shown].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
            layers = [
                c for c in real_rows.columns if c.startswith("flagged_") and c != "flagged_spots"
            ]
            layers += ["wm_over_cortex"]
            dlpfc = real_rows[real_rows["case"].str.startswith("dlpfc")]
            print(dlpfc[["case", *layers]].to_string(index=False, float_format="{:.3f}".format))
            bulb = real_rows[real_rows["case"] == "mouse_ob_rep11"]
            if not bulb.empty:
                print(f"olfactory bulb, flagged: {bulb['flagged_spots'].iloc[0]}")
        print()
        timings = table[table["section"] == "timing"]
        if not timings.empty:
            print(
                timings[["case", "n_spots", "seconds", "recall", "clean_flagged",
                         "load_before", "load_after"]].to_string(index=False)
            )  # fmt: skip
    write_csv(with_environment(table), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
