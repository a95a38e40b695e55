"""MNN correction: spatiome's ``harmonize(method="mnn")`` against mnnpy on the same input.

mnnpy 0.1.9.5 (the Python port of Haghverdi et al.'s ``mnnCorrect``, which scanpy wraps
as ``sc.external.pp.mnn_correct``) runs in a side environment of its own (numpy 1.21,
scipy 1.8, numba 0.55; never a spatiome dependency). Both methods get the same embedding
(two batches, the larger one the reference), cosine-normalize it, pair mutual nearest
neighbours with k = 20 and move the incoming batch by smoothed pair vectors. Three
versions of the original:

- ``mnnpy defaults``: what ``sc.external.pp.mnn_correct`` runs (sigma 1, variance
  adjustment on). mnnpy's Gaussian kernel takes ``exp(-x.y / sigma)`` of the dot product,
  not of the squared distance (mnnpy issue #22), so it weighs far anchors the most.
- ``mnnpy, batchelor kernel``: the same with the smoothing of batchelor's ``mnnCorrect``,
  ``exp(-|x - y|^2 / sigma)`` with its default sigma 0.1 (mnnpy's ``compute_correction``
  with the squared distance put back); variance adjustment on.
- ``mnnpy, batchelor kernel, no var adj``: as above with ``var_adj=False`` (fastMNN does
  not adjust the variance either).

Datasets: ``shift`` (Gaussian clusters; the second batch moved by a known vector and
subsampled unevenly, so the truth is known: ``truth_error`` is the mean distance of the
corrected incoming spots to their unshifted, cosine-normalized positions, relative to
before correction), ``tissue`` (a simulated tissue split in two with a log-normal per-gene
batch factor, sd 0.4, 20 PCs) and, when ``SPATIOME_DATA`` holds them, DLPFC sections
151673 and 151675 (20 PCs of the log-normalized counts of both; labels: the annotated
layers). Per method: iLISI and cLISI (harmonypy, median), the rescaled batch mixing and
label purity of ``integrate.mixing_metrics``, and against spatiome: the Jaccard index of
the mutual pairs, the Pearson correlation of the corrected coordinates and of the
correction vectors of the incoming batch, and the median cosine between correction
vectors.

Run with a Python that has spatiome::

    nice python benchmarks/mnn.py [--original PYTHON]

``--original`` is the interpreter of an environment with mnnpy 0.1.9.5 (default
``../venv-mnn/bin/python`` beside the checkout; install: ``python3.9 -m venv venv-mnn &&
venv-mnn/bin/pip install numpy==1.21.6 scipy==1.8.1 numba==0.55.2 pandas==1.4.4
anndata==0.8.0 scikit-learn==1.1.3 "Cython<3" && venv-mnn/bin/pip install
--no-build-isolation mnnpy==0.1.9.5``). Inputs go under the system temporary folder.
Prints a table and writes ``benchmarks/results/mnn.csv``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

import spatiome as sm
from spatiome.integrate import concat_samples, harmonize, mixing_metrics
from spatiome.integrate.batch import _cosine, _mutual_pairs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment_line, with_environment, write_csv  # noqa: E402

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "mnn.csv"
DEFAULT_ORIGINAL = ROOT.parent.parent / "venv-mnn" / "bin" / "python"
K = 20

RUNNER = """
import sys, time, warnings
warnings.filterwarnings("ignore")
import numpy as np
import mnnpy
from mnnpy import mnn, settings
from mnnpy.utils import kdist

settings.normalization = "single"  # no process pool for the normalization


def batchelor_correction(data1, data2, mnn1, mnn2, data2_or_raw2, sigma):
    # mnnpy's compute_correction with batchelor's kernel exp(-|x - y|^2 / sigma)
    vect = data1[mnn1] - data2[mnn2]
    mnn_index, mnn_count = np.unique(mnn2, return_counts=True)
    vect_reduced = np.zeros((data2.shape[0], vect.shape[1]), dtype=np.float32)
    np.add.at(vect_reduced, np.asarray(mnn2), vect)
    vect_avg = vect_reduced[mnn_index] / mnn_count.astype(np.float32)[:, None]
    anchors = data2_or_raw2[mnn_index]
    squared = (
        (data2_or_raw2**2).sum(1)[:, None] + (anchors**2).sum(1)[None, :]
        - 2.0 * kdist(data2_or_raw2, anchors)
    )
    exp_distance = np.exp(-np.maximum(squared, 0.0) / sigma)
    density = np.sum(exp_distance[mnn_index], axis=0)
    mult = exp_distance / density
    total_prob = np.sum(mult, axis=1, keepdims=True)
    return (mult @ vect_avg / total_prob).astype(np.float32)


