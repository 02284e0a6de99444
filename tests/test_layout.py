"""The package keeps its floor plan: commands are only commands (no library module imports one), no
import cycles, subpackages that load no TensorFlow, no private TensorFlow import without a comment
saying why, and a docstring on every public function and class. Reads the source; fast."""

import ast
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO
from tflm.cli import COMMANDS

PACKAGE = os.path.join(REPO, "tflm")
COMMAND_MODULES = {f"tflm.{name}" for name in COMMANDS}
CLI = "tflm.cli"  # the console script and the helper the command modules are built with


def module_name(path):
    """'tflm.data.store' for tflm/data/store.py, 'tflm.data' for tflm/data/__init__.py."""
    parts = os.path.relpath(path, REPO)[:-len(".py")].split(os.sep)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_files():
    """{module name: path} of every module of the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                found[module_name(os.path.join(folder, name))] = os.path.join(folder, name)
    return found


MODULES = source_files()
TREES = {name: ast.parse(open(path, encoding="utf-8").read(), path) for name, path in MODULES.items()}
SUBPACKAGES = sorted(name for name, path in MODULES.items() if path.endswith("__init__.py") and name != "tflm")


def imported(node, module):
    """The tflm modules an import statement `node` of `module` loads (a package's __init__ for a name
    that is no module of its own)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        assert not node.level, f"{module}: a relative import (tflm imports absolutely)"
        names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    loaded = {".".join(name.split(".")[:i]) for name in names for i in range(1, name.count(".") + 2)}
    return {name for name in loaded if name in MODULES}  # a module and the packages above it


def imports(module, module_level_only):
    """The tflm modules `module` imports (at import time only, or anywhere in it)."""
    found = set()
    nodes = TREES[module].body if module_level_only else ast.walk(TREES[module])
    pending = list(nodes)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found |= imported(node, module)
        elif module_level_only and isinstance(node, (ast.If, ast.Try, ast.With, ast.ClassDef)):
            pending.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))
            pending.extend(handler for handler in getattr(node, "handlers", []))
        elif module_level_only and isinstance(node, ast.ExceptHandler):
            pending.extend(node.body)
    return found - {module}


def test_the_command_modules_are_the_commands_and_exist():
    assert COMMAND_MODULES <= set(MODULES)


def test_no_library_module_imports_a_command_module_or_the_cli():
    offenders = {}
    for module in MODULES:
        allowed = {CLI} if module in COMMAND_MODULES else set()
        if module in (CLI, "tflm.__main__"):
            continue  # the console script (its command table loads the commands by name)
        bad = sorted(imports(module, module_level_only=False) & (COMMAND_MODULES | {CLI}) - allowed)
        if bad:
            offenders[module] = bad
    assert offenders == {}


def test_no_command_module_imports_another():
    assert {m: sorted(imports(m, False) & COMMAND_MODULES) for m in COMMAND_MODULES
            if imports(m, False) & COMMAND_MODULES} == {}


def find_cycle(graph):
    """One import cycle in `graph` ({module: modules it imports}) as a list of modules, or None."""
    state = {}  # module -> "visiting" | "done"
    path = []

    def visit(node):
        state[node] = "visiting"
        path.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == "visiting":
                return path[path.index(child):] + [child]
            if child not in state:
                cycle = visit(child)
                if cycle:
                    return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycles_among_module_level_imports():
    graph = {module: imports(module, module_level_only=True) for module in MODULES}
    assert find_cycle(graph) is None


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_importing_the_package_or_any_subpackage_loads_no_tensorflow():
    code = (f"import sys, {', '.join(['tflm', 'tflm.cli'] + SUBPACKAGES)}; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert (result.returncode, result.stdout) == (0, "[]\n"), result.stderr[-2000:]
    assert {"tflm.data", "tflm.models", "tflm.tasks", "tflm.training", "tflm.runs", "tflm.serving"} <= set(SUBPACKAGES)


PRIVATE_TF = re.compile(r"^\s*(from\s+tensorflow\.python\b|import\s+tensorflow\.python\b)")


def test_every_private_tensorflow_import_says_why_in_a_comment_above_it():
    uncommented = []
    for module, path in MODULES.items():
        lines = open(path, encoding="utf-8").read().splitlines()
        for number, line in enumerate(lines):
            if PRIVATE_TF.match(line) and not (number and lines[number - 1].strip().startswith("#")):
                uncommented.append(f"{os.path.relpath(path, REPO)}:{number + 1}")
    assert uncommented == []


KERAS_HOOKS = {"build", "call", "get_config"}  # methods a Keras layer overrides, which Keras documents


def public_definitions(module):
    """(qualified name, node) of the public functions and classes of `module`, and of the public
    methods of its public classes (less the Keras hooks)."""
    def walk(body, prefix, in_class):
        for node in body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or node.name.startswith("_"):
                continue
            if not (in_class and node.name in KERAS_HOOKS):
                yield f"{prefix}{node.name}", node
            if isinstance(node, ast.ClassDef):
                yield from walk(node.body, f"{prefix}{node.name}.", True)
    return walk(TREES[module].body, f"{module}.", False)


def test_every_public_function_and_class_has_a_docstring():
    missing = [name for module in MODULES for name, node in public_definitions(module)
               if not ast.get_docstring(node)]
    assert missing == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_has_a_real_docstring(module):
    docstring = ast.get_docstring(TREES[module]) or ""
    assert docstring and "TODO" not in docstring.splitlines()[0]
