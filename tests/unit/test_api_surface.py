"""The public surface stays true: packages' `__all__`, the error tree, and imports that stay light."""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from raygen import errors
from tests.pysource import parse

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src" / "raygen"
PACKAGES = ("engine", "serve", "data", "train")
VALIDATORS = {"field_validator", "model_validator"}  # pydantic wraps a plain ValueError raised in these


def _trees(*roots: Path):
    for root in roots:
        for f in sorted(root.rglob("*.py")):
            yield f, parse(f)


@pytest.mark.parametrize("pkg", PACKAGES)
def test_all_is_sorted_unique_and_every_name_resolves(pkg):
    mod = importlib.import_module(f"raygen.{pkg}")
    assert mod.__all__ == sorted(set(mod.__all__)) and mod.__all__, mod.__all__
    for name in mod.__all__:
        obj = getattr(mod, name)
        assert getattr(obj, "__name__", name) == name or not callable(obj), (pkg, name)
    with pytest.raises(AttributeError, match="no attribute"):
        _ = mod.not_a_public_name


def test_what_other_packages_import_from_a_package_is_in_its_all():
    """pipelines/, benchmarks/ and the rest of src/ use a package only through names its `__all__` lists
    (or its submodules by name)."""
    missing = []
    for f, tree in _trees(SRC, REPO / "pipelines", REPO / "benchmarks"):
        home = f.relative_to(SRC).parts[0] if f.is_relative_to(SRC) else None
        for node in ast.walk(tree):
            if not (isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("raygen.")):
                continue
            pkg = node.module.split(".")[1]
            if pkg not in PACKAGES or pkg == home:
                continue
            public = importlib.import_module(f"raygen.{pkg}").__all__
            for alias in node.names:
                is_submodule = node.module == f"raygen.{pkg}" and (SRC / pkg / f"{alias.name}.py").exists()
                if alias.name not in public and not is_submodule:
                    missing.append(f"{f.relative_to(REPO)}: {node.module}.{alias.name}")
    assert not missing, "add these to the package's __all__ (or keep them inside it):\n" + "\n".join(missing)


def _raygen_error_names(trees) -> set[str]:
    """Names of classes that are RaygenErrors: raygen.errors' own, then any class in src/ whose base is one."""
    names = {n for n, c in vars(errors).items() if inspect.isclass(c) and issubclass(c, errors.RaygenError)}
    names |= {n for n, f in vars(errors).items() if inspect.isfunction(f)
              and inspect.signature(f).return_annotation in ("RequestError", errors.RequestError)}
    classes = [n for _, t in trees for n in ast.walk(t) if isinstance(n, ast.ClassDef)]
    grew = True
    while grew:
        new = {c.name for c in classes if any(ast.unparse(b).split(".")[-1] in names for b in c.bases)}
        grew, names = not new <= names, names | new
    return names


def _own_nodes(fn):
    """fn's nodes, not those of functions defined inside it (they are visited on their own)."""
    todo = list(fn.body)
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))


def test_every_error_raygen_raises_on_purpose_is_a_raygen_error():
    trees = list(_trees(SRC))
    allowed, wrong = _raygen_error_names(trees), []
    for f, tree in trees:
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            in_validator = any(ast.unparse(d).split("(")[0] in VALIDATORS for d in fn.decorator_list)
            protocol = {"__getattr__": "AttributeError"}.get(fn.name)  # what Python's protocols require
            for node in _own_nodes(fn):
                if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                    name = ast.unparse(node.exc.func).split(".")[-1]
                    if name not in allowed and not (in_validator and name == "ValueError") and name != protocol:
                        wrong.append(f"{f.relative_to(REPO)}:{node.lineno} raise {name}")
    assert not wrong, "raise a raygen.errors class (or add one to the tree):\n" + "\n".join(wrong)


def test_the_error_tree_keeps_its_promises():
    assert issubclass(errors.ConfigError, ValueError)  # pydantic validators may raise it
    for cls in (errors.InvalidPromptError, errors.PromptTooLongError, errors.EngineSetupError):
        assert issubclass(cls, errors.EngineError) and issubclass(cls, ValueError)
    assert issubclass(errors.UnsupportedModelError, errors.EngineSetupError)
    assert errors.unavailable("busy").status == 503 and errors.unavailable("busy").headers()["retry-after"] == "1"
    import pickle

    e = pickle.loads(pickle.dumps(errors.RequestError("bad", param="seed", code="x", retry_after=3)))
    assert (e.status, e.param, e.code, e.retry_after) == (400, "seed", "x", 3)


def test_importing_the_packages_imports_neither_torch_nor_ray():
    code = ("import sys, raygen, raygen.engine, raygen.serve, raygen.data, raygen.train; "
            "print(sorted(m for m in ('torch', 'ray', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_functions_read_top_to_bottom_in_at_most_60_lines():
    """The training step, the data job and the ingress path are lists of named steps; nothing grows past
    a screen."""
    long = [f"{f.relative_to(REPO)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for f, tree in _trees(SRC) for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 60]
    assert not long, "split these into named steps:\n" + "\n".join(long)


def test_the_engine_imports_with_torch_and_transformers_alone():
    """The GPU image has torch and transformers, not Ray, DeepSpeed or pydantic."""
    code = ("import sys, raygen.engine.engine, raygen.engine.config; "
            "print(sorted(m for m in ('ray', 'deepspeed', 'pydantic', 'yaml') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