variant = sys.argv[3]
inputs = np.load(sys.argv[1])
ref, new = inputs["ref"].astype(np.float32), inputs["new"].astype(np.float32)
options = dict(k=int(inputs["k"]), var_index=[str(i) for i in range(ref.shape[1])], n_jobs=1)
if variant == "defaults":
    options.update(sigma=1.0, var_adj=True)
else:
    mnn.compute_correction = batchelor_correction
    options.update(sigma=0.1, var_adj=variant == "batchelor")
start = time.perf_counter()
corrected, pairs, _ = mnnpy.mnn_correct(ref, new, **options)
seconds = time.perf_counter() - start
np.savez(
    sys.argv[2], corrected=np.asarray(corrected, dtype=np.float64),
    new=np.asarray(pairs[1]["new cell"]), ref=np.asarray(pairs[1]["ref cell"]),
    seconds=seconds,
)
"""
VARIANTS = {
    "defaults": "mnnpy defaults",
    "batchelor": "mnnpy, batchelor kernel",
    "batchelor_noadj": "mnnpy, batchelor kernel, no var adj",
}


def shift_dataset(seed: int = 0) -> tuple[anndata.AnnData, np.ndarray]:
    """Gaussian clusters in 10 dimensions; batch B moved by one known vector."""
    rng = np.random.default_rng(seed)
    n_dims, n_labels = 10, 5
    centres = rng.normal(0.0, 4.0, (n_labels, n_dims)) + 6.0  # away from the origin
    sizes = {"A": [400] * n_labels, "B": [300, 250, 200, 150, 100]}  # uneven in B
    parts, labels, batches = [], [], []
    for batch, counts in sizes.items():
        for label, count in enumerate(counts):
            parts.append(centres[label] + rng.normal(0.0, 1.0, (count, n_dims)))
            labels += [label] * count
            batches += [batch] * count
    truth = np.vstack(parts)
    moved = truth.copy()
    is_b = np.array(batches) == "B"
    moved[is_b] += rng.normal(0.0, 3.0, n_dims)
    adata = anndata.AnnData(np.zeros((truth.shape[0], 1)), obsm={"X_pca": moved})
    adata.obs["sample"] = pd.Categorical(batches)
    adata.obs["label"] = pd.Categorical(np.array(labels).astype(str))
    return adata, _cosine(truth)


def tissue_dataset(seed: int = 0) -> anndata.AnnData:
    """A simulated tissue split in two; the second part gets a per-gene batch factor."""
    rng = np.random.default_rng(seed)
    tissue = sm.datasets.simulate_tissue(
        n_spots=2400, n_genes=200, n_domains=4, patterns=("domain",), frac_spatial=0.4,
        effect_size=1.5, random_state=seed,
    )  # fmt: skip
    second = rng.random(tissue.n_obs) < 0.4  # 60% / 40%: the reference is unambiguous
    a, b = tissue[~second].copy(), tissue[second].copy()
    factor = np.exp(rng.normal(0.0, 0.4, b.n_vars))
    counts = sp.csr_matrix(b.X).multiply(factor[None, :]).tocsr()
    counts.data = rng.poisson(counts.data).astype(np.float32)
    b.X = counts
    b.layers["counts"] = counts.copy()
    adata = concat_samples({"A": a, "B": b})
    adata.obs["label"] = adata.obs["domain"].astype(str)
    return _pca(adata)


def dlpfc_dataset() -> anndata.AnnData | None:
    if not os.environ.get("SPATIOME_DATA"):
        return None
    try:
        sections = {n: sm.datasets.load(f"dlpfc_{n}") for n in ("151673", "151675")}
    except Exception as error:  # the shared data are optional
        print(f"DLPFC skipped: {error}")
        return None
    adata = concat_samples(sections)
    adata = adata[adata.obs["layer_guess"].notna().to_numpy()].copy()
    adata.obs["label"] = adata.obs["layer_guess"].astype(str)
    sc.pp.filter_genes(adata, min_cells=10)
    return _pca(adata)


def _pca(adata: anndata.AnnData) -> anndata.AnnData:
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=20, random_state=0)
    return adata


def run_ours(adata: anndata.AnnData) -> tuple[np.ndarray, set, float]:
    start = time.perf_counter()
    harmonize(adata, method="mnn", n_neighbors=K)
    seconds = time.perf_counter() - start
    reference, incoming = _split(adata)
    x = _cosine(np.asarray(adata.obsm["X_pca"], dtype=np.float64))
    pairs_new, pairs_ref = _mutual_pairs(x[reference], x[incoming], K)
    return adata.obsm["X_mnn"], set(zip(pairs_new, pairs_ref, strict=True)), seconds


def _split(adata: anndata.AnnData) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the reference (the larger batch, which harmonize keeps) and the other."""
    codes = adata.obs["sample"].cat.codes.to_numpy()
    larger = int(np.argmax(np.bincount(codes)))
    return np.flatnonzero(codes == larger), np.flatnonzero(codes != larger)


