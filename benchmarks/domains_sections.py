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
The schedule goes breadth first (one seed of every cheap method, then one graph-network
seed per dataset, then the other seeds), so a short run still covers every section.

``--loso`` runs the leave-one-section-out selection of :func:`spatiome.domains.cluster`'s
defaults (see :func:`loso_table`; ``domains_sections_loso.csv``); ``--loso-n-init`` the
same for the mixture's starts on the four labelled sections (:func:`n_init_loso_table`;
``domains_sections_loso_n_init.csv``, runs in ``domains_sections_loso_n_init_runs.csv``);
``--signatures``
clusters each DLPFC section (``cluster`` and ``gnn``) with layer-marker scores built from
another section as ``extra_features`` (``domains_sections_signatures.csv``);
``--consensus`` runs ``cluster`` over several seeds, with 10 mixture starts and with one,
and takes a majority vote (``domains_sections_consensus.csv``); ``--scale N`` times
``cluster``, ``cnn`` and three ``gnn`` epochs on N simulated spots
(``domains_sections_scale.csv``).

Run with a Python that has spatiome::

    python benchmarks/domains_sections.py [--seeds 5] [--gnn-seeds 2] [--methods a,b]
    python benchmarks/domains_sections.py --loso [--seeds 3]
    python benchmarks/domains_sections.py --loso-n-init [--seeds 3]
    python benchmarks/domains_sections.py --signatures [--seeds 2]
    python benchmarks/domains_sections.py --consensus [--seeds 5]
    python benchmarks/domains_sections.py --scale 100000
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

import spatiome as sm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, environment_line, machine, package_version  # noqa: E402
from _common import domain_scores as score  # noqa: E402

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


def _cnn(adata: AnnData, n_domains: int, seed: int) -> np.ndarray:
    adata = adata.copy()
    sm.pp.normalize(adata)
    sm.domains.cnn(adata, n_domains, random_state=seed)
    return adata.obs["cnn"].to_numpy()


def _gnn(**options) -> Callable:
    def run(adata: AnnData, n_domains: int, seed: int) -> np.ndarray:
        adata = adata.copy()
        sm.domains.gnn(adata, n_domains, random_state=seed, **options)
        return adata.obs["gnn"].to_numpy()

    return run


METHODS: dict[str, Callable] = {
    "cluster_gmm": _cluster(),
    "cluster_gmm_full": _cluster(covariance_type="full"),
    "cluster_kmeans": _cluster(method="kmeans"),
    "cluster_leiden": _cluster(method="leiden"),
    "cluster_ward": _cluster(method="hierarchical"),
    "expression_gmm": _cluster(neighbourhood_lambda=0.0, refine=0.0),
    "bison": _bison,
    "cnn": _cnn,
    "gnn": _gnn(),
    "gnn_contrastive": _gnn(objective="contrastive"),
}
SLOW = ("gnn", "gnn_contrastive")
CHEAP = tuple(m for m in METHODS if m not in SLOW)


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
    cheap = [m for m in methods if m not in SLOW]
    slow = [m for m in methods if m in SLOW]
    plan = [(m, d, [0]) for d in datasets for m in cheap]
    plan += [(m, d, [0]) for m in slow for d in datasets]
    plan += [(m, d, list(range(1, seeds))) for d in datasets for m in cheap]
    plan += [(m, d, list(range(1, gnn_seeds))) for m in slow for d in datasets]
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


TITLES = {
    "cluster_gmm": "`cluster` (default: shared-covariance mixture, Potts 5)",
    "cluster_gmm_full": '`cluster(covariance_type="full")`',
    "cluster_kmeans": '`cluster(method="kmeans")`',
    "cluster_leiden": '`cluster(method="leiden")`',
    "cluster_ward": '`cluster(method="hierarchical")`',
    "expression_gmm": "expression alone (lambda 0, no Potts)",
    "bison": "`bison` (4 gene groups)",
    "cnn": "`cnn` (300 epochs)",
    "gnn": "`gnn` (reconstruction, 500 epochs)",
    "gnn_contrastive": '`gnn(objective="contrastive")` (600 epochs)',
}


