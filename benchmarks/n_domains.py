"""Choosing the number of spatial domains: chosen k, ARI at the chosen and the true k, time.

Criteria, all on the default features of ``domains.cluster`` (30 principal components of
3,000 Seurat v3 genes next to their three-step neighbourhood mean, lambda = 0.5):

- ``auto``: ``domains.choose_n_domains`` (default): the eigengap where it is clear, the
  BIC elbow otherwise;
- ``eigengap``: ``choose_n_domains(method="eigengap")``, the largest eigengap of the
  normalized Laplacian of the sqrt(n)-nearest-neighbour graph of the spots;
- ``bic``, ``bic_elbow``: ``choose_n_domains(method=...)``, the lowest BIC of the Gaussian
  mixtures (started from the cuts of one Ward tree), or the smallest k within 40% of the
  BIC drop from 1 component to the lowest BIC;
- ``silhouette``: the k whose mixture labels have the highest silhouette on the features;
- ``leiden_res1``: the number of Leiden clusters at resolution 1 on the expression PCA
  (``pp.reduce``), which the pipeline used before ``choose_n_domains``.

ARI: ``domains.cluster(adata, k, random_state=0)`` against the manual layers (DLPFC
151673-151675: 7 classes, unlabelled spots left out; mouse olfactory bulb: 5 MERINGUE
layers) or the simulated domains. Leave one out: for each labelled tissue, the parameter of
each family (the graph's neighbours c * sqrt(n) for the eigengap, the BIC elbow's fraction
for ``auto``) and then the family are chosen on the other three (fewest summed
|k - true k|, ties to the smaller ARI loss), and reported on the held-out one. ``k over
seeds``: the choice with ``random_state`` 0, 1 and 2 (the features' PCA). Simulated tissues
(``simulate_tissue(patterns=("domain",))``: 1,000 and 3,000 spots, 4 and 7 domains, layers
and blobs) check the criteria where the domains are distinct; breast cancer and seqFISH
(no labels) check that the chosen number is sane and that ``cluster`` returns no domain
under 5 spots.

Run with a Python that has spatiome::

    python benchmarks/n_domains.py [--quick]
    python benchmarks/n_domains.py --loso

Prints the tables and writes ``benchmarks/results/n_domains.csv`` and
``benchmarks/results/n_domains_loo.csv``; ``--loso`` only runs ``choose_n_domains`` once
per labelled section and chooses the BIC elbow's fraction leaving each section out
(``benchmarks/results/n_domains_loso.csv``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from sklearn.metrics import adjusted_rand_score, silhouette_score

import spatiome as sm
from spatiome._core.validate import SpatiomeInputError
from spatiome.domains.n_domains import _laplacian_spectrum, _largest_mixture

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, environment_line, with_environment, write_csv  # noqa: E402

RESULTS = RESULTS_DIR / "n_domains.csv"
RESULTS_LOO = RESULTS_DIR / "n_domains_loo.csv"
SHARED = Path(
    os.environ.get("SPATIOME_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
K_RANGE = (2, 15)
LABELLED = {
    "dlpfc_151673": ("layer_guess", 7),
    "dlpfc_151674": ("layer_guess", 7),
    "dlpfc_151675": ("layer_guess", 7),
    "mouse_ob_rep11": ("layer", 5),
}
UNLABELLED = ("breast_cancer_layer2", "seqfish_field43")
SIMULATED = [
    (1000, 4, "layers", 0),
    (1000, 7, "layers", 0),
    (1000, 5, "blobs", 2),
    (3000, 4, "blobs", 0),
    (3000, 5, "layers", 1),
    (3000, 7, "layers", 0),
    (3000, 7, "blobs", 1),
]
NEIGHBOUR_FACTORS = (0.5, 0.75, 1.0, 1.5, 2.0)
SEEDS = (0, 1, 2)
ELBOW = 0.4  # choose_n_domains' elbow fraction
ELBOW_FRACTIONS = (0.02, 0.03, 0.05, 0.08, 0.1, 0.15, 0.2, 0.3)


def _load_real(name: str) -> AnnData:
    try:
        return sm.datasets.load(name, data_dir=SHARED, download=False)
    except SpatiomeInputError:
        # Sections not in the registry share the layout of dlpfc_151673.
        folder = SHARED / name
        adata = sm.io.read_table(
            folder / "matrix.mtx.gz",
            folder / "coords.csv",
            x="pxl_col_in_fullres",
            y="pxl_row_in_fullres",
            genes=folder / "genes.tsv.gz",
            barcodes=folder / "barcodes.tsv.gz",
            spatial_unit="pixel",
        )
        labels = pd.read_csv(folder / "labels.csv", dtype=str).set_index("barcode")
        adata.obs["layer_guess"] = pd.Categorical(labels["layer_guess"].reindex(adata.obs_names))
        return adata


def _datasets(quick: bool):
    names = ["dlpfc_151673", "mouse_ob_rep11"] if quick else list(LABELLED)
    for name in names:
        if (SHARED / name).is_dir():
            label, k_true = LABELLED[name]
            yield name, _load_real(name), label, k_true
    for name in UNLABELLED:
        if (SHARED / name).is_dir():
            yield name, _load_real(name), None, None
    for n_spots, n_domains, layout, seed in SIMULATED[:2] if quick else SIMULATED:
        adata = sm.datasets.simulate_tissue(
            n_spots=n_spots, n_genes=500, n_domains=n_domains, domains=layout,
            patterns=("domain",), random_state=seed,
        )  # fmt: skip
        yield f"sim_{n_spots}x500_{n_domains}{layout}_s{seed}", adata, "domain", n_domains


class _Clusterings:
    """``domains.cluster`` at each k on fixed features, cached; ARI and silhouette."""

    def __init__(self, adata: AnnData, truth: pd.Series | None) -> None:
        self.adata = adata
        self.truth = truth
        self.labels: dict[int, np.ndarray] = {}

    def at(self, k: int) -> np.ndarray:
        if k not in self.labels:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sm.domains.cluster(
                    self.adata, k, use_rep="X_features", key_added="bench", random_state=0
                )
            self.labels[k] = self.adata.obs["bench"].to_numpy()
        return self.labels[k]

    def ari(self, k: int) -> float:
        if self.truth is None:
            return float("nan")
        keep = self.truth.notna().to_numpy()
        return float(adjusted_rand_score(self.truth[keep], self.at(k)[keep]))

    def smallest(self, k: int) -> int:
        return int(pd.Series(self.at(k)).value_counts().min())


def _eigengap_k(features: np.ndarray, factor: float) -> int:
    n_obs = features.shape[0]
    n_neighbors = int(min(max(10, round(factor * np.sqrt(n_obs))), n_obs - 1))
    values = _laplacian_spectrum(features, n_neighbors, K_RANGE[1] + 1, np.random.default_rng(0))
    ks = np.arange(K_RANGE[0], K_RANGE[1] + 1)
    return int(ks[np.argmax(np.diff(values)[ks - 1])])


def _elbow_k(bic: np.ndarray, one: float, fraction: float) -> int:
    ks = np.arange(K_RANGE[0], K_RANGE[0] + bic.size)
    best = int(np.argmin(bic))
    within = bic - bic[best] <= fraction * max(one - bic[best], 0.0)
    return int(ks[np.argmax(within)])


def run_dataset(name: str, adata: AnnData, label: str | None, k_true: int | None) -> dict:
    """Every criterion on one dataset: rows of the table and the per-parameter choices."""
    warnings.simplefilter("ignore")
    adata = adata.copy()
    sm.pp.normalize(adata)
    truth = adata.obs[label] if label else None
    rows = []

    def choose(method: str, seed: int = 0) -> tuple[int, dict, float]:
        begin = time.perf_counter()
        k = sm.domains.choose_n_domains(
            adata, method=method, k_range=K_RANGE, key_added="choice", random_state=seed
        )
        return k, dict(adata.uns["spatiome"]["choice"]), time.perf_counter() - begin

    k_auto, auto_record, auto_seconds = choose("auto")
    k_eig, record, eig_seconds = choose("eigengap")
    # A mixture needs fewer parameters than spots: on ~250 spots not even 2 components
    # with one shared covariance in 60 dimensions (30 components and their smoothed
    # copies), so there is no BIC there.
    largest = _largest_mixture(adata.n_obs, 60)
    mixture = largest >= K_RANGE[0]
    k_bic, bic_record, bic_seconds = choose("bic") if mixture else (None, {}, float("nan"))
    k_elbow, _, elbow_seconds = choose("bic_elbow") if mixture else (None, {}, float("nan"))
    bic = np.asarray(bic_record.get("bic", []))
    one = float(bic_record.get("bic_one_component", np.nan))
    # Only the features' PCA (and the eigensolver's start) depend on the seed.
    seeds = {"auto": [k_auto], "eigengap": [k_eig], "bic": [k_bic], "bic_elbow": [k_elbow]}
    for seed in SEEDS[1:]:
        seeds["auto"].append(choose("auto", seed)[0])
        seeds["eigengap"].append(choose("eigengap", seed)[0])
        if mixture:
            k, other, _ = choose("bic", seed)
            seeds["bic"].append(k)
            elbow = _elbow_k(np.asarray(other["bic"]), other["bic_one_component"], ELBOW)
            seeds["bic_elbow"].append(elbow)

    # The features choose_n_domains used, once, for the clusterings.
    sm.domains.cluster(adata, 2, key_added="features", random_state=0)
    features = np.asarray(adata.obsm["X_features"], dtype=np.float64)
    clusterings = _Clusterings(adata, truth)
    start = time.perf_counter()
    silhouettes = {
        k: silhouette_score(features, clusterings.at(k)) for k in range(K_RANGE[0], K_RANGE[1] + 1)
    }
    silhouette_seconds = time.perf_counter() - start
    k_silhouette = max(silhouettes, key=silhouettes.get)

    start = time.perf_counter()
    plain = adata.copy()
    sm.pp.reduce(plain, random_state=0, umap=False)
    sm.domains.leiden(plain, resolution=1.0, random_state=0)
    k_leiden = int(plain.obs["leiden"].nunique())
    leiden_seconds = time.perf_counter() - start

    ari_true = clusterings.ari(k_true) if k_true else float("nan")
    for criterion, k, seconds in (
        ("auto", k_auto, auto_seconds),
        ("eigengap", k_eig, eig_seconds),
        ("bic", k_bic, bic_seconds),
        ("bic_elbow", k_elbow, elbow_seconds),
        ("silhouette", k_silhouette, silhouette_seconds),
        ("leiden_res1", k_leiden, leiden_seconds),
    ):
        if k is None:
            continue
        rows.append({
            "dataset": name, "n_spots": adata.n_obs, "true_k": k_true or -1,
            "criterion": criterion, "chosen_k": k, "ari_chosen": clusterings.ari(k),
            "ari_true_k": ari_true, "smallest_domain": clusterings.smallest(k),
            "k_over_seeds": "/".join(str(v) for v in seeds.get(criterion, [k]) if v),
            "seconds": seconds,
        })  # fmt: skip
    choices = {("eigengap", f): _eigengap_k(features, f) for f in NEIGHBOUR_FACTORS}
    for f in ELBOW_FRACTIONS:
        use_elbow = largest >= K_RANGE[1] and not record["clear_gap"]
        choices[("auto", f)] = _elbow_k(bic, one, f) if use_elbow else k_eig
    ari_curve = {}
    if truth is not None and not name.startswith("sim_"):
        ari_curve = {k: clusterings.ari(k) for k in range(K_RANGE[0], K_RANGE[1] + 1)}
    else:
        ari_curve = {k: clusterings.ari(k) for k in set(choices.values())}
    print(
        f"{name}: auto {k_auto} ({auto_record['decided_by']}), eigengap {k_eig} (gap ratio "
        f"{record['gap_ratio']:.1f}), bic {k_bic}, elbow {k_elbow}, silhouette {k_silhouette}, "
        f"leiden {k_leiden}; true {k_true}",
        flush=True,
    )
    return {"rows": rows, "choices": choices, "ari": ari_curve, "k_true": k_true}


def leave_one_out(results: dict[str, dict]) -> pd.DataFrame:
    """Pick each family's parameter, then the family, on three tissues; report the fourth."""
    labelled = [name for name in LABELLED if name in results]
    rows = []
    for held_out in labelled:
        others = [name for name in labelled if name != held_out]

        def cost(key: tuple[str, float], names: list[str]) -> tuple[int, float]:
            error = sum(abs(results[n]["choices"][key] - results[n]["k_true"]) for n in names)
            loss = sum(
                results[n]["ari"][results[n]["k_true"]]
                - results[n]["ari"][results[n]["choices"][key]]
                for n in names
            )
            return error, loss

        best: dict[str, tuple[str, float]] = {}
        for family, values in (("eigengap", NEIGHBOUR_FACTORS), ("auto", ELBOW_FRACTIONS)):
            best[family] = min(((family, v) for v in values), key=lambda k: cost(k, others))
        family = min(best, key=lambda f: cost(best[f], others))
        for fam, key in (*best.items(), ("chosen family", best[family])):
            k = results[held_out]["choices"][key]
            rows.append({
                "held_out": held_out, "family": fam, "parameter": key[1],
                "error_on_others": cost(key, others)[0], "chosen_k": k,
                "true_k": results[held_out]["k_true"], "ari_chosen": results[held_out]["ari"][k],
                "ari_true_k": results[held_out]["ari"][results[held_out]["k_true"]],
            })  # fmt: skip
    return pd.DataFrame(rows)


