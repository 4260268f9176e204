"""Lazy package exports (PEP 562): a package lists its public names in `__all__`, and the module that
defines each is imported on first use, so `import raygen.engine` stays free of torch and Ray."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def exports(package: str, names: dict[str, str]) -> tuple[list[str], Callable, Callable]:
    """(__all__, __getattr__, __dir__) for `package`, given {public name: module that defines it}."""

    def __getattr__(name: str):
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    public = sorted(names)
    return public, __getattr__, lambda: public
