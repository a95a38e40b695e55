"""Ligand-receptor analysis (`interactions.ligrec`): accuracy, calibration, peers, scale.

Accuracy: tissues from `datasets.ligrec_simulation.simulate_interactions` (3,000 cells,
kNN graph k = 6) with planted pairs (ligand in type A and receptor in type B, raised only
where A and B cells touch), decoys (same types, constant expression, types apart),
co-localized decoys (interspersed types C and D, constant expression) and null pairs.
Power = planted pairs with q < 0.05; observed FDR = non-planted among the calls, counted
without and with the co-localized decoys; type-I error = null pairs with p < 0.05.
Null: no interaction and an e-fold library-size gradient, three normalizations:
log1p of depth-normalized counts, the same with log total counts regressed out per gene,
and analytic Pearson residuals.

Peers on the same pairs and graph: liana 1.10 `li.mt.bivariate(local_name="morans",
global_name="morans")` (Spearman correlation of global scores, overlap of calls at
q < 0.05 from its analytic p-values) and squidpy `sq.gr.ligrec` (cluster-level
permutation test, not spatial: a pair counts as called when any sender/receiver cluster
pair has p < 0.05 after its own FDR; the planted A -> B cell says whether it finds them).

Scale (`--scale N`): N cells x 500 genes (50 non-zero per cell), 1,000 random pairs,
kNN k = 6, analytic p-values; wall time of `ligrec` and the process's peak memory.

    python benchmarks/interactions_ligrec.py            # accuracy, calibration, peers
    python benchmarks/interactions_ligrec.py --scale 200000
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import warnings

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
from _common import RESULTS_DIR, package_version, with_environment
from scipy import stats

import spatiome as sm
from spatiome.datasets.ligrec_simulation import simulate_interactions
from spatiome.interactions.ligrec import ligrec

SEEDS = (0, 1, 2)
N_CELLS = 3000
N_PERMUTATIONS = 999
#: Within-type permutations of the group test (reported at nominal p < 0.05).
N_GROUP_PERMUTATIONS = 199


def normalized(adata: anndata.AnnData, how: str) -> anndata.AnnData:
    adata = adata.copy()
    if how == "pearson":
        sm.pp.normalize(adata, method="pearson")
    else:
        sm.pp.normalize(adata)
    if how == "log1p_regressed":
        x = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X, dtype=float)
        depth = np.log(np.asarray(adata.layers["counts"].sum(axis=1)).ravel())
        design = np.column_stack([np.ones_like(depth), depth])
        coef, *_ = np.linalg.lstsq(design, x, rcond=None)
        adata.X = x - design @ coef
    sm.graph.spatial_neighbors(adata, n_neighbors=6)
    return adata


def scores(adata: anndata.AnnData) -> tuple[pd.DataFrame, pd.DataFrame]:
    truth = adata.uns["ligrec_truth"]
    table = ligrec(
        adata,
        resource=truth,
        n_permutations=N_PERMUTATIONS,
        min_expr_fraction=0.01,
        random_state=0,
        n_local=0,
        copy=True,
    )
    analytic = table.merge(truth, on=["ligand", "receptor"])
    analytic["qvalue_analytic"] = sm._core.stats.bh_adjust(analytic["pvalue_analytic"].to_numpy())
    adata = adata.copy()
    ligrec(
        adata,
        resource=truth,
        groups="cell_type",
        n_permutations=N_GROUP_PERMUTATIONS,
        min_expr_fraction=0.01,
        random_state=0,
        n_local=0,
    )
    groups = adata.uns["ligrec_groups"].merge(truth, on=["ligand", "receptor"])
    return analytic, groups


def accuracy_rows() -> list[dict]:
    rows = []
    for strength in (1.0, 3.0):
        for seed in SEEDS:
            raw = simulate_interactions(N_CELLS, interaction_strength=strength, random_state=seed)
            table, groups = scores(normalized(raw, "log1p"))
            for test, qcol in (("analytic", "qvalue_analytic"), ("permutation", "qvalue")):
                called = table[table[qcol] < 0.05]
                planted = table["kind"] == "planted"
                rows.append(
                    {
                        "scenario": f"planted strength {strength}",
                        "seed": seed,
                        "test": test,
                        "power": float((table.loc[planted, qcol] < 0.05).mean()),
                        "fdr": _fdr(called, exclude_colocalized=True),
                        "fdr_with_colocalized": _fdr(called, exclude_colocalized=False),
                        "decoys_called": int((called["kind"] == "decoy").sum()),
                        "colocalized_called": int((called["kind"] == "decoy_colocalized").sum()),
                        "type1_null_pairs": float(
                            (
                                table.loc[
                                    table["kind"] == "null",
                                    "pvalue_analytic" if test == "analytic" else "pvalue_perm",
                                ]
                                < 0.05
                            ).mean()
                        ),
                    }
                )
            ab = (groups["sender"] == "A") & (groups["receiver"] == "B")
            called = groups[groups["pvalue"] < 0.05]
            rows.append(
                {
                    "scenario": f"planted strength {strength}",
                    "seed": seed,
                    "test": "groups, within-type permutation, nominal p < 0.05",
                    "power": float(
                        (groups.loc[ab & (groups["kind"] == "planted"), "pvalue"] < 0.05).mean()
                    ),
                    "fdr": np.nan,
                    "fdr_with_colocalized": np.nan,
                    "decoys_called": int((called["kind"] == "decoy").sum()),
                    "colocalized_called": int((called["kind"] == "decoy_colocalized").sum()),
                    "type1_null_pairs": float(
                        (groups.loc[groups["kind"] == "null", "pvalue"] < 0.05).mean()
                    ),
                }
            )
    return rows


def _fdr(called: pd.DataFrame, *, exclude_colocalized: bool) -> float:
    if exclude_colocalized:
        called = called[called["kind"] != "decoy_colocalized"]
    return float((called["kind"] != "planted").mean()) if len(called) else 0.0


def null_rows() -> list[dict]:
    rows = []
    for how in ("log1p", "log1p_regressed", "pearson"):
        for seed in SEEDS:
            raw = simulate_interactions(
                N_CELLS, interaction_strength=0.0, depth_gradient=1.0, random_state=seed
            )
            table, groups = scores(normalized(raw, how))
            null = table[table["kind"] == "null"]
            rows.append(
                {
                    "normalization": how,
                    "seed": seed,
                    "type1_analytic": float((null["pvalue_analytic"] < 0.05).mean()),
                    "type1_two_sided_analytic": float(
                        (
                            2
                            * np.minimum(
                                stats.norm.sf(null["zscore"]), stats.norm.cdf(null["zscore"])
                            )
                            < 0.05
                        ).mean()
                    ),
                    "type1_permutation": float((null["pvalue_perm"] < 0.05).mean()),
                    "type1_groups": float(
                        (groups.loc[groups["kind"] == "null", "pvalue"] < 0.05).mean()
                    ),
                    "ks_analytic": float(
                        stats.kstest(null["pvalue_analytic"], "uniform").statistic
                    ),
                    "n_null_pairs": len(null),
                }
            )
    return rows


def peer_rows() -> list[dict]:
    import liana as li
    import squidpy as sq

    rows = []
    for seed in SEEDS:
        adata = normalized(simulate_interactions(N_CELLS, random_state=seed), "log1p")
        truth = adata.uns["ligrec_truth"]
        ours = ligrec(adata, resource=truth, min_expr_fraction=0.05, copy=True)
        ours["qvalue_analytic"] = sm._core.stats.bh_adjust(ours["pvalue_analytic"].to_numpy())
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lr = li.mt.bivariate(
                adata,
                local_name="morans",
                global_name="morans",
                resource=truth[["ligand", "receptor"]],
                connectivity_key="spatial_connectivities",
                n_perms=0,
                use_raw=False,
                verbose=False,
                nz_prop=0.05,
                mask_negatives=True,
            )
        liana_seconds = time.perf_counter() - start
        theirs = lr.var.reset_index(drop=True)[["ligand", "receptor", "morans", "morans_pvals"]]
        theirs["q"] = sm._core.stats.bh_adjust(theirs["morans_pvals"].to_numpy(dtype=float))
        both = ours.merge(theirs, on=["ligand", "receptor"]).merge(truth)
        ours_called = set(
            map(tuple, both.loc[both["qvalue"] < 0.05, ["ligand", "receptor"]].values)
        )
        liana_called = set(map(tuple, both.loc[both["q"] < 0.05, ["ligand", "receptor"]].values))
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sq_res = sq.gr.ligrec(
                adata,
                cluster_key="cell_type",
                interactions=truth[["ligand", "receptor"]].rename(
                    columns={"ligand": "source", "receptor": "target"}
                ),
                n_perms=1000,
                use_raw=False,
                copy=True,
                seed=0,
                threshold=0.01,
                corr_method="fdr_bh",
                show_progress_bar=False,
                n_jobs=1,
            )
        squidpy_seconds = time.perf_counter() - start
        pvals = sq_res["pvalues"]
        pvals.index = [f"{a}^{b}" for a, b in pvals.index]
        sq_any = {tuple(k.split("^")) for k in pvals.index[(pvals < 0.05).any(axis=1)]}
        ab = pvals[("A", "B")] if ("A", "B") in pvals.columns else pd.Series(dtype=float)
        planted_keys = [
            f"{a}^{b}"
            for a, b in truth.loc[truth["kind"] == "planted", ["ligand", "receptor"]].values
        ]
        rows.append(
            {
                "seed": seed,
                "n_pairs_compared": len(both),
                "spearman_score_vs_liana": float(stats.spearmanr(both["score"], both["morans"])[0]),
                "spearman_abs_log_p_vs_liana": float(
                    stats.spearmanr(both["pvalue"], both["morans_pvals"].astype(float))[0]
                ),
                "calls_ours": len(ours_called),
                "calls_liana": len(liana_called),
                "jaccard_calls_liana": len(ours_called & liana_called)
                / max(1, len(ours_called | liana_called)),
                "calls_squidpy_any_cluster_pair": len(sq_any),
                "jaccard_calls_squidpy": len(ours_called & sq_any)
                / max(1, len(ours_called | sq_any)),
                "squidpy_planted_A_to_B_called": int(
                    sum(ab.get(k, np.nan) < 0.05 for k in planted_keys if k in ab.index)
                ),
                "squidpy_colocalized_called": int(
                    sum(
                        tuple(k) in sq_any
                        for k in truth.loc[
                            truth["kind"] == "decoy_colocalized", ["ligand", "receptor"]
                        ].values
                    )
                ),
                "liana_seconds": liana_seconds,
                "squidpy_seconds": squidpy_seconds,
                "liana": package_version("liana"),
                "squidpy": package_version("squidpy"),
            }
        )
    return rows


def scale_row(n_cells: int) -> dict:
    rng = np.random.default_rng(0)
    n_genes, per_cell, n_pairs = 500, 50, 1000
    indices = rng.integers(0, n_genes, size=n_cells * per_cell).astype(np.int32)
    data = rng.gamma(1.0, 1.0, size=indices.size).astype(np.float32)
    indptr = np.arange(0, indices.size + 1, per_cell, dtype=np.int64)
    x = sp.csr_matrix((data, indices, indptr), shape=(n_cells, n_genes))
    x.sum_duplicates()
    del indices, data
    adata = anndata.AnnData(x, obsm={"spatial": rng.random((n_cells, 2)) * np.sqrt(n_cells)})
    adata.var_names = [f"G{j}" for j in range(n_genes)]
    start = time.perf_counter()
    sm.graph.spatial_neighbors(adata, n_neighbors=6)
    graph_seconds = time.perf_counter() - start
    pairs = set()
    while len(pairs) < n_pairs:
        a, b = rng.choice(n_genes, size=2, replace=False)
        pairs.add((f"G{a}", f"G{b}"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    start = time.perf_counter()
    table = ligrec(adata, resource=sorted(pairs), min_expr_fraction=0.0, n_local=10)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return {
        "n_cells": n_cells,
        "n_genes": n_genes,
        "n_pairs": len(table),
        "nnz": int(x.nnz),
        "graph_seconds": graph_seconds,
        "ligrec_seconds": seconds,
        "peak_rss_gb": peak,
        "peak_rss_before_ligrec_gb": before,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=0)
    args = parser.parse_args()
    pd.set_option("display.width", 200)
    if args.scale:
        table = pd.DataFrame([scale_row(args.scale)])
        print(table.to_string(index=False))
        with_environment(table).to_csv(
            RESULTS_DIR / f"interactions_ligrec_scale_{args.scale}.csv", index=False
        )
        return
    accuracy = pd.DataFrame(accuracy_rows())
    print(
        accuracy.groupby(["scenario", "test"])
        .mean(numeric_only=True)
        .drop(columns="seed")
        .round(3)
        .to_string()
    )
    null = pd.DataFrame(null_rows())
    print(
        null.groupby("normalization")
        .mean(numeric_only=True)
        .drop(columns="seed")
        .round(3)
        .to_string()
    )
    peers = pd.DataFrame(peer_rows())
    print(peers.drop(columns=["liana", "squidpy"]).round(3).to_string(index=False))
    with_environment(accuracy).to_csv(RESULTS_DIR / "interactions_ligrec_accuracy.csv", index=False)
    with_environment(null).to_csv(RESULTS_DIR / "interactions_ligrec_null.csv", index=False)
    with_environment(peers).to_csv(RESULTS_DIR / "interactions_ligrec_peers.csv", index=False)


if __name__ == "__main__":
    sys.exit(main())
