"""Plugins: a user's own Python files that register methods or backbones (``ltcl.register_objective``,
``ltcl.register_backbone``), loaded by path before a config is resolved.

A run records its plugins (absolute paths in ``plugins`` of its config, and a copy of each file in its run
directory), so that resuming, evaluating or predicting loads them again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from ltcl.errors import UserError

_LOADED: dict[Path, ModuleType] = {}


def load_plugins(paths: Sequence[str]) -> list[ModuleType]:
    """Imports each file once (a path loaded or imported before is not run again); an error inside a plugin keeps
    its traceback, as it is the plugin's code that failed.

    Raises:
        UserError: a file that does not exist or is not a ``.py`` file.
    """
    modules = []
    for text in paths:
        path = Path(text).expanduser().resolve()
        if path not in _LOADED and (imported := _imported_module(path)) is not None:
            _LOADED[path] = imported  # the user imported it already: running it again would register twice
        if path not in _LOADED:
            if not path.is_file():
                raise UserError(
                    f"Plugin file {text} does not exist (plugins, --plugin); a run keeps a copy of each plugin in "
                    "its run directory's plugins/ folder: restore it there or give its new place with "
                    "--set plugins=[PATH]."
                )
            if path.suffix != ".py":
                raise UserError(f"Plugin file {path} is not a Python (.py) file.")
            digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
            name = f"ltcl_plugin_{path.stem}_{digest}"
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # dataclasses and pickling look the module up by name
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
            _LOADED[path] = module
        modules.append(_LOADED[path])
    return modules


PACKAGE_DIR = Path(__file__).resolve().parent


def _imported_module(path: Path) -> ModuleType | None:
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve() == path:
            return module
    return None


def defining_file(obj: object) -> str | None:
    """The file of the user's module that defined ``obj`` (a method class, a backbone builder), or None when ltcl
    defined it. A definition in the script being run (``__main__``) gives ``"__main__"``: it cannot be loaded
    again by path, since that would run the whole script."""
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    if module is None:
        return None
    if module.__name__ == "__main__":
        return "__main__"
    path = getattr(module, "__file__", None)
    if path is None or Path(path).resolve().is_relative_to(PACKAGE_DIR):
        return None
    return str(Path(path).resolve())
