"""The dependency rules of docs/ARCHITECTURE.md, checked on the source.

Data flows one way: terminologies -> training -> eval -> inference -> serving. A module never
imports an area to its right, not even by naming it in a string (`importlib` on a constant is
still an upward dependency); the base modules of `cimcoder/` (errors, lazy exports, metrics, folds,
run_folder) import no area at all. Lazy package exports show mypy the names they resolve at run time.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
AREAS = ("terminologies", "training", "eval", "inference", "serving")
BASE_MODULES = ("cimcoder/errors.py", "cimcoder/lazy.py", "cimcoder/metrics.py", "cimcoder/folds.py",
                "cimcoder/run_folder.py")
LAZY_PACKAGES = ("training/__init__.py", "inference/__init__.py", "serving/review/__init__.py")
_NAMED = re.compile(r"\bcimcoder\.(\w+)")


def _docstrings(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def areas_named(path: Path) -> set[str]:
    """Areas a module imports or names in a string constant (docstrings aside)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _docstrings(tree)
    modules: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.append(node.module)
        elif isinstance(node, ast.Import):
            modules.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            modules.extend(f"cimcoder.{m}" for m in _NAMED.findall(node.value))
    return {m.split(".")[1] for m in modules if m.startswith("cimcoder.")} & set(AREAS)


def _sources(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "migrations" not in p.parts)


@pytest.mark.parametrize("area", AREAS)
def test_no_area_depends_on_an_area_to_its_right(area: str) -> None:
    right = set(AREAS[AREAS.index(area) + 1 :])
    upward = {
        str(path.relative_to(ROOT)): sorted(areas_named(path) & right)
        for path in _sources(area)
        if areas_named(path) & right
    }
    assert upward == {}


def test_base_modules_depend_on_no_area() -> None:
    assert {m: sorted(areas_named(ROOT / m)) for m in BASE_MODULES if areas_named(ROOT / m)} == {}


def test_the_checker_sees_imports_and_module_names_in_strings(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        '"""Docstrings may cite `cimcoder.serving.app`."""\n'
        "from cimcoder.eval import metrics\n"
        "import cimcoder.inference.predictor\n"
        'PYFUNC = "cimcoder.serving.review.routes:router"\n',
        encoding="utf-8",
    )
    assert areas_named(module) == {"eval", "inference", "serving"}


@pytest.mark.parametrize("init", LAZY_PACKAGES)
def test_lazy_exports_are_typed_for_mypy(init: str) -> None:
    tree = ast.parse((ROOT / init).read_text(encoding="utf-8"))
    exports: dict[str, str] = {}
    typed: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets
        ):
            exports = ast.literal_eval(node.value)
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.module
                for alias in imp.names:
                    assert alias.asname == alias.name  # an explicit re-export
                    typed[alias.name] = imp.module
    assert exports and typed == exports
