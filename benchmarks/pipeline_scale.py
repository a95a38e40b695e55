"""The default pipeline against scanpy + squidpy at scale: wall time, peak memory, steps.

For each size, a Visium-like tissue is simulated
(``datasets.simulate_tissue(n_spots=N, n_genes=G, layout="hex", random_state=0)``, about
47% non-zero) and written to ``WORKDIR/sim_<N>x<G>.h5ad`` (kept, and reused by later runs
with the same size). Then, one after the other, each in a fresh process:

* spatiome: ``spatiome run --input sim.h5ad --out OUT --no-cache --no-progress`` with the
  default settings; per-step seconds from ``OUT/provenance.json``, and from the
  ``step ...: done in ...`` lines of ``OUT/spatiome.log`` for the steps the provenance
  lacks (``report``, during which the provenance is written; every step after a crash);
  each step row also carries the process's memory peak at the end of that step
  (``peak_so_far_gb``), so the step that set the run's peak is the first to reach it;
* the peer: ``_scanpy_squidpy_pipeline.py`` (read, QC metrics, normalize_total + log1p,
  HVG seurat 2,000, PCA 30 ARPACK, kNN 15, UMAP, Leiden, Visium hex grid graph, Moran's I
  on all genes with BH, Wilcoxon markers with ``pts=True``, six figures, write_h5ad);
  per-step seconds from ``OUT/steps.json``.

Measured per process: wall seconds from start to exit (interpreter start-up, imports and
reading the input included) and peak resident memory. The peak is ``ru_maxrss`` of the
resource usage ``os.wait4`` returns for that one child (the largest resident set of the
child and of any process it started and waited for; a child's own figure, so runs do not
mix as ``RUSAGE_CHILDREN`` of this process would). Linux starts a child's high-water mark
at the resident size of the process that launched it, so this script imports only the
standard library until the runs are done (a child that sleeps reports 15 MB). With psutil
installed the sum of resident memory over the process tree is also polled every 0.2 s
(``polled_rss_gb``): it counts worker processes together, and it is what ``--max-rss-gb``
watches; the tables show the larger of the two. Checked with a child that allocates 500 MB
and frees it at once: ``ru_maxrss`` 0.53 GB, polling 0.29-0.41 GB. The load average is
recorded before and after each run: other jobs on the machine slow both tools.

Steps compared (``STAGES``), spatiome's step names -> the peer's:

==================  ==========================  ==============================  ======
stage               spatiome                    peer                            shared
==================  ==========================  ==============================  ======
qc                  qc                          qc                              yes
normalize           normalize                   normalize                       yes
reduce              reduce                      hvg, pca, neighbors, umap       yes
leiden              leiden                      leiden                          yes
spatial graph       graph                       spatial_graph                   yes
moran               moran                       moran                           yes
markers             markers                     markers                         yes
report              report                      figures, write                  no
read                (outside the steps)         read                            no
==================  ==========================  ==============================  ======

Spatiome's other steps (spatial_qc, doublets, n_domains, domains_cluster, neighbourhoods,
sparkx, modules_stihc) have no peer. "Shared" is QC through markers: the shared ratio is
spatiome's seconds on the shared steps over the peer's on the same steps (figures, writing
and reading left out on both sides). Spatiome's markers are those of its
``domains.cluster`` domains (the peer's: of the Leiden clusters), and after ``spatial_qc``
spatiome analyses only the spots it kept (a few percent fewer). Wall time minus the steps
(start-up, imports, reading the input, provenance) is the row ``(outside steps)``.

Usage (run with ``nice``; squidpy must be importable by ``--peer-python``)::

    nice python benchmarks/pipeline_scale.py [--sizes 10000 50000 200000 1000000]
        [--genes G] [--tools spatiome peer] [--workdir DIR] [--keep]
        [--peer-python PATH] [--timeout SECONDS] [--max-rss-gb GB]

Default sizes: 10,000, 50,000 and 200,000 spots with 2,000 genes and 1,000,000 with 500
genes (``--genes`` sets the genes of every size). Prints a markdown table with one row per
size (totals, shared steps, ratios, peak memory, load) and one of seconds per stage, and
writes the long form (one row per run and step, plus a ``(total)`` row per run) to
``benchmarks/results/pipeline_scale.csv``.
Outputs of the runs are deleted unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

# Only the standard library is imported before the runs: a child's ru_maxrss starts at the
# resident size of the process that launched it (Linux keeps the high-water mark across
# fork and exec), so this process stays small (about 20 MB) until every run is done.
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "pipeline_scale.csv"
PEER_SCRIPT = HERE / "_scanpy_squidpy_pipeline.py"
DEFAULT_SIZES = (10_000, 50_000, 200_000, 1_000_000)
LARGE = 1_000_000  # from this size on, the default is 500 genes
TOOLS = ("spatiome", "peer")
POLL_SECONDS = 0.2
GB = 1e9

#: (stage, spatiome steps, peer steps, shared): how the two tools' steps line up.
STAGES = (
    ("qc", ("qc",), ("qc",), True),
    ("normalize", ("normalize",), ("normalize",), True),
    ("reduce", ("reduce",), ("hvg", "pca", "neighbors", "umap"), True),
    ("leiden", ("leiden",), ("leiden",), True),
    ("spatial graph", ("graph",), ("spatial_graph",), True),
    ("moran", ("moran",), ("moran",), True),
    ("markers", ("markers",), ("markers",), True),
    ("report", ("report",), ("figures", "write"), False),
    ("read", (), ("read",), False),
)
OUTSIDE = "(outside steps)"
TOTAL = "(total)"
STEP_LINE = re.compile(r"step (\S+): done in ([0-9.]+) s(?: \(memory peak so far ([0-9.]+) GB\))?")


@dataclass
class Measured:
    """What one process did: exit status, wall seconds, peak memory and why it stopped."""

    returncode: int
    seconds: float
    peak_rss_gb: float
    polled_rss_gb: float
    stopped: str = ""


def genes_for(n_spots: int, genes: int | None) -> int:
    """The gene count of a size: ``genes`` if given, else 2,000 (500 from 1,000,000 spots)."""
    if genes is not None:
        return genes
    return 500 if n_spots >= LARGE else 2000


def simulate(n_spots: int, n_genes: int, path: Path) -> None:
    """Simulate the tissue and write it (called in a fresh process: one tissue per process)."""
    import spatiome as sm

    adata = sm.datasets.simulate_tissue(
        n_spots=n_spots, n_genes=n_genes, layout="hex", random_state=0
    )
    adata.write_h5ad(path)


def simulated_input(n_spots: int, n_genes: int, workdir: Path) -> Path:
    """The tissue's h5ad in ``workdir``, simulated in a subprocess unless already there."""
    path = workdir / f"sim_{n_spots}x{n_genes}.h5ad"
    if path.is_file():
        print(f"reusing {path}", flush=True)
        return path
    partial = path.with_suffix(".partial.h5ad")
    start = time.perf_counter()
    command = [sys.executable, __file__, "--simulate", str(n_spots), str(n_genes), str(partial)]
    subprocess.run(command, check=True)
    partial.rename(path)
    print(f"simulated {path.name} in {time.perf_counter() - start:.0f} s", flush=True)
    return path


