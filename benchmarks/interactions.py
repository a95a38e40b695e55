"""Ligand-receptor analysis (`interactions.ligrec`): accuracy, calibration, peers, scale.

Accuracy: tissues from `datasets.ligrec_simulation.simulate_interactions` (3,000 cells,
kNN graph k = 6) with planted pairs (ligand in type A and receptor in type B, raised only
where A and B cells touch), decoys (same types, constant expression, types apart),
co-localized decoys (interspersed types C and D, constant expression) and null pairs.
Power = planted pairs with q < 0.05; observed FDR = non-planted among the calls, counted
without and with the co-localized decoys. Every tissue is normalized as the pipeline does
(`sm.pp.normalize`: log1p of depth-normalized counts in X, raw counts in
layers["counts"]) and scored twice: `normalization="none"` (the statistic on X, the
former default) and the default (`"auto"`: Pearson residuals from the counts).

Null (type-I error at 0.05, with 95% intervals): no interaction, library size patterned
with an e-fold range, 400 null pairs per tissue x 3 tissues = 1,200 null tests per
setting. The default was chosen on the "linear" setting (gradient along x, kNN k = 6,
seeds 0-2); "radial" (kNN k = 10, seeds 10-12) and "patches" (Delaunay graph, seeds
20-22) are held out. The per-group-pair test has 25 (sender, receiver) tests per pair;
they are correlated, so its interval is from the spread of the pairs' rejection rates.

Peers on the same pairs and graph: liana 1.10 `li.mt.bivariate(local_name="morans",
global_name="morans")` (Spearman correlation of global scores, overlap of calls at
q < 0.05 from its analytic p-values) and squidpy `sq.gr.ligrec` (cluster-level
permutation test, not spatial: a pair counts as called when any sender/receiver cluster
pair has p < 0.05 after its own FDR; the planted A -> B cell says whether it finds them).

Scale (`--scale N`): N cells x 500 genes (counts, 50 non-zero per cell), 1,000 random
pairs, 20 groups in patches, kNN k = 6; wall time and peak memory of `ligrec` (default
normalization, with `groups`) and of `nhood_enrichment`, and, at `--peer-cells` (default
100,000), the same calls and squidpy's `gr.ligrec` and `gr.nhood_enrichment` on the same
inputs (ratios printed). The load average is recorded: other jobs share the machine.

    nice python benchmarks/interactions.py            # accuracy, calibration, peers
    nice python benchmarks/interactions.py --scale 1000000 --peer-cells 100000
"""

from __future__ import annotations

import argparse
import os
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
from scipy.spatial import cKDTree

import spatiome as sm
from spatiome.datasets.ligrec_simulation import simulate_interactions
from spatiome.interactions.ligrec import ligrec

SEEDS = (0, 1, 2)
N_CELLS = 3000
N_PERMUTATIONS = 999
#: Within-type permutations of the group test (reported at nominal p < 0.05).
N_GROUP_PERMUTATIONS = 199
#: Null pairs per simulated tissue in the calibration settings.
N_NULL_PAIRS = 400
#: (name, depth pattern, graph, seeds, role): the default was chosen on "linear" only.
NULL_SETTINGS = (
    ("linear", "linear", {"method": "knn", "n_neighbors": 6}, (0, 1, 2), "tuning"),
    ("radial", "radial", {"method": "knn", "n_neighbors": 10}, (10, 11, 12), "held out"),
    ("patches", "patches", {"method": "delaunay"}, (20, 21, 22), "held out"),
)
#: Scores: the former default (statistic on X) and the new one (Pearson residuals).
NORMALIZATIONS = {"log1p X (none)": "none", "default (Pearson from counts)": "auto"}


def prepared(adata: anndata.AnnData, graph: dict | None = None) -> anndata.AnnData:
    """As the pipeline leaves it: log-normalized X, raw counts in layers["counts"]."""
    adata = adata.copy()
    sm.pp.normalize(adata)
    sm.graph.spatial_neighbors(adata, **(graph or {"n_neighbors": 6}))
    return adata


