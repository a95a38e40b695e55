"""Step cache on DLPFC 151673: size next to ``results.h5ad``, and time to save and load.

``spatiome run`` with the default configuration on DLPFC section 151673 (3,639 spots x
33,538 genes, from ``$SPATIOME_DATA/dlpfc_151673``) fills ``OUT/.spatiome_cache`` with one
entry per step (a zip of JSON, npy and Arrow members, :mod:`spatiome.workflow._archive`).
Every entry is then read back and written again under each compression setting, timing
the write and the read (median of ``--repeats``), and pickled in memory as the reference
the cache used before (the size and time a pickle file of the same values would take; no
pickle file is written or read).

Run::

    SPATIOME_DATA=/path/to/data nice python benchmarks/step_cache.py [--out DIR] [--repeats 3]

``--out`` reuses a finished run's folder (it is run when it has no ``results.h5ad``).
Prints one row per entry and setting plus the totals, and writes
``benchmarks/results/step_cache.csv``.
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import RESULTS_DIR, environment_line, timed, with_environment, write_csv  # noqa: E402

from spatiome.workflow import _archive  # noqa: E402
from spatiome.workflow.cache import CACHE_FOLDER, ENTRY_SUFFIX  # noqa: E402

#: name -> (zip compression of npy members, its level, Arrow compression of tables)
SETTINGS = {
    "none": (zipfile.ZIP_STORED, None, "uncompressed"),
    "deflate1+zstd (default)": (zipfile.ZIP_DEFLATED, 1, "zstd"),
    "deflate6+zstd": (zipfile.ZIP_DEFLATED, 6, "zstd"),
    "none+lz4": (zipfile.ZIP_STORED, None, "lz4"),
}


def run_dlpfc(out: Path) -> None:
    """``spatiome run`` on DLPFC 151673 into ``out`` with the default configuration."""
    source = Path(os.environ["SPATIOME_DATA"]) / "dlpfc_151673"
    command = [sys.executable, "-m", "spatiome", "run", "--input", str(source), "--out",
               str(out), "--no-progress"]  # fmt: skip
    subprocess.run(command, check=True)


def measure_entry(entry: Path, folder: Path, repeats: int) -> list[dict]:
    """Write and read one entry's values under every setting, and pickle them in memory."""
    values = _archive.read_archive(entry)
    rows = []
    for setting, (zip_compression, level, table_compression) in SETTINGS.items():
        _archive.ARRAY_COMPRESSION, _archive.ARRAY_COMPRESSLEVEL = zip_compression, level
        _archive.TABLE_COMPRESSION = table_compression
        path = folder / f"{entry.stem}-{len(rows)}{ENTRY_SUFFIX}"
        write_s, _ = timed(lambda path=path: _archive.write_archive(path, values), repeats)
        read_s, _ = timed(lambda path=path: _archive.read_archive(path), repeats)
        rows.append(_row(entry, setting, path.stat().st_size, write_s, read_s))
        path.unlink()
    pickled_write_s, pickled = timed(
        lambda: pickle.dumps(values, protocol=pickle.HIGHEST_PROTOCOL), repeats
    )
    pickled_read_s, _ = timed(lambda: pickle.loads(pickled), repeats)
    rows.append(_row(entry, "pickle (before)", len(pickled), pickled_write_s, pickled_read_s))
    return rows


def _row(entry: Path, setting: str, size: int, write_s: float, read_s: float) -> dict:
    return {"entry": entry.stem[:8], "setting": setting, "mb": size / 1e6,
            "write_s": write_s, "read_s": read_s}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="a finished (or new) run folder")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp()) / "dlpfc_151673"
    if not (out / "results.h5ad").is_file():
        run_dlpfc(out)
    entries = sorted((out / CACHE_FOLDER).glob(f"*{ENTRY_SUFFIX}"))
    defaults = (_archive.ARRAY_COMPRESSION, _archive.ARRAY_COMPRESSLEVEL,
                _archive.TABLE_COMPRESSION)  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        rows = [row for e in entries for row in measure_entry(e, Path(folder), args.repeats)]
    _archive.ARRAY_COMPRESSION, _archive.ARRAY_COMPRESSLEVEL, _archive.TABLE_COMPRESSION = defaults
    table = pd.DataFrame(rows)
    totals = table.groupby("setting", sort=False)[["mb", "write_s", "read_s"]].sum()
    totals["results_h5ad_mb"] = (out / "results.h5ad").stat().st_size / 1e6
    totals["load_1min"] = os.getloadavg()[0]
    print(environment_line())
    print(f"{len(entries)} entries in {out / CACHE_FOLDER}")
    print(table.round(3).to_string(index=False))
    print(totals.round(3).to_string())
    write_csv(with_environment(totals.reset_index()), RESULTS_DIR / "step_cache.csv")


if __name__ == "__main__":
    main()
