"""function_app.py is a module, not a package, so import-linter cannot check its own imports."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOT_DEPLOYED = {"devhost", "cli", "bench", "tests"}


def test_the_entry_point_imports_no_local_tooling():
    tree = ast.parse((ROOT / "function_app.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported, "no imports found in function_app.py"
    assert not {name.split(".")[0] for name in imported} & NOT_DEPLOYED
