"""Spatial domains across sections: one set of defaults on every DLPFC section and the bulb.

Every domain method runs with ONE shared set of defaults (nothing is tuned to a section) on

- the three DLPFC Visium sections ``dlpfc_151673``, ``dlpfc_151674``, ``dlpfc_151675``
  (7 manual layers; unlabelled spots are left out of the scores),
- the mouse olfactory bulb ``mouse_ob_rep11`` (262 ST spots, 5 MERINGUE layers),
- three simulated layered tissues (``simulate_tissue``, 3,000 spots x 1,000 genes,
  5 layers, data seeds 0-2; ``sim_layers_<seed>``),

with the true number of domains. ARI and NMI per (method, dataset, seed), seconds and the
peak resident memory of the child process above the loaded data.

Each (method, dataset) runs in a fresh Python process that loops over its seeds and prints
one line per seed; the parent appends each row to the CSV as soon as it arrives and skips
rows already there, so an interrupted run resumes where it stopped and partial runs count.
The schedule goes breadth first (two seeds of every cheap method, then one graph-network
seed per dataset, then the other seeds), so a short run still covers every section.

``--loso`` runs the leave-one-section-out selection of :func:`spatiome.domains.cluster`'s
defaults instead (see :func:`loso_table`), writing ``domains_sections_loso.csv``;
``--signatures`` clusters each DLPFC section with layer-marker scores built from another
section as ``extra_features`` (``domains_sections_signatures.csv``); ``--consensus`` runs
``cluster`` over several seeds and takes a majority vote (``domains_sections_consensus.csv``).

Run with a Python that has spatiome::

    python benchmarks/domains_sections.py [--seeds 5] [--gnn-seeds 2] [--methods a,b]
    python benchmarks/domains_sections.py --loso [--seeds 3]
    python benchmarks/domains_sections.py --signatures [--seeds 2]
    python benchmarks/domains_sections.py --consensus [--seeds 5]
    python benchmarks/domains_sections.py --summary

Prints the tables and writes ``benchmarks/results/domains_sections.csv``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

import spatiome as sm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, environment_line, machine, package_version  # noqa: E402

RESULTS = RESULTS_DIR / "domains_sections.csv"
LOSO_RESULTS = RESULTS_DIR / "domains_sections_loso.csv"
SIGNATURE_RESULTS = RESULTS_DIR / "domains_sections_signatures.csv"
SHARED = Path(
    os.environ.get("SPATIOME_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
DLPFC = ("dlpfc_151673", "dlpfc_151674", "dlpfc_151675")
REAL = (*DLPFC, "mouse_ob_rep11")
SIMULATED = ("sim_layers_0", "sim_layers_1", "sim_layers_2")
DATASETS = (*REAL, *SIMULATED)
KEY = ("method", "dataset", "seed")


def load(dataset: str) -> tuple[AnnData, str, int]:
    """A dataset by name: ``(adata, label column, number of domains)``."""
    if dataset.startswith("sim_layers_"):
        adata = sm.datasets.simulate_tissue(
            n_spots=3000, n_genes=1000, n_domains=5, domains="layers",
            random_state=int(dataset.rsplit("_", 1)[1]),
        )  # fmt: skip
        return adata, "domain", 5
    label = "layer" if dataset == "mouse_ob_rep11" else "layer_guess"
    adata = sm.datasets.load(dataset, data_dir=SHARED, download=False)
    return adata, label, int(adata.obs[label].dropna().nunique())


def score(truth: pd.Series, labels) -> tuple[float, float]:
    """ARI and NMI on the labelled spots."""
    keep = truth.notna().to_numpy()
    truth_kept = truth[keep].astype(str).to_numpy()
    labels_kept = np.asarray(labels)[keep].astype(str)
    return (
        float(adjusted_rand_score(truth_kept, labels_kept)),
        float(normalized_mutual_info_score(truth_kept, labels_kept)),
    )


def _cluster(**options) -> Callable:
    def run(adata: AnnData, n_domains: int, seed: int) -> np.ndarray:
        adata = adata.copy()
        sm.pp.normalize(adata)
        sm.domains.cluster(adata, n_domains, random_state=seed, **options)
        return adata.obs["spatial_domain"].to_numpy()

    return run


def _bison(adata: AnnData, n_domains: int, seed: int) -> np.ndarray:
    adata = adata.copy()
    sm.domains.bison(adata, n_domains, 4, random_state=seed)
    return adata.obs["bison"].to_numpy()


def _gnn(adata: AnnData, n_domains: int, seed: int) -> np.ndarray:
    adata = adata.copy()
    sm.domains.gnn(adata, n_domains, random_state=seed)
    return adata.obs["gnn"].to_numpy()


METHODS: dict[str, Callable] = {
    "cluster_gmm": _cluster(method="gmm", refine=0.0),
    "cluster_kmeans": _cluster(method="kmeans", refine=0.0),
    "cluster_leiden": _cluster(method="leiden", refine=0.0),
    "cluster_ward": _cluster(method="hierarchical", refine=0.0),
    "expression_kmeans": _cluster(method="kmeans", neighbourhood_lambda=0.0, refine=0.0),
    "bison": _bison,
    "gnn": _gnn,
}
CHEAP = tuple(m for m in METHODS if m != "gnn")


def _rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1e6
    return float("nan")


def _child(method: str, dataset: str, seeds: list[int]) -> None:
    """Child process: load once, run ``method`` for each seed, one JSON line per seed."""
    warnings.simplefilter("ignore")
    adata, label, n_domains = load(dataset)
    baseline = _rss_gb()
    for seed in seeds:
        start = time.perf_counter()
        try:
            labels, error = METHODS[method](adata, n_domains, seed), ""
        except Exception as exc:  # reported in the table, the benchmark goes on
            labels, error = None, f"{type(exc).__name__}: {exc}"
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        ari, nmi = (float("nan"),) * 2 if labels is None else score(adata.obs[label], labels)
        print("RESULT " + json.dumps({
            "method": method, "dataset": dataset, "seed": seed, "n_spots": adata.n_obs,
            "n_genes": adata.n_vars, "n_domains": n_domains, "ari": ari, "nmi": nmi,
            "seconds": seconds, "peak_rss_added_gb": max(peak - baseline, 0.0), "error": error,
        }), flush=True)  # fmt: skip


def _done(path: Path) -> set[tuple]:
    if not path.exists():
        return set()
    table = pd.read_csv(path)
    return set(zip(table["method"], table["dataset"], table["seed"].astype(int), strict=True))


def _append(path: Path, row: dict) -> None:
    """Append one row (with machine and versions) to the CSV, writing the header once."""
    row = {**row, "load_average_1min": os.getloadavg()[0], "machine": machine(),
           "spatiome": package_version("spatiome"), "torch": package_version("torch")}  # fmt: skip
    frame = pd.DataFrame([row])
    frame.to_csv(path, mode="a", header=not path.exists(), index=False)


def schedule(
    methods: list[str], seeds: int, gnn_seeds: int, datasets: tuple[str, ...] = DATASETS
) -> list[tuple[str, str, list]]:
    """Breadth first: one seed of the cheap methods, one gnn seed, then the rest."""
    cheap = [m for m in methods if m != "gnn"]
    plan = [(m, d, [0]) for d in datasets for m in cheap]
    if "gnn" in methods:
        plan += [("gnn", d, [0]) for d in datasets]
    plan += [(m, d, list(range(1, seeds))) for d in datasets for m in cheap]
    if "gnn" in methods:
        plan += [("gnn", d, list(range(1, gnn_seeds))) for d in datasets]
    return [(m, d, s) for m, d, s in plan if s]


def run_methods(
    methods: list[str], seeds: int, gnn_seeds: int, out: Path, datasets: tuple[str, ...]
) -> None:
    for method, dataset, wanted in schedule(methods, seeds, gnn_seeds, datasets):
        todo = [s for s in wanted if (method, dataset, s) not in _done(out)]
        if not todo:
            continue
        command = [sys.executable, __file__, "--child", method, dataset,
                   ",".join(map(str, todo))]  # fmt: skip
        with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as child:
            for line in child.stdout:
                if line.startswith("RESULT "):
                    row = json.loads(line[7:])
                    _append(out, row)
                    print(f"  {dataset:>15} {method:>18} seed {row['seed']}: ARI "
                          f"{row['ari']:.3f} NMI {row['nmi']:.3f} {row['seconds']:7.1f} s "
                          f"{row['peak_rss_added_gb']:5.2f} GB {row['error']}",
                          flush=True)  # fmt: skip


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per method and dataset: mean, min, seed SD of the ARI, NMI, seconds, memory."""
    per = table.groupby(["method", "dataset"]).agg(
        ari_mean=("ari", "mean"), ari_min=("ari", "min"), ari_sd=("ari", "std"),
        nmi_mean=("nmi", "mean"), seconds=("seconds", "median"),
        peak_gb=("peak_rss_added_gb", "max"), seeds=("ari", "size"),
    )  # fmt: skip
    return per