RESULTS_LOSO = RESULTS_DIR / "n_domains_loso.csv"
LOSO_FRACTIONS = (*ELBOW_FRACTIONS, 0.4, 0.5)
PREVIOUS_ELBOW = 0.3  # the fraction before the leave-one-section-out choice; ties go near it


def _section_choices(name: str) -> dict:
    """``choose_n_domains(method="auto")`` once (seed 0), and its k for every elbow fraction.

    The record holds the eigengap's verdict and, where the elbow decides, the BIC curve, so
    every fraction's choice follows from one scan.
    """
    warnings.simplefilter("ignore")
    label, k_true = LABELLED[name]
    adata = _load_real(name)
    sm.pp.normalize(adata)
    begin = time.perf_counter()
    k_auto = sm.domains.choose_n_domains(adata, k_range=K_RANGE, key_added="choice")
    seconds = time.perf_counter() - begin
    record = adata.uns["spatiome"]["choice"]
    if record["decided_by"] == "eigengap":
        choices = dict.fromkeys(LOSO_FRACTIONS, k_auto)
    else:
        bic, one = np.asarray(record["bic"]), float(record["bic_one_component"])
        choices = {f: _elbow_k(bic, one, f) for f in LOSO_FRACTIONS}
    print(f"{name}: auto {k_auto} by {record['decided_by']} in {seconds:.1f} s; by fraction "
          f"{choices}", flush=True)  # fmt: skip
    return {"adata": adata, "truth": adata.obs[label], "k_true": k_true, "choices": choices,
            "decided_by": record["decided_by"], "seconds": seconds, "ari": {}}  # fmt: skip


