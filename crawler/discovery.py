"""Finding spider classes: by name in `spiders/`, by `package.module:Class`, or by file path.

Spiders are searched in the bundled `spiders` package and in a `spiders/` folder of the
current directory. A module that fails to import is reported with its error, never skipped
silently.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import pkgutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Final

from crawler.errors import SpiderError, SpiderNotFound
from crawler.spider import Spider

__all__ = ["BUNDLED_SPIDERS", "available_spiders", "find_spider", "spider_reference"]

_FILE_MODULE_PREFIX: Final = "crawler_spiders_"
BUNDLED_SPIDERS: Final = Path(__file__).resolve().parent.parent / "spiders"
"""The example spiders shipped with the crawler (installed next to the `crawler` package)."""


def _spiders_in(module: ModuleType) -> list[type[Spider]]:
    """Return the Spider subclasses defined (not just imported) in a module."""
    return [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, Spider)
        and obj.__module__ == module.__name__
        and isinstance(getattr(obj, "name", None), str)
    ]


def _import_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise SpiderNotFound(f"no module named {name!r}") from None
        raise SpiderError(f"cannot import {name}: {exc}") from None
    except Exception as exc:
        raise SpiderError(f"cannot import {name}: {type(exc).__name__}: {exc}") from None


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise SpiderNotFound(f"no such spider file: {path}")
    resolved = path.resolve()
    module_name = f"{_FILE_MODULE_PREFIX}{abs(hash(str(resolved))):x}_{resolved.stem}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise SpiderError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up while being defined
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise SpiderError(f"cannot import {path}: {type(exc).__name__}: {exc}") from None
    return module


def _spider_files(directory: Path) -> list[Path]:
    return [path for path in sorted(directory.glob("*.py")) if path.name != "__init__.py"]


def _search_modules(cwd: Path) -> list[ModuleType]:
    """Import the local `spiders/` folder's files, then the bundled spiders.

    The bundled ones are imported as the `spiders` package when that name resolves to them;
    otherwise (a local `spiders/` folder shadows the name) by file path, so they never vanish.
    """
    modules: list[ModuleType] = []
    local = (cwd / "spiders").resolve()
    bundled = BUNDLED_SPIDERS.resolve()
    if local.is_dir() and local != bundled:
        modules.extend(_import_file(path) for path in _spider_files(local))
    spec = importlib.util.find_spec("spiders")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if bundled in {Path(p).resolve() for p in locations}:
        for info in pkgutil.iter_modules([str(bundled)]):
            modules.append(_import_module(f"spiders.{info.name}"))
    elif bundled.is_dir():
        modules.extend(_import_file(path) for path in _spider_files(bundled))
    return modules


def spider_reference(cls: type[Spider]) -> str:
    """Return how to name a spider class on the command line: `module:Class` or `file.py:Class`."""
    module = sys.modules.get(cls.__module__)
    if cls.__module__.startswith(_FILE_MODULE_PREFIX) and module and module.__file__:
        path = Path(module.__file__)
        with contextlib.suppress(ValueError):
            path = path.relative_to(Path.cwd())
        return f"{path}:{cls.__qualname__}"
    return f"{cls.__module__}:{cls.__qualname__}"


def available_spiders(cwd: Path | None = None) -> dict[str, type[Spider]]:
    """Return every discoverable spider class by its name (local `spiders/` first)."""
    found: dict[str, type[Spider]] = {}
    for module in _search_modules(cwd or Path.cwd()):
        for cls in _spiders_in(module):
            found.setdefault(cls.name, cls)
    return dict(sorted(found.items()))


def _pick(spiders: list[type[Spider]], where: str) -> type[Spider]:
    if len(spiders) == 1:
        return spiders[0]
    if not spiders:
        raise SpiderNotFound(f"no spider class in {where}")
    names = ", ".join(cls.__name__ for cls in spiders)
    raise SpiderNotFound(f"{where} defines several spiders ({names}); use {where}:ClassName")


def _class_in(module: ModuleType, class_name: str, where: str) -> type[Spider]:
    obj = getattr(module, class_name, None)
    if not (inspect.isclass(obj) and issubclass(obj, Spider)):
        raise SpiderNotFound(f"{where} has no spider class {class_name!r}")
    return obj


def find_spider(ref: str, cwd: Path | None = None) -> type[Spider]:
    """Return the spider class that `ref` names.

    `ref` is a spider name (`books`), a module and class (`mypkg.spiders:Shop`), a module
    (`mypkg.spiders`, if it defines one spider), or a file path (`path/shop.py`, optionally
    `path/shop.py:Shop`).

    Raises:
        SpiderNotFound: nothing matches; for a name, the message lists the known spiders.
        SpiderError: the module exists but fails to import.
    """
    target, _, class_name = ref.partition(":")
    if target.endswith(".py") or "/" in target or Path(target).is_file():
        module = _import_file(Path(target))
        return (
            _class_in(module, class_name, target)
            if class_name
            else _pick(_spiders_in(module), target)
        )
    if class_name:
        return _class_in(_import_module(target), class_name, target)
    spiders = available_spiders(cwd)
    if ref in spiders:
        return spiders[ref]
    if "." in ref:
        return _pick(_spiders_in(_import_module(ref)), ref)
    known = ", ".join(spiders) or "none"
    raise SpiderNotFound(f"unknown spider {ref!r} (known spiders: {known})")
