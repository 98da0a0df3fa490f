"""Every name the pages, the app, the benchmarks and the scripts import from cadx and db exists.

mypy checks ``cadx`` and ``db`` only; a page importing a name that a refactoring moved (as the layer explorer's
``BACKBONE_LABELS`` did) failed only when a browser opened that page. This fast check reads the imports as text and
resolves each one, without running a page."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted([ROOT / "app.py", ROOT / "serve.py", *(ROOT / "pages").glob("*.py"),
                *(ROOT / "benchmarks").glob("*.py"), *(ROOT / "scripts").glob("*.py")])


def _project_imports(path: Path) -> list[tuple[str, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [(node.module, alias.name) for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
            and node.module.split(".")[0] in ("cadx", "db") for alias in node.names]


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT)) for p in FILES])
def test_every_imported_project_name_exists(path):
    missing = []
    for module_name, name in _project_imports(path):
        module = importlib.import_module(module_name)
        if not hasattr(module, name):
            try:
                importlib.import_module(f"{module_name}.{name}")  # a submodule
            except ImportError:
                missing.append(f"{module_name}.{name}")
    assert not missing, f"{path.name} imports names that do not exist: {missing}"


def test_the_check_finds_a_missing_name(tmp_path):
    page = tmp_path / "page.py"
    page.write_text("from cadx.workflows.features import BACKBONE_LABELS\n")
    [(module_name, name)] = _project_imports(page)
    assert not hasattr(importlib.import_module(module_name), name)


def test_cadx_workflows_exports_every_stub_name_and_imports_its_submodules_on_first_use():
    """``cadx.workflows`` is lazy (``__init__.pyi`` lists its names): each listed name resolves to the object its
    submodule defines, and a process that uses one corner imports only that corner (here: opening a workspace does
    not import the experiment, result and browsing modules, nor PyTorch)."""
    import subprocess
    import sys

    import cadx.workflows as workflows

    stub = ast.parse((ROOT / "cadx" / "workflows" / "__init__.pyi").read_text())
    listed = {(node.module, alias.name) for node in stub.body if isinstance(node, ast.ImportFrom)
              for alias in node.names}
    assert {name for _, name in listed} == set(workflows.__all__)
    for module_name, name in listed:
        assert getattr(workflows, name) is getattr(importlib.import_module(f"cadx.workflows.{module_name}"), name)

    probe = ("import sys; from cadx.workflows import open_workspace; "
             "print(sorted(m for m in ('cadx.workflows.results', 'cadx.workflows.experiments', "
             "'cadx.workflows.browse', 'torch') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr
