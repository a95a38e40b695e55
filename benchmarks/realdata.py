"""`spatiome run` with default settings on every real dataset: which steps ran, which were
skipped and why, and how long each took.

Each dataset in the shared data folder is run as a user would run it, in a fresh process
(``spatiome run --input FOLDER --out OUT --no-cache``), and with its single-cell reference
where it has one (``--reference FOLDER``). The script reads each run's ``provenance.json``
and prints a table of datasets x steps (seconds, or "skipped: why"), then writes the long
form (one row per dataset and step) to ``benchmarks/results/realdata.csv``.

Usage::

    python benchmarks/realdata.py [--data ../shared/data] [--only mouse_ob_rep11 ...]
                                  [--keep OUT_FOLDER]

``--keep`` leaves each run's outputs (report, results) in ``OUT_FOLDER/<dataset>`` to read.
The table's ``(qc)`` row gives the spots analysed of those read, from each run's summary.

Exits 1 when any run crashed (no report written), so it can gate a release.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from _common import RESULTS_DIR, environment_line, with_environment, write_csv

DATASETS = (
    "mouse_ob_rep11",
    "breast_cancer_layer2",
    "seqfish_field43",
    "dlpfc_151673",
    "dlpfc_151674",
    "dlpfc_151675",
    "rctd_merfish_hypothalamus",
    "rctd_cerebellum_slideseq",
)
#: Datasets shipped with a labelled single-cell reference in the same folder.
WITH_REFERENCE = ("rctd_merfish_hypothalamus", "rctd_cerebellum_slideseq")
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def runs(data: Path, only: list[str]) -> list[tuple[str, list[str]]]:
    """(label, extra CLI arguments) of every run: each dataset, and each with its reference."""
    planned = []
    for name in DATASETS:
        if only and name not in only:
            continue
        folder = data / name
        planned.append((name, ["--input", str(folder)]))
        if name in WITH_REFERENCE:
            planned.append(
                (f"{name} + reference", ["--input", str(folder), "--reference", str(folder)])
            )
    return planned


def run_one(arguments: list[str], out: Path) -> tuple[int, float, str]:
    """Run the CLI in a fresh process; its exit code, wall seconds and the end of stderr."""
    command = [sys.executable, "-m", "spatiome", "run", *arguments, "--out", str(out),
               "--no-cache", "--no-progress"]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    return done.returncode, time.perf_counter() - started, done.stderr[-2000:]


def step_rows(label: str, out: Path, code: int, seconds: float, stderr: str) -> list[dict]:
    """One row per step of a finished run (from its provenance), or one row for a crash."""
    record_path = out / "provenance.json"
    if code != 0 or not (out / "report.html").is_file() or not record_path.is_file():
        last = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
        return [{"dataset": label, "step": "(run)", "status": "crashed", "seconds": seconds,
                 "why": last}]  # fmt: skip
    record = json.loads(record_path.read_text())
    rows = []
    for step in record["steps"]:
        status = "skipped" if step.get("skipped") else "ran"
        rows.append({"dataset": label, "step": step["name"], "status": status,
                     "seconds": step["seconds"], "why": step.get("skipped", "")})  # fmt: skip
    rows.append({"dataset": label, "step": "(qc)", "status": "analysed",
                 "seconds": float("nan"), "why": _analysed(out)})  # fmt: skip
    rows.append({"dataset": label, "step": "(run)", "status": "ran", "seconds": seconds,
                 "why": f"report {(out / 'report.html').stat().st_size / 1e6:.2f} MB"})  # fmt: skip
    return rows


def _analysed(out: Path) -> str:
    """ "analysed of read" spots from the run's summary in ``results.h5ad``."""
    import anndata

    summary = anndata.read_h5ad(out / "results.h5ad", backed="r").uns["spatiome"]["summary"]
    n_spots = int(summary["n_spots"])
    return f"{n_spots} of {int(summary.get('n_obs_input', n_spots))}"


def overview(table: pd.DataFrame) -> pd.DataFrame:
    """Datasets x steps: seconds where the step ran, "skipped: why" where it did not."""

    def cell(row) -> str:
        if row.status == "ran":
            return f"{row.seconds:.1f}"
        if row.status == "analysed":
            return row.why
        return f"{row.status}: {row.why}"

    shown = table.assign(cell=table.apply(cell, axis=1))
    order = list(dict.fromkeys(table["step"]))
    return shown.pivot(index="dataset", columns="step", values="cell").reindex(columns=order)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--only", nargs="*", default=[])
    parser.add_argument("--keep", type=Path, default=None, help="keep the outputs here")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"no data folder at {args.data}: pass --data", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for label, arguments in runs(args.data, args.only):
            out = (args.keep or Path(scratch)) / label.replace(" + ", "_")
            code, seconds, stderr = run_one(arguments, out)
            found = step_rows(label, out, code, seconds, stderr)
            rows += found
            status = "crashed" if found[0]["status"] == "crashed" else "report written"
            print(f"{label}: {status} in {seconds:.0f} s", flush=True)
    table = pd.DataFrame(rows)
    print(environment_line())
    with pd.option_context("display.max_columns", None, "display.width", 250,
                           "display.max_colwidth", 60):  # fmt: skip
        print(overview(table).T.fillna("-").to_string())
    write_csv(with_environment(table), RESULTS_DIR / "realdata.csv")
    crashed = table[table["status"] == "crashed"]
    return 1 if len(crashed) else 0


if __name__ == "__main__":
    sys.exit(main())
