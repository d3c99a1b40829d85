"""The portal's templates: every text has its French version, and the catalog holds no stale entries."""
from __future__ import annotations

import json
import re

from gateway.resources import templates_dir

TEXT = re.compile(r'_\("((?:[^"\\]|\\.)*)"\)')


def test_every_portal_text_is_translated_to_french() -> None:
    folder = templates_dir() / "portal"
    used = {m for path in folder.glob("*.html") for m in TEXT.findall(path.read_text(encoding="utf-8"))}
    catalog = json.loads((folder / "locale" / "fr.json").read_text(encoding="utf-8"))
    assert used, "no translatable text found: the pattern no longer matches the templates"
    assert sorted(used - set(catalog)) == []
    assert sorted(set(catalog) - used) == []
    assert all(value.strip() for value in catalog.values())
