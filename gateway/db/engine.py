"""Engines and session factories for SQLite (WAL, foreign keys on) and PostgreSQL (psycopg 3).

Sessions are created here and passed in: domain functions never open their own.
"""
from __future__ import annotations

import fcntl
import os
import threading
import time
import weakref
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
            if _BACKGROUND_CHECKPOINTS.get(str(engine.url)):
                cur.execute("PRAGMA wal_autocheckpoint=0")  # a WalCheckpointer thread does it (see there)
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # type: ignore[no-untyped-def]
            # Writers take the write lock up front (IMMEDIATE): two writers then queue on busy_timeout
            # instead of one failing with "database is locked" when it upgrades a read transaction.
            # Readers (engine.execution_options(readonly=True)) begin DEFERRED and never block writers.
            # A single statement (HeldConnection.transaction(one_statement=True)) is its own transaction.
            options = conn.get_execution_options()
            if not options.get("one_statement", False):
                conn.exec_driver_sql("BEGIN" if options.get("readonly", False) else "BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def make_sessionmaker(engine: Engine, *, readonly: bool = False) -> sessionmaker[Session]:
    """Sessions for writers, or (readonly=True) for readers, which on SQLite do not take the write lock."""
    bind = engine.execution_options(readonly=True) if readonly else engine
    return sessionmaker(bind, expire_on_commit=False)


# SQLite has one writer at a time. Writers queue on a lock per database file, handed over at once, rather
# than in SQLite's busy handler, which polls with sleeps of up to 100 ms: with 16 concurrent webhook writers,
# most of the p99 latency was spent asleep while the database was free. In this process the lock is a
# thread lock; between processes on the machine (`gateway run --no-worker` beside `gateway worker`) a
# `flock` on a file beside the database, polled every 0.1-1 ms while another process holds it (a worker
# process's writes had waited 1, 2, then 5 ms and more in SQLite's handler for a lock held under 1 ms).
_SQLITE_WRITER_WAIT = 30.0  # as busy_timeout: past it, SQLite's own locking decides, as without this lock


class _SqliteWriter:
    """The writer lock of one SQLite file: a thread lock (re-entrant), and over it, held by the outermost
    holder, an exclusive `flock` shared with the other processes writing to the file."""

    def __init__(self, database: str | None) -> None:
        self._threads = threading.RLock()
        self._depth = 0  # nesting of the thread holding `_threads`
        self._fd: int | None = None
        if database and database != ":memory:" and not database.startswith("file:"):
            try:
                self._fd = os.open(f"{database}-writer.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:  # a read-only directory: this process's writers still queue on the thread lock
                self._fd = None

    def acquire(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if not self._threads.acquire(timeout=timeout):
            return False
        if self._depth == 0 and self._fd is not None:
            pause = 0.0001
            while True:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        break  # SQLite's busy handler decides from here, as without this lock
                    time.sleep(pause)
                    pause = min(pause * 2, 0.001)
        self._depth += 1
        return True

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)  # a no-op when it was never taken (deadline passed)
        self._threads.release()


_SQLITE_WRITERS: dict[str, _SqliteWriter] = {}
_SQLITE_WRITERS_GUARD = threading.Lock()


# Each engine's writer lock, found once (rendering the URL at every transaction cost more than its lookup).
_WRITER_OF: weakref.WeakKeyDictionary[Engine, _SqliteWriter | None] = weakref.WeakKeyDictionary()


def _sqlite_writer(factory: sessionmaker[Session]) -> _SqliteWriter | None:
    bind = factory.kw.get("bind")
    if not isinstance(bind, Engine):
        return None
    try:
        return _WRITER_OF[bind]
    except KeyError:
        pass
    writer = None
    if bind.dialect.name == "sqlite" and not bind.get_execution_options().get("readonly"):
        key = str(bind.url)
        with _SQLITE_WRITERS_GUARD:
            writer = _SQLITE_WRITERS.get(key)
            if writer is None:
                writer = _SQLITE_WRITERS[key] = _SqliteWriter(bind.url.database)
    _WRITER_OF[bind] = writer
    return writer


@contextmanager
def _writers_queue(factory: sessionmaker[Session]) -> Iterator[None]:
    """Wait for the other writers to the same SQLite file, of this process and of others on this machine."""
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


class HeldConnection:
    """One connection kept for a caller that runs its transactions one at a time (the notice actor's
    `Combined`): Core statements only, without a Session, and without a pool checkout and return around
    each transaction (half the cost of a short transaction on SQLite). Writers queue as in `transaction`.
    After a failed transaction the connection is closed and the next one opens a new one (a server
    restart, an idle timeout).

    `one_statement=True` promises a single statement: on SQLite it is then its own transaction, without a
    BEGIN IMMEDIATE and a COMMIT around it (each a call that gives up the GIL, costly in a busy process)."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self._factory = factory
        self._connection: Connection | None = None

    @contextmanager
    def transaction(self, *, one_statement: bool = False) -> Iterator[Connection]:
        """A transaction on the held connection, committed on success; not for concurrent use."""
        with _writers_queue(self._factory):
            connection = self._connection
            if connection is None:
                connection = self._connection = self._factory.kw["bind"].connect()
            connection.execution_options(one_statement=one_statement)
            try:
                with connection.begin():
                    yield connection
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


# Databases (by URL) whose WAL a `WalCheckpointer` of this process checkpoints: their connections do not.
_BACKGROUND_CHECKPOINTS: dict[str, int] = {}
_CHECKPOINTS_GUARD = threading.Lock()


class WalCheckpointer:
    """Checkpoints a SQLite database's write-ahead log from a thread of its own, every `period` seconds.

    By default SQLite checkpoints inside the COMMIT that takes the log past 1,000 pages: that commit copies
    the pages back and syncs the database file while it still holds the write lock. Posting messages, the
    median commit took 36 us and one in a hundred 3 to 7 ms, during which every other writer waited (two
    thirds of all commit time). The long-running processes (`gateway run`, `gateway worker`) start one; the
    connections of their engine then leave checkpoints to it (PASSIVE: it never waits for nor blocks a
    writer). Other processes (CLI commands) keep SQLite's own. On other databases it does nothing.
    """

    def __init__(self, engine: Engine, *, period: float = 0.5) -> None:
        self._engine = engine
        self._period = period
        self._key = str(engine.url)
        self._active = engine.dialect.name == "sqlite" and bool(engine.url.database) and engine.url.database != ":memory:"
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> WalCheckpointer:
        if not self._active or self._thread is not None:
            return self
        with _CHECKPOINTS_GUARD:
            _BACKGROUND_CHECKPOINTS[self._key] = _BACKGROUND_CHECKPOINTS.get(self._key, 0) + 1
        self._engine.dispose()  # pooled connections were opened with SQLite's own checkpoints
        self._thread = threading.Thread(target=self._run, name="gateway-checkpoints", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stopping.set()
        self._thread.join(30)
        self._thread = None
        with _CHECKPOINTS_GUARD:
            left = _BACKGROUND_CHECKPOINTS.get(self._key, 1) - 1
            if left > 0:
                _BACKGROUND_CHECKPOINTS[self._key] = left
            else:
                _BACKGROUND_CHECKPOINTS.pop(self._key, None)

    def checkpoint(self) -> tuple[int, int, int]:
        """One PASSIVE checkpoint now: (busy, pages in the log, pages checkpointed), as SQLite reports."""
        connection = self._engine.raw_connection()
        try:
            cursor = connection.cursor()
            row = cursor.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            cursor.close()
            return tuple(row)  # type: ignore[return-value]
        finally:
            connection.close()

    def _run(self) -> None:
        from gateway.logs import get_logger  # here: the engine module is imported before logging is set up

        failing = False
        while True:
            stopping = self._stopping.wait(self._period)
            try:
                self.checkpoint()
                failing = False
            except Exception as exc:  # noqa: BLE001 - the thread's edge: try again next period
                if not failing:
                    get_logger("gateway.db").error("wal_checkpoint.failed", error=type(exc).__name__)
                failing = True
            if stopping:
                return
