"""Keep the repository's ``datasets/``, ``losses/`` and ``decoders/`` folders from posing as top-level modules.

They install as ``padt.datasets``, ``padt.losses`` and ``padt.decoders``. When Python runs from the repository
root, the root is on ``sys.path`` and ``import datasets`` would find our folder before Hugging Face ``datasets``
(which transformers and accelerate import). Each of the three ``__init__`` files calls
:func:`refuse_top_level_import` first: under its own ``padt.*`` name it does nothing; under a bare top-level name
it looks the name up again on ``sys.path`` without the repository root and hands over whatever it finds there,
or raises ``ModuleNotFoundError``.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys


def refuse_top_level_import(module_name: str, folder: str) -> None:
    if module_name.startswith("padt."):
        return
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    other_paths = [p for p in sys.path if os.path.abspath(p or os.curdir) != repo_root]
    spec = importlib.machinery.PathFinder.find_spec(module_name, other_paths)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(
            f"No module named {module_name!r}: the repository folder {folder}/ is the sub-package "
            f"padt.{folder}, not a top-level module; import padt.{folder} instead.",
            name=module_name,
        )
    module = importlib.util.module_from_spec(spec)
    # The import system returns whatever sys.modules holds under the name once this file finishes executing.
    sys.modules[module_name] = module
    spec.loader.exec_module(module)


def lazy_exports(package: str, exports: dict[str, tuple[str, ...]]):
    """PEP 562 exports for a sub-package: ``__getattr__, __dir__, __all__ = lazy_exports(__name__, {...})``.

    ``exports`` maps a module (relative, e.g. ``".box"``) to the names it provides. Nothing is imported until a
    name is used, which keeps light entry points light and means nothing more runs in an ``__init__`` after
    :func:`refuse_top_level_import` handed the name over to another package.
    """
    module_of = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str):
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        sys.modules[package].__dict__[name] = value  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(module_of) | set(sys.modules[package].__dict__))

    return __getattr__, __dir__, sorted(module_of)
