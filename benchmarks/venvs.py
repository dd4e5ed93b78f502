"""Private virtualenvs for the crawlers we compare against, under ``benchmarks/.venvs/``.

Each tool gets its own environment, created on first use with ``python -m venv`` and
``pip install``, so Scrapy's and Crawlee's dependencies never meet ours or each other's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Final

VENVS_DIR: Final = Path(__file__).resolve().parent / ".venvs"


def venv_python(name: str) -> Path:
    """Return the interpreter of the virtualenv ``name`` (which may not exist yet)."""
    return VENVS_DIR / name / "bin" / "python"


def ensure_venv(name: str, requirements: list[str], *, probe: str) -> Path:
    """Create the virtualenv ``name`` with ``requirements``, unless it exists with exactly those.

    Args:
        name: directory name under ``benchmarks/.venvs``.
        requirements: pip requirement specifiers.
        probe: a module whose successful import shows the environment is ready.

    Returns:
        The environment's Python interpreter.

    Raises:
        RuntimeError: if the environment cannot be created or the install fails.
    """
    python = venv_python(name)
    marker = VENVS_DIR / name / "benchmark-requirements.txt"
    wanted = "\n".join(requirements) + "\n"
    ready = python.exists() and marker.exists() and marker.read_text() == wanted
    if ready and _imports(python, probe):
        return python
    print(f"setting up {VENVS_DIR / name} with {' '.join(requirements)} ...", flush=True)
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(VENVS_DIR / name)],
        [str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
        [str(python), "-m", "pip", "install", "--quiet", *requirements],
    ]
    for step in steps:
        result = subprocess.run(step, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(step)} failed:\n{result.stdout}{result.stderr}")
    if not _imports(python, probe):
        raise RuntimeError(f"{probe} still does not import in {VENVS_DIR / name}")
    marker.write_text(wanted)
    return python


def package_version(python: Path, distribution: str) -> str:
    """Return the installed version of ``distribution`` in the environment of ``python``."""
    code = f"import importlib.metadata as m; print(m.version({distribution!r}))"
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 else "?"


def _imports(python: Path, module: str) -> bool:
    command = [str(python), "-c", f"import {module}"]
    return subprocess.run(command, capture_output=True, check=False).returncode == 0