def dlpfc_overview(table: pd.DataFrame) -> pd.DataFrame:
    """Per method over the DLPFC sections: mean of section means, worst section, worst SD."""
    per = summary(table).reset_index()
    dl = per[per["dataset"].isin(DLPFC)]
    return dl.groupby("method").agg(
        dlpfc_mean=("ari_mean", "mean"), dlpfc_worst_section=("ari_mean", "min"),
        dlpfc_worst_sd=("ari_sd", "max"), seconds=("seconds", "max"),
        sections=("dataset", "nunique"),
    ).sort_values("dlpfc_mean", ascending=False)  # fmt: skip


# ---------------------------------------------------------------------------------------
# Leave-one-section-out selection of cluster's defaults.

GRID = {
    "neighbourhood_lambda": (0.5, 0.8),
    "n_spatial_neighbors": (15, 40),
    "n_top_genes": (2000, 3000),
    "method": ("gmm", "kmeans"),
    "refine": (0.0, 5.0, 20.0),
}
SELECTION = ("dlpfc_151673", "dlpfc_151674", "dlpfc_151675", "mouse_ob_rep11")


def _loso_rows(dataset: str, seeds: int, out: Path) -> None:
    """Every grid candidate on one dataset, appended to ``out`` per feature setting and seed.

    Features are computed once per (feature setting, seed); all seeds' first pass goes
    before the second, so an interrupted run still covers the whole grid.
    """
    from spatiome.domains.cluster import _domain_features, potts_refine

    warnings.simplefilter("ignore")
    done = set()
    if out.exists():
        old = pd.read_csv(out)
        done = set(zip(old["dataset"], old["neighbourhood_lambda"], old["n_spatial_neighbors"],
                       old["n_top_genes"], old["seed"], strict=True))  # fmt: skip
    adata, label, n_domains = load(dataset)
    sm.pp.normalize(adata)
    coords = adata.obsm["spatial"]
    feature_grid = list(itertools.product(
        GRID["neighbourhood_lambda"], GRID["n_spatial_neighbors"], GRID["n_top_genes"]
    ))  # fmt: skip
    for seed in range(seeds):
        for lam, n_neighbours, n_genes in feature_grid:
            if (dataset, lam, n_neighbours, n_genes, seed) in done:
                continue
            rows = []
            start = time.perf_counter()
            features, _ = _domain_features(
                adata, neighbourhood_lambda=lam, n_comps=20, n_top_genes=n_genes,
                n_spatial_neighbors=n_neighbours, spatial_key="spatial", random_state=seed,
                caller="benchmark",
            )  # fmt: skip
            feature_seconds = time.perf_counter() - start
            for flavour in GRID["method"]:
                shell = AnnData(np.zeros((adata.n_obs, 1)))
                shell.obsm["spatial"] = coords
                shell.obsm["f"] = features
                start = time.perf_counter()
                sm.domains.cluster(shell, n_domains, method=flavour, use_rep="f",
                                   random_state=seed)  # fmt: skip
                cluster_seconds = time.perf_counter() - start
                codes = shell.obs["spatial_domain"].cat.codes.to_numpy().astype(np.int64)
                for strength in GRID["refine"]:
                    start = time.perf_counter()
                    labels = potts_refine(features, codes, coords, strength) if strength else codes
                    ari, nmi = score(adata.obs[label], labels)
                    rows.append({
                        "dataset": dataset, "neighbourhood_lambda": lam,
                        "n_spatial_neighbors": n_neighbours,
                        "n_top_genes": n_genes, "method": flavour, "refine": strength,
                        "seed": seed, "ari": ari, "nmi": nmi,
                        "seconds": feature_seconds + cluster_seconds
                        + time.perf_counter() - start,
                    })  # fmt: skip
            pd.DataFrame(rows).to_csv(out, mode="a", header=not out.exists(), index=False)
            print(f"  {dataset} lambda {lam} k {n_neighbours} hvg {n_genes} seed {seed}: best "
                  f"ARI {max(r['ari'] for r in rows):.3f}", flush=True)  # fmt: skip


