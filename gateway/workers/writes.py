"""Short transactions for the outbound side.

On SQLite the writers of this process already queue on one lock per database file in
`gateway.db.engine.transaction` (handed over at once, instead of SQLite's sleeping busy handler), so
`writing` is `gw.transaction()` under the name the worker code reads best with. The notice actor's own
statements are Core only: `writing_rows` gives it a bare connection in a transaction, without a Session
(the same writer queue), which costs a third less per transaction; an outcome, one UPDATE, is written
as a transaction of its own (`one_statement`).
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
def writing_rows(gw: Gateway, *, one_statement: bool = False) -> Iterator[Connection]:
    with connection_transaction(gw.sessions, one_statement=one_statement) as connection:
        yield connection
