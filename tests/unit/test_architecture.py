"""The import direction is part of the design: edges -> pipeline -> storage -> crypto (pyproject's
import-linter contracts), and only gateway.crypto imports `cryptography`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.services import REPO


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout
