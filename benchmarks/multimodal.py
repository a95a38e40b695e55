"""RNA + protein integration (integrate.multimodal): accuracy on simulated tissues, and speed.

Accuracy: tissues of six domains (``datasets.simulate_tissue`` layout and domains, 1,500
spots, "blobs"); the RNA (100 genes, negative binomial) separates only the pairs of domains
{1, 2}, {3, 4}, {5, 6} and a 15-protein panel only the odd from the even domains, so each
modality alone can find at most part of the truth and both together can find all of it.
``multimodal(..., n_domains=6)`` runs with its defaults (SpatialGlue's 10x preset: 200
epochs, learning rate 1e-4, loss weights 1, 5, 1, 10). Its clusters are scored against the
six domains (adjusted Rand index, ARI), next to a Gaussian mixture (same settings) on each
modality's own embedding from the same model (``rna_embedding``, ``protein_embedding``:
spatial and feature graphs, one modality) and on each modality's preprocessed principal
components (``rna_pca``, ``protein_pca``). The best ARI a single modality can reach on a
perfect clustering of its groups is about 0.55 (RNA) and 0.2 (protein).

Speed: one call with the defaults (no clustering) on 50,000 spots (``simulate_tissue``,
2,000 genes, 6 domains, a 30-protein panel drawn from the domains), one torch thread; wall
time of the whole call and of the training, with the 1-minute load average read before
and after (other jobs may share this machine).

Run with a Python that has spatiome[deep]::

    python benchmarks/multimodal.py [--seeds 3] [--scale-spots 50000] [--threads 1]

Prints the tables and writes ``benchmarks/results/multimodal.csv``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, environment_line, with_environment, write_csv  # noqa: E402

from spatiome.datasets import simulate_tissue  # noqa: E402
from spatiome.integrate.multimodal import (  # noqa: E402
    _cluster,
    _protein_features,
    _rna_features,
    multimodal,
)

RNA_GROUP = np.array([0, 0, 1, 1, 2, 2])
PROTEIN_GROUP = np.array([0, 1, 0, 1, 0, 1])


def simulate_pair(
    n_spots: int, seed: int, n_genes: int = 100, n_proteins: int = 15
) -> tuple[anndata.AnnData, anndata.AnnData]:
    """RNA and protein of the same spots; each sees only part of the six domains."""
    tissue = simulate_tissue(
        n_spots=n_spots, n_genes=20, n_domains=6, domains="blobs", frac_spatial=0.0,
        random_state=seed,
    )  # fmt: skip
    codes = tissue.obs["domain"].cat.codes.to_numpy()
    rng = np.random.default_rng(seed)
    groups = RNA_GROUP[codes]
    base = rng.lognormal(0.0, 1.0, n_genes)
    base /= base.sum()
    fold = np.zeros((3, n_genes))
    markers = rng.choice(n_genes, size=(3, n_genes // 6), replace=False)
    fold[np.arange(3)[:, None], markers] = 1.0
    size = rng.lognormal(np.log(1500.0), 0.3, n_spots)
    mean = size[:, None] * base[None, :] * np.exp(fold[groups])
    counts = rng.poisson(rng.gamma(10.0, mean / 10.0)).astype(np.float32)
    rna = anndata.AnnData(
        sp.csr_matrix(counts),
        obs=tissue.obs[["domain"]].copy(),
        obsm={"spatial": tissue.obsm["spatial"].copy()},
    )
    rna.var_names = [f"G{i}" for i in range(n_genes)]
    return rna, _protein_panel(rna, PROTEIN_GROUP[codes], n_proteins, rng)


def _protein_panel(rna, groups, n_proteins, rng) -> anndata.AnnData:
    fold = rng.normal(0.0, 0.8, (groups.max() + 1, n_proteins))
    mean = 30.0 * rng.lognormal(0.0, 0.5, n_proteins)[None, :] * np.exp(fold[groups])
    protein = anndata.AnnData(
        rng.poisson(rng.gamma(5.0, mean / 5.0)).astype(np.float32), obs=rna.obs[[]].copy()
    )
    protein.var_names = [f"P{i}" for i in range(n_proteins)]
    return protein


def accuracy(seeds: int, threads: int) -> pd.DataFrame:
    cluster = _cluster
    rows = []
    for seed in range(seeds):
        rna, protein = simulate_pair(1500, seed)
        truth = rna.obs["domain"]
        start = time.perf_counter()
        out = multimodal(rna, protein, n_domains=6, n_jobs=threads, random_state=seed, copy=True)
        seconds = time.perf_counter() - start
        # The same model trained by mini-batches (forced here; automatic above 10,000 spots).
        parts = multimodal(rna, protein, n_domains=6, n_jobs=threads, random_state=seed,
                           copy=True, minibatch=True, batch_size=512)  # fmt: skip
        width = protein.n_vars - 1
        rna_pca, _ = _rna_features(rna.X, rna.var_names, 3000, 10, width, seed)
        protein_pca = _protein_features(protein.X, width, seed)
        labels = {
            "integrated": out.obs["multimodal"].to_numpy(),
            "integrated_minibatch": parts.obs["multimodal"].to_numpy(),
            "rna_embedding": cluster(out.obsm["X_multimodal_rna"], 6, "tied", 20, 1, seed),
            "protein_embedding": cluster(out.obsm["X_multimodal_protein"], 6, "tied", 20, 1, seed),
            "rna_pca": cluster(rna_pca, 6, "tied", None, 1, seed),
            "protein_pca": cluster(protein_pca, 6, "tied", None, 1, seed),
        }
        weights = out.obsm["X_multimodal_weights"].mean()
        for method, found in labels.items():
            rows.append(
                {
                    "design": "rna_pairs+protein_parity",
                    "seed": seed,
                    "method": method,
                    "ari": adjusted_rand_score(truth, found),
                    "n_spots": rna.n_obs,
                    "seconds": seconds if method == "integrated" else np.nan,
                    "weight_rna": weights["rna"],
                    "weight_protein": weights["protein"],
                }
            )
    return pd.DataFrame(rows)


def speed(n_spots: int, threads: int) -> pd.DataFrame:
    rna = simulate_tissue(
        n_spots=n_spots, n_genes=2000, n_domains=6, patterns=("domain",), frac_spatial=0.2,
        random_state=0,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    protein = _protein_panel(rna, rna.obs["domain"].cat.codes.to_numpy(), 30, rng)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    multimodal(rna, protein, n_jobs=threads)
    seconds = time.perf_counter() - start
    load_after = os.getloadavg()[0]
    record = rna.uns["spatiome"]["X_multimodal"]
    return pd.DataFrame(
        [
            {
                "design": "speed",
                "method": "integrated",
                "n_spots": n_spots,
                "n_genes": rna.n_vars,
                "n_proteins": protein.n_vars,
                "n_epochs": record["n_epochs"],
                "minibatch": record["minibatch"],
                "n_batches": record["n_batches"],
                "threads": threads,
                "seconds": seconds,
                "train_seconds": record["train_seconds"],
                "load_before": load_before,
                "load_after": load_after,
            }
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--scale-spots", type=int, default=50_000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    print(environment_line())
    table = accuracy(args.seeds, args.threads)
    wide = table.pivot(index="seed", columns="method", values="ari")
    print("\nARI against the six simulated domains")
    print(wide.round(3).to_string())
    print(wide.mean().round(3).to_string())
    print(table.groupby("seed")[["weight_rna", "weight_protein"]].first().round(3).to_string())
    timing = speed(args.scale_spots, args.threads)
    print("\nspeed")
    print(timing.round(2).to_string(index=False))
    write_csv(with_environment(pd.concat([table, timing], ignore_index=True)),
              RESULTS_DIR / "multimodal.csv")  # fmt: skip


if __name__ == "__main__":
    main()
