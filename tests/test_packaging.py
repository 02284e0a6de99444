"""What `pip install .` gives: every module tflm imports, on a Python its dependencies support, with
the dependencies whose internals tflm relies on held to the versions it is tested with.

setup.py is read with `ast`, not from installed metadata, which may be older than the checkout."""

import ast
import importlib.metadata
import os
import re
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TENSORFLOW_FAMILY = ("tensorflow", "tensorboard", "tensorflow-text", "tensorflow-serving-api")


def setup_arguments():
    """The literal keyword arguments of the setup() call in setup.py."""
    with open(os.path.join(REPO, "setup.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    (call,) = [node for node in ast.walk(tree)
               if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup"]
    arguments = {}
    for keyword in call.keywords:
        try:
            arguments[keyword.arg] = ast.literal_eval(keyword.value)
        except ValueError:
            pass  # computed, e.g. long_description=open("README.md").read()
    return arguments


def canonical(name):
    """A distribution name as pip compares them: "PyYAML" -> "pyyaml", "keras_nlp" -> "keras-nlp"."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement):
    """The distribution a requirement names: "tensorflow[and-cuda]==2.21.*" -> "tensorflow"."""
    return canonical(re.match(r"[A-Za-z0-9._-]+", requirement).group(0))


MODULES_OF_EXTRAS = {"tflm/data/beam.py": "beam"}  # tflm.prepare --beam-options: pip install "tflm[beam]"


def requirements(extra=None):
    """{distribution: requirement} of install_requires, or of one extra."""
    arguments = setup_arguments()
    listed = arguments["extras_require"][extra] if extra else arguments["install_requires"]
    return {requirement_name(r): r for r in listed}


def imported_names(path):
    """The top-level name of every absolute import in a Python file, lazy ones inside functions too."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def python_files(folder):
    """Paths of the .py files under a folder of the repository."""
    root = os.path.join(REPO, folder)
    return sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.endswith(".py"))


def unprovided_imports(paths, declared, local=("tflm",)):
    """"file: import X (distribution)" for each import that is neither the standard library, nor
    `local`, nor provided by a distribution in `declared`."""
    providers = importlib.metadata.packages_distributions()
    problems = []
    for path in paths:
        for name in sorted(imported_names(path)):
            if name in sys.stdlib_module_names or name in local:
                continue
            provided_by = {canonical(d) for d in providers.get(name, [])}
            if not provided_by & set(declared):
                found = ", ".join(sorted(provided_by)) or "not installed"
                problems.append(f"{os.path.relpath(path, REPO)}: import {name} ({found})")
    return problems


def test_every_module_tflm_imports_is_installed_by_pip_install():
    paths = python_files("tflm")
    assert len(paths) > 10
    extras = {os.path.join(REPO, path): extra for path, extra in MODULES_OF_EXTRAS.items()}
    assert unprovided_imports([p for p in paths if p not in extras], requirements()) == []
    for path, extra in extras.items():  # what only one option uses, imported only when it is asked for
        assert unprovided_imports([path], {**requirements(), **requirements(extra)}) == []


def test_the_tests_need_nothing_beyond_the_dev_extra():
    paths = python_files("tests")
    local = {"tflm"} | {os.path.basename(p)[:-3] for p in paths}  # conftest and the test modules
    assert unprovided_imports(paths, {**requirements(), **requirements("dev")}, local) == []


def version_floors(specifier):
    """[(major, minor)] of each `>=X.Y` in a version specifier."""
    return [(int(a), int(b)) for a, b in re.findall(r">=\s*(\d+)\.(\d+)", specifier or "")]


def test_python_requires_is_the_newest_floor_of_the_dependencies_and_the_readme_says_so():
    (oldest,) = version_floors(setup_arguments()["python_requires"])
    floors = {name: version_floors(importlib.metadata.metadata(name).get("Requires-Python"))
              for name in requirements()}
    assert all(floor <= oldest for found in floors.values() for floor in found), floors
    assert max(floor for found in floors.values() for floor in found) == oldest, floors  # not stricter
    assert sys.version_info[:2] >= oldest
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        assert f"Python {oldest[0]}.{oldest[1]} or later" in f.read()


@pytest.mark.parametrize("name", ["keras", "keras-nlp", "keras-hub", *TENSORFLOW_FAMILY])
def test_dependencies_whose_internals_tflm_uses_are_held_to_the_tested_minor(name):
    requirement = requirements()[name]
    pinned = re.fullmatch(r"[A-Za-z0-9._-]+==(\d+\.\d+)\.\*", requirement)
    assert pinned, f"{requirement} allows other minor versions"
    assert importlib.metadata.version(name).startswith(pinned.group(1) + "."), "tests ran on another minor"


def test_tensorflow_packages_and_the_gpu_extra_share_one_version():
    pins = {requirements()[name].split("==")[1] for name in TENSORFLOW_FAMILY}
    assert len(pins) == 1
    assert list(requirements("gpu").values()) == [f"tensorflow[and-cuda]=={pins.pop()}"]


def test_readme_shows_how_to_install_every_extra():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    for extra in setup_arguments()["extras_require"]:
        assert re.search(rf"pip install (-e )?\"\.\[{extra}\]\"", readme), extra


def test_the_license_is_apache_2_0_in_setup_py_and_in_the_license_file():
    assert setup_arguments()["license"] == "Apache-2.0"
    with open(os.path.join(REPO, "LICENSE"), encoding="utf-8") as f:
        text = f.read()
    assert "Apache License" in text.splitlines()[1] and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
