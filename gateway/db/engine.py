"""Engines and session factories for SQLite (WAL, foreign keys on) and PostgreSQL (psycopg 3).

Sessions are created here and passed in: domain functions never open their own.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str, **kwargs: object) -> Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # pysqlite's own BEGIN handling is off so SQLAlchemy's BEGIN (IMMEDIATE for writers) is the only one.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # type: ignore[no-untyped-def]
            # Writers take the write lock up front (IMMEDIATE): two writers then queue on busy_timeout
            # instead of one failing with "database is locked" when it upgrades a read transaction.
            # Readers (engine.execution_options(readonly=True)) begin DEFERRED and never block writers.
            # A single statement (connection_transaction(one_statement=True)) is its own transaction.
            options = conn.get_execution_options()
            if not options.get("one_statement", False):
                conn.exec_driver_sql("BEGIN" if options.get("readonly", False) else "BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def make_sessionmaker(engine: Engine, *, readonly: bool = False) -> sessionmaker[Session]:
    """Sessions for writers, or (readonly=True) for readers, which on SQLite do not take the write lock."""
    bind = engine.execution_options(readonly=True) if readonly else engine
    return sessionmaker(bind, expire_on_commit=False)


# SQLite has one writer at a time. Writers of this process queue on a lock per database file, handed over
# at once, rather than in SQLite's busy handler, which polls with sleeps of up to 100 ms: with 16 concurrent
# webhook writers, most of the p99 latency was spent asleep while the database was free.
_SQLITE_WRITERS: dict[str, threading.RLock] = {}
_SQLITE_WRITER_WAIT = 30.0  # as busy_timeout: past it, SQLite's own locking decides, as without this lock


def _sqlite_writer(factory: sessionmaker[Session]) -> threading.RLock | None:
    bind = factory.kw.get("bind")
    if not isinstance(bind, Engine) or bind.dialect.name != "sqlite" or bind.get_execution_options().get("readonly"):
        return None
    return _SQLITE_WRITERS.setdefault(str(bind.url), threading.RLock())


@contextmanager
def _writers_queue(factory: sessionmaker[Session]) -> Iterator[None]:
    """Wait for this process's other writers to the same SQLite file (nothing to wait for elsewhere)."""
    writer = _sqlite_writer(factory)
    queued = writer.acquire(timeout=_SQLITE_WRITER_WAIT) if writer is not None else False
    try:
        yield
    finally:
        if queued:
            writer.release()  # type: ignore[union-attr]


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    with _writers_queue(factory), factory() as session, session.begin():
        yield session


@contextmanager
def connection_transaction(factory: sessionmaker[Session], *, one_statement: bool = False) -> Iterator[Connection]:
    """`transaction` for Core statements only: a connection of the factory's engine, without a Session
    (a third less work per short transaction); SQLite writers queue on the same lock.

    `one_statement=True` promises a single statement: on SQLite it is then its own transaction, without a
    BEGIN IMMEDIATE and a COMMIT around it (each a call that gives up the GIL, costly in a busy process)."""
    with _writers_queue(factory), factory.kw["bind"].connect() as connection:
        if one_statement:
            connection.execution_options(one_statement=True)
        with connection.begin():
            yield connection
