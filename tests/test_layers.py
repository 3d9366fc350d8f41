"""The package's shape: layers that only point down, no import cycle, no import hidden inside a function."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lasp"


def test_import_linter_contracts_hold():
    """setup.cfg's contracts: the layers of lasp/ and acyclic siblings (imports inside functions included).

    In its own process: import-linter reconfigures logging (dictConfig), which would silence lasp's loggers for
    every test after this one."""
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(ROOT / 'setup.cfg')!r}, no_cache=True))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def function_level_imports() -> list[str]:
    """``module:line name`` of every import of a lasp module made inside a function."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                names = []
                if isinstance(node, ast.ImportFrom):
                    names = [node.module or ""] if node.level == 0 else ["."]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                found += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names
                          if n == "." or n == "lasp" or n.startswith("lasp.")]
    return found


def test_no_lasp_module_is_imported_inside_a_function():
    """An import inside a function that dodges a cycle hides a design bug; the CLI loads a command's module by
    name from its table (lasp.cli.commands) instead."""
    assert function_level_imports() == []