CANDIDATE = ["neighbourhood_lambda", "n_spatial_neighbors", "n_top_genes", "method", "refine"]


def loso_table(rows: pd.DataFrame) -> pd.DataFrame:
    """For each held-out DLPFC section: the candidate with the best mean ARI on the others.

    Selection score: the mean over the other two DLPFC sections and the bulb of each
    dataset's seed-mean ARI. Reported: the chosen candidate's held-out ARI, the current
    default's held-out ARI, and the best candidate in hindsight (an upper bound).
    """
    per = rows.groupby(["dataset", *CANDIDATE])["ari"].agg(["mean", "std"]).reset_index()
    wide = per.pivot_table(index=CANDIDATE, columns="dataset", values="mean")
    default = (0.8, 15, 2000, "gmm", 0.0)
    out = []
    for held in DLPFC:
        others = [d for d in SELECTION if d != held and d in wide.columns]
        if held not in wide.columns:
            continue
        chosen = wide[others].mean(axis=1).idxmax()
        out.append({
            "held_out": held, **dict(zip(CANDIDATE, chosen, strict=True)),
            "selection_score": float(wide[others].mean(axis=1).max()),
            "held_out_ari": float(wide.loc[chosen, held]),
            "default_held_out_ari": float(wide.loc[default, held]) if default in wide.index
            else float("nan"),
            "oracle_held_out_ari": float(wide[held].max()),
        })  # fmt: skip
    return pd.DataFrame(out)


