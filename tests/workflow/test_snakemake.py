"""workflow/Snakefile: two simulated samples, one rule per step, then the integrated run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import spatiome as sm
from spatiome.cli import main

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "workflow" / "Snakefile"


def _snakemake() -> list[str]:
    if shutil.which("snakemake") is None:
        pytest.skip("snakemake is not installed (the dev extra installs it on Python >= 3.11)")
    return ["snakemake"]


def test_snakefile_runs_every_step_then_integrates(tmp_path, capsys):
    command = _snakemake()
    for k, seed in enumerate((0, 1)):
        tissue = sm.datasets.simulate_tissue(n_spots=120, n_genes=40, random_state=seed)
        sm.io.write_h5ad(tissue, tmp_path / f"section{k}.h5ad")
    (tmp_path / "samples.tsv").write_text(
        "sample\tinput\nleft\tsection0.h5ad\nright\tsection1.h5ad\n"
    )
    (tmp_path / "run.toml").write_text(
        '[pipeline]\numap = false\nn_domains = 3\nsvg_methods = ["moran"]\n'
        "module_methods = []\ndomain_methods = []\nspatial_qc = false\n"
    )
    spatiome = str(Path(sys.executable).with_name("spatiome"))
    result = subprocess.run(
        [*command, "-s", str(SNAKEFILE), "--cores", "2", "--config", "samples=samples.tsv",
         "run_config=run.toml", "out=results", f"spatiome={spatiome}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    # the steps the Snakefile read from `spatiome config --steps` (its own subprocess)
    capsys.readouterr()
    assert main(["config", "--steps", str(tmp_path / "run.toml")]) == 0
    steps = capsys.readouterr().out.split()
    assert steps[0] == "qc" and steps[-1] == "moran"
    for sample in ("left", "right"):
        folder = tmp_path / "results" / sample
        assert sorted(p.stem for p in (folder / "steps").glob("*.done")) == sorted(steps)
        record = json.loads((folder / "provenance.json").read_text())
        # every step was computed by its own rule; the report rule restored them all
        assert all(step.get("cached") for step in record["steps"]), record["steps"]
        assert (folder / "report.html").stat().st_size > 0
    integrated = sm.io.read_h5ad(tmp_path / "results" / "integrated" / "results.h5ad")
    assert integrated.obs["sample"].value_counts().to_dict() == {"left": 120, "right": 120}
    assert (tmp_path / "results" / "integrated" / "integration_metrics.csv").exists()


def test_slurm_profile_submits_each_step_with_its_resources(tmp_path):
    """The SLURM profile in a dry run: every step of both samples becomes a job with the
    profile's resources (nothing is submitted; the executor plugin must be installed)."""
    command = _snakemake()
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="SLURM executor plugin absent")
    for k in (0, 1):
        tissue = sm.datasets.simulate_tissue(n_spots=100, n_genes=20, random_state=k)
        sm.io.write_h5ad(tissue, tmp_path / f"section{k}.h5ad")
    (tmp_path / "samples.tsv").write_text("sample\tinput\na\tsection0.h5ad\nb\tsection1.h5ad\n")
    (tmp_path / "run.toml").write_text('[pipeline]\numap = false\nsvg_methods = ["moran"]\n')
    spatiome = str(Path(sys.executable).with_name("spatiome"))
    profile = REPO / "workflow" / "profiles" / "slurm"
    result = subprocess.run(
        [*command, "-s", str(SNAKEFILE), "--profile", str(profile), "--dry-run",
         "--config", "samples=samples.tsv", "run_config=run.toml", "out=results",
         f"spatiome={spatiome}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert f"Using profile {profile}" in output
    steps = subprocess.run(
        [spatiome, "config", "--steps", str(tmp_path / "run.toml")],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    jobs = dict(re.findall(r"^(step_\w+|report|integrate)\s+(\d+)$", output, re.M))
    assert {f"step_{s}" for s in steps} | {"report", "integrate"} == set(jobs)
    assert all(int(n) == 2 for name, n in jobs.items() if name != "integrate")
    resources = dict(re.findall(r"rule (\w+):.*?resources: ([^\n]+)", output, re.S))
    assert "mem_mb=16000" in resources["step_reduce"]
    assert "mem_mb=8000" in resources["step_qc"] and "cpus_per_task=2" in resources["step_qc"]
    assert "runtime=240" in resources["integrate"]
