"""Short write transactions for the outbound side, one at a time per SQLite database in this process.

SQLite has one write lock; a writer that finds it taken sleeps in SQLite's busy handler (1, 2, 5 … 100 ms)
rather than waking when it is released. Eight actor threads and a dispatcher queueing on a Python lock
instead hand the database over at once. PostgreSQL needs no such lock.
"""
from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from gateway.app import Gateway

_LOCKS: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()


def _lock_for(engine: Engine) -> threading.Lock:
    with _GUARD:
        lock = _LOCKS.get(engine)
        if lock is None:
            lock = _LOCKS[engine] = threading.Lock()
        return lock


@contextmanager
def writing(gw: Gateway) -> Iterator[Session]:
    """`gw.transaction()`, serialised with this process's other outbound writers on SQLite."""
    guard = _lock_for(gw.engine) if gw.engine.dialect.name == "sqlite" else nullcontext()
    with guard, gw.transaction() as session:
        yield session
