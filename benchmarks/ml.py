"""Supervised models (ml.classify): blocked vs random cross-validation on real and simulated tissue.

Layer prediction on the LIBD human DLPFC Visium section 151673 (3,639 spots, 7,319-gene
subset with raw counts; 7 manual layers, the 28 unlabelled spots left out) with every model
(random forest, SVM, gradient boosting) on the 2,000 most variable genes, 5 folds of each
scheme: spatially blocked folds (contiguous tissue blocks, ``ml.spatial_folds``) and
stratified random folds. The gap (random minus blocked) is the accuracy that neighbours
leaking between training and test spots add to a random split. The random forest is also
run on BANKSY-style neighbourhood-augmented principal components (``pp.reduce`` with
``neighbourhood_lambda=0.8``, 30 components; ``features="neighbourhood_pca"``): each
spot's features then contain its neighbours' expression, so a random split leaks more.

The same on simulated tissues (``datasets.simulate_tissue``, 3,000 spots x 1,000 genes, 5
layered domains, 3 data seeds), and label transfer between two sections of the same
simulated tissue (``ml.cross_sample_validate``): the second is sequenced at 60% of the
depth with more depth variation and carries a per-gene batch factor (log-normal, sd
``BATCH_EFFECT``), so the transfer has to cross a batch effect that within-section
cross-validation never sees.

Run::

    python benchmarks/ml.py [--models random_forest,svm,gradient_boosting] [--sim-seeds 3]

Prints the tables and writes ``benchmarks/results/ml.csv``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

import spatiome as sm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, environment_line, with_environment, write_csv  # noqa: E402

RESULTS = RESULTS_DIR / "ml.csv"
DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
METRICS = ["accuracy", "balanced_accuracy", "macro_f1"]
_ROW_COLUMNS = ("dataset", "model", "features", "data_seed", "scheme", "seconds", "load_average")


def _rows(
    result, dataset: str, model: str, features: str, data_seed: int, seconds: float
) -> list[dict]:
    rows = []
    for scheme in ("blocked", "random", "gap"):
        rows.append(
            {
                "dataset": dataset,
                "model": model,
                "features": features,
                "data_seed": data_seed,
                "scheme": scheme,
                **{m: float(result.summary.loc[scheme, m]) for m in METRICS},
                "seconds": seconds,
                "load_average": os.getloadavg()[0],
            }
        )
    return rows


def layer_prediction(models: list[str], sim_seeds: int) -> pd.DataFrame:
    tissues = []
    if (DATA_DIR / "dlpfc_151673").exists():
        dlpfc = sm.datasets.load("dlpfc_151673", data_dir=DATA_DIR, download=False)
        tissues.append(("dlpfc_151673", -1, dlpfc, "layer_guess"))
    else:
        print("  dlpfc_151673 not found: skipped")
    for seed in range(sim_seeds):
        tissue = sm.datasets.simulate_tissue(
            n_spots=3000, n_genes=1000, n_domains=5, domains="layers", random_state=seed
        )
        tissues.append(("simulated", seed, tissue, "domain"))
    rows = []
    for name, data_seed, adata, label in tissues:
        runs = [(model, "genes") for model in models]
        runs.append(("random_forest", "neighbourhood_pca"))
        for model, features in runs:
            data = adata.copy()
            start = time.perf_counter()
            if features == "neighbourhood_pca":
                sm.pp.normalize(data)
                sm.pp.reduce(data, n_comps=30, umap=False, neighbourhood_lambda=0.8)
                result = sm.ml.classify(data, label, model=model, features="X_pca",
                                        n_importance=10)  # fmt: skip
            else:
                result = sm.ml.classify(data, label, model=model, n_importance=10)
            seconds = time.perf_counter() - start
            rows += _rows(result, name, model, features, data_seed, seconds)
            s = result.summary
            print(
                f"  {name} (data {data_seed}) {model} on {features}: blocked "
                f"{s.loc['blocked', 'accuracy']:.3f}, random {s.loc['random', 'accuracy']:.3f}, "
                f"gap {s.loc['gap', 'accuracy']:.3f} ({seconds:.1f} s)",
                flush=True,
            )
    return pd.DataFrame(rows)


BATCH_EFFECT = 0.3


def _sections(seed: int) -> dict[str, object]:
    design = dict(n_spots=3000, n_genes=1000, n_domains=5, domains="layers", random_state=seed)
    first = sm.datasets.simulate_tissue(**design)
    second = sm.datasets.simulate_tissue(**design, mean_depth=1200.0, depth_cv=0.4)
    rng = np.random.default_rng(seed)
    factor = np.exp(rng.normal(0.0, BATCH_EFFECT, second.n_vars))
    counts = sp.csr_matrix(second.layers["counts"], dtype=np.float64).multiply(factor[None, :])
    counts = sp.csr_matrix(counts)
    counts.data = rng.poisson(counts.data).astype(np.float64)
    counts.eliminate_zeros()
    second.X = counts.astype(np.float32)
    second.layers["counts"] = second.X.copy()
    return {"section0": first, "section1": second}


def transfer(sim_seeds: int) -> pd.DataFrame:
    rows = []
    for seed in range(sim_seeds):
        both = sm.integrate.concat_samples(_sections(seed))
        start = time.perf_counter()
        table = sm.ml.cross_sample_validate(both, "domain")
        seconds = time.perf_counter() - start
        for record in table.to_dict(orient="records"):
            rows.append(
                {
                    "dataset": "simulated_transfer",
                    "model": "random_forest",
                    "features": "genes",
                    "data_seed": seed,
                    "scheme": f"{record['train']}->{record['test']}",
                    "accuracy": record["accuracy"],
                    "balanced_accuracy": record["balanced_accuracy"],
                    "macro_f1": record["macro_f1"],
                    "within_accuracy": record["within_accuracy"],
                    "drop": record["drop"],
                    "seconds": seconds,
                    "load_average": os.getloadavg()[0],
                }
            )
        print(table.round(3).to_string(index=False), flush=True)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="random_forest,svm,gradient_boosting")
    parser.add_argument("--sim-seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--transfer-only", action="store_true")
    args = parser.parse_args()
    print(environment_line())
    print("Layer prediction, 5 folds per scheme (accuracy):")
    if args.transfer_only:
        # keep the layer-prediction rows of the last full run
        parts = []
        if args.out.exists():
            previous = pd.read_csv(args.out)
            previous = previous[previous["dataset"] != "simulated_transfer"]
            parts.append(previous[[c for c in previous if c in METRICS or c in _ROW_COLUMNS]])
    else:
        parts = [layer_prediction(args.models.split(","), args.sim_seeds)]
    table = pd.concat([*parts, transfer(args.sim_seeds)], ignore_index=True)
    summary = (
        table[table["dataset"] != "simulated_transfer"]
        .groupby(["dataset", "model", "features", "scheme"], sort=False)[METRICS]
        .agg(["mean", "min", "max"])
    )
    print(summary.round(3).to_string())
    write_csv(with_environment(table), args.out)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
