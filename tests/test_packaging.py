"""The wheel must hold every package and every data file: pyproject lists them by hand (the
top-level folders are mapped under `cimcoder.`, and a package-data pattern does not reach into
sub-folders), so a file left out would be missing from a hospital's non-editable install while
every editable test still passed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Read at run time from beside the code (`Path(__file__).parent`, Jinja2 loaders, Alembic).
RUNTIME_FILES = (
    "cimcoder/terminologies/data/still_current.tsv",
    "cimcoder/terminologies/data/lexicon/cardio_resp_renal.tsv",
    "cimcoder/terminologies/data/who/10To11MapToOneCategory.txt.gz",
    "cimcoder/eval/templates/automation_report.html",
    "cimcoder/serving/review/templates/stay.html",
    "cimcoder/serving/review/static/review.js",
    "cimcoder/serving/review/static/review.css",
    "cimcoder/serving/review/migrations/script.py.mako",
)


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _package_files() -> set[str]:
    """Every file of the package folders, as its path in the wheel."""
    files = set()
    for package, folder in _pyproject()["tool"]["setuptools"]["package-dir"].items():
        base = ROOT / folder
        for path in base.rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files.add(Path(*package.split("."), path.relative_to(base)).as_posix())
    return files


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Names in a wheel built from a copy of the checkout (no build/ or egg-info left here)."""
    pytest.importorskip("setuptools", minversion="70.1", reason="builds wheels without `wheel`")
    pyproject = _pyproject()
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    folders = {*pyproject["tool"]["setuptools"]["package-dir"].values(), "data"}
    for folder in folders:
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    build = "import sys; from setuptools import build_meta; build_meta.build_wheel(sys.argv[1])"
    result = subprocess.run(
        [sys.executable, "-c", build, str(out)],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = out.glob("cimcoder-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


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


def test_wheel_holds_the_files_read_at_run_time(wheel_names: set[str]) -> None:
    assert [name for name in RUNTIME_FILES if name not in wheel_names] == []


def test_wheel_holds_every_file_of_the_package_folders(wheel_names: set[str]) -> None:
    missing = sorted(_package_files() - wheel_names)
    assert missing == [], "add these to [tool.setuptools.package-data]"
