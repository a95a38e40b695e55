"""The output folder: one consistent set of files, logs appended, records of cached steps
kept, permissions from the umask, clear errors for unusable folders."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest

import spatiome as sm
from spatiome._core.validate import SpatiomeInputError
from spatiome.workflow import PipelineConfig, run_pipeline
from spatiome.workflow import pipeline as pipeline_module
from spatiome.workflow.outputs import prepare_output_folder

BASE = dict(
    umap=False, n_domains=3, svg_methods=("moran",), module_methods=(), n_top_maps=1,
    spatial_qc=False,
)  # fmt: skip


@pytest.fixture(scope="module")
def tissue():
    return sm.datasets.simulate_tissue(n_spots=300, n_genes=40, random_state=5)


def _steps(out):
    return json.loads((out / "provenance.json").read_text())["steps"]


def test_cached_rerun_appends_the_log_and_keeps_each_step_record(tissue, tmp_path):
    out = tmp_path / "out"
    run_pipeline(tissue, out, PipelineConfig(**BASE), progress=False)
    first = {s["name"]: s for s in _steps(out)}
    run_pipeline(tissue, out, PipelineConfig(**BASE), progress=False)
    second = {s["name"]: s for s in _steps(out)}
    log = (out / "spatiome.log").read_text()
    assert log.count("===== run started") == 2
    assert "moran: start" not in log or log.count("step moran: start") == 2
    for name, step in second.items():
        if name == "report":
            continue
        assert step["cached"] is True
        computed = step["computed"]
        assert computed["start"] == first[name]["start"]
        assert computed["host"] and computed["pid"] and computed["out"] == str(out)
        assert abs(computed["seconds"] - first[name]["seconds"]) < 1.0
    # what the leiden step said when it was computed is in the log again, marked as such
    assert "step leiden [as computed then]: INFO leiden:" in log


def test_outputs_follow_the_umask(tissue, tmp_path):
    previous = os.umask(0o022)
    try:
        run_pipeline(tissue, tmp_path / "out", PipelineConfig(**BASE), progress=False)
    finally:
        os.umask(previous)
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert len(files) >= 6
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
    assert set(modes.values()) == {0o644}, modes


def test_an_interrupted_rerun_leaves_the_earlier_set_untouched(tissue, tmp_path, monkeypatch):
    out = tmp_path / "out"
    run_pipeline(tissue, out, PipelineConfig(**BASE), progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline_module, "write_report", crash)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(tissue, out, PipelineConfig(**{**BASE, "fdr": 0.1}), progress=False)
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    del before["spatiome.log"], after["spatiome.log"]
    assert after == before  # no new svg.csv beside the old report
    assert not [p for p in out.iterdir() if p.name.startswith(".staging")]


def test_stale_temporaries_are_cleaned_and_unproduced_outputs_removed(tissue, tmp_path):
    out = tmp_path / "out"
    run_pipeline(
        tissue, out, PipelineConfig(**{**BASE, "svg_methods": ("moran", "geary")}), progress=False
    )
    assert (out / "svg_geary.csv").is_file()
    (out / ".svg.csv.k2j4h1.tmp.csv").write_text("half written")
    (out / ".staging-999999999-abcd").mkdir()
    run_pipeline(tissue, out, PipelineConfig(**BASE), progress=False)
    names = {p.name for p in out.iterdir()}
    assert ".svg.csv.k2j4h1.tmp.csv" not in names and ".staging-999999999-abcd" not in names
    assert "svg_geary.csv" not in names  # not produced by the latest run
    assert {"svg.csv", "report.html", "results.h5ad", "provenance.json"} <= names


def test_a_full_disk_is_one_clear_error_and_leaves_no_partial_outputs(
    tissue, tmp_path, monkeypatch
):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pipeline_module, "write_report", full)
    out = tmp_path / "out"
    with pytest.raises(SpatiomeInputError, match="no space left on device"):
        run_pipeline(tissue, out, PipelineConfig(**BASE), progress=False, cache=False)
    assert sorted(p.name for p in out.iterdir()) == ["spatiome.log"]


def test_unusable_output_folders_are_refused_before_any_work(tmp_path):
    target = tmp_path / "report.txt"
    target.write_text("a file")
    with pytest.raises(SpatiomeInputError, match="is a file"):
        prepare_output_folder(target)
    with pytest.raises(SpatiomeInputError, match="is a file"):
        prepare_output_folder(target / "below_a_file")


def test_console_summary_states_the_configured_fdr(capsys):
    from types import SimpleNamespace

    from spatiome.cli import _finish

    summary = {"observation": "cell", "n_spots": 257, "fdr": 0.1, "svg_method": "sparkx",
               "n_svg": 40, "n_domains_cluster": 4}  # fmt: skip
    result = SimpleNamespace(summary=summary, files={"report": __import__("pathlib").Path("/o/r")})
    _finish(result, 0.0)
    printed = capsys.readouterr().out
    assert "257 cells; 40 spatially variable genes (SPARK-X, q < 0.1); 4 domains" in printed
    assert "0.05" not in printed


def test_a_step_that_fails_on_the_data_is_skipped_with_its_reason(tissue, tmp_path, monkeypatch):
    original = pipeline_module.run_svg_method

    def geary_fails(data, method, config, genes=None, **options):
        if method == "geary":
            raise ValueError("no variance left in any gene")
        return original(data, method, config, genes, **options)

    monkeypatch.setattr(pipeline_module, "run_svg_method", geary_fails)
    config = PipelineConfig(**{**BASE, "svg_methods": ("geary", "moran")})
    result = run_pipeline(tissue, tmp_path / "out", config, progress=False, cache=False)
    steps = {s["name"]: s for s in _steps(tmp_path / "out")}
    assert "no variance left in any gene" in steps["geary"]["skipped"]
    assert not steps["moran"].get("skipped") and not steps["markers"].get("skipped")
    assert list(result.svg_tables) == ["moran"]
    report = (tmp_path / "out" / "report.html").read_text()
    assert "Steps that did not run" in report and "no variance left in any gene" in report
    assert "ValueError" in (tmp_path / "out" / "spatiome.log").read_text()
    assert not (tmp_path / "out" / "svg_geary.csv").exists()


def test_a_failed_domain_step_skips_its_dependants_and_the_run_finishes(
    tissue, tmp_path, monkeypatch
):
    def cluster_fails(data, method, n_domains, config):
        raise ValueError("the mixture did not converge")

    monkeypatch.setattr(pipeline_module, "run_domain_method", cluster_fails)
    config = PipelineConfig(**{**BASE, "svg_methods": ("moran",)})
    result = run_pipeline(tissue, tmp_path / "out", config, progress=False, cache=False)
    steps = {s["name"]: s for s in _steps(tmp_path / "out")}
    assert "the mixture did not converge" in steps["domains_cluster"]["skipped"]
    assert "domains_cluster step, which was skipped" in steps["markers"]["skipped"]
    assert not steps["moran"].get("skipped") and "n_domains_cluster" not in result.summary
    report = (tmp_path / "out" / "report.html").read_text()
    assert "the mixture did not converge" in report


def test_sigterm_leaves_no_temporaries_and_the_next_run_finishes(tissue, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    source = tmp_path / "tissue.h5ad"
    sm.io.write_h5ad(tissue, source)
    out = tmp_path / "out"
    args = ["run", "--input", str(source), "--out", str(out), "--n-domains", "3", "--svg",
            "moran", "--modules", "none", "--no-progress"]  # fmt: skip
    process = subprocess.Popen([sys.executable, "-m", "spatiome", *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if len(list((out / ".spatiome_cache").glob("*.zip"))) >= 4:
            break
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be stopped"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    left = [p.name for p in out.rglob("*") if ".tmp" in p.name or ".staging" in p.name]
    assert left == [] and not (out / "report.html").exists()
    assert "stopped by signal" in (out / "spatiome.log").read_text()
    from spatiome.cli import main

    assert main(args) == 0 and (out / "report.html").is_file()
