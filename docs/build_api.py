"""Write docs/api.md, the API reference, from the docstrings of spatiome's public functions.

Usage: python docs/build_api.py [docs/api.md]

Every name in the ``__all__`` of each subpackage is listed with its signature and its
docstring, in the order of ``spatiome._SUBMODULES``. tests/test_docs.py fails when the
file is out of date.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

import spatiome

HEADER = """# API reference

Generated from the docstrings by `python docs/build_api.py`; do not edit by hand. Every
function takes an AnnData first and writes its results to the standard slots (see the
README); the examples in each docstring run as tests.
"""


def _signature(obj) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""


def _entry(module: str, name: str, obj) -> str:
    kind = "class" if inspect.isclass(obj) else ("function" if callable(obj) else "constant")
    if kind == "constant":
        return f"### `{module}.{name}`\n\nConstant: `{obj!r}`\n"
    doc = inspect.getdoc(obj) or "(no docstring)"
    return f"### `{module}.{name}{_signature(obj)}`\n\n*{kind}*\n\n```text\n{doc}\n```\n"


def render() -> str:
    """The whole reference as Markdown."""
    parts = [HEADER, "## Contents\n"]
    parts += [f"- [`spatiome.{m}`](#spatiome{m})" for m in spatiome._SUBMODULES]
    parts.append("")
    for name in spatiome._SUBMODULES:
        module = importlib.import_module(f"spatiome.{name}")
        summary = (inspect.getdoc(module) or "").split("\n\n", 1)[0]
        parts.append(f"## spatiome.{name}\n\n{summary}\n")
        for member in module.__all__:
            parts.append(_entry(name, member, getattr(module, member)))
    return "\n".join(parts)


def main(target: str = "docs/api.md") -> None:
    Path(target).write_text(render())
    print(f"wrote {target}")


if __name__ == "__main__":
    main(*sys.argv[1:])