def _ari_at(section: dict, k: int) -> float:
    """ARI of ``domains.cluster``'s defaults (seed 0) with ``k`` domains, cached."""
    if k not in section["ari"]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            labelled = sm.domains.cluster(section["adata"], k, random_state=0, copy=True)
        truth = section["truth"]
        keep = truth.notna().to_numpy()
        section["ari"][k] = float(
            adjusted_rand_score(truth[keep], labelled.obs["spatial_domain"].to_numpy()[keep])
        )
    return section["ari"][k]


def leave_one_section_out(sections: dict[str, dict]) -> pd.DataFrame:
    """The elbow fraction chosen on three labelled sections, applied to the fourth.

    Selection: fewest summed ``|k - true k|`` on the other three; ties go to the fraction
    nearest the previous default (``PREVIOUS_ELBOW``), so it moves only where the data ask.
    """
    rows = []
    for held_out, section in sections.items():
        others = [name for name in sections if name != held_out]

        def error(fraction: float, names: list[str] = others) -> int:
            return sum(abs(sections[n]["choices"][fraction] - sections[n]["k_true"]) for n in names)

        chosen = min(LOSO_FRACTIONS, key=lambda f: (error(f), abs(f - PREVIOUS_ELBOW)))
        k = section["choices"][chosen]
        rows.append({
            "held_out": held_out, "fraction": chosen, "error_on_others": error(chosen),
            "decided_by": section["decided_by"], "chosen_k": k, "true_k": section["k_true"],
            "ari_chosen": _ari_at(section, k), "ari_true_k": _ari_at(section, section["k_true"]),
            "choose_seconds": section["seconds"], "load_average": os.getloadavg()[0],
            **{f"k_at_{f:g}": section["choices"][f] for f in LOSO_FRACTIONS},
        })  # fmt: skip
    return pd.DataFrame(rows)