def loso(seeds: int, out: Path, datasets: list[str]) -> None:
    for dataset in datasets:
        _loso_rows(dataset, seeds, out)
    table = loso_table(pd.read_csv(out))
    print(table.round(3).to_string(index=False))


# ---------------------------------------------------------------------------------------
# Layer-marker signatures from ANOTHER section as cluster(extra_features=...).

REFERENCE = {"dlpfc_151673": "dlpfc_151674", "dlpfc_151674": "dlpfc_151675",
             "dlpfc_151675": "dlpfc_151673"}  # fmt: skip
N_MARKERS = 300


def layer_scores(reference: AnnData, target: AnnData, label: str) -> np.ndarray:
    """Per target spot, the correlation with each layer profile of the reference section.

    Profiles: mean log-normalized expression of the reference's labelled spots per layer,
    on the ``N_MARKERS`` shared genes whose layer means vary most, centred over layers;
    target spots are centred over spots. Only the reference's labels are read.
    """
    shared = reference.var_names.intersection(target.var_names)
    kept = reference.obs[label].notna().to_numpy()
    layers = reference.obs[label][kept].astype(str).to_numpy()
    ref = _dense(reference[kept, shared].X)
    profiles = np.vstack([ref[layers == name].mean(axis=0) for name in np.unique(layers)])
    markers = np.argsort(-profiles.var(axis=0))[:N_MARKERS]
    profiles = profiles[:, markers] - profiles[:, markers].mean(axis=0)
    spots = _dense(target[:, shared].X)[:, markers]
    spots -= spots.mean(axis=0)
    spots /= np.linalg.norm(spots, axis=1, keepdims=True) + 1e-12
    profiles /= np.linalg.norm(profiles, axis=1, keepdims=True)
    return spots @ profiles.T


def _dense(matrix) -> np.ndarray:
    return np.asarray(matrix.toarray() if hasattr(matrix, "toarray") else matrix, dtype=float)


def signatures(seeds: int, out: Path) -> None:
    """cluster with and without reference-layer scores on each DLPFC section."""
    warnings.simplefilter("ignore")
    rows = []
    for target_name in DLPFC:
        target, label, n_domains = load(target_name)
        reference, ref_label, _ = load(REFERENCE[target_name])
        sm.pp.normalize(target)
        sm.pp.normalize(reference)
        scores = layer_scores(reference, target, ref_label)
        for seed in range(seeds):
            sm.domains.cluster(target, n_domains, random_state=seed)
            base = target.obsm["X_spatial_domain"].copy()
            for flavour, weight in itertools.product(("gmm", "kmeans"), (0.0, 0.5, 2.0)):
                shell = AnnData(np.zeros((target.n_obs, 1)))
                shell.obsm["spatial"] = target.obsm["spatial"]
                shell.obsm["f"] = base
                extra = {"extra_features": scores, "extra_weight": weight} if weight else {}
                start = time.perf_counter()
                sm.domains.cluster(shell, n_domains, method=flavour, use_rep="f",
                                   random_state=seed, **extra)  # fmt: skip
                ari, nmi = score(target.obs[label], shell.obs["spatial_domain"].to_numpy())
                rows.append({"dataset": target_name, "reference": REFERENCE[target_name],
                             "method": flavour, "extra_weight": weight, "seed": seed,
                             "ari": ari, "nmi": nmi,
                             "seconds": time.perf_counter() - start})  # fmt: skip
                print(f"  {target_name} <- {REFERENCE[target_name]} {flavour} weight {weight} "
                      f"seed {seed}: ARI {ari:.3f}", flush=True)  # fmt: skip
    table = pd.DataFrame(rows)
    table.to_csv(out, index=False)
    print(table.groupby(["dataset", "method", "extra_weight"])["ari"]
          .agg(["mean", "std"]).round(3).to_string())  # fmt: skip


