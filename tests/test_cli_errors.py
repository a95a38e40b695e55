"""What the command line resolves and refuses before any step runs.

The pipeline itself is replaced by a recorder: these tests check argument resolution (dataset
names, references, the output folder) and the one-line errors, not the analysis.
"""

from __future__ import annotations

import errno
from pathlib import Path
from types import SimpleNamespace

import anndata as ad
import numpy as np
import pytest

import spatiome.workflow
import spatiome.workflow.inputs
from spatiome.cli import build_parser, main

MERFISH = "rctd_merfish_hypothalamus"


@pytest.fixture
def recorder(monkeypatch, tmp_path):
    """Replace reading and the pipeline; record what the CLI passed them."""
    calls = SimpleNamespace(read=[], run=[])

    def read_input(source):
        calls.read.append(source)
        return ad.AnnData(np.ones((3, 2), dtype=np.float32))

    def run_pipeline(adata, out, config, **kwargs):
        calls.run.append(SimpleNamespace(out=out, config=config, **kwargs))
        marker = Path(out) / "steps" / "qc.done"
        return SimpleNamespace(summary={"stopped_after": "qc"}, files={"step": marker})

    monkeypatch.setattr(spatiome.workflow.inputs, "read_input", read_input)
    monkeypatch.setattr(spatiome.workflow, "run_pipeline", run_pipeline)
    return calls


@pytest.fixture
def shared_env(shared_data, monkeypatch):
    monkeypatch.setenv("SPATIOME_DATA", str(shared_data))
    return shared_data


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("spatiome: error: ") and err.count("\n") == 1, err
    return err


# --- --input NAME ----------------------------------------------------------------------


def test_input_accepts_a_registered_dataset_name(recorder, shared_env, tmp_path):
    assert main(["run", "--input", "mouse_ob_rep11", "--out", str(tmp_path / "o")]) == 0
    (source,) = recorder.read
    assert source.dataset == "mouse_ob_rep11"
    (run,) = recorder.run
    assert run.inputs == [shared_env / "mouse_ob_rep11"]
    assert "mouse_ob_rep11" in run.title


def test_existing_path_wins_over_a_dataset_name(recorder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mouse_ob_rep11").mkdir()
    assert main(["run", "--input", "mouse_ob_rep11", "--out", "o"]) == 0
    assert recorder.read[0].dataset is None
    assert recorder.read[0].path == Path("mouse_ob_rep11")


def test_unknown_input_is_one_error_with_close_names(recorder, capsys, tmp_path):
    err = _error(capsys, ["run", "--input", "mouse_ob", "--out", str(tmp_path / "o")])
    assert "no such file or folder" in err and "'mouse_ob_rep11'" in err
    assert "spatiome datasets list" in err
    assert recorder.read == [] and not (tmp_path / "o").exists()


def test_config_file_names_datasets(recorder, shared_env, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(f'[input]\npaths = ["mouse_ob_rep11"]\n[pipeline]\nreference = "{MERFISH}"\n')
    assert main(["run", str(config), "--out", str(tmp_path / "o")]) == 0
    assert recorder.read[0].dataset == "mouse_ob_rep11"
    assert recorder.run[0].config.reference == MERFISH


# --- --reference -----------------------------------------------------------------------


def _reference_tables(folder: Path) -> tuple[Path, Path]:
    folder.mkdir()
    (folder / "reference_counts.csv.gz").write_text("")
    (folder / "reference_celltypes.csv").write_text("")
    return folder / "reference_counts.csv.gz", folder / "reference_celltypes.csv"


def _run(tmp_path, *options):
    (tmp_path / "data.h5ad").write_text("")
    return ["run", "--input", str(tmp_path / "data.h5ad"), "--out", str(tmp_path / "o"), *options]


def test_reference_folder_and_pair_are_accepted(recorder, tmp_path):
    counts, labels = _reference_tables(tmp_path / "ref")
    for given in (str(tmp_path / "ref"), f"{counts},{labels}"):
        assert main(_run(tmp_path, "--reference", given)) == 0
        assert recorder.run[-1].config.reference == given


def test_reference_dataset_name_is_accepted(recorder, shared_env, tmp_path):
    assert main(_run(tmp_path, "--reference", MERFISH)) == 0
    assert recorder.run[-1].config.reference == MERFISH


def test_reference_table_alone_fails_before_reading_with_the_command(recorder, capsys, tmp_path):
    counts, labels = _reference_tables(tmp_path / "ref")
    err = _error(capsys, _run(tmp_path, "--reference", str(counts)))
    assert f"--reference {counts},{labels}" in err
    assert recorder.read == [] and recorder.run == []


def test_reference_folder_without_layout_lists_what_it_holds(recorder, capsys, tmp_path):
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "expression.csv").write_text("")
    err = _error(capsys, _run(tmp_path, "--reference", str(tmp_path / "ref")))
    assert "'expression.csv'" in err and "--reference COUNTS,LABELS" in err


def test_config_reference_pair_is_taken_from_the_config_folder(recorder, tmp_path, monkeypatch):
    counts, labels = _reference_tables(tmp_path / "ref")
    (tmp_path / "data.h5ad").write_text("")
    config = tmp_path / "run.toml"
    pair = "ref/reference_counts.csv.gz,ref/reference_celltypes.csv"
    config.write_text(f'[input]\npaths = ["data.h5ad"]\n[pipeline]\nreference = "{pair}"\n')
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["run", str(config), "--out", str(tmp_path / "o")]) == 0
    assert recorder.run[0].config.reference == f"{counts},{labels}"