def loso_main() -> None:
    sections = {name: _section_choices(name) for name in LABELLED if (SHARED / name).is_dir()}
    table = leave_one_section_out(sections)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.round(3).to_string(index=False))
    write_csv(with_environment(table), RESULTS_LOSO)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one DLPFC section, two sims")
    parser.add_argument("--loso", action="store_true", help="only choose the elbow fraction")
    args = parser.parse_args()
    print(environment_line())
    if args.loso:
        print(f"load average at start: {os.getloadavg()}")
        loso_main()
        return
    print(f"load average at start: {os.getloadavg()}")
    results = {name: run_dataset(name, *rest) for name, *rest in _datasets(args.quick)}
    table = pd.DataFrame([row for result in results.values() for row in result["rows"]])
    with pd.option_context("display.width", 160, "display.max_rows", 200):
        print(table.round(3).to_string(index=False))
    loo = leave_one_out(results)
    if not loo.empty:
        with pd.option_context("display.width", 160):
            print(loo.round(3).to_string(index=False))
        write_csv(with_environment(loo), RESULTS_LOO)
    parameters = pd.DataFrame(
        [
            {"dataset": name, "family": fam, "parameter": value, "chosen_k": k}
            for name, result in results.items()
            for (fam, value), k in result["choices"].items()
        ]
    ).pivot_table(index=["family", "parameter"], columns="dataset", values="chosen_k")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(parameters.to_string())
    print(f"load average at end: {os.getloadavg()}")
    write_csv(with_environment(table), RESULTS)


if __name__ == "__main__":
    main()
