"""workflow/main.nf: the Nextflow processes run the Snakefile's commands, wired step to step.

Nextflow itself runs the pipeline when it is installed (the last test). Without it, the
pipeline's text is checked against the Snakefile and the real CLI parser, and its tasks are
replayed here, each in a folder of its own as Nextflow runs them, with their own scripts.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import spatiome as sm
from spatiome.cli import build_parser, main
from spatiome.workflow import PipelineConfig, pipeline_steps
from spatiome.workflow.names import DOMAIN_METHODS, MODULE_METHODS, SVG_METHODS

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "workflow" / "Snakefile"
MAIN_NF = REPO / "workflow" / "main.nf"
MODULE_NF = REPO / "workflow" / "modules" / "spatiome.nf"
CONFIG_NF = REPO / "workflow" / "nextflow.config"

RUN_TOML = (
    '[pipeline]\numap = false\nn_domains = 3\nsvg_methods = ["moran"]\n'
    "module_methods = []\ndomain_methods = []\nspatial_qc = false\n"
)

#: Snakefile rule -> the process that runs its command.
RULE_PROCESS = {
    "step": "SPATIOME_STEP",
    "report": "SPATIOME_REPORT",
    "integrate": "SPATIOME_INTEGRATE",
}

#: What each placeholder stands for, on either side (the output folder is OUT/SAMPLE in the
#: Snakefile, the task's folder SAMPLE, published to OUTDIR/SAMPLE, in Nextflow).
SNAKE_NAMES = {
    "SPATIOME": "SPATIOME", "input.run_config": "CONFIG", "input.source": "SOURCE",
    "params.out": "OUT", "params.step": "STEP", "params.inputs": "INPUTS",
    "params.names": "NAMES",
}  # fmt: skip
NEXTFLOW_NAMES = {
    "params.spatiome": "SPATIOME", "run_config": "CONFIG", "source": "SOURCE", "sample": "OUT",
    "step": "STEP", "inputs": "INPUTS", "names.join(',')": "NAMES",
}  # fmt: skip


def snakefile_commands() -> dict[str, str]:
    """The shell command of each Snakefile rule (the generated step rules as 'step')."""
    text = SNAKEFILE.read_text()
    commands = {}
    for match in re.finditer(r"\n( *)shell:\n((?:\1 +\".*\"\n)+)", text):
        before = text[: match.start()]
        name = re.findall(r"rule (\w+):|name:\n\s+f\"(\w+)_\{step\}\"", before)[-1]
        rule = name[0] or name[1]
        commands[rule] = ast.literal_eval("(" + match.group(2) + ")")
    return commands


def nextflow_processes() -> dict[str, str]:
    """Each process of main.nf's module: its whole text."""
    text = MODULE_NF.read_text()
    return dict(re.findall(r"^process (\w+) \{\n(.*?)^\}", text, flags=re.M | re.S))


def script_lines(body: str) -> list[str]:
    """The lines of a process's script block."""
    script = body.split("script:\n", 1)[1]
    return script.split('"""')[1].strip().splitlines()


def spatiome_command(body: str) -> str:
    (line,) = [line.strip() for line in script_lines(body) if "${params.spatiome}" in line]
    return line


def template(command: str, names: dict[str, str], pattern: str) -> str:
    """The command with each placeholder replaced by what it stands for."""

    def swap(match: re.Match) -> str:
        assert match.group(1) in names, f"{match.group(1)!r} has no meaning in {command!r}"
        return f"<{names[match.group(1)]}>"

    return re.sub(pattern, swap, command)


def render(line: str, values: dict[str, str]) -> str:
    """A Groovy string line with its ${...} replaced by the task's values."""
    return re.sub(r"\$\{([^}]+)\}", lambda m: values[m.group(1)], line)


def test_every_snakefile_rule_has_a_process_with_its_command():
    snake, processes = snakefile_commands(), nextflow_processes()
    assert set(snake) == set(RULE_PROCESS)
    assert set(processes) == {*RULE_PROCESS.values(), "SPATIOME_STEPS"}
    for rule, process in RULE_PROCESS.items():
        command = spatiome_command(processes[process])
        if process == "SPATIOME_INTEGRATE":  # its folder is named, not the sample's
            command = command.replace("--out integrated", "--out ${sample}")
        expected = template(snake[rule], SNAKE_NAMES, r"\{([\w.]+)\}")
        assert template(command, NEXTFLOW_NAMES, r"\$\{([^}]+)\}") == expected, process
    # the integrated run's inputs: one --input per sample, in the sample sheet's order
    assert (
        'inputs=" ".join(f"--input {path}" for path in SAMPLES.values())' in SNAKEFILE.read_text()
    )
    assert "\"--input ${source}\" }.join(' ')" in processes["SPATIOME_INTEGRATE"]
    # the step list comes from the same command the Snakefile runs when it is read
    assert '[SPATIOME, "config", "--steps", RUN_CONFIG]' in SNAKEFILE.read_text()
    assert spatiome_command(processes["SPATIOME_STEPS"]) == (
        "${params.spatiome} config --steps ${run_config}"
    )


