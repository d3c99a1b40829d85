"""Short transactions for the outbound side.

On SQLite the writers of this process already queue on one lock per database file in
`gateway.db.engine.transaction` (handed over at once, instead of SQLite's sleeping busy handler), so
`writing` is `gw.transaction()` under the name the worker code reads best with. The notice actor's own
statements are Core only: `writing_rows` gives it a bare connection in a transaction, without a Session
(the same writer queue), which costs a third less per transaction.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from gateway.app import Gateway
from gateway.db.engine import connection_transaction


@contextmanager
def writing(gw: Gateway) -> Iterator[Session]:
    with gw.transaction() as session:
        yield session


@contextmanager
def writing_rows(gw: Gateway) -> Iterator[Connection]:
    with connection_transaction(gw.sessions) as connection:
        yield connection
