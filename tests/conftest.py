"""Shared fixtures: where the public datasets live, headless plotting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest-xdist every worker has a core of its own: a second BLAS/OpenMP thread
    # per worker only oversubscribes the machine (OpenMP's spinning threads then slow
    # histogram gradient boosting down many times over). Set before numpy, scikit-learn
    # and torch load their thread pools; numba keeps its own default, which the tests of
    # thread-independent results vary explicitly.
    for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_variable, "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

#: The test files that take longest (a minute or more each on two cores), run first under
#: pytest-xdist so that no worker starts one of them while the other runs out of work.
LONGEST_FIRST = (
    "tests/realdata/test_matrix.py",
    "tests/workflow/test_snakemake.py",
    "tests/workflow/test_cache.py",
    "tests/domains/test_domain_sections.py",
    "tests/workflow/test_pipeline.py",
    "tests/ml/test_ml.py",
)


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}

    def key(item) -> int:
        path = Path(str(item.fspath)).resolve()
        name = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else ""
        return rank.get(name, len(rank))

    items.sort(key=key)  # stable: the order within and after the listed files is kept


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of public datasets beside the checkout; skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"public datasets not found at {SHARED_DATA}")
    return SHARED_DATA
