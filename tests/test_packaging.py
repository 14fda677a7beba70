"""The wheel must hold every package: pyproject lists them by hand (the top-level folders are
mapped under `cimcoder.`), so a new sub-package left out of the list would be missing from a
hospital's non-editable install while every editable test still passed."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_package_folder_is_listed_for_the_wheel() -> None:
    setuptools = _pyproject()["tool"]["setuptools"]
    mapping: dict[str, str] = setuptools["package-dir"]
    listed = set(setuptools["packages"])
    found = set()
    for package, folder in mapping.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            relative = init.parent.relative_to(base)
            found.add(".".join([package, *relative.parts]))
    assert found - listed == set(), "add these to [tool.setuptools] packages"
    assert listed - found == set(), "these listed packages have no folder"


def test_console_script_points_at_the_cli() -> None:
    assert _pyproject()["project"]["scripts"] == {"cimcoder": "cimcoder.cli:main"}


def test_torch_is_pinned_to_the_cpu_wheel_on_disk() -> None:
    # A range would make pip pull a multi-GB CUDA build on a machine without torch.
    deps = _pyproject()["project"]["dependencies"]
    assert "torch==2.13.0" in deps