# ---------------------------------------------------------------------------------------
# Seed stability of cluster and a majority-vote consensus over seeds.

CONSENSUS_RESULTS = RESULTS_DIR / "domains_sections_consensus.csv"


def _aligned_votes(runs: list[np.ndarray], n_domains: int) -> np.ndarray:
    """Per spot, the votes of every run for each domain of the first run (Hungarian match)."""
    from scipy.optimize import linear_sum_assignment

    reference = runs[0]
    votes = np.zeros((reference.size, n_domains))
    for labels in runs:
        overlap = np.zeros((n_domains, n_domains))
        np.add.at(overlap, (labels, reference), 1)
        rows, cols = linear_sum_assignment(-overlap)
        mapping = np.empty(n_domains, dtype=np.int64)
        mapping[rows] = cols
        votes[np.arange(reference.size), mapping[labels]] += 1
    return votes


def consensus(seeds: int, out: Path) -> None:
    """ARI of each seed and of the majority vote over ``seeds`` runs of cluster."""
    warnings.simplefilter("ignore")
    rows = []
    for name in ("dlpfc_151675", "mouse_ob_rep11", "dlpfc_151674"):
        adata, label, n_domains = load(name)
        sm.pp.normalize(adata)
        for n_genes in (3000, 2000):
            runs, seconds = [], []
            for seed in range(seeds):
                start = time.perf_counter()
                result = sm.domains.cluster(adata, n_domains, n_top_genes=n_genes, refine=5.0,
                                            random_state=seed, copy=True)  # fmt: skip
                seconds.append(time.perf_counter() - start)
                runs.append(result.obs["spatial_domain"].cat.codes.to_numpy())
            voted = _aligned_votes(runs, n_domains).argmax(axis=1)
            aris = [score(adata.obs[label], labels)[0] for labels in runs]
            rows.append({"dataset": name, "n_top_genes": n_genes, "refine": 5.0,
                         "seed_aris": " ".join(f"{a:.3f}" for a in aris),
                         "mean": np.mean(aris), "sd": np.std(aris, ddof=1),
                         "consensus": score(adata.obs[label], voted)[0],
                         "seconds_per_seed": float(np.median(seconds))})  # fmt: skip
            print(rows[-1], flush=True)
    pd.DataFrame(rows).to_csv(out, index=False)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], [int(s) for s in sys.argv[4].split(",")])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds of the cheap methods")
    parser.add_argument("--gnn-seeds", type=int, default=2)
    parser.add_argument("--methods", default=None, help="comma-separated subset")
    parser.add_argument("--loso", action="store_true")
    parser.add_argument("--signatures", action="store_true")
    parser.add_argument("--consensus", action="store_true")
    parser.add_argument("--datasets", default=None, help="comma-separated subset")
    parser.add_argument("--summary", action="store_true", help="only print the tables")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    print(environment_line())
    if args.loso:
        datasets = args.datasets.split(",") if args.datasets else list(SELECTION)
        loso(args.seeds, args.out or LOSO_RESULTS, datasets)
        return
    if args.consensus:
        consensus(args.seeds, args.out or CONSENSUS_RESULTS)
        return
    if args.signatures:
        signatures(args.seeds, args.out or SIGNATURE_RESULTS)
        return
    out = args.out or RESULTS
    methods = args.methods.split(",") if args.methods else list(METHODS)
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; have {list(METHODS)}")
    if not args.summary:
        datasets = tuple(args.datasets.split(",")) if args.datasets else DATASETS
        run_methods(methods, args.seeds, args.gnn_seeds, out, datasets)
    table = pd.read_csv(out)
    print(summary(table).round(3).to_string())
    print(dlpfc_overview(table).round(3).to_string())


if __name__ == "__main__":
    main()
