"""Vendor readers: spatiome's own against spatialdata-io, on speed, memory and errors.

For Visium, Visium HD (8 µm bins) and Xenium, ``spatiome.io.read`` reads the count table
with spatiome's own reader (``read_visium``, ``read_visium_hd``, ``read_xenium``); the
alternative is the path ``read`` takes through spatialdata-io, ``spatiome.io.read_vendor``:
``spatialdata_io.<reader>`` with the arguments that skip what an AnnData does not hold
(Xenium: no transcripts, images, labels or nucleus boundaries; the cell boundaries are
still read), then ``spatiome.io.read_spatialdata``. spatialdata-io's Visium reader needs
``dataset_id`` when the files carry no prefix (Space Ranger writes none); it is passed.

Data, written by the fixture writers of ``tests/io/vendor_fixtures.py`` (Visium: a
Space Ranger outs/ written here the same way):

* Visium: 5,000 spots x 18,000 genes, 5% non-zero, tissue_positions.csv, hires and lowres
  PNGs;
* Visium HD: one ``square_008um`` folder, 316 x 317 = 100,172 bins x 2,000 genes, 3%
  non-zero, hires and lowres PNGs;
* Xenium: 100,000 cells x 400 genes, 10% non-zero, cells.parquet, cell and nucleus
  boundaries, cells.zarr.zip without masks; no transcripts or images (neither reader
  reads them for a table).

Each reader runs in a fresh process (after importing spatiome.io and spatialdata_io) three
times: recorded are the median wall time and the peak resident memory added over the
resident size before the first call (``VmHWM`` minus ``VmRSS`` of /proc/self/status; the
first call, with its lazy imports, included).

Errors: on small copies of each layout with (1) the count matrix removed, (2) the
positions / cells table removed and (3) the HDF5 matrix cut to half its bytes, the first
line of the error each reader raises (spatiome's reader, spatialdata-io's reader called
directly, and ``read_vendor``, which rewraps OSError, KeyError, ValueError and IndexError).

Run with a Python that has spatiome and spatialdata-io::

    nice python benchmarks/readers.py [--repeats 3] [--workdir DIR] [--scale 1.0]

Prints the tables and writes ``benchmarks/results/readers.csv``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "io"))
from _common import (  # noqa: E402
    RESULTS_DIR,
    environment_line,
    package_version,
    with_environment,
    write_csv,
)
from vendor_fixtures import _write_tenx_h5, write_visium_hd, write_xenium  # noqa: E402

RESULTS = RESULTS_DIR / "readers.csv"
PLATFORMS = ("visium", "visium_hd", "xenium")
DATA = {
    "visium": "5,000 spots x 18,000 genes, 5% non-zero",
    "visium_hd": "100,172 8 um bins x 2,000 genes, 3% non-zero",
    "xenium": "100,000 cells x 400 genes, 10% non-zero",
}
SDIO_KWARGS = {"visium": {"dataset_id": "sample1"}, "visium_hd": {}, "xenium": {}}


def random_counts(n_obs: int, n_genes: int, density: float, seed: int) -> sp.csr_matrix:
    """Sparse counts (1-5 at random places), every row non-empty."""
    rng = np.random.default_rng(seed)
    matrix = sp.random(
        n_obs,
        n_genes,
        density=density,
        format="csr",
        random_state=rng,
        data_rvs=lambda k: rng.integers(1, 6, k),
    )
    matrix = matrix.astype(np.int64).tolil()
    matrix[:, 0] = 1
    return matrix.tocsr()


def write_visium(outs: Path, counts: sp.csr_matrix, seed: int = 0) -> Path:
    """A Space Ranger (2.x) outs/: filtered_feature_bc_matrix.h5, spatial/ with
    tissue_positions.csv (header), scalefactors_json.json and hires/lowres PNGs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    n_spots, n_genes = counts.shape
    rows, cols = np.divmod(np.arange(n_spots), 128)
    barcodes = [f"{''.join(rng.choice(list('ACGT'), 16))}-1" for _ in range(n_spots)]
    spatial = outs / "spatial"
    spatial.mkdir(parents=True, exist_ok=True)
    _write_tenx_h5(
        outs / "filtered_feature_bc_matrix.h5",
        counts,
        barcodes,
        [f"ENSG{i:011d}" for i in range(n_genes)],
        [f"Gene{i}" for i in range(n_genes)],
        ["Gene Expression"] * n_genes,
        library_ids=np.array([b"sample1"]),
    )
    pd.DataFrame(
        {
            "barcode": barcodes,
            "in_tissue": 1,
            "array_row": rows,
            "array_col": 2 * cols + rows % 2,
            "pxl_row_in_fullres": 1500.0 + rows * 150.0,
            "pxl_col_in_fullres": 1500.0 + (2 * cols + rows % 2) * 86.6,
        }
    ).to_csv(spatial / "tissue_positions.csv", index=False)
    scale = {"spot_diameter_fullres": 89.4, "fiducial_diameter_fullres": 144.5}
    scale.update({"tissue_hires_scalef": 0.08, "tissue_lowres_scalef": 0.024})
    (spatial / "scalefactors_json.json").write_text(json.dumps(scale))
    for name, side in (("hires", 2000), ("lowres", 600)):
        pixels = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels, mode="RGB").save(spatial / f"tissue_{name}_image.png")
    return outs