@pytest.mark.parametrize(
    ("process", "values", "expected"),
    [
        ("SPATIOME_STEP", {"step": "normalize"},
         {"input": ["input/left.h5ad"], "out": "left", "until": "normalize"}),
        ("SPATIOME_REPORT", {}, {"input": ["input/left.h5ad"], "out": "left"}),
        ("SPATIOME_INTEGRATE",
         {"inputs": "--input input1/left.h5ad --input input2/right.h5ad",
          "names.join(',')": "left,right"},
         {"input": ["input1/left.h5ad", "input2/right.h5ad"], "out": "integrated",
          "sample_names": "left,right"}),
    ],
)  # fmt: skip
def test_each_command_parses_with_the_cli(process, values, expected):
    values = {"params.spatiome": "spatiome", "run_config": "run.toml", "sample": "left",
              "source": "input/left.h5ad", **values}  # fmt: skip
    argv = render(spatiome_command(nextflow_processes()[process]), values).split()
    assert argv[0] == "spatiome"
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.config, args.no_progress) == ("run", "run.toml", True)
    assert {key: getattr(args, key) for key in expected} == expected
    if process == "SPATIOME_REPORT":
        assert not hasattr(args, "until")


def test_steps_command_parses_with_the_cli():
    argv = render(
        spatiome_command(nextflow_processes()["SPATIOME_STEPS"]),
        {"params.spatiome": "spatiome", "run_config": "run.toml"},
    ).split()
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.steps) == ("config", "run.toml")


def test_outputs_match_the_snakefile_and_feed_the_next_step():
    processes, snake = nextflow_processes(), SNAKEFILE.read_text()
    step, report = processes["SPATIOME_STEP"], processes["SPATIOME_REPORT"]
    # the Snakefile's outputs, under the sample's folder
    assert 'return f"{OUT}/{{sample}}/steps/{step}.done"' in snake
    assert 'path("${sample}/steps/${step}.done"), emit: marker' in step
    assert 'f"{OUT}/{{sample}}/report.html"' in snake
    assert 'path "${sample}/report.html", emit: report' in report
    assert 'f"{OUT}/integrated/report.html"' in snake
    assert "path 'integrated/report.html', emit: report" in processes["SPATIOME_INTEGRATE"]
    for body in (step, report):
        # the folder the command writes is the one handed on, and it starts as a copy of
        # the one the step before left (with its step cache)
        assert 'path("${sample}"), emit: folder' in body
        assert "path(previous, stageAs: 'previous')" in body
        lines = [line.strip() for line in script_lines(body)]
        assert lines[-1] == spatiome_command(body)
        assert "cp -R previous/. ${sample}/" in "\n".join(lines[:-1])
    assert "publishDir params.outdir" in report and "publishDir" not in step


def test_steps_are_chained_in_order_for_every_sample():
    text = MAIN_NF.read_text()
    slots = [int(k) for k in re.findall(r"include \{ SPATIOME_STEP as STEP_(\d+) \}", text)]
    assert slots == list(range(1, len(slots) + 1))
    # room for the longest run spatiome can configure on one sample
    everything = PipelineConfig(
        svg_methods=SVG_METHODS, domain_methods=DOMAIN_METHODS, module_methods=MODULE_METHODS,
        modality="protein", reference="reference.h5ad", n_domains=None,
    )  # fmt: skip
    assert len(slots) >= len(pipeline_steps(everything)) - 1  # the report is a process of its own
    assert f"if (names.size() > {len(slots)})" in text
    assert "STEP_01(at_step(start, samples, steps, 0), run_config)" in text
    for k in slots[1:]:
        assert (
            f"STEP_{k:02d}(at_step(STEP_{k - 1:02d}.out.folder, samples, steps, {k - 1}), " in text
        )
    # the report gets every sample's folder after its last step, the integration every report
    mixed = re.search(r"STEP_01\.out\.folder\n\s+\.mix\(\n(.*?)\n\s+\)", text, flags=re.S)
    assert re.findall(r"STEP_(\d+)\.out\.folder", mixed.group(1)) == [f"{k:02d}" for k in slots[1:]]
    assert ".filter { sample, step, folder, names -> step == names.last() }" in text
    assert "SPATIOME_REPORT(finished, run_config)" in text
    assert "if (pairs.size() > 1)" in text and "SPATIOME_REPORT.out.report.collect()," in text
    # the per-sample fan-out: every sample's tuple carries its own input and folder
    assert (
        ".filter { sample, previous_step, previous, source, names -> position < names.size() }"
        in text
    )  # noqa: E501
    assert "tuple(sample, source, previous, names[position])" in text