def tree_rss_bytes(root) -> int:
    """Resident bytes of ``root`` (a psutil.Process) and all its descendants, now."""
    import psutil

    total = 0
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue  # exited (or a zombie) between listing and reading
    return total


def _watcher(pid: int):
    """A psutil handle on ``pid``, or None without psutil (then nothing is polled)."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def _stop_tree(pid: int, watcher) -> None:
    """Kill the run's process and the processes it started (by id, children first)."""
    if watcher is not None:
        import psutil

        try:
            children = watcher.children(recursive=True)
        except psutil.Error:
            children = []
        for child in reversed(children):
            try:
                child.kill()
            except psutil.Error:
                continue  # it exited meanwhile
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def measure(
    command: list[str], log: Path, timeout: float | None, max_rss_gb: float | None
) -> Measured:
    """Run ``command`` in a fresh process (output to ``log``): wall time and peak memory."""
    env = {**os.environ, "MPLBACKEND": "Agg"}
    start = time.perf_counter()
    with log.open("w") as stream:
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, env=env)
    watcher = _watcher(process.pid)
    polled, stopped = 0, ""
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if watcher is not None:
            polled = max(polled, tree_rss_bytes(watcher))
        elapsed = time.perf_counter() - start
        if not stopped and timeout is not None and elapsed > timeout:
            stopped = f"stopped after {elapsed:.0f} s (--timeout)"
        if not stopped and max_rss_gb is not None and polled > max_rss_gb * GB:
            stopped = f"stopped at {polled / GB:.1f} GB after {elapsed:.0f} s (--max-rss-gb)"
        if stopped and process.returncode is None:
            _stop_tree(process.pid, watcher)
            process.returncode = -signal.SIGKILL
        time.sleep(POLL_SECONDS)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    peak = usage.ru_maxrss * 1024 / GB  # Linux reports kibibytes
    polled_gb = polled / GB if watcher is not None else float("nan")
    return Measured(process.returncode, seconds, peak, polled_gb, stopped)


def spatiome_command(input_path: Path, out: Path) -> list[str]:
    """The default pipeline as a user runs it."""
    return [sys.executable, "-m", "spatiome", "run", "--input", str(input_path),
            "--out", str(out), "--no-cache", "--no-progress"]  # fmt: skip


