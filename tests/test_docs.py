"""The documentation stays true: the API reference is current, the tutorial's commands parse."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from spatiome.cli import build_parser

REPO = Path(__file__).resolve().parents[1]


def test_api_reference_is_current():
    spec = importlib.util.spec_from_file_location("build_api", REPO / "docs" / "build_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (REPO / "docs" / "api.md").read_text() == module.render(), (
        "docs/api.md is out of date: run python docs/build_api.py"
    )


def _tutorial_commands() -> list[str]:
    text = (REPO / "docs" / "tutorial_dlpfc.md").read_text()
    blocks = re.findall(r"```bash\n(.+?)```", text, re.S)
    lines = [line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("spatiome ")]


@pytest.mark.parametrize("command", _tutorial_commands())
def test_tutorial_commands_parse(command):
    command = re.sub(r'"\$\(.+?\)"', "DATA_FOLDER", command).split(">")[0]
    build_parser().parse_args(shlex.split(command)[1:])


def test_tutorial_covers_the_cli():
    commands = " ".join(_tutorial_commands())
    for part in ("spatiome run", "spatiome config --default", "spatiome config --check",
                 "spatiome datasets"):  # fmt: skip
        assert part in commands
