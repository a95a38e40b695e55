"""Shared fixtures: where the public datasets live, headless plotting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of public datasets beside the checkout; skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"public datasets not found at {SHARED_DATA}")
    return SHARED_DATA
