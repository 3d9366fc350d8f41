"""`from lasp import X` works for every public name, and type checkers see each one's real type."""
from __future__ import annotations

import ast
from pathlib import Path

import lasp

INIT = Path(lasp.__file__)


def _typed_imports() -> dict[str, str]:
    """name -> module of every import under ``if TYPE_CHECKING:`` in lasp/__init__.py."""
    tree = ast.parse(INIT.read_text(encoding="utf-8"))
    found = {}
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for imp in node.body:
                for alias in imp.names:
                    found[alias.asname or alias.name] = imp.module
    return found


def test_every_export_is_importable_and_typed():
    typed = _typed_imports()
    assert typed == lasp._EXPORTS  # a name exported lazily without a typed import would be Any to a checker
    assert set(lasp.__all__) == {*lasp._EXPORTS, "__version__"}
    for name, module in lasp._EXPORTS.items():
        obj = getattr(lasp, name)
        assert obj.__module__ == module, name


def test_the_trained_system_loader_and_the_search_are_public():
    assert callable(lasp.System.from_pretrained) and callable(lasp.search_masks)