def run_original(python: Path, adata, variant: str, folder: Path):
    reference, incoming = _split(adata)
    x = np.asarray(adata.obsm["X_pca"], dtype=np.float64)
    paths = folder / "inputs.npz", folder / f"{variant}.npz", folder / "run_mnnpy.py"
    np.savez(paths[0], ref=x[reference], new=x[incoming], k=K)
    paths[2].write_text(RUNNER)
    subprocess.run(
        [str(python), str(paths[2]), str(paths[0]), str(paths[1]), variant],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    output = np.load(paths[1])
    corrected = np.empty_like(x)
    corrected[reference] = output["corrected"][: reference.size]
    corrected[incoming] = output["corrected"][reference.size :]
    pairs = set(zip(output["new"].tolist(), output["ref"].tolist(), strict=True))
    return corrected, pairs, float(output["seconds"])


def _metrics(adata, key: str) -> dict:
    values = mixing_metrics(adata, key, label_key="label")
    return {name: values[name] for name in ("ilisi", "clisi", "batch_mixing", "label_purity")}


def _agreement(adata, ours, theirs, ours_pairs, their_pairs) -> dict:
    _, incoming = _split(adata)
    start = _cosine(np.asarray(adata.obsm["X_pca"], dtype=np.float64))[incoming]
    mine, other = ours[incoming] - start, theirs[incoming] - start
    cosines = np.sum(mine * other, axis=1) / (
        np.linalg.norm(mine, axis=1) * np.linalg.norm(other, axis=1) + 1e-300
    )
    return {
        "pair_jaccard": len(ours_pairs & their_pairs) / len(ours_pairs | their_pairs),
        "n_pairs": len(their_pairs),
        "corr_corrected": float(
            np.corrcoef(ours[incoming].ravel(), theirs[incoming].ravel())[0, 1]
        ),
        "corr_correction": float(np.corrcoef(mine.ravel(), other.ravel())[0, 1]),
        "median_cosine_correction": float(np.median(cosines)),
        "norm_ratio_correction": float(
            np.median(np.linalg.norm(other, axis=1) / np.linalg.norm(mine, axis=1))
        ),
    }


def _truth_error(adata, corrected, truth) -> float:
    _, incoming = _split(adata)
    before = _cosine(np.asarray(adata.obsm["X_pca"], dtype=np.float64))[incoming]
    error = np.linalg.norm(corrected[incoming] - truth[incoming], axis=1).mean()
    return float(error / np.linalg.norm(before - truth[incoming], axis=1).mean())


def compare(name: str, adata, truth, python: Path | None, folder: Path) -> list[dict]:
    adata.obsm["X_cosine"] = _cosine(np.asarray(adata.obsm["X_pca"], dtype=np.float64))
    base = {"dataset": name, "n_spots": adata.n_obs, "k": K}
    rows = [{**base, "method": "uncorrected", **_metrics(adata, "X_cosine")}]
    ours, ours_pairs, seconds = run_ours(adata)
    rows.append(
        {**base, "method": "spatiome", "seconds": seconds, "n_pairs": len(ours_pairs),
         **_metrics(adata, "X_mnn")}
    )  # fmt: skip
    if python is not None:
        for variant, title in VARIANTS.items():
            theirs, their_pairs, seconds = run_original(python, adata, variant, folder)
            adata.obsm["X_original"] = theirs
            rows.append(
                {**base, "method": title, "seconds": seconds, **_metrics(adata, "X_original"),
                 **_agreement(adata, ours, theirs, ours_pairs, their_pairs)}
            )  # fmt: skip
            if truth is not None:
                rows[-1]["truth_error"] = _truth_error(adata, theirs, truth)
    if truth is not None:
        rows[0]["truth_error"] = 1.0
        rows[1]["truth_error"] = _truth_error(adata, ours, truth)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--original", type=Path, default=DEFAULT_ORIGINAL)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    python = args.original if args.original.exists() else None
    if python is None:
        print(f"no mnnpy environment at {args.original}: only spatiome runs")
    shifted, truth = shift_dataset()
    datasets = [("shift", shifted, truth), ("tissue", tissue_dataset(), None)]
    dlpfc = dlpfc_dataset()
    if dlpfc is not None:
        datasets.append(("DLPFC 151673 + 151675", dlpfc, None))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, adata, known in datasets:
            rows += compare(name, adata, known, python, Path(folder))
    table = pd.DataFrame(rows)
    table["load_average"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.drop(columns=["load_average"]).round(3).to_string(index=False))
    print(environment_line())
    write_csv(with_environment(table), args.out)


if __name__ == "__main__":
    main()
