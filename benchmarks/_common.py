"""Helpers shared by the benchmark scripts: timing, machine description, versions, CSV."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spatiome._core.files import atomic_path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
VERSIONED = ("spatiome", "numpy", "scipy", "numba", "anndata", "scanpy", "pandas")


def timed(func: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time over ``repeats`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def machine() -> str:
    """CPU model, core count and OS of this machine."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def package_version(name: str) -> str:
    """Installed version of ``name`` or "not installed"."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def with_environment(table: pd.DataFrame) -> pd.DataFrame:
    """Add machine, Python and package versions as columns."""
    table = table.copy()
    table["machine"] = machine()
    table["python"] = platform.python_version()
    for name in VERSIONED:
        table[name] = package_version(name)
    return table


def environment_line() -> str:
    """One line naming the machine and the main versions, for printed tables."""
    versions = ", ".join(f"{n} {package_version(n)}" for n in VERSIONED)
    return f"machine: {machine()}; python {platform.python_version()}; {versions}"


def write_csv(table: pd.DataFrame, path: Path) -> Path:
    """Write ``table`` atomically and say where."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    print(f"wrote {path}")
    return path


def domain_scores(truth: pd.Series, labels) -> tuple[float, float]:
    """ARI and NMI of ``labels`` on the spots with a ``truth`` label (NaN for no labels)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    if labels is None:
        return float("nan"), float("nan")
    keep = truth.notna().to_numpy()
    truth_kept = truth[keep].astype(str).to_numpy()
    labels_kept = np.asarray(labels)[keep].astype(str)
    return (
        float(adjusted_rand_score(truth_kept, labels_kept)),
        float(normalized_mutual_info_score(truth_kept, labels_kept)),
    )
