"""SQLite writers queue on one lock per database file: a thread lock in the process, and a `flock` on a file
beside the database between processes (`gateway run --no-worker` beside `gateway worker`)."""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from sqlalchemy import text

from gateway.db.engine import WalCheckpointer, _sqlite_writer, make_engine, make_sessionmaker, transaction

_HOLDER = textwrap.dedent(
    """
    import sys, time
    from sqlalchemy import text
    from gateway.db.engine import make_engine, make_sessionmaker, transaction
    factory = make_sessionmaker(make_engine(sys.argv[1]))
    with transaction(factory) as s:
        s.execute(text("INSERT INTO t (who, at) VALUES ('other', :at)"), {"at": time.time()})
        print("holding", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def _lock_is_free(tmp_path: Path) -> bool:
    """Whether another open file of the lock could take it now (as another process sees it)."""
    fd = os.open(tmp_path / "w.db-writer.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


def _factory(tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'w.db'}"
    engine = make_engine(url)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE IF NOT EXISTS t (who TEXT, at REAL)"))
    return url, make_sessionmaker(engine)


def test_a_writer_waits_for_another_process_holding_the_file_lock_then_commits(tmp_path: Path) -> None:
    url, factory = _factory(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, url, "0.5"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        assert not _lock_is_free(tmp_path)  # the other process's transaction holds it
        with transaction(factory) as s:
            # Reached only once the other process committed: its row is there, in this transaction.
            assert s.execute(text("SELECT who FROM t")).scalars().all() == ["other"]
            s.execute(text("INSERT INTO t (who, at) VALUES ('me', :at)"), {"at": time.time()})
    finally:
        assert holder.wait(30) == 0
    with factory() as s:
        assert s.execute(text("SELECT who FROM t ORDER BY at")).scalars().all() == ["other", "me"]


def test_the_file_lock_is_held_until_the_outermost_transaction_of_the_thread_ends(tmp_path: Path) -> None:
    _url, factory = _factory(tmp_path)
    writer = _sqlite_writer(factory)
    assert writer is not None

    assert writer.acquire(timeout=5)
    try:
        assert writer.acquire(timeout=5)  # nested, in the same thread
        writer.release()
        assert not _lock_is_free(tmp_path)
    finally:
        writer.release()
    assert _lock_is_free(tmp_path)


def test_a_checkpointer_takes_the_log_over_from_the_commits_and_gives_it_back(tmp_path: Path) -> None:
    url, factory = _factory(tmp_path)
    engine = factory.kw["bind"]

    def autocheckpoint() -> int:
        with engine.connect() as c:
            return c.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()

    assert autocheckpoint() == 1000  # SQLite's own: inside the commit that crosses 1,000 pages
    checkpointer = WalCheckpointer(engine, period=0.05).start()
    database = tmp_path / "w.db"
    try:
        assert autocheckpoint() == 0  # connections opened from now on leave it to the thread
        before = database.stat().st_size
        for i in range(50):
            with transaction(factory) as s:
                s.execute(text("INSERT INTO t (who, at) VALUES (:who, :at)"), {"who": "x" * 4000, "at": time.time()})
        # The rows are in the log; within a few periods the thread copies them into the database file.
        deadline = time.monotonic() + 10
        while database.stat().st_size <= before and time.monotonic() < deadline:
            time.sleep(0.02)
        assert database.stat().st_size > before + 50 * 4000
    finally:
        checkpointer.stop()
    engine.dispose()
    assert autocheckpoint() == 1000


def test_the_checkpointer_does_nothing_on_other_databases(tmp_path: Path) -> None:
    engine = make_engine("sqlite://")  # in memory: no log to checkpoint
    checkpointer = WalCheckpointer(engine).start()
    assert checkpointer._thread is None
    checkpointer.stop()
