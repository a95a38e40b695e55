"""The container recipes install spatiome the README's way, in the pinned environment."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("Dockerfile", "spatiome.def")


def _readme_install_command() -> str:
    setup = (REPO / "README.md").read_text().split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(?:bash|sh)\n(.+?)\n```", setup)[0]


def _install_line(recipe: str) -> str:
    """The command that follows the recipe's "README:" comment."""
    lines = (REPO / recipe).read_text().splitlines()
    marker = next(i for i, line in enumerate(lines) if "# README:" in line)
    return lines[marker + 1].strip().removeprefix("RUN ").strip()


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs_the_readme_install_command(recipe):
    readme_install = _readme_install_command()
    assert readme_install.startswith("pip install .")
    assert _install_line(recipe).startswith(readme_install)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_installs_with_the_constraints_and_a_supported_python(recipe):
    text = (REPO / recipe).read_text()
    assert "PIP_CONSTRAINT=/opt/spatiome/constraints.txt" in text
    assert "constraints.txt" in text.split("PIP_CONSTRAINT", 1)[0]  # copied in first
    python = re.search(r"python:(\d+\.\d+\.\d+)", text).group(1)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert Version(python) in SpecifierSet(project["requires-python"])


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name] = version
    return pins


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_constraints_pin_every_dependency_within_its_range():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = _pins()
    for text in project["dependencies"]:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate(
            {"python_version": "3.11"}
        ):
            continue
        key = _key(requirement.name)
        assert key in pins, f"{requirement.name} is not pinned in constraints.txt"
        assert Version(pins[key]) in requirement.specifier, (requirement, pins[key])