def test_config_has_the_parameters_and_profiles():
    text = CONFIG_NF.read_text()
    for param in ("samples", "input", "run_config", "outdir", "spatiome", "container"):
        assert re.search(rf"^    {param} += ", text, flags=re.M), param
    for profile in ("standard", "slurm", "docker", "singularity"):
        assert re.search(rf"^    {profile} \{{", text, flags=re.M), profile
    assert "process.executor = 'slurm'" in text
    assert "--entrypoint" in text  # the image's ENTRYPOINT is spatiome, not a shell
    assert (REPO / "Dockerfile").exists() and (REPO / "spatiome.def").exists()


def _two_samples(folder: Path) -> None:
    for k, (_name, seed) in enumerate((("left", 0), ("right", 1))):
        tissue = sm.datasets.simulate_tissue(n_spots=120, n_genes=30, random_state=seed)
        sm.io.write_h5ad(tissue, folder / f"section{k}.h5ad")
    (folder / "samples.tsv").write_text(
        "sample\tinput\nleft\tsection0.h5ad\nright\tsection1.h5ad\n"
    )
    (folder / "run.toml").write_text(RUN_TOML)


def _run_task(work: Path, body: str, values: dict[str, str], staged: dict[str, Path]) -> None:
    """One task as Nextflow runs it: its inputs linked into a fresh folder, the script's
    shell lines run there, and its spatiome command run in this process (no start-up cost)."""
    work.mkdir(parents=True)
    for name, target in staged.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).symlink_to(target)
    lines = [render(line.strip(), values) for line in script_lines(body)]
    subprocess.run(["bash", "-euc", "\n".join(lines[:-1])], cwd=work, check=True)
    argv = lines[-1].split()
    assert argv[0] == "spatiome"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        assert main(argv[1:]) == 0


def test_tasks_in_their_own_folders_restore_the_steps_before_them(tmp_path, capsys):
    _two_samples(tmp_path)
    processes = nextflow_processes()
    capsys.readouterr()
    assert main(["config", "--steps", str(tmp_path / "run.toml")]) == 0
    steps = capsys.readouterr().out.split()
    values = {"params.spatiome": "spatiome", "run_config": "run.toml", "sample": "left",
              "source": "input/section0.h5ad"}  # fmt: skip
    staged = {"run.toml": tmp_path / "run.toml", "input/section0.h5ad": tmp_path / "section0.h5ad"}
    previous = None
    for position, step in enumerate(steps):
        work = tmp_path / "work" / f"{position:02d}"
        extra = {"previous": previous} if previous else {}
        _run_task(work, processes["SPATIOME_STEP"], {**values, "step": step}, {**staged, **extra})
        previous = work / "left"
        assert sorted(p.stem for p in (previous / "steps").glob("*.done")) == sorted(
            steps[: position + 1]
        )
    work = tmp_path / "work" / "report"
    _run_task(work, processes["SPATIOME_REPORT"], values, {**staged, "previous": previous})
    record = json.loads((work / "left" / "provenance.json").read_text())
    # every step was computed by its own task; the report's task restored them all
    assert [step["name"] for step in record["steps"]][: len(steps)] == steps
    assert all(step.get("cached") for step in record["steps"]), record["steps"]
    assert (work / "left" / "report.html").stat().st_size > 0
    # the earlier tasks' folders are left as they were
    assert not (tmp_path / "work" / "00" / "left" / "report.html").exists()
    assert (tmp_path / "work" / "00" / "left" / "spatiome.log").read_text().count("\n") < (
        work / "left" / "spatiome.log"
    ).read_text().count("\n")


def _nextflow() -> list[str]:
    if shutil.which("nextflow") is None:
        pytest.skip("nextflow is not installed")
    probe = subprocess.run(["nextflow", "-version"], capture_output=True, text=True, timeout=300)
    if probe.returncode != 0 or "version" not in probe.stdout:
        pytest.skip(f"nextflow does not start: {(probe.stdout + probe.stderr)[-300:]}")
    return ["nextflow"]


def test_nextflow_runs_every_step_then_integrates(tmp_path):
    command = _nextflow()
    _two_samples(tmp_path)
    spatiome = str(Path(sys.executable).with_name("spatiome"))
    result = subprocess.run(
        [*command, "run", str(MAIN_NF), "--samples", "samples.tsv", "--run_config", "run.toml",
         "--outdir", "results", "--spatiome", spatiome],
        cwd=tmp_path, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    steps = subprocess.run(
        [spatiome, "config", "--steps", "run.toml"], cwd=tmp_path, capture_output=True,
        text=True, check=True,
    ).stdout.split()  # fmt: skip
    for sample in ("left", "right"):
        folder = tmp_path / "results" / sample
        assert sorted(p.stem for p in (folder / "steps").glob("*.done")) == sorted(steps)
        record = json.loads((folder / "provenance.json").read_text())
        assert all(step.get("cached") for step in record["steps"]), record["steps"]
        assert (folder / "report.html").stat().st_size > 0
    integrated = sm.io.read_h5ad(tmp_path / "results" / "integrated" / "results.h5ad")
    assert integrated.obs["sample"].value_counts().to_dict() == {"left": 120, "right": 120}
