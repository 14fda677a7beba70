"""Type-check cimcoder as the package it installs as, not as loose top-level folders.

The folders (`terminologies/`, `serving/`, ...) install as `cimcoder.terminologies`, ... through
pyproject's [tool.setuptools.package-dir]. The editable install reaches them through an import
hook that mypy cannot see, so `mypy terminologies serving` turns every `cimcoder.*` import into
`Any` and reports nothing across modules. Here the mapping is rebuilt as symlinks in a temporary
folder, and mypy checks the real packages there with the project's [tool.mypy] settings.

    .venv/bin/python scripts/mypy.py                      # the packages of `make lint`
    .venv/bin/python scripts/mypy.py cimcoder.training    # other packages
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("cimcoder.terminologies", "cimcoder.inference", "cimcoder.serving", "cimcoder.eval")


def package_dirs() -> dict[str, Path]:
    """pyproject's package-dir: package name -> its folder in the checkout."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    mapping: dict[str, str] = pyproject["tool"]["setuptools"]["package-dir"]
    return {package: ROOT / folder for package, folder in mapping.items()}


def build_tree(base: Path, mapping: dict[str, Path]) -> None:
    """Lay out `mapping` under `base` as an installed package tree, made of symlinks.

    A mapped package whose sub-packages are mapped elsewhere (`cimcoder` holds
    `cimcoder.terminologies`) becomes a real folder with a link to each of its entries, so
    that nothing is ever written into the checkout; the others are one link to their folder.
    """
    for package in sorted(mapping, key=lambda name: name.count(".")):
        target = base.joinpath(*package.split("."))
        if any(other.startswith(package + ".") for other in mapping):
            target.mkdir(parents=True, exist_ok=True)
            for entry in mapping[package].iterdir():
                if entry.name != "__pycache__" and not (target / entry.name).exists():
                    (target / entry.name).symlink_to(entry)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(mapping[package], target_is_directory=True)


def to_checkout_paths(text: str, mapping: dict[str, Path]) -> str:
    """`cimcoder/terminologies/cim10.py:3: ...` -> `terminologies/cim10.py:3: ...`."""
    prefixes = sorted(mapping, key=len, reverse=True)
    lines = []
    for line in text.splitlines(keepends=True):
        for package in prefixes:
            installed = package.replace(".", "/") + "/"
            if line.startswith(installed):
                folder = mapping[package].relative_to(ROOT).as_posix() + "/"
                line = folder + line.removeprefix(installed)
                break
        lines.append(line)
    return "".join(lines)


def main(argv: list[str]) -> int:
    packages = argv or list(CHECKED)
    mapping = package_dirs()
    with tempfile.TemporaryDirectory(prefix="cimcoder-mypy-") as tmp:
        build_tree(Path(tmp), mapping)
        command = [
            sys.executable, "-m", "mypy",
            "--config-file", str(ROOT / "pyproject.toml"),
            "--cache-dir", str(ROOT / ".mypy_cache"),
            *(arg for package in packages for arg in ("-p", package)),
        ]  # fmt: skip
        result = subprocess.run(command, cwd=tmp, capture_output=True, text=True, check=False)
    sys.stdout.write(to_checkout_paths(result.stdout, mapping))
    sys.stderr.write(result.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
