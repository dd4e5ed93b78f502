"""Finding spider classes: by name in `spiders/`, by `package.module:Class`, or by file path.

Spiders are searched in a `spiders/` folder of the current directory, then in the bundled
`spiders` package. A spider file that fails to import (a syntax error, a missing module, an
exception at import) never hides the others: it becomes a `BrokenSpiderFile` — the file, the
line and the error, on one line — which `available_spiders` logs as a warning (so
`crawler list` prints one line per broken file and lists the rest), and `find_spider` reports
as the error when the spider asked for may be in it (its file is named after the spider).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import logging
import pkgutil
import sys
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Final, final

from crawler.errors import SpiderError, SpiderNotFound
from crawler.spider.base import Spider

__all__ = [
    "BUNDLED_SPIDERS",
    "BrokenSpiderFile",
    "SpiderCatalogue",
    "available_spiders",
    "find_spider",
    "spider_catalogue",
    "spider_reference",
]

logger = logging.getLogger(__name__)

_FILE_MODULE_PREFIX: Final = "crawler_spiders_"
_MESSAGE_LIMIT: Final = 500
BUNDLED_SPIDERS: Final = Path(__file__).resolve().parents[2] / "spiders"
"""The example spiders of the repository (`spiders/` beside `crawler/`), found by path: not
installed as a top-level package, where it would shadow a user's own `spiders`."""


@final
@dataclass(frozen=True, slots=True)
class BrokenSpiderFile:
    """A spider file that failed to import, and why."""

    path: Path
    """The file, relative to the current directory when it is below it."""
    line: int | None
    """The line of `path` where importing it failed (None when unknown)."""
    error: str
    """`ExceptionClass: message`, on one line."""

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else str(self.path)
        return f"{where}: {self.error}"


@final
@dataclass(frozen=True, slots=True)
class SpiderCatalogue:
    """What the search found: the spiders by name, and the files that failed to import."""

    spiders: dict[str, type[Spider]]
    broken: list[BrokenSpiderFile]


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


def _shown(path: Path) -> Path:
    with contextlib.suppress(ValueError):
        return path.relative_to(Path.cwd())
    return path


def _broken(path: Path, exc: BaseException) -> BrokenSpiderFile:
    """Describe why `path` failed to import: the line of `path` where it failed — the
    error's own for a syntax error in the file, else the file's last frame in the traceback
    (the line that raised, or the import of the module that did)."""
    resolved = path.resolve()
    line: int | None = None
    if isinstance(exc, SyntaxError) and exc.filename and Path(exc.filename).resolve() == resolved:
        line, message = exc.lineno, f"{type(exc).__name__}: {exc.msg}"
    else:
        for frame, number in traceback.walk_tb(exc.__traceback__):
            if Path(frame.f_code.co_filename).resolve() == resolved:
                line = number
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    one_line = " ".join(message.split())
    if len(one_line) > _MESSAGE_LIMIT:
        one_line = one_line[: _MESSAGE_LIMIT - 1] + "…"
    return BrokenSpiderFile(_shown(path), line, one_line)


def _import_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise SpiderNotFound(f"no module named {name!r}") from None
        raise SpiderError(f"cannot import {name}: {exc}") from None
    except Exception as exc:
        raise SpiderError(f"cannot import {name}: {type(exc).__name__}: {exc}") from None


def _load_module(name: str, path: Path) -> ModuleType | BrokenSpiderFile:
    """Import a module of the bundled `spiders` package (found at `path`)."""
    try:
        return importlib.import_module(name)
    except (Exception, SystemExit) as exc:  # whatever the file does, the others stay usable
        return _broken(path, exc)


def _load_file(path: Path) -> ModuleType | BrokenSpiderFile:
    """Import a Python file as a module of its own (once per process)."""
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
    except (Exception, SystemExit) as exc:  # whatever the file does, the others stay usable
        del sys.modules[module_name]
        return _broken(path, exc)
    return module


def _import_file(path: Path) -> ModuleType:
    loaded = _load_file(path)
    if isinstance(loaded, BrokenSpiderFile):
        raise SpiderError(f"cannot import {loaded}")
    return loaded


def _spider_files(directory: Path) -> list[Path]:
    return [path for path in sorted(directory.glob("*.py")) if path.name != "__init__.py"]


