"""Short write transactions for the outbound side.

On SQLite the writers of this process already queue on one lock per database file in
`gateway.db.engine.transaction` (handed over at once, instead of SQLite's sleeping busy handler), so this
is `gw.transaction()` under the name the worker code reads best with.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from gateway.app import Gateway


@contextmanager
def writing(gw: Gateway) -> Iterator[Session]:
    with gw.transaction() as session:
        yield session