def peer_command(input_path: Path, out: Path, python: str) -> list[str]:
    """The scanpy + squidpy script on the same input."""
    return [python, str(PEER_SCRIPT), "--input", str(input_path), "--out", str(out)]


def spatiome_steps(out: Path) -> list[dict]:
    """Spatiome's steps from its provenance, then those only its log has.

    ``provenance.json`` is written inside the ``report`` step, so its time is read from the
    ``step report: done in ... s`` line of ``spatiome.log``; after a crash (no provenance)
    every step comes from the log.
    """
    recorded = []
    record = out / "provenance.json"
    if record.is_file():
        recorded = [{"step": s["name"], "seconds": s["seconds"], "why": s.get("skipped", ""),
                     "status": "skipped" if s.get("skipped") else "ran",
                     "peak_so_far_gb": s.get("peak_rss_gb")}
                    for s in json.loads(record.read_text())["steps"]]  # fmt: skip
    names = {step["step"] for step in recorded}
    log = out / "spatiome.log"
    lines = log.read_text().splitlines() if log.is_file() else []
    found = (STEP_LINE.search(line) for line in lines)
    logged = [{"step": m[1], "seconds": float(m[2]), "status": "ran",
               "peak_so_far_gb": float(m[3]) if m[3] else None} for m in found if m]  # fmt: skip
    return recorded + [step for step in logged if step["step"] not in names]


def peer_steps(out: Path) -> list[dict]:
    """The peer's steps from ``OUT/steps.json`` (rewritten after each step it finished)."""
    record = out / "steps.json"
    if not record.is_file():
        return []
    steps = json.loads(record.read_text())["steps"]
    return [{"step": s["name"], "seconds": s["seconds"], "status": "ran"} for s in steps]


def stage_of(tool: str, step: str) -> tuple[str, bool]:
    """The stage a tool's step belongs to, and whether the stage is shared."""
    for stage, ours, theirs, shared in STAGES:
        if step in (ours if tool == "spatiome" else theirs):
            return stage, shared
    return step, False


def last_line(log: Path) -> str:
    """The last non-empty line of a run's output, to say why it failed."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def run_rows(tool: str, n_spots: int, n_genes: int, args, workdir: Path) -> list[dict]:
    """Run one tool on one size: its step rows, an ``(outside steps)`` and a total row."""
    input_path = simulated_input(n_spots, n_genes, workdir)
    out = workdir / f"{tool}_{n_spots}x{n_genes}"
    shutil.rmtree(out, ignore_errors=True)
    log = workdir / f"{tool}_{n_spots}x{n_genes}.log"
    if tool == "spatiome":
        command = spatiome_command(input_path, out)
    else:
        command = peer_command(input_path, out, args.peer_python)
    load_before = os.getloadavg()[0]
    measured = measure(command, log, args.timeout, args.max_rss_gb)
    load_after = os.getloadavg()[0]
    steps = spatiome_steps(out) if tool == "spatiome" else peer_steps(out)
    finished = measured.returncode == 0 and not measured.stopped
    status = "ran" if finished else "stopped" if measured.stopped else "crashed"
    why = measured.stopped or ("" if finished else last_line(log))
    base = {"tool": tool, "n_spots": n_spots, "n_genes": n_genes}
    rows = []
    for step in steps:
        stage, shared = stage_of(tool, step["step"])
        rows.append({**base, **step, "stage": stage, "shared": shared})
    if finished:
        outside = measured.seconds - sum(step["seconds"] for step in steps)
        rows.append({**base, "step": OUTSIDE, "seconds": outside, "status": "ran",
                     "stage": OUTSIDE, "shared": False})  # fmt: skip
    rows.append({**base, "step": TOTAL, "seconds": measured.seconds, "status": status,
                 "stage": TOTAL, "shared": False, "why": why,
                 "peak_rss_gb": measured.peak_rss_gb, "polled_rss_gb": measured.polled_rss_gb,
                 "load_before": load_before, "load_after": load_after})  # fmt: skip
    print(f"{tool} {n_spots:,} x {n_genes:,}: {status} in {measured.seconds:.0f} s, peak "
          f"{measured.peak_rss_gb:.2f} GB, load {load_before:.1f} -> {load_after:.1f}"
          + (f" ({why})" if why else ""), flush=True)  # fmt: skip
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return rows


def totals(table: pd.DataFrame) -> pd.DataFrame:
    """One row per size: totals, shared-step seconds, their ratios, peaks and load."""
    import pandas as pd

    rows = []
    for (n_spots, n_genes), runs in table.groupby(["n_spots", "n_genes"], sort=True):
        row = {"spots": f"{n_spots:,}", "genes": f"{n_genes:,}"}
        for tool in TOOLS:
            run = runs[runs["tool"] == tool]
            total = run[run["step"] == TOTAL]
            finished = not total.empty and total["status"].iloc[0] == "ran"
            nan = float("nan")
            row[f"{tool} (s)"] = total["seconds"].iloc[0] if finished else nan
            row[f"{tool} shared (s)"] = run.loc[run["shared"], "seconds"].sum() if finished else nan
            row[f"{tool} peak (GB)"] = _peak(total)
            row[f"{tool} load"] = _load(total)
        row["ratio"] = row["spatiome (s)"] / row["peer (s)"]
        row["shared ratio"] = row["spatiome shared (s)"] / row["peer shared (s)"]
        rows.append(row)
    order = ["spots", "genes", "spatiome (s)", "peer (s)", "ratio", "spatiome shared (s)",
             "peer shared (s)", "shared ratio", "spatiome peak (GB)", "peer peak (GB)",
             "spatiome load", "peer load"]  # fmt: skip
    return pd.DataFrame(rows).reindex(columns=order)


def _peak(total: pd.DataFrame) -> float:
    """A run's peak memory: the larger of ``ru_maxrss`` and the polled process-tree sum."""
    if total.empty:
        return float("nan")
    return float(total[["peak_rss_gb", "polled_rss_gb"]].iloc[0].max())


