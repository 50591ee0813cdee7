"""Nothing in the package unpickles, evaluates or unsafely loads data: checked on its syntax trees.

Reading the code as trees, not lines, sees a call however it is spelled (`from pickle import loads`,
an alias, a call split over lines) and ignores the words in comments and docstrings.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dataset_assets

UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "jsonpickle", "marshal", "shelve"}
UNSAFE_BUILTINS = {"eval", "exec", "__import__"}
UNSAFE_YAML = {"load", "load_all", "full_load", "full_load_all", "unsafe_load", "unsafe_load_all", "Loader",
               "UnsafeLoader", "FullLoader"}
UNSAFE_ATTRIBUTES = {"read_pickle", "Unpickler"}


def _keyword_is(call: ast.Call, name: str, value: object) -> bool:
    return any(keyword.arg == name and isinstance(keyword.value, ast.Constant) and keyword.value.value == value
               for keyword in call.keywords)


def _dotted(node: ast.expr) -> str:
    """`a.b.c` for an attribute chain on a name, "" for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def unsafe_uses(source: str) -> list[str]:
    """What in `source` could run code from data: each as `line: what`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {alias.name}" for alias in node.names
                      if alias.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"{node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.ImportFrom) and node.module == "yaml":
            found += [f"{node.lineno}: from yaml import {alias.name}" for alias in node.names
                      if alias.name in UNSAFE_YAML]
        elif isinstance(node, ast.Attribute) and node.attr in UNSAFE_ATTRIBUTES:
            found.append(f"{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Attribute) and _dotted(node.value) == "yaml" and node.attr in UNSAFE_YAML:
            found.append(f"{node.lineno}: yaml.{node.attr}")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name in UNSAFE_BUILTINS:
                found.append(f"{node.lineno}: {name}()")
            elif name.endswith("torch.load") and not _keyword_is(node, "weights_only", True):
                found.append(f"{node.lineno}: torch.load() without weights_only=True")
            elif any(keyword.arg == "allow_pickle" for keyword in node.keywords) \
                    and not _keyword_is(node, "allow_pickle", False):
                found.append(f"{node.lineno}: {name or 'call'}(allow_pickle=...) not False")
    return found


@pytest.mark.parametrize("source", [
    "import pickle", "import pickle as p", "from pickle import loads", "import marshal", "from dill import load",
    "x = pickle.Unpickler(f).load()", "eval(text)", "exec(code)", "__import__(name)",
    "torch.load(path)", "torch.load(path, weights_only=False)", "t = torch.load(\n    path,\n    map_location='cpu')",
    "numpy.load(f, allow_pickle=True)", "np.load(f, allow_pickle=flag)", "pandas.read_pickle(path)",
    "yaml.load(text, Loader=yaml.Loader)", "yaml.unsafe_load(text)", "yaml.full_load(text)", "from yaml import load",
])
def test_each_way_to_run_code_from_data_is_found(source: str) -> None:
    assert unsafe_uses(source) != []


@pytest.mark.parametrize("source", [
    "torch.load(path, weights_only=True)", "numpy.load(f, allow_pickle=False)", "yaml.safe_load(text)",
    "re.compile(pattern)", "# pickle.load(f) in a comment", '"""eval(x) in a docstring"""', "model.eval()",
])
def test_safe_code_is_not_flagged(source: str) -> None:
    assert unsafe_uses(source) == []


def test_the_package_never_unpickles_evaluates_or_loads_unsafely() -> None:
    package = Path(dataset_assets.__file__).parent
    offenders = [f"{path.relative_to(package)}:{use}" for path in sorted(package.rglob("*.py"))
                 for use in unsafe_uses(path.read_text())]

    assert offenders == []
