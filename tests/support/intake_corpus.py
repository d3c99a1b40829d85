"""Parametrize tests over the shared email corpus without skipping at collection time.

When the corpus is missing, a single `MISSING` case is produced; the test calls `corpus_dir()` then,
which skips locally and fails under GATEWAY_REQUIRE_SERVICES=1.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.services import corpus_dir

MISSING = "<corpus missing>"


def corpus_names(folder: str, pattern: str) -> list[str]:
    """Sorted names of the corpus files matching `pattern` in `folder`, or [MISSING]."""
    try:
        base = corpus_dir()
    except (pytest.skip.Exception, pytest.fail.Exception):
        return [MISSING]
    return sorted(path.name for path in (base / folder).glob(pattern)) or [MISSING]


def corpus_file(folder: str, name: str) -> Path:
    """The corpus file, or skip/fail (see `corpus_dir`) when the corpus is not there."""
    path = corpus_dir() / folder / name
    if name == MISSING or not path.is_file():
        pytest.fail(f"corpus file {folder}/{name} not found", pytrace=False)
    return path
