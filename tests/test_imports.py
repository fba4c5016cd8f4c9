"""volseg's modules import each other without cycles (read from the source, deferred imports included)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_imports", ROOT / "data_scripts" / "check_imports.py")
check_imports = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_imports)


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path / "pkg"


def test_the_checker_finds_a_cycle_hidden_in_a_function(tmp_path):
    pkg = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from .b import f\n",
        "b.py": "def f():\n    from . import a\n",
        "c.py": "import pkg.a\n",
    })
    assert check_imports.cycles(check_imports.import_graph(pkg)) == [["pkg.a", "pkg.b"]]


def test_the_checker_follows_module_names_given_as_strings(tmp_path):
    pkg = _package(tmp_path, {
        "__init__.py": "",
        "cli.py": "COMMANDS = ('pkg.tool',)\n",
        "tool.py": "from .cli import COMMANDS\n",
    })
    assert check_imports.cycles(check_imports.import_graph(pkg)) == [["pkg.cli", "pkg.tool"]]


def test_volseg_has_no_import_cycle():
    graph = check_imports.import_graph(ROOT / "volseg")
    assert "volseg.session" in graph and graph["volseg.session"]  # the walk did read the package
    assert check_imports.cycles(graph) == []