def _load(total: pd.DataFrame) -> str:
    """ "before-after" one-minute load average of a run."""
    if total.empty:
        return "-"
    return f"{total['load_before'].iloc[0]:.1f}-{total['load_after'].iloc[0]:.1f}"


def per_step(table: pd.DataFrame) -> pd.DataFrame:
    """Stages x (size, tool): seconds, summed over each tool's steps in the stage."""
    ran = table[table["step"] != TOTAL]
    wide = ran.pivot_table(
        index="stage", columns=["n_spots", "tool"], values="seconds", aggfunc="sum"
    )
    sizes = sorted({n_spots for n_spots, _ in wide.columns})
    wide = wide.reindex(columns=[(n, tool) for n in sizes for tool in TOOLS])
    wide.columns = [f"{tool} {n_spots:,} (s)" for n_spots, tool in wide.columns]
    known = [stage for stage, *_ in STAGES]
    in_run_order = dict.fromkeys(ran["stage"])
    others = [stage for stage in in_run_order if stage not in known and stage != OUTSIDE]
    return wide.reindex([*known, *others, OUTSIDE]).dropna(how="all")


def markdown(table: pd.DataFrame, index: bool = False) -> str:
    """A markdown table: ratios and GB with 2 decimals, seconds with 1, "-" for missing."""
    if index:
        table = table.reset_index()

    def cell(value, column: str) -> str:
        if not isinstance(value, float):
            return str(value)
        if value != value:
            return "-"
        return f"{value:,.2f}" if "ratio" in column or "GB" in column else f"{value:,.1f}"

    columns = [str(column) for column in table.columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in table.itertuples(index=False):
        lines.append(
            "| " + " | ".join(cell(v, c) for v, c in zip(row, columns, strict=True)) + " |"
        )
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES),
                        help="numbers of spots (default: %(default)s)")  # fmt: skip
    parser.add_argument("--genes", type=int, default=None,
                        help="genes at every size (default: 2,000; 500 from 1M spots)")  # fmt: skip
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the simulated inputs and run outputs go (default: a folder "
                             "in the temporary directory, kept for later runs)")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep each run's output folder")
    parser.add_argument("--peer-python", default=sys.executable,
                        help="the Python with scanpy and squidpy (default: this one)")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=None, help="stop a run after seconds")
    parser.add_argument("--max-rss-gb", type=float, default=None,
                        help="stop a run whose processes hold more than this")  # fmt: skip
    parser.add_argument("--results", type=Path, default=RESULTS, help="the CSV to write")
    parser.add_argument("--simulate", nargs=3, metavar=("N_SPOTS", "N_GENES", "PATH"),
                        help=argparse.SUPPRESS)  # fmt: skip
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.simulate:
        simulate(int(args.simulate[0]), int(args.simulate[1]), Path(args.simulate[2]))
        return 0
    workdir = args.workdir or Path(tempfile.gettempdir()) / "spatiome_pipeline_scale"
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for n_spots in args.sizes:
        n_genes = genes_for(n_spots, args.genes)
        for tool in args.tools:
            rows += run_rows(tool, n_spots, n_genes, args, workdir)
    import pandas as pd

    sys.path.insert(0, str(HERE))
    from _common import environment_line, with_environment, write_csv

    table = pd.DataFrame(rows)
    print(environment_line())
    print(f"{os.cpu_count()} cores; load average is the one-minute figure before-after each run")
    print(markdown(totals(table)))
    print()
    print(markdown(per_step(table), index=True))
    write_csv(with_environment(table), args.results)
    failed = table[(table["step"] == TOTAL) & (table["status"] == "crashed")]
    return 1 if len(failed) else 0


if __name__ == "__main__":
    sys.exit(main())