def markdown_table(table: pd.DataFrame) -> str:
    """The docs' table: ARI mean +- seed SD (seeds) per section, overviews, cost."""
    per = summary(table)
    lines = [
        "| method | 151673 | 151674 | 151675 | DLPFC mean / min | bulb | simulated | "
        "NMI DLPFC | s per DLPFC run | peak GB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(method: str, dataset: str) -> str:
        if (method, dataset) not in per.index:
            return "-"
        row = per.loc[(method, dataset)]
        sd = "" if row["seeds"] < 2 else f" ±{row['ari_sd']:.3f}"
        return f"{row['ari_mean']:.3f}{sd} ({int(row['seeds'])})"

    for method in [m for m in TITLES if m in per.index.get_level_values(0)]:
        sub = per.loc[method]
        dl = sub[sub.index.isin(DLPFC)]
        sims = sub[sub.index.isin(SIMULATED)]
        overview = (
            f"{dl['ari_mean'].mean():.3f} / {dl['ari_mean'].min():.3f}" if len(dl) == 3 else "-"
        )
        sim = f"{sims['ari_mean'].mean():.3f} ({len(sims)})" if len(sims) else "-"
        lines.append(
            f"| {TITLES[method]} | {cell(method, DLPFC[0])} | {cell(method, DLPFC[1])} | "
            f"{cell(method, DLPFC[2])} | {overview} | {cell(method, 'mouse_ob_rep11')} | {sim} | "
            f"{dl['nmi_mean'].mean():.3f} | {dl['seconds'].median():.0f} | "
            f"{sub['peak_gb'].max():.2f} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Leave-one-section-out selection of cluster's defaults.

GRID = {
    "neighbourhood_lambda": (0.5, 0.8),
    "smoothing_steps": (1, 2, 3),
    "target_sum": ("1e4", "median"),
    "clusterer": ("gmm_tied", "kmeans"),
    "refine": (0.0, 5.0),
}
FEATURES = ("neighbourhood_lambda", "smoothing_steps", "target_sum")
CANDIDATE = [*FEATURES, "clusterer", "refine"]
DEFAULT = (0.5, 3, "1e4", "gmm_tied", 5.0)
CLUSTERERS = {
    "gmm_tied": {"method": "gmm", "covariance_type": "tied"},
    "kmeans": {"method": "kmeans"},
}
SELECTION = ("dlpfc_151673", "dlpfc_151674", "dlpfc_151675", "mouse_ob_rep11")


def _loso_rows(dataset: str, seeds: int, out: Path) -> None:
    """Every grid candidate on one dataset, appended to ``out`` per feature setting and seed.

    Features are computed once per (feature setting, seed) with :func:`cluster`'s own
    feature code; all seeds' first pass goes before the second, so an interrupted run
    still covers the whole grid.
    """
    from spatiome.domains.cluster import _domain_features, potts_refine

    warnings.simplefilter("ignore")
    done = set()
    if out.exists():
        old = pd.read_csv(out)
        done = set(zip(old["dataset"], *(old[name] for name in FEATURES), old["seed"],
                       strict=True))  # fmt: skip
    adata, label, n_domains = load(dataset)
    sm.pp.normalize(adata)
    coords = adata.obsm["spatial"]
    for seed in range(seeds):
        for lam, steps, target in itertools.product(*(GRID[name] for name in FEATURES)):
            if (dataset, lam, steps, target, seed) in done:
                continue
            rows = []
            start = time.perf_counter()
            features, _ = _domain_features(
                adata, neighbourhood_lambda=lam, smoothing_steps=steps,
                target_sum=None if target == "median" else float(target), n_comps=30,
                n_top_genes=3000, n_spatial_neighbors=6, spatial_key="spatial",
                random_state=seed, caller="benchmark",
            )  # fmt: skip
            feature_seconds = time.perf_counter() - start
            for name, options in CLUSTERERS.items():
                shell = AnnData(np.zeros((adata.n_obs, 1)))
                shell.obsm["spatial"] = coords
                shell.obsm["f"] = features
                start = time.perf_counter()
                sm.domains.cluster(shell, n_domains, use_rep="f", random_state=seed, **options)
                cluster_seconds = time.perf_counter() - start
                codes = shell.obs["spatial_domain"].cat.codes.to_numpy().astype(np.int64)
                for strength in GRID["refine"]:
                    start = time.perf_counter()
                    labels = potts_refine(features, codes, coords, strength) if strength else codes
                    ari, nmi = score(adata.obs[label], labels)
                    rows.append({
                        "dataset": dataset, "neighbourhood_lambda": lam,
                        "smoothing_steps": steps, "target_sum": target, "clusterer": name,
                        "refine": strength, "seed": seed, "ari": ari, "nmi": nmi,
                        "seconds": feature_seconds + cluster_seconds
                        + time.perf_counter() - start,
                    })  # fmt: skip
            pd.DataFrame(rows).to_csv(out, mode="a", header=not out.exists(), index=False)
            print(f"  {dataset} lambda {lam} steps {steps} target {target} seed {seed}: best "
                  f"ARI {max(r['ari'] for r in rows):.3f}", flush=True)  # fmt: skip


def loso_table(rows: pd.DataFrame) -> pd.DataFrame:
    """For each held-out DLPFC section: the candidate with the best mean ARI on the others.

    Selection score: the mean over the other two DLPFC sections and the bulb of each
    dataset's seed-mean ARI. Reported: the chosen candidate's held-out ARI and seed SD,
    the shipped default's held-out ARI, and the best candidate in hindsight (an upper
    bound, not a result).
    """
    rows = rows.astype({"target_sum": str})
    per = rows.groupby(["dataset", *CANDIDATE])["ari"].agg(["mean", "std"]).reset_index()
    wide = per.pivot_table(index=CANDIDATE, columns="dataset", values="mean")
    spread = per.pivot_table(index=CANDIDATE, columns="dataset", values="std")
    out = []
    for held in DLPFC:
        others = [d for d in SELECTION if d != held and d in wide.columns]
        if held not in wide.columns:
            continue
        complete = wide[[*others, held]].dropna()  # candidates run on every dataset
        selection = complete[others].mean(axis=1)
        chosen = selection.idxmax()
        out.append({
            "held_out": held, **dict(zip(CANDIDATE, chosen, strict=True)),
            "selection_score": float(selection.max()),
            "held_out_ari": float(wide.loc[chosen, held]),
            "held_out_seed_sd": float(spread.loc[chosen, held]),
            "default_held_out_ari": float(wide.loc[DEFAULT, held]) if DEFAULT in wide.index
            else float("nan"),
            "oracle_held_out_ari": float(complete[held].max()),
        })  # fmt: skip
    return pd.DataFrame(out)


def loso(seeds: int, out: Path, datasets: list[str]) -> None:
    for dataset in datasets:
        _loso_rows(dataset, seeds, out)
    table = loso_table(pd.read_csv(out))
    print(table.round(3).to_string(index=False))


# ---------------------------------------------------------------------------------------
# Leave-one-section-out choice of the mixture's starts (n_init) on the Seurat v3 genes.

N_INIT_RESULTS = RESULTS_DIR / "domains_sections_loso_n_init_runs.csv"
N_INIT_LOSO = RESULTS_DIR / "domains_sections_loso_n_init.csv"
# Candidate mixture settings of cluster(); "n_init_40" is the reference fit the labels of
# the others are compared with (agreement_with_40).
N_INIT_CANDIDATES = {
    "n_init_10": {"n_init": 10},
    "n_init_20": {"n_init": 20},
    "n_init_40": {"n_init": 40},
}


def _n_init_rows(dataset: str, seeds: int, out: Path, candidates: dict[str, dict]) -> None:
    """Each candidate of ``candidates`` once per seed on the default features, to ``out``."""
    from spatiome.domains.cluster import _domain_features

    warnings.simplefilter("ignore")
    done = set()
    if out.exists():
        old = pd.read_csv(out)
        done = set(zip(old["dataset"], old["candidate"], old["seed"], strict=True))
    adata, label, n_domains = load(dataset)
    sm.pp.normalize(adata)
    for seed in range(seeds):
        todo = [name for name in candidates if (dataset, name, seed) not in done]
        if not todo:
            continue
        start = time.perf_counter()
        features, _ = _domain_features(
            adata, neighbourhood_lambda=0.5, smoothing_steps=3, target_sum=1e4, n_comps=30,
            n_top_genes=3000, n_spatial_neighbors=6, spatial_key="spatial",
            random_state=seed, caller="benchmark",
        )  # fmt: skip
        feature_seconds = time.perf_counter() - start
        labels, rows = {}, []
        for name in todo:
            shell = AnnData(np.zeros((adata.n_obs, 1)))
            shell.obsm["spatial"] = adata.obsm["spatial"]
            shell.obsm["f"] = features
            start = time.perf_counter()
            sm.domains.cluster(shell, n_domains, use_rep="f", random_state=seed, **candidates[name])
            seconds = time.perf_counter() - start
            labels[name] = shell.obs["spatial_domain"].to_numpy()
            ari, nmi = score(adata.obs[label], labels[name])
            rows.append({
                "dataset": dataset, "candidate": name, "seed": seed, "ari": ari, "nmi": nmi,
                "bic": shell.uns["spatiome"]["spatial_domain"]["clusterer"]["bic"],
                "cluster_seconds": seconds, "feature_seconds": feature_seconds,
                "load_average": os.getloadavg()[0],
            })  # fmt: skip
        for row in rows:
            reference = labels.get("n_init_40")
            row["agreement_with_40"] = (
                float("nan") if reference is None
                else score(pd.Series(reference), labels[row["candidate"]])[0]
            )  # fmt: skip
        pd.DataFrame(rows).to_csv(out, mode="a", header=not out.exists(), index=False)
        print(f"  {dataset} seed {seed}: " + ", ".join(
            f"{r['candidate']} ARI {r['ari']:.3f} ({r['cluster_seconds']:.1f} s)" for r in rows
        ), flush=True)  # fmt: skip


def n_init_loso_table(rows: pd.DataFrame) -> pd.DataFrame:
    """For each held-out section: the candidate with the best mean ARI on the other three.

    Each dataset's ARI is first averaged over seeds; ties (within 0.005) go to the cheaper
    candidate (fewer cluster seconds on the others). Reported: the chosen candidate, its
    held-out seed-mean ARI and seed SD, and every candidate's held-out ARI beside it.
    """
    per = (
        rows.groupby(["dataset", "candidate"])
        .agg(ari=("ari", "mean"), sd=("ari", "std"), seconds=("cluster_seconds", "mean"))
        .reset_index()
    )
    wide = per.pivot_table(index="candidate", columns="dataset", values="ari")
    spread = per.pivot_table(index="candidate", columns="dataset", values="sd")
    cost = per.pivot_table(index="candidate", columns="dataset", values="seconds")
    out = []
    for held in SELECTION:
        others = [d for d in SELECTION if d != held and d in wide.columns]
        if held not in wide.columns:
            continue
        complete = wide[[*others, held]].dropna()
        selection = complete[others].mean(axis=1)
        near = selection[selection >= selection.max() - 0.005].index
        chosen = min(near, key=lambda name: cost.loc[name, others].sum())
        out.append({
            "held_out": held, "chosen": chosen,
            "selection_score": float(selection[chosen]),
            "held_out_ari": float(wide.loc[chosen, held]),
            "held_out_seed_sd": float(spread.loc[chosen, held]),
            **{f"held_out_ari_{name}": float(wide.loc[name, held]) for name in complete.index},
        })  # fmt: skip
    return pd.DataFrame(out)


def n_init_loso(seeds: int, datasets: list[str]) -> None:
    for dataset in datasets:
        _n_init_rows(dataset, seeds, N_INIT_RESULTS, N_INIT_CANDIDATES)
    rows = pd.read_csv(N_INIT_RESULTS)
    table = n_init_loso_table(rows)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(rows.groupby(["dataset", "candidate"])[
            ["ari", "bic", "cluster_seconds", "agreement_with_40"]
        ].mean().round(3).to_string())  # fmt: skip
        print(table.round(3).to_string(index=False))
    table.to_csv(N_INIT_LOSO, index=False)


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


def signatures(seeds: int, gnn_seeds: int, out: Path) -> None:
    """cluster and gnn with and without reference-layer scores on each DLPFC section.

    The graph network is trained once per seed (``extra_features`` does not enter the
    training, so the embedding is the same) and its embedding clustered with each weight
    by the clustering step of :func:`spatiome.domains.gnn`.
    """
    from spatiome.domains.gnn import _cluster as gnn_cluster

    warnings.simplefilter("ignore")
    rows = []
    weights = (0.0, 0.5, 1.0, 2.0)
    for target_name in DLPFC:
        target, label, n_domains = load(target_name)
        reference, ref_label, _ = load(REFERENCE[target_name])
        sm.pp.normalize(target)
        sm.pp.normalize(reference)
        scores = layer_scores(reference, target, ref_label)
        runs = [("cluster", seed) for seed in range(seeds)]
        runs += [("gnn", seed) for seed in range(gnn_seeds)]
        for method, seed in runs:
            start = time.perf_counter()
            if method == "cluster":
                sm.domains.cluster(target, n_domains, random_state=seed)
                base = target.obsm["X_spatial_domain"].copy()
            else:
                sm.domains.gnn(target, n_domains, random_state=seed)
                base = target.obsm["X_gnn"].copy()
            base_seconds = time.perf_counter() - start
            for weight in weights:
                start = time.perf_counter()
                if method == "cluster":
                    shell = AnnData(np.zeros((target.n_obs, 1)))
                    shell.obsm["spatial"] = target.obsm["spatial"]
                    shell.obsm["f"] = base
                    extra = {"extra_features": scores, "extra_weight": weight} if weight else {}
                    sm.domains.cluster(shell, n_domains, use_rep="f", random_state=seed, **extra)
                    labels = shell.obs["spatial_domain"].to_numpy()
                else:
                    labels = gnn_cluster(
                        base, n_domains, "gmm", "tied", None, 5, seed,
                        (scores, weight) if weight else None,
                    )  # fmt: skip
                ari, nmi = score(target.obs[label], labels)
                rows.append({"dataset": target_name, "reference": REFERENCE[target_name],
                             "method": method, "extra_weight": weight, "seed": seed,
                             "ari": ari, "nmi": nmi,
                             "seconds": base_seconds + time.perf_counter() - start})  # fmt: skip
                print(f"  {target_name} <- {REFERENCE[target_name]} {method} weight {weight} "
                      f"seed {seed}: ARI {ari:.3f}", flush=True)  # fmt: skip
            pd.DataFrame(rows).to_csv(out, index=False)
    table = pd.DataFrame(rows)
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
    """ARI of each seed and of the majority vote over ``seeds`` runs of cluster.

    With the mixture's default 10 starts (the best likelihood kept) and with one.
    """
    warnings.simplefilter("ignore")
    rows = []
    for name in REAL:
        adata, label, n_domains = load(name)
        sm.pp.normalize(adata)
        for n_init in (10, 1):
            runs, seconds = [], []
            for seed in range(seeds):
                start = time.perf_counter()
                result = sm.domains.cluster(adata, n_domains, n_init=n_init,
                                            random_state=seed, copy=True)  # fmt: skip
                seconds.append(time.perf_counter() - start)
                runs.append(result.obs["spatial_domain"].cat.codes.to_numpy())
            voted = _aligned_votes(runs, n_domains).argmax(axis=1)
            aris = [score(adata.obs[label], labels)[0] for labels in runs]
            rows.append({"dataset": name, "n_init": n_init,
                         "seed_aris": " ".join(f"{a:.3f}" for a in aris),
                         "mean": np.mean(aris), "sd": np.std(aris, ddof=1),
                         "consensus": score(adata.obs[label], voted)[0],
                         "seconds_per_seed": float(np.median(seconds))})  # fmt: skip
            print(rows[-1], flush=True)
    pd.DataFrame(rows).to_csv(out, index=False)


# ---------------------------------------------------------------------------------------
# The pipeline's default domains, QC removal and chosen number of domains included.

PIPELINE_RESULTS = RESULTS_DIR / "domains_sections_pipeline.csv"


def pipeline(out: Path) -> None:
    """``run_pipeline`` with default settings on each real dataset: domain ARI and time.

    Twice per dataset: the number of domains chosen from the data (the default), and the
    true number. Only the statistics the domains do not depend on are left out (SVG
    tests, modules, UMAP), which changes nothing upstream of the domains.
    """
    import tempfile

    from spatiome.workflow.names import domain_key
    from spatiome.workflow.pipeline import PipelineConfig, run_pipeline

    warnings.simplefilter("ignore")
    rows = []
    for name in REAL:
        adata, label, n_true = load(name)
        for n_domains in (None, n_true):
            config = PipelineConfig(n_domains=n_domains, svg_methods=("moran",),
                                    module_methods=(), umap=False)  # fmt: skip
            with tempfile.TemporaryDirectory() as folder:
                start = time.perf_counter()
                result = run_pipeline(adata, folder, config, cache=False, progress=False)
                seconds = time.perf_counter() - start
                steps = json.loads((Path(folder) / "provenance.json").read_text())
            labels = result.adata.obs[domain_key(config, "cluster")].astype(object)
            kept = labels.notna().to_numpy()
            truth = adata.obs[label][kept]
            ari, nmi = score(truth, labels[kept].astype(str).to_numpy())
            rows.append({
                "dataset": name, "n_domains_given": n_domains or 0,
                "n_domains_found": int(labels[kept].nunique()), "true_k": n_true,
                "spots_analysed": int(kept.sum()), "spots": adata.n_obs, "ari": ari,
                "nmi": nmi, "domain_seconds": _step_seconds(steps, "domains_cluster"),
                "n_domains_seconds": _step_seconds(steps, "n_domains"),
                "run_seconds": seconds, "machine": machine(),
            })  # fmt: skip
            print(rows[-1], flush=True)
            pd.DataFrame(rows).to_csv(out, index=False)


def _step_seconds(provenance: dict, step: str) -> float:
    for entry in provenance.get("steps", []):
        if isinstance(entry, dict) and entry.get("name") == step:
            return float(entry.get("seconds", float("nan")))
    return float("nan")


# ---------------------------------------------------------------------------------------
# Scale: 100,000 spots on a Visium-like hexagonal lattice.

SCALE_RESULTS = RESULTS_DIR / "domains_sections_scale.csv"


def _scale_child(method: str, n_spots: int) -> None:
    """Child process: one method on a simulated tissue of ``n_spots``; one JSON line."""
    warnings.simplefilter("ignore")
    adata = sm.datasets.simulate_tissue(n_spots=n_spots, n_genes=500, n_domains=5, random_state=0)
    sm.pp.normalize(adata)
    baseline = _rss_gb()
    start = time.perf_counter()
    if method == "cluster":
        sm.domains.cluster(adata, 5, key_added="labels")
    elif method == "cnn":
        sm.domains.cnn(adata, 5, key_added="labels")
    else:  # a few epochs of the graph network: the time per epoch
        sm.domains.gnn(adata, 5, n_epochs=SCALE_GNN_EPOCHS, key_added="labels")
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print("RESULT " + json.dumps({
        "method": method, "n_spots": n_spots, "seconds": seconds,
        "epochs": SCALE_GNN_EPOCHS if method == "gnn" else None,
        "ari": score(adata.obs["domain"], adata.obs["labels"])[0],
        "peak_rss_added_gb": max(peak - baseline, 0.0),
    }), flush=True)  # fmt: skip


SCALE_GNN_EPOCHS = 3


def scale(n_spots: int, out: Path) -> None:
    """cluster, cnn (300 epochs) and 3 epochs of gnn on ``n_spots`` simulated spots."""
    rows = []
    for method in ("cluster", "cnn", "gnn"):
        command = [sys.executable, __file__, "--scale-child", method, str(n_spots)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")]
        if not lines:
            print(f"  {method}: failed\n{result.stderr[-2000:]}", flush=True)
            continue
        row = json.loads(lines[-1][7:])
        row.update(load_average_1min=os.getloadavg()[0], machine=machine())
        rows.append(row)
        print(f"  {n_spots} spots {method}: {row['seconds']:.1f} s, ARI {row['ari']:.3f}, "
              f"{row['peak_rss_added_gb']:.2f} GB", flush=True)  # fmt: skip
    pd.DataFrame(rows).to_csv(out, mode="a", header=not out.exists(), index=False)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], [int(s) for s in sys.argv[4].split(",")])
        return
    if len(sys.argv) == 4 and sys.argv[1] == "--scale-child":
        _scale_child(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds of the cheap methods")
    parser.add_argument("--gnn-seeds", type=int, default=2)
    parser.add_argument("--methods", default=None, help="comma-separated subset")
    parser.add_argument("--loso", action="store_true")
    parser.add_argument("--loso-n-init", action="store_true", help="choose cluster's n_init")
    parser.add_argument("--signatures", action="store_true")
    parser.add_argument("--consensus", action="store_true")
    parser.add_argument("--pipeline", action="store_true")
    parser.add_argument("--scale", type=int, default=None, metavar="N_SPOTS",
                        help="cluster, cnn and gnn epochs on N_SPOTS simulated spots")  # fmt: skip
    parser.add_argument("--datasets", default=None, help="comma-separated subset")
    parser.add_argument("--summary", action="store_true", help="only print the tables")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    print(environment_line())
    if args.loso:
        datasets = args.datasets.split(",") if args.datasets else list(SELECTION)
        loso(args.seeds, args.out or LOSO_RESULTS, datasets)
        return
    if args.loso_n_init:
        datasets = args.datasets.split(",") if args.datasets else list(SELECTION)
        n_init_loso(args.seeds, datasets)
        return
    if args.consensus:
        consensus(args.seeds, args.out or CONSENSUS_RESULTS)
        return
    if args.pipeline:
        pipeline(args.out or PIPELINE_RESULTS)
        return
    if args.scale:
        scale(args.scale, args.out or SCALE_RESULTS)
        return
    if args.signatures:
        signatures(args.seeds, args.gnn_seeds, args.out or SIGNATURE_RESULTS)
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
    print(markdown_table(table))


if __name__ == "__main__":
    main()
