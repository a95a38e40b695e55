"""What a run used: versions, platform, parameters, seeds, input checksums, step times."""

from __future__ import annotations

import functools
import json
import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from .._core.files import sha256_inputs, write_text_atomic

#: Distributions whose versions every provenance record lists (when installed).
TRACKED_PACKAGES = (
    "spatiome",
    "anndata",
    "scanpy",
    "numpy",
    "scipy",
    "pandas",
    "scikit-learn",
    "numba",
    "matplotlib",
    "h5py",
    "pyarrow",
    "leidenalg",
    "igraph",
    "umap-learn",
    "pynndescent",
    "tqdm",
    "torch",
    "dask",
    "distributed",
    "spatialdata",
)


def package_versions(packages: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str]:
    """Installed versions of ``packages`` (missing ones are left out).

    Examples
    --------
    >>> "numpy" in package_versions()
    True
    """
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def dependency_versions(root: str = "spatiome") -> dict[str, str]:
    """Versions of ``root`` and of every installed distribution it depends on, recursively.

    Requirements of extras count when the extra's packages are installed, so a run with
    torch records torch and its own dependencies too. Read once per process (reading the
    installed metadata takes about a second).

    Examples
    --------
    >>> versions = dependency_versions()
    >>> {"spatiome", "anndata", "numpy", "scipy"} <= set(versions)
    True
    """
    return dict(_dependency_versions(root))


@functools.lru_cache(maxsize=4)
def _dependency_versions(root: str) -> tuple[tuple[str, str], ...]:
    import re

    found: dict[str, str] = {}
    pending = [root]
    while pending:
        name = pending.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in found:
            continue
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found[key] = distribution.version
        for requirement in distribution.requires or []:
            if "extra ==" in requirement and key != root:
                continue  # optional parts of a dependency are not its dependencies
            match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
            if match:
                pending.append(match.group(1))
    return tuple(sorted(found.items()))


def peak_rss_gb() -> float | None:
    """The process's resident-memory peak so far in GB, or None where the OS does not say.

    Recorded at the end of each step, it shows which step set the run's peak: the first
    step whose value reaches the final one.

    Examples
    --------
    >>> peak = peak_rss_gb()
    >>> peak is None or peak > 0
    True
    """
    try:
        import resource
    except ImportError:  # Windows
        return None
    kilobytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, kilobytes on Linux
    return round(kilobytes * scale / 1e9, 3)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Provenance:
    """Accumulates the record of one run; ``to_dict`` gives the JSON-ready form.

    Examples
    --------
    >>> record = Provenance(command="demo", parameters={"seed": 0}, seed=0)
    >>> with record.step("qc"):
    ...     pass
    >>> [s["name"] for s in record.to_dict()["steps"]]
    ['qc']
    """

    command: str
    parameters: dict[str, Any]
    seed: int
    inputs: dict[str, dict[str, str]] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    started: str = field(default_factory=_now)
    finished: str | None = None
    #: Names of the files the run wrote into its output folder.
    outputs: list[str] = field(default_factory=list)

    def add_input(self, path: str | Path) -> None:
        """Record the sha256 of an input file or of every file in an input folder."""
        resolved = Path(path).resolve()
        self.inputs[str(resolved)] = sha256_inputs(resolved)

    @contextmanager
    def step(self, name: str):
        """Time one pipeline step and record its start, end and duration."""
        entry: dict[str, Any] = {"name": name, "start": _now()}
        tic = time.perf_counter()
        try:
            yield entry
        finally:
            entry["end"] = _now()
            entry["seconds"] = round(time.perf_counter() - tic, 3)
            peak = peak_rss_gb()
            if peak is not None:
                entry["peak_rss_gb"] = peak
            self.steps.append(entry)

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON types."""
        return {
            "command": self.command,
            "started": self.started,
            "finished": self.finished,
            "seed": self.seed,
            "parameters": self.parameters,
            "inputs": self.inputs,
            "steps": self.steps,
            "outputs": self.outputs,
            "versions": package_versions(),
            "dependencies": dependency_versions(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "machine": platform.machine(),
            "argv": sys.argv,
        }

    def write(self, path: str | Path) -> Path:
        """Write the record to ``path`` as JSON, atomically."""
        self.finished = self.finished or _now()
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=2, default=str) + "\n")
