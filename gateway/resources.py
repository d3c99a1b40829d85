"""Where the files shipped beside the code live: inside the installed wheel, or in the source checkout."""
from __future__ import annotations

from pathlib import Path

import gateway

_PACKAGE = Path(gateway.__file__).resolve().parent


def _shipped(bundled: str, in_checkout: str) -> Path:
    # pyproject force-includes top-level folders into the wheel under gateway/_<name>;
    # a source checkout (or an editable install) has them beside the package instead.
    inside = _PACKAGE / bundled
    return inside if inside.is_dir() else _PACKAGE.parent / in_checkout


def templates_dir() -> Path:
    """The top-level `templates/` folder (notices and portal pages)."""
    return _shipped("_templates", "templates")


def migrations_dir() -> Path:
    """The top-level `alembic/` folder (database migrations)."""
    return _shipped("_alembic", "alembic")
