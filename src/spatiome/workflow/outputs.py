"""The output folder of a run: checked before the work, written as one set, logged by append.

A run writes every output into a staging folder inside the output folder and moves the
files into place only when all of them are written (:func:`staged_outputs`), so an
interrupted run never leaves a new ``svg.csv`` beside an old report. Temporary files and
staging folders that a killed run left behind are removed when the next run starts
(:func:`prepare_output_folder`). The log (``spatiome.log``) is appended to, so a re-run that
restores steps from the cache keeps the record of the run that computed them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger("spatiome")

LOG_NAME = "spatiome.log"
_STAGING_PREFIX = ".staging-"
#: Temporary names of :func:`spatiome._core.files.atomic_path`: ``.NAME.RANDOM.tmp[.SUFFIX]``.
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp(\.[A-Za-z0-9]+)?$")


def prepare_output_folder(out_dir: str | os.PathLike[str], option: str = "out_dir") -> Path:
    """Create ``out_dir`` if needed, check that it is writable, remove stale temporaries.

    Raises one :class:`SpatiomeInputError` naming the path when the folder cannot be used
    (see :func:`spatiome.workflow.inputs.check_output_dir`).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / ".svg.csv.abc123.tmp.csv").write_text("half")
    >>> prepare_output_folder(folder) == folder, sorted(p.name for p in folder.iterdir())
    (True, [])
    """
    from .inputs import check_output_dir

    out = check_output_dir(out_dir, option=option)
    remove_stale_temporaries(out)
    return out


def remove_stale_temporaries(out: Path) -> list[str]:
    """Delete half-written files and staging folders that an interrupted run left in ``out``.

    Staging folders of a process that is still running are kept.
    """
    removed = []
    for folder in (out, out / ".spatiome_cache"):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.is_file() and _TEMPORARY.match(path.name):
                path.unlink(missing_ok=True)
                removed.append(path.name)
            elif path.is_dir() and path.name.startswith(_STAGING_PREFIX):
                if _process_alive(path.name[len(_STAGING_PREFIX) :].split("-")[0]):
                    continue
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
    if removed:
        logger.info("removed %d files an interrupted run left in %s", len(removed), out)
    return removed


def _process_alive(pid_text: str) -> bool:
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def staged_outputs(out: Path) -> Iterator[Path]:
    """A staging folder inside ``out`` for the run's outputs; removed whatever happens.

    Move the finished set into place with :func:`publish`.
    """
    staging = out / f"{_STAGING_PREFIX}{os.getpid()}-{os.urandom(4).hex()}"
    staging.mkdir()
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(staging: Path, out: Path, previous: list[str]) -> dict[str, Path]:
    """Move every file and folder of ``staging`` into ``out``; delete outputs of an earlier
    run that this run did not produce (``previous``: their names). Returns the final paths by
    name.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (out / "svg_geary.csv").write_text("old")
    >>> with staged_outputs(out) as staging:
    ...     _ = (staging / "svg.csv").write_text("new")
    ...     paths = publish(staging, out, previous=["svg_geary.csv"])
    >>> sorted(p.name for p in out.iterdir())
    ['svg.csv']
    """
    produced = sorted(staging.iterdir())
    names = {p.name for p in produced}
    final = {}
    for path in produced:
        target = out / path.name
        if path.is_dir():
            _replace_folder(path, target, staging)
        else:
            os.replace(path, target)
        final[path.name] = target
    for name in previous:
        if name not in names and "/" not in name and name != LOG_NAME:
            _remove(out / name)
    return final


def _replace_folder(folder: Path, target: Path, staging: Path) -> None:
    """Move ``folder`` (e.g. a zarr store) to ``target``; an older one there is moved aside
    into ``staging`` first, so that ``target`` is never half old, half new."""
    if target.is_dir():
        os.replace(target, staging / f".previous-{target.name}")
    elif target.exists():
        target.unlink()
    os.replace(folder, target)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def previous_outputs(out: Path) -> list[str]:
    """Names of the files the last finished run in ``out`` wrote (from its provenance)."""
    import json

    try:
        record = json.loads((out / "provenance.json").read_text())
    except (OSError, ValueError):
        return []
    files = record.get("outputs", [])
    return [str(f) for f in files] if isinstance(files, list) else []


def attach_log(out: Path) -> logging.Handler:
    """Append this run's log to ``out/spatiome.log``, starting with a header line."""
    handler = logging.FileHandler(out / LOG_NAME, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("spatiome")
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    logger.info("===== run started on %s (pid %d): %s", where()["host"], os.getpid(), _argv())
    return handler


def _argv() -> str:
    return " ".join(sys.argv) if sys.argv and sys.argv[0] else "(Python API)"


def where() -> dict[str, Any]:
    """Where a computation happens: host, user, process, working folder and version."""
    from .. import __version__

    try:
        user = os.getlogin()
    except OSError:
        import getpass

        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = ""
    return {
        "host": platform.node(),
        "user": user,
        "pid": os.getpid(),
        "cwd": os.getcwd(),
        "spatiome": __version__,
    }


class StepLog(logging.Handler):
    """Collects what the ``spatiome`` logger says during one step (kept with its cache entry)."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.getMessage()}")

    @contextlib.contextmanager
    def capture(self) -> Iterator[list[str]]:
        logging.getLogger("spatiome").addHandler(self)
        try:
            yield self.lines
        finally:
            logging.getLogger("spatiome").removeHandler(self)
