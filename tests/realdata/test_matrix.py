"""`spatiome run` on every real dataset beside the checkout and on degenerate inputs built
here: every run ends with a report, and every step either ran or says why it did not.

The public datasets are read from ../shared/data (skipped cleanly when absent). The small
datasets run with the default settings; the two that ship a single-cell reference run once,
with it (the default run plus deconvolution), one given by path and one by its registered
name; DLPFC section 151673 skips UMAP and gene modules to keep the suite short.
`benchmarks/realdata.py` runs all of them with the defaults in full, and is where the two
other DLPFC sections (the same platform and tissue as 151673) are run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import spatiome as sm
from spatiome.cli import main

#: (dataset, how --input names it, extra options). "{folder}" stands for the dataset's own
#: folder, "{name}" for its registered name (resolved through $SPATIOME_DATA).
MATRIX = [
    ("mouse_ob_rep11", "{folder}", []),
    ("breast_cancer_layer2", "{folder}", []),
    ("seqfish_field43", "{folder}", []),
    ("rctd_merfish_hypothalamus", "{folder}", ["--reference", "{folder}"]),
    ("rctd_cerebellum_slideseq", "{name}", ["--reference", "{name}"]),
    ("dlpfc_151673", "{folder}", ["--no-umap", "--modules", "none"]),
]
#: Further sections of a dataset above: run by benchmarks/realdata.py only (realdata.csv).
BENCHMARK_ONLY = ("dlpfc_151674", "dlpfc_151675")
BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "realdata.py"
#: Observations at single-cell scale: cells, and Slide-seq's 10 um beads.
SINGLE_CELLS = ("seqfish_field43", "rctd_merfish_hypothalamus", "rctd_cerebellum_slideseq")


def run_cli(arguments: list[str], out: Path, capsys) -> tuple[int, str]:
    code = main(["run", *arguments, "--out", str(out), "--no-progress", "--no-cache"])
    return code, capsys.readouterr().err


def check_finished_run(out: Path, code: int, stderr: str) -> dict:
    """Exit 0, a report, and every step either ran or was skipped with a stated reason."""
    assert code == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    report = (out / "report.html").read_text()
    record = json.loads((out / "provenance.json").read_text())
    for step in record["steps"]:
        if step.get("skipped"):
            assert len(step["skipped"]) > 15, step
            assert step["name"] in report and _visible(step["skipped"])[:40] in report, step
    assert not re.search(r">\s*-?inf\s*<", report)
    assert "2.23e-308" not in report and "Traceback" not in report
    return {s["name"]: s for s in record["steps"]}


def _visible(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _case_id(name: str, given: str, options: list[str]) -> str:
    reference = "+ref" if "--reference" in options else ""
    return f"{name}{reference}{'-by-name' if given == '{name}' else ''}"


def test_matrix_covers_every_shared_dataset(shared_data):
    folders = {p.name for p in shared_data.iterdir() if p.is_dir() and p.name[0] not in "._"}
    covered = {name for name, _, _ in MATRIX} | set(BENCHMARK_ONLY)
    assert folders <= covered, folders - covered
    benchmark = BENCHMARK.read_text()
    for name in BENCHMARK_ONLY:
        assert f'"{name}",' in benchmark, f"{name} is run neither here nor by {BENCHMARK.name}"


@pytest.mark.parametrize(
    ("name", "given", "options"), MATRIX, ids=[_case_id(*case) for case in MATRIX]
)
def test_default_run_on_every_real_dataset(
    shared_data, tmp_path, capsys, monkeypatch, name, given, options
):
    folder = shared_data / name
    if not folder.is_dir():
        pytest.skip(f"{name} is not in {shared_data}")
    monkeypatch.setenv("SPATIOME_DATA", str(shared_data))  # for the registered names
    arguments = [
        "--input",
        given.format(folder=folder, name=name),
        *(o.format(folder=folder, name=name) for o in options),
    ]
    code, stderr = run_cli(arguments, tmp_path / "out", capsys)
    steps = check_finished_run(tmp_path / "out", code, stderr)
    results = sm.io.read_h5ad(tmp_path / "out" / "results.h5ad")
    if name in SINGLE_CELLS:
        assert results.uns["spatiome"]["observation"] == "cell"
        assert not steps["doublets"].get("skipped") and "doublet" in results.obs
    else:
        assert results.uns["spatiome"]["observation"] == "spot"
    if "--reference" in options:
        assert not steps["deconvolution"].get("skipped")
        assert (tmp_path / "out" / "cell_type_fractions.csv").is_file()
    labels = [
        k
        for k in results.obs
        if k == "spatial_domain" or (k.startswith("domain_") and k.count("_") == 1)
    ]
    assert labels, list(results.obs)
    for key in labels:
        assert results.obs[key].value_counts().min() >= 2, key  # no one-spot domains
    flagged = results.obs["low_quality"].to_numpy(dtype=bool)
    assert flagged.mean() <= 0.05  # removed from the statistics, kept in the results
    assert results.obs.loc[flagged, labels[0]].isna().all()
    if name == "mouse_ob_rep11":  # the 7- and 3-count spots
        assert results.obs.loc[["10.922x17.038", "18.006x20.069"], "low_quality"].all()
        page = (tmp_path / "out" / "report.html").read_text()
        assert "were removed before the statistics" in page


def _tissue(n_spots: int = 500, n_genes: int = 100, **kwargs):
    return sm.datasets.simulate_tissue(n_spots=n_spots, n_genes=n_genes, random_state=1, **kwargs)


def _thirty_spots():
    return _tissue(100, 200)[::3][:30].copy()


def _five_genes():
    return _tissue(500, 10, n_mito_genes=0)[:, :5].copy()


def _one_near_empty_spot():
    tissue = _tissue()
    counts = tissue.layers["counts"].tolil()
    counts[7, :] = 0
    counts[7, 0] = 2
    tissue.layers["counts"] = counts.tocsr()
    tissue.X = tissue.layers["counts"].copy()
    return tissue


def _duplicated_genes():
    tissue = _tissue()
    names = list(tissue.var_names)
    names[3] = names[10] = names[2]
    tissue.var_names = names
    return tissue


def _one_domain():
    tissue = _tissue()
    rng = np.random.default_rng(0)
    counts = rng.poisson(rng.gamma(2.0, 2.0, size=tissue.n_vars), size=tissue.shape)
    tissue.X = sp.csr_matrix(counts.astype(np.int64))
    tissue.layers["counts"] = tissue.X.copy()
    tissue.obs = tissue.obs[[]]
    return tissue


def _cells_without_mitochondria():
    return _tissue(600, 100, layout="random", n_mito_genes=0)


DEGENERATE = {
    "30 spots": _thirty_spots,
    "5 genes": _five_genes,
    "one spot with 2 counts": _one_near_empty_spot,
    "duplicated gene names": _duplicated_genes,
    "all spots in one domain": _one_domain,
    "cells without mitochondrial genes": _cells_without_mitochondria,
}


@pytest.mark.parametrize("case", list(DEGENERATE))
def test_degenerate_inputs_end_with_a_report(tmp_path, capsys, case):
    data = DEGENERATE[case]()
    path = tmp_path / "input.h5ad"
    sm.io.write_h5ad(data, path)
    code, stderr = run_cli(["--input", str(path)], tmp_path / "out", capsys)
    steps = check_finished_run(tmp_path / "out", code, stderr)
    report = (tmp_path / "out" / "report.html").read_text()
    if case == "duplicated gene names":
        assert "more than once" in report
    if case == "cells without mitochondrial genes":
        assert not steps["doublets"].get("skipped")
        assert "pct_counts_mt" not in report and "itochondrial percentage" not in report
