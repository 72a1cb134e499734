"""hf_feedback's folders import one way: each imports only failures.py and the folders before it in LAYERS."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hf_feedback"
# Lowest first; README.md's Layout and hf_feedback/__init__.py say the same.
LAYERS = ["failures", "model", "data", "integrations", "tasks", "training", "reports"]


def _imported_modules(path):
    """The absolute names of the hf_feedback modules that `path` imports, at the top or inside functions."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            yield from ([module] if node.module else [f"{module}.{alias.name}" for alias in node.names])
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def test_each_folder_imports_only_failures_and_the_folders_below_it():
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert folders == sorted(LAYERS[1:]), folders
    for layer in LAYERS[1:]:
        allowed = {f"hf_feedback.{below}" for below in LAYERS[: LAYERS.index(layer) + 1]}
        for path in (PACKAGE / layer).rglob("*.py"):
            for module in _imported_modules(path):
                if module.startswith("hf_feedback"):
                    group = ".".join(module.split(".")[:2])
                    assert group in allowed, f"{path.relative_to(PACKAGE)} imports {module}, above {layer}"
        opening = ast.get_docstring(ast.parse((PACKAGE / layer / "__init__.py").read_text()))
        assert opening and len(opening.splitlines()) == 2, f"{layer}/__init__.py opens with what lives there"