def _search(cwd: Path) -> Iterable[ModuleType | BrokenSpiderFile]:
    """Import the local `spiders/` folder's files, then the bundled spiders, in that order.

    The bundled ones are imported as the `spiders` package when that name resolves to them;
    otherwise (a local `spiders/` folder shadows the name) by file path, so they never vanish.
    """
    local = (cwd / "spiders").resolve()
    bundled = BUNDLED_SPIDERS.resolve()
    if local.is_dir() and local != bundled:
        yield from (_load_file(path) for path in _spider_files(local))
    spec = importlib.util.find_spec("spiders")
    locations = list(spec.submodule_search_locations or []) if spec else []
    if bundled in {Path(p).resolve() for p in locations}:
        for info in pkgutil.iter_modules([str(bundled)]):
            yield _load_module(f"spiders.{info.name}", bundled / f"{info.name}.py")
    elif bundled.is_dir():
        yield from (_load_file(path) for path in _spider_files(bundled))


def spider_reference(cls: type[Spider]) -> str:
    """Return how to name a spider class on the command line: `module:Class` or `file.py:Class`."""
    module = sys.modules.get(cls.__module__)
    if cls.__module__.startswith(_FILE_MODULE_PREFIX) and module and module.__file__:
        return f"{_shown(Path(module.__file__))}:{cls.__qualname__}"
    return f"{cls.__module__}:{cls.__qualname__}"


def spider_catalogue(cwd: Path | None = None) -> SpiderCatalogue:
    """Return every discoverable spider class by its name (local `spiders/` first), and the
    spider files that failed to import."""
    found: dict[str, type[Spider]] = {}
    broken: list[BrokenSpiderFile] = []
    for source in _search(cwd or Path.cwd()):
        if isinstance(source, BrokenSpiderFile):
            broken.append(source)
            continue
        for cls in _spiders_in(source):
            found.setdefault(cls.name, cls)
    return SpiderCatalogue(dict(sorted(found.items())), broken)


def available_spiders(cwd: Path | None = None) -> dict[str, type[Spider]]:
    """Return every discoverable spider class by its name (local `spiders/` first); log a
    warning for each spider file that failed to import."""
    catalogue = spider_catalogue(cwd)
    _warn(catalogue.broken)
    return catalogue.spiders


def _warn(broken: Iterable[BrokenSpiderFile]) -> None:
    for file in broken:
        logger.warning("cannot import %s (its spiders are not available)", file)


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


def _by_name(name: str, cwd: Path | None) -> type[Spider] | SpiderCatalogue:
    """The spider called `name`, searched in order; a file that failed to import and is
    named after it (`shop.py` for `shop`), met first, is taken to hold it.

    Returns the catalogue when no spider has that name.

    Raises:
        SpiderError: the file that would hold it failed to import.
    """
    found: dict[str, type[Spider]] = {}
    broken: list[BrokenSpiderFile] = []
    match: type[Spider] | None = None
    for source in _search(cwd or Path.cwd()):
        if isinstance(source, BrokenSpiderFile):
            if match is None and source.path.stem == name:
                raise SpiderError(f"spider {name!r}: cannot import {source}")
            broken.append(source)
            continue
        for cls in _spiders_in(source):
            found.setdefault(cls.name, cls)
            if match is None and cls.name == name:
                match = cls
    if match is not None:
        _warn(broken)
        return match
    return SpiderCatalogue(dict(sorted(found.items())), broken)


def find_spider(ref: str, cwd: Path | None = None) -> type[Spider]:
    """Return the spider class that `ref` names.

    `ref` is a spider name (`books`), a module and class (`mypkg.spiders:Shop`), a module
    (`mypkg.spiders`, if it defines one spider), or a file path (`path/shop.py`, optionally
    `path/shop.py:Shop`). Searching by name logs a warning for each spider file that failed
    to import.

    Raises:
        SpiderNotFound: nothing matches; for a name, the message lists the known spiders
            and the files that failed to import.
        SpiderError: the module or file exists but fails to import; for a name, the file
            named after the spider (`shop.py` for `shop`) fails to import.
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
    found = _by_name(ref, cwd)
    if not isinstance(found, SpiderCatalogue):
        return found
    if "." in ref:
        return _pick(_spiders_in(_import_module(ref)), ref)
    known = ", ".join(found.spiders) or "none"
    unusable = ""
    if found.broken:
        files = ", ".join(str(file.path) for file in found.broken)
        unusable = f"; spider files that failed to import: {files} (see crawler list)"
    raise SpiderNotFound(f"unknown spider {ref!r} (known spiders: {known}{unusable})")
