"""The layout holds: imports between the packages run one way, functions and modules stay small, and the console
scripts of pyproject.toml name functions that exist. These read the source (ast), they import nothing of it."""

from __future__ import annotations

import ast
import importlib
import tomllib

from tests.conftest import REPO

LAYERS = {
    "storage": 0,  # SQLite and every SQL statement; storage/errors.py is the errors module every layer may use
    "assistant": 1,  # config, model, prompts, generation, exploration, the executor
    "adapters": 2,  # data → losses → training → registry → blending → worker
    "assistant.service": 3,  # the one exception: the chat service sits in assistant/ but serves adapters
    "ui": 4,  # the Gradio page
    "app": 5,  # the entry point
}
"""Each module's layer, by the longest prefix of its dotted name that is listed: a module may import only from its
own layer and those below."""

PRODUCT = ["storage", "assistant", "adapters", "ui"]
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 450


def _modules(include_tests: bool = False) -> dict[str, object]:
    """Dotted module name → path, for the product's code (and the tests when asked)."""
    folders = PRODUCT + (["tests"] if include_tests else [])
    found = {"app": REPO / "app.py"}
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _layer(module: str) -> int | None:
    names = [name for name in LAYERS if module == name or module.startswith(name + ".")]
    return LAYERS[max(names, key=len)] if names else None


def _imports(path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, also those inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def test_imports_between_the_packages_run_one_way():
    upward = []
    for module, path in _modules().items():
        mine = _layer(module)
        for line, imported in _imports(path):
            theirs = _layer(imported)
            if theirs is not None and theirs > mine:
                upward.append(f"{path.relative_to(REPO)}:{line} {module} (layer {mine}) imports {imported} "
                              f"(layer {theirs})")
    assert not upward, "\n".join(upward)
    assert _layer("assistant.service.x") == 3 and _layer("assistant.config.learning") == 1  # the rule reads right


def test_no_function_is_longer_than_60_lines_and_no_module_than_450():
    long_functions, long_modules = [], []
    for module, path in _modules().items():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_MODULE_LINES:
            long_modules.append(f"{path.relative_to(REPO)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {lines} lines")
    for module, path in _modules(include_tests=True).items():
        lines = path.read_text(encoding="utf-8").count("\n")
        if module.startswith("tests") and lines > MAX_MODULE_LINES:
            long_modules.append(f"{path.relative_to(REPO)}: {lines} lines")
    assert not long_functions, "\n".join(long_functions)
    assert not long_modules, "\n".join(long_modules)


def test_the_console_scripts_name_functions_that_exist():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert set(project["scripts"]) == {"attune", "attune-worker", "attune-export"}
    for target in project["scripts"].values():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), target
