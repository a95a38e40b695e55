"""Neighbourhood-augmented PCA and spatial imputation on 50,000 spots x 2,000 genes.

A simulated tissue (``spatiome.datasets.simulate_tissue(n_spots, n_genes, random_state=0)``:
five layered domains, a quarter of the genes spatially patterned) is normalized with
``spatiome.pp.normalize``. Then, each timed as a whole call:

* ``pp.reduce`` (no UMAP, which would cost the same in every variant): plain PCA of the
  highly variable genes, and the neighbourhood-augmented PCA (BANKSY, lambda = 0.8) without
  and with the azimuthal Gabor filter; each embedding is clustered by k-means into as many
  clusters as there are domains and scored by the adjusted Rand index against
  ``obs["domain"]``. The default tissue's domains are easy to find without neighbours, so
  the same is done on a second tissue of the same size with weak domains (only 3% of the
  genes, all of the ``"domain"`` pattern, log fold change 0.7, mean depth 1,000);
* ``pp.impute`` on all genes (alpha 0.5, three steps, 10% of the non-zero counts held out),
  the same without validation (smoothing alone), and ``alpha="auto"`` on the spatially
  patterned genes and on the pure-noise genes, with the held-out figures of each.

The machine is shared with other jobs: the 1-minute load average before and after every
timed call is recorded next to it, as is the peak resident memory of the process so far.

Run with a Python that has spatiome::

    python benchmarks/reduce_impute.py [--n-spots 50000] [--n-genes 2000] [--repeats 1]

Prints a table and writes ``benchmarks/results/reduce_impute.csv``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import pandas as pd
from sklearn.metrics import adjusted_rand_score

import spatiome as sm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS_DIR,
    environment_line,
    timed,
    with_environment,
    write_csv,
)

RESULTS = RESULTS_DIR / "reduce_impute.csv"
LAMBDA = 0.8
WEAK_DOMAINS = {
    "patterns": ("domain",),
    "frac_spatial": 0.03,
    "effect_size": 0.7,
    "mean_depth": 1000.0,
}
VARIANTS = [
    ("reduce plain", "X_pca", {}),
    ("reduce lambda=0.8", "X_banksy", {"neighbourhood_lambda": LAMBDA}),
    ("reduce lambda=0.8 + AGF", "X_banksy_agf", {"neighbourhood_lambda": LAMBDA, "agf": True}),
]


def _peak_rss_gb() -> float:
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def _measure(label: str, call: str, func, repeats: int) -> dict:
    load_before = os.getloadavg()[0]
    seconds, _ = timed(func, repeats)
    row = {
        "step": label,
        "call": call,
        "seconds": seconds,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "peak_rss_gb": _peak_rss_gb(),
    }
    print(f"{label:<40} {seconds:8.1f} s  load {load_before:.2f} -> {row['load_after']:.2f}")
    sys.stdout.flush()
    return row


def _kmeans_ari(adata, key: str, n_clusters: int) -> float:
    sm.domains.kmeans(adata, n_clusters, use_rep=key, key_added=f"kmeans_{key}")
    truth = adata.obs["domain"].cat.codes.to_numpy()
    return float(adjusted_rand_score(truth, adata.obs[f"kmeans_{key}"].cat.codes.to_numpy()))


def _validation(adata) -> dict:
    record = adata.uns["spatiome"]["impute"]
    found = record["validation"]
    return {
        "alpha": record["alpha"],
        "corr_imputed": found["corr_imputed"],
        "corr_unimputed": found["corr_unimputed"],
        "mae_imputed": found["mae_imputed"],
        "mae_unimputed": found["mae_unimputed"],
        "zero_mean_imputed": found["zero_mean_imputed"],
        "n_masked": found["n_masked"],
        "improved": found["improved"],
    }


def _reduce_rows(adata, dataset: str, repeats: int) -> list[dict]:
    """Time each reduce variant on ``adata`` and score its k-means clusters."""
    n_domains = int(adata.obs["domain"].nunique())
    rows = []
    for label, key, options in VARIANTS:
        arguments = ", ".join(f"{k}={v!r}" for k, v in {**options, "key_added": key}.items())
        row = _measure(
            f"{label} ({dataset})",
            f"pp.reduce(adata, umap=False, {arguments})",
            lambda key=key, options=options: sm.pp.reduce(
                adata, umap=False, key_added=key, **options
            ),
            repeats,
        )
        row["dataset"] = dataset
        row["nonzero_fraction"] = adata.X.nnz / (adata.n_obs * adata.n_vars)
        row["ari_kmeans"] = _kmeans_ari(adata, key, n_domains)
        rows.append(row)
    for row in rows:
        row["ari_gain"] = row["ari_kmeans"] - rows[0]["ari_kmeans"]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-spots", type=int, default=50_000)
    parser.add_argument("--n-genes", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    adata = sm.datasets.simulate_tissue(n_spots=args.n_spots, n_genes=args.n_genes, random_state=0)
    sm.pp.normalize(adata)
    n_domains = int(adata.obs["domain"].nunique())
    density = adata.X.nnz / (adata.n_obs * adata.n_vars)
    print(
        f"data: {adata.n_obs:,} spots x {adata.n_vars:,} genes, {density:.1%} non-zero, "
        f"{n_domains} domains; simulated and normalized in {time.perf_counter() - start:.1f} s"
    )
    print(environment_line())
    # Compile the numba kernels and warm scanpy on a small slice first.
    warm = adata[:500].copy()
    sm.pp.reduce(warm, umap=False, neighbourhood_lambda=LAMBDA, agf=True)
    sm.pp.impute(warm, genes=warm.var_names[:20], validate=False)

    rows = _reduce_rows(adata, "default", args.repeats)
    weak = sm.datasets.simulate_tissue(
        n_spots=args.n_spots, n_genes=args.n_genes, random_state=0, **WEAK_DOMAINS
    )
    sm.pp.normalize(weak)
    rows += _reduce_rows(weak, "weak domains", args.repeats)
    del weak

    spatial = adata.var_names[adata.var["is_spatial"]]
    is_mito = adata.var_names.str.startswith("MT-")
    noise = adata.var_names[(adata.var["pattern"] == "none").to_numpy() & ~is_mito]
    imputations = [
        ("impute all genes", "pp.impute(adata, alpha=0.5)", {"alpha": 0.5}, True),
        (
            "impute all, no validation",
            "pp.impute(adata, alpha=0.5, validate=False)",
            {"alpha": 0.5, "validate": False},
            False,
        ),
        (
            "impute spatial genes auto",
            f'pp.impute(adata, genes=<{len(spatial)} patterned>, alpha="auto")',
            {"genes": spatial, "alpha": "auto"},
            True,
        ),
        (
            "impute noise genes auto",
            f'pp.impute(adata, genes=<{len(noise)} pure noise>, alpha="auto")',
            {"genes": noise, "alpha": "auto"},
            True,
        ),
    ]
    for label, call, options, validated in imputations:
        row = _measure(
            label, call, lambda options=options: sm.pp.impute(adata, **options), args.repeats
        )
        row["dataset"] = "default"
        row["nonzero_fraction"] = density
        if validated:
            row.update(_validation(adata))
        rows.append(row)

    table = pd.DataFrame(rows)
    table["n_spots"] = adata.n_obs
    table["n_genes"] = adata.n_vars
    table["repeats"] = args.repeats
    table = with_environment(table)
    shown = [
        "step",
        "seconds",
        "load_before",
        "load_after",
        "ari_kmeans",
        "ari_gain",
        "alpha",
        "corr_imputed",
        "mae_imputed",
        "mae_unimputed",
        "zero_mean_imputed",
        "improved",
        "peak_rss_gb",
    ]
    print()
    print(table[shown].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    write_csv(table, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