def write_inputs(root: Path, scale: float = 1.0) -> dict[str, Path]:
    """The three output folders; ``scale`` < 1 shrinks them (for the broken copies)."""
    folders = {}
    n_spots, n_genes = max(int(5000 * scale), 50), max(int(18000 * scale), 20)
    folders["visium"] = write_visium(
        root / "visium" / "outs", random_counts(n_spots, n_genes, 0.05, 1)
    )
    side = max(int(316 * np.sqrt(scale)), 10)
    hd = random_counts(side * (side + 1), max(int(2000 * scale), 20), 0.03, 2)
    genes = [f"Gene{i}" for i in range(hd.shape[1])]
    folders["visium_hd"] = write_visium_hd(root / "visium_hd" / "outs", {8: hd}, genes, n_cols=side)
    n_cells = max(int(100_000 * scale), 50)
    cells = random_counts(n_cells, 400, 0.10, 3).toarray().astype(np.int32)
    side_cells = int(np.ceil(np.sqrt(n_cells)))
    rows, cols = np.divmod(np.arange(n_cells), side_cells)
    xy = np.column_stack([cols, rows]) * 12.0 + 10.0
    folders["xenium"] = write_xenium(
        root / "xenium",
        cells,
        xy,
        [f"Gene{i}" for i in range(400)],
        transcripts=False,
        labels=False,
        morphology=False,
    )
    return folders


def own_reader(platform: str):
    from spatiome.io import read_visium, read_visium_hd, read_xenium

    return {
        "visium": read_visium,
        "visium_hd": lambda path: read_visium_hd(path, bin_size=8),
        "xenium": read_xenium,
    }[platform]


def vendor_reader(platform: str):
    from spatiome.io import read_vendor

    return lambda path: read_vendor(path, platform, **SDIO_KWARGS[platform])


def raw_vendor_reader(platform: str):
    import spatialdata_io

    from spatiome.io.spatialdata import _VENDOR_READERS

    name, lean, _ = _VENDOR_READERS[platform]
    options = {**lean, **SDIO_KWARGS[platform]}
    return lambda path: getattr(spatialdata_io, name)(Path(path), **options)


