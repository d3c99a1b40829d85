"""Write a file so that a reader sees all of it or none of it: temp file, fsync, rename."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(directory: Path, name: str, data: bytes) -> Path:
    """Write `data` to `directory/name` (mode 0600, the directory 0700 if created)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Dot-prefixed temp names keep readers that glob "*.eml" / "*.json" away from half-written files.
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        target = directory / name
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
