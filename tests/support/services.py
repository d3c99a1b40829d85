"""Where the tests find the services and fixtures they need, and what to do when one is missing.

Locally a missing service or corpus skips the test; under GATEWAY_REQUIRE_SERVICES=1 (CI) it fails,
so a green CI run cannot hide a test that never ran.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def services_required() -> bool:
    return os.environ.get("GATEWAY_REQUIRE_SERVICES", "") not in ("", "0", "false", "no")


def unavailable(what: str) -> None:
    """Skip (locally) or fail (CI) because `what` is not there."""
    if services_required():
        pytest.fail(f"{what} is required (GATEWAY_REQUIRE_SERVICES=1) but unavailable", pytrace=False)
    pytest.skip(f"{what} unavailable")


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def corpus_dir() -> Path:
    """The shared real-world email corpus, read in place (never copied into the repo)."""
    path = Path(os.environ.get("GATEWAY_TEST_CORPUS", REPO.parent / "shared" / "corpus"))
    if not path.is_dir():
        unavailable(f"email corpus at {path}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