def _status_kb(field: str) -> float:
    """A memory figure of this process from /proc/self/status, in kB. VmHWM is the peak of
    this program's own address space (getrusage's maxrss would include the parent's size at
    fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(platform: str, which: str, path: str, repeats: int) -> None:
    """Time one reader in this (fresh) process and print a JSON line."""
    import gc

    warnings.simplefilter("ignore")
    import spatialdata_io  # noqa: F401

    import spatiome.io  # noqa: F401

    reader = own_reader(platform) if which == "spatiome" else vendor_reader(platform)
    gc.collect()
    # the resident size now, not the peak so far: the imports' transient peak is freed
    base = _status_kb("VmRSS")
    times, shape = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        adata = reader(path)
        times.append(time.perf_counter() - start)
        shape = adata.shape
        del adata
    peak = _status_kb("VmHWM")
    print(
        json.dumps(
            {"seconds": float(np.median(times)), "added_mb": (peak - base) / 1024, "shape": shape}
        )
    )


def run_child(platform: str, which: str, path: Path, repeats: int) -> dict:
    command = [sys.executable, __file__, "--child", platform, which, str(path)]
    command += ["--repeats", str(repeats)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{platform} {which} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def break_copy(folder: Path, platform: str, case: str, where: Path) -> Path:
    """A copy of ``folder`` (an outs/ or bundle) damaged as ``case`` says."""
    target = where / platform / case.replace(" ", "_").replace("/", "_") / folder.name
    shutil.copytree(folder, target)
    matrix = {
        "visium": target / "filtered_feature_bc_matrix.h5",
        "visium_hd": target / "binned_outputs" / "square_008um" / "filtered_feature_bc_matrix.h5",
        "xenium": target / "cell_feature_matrix.h5",
    }[platform]
    positions = {
        "visium": target / "spatial" / "tissue_positions.csv",
        "visium_hd": target
        / "binned_outputs"
        / "square_008um"
        / "spatial"
        / "tissue_positions.parquet",
        "xenium": target / "cells.parquet",
    }[platform]
    if case == "missing matrix":
        matrix.unlink()
    elif case == "missing positions/cells":
        positions.unlink()
    else:
        data = matrix.read_bytes()
        matrix.write_bytes(data[: len(data) // 2])
    return target


def first_line(func, path: Path) -> tuple[str, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            func(path)
        except Exception as err:  # every reader's own kind of error is the point here
            text = str(err).strip().splitlines()
            return type(err).__name__, text[0] if text else ""
    return "", "(no error)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--scale", type=float, default=1.0, help="shrink the data (checks)")
    parser.add_argument("--child", nargs=3, metavar=("PLATFORM", "WHICH", "PATH"))
    args = parser.parse_args()
    if args.child:
        child(*args.child, repeats=args.repeats)
        return

    root = args.workdir or Path(tempfile.mkdtemp(prefix="readers-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    folders = write_inputs(root / "full", scale=args.scale)
    print(f"inputs written in {time.perf_counter() - start:.0f} s under {root}")
    rows = []
    for platform in PLATFORMS:
        own = run_child(platform, "spatiome", folders[platform], args.repeats)
        via = run_child(platform, "spatialdata-io", folders[platform], args.repeats)
        assert own["shape"] == via["shape"], (own, via)
        rows.append(
            {
                "kind": "timing",
                "platform": platform,
                "data": DATA[platform],
                "shape": "x".join(map(str, own["shape"])),
                "spatiome_s": own["seconds"],
                "spatialdata_io_s": via["seconds"],
                "ratio": via["seconds"] / own["seconds"],
                "spatiome_added_mb": own["added_mb"],
                "spatialdata_io_added_mb": via["added_mb"],
                "repeats": args.repeats,
                "load_average": os.getloadavg()[0],
            }
        )

    small = write_inputs(root / "small", scale=0.01)
    for platform in PLATFORMS:
        readers = {
            "spatiome": own_reader(platform),
            "spatialdata_io": raw_vendor_reader(platform),
            "read_vendor": vendor_reader(platform),
        }
        for case in ("missing matrix", "missing positions/cells", "truncated h5"):
            broken = break_copy(small[platform], platform, case, root / "broken")
            for which, func in readers.items():
                kind, line = first_line(func, broken)
                rows.append(
                    {
                        "kind": "error",
                        "platform": platform,
                        "case": case,
                        "reader": which,
                        "error_type": kind,
                        "first_line": line.replace(str(root), "<tmp>"),
                    }
                )
    table = pd.DataFrame(rows)
    table["spatialdata_io"] = package_version("spatialdata-io")
    table["spatialdata"] = package_version("spatialdata")

    print(environment_line() + f"; spatialdata-io {package_version('spatialdata-io')}")
    timing = table[table["kind"] == "timing"]
    print(
        "\n| platform | data | spatiome (s) | spatialdata-io + read_spatialdata (s) | ratio "
        "| spatiome added MB | spatialdata-io added MB |"
    )
    print("|---|---|---|---|---|---|---|")
    for _, row in timing.iterrows():
        print(
            f"| {row.platform} | {row.data} | {row.spatiome_s:.2f} | {row.spatialdata_io_s:.2f} "
            f"| {row.ratio:.1f}x | {row.spatiome_added_mb:.0f} "
            f"| {row.spatialdata_io_added_mb:.0f} |"
        )
    errors = table[table["kind"] == "error"].copy()
    errors["text"] = (errors["error_type"] + ": " + errors["first_line"]).str.replace("|", "/")
    wide = errors.pivot(index=["platform", "case"], columns="reader", values="text")
    print("\n| platform | broken input | spatiome | spatialdata-io (direct) |")
    print("|---|---|---|---|")
    for (platform, case), row in wide.iterrows():
        print(f"| {platform} | {case} | {row['spatiome'][:160]} | {row['spatialdata_io'][:160]} |")
    if args.scale == 1.0:
        write_csv(with_environment(table), RESULTS)
    if args.workdir is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
