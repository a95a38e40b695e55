"""Cost of the counts check in SPARK-X: the compiled one-pass check against the former one.

``_core.validate.check_counts`` used to take several numpy passes over the stored values
(``isfinite``, ``min``, ``mod``), each with a temporary as large as the data; it now reads
them once in a compiled loop. On a simulated tissue of 50,000 spots x 1,000 genes at about
40% non-zero (negative binomial counts, ``simulate_tissue(mean_depth=750)``), stored as
int32, float32 and float64, this times in the same run:

- ``check_counts`` alone, now and with the former implementation (kept below as
  ``former_check_counts``, a copy of the code it replaced);
- ``svg.sparkx`` end to end, now and with the former check patched in, and whether the
  p-values of both runs are identical.

R's SPARK-X is not run here (R is not installed on this machine): its time on this shape,
10.9 s single-threaded, measured earlier on a machine like this one (see
``svg_speed.py``), is listed as the reference for the ratio.

Run::

    python benchmarks/sparkx_validation.py [--repeats 3]

Prints a table and writes ``benchmarks/results/sparkx_validation.csv``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

import spatiome as sm
import spatiome.svg.sparkx as sparkx_module
from spatiome._core.validate import SpatiomeInputError, _counts_hint, _values, check_counts

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS_DIR,
    environment_line,
    timed,
    with_environment,
    write_csv,
)

#: R SPARK-X single-thread time on 50,000 x 1,000, measured earlier (not in this run).
R_REFERENCE_SECONDS = 10.9
SHAPE = (50_000, 1_000, 750.0)
DTYPES = ("int32", "float32", "float64")


def former_check_counts(matrix: sp.spmatrix | np.ndarray, *, where: str = "counts") -> None:
    """The check as it was before the compiled pass (same errors)."""
    values = _values(matrix)
    if values.size == 0:
        return
    is_integer = np.issubdtype(values.dtype, np.integer)
    if not is_integer and not np.isfinite(values).all():
        n_bad = int((~np.isfinite(values)).sum())
        raise SpatiomeInputError(
            f"{where} contains NaN or infinite values ({n_bad} entries): raw counts are "
            "finite numbers; fix the input"
        )
    if values.min() < 0:
        raise SpatiomeInputError(
            f"{where} contains negative values (min {values.min():g}); raw counts are "
            f"expected{_counts_hint(where)}"
        )
    if not is_integer:
        fractional = np.mod(values, 1) != 0
        if fractional.any():
            example = values[np.flatnonzero(fractional)[0]]
            raise SpatiomeInputError(
                f"{where} contains non-integer values (e.g. {example:g}); raw counts are "
                f"expected{_counts_hint(where)}"
            )


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def run_sparkx(adata: AnnData, check: Callable) -> pd.DataFrame:
    sparkx_module.check_counts = check
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return sm.svg.sparkx(adata, layer="counts", copy=True)
    finally:
        sparkx_module.check_counts = check_counts


def measure(adata: AnnData, dtype: str, repeats: int) -> dict:
    counts = adata.layers["counts"].astype(dtype)
    adata.layers["counts"] = counts
    now, _ = timed(lambda: check_counts(counts), repeats)
    former, _ = timed(lambda: former_check_counts(counts), repeats)
    sparkx_now, table_now = timed(lambda: run_sparkx(adata, check_counts), repeats)
    sparkx_former, table_former = timed(lambda: run_sparkx(adata, former_check_counts), repeats)
    return {
        "dtype": dtype,
        "n_spots": adata.n_obs,
        "n_genes": adata.n_vars,
        "nnz": counts.nnz,
        "density": counts.nnz / (adata.n_obs * adata.n_vars),
        "check_seconds": now,
        "former_check_seconds": former,
        "check_speedup": former / now,
        "sparkx_seconds": sparkx_now,
        "former_sparkx_seconds": sparkx_former,
        "pvalues_identical": bool(
            np.array_equal(table_now["pval"].to_numpy(), table_former["pval"].to_numpy())
        ),
        "r_seconds_reference": R_REFERENCE_SECONDS,
        "ratio_to_r": R_REFERENCE_SECONDS / sparkx_now,
        "former_ratio_to_r": R_REFERENCE_SECONDS / sparkx_former,
        "load_average": load(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "sparkx_validation.csv")
    args = parser.parse_args(argv)
    print(environment_line(), flush=True)
    n_spots, n_genes, depth = SHAPE
    adata = sm.datasets.simulate_tissue(
        n_spots=n_spots, n_genes=n_genes, mean_depth=depth, random_state=0
    )
    del adata.X
    # Compile the kernels before anything is timed.
    warm = adata[:500].copy()
    for dtype in DTYPES:
        check_counts(warm.layers["counts"].astype(dtype))
    run_sparkx(warm, check_counts)

    rows = []
    for dtype in DTYPES:
        rows.append(measure(adata, dtype, args.repeats))
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    table["r_reference"] = "R SPARK sparkx(), 1 thread, measured earlier (not this run)"
    print()
    shown = [
        "dtype",
        "density",
        "check_seconds",
        "former_check_seconds",
        "sparkx_seconds",
        "former_sparkx_seconds",
        "ratio_to_r",
        "former_ratio_to_r",
        "pvalues_identical",
        "load_average",
    ]
    print(table[shown].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    write_csv(with_environment(table), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
