"""Where the shipped non-Python files are: `templates/` and `alembic/` from a checkout, or their copies
inside the installed wheel (`gateway/_templates`, `gateway/_alembic`, see pyproject.toml)."""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _locate(installed: str, checkout: str) -> Path:
    inside = _PACKAGE / installed
    return inside if inside.is_dir() else _PACKAGE.parent / checkout


def templates_dir() -> Path:
    return _locate("_templates", "templates")


def migrations_dir() -> Path:
    return _locate("_alembic", "alembic")