def test_reference_option_help_documents_the_syntax():
    run = build_parser()._subparsers._group_actions[0].choices["run"]
    action = next(a for a in run._actions if a.dest == "reference")
    assert "COUNTS,LABELS" in action.help and "reference_celltypes.csv" in action.help
    assert "registered dataset" in action.help


# --- --out -----------------------------------------------------------------------------


def test_out_that_is_a_file(recorder, capsys, tmp_path):
    (tmp_path / "taken").write_text("")
    err = _error(capsys, _run(tmp_path, "--out", str(tmp_path / "taken")))
    assert f"output folder {tmp_path / 'taken'} is a file" in err
    assert recorder.read == []


def test_out_under_a_file(recorder, capsys, tmp_path):
    (tmp_path / "taken").write_text("")
    err = _error(capsys, _run(tmp_path, "--out", str(tmp_path / "taken" / "run")))
    assert "cannot be created" in err and str(tmp_path / "taken") in err


def test_out_not_writable(recorder, capsys, tmp_path, monkeypatch):
    # file permissions do not stop root, so the refusal is simulated
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", kwargs.get("dir"))

    monkeypatch.setattr(spatiome.workflow.inputs.tempfile, "mkstemp", denied)
    err = _error(capsys, _run(tmp_path))
    assert f"permission denied writing {tmp_path / 'o'}" in err
    assert recorder.read == []


def test_full_disk_during_the_run_is_one_line(monkeypatch, capsys, tmp_path):
    def full(adata, out, config, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(out) / "results.h5ad"))

    monkeypatch.setattr(
        spatiome.workflow.inputs, "read_input", lambda source: ad.AnnData(np.ones((2, 2)))
    )
    monkeypatch.setattr(spatiome.workflow, "run_pipeline", full)
    err = _error(capsys, _run(tmp_path))
    assert f"no space left on device writing {tmp_path / 'o' / 'results.h5ad'}" in err


def test_demo_checks_out_before_the_work(monkeypatch, capsys, tmp_path):
    def never(*args, **kwargs):
        raise AssertionError("the demo tissue was built before --out was checked")

    monkeypatch.setattr(spatiome.workflow, "demo_tissue", never)
    (tmp_path / "taken").write_text("")
    err = _error(capsys, ["demo", "--out", str(tmp_path / "taken")])
    assert "is a file" in err