def scores(
    adata: anndata.AnnData, normalization: str, *, groups: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    truth = adata.uns["ligrec_truth"]
    table = ligrec(
        adata,
        resource=truth,
        normalization=normalization,
        n_permutations=N_PERMUTATIONS,
        min_expr_fraction=0.01,
        random_state=0,
        n_local=0,
        copy=True,
    )
    analytic = table.merge(truth, on=["ligand", "receptor"])
    analytic["qvalue_analytic"] = sm._core.stats.bh_adjust(analytic["pvalue_analytic"].to_numpy())
    if not groups:
        return analytic, None
    adata = adata.copy()
    ligrec(
        adata,
        resource=truth,
        normalization=normalization,
        groups="cell_type",
        n_permutations=N_GROUP_PERMUTATIONS,
        min_expr_fraction=0.01,
        random_state=0,
        n_local=0,
    )
    group_table = adata.uns["ligrec_groups"].merge(truth, on=["ligand", "receptor"])
    return analytic, group_table


def accuracy_rows() -> list[dict]:
    rows = []
    for strength in (1.0, 3.0):
        for seed in SEEDS:
            adata = prepared(
                simulate_interactions(N_CELLS, interaction_strength=strength, random_state=seed)
            )
            for label, normalization in NORMALIZATIONS.items():
                table, groups = scores(adata, normalization)
                rows += _accuracy(table, groups, strength, seed, label)
    return rows


def _accuracy(
    table: pd.DataFrame, groups: pd.DataFrame, strength: float, seed: int, label: str
) -> list[dict]:
    rows = []
    planted = table["kind"] == "planted"
    for test, qcol, pcol in (
        ("analytic", "qvalue_analytic", "pvalue_analytic"),
        ("permutation", "qvalue", "pvalue_perm"),
    ):
        called = table[table[qcol] < 0.05]
        rows.append(
            {
                "scenario": f"planted strength {strength}",
                "normalization": label,
                "seed": seed,
                "test": test,
                "power": float((table.loc[planted, qcol] < 0.05).mean()),
                "fdr": _fdr(called, exclude_colocalized=True),
                "fdr_with_colocalized": _fdr(called, exclude_colocalized=False),
                "n_called": len(called),
                "decoys_called": int((called["kind"] == "decoy").sum()),
                "colocalized_called": int((called["kind"] == "decoy_colocalized").sum()),
                "type1_null_pairs": float((table.loc[table["kind"] == "null", pcol] < 0.05).mean()),
            }
        )
    ab = (groups["sender"] == "A") & (groups["receiver"] == "B")
    called = groups[groups["pvalue"] < 0.05]
    rows.append(
        {
            "scenario": f"planted strength {strength}",
            "normalization": label,
            "seed": seed,
            "test": "groups, within-type permutation, nominal p < 0.05",
            "power": float(
                (groups.loc[ab & (groups["kind"] == "planted"), "pvalue"] < 0.05).mean()
            ),
            "fdr": np.nan,
            "fdr_with_colocalized": np.nan,
            "n_called": len(called),
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
    """Rejections at 0.05 of every null test, per setting, normalization and test."""
    rows = []
    for name, pattern, graph, seeds, role in NULL_SETTINGS:
        for label, normalization in NORMALIZATIONS.items():
            if role != "tuning" and normalization == "none":
                continue  # the former default is shown failing on the tuning setting
            pooled: dict[str, list[np.ndarray]] = {"analytic": [], "permutation": []}
            per_pair_group_rates = []
            for seed in seeds:
                raw = simulate_interactions(
                    N_CELLS,
                    interaction_strength=0.0,
                    depth_gradient=1.0,
                    depth_pattern=pattern,
                    n_null_pairs=N_NULL_PAIRS,
                    random_state=seed,
                )
                table, groups = scores(prepared(raw, graph), normalization)
                null = table[table["kind"] == "null"]
                pooled["analytic"].append(null["pvalue_analytic"].to_numpy() < 0.05)
                pooled["permutation"].append(null["pvalue_perm"].to_numpy() < 0.05)
                nulls = groups[groups["kind"] == "null"]
                per_pair_group_rates.append(
                    (nulls["pvalue"] < 0.05).groupby([nulls["ligand"], nulls["receptor"]]).mean()
                )
            base = {"setting": name, "role": role, "normalization": label}
            for test, rejected in pooled.items():
                hits = np.concatenate(rejected)
                low, high = _binomial_interval(int(hits.sum()), hits.size)
                rows.append(
                    {
                        **base,
                        "test": test,
                        "type1": hits.mean(),
                        "low": low,
                        "high": high,
                        "n_tests": hits.size,
                    }
                )
            rates = pd.concat(per_pair_group_rates).to_numpy()
            half = 1.96 * rates.std(ddof=1) / np.sqrt(rates.size)
            rows.append(
                {
                    **base,
                    "test": "groups (per pair of groups)",
                    "type1": rates.mean(),
                    "low": rates.mean() - half,
                    "high": rates.mean() + half,
                    "n_tests": int(rates.size * 25),
                }
            )
            print(pd.DataFrame(rows[-3:]).round(4).to_string(index=False), flush=True)
    return rows


def _binomial_interval(successes: int, trials: int) -> tuple[float, float]:
    """Clopper-Pearson 95% interval."""
    result = stats.binomtest(successes, trials).proportion_ci(confidence_level=0.95)
    return float(result.low), float(result.high)


def peer_rows() -> list[dict]:
    import liana as li
    import squidpy as sq

    rows = []
    for seed in SEEDS:
        adata = prepared(simulate_interactions(N_CELLS, random_state=seed))
        truth = adata.uns["ligrec_truth"]
        # On X, the statistic liana computes: the two implementations must agree.
        ours = ligrec(
            adata, resource=truth, normalization="none", min_expr_fraction=0.05, copy=True
        )
        default = ligrec(adata, resource=truth, min_expr_fraction=0.05, copy=True)
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
        default_called = set(
            map(tuple, default.loc[default["qvalue"] < 0.05, ["ligand", "receptor"]].values)
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
                "spearman_p_vs_liana": float(
                    stats.spearmanr(both["pvalue"], both["morans_pvals"].astype(float))[0]
                ),
                "calls_ours_on_X": len(ours_called),
                "calls_liana": len(liana_called),
                "jaccard_calls_liana": len(ours_called & liana_called)
                / max(1, len(ours_called | liana_called)),
                "calls_ours_default": len(default_called),
                "calls_squidpy_any_cluster_pair": len(sq_any),
                "jaccard_default_calls_squidpy": len(default_called & sq_any)
                / max(1, len(default_called | sq_any)),
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


def scale_tissue(n_cells: int, n_genes: int = 500, per_cell: int = 50, seed: int = 0):
    """Counts (50 non-zero genes per cell), 20 groups in patches, kNN graph, 1,000 pairs."""
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, n_genes, size=n_cells * per_cell).astype(np.int32)
    data = (rng.geometric(0.5, size=indices.size)).astype(np.float32)
    indptr = np.arange(0, indices.size + 1, per_cell, dtype=np.int64)
    counts = sp.csr_matrix((data, indices, indptr), shape=(n_cells, n_genes))
    counts.sum_duplicates()
    del indices, data
    side = np.sqrt(n_cells)
    xy = rng.random((n_cells, 2)) * side
    centres = rng.random((max(20, n_cells // 2500), 2)) * side
    _, patch = cKDTree(centres).query(xy)
    labels = rng.integers(0, 20, centres.shape[0])[patch]
    adata = anndata.AnnData(counts, obsm={"spatial": xy})
    adata.layers["counts"] = counts  # the same object: log1p below replaces X only
    adata.var_names = [f"G{j}" for j in range(n_genes)]
    adata.obs["cell_type"] = pd.Categorical([f"T{k}" for k in labels])
    sm.pp.normalize(adata)
    sm.graph.spatial_neighbors(adata, n_neighbors=6)
    pairs = set()
    while len(pairs) < 1000:
        a, b = rng.choice(n_genes, size=2, replace=False)
        pairs.add((f"G{a}", f"G{b}"))
    return adata, sorted(pairs)


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def _cpu_seconds() -> float:
    """User + system CPU time of this process (all its threads) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def scale_rows(n_cells: int, peer_cells: int) -> list[dict]:
    rows = []
    for size in sorted({n_cells, peer_cells}, reverse=True):
        start = time.perf_counter()
        adata, pairs = scale_tissue(size)
        setup = time.perf_counter() - start
        base = {
            "n_cells": size,
            "n_genes": adata.n_vars,
            "nnz": int(adata.X.nnz),
            "setup_seconds": setup,
        }
        before = _peak_gb()
        cpu, start = _cpu_seconds(), time.perf_counter()
        table = ligrec(adata, resource=pairs, groups="cell_type", min_expr_fraction=0.0, n_local=10)
        rows.append(
            {
                **base,
                "tool": "spatiome",
                "call": "ligrec (Pearson, groups)",
                "n_pairs": len(table),
                "seconds": time.perf_counter() - start,
                "cpu_seconds": _cpu_seconds() - cpu,
                "peak_rss_gb": _peak_gb(),
                "peak_rss_before_gb": before,
                "load_average_1min": os.getloadavg()[0],
            }
        )
        print(rows[-1], flush=True)
        cpu, start = _cpu_seconds(), time.perf_counter()
        sm.interactions.nhood_enrichment(adata, "cell_type")
        rows.append(
            {
                **base,
                "tool": "spatiome",
                "call": "nhood_enrichment (analytic)",
                "seconds": time.perf_counter() - start,
                "cpu_seconds": _cpu_seconds() - cpu,
                "peak_rss_gb": _peak_gb(),
                "load_average_1min": os.getloadavg()[0],
            }
        )
        print(rows[-1], flush=True)
        if size == peer_cells:
            rows += _squidpy_rows(adata, pairs, base)
        del adata
    return rows


def _squidpy_rows(adata: anndata.AnnData, pairs: list, base: dict) -> list[dict]:
    import squidpy as sq

    rows = []
    interactions = pd.DataFrame(pairs, columns=["source", "target"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cpu, start = _cpu_seconds(), time.perf_counter()
        sq.gr.nhood_enrichment(
            adata, "cell_type", n_perms=1000, seed=0, show_progress_bar=False, n_jobs=1
        )
        rows.append(
            {
                **base,
                "tool": "squidpy",
                "call": "gr.nhood_enrichment (1,000 perms)",
                "seconds": time.perf_counter() - start,
                "cpu_seconds": _cpu_seconds() - cpu,
                "peak_rss_gb": _peak_gb(),
                "load_average_1min": os.getloadavg()[0],
            }
        )
        print(rows[-1], flush=True)
        cpu, start = _cpu_seconds(), time.perf_counter()
        sq.gr.ligrec(
            adata,
            cluster_key="cell_type",
            interactions=interactions,
            n_perms=1000,
            use_raw=False,
            copy=True,
            seed=0,
            threshold=0.0,
            show_progress_bar=False,
            n_jobs=2,
        )
        rows.append(
            {
                **base,
                "tool": "squidpy",
                "call": "gr.ligrec (1,000 perms, 2 jobs)",
                "n_pairs": len(pairs),
                "seconds": time.perf_counter() - start,
                "cpu_seconds": _cpu_seconds() - cpu,
                "peak_rss_gb": _peak_gb(),
                "load_average_1min": os.getloadavg()[0],
            }
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=0)
    parser.add_argument("--peer-cells", type=int, default=100_000)
    parser.add_argument("--only", choices=("accuracy", "null", "peers"), default=None)
    args = parser.parse_args()
    pd.set_option("display.width", 200)
    if args.scale:
        table = pd.DataFrame(scale_rows(args.scale, args.peer_cells))
        ours = table[table["tool"] == "spatiome"].set_index(["n_cells", "call"])["seconds"]
        peers = table[table["tool"] == "squidpy"]
        for row in peers.itertuples():
            mine = (
                "ligrec (Pearson, groups)"
                if "ligrec" in row.call
                else ("nhood_enrichment (analytic)")
            )
            print(
                f"{row.call} at {row.n_cells:,}: {row.seconds / ours[(row.n_cells, mine)]:.1f}x "
                f"the time of spatiome {mine}"
            )
        print(table.round(3).to_string(index=False))
        with_environment(table).to_csv(
            RESULTS_DIR / f"interactions_scale_{args.scale}.csv", index=False
        )
        return
    if args.only in (None, "accuracy"):
        accuracy = pd.DataFrame(accuracy_rows())
        print(
            accuracy.groupby(["scenario", "normalization", "test"])
            .mean(numeric_only=True)
            .drop(columns="seed")
            .round(3)
            .to_string()
        )
        with_environment(accuracy).to_csv(RESULTS_DIR / "interactions_accuracy.csv", index=False)
    if args.only in (None, "null"):
        null = pd.DataFrame(null_rows())
        print(null.round(4).to_string(index=False))
        with_environment(null).to_csv(RESULTS_DIR / "interactions_null.csv", index=False)
    if args.only in (None, "peers"):
        peers = pd.DataFrame(peer_rows())
        print(peers.drop(columns=["liana", "squidpy"]).round(3).to_string(index=False))
        with_environment(peers).to_csv(RESULTS_DIR / "interactions_peers.csv", index=False)


if __name__ == "__main__":
    sys.exit(main())
