"""Shared fixtures: a gateway on SQLite and on PostgreSQL (every storage test runs on both), the CLI
through its real entry point, and canary strings that must never appear in the clear."""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from gateway.app import Gateway
from gateway.config import Settings
from gateway.db.tables import metadata
from tests.support.services import REPO, unavailable

PG_ADMIN_URL = os.environ.get("GATEWAY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
# One fixed test key: the PostgreSQL database is migrated once and reused (tables emptied between tests).
TEST_MASTER_KEY = "ktest:" + base64.urlsafe_b64encode(b"\x07" * 32).decode().rstrip("=")
GATEWAY_BIN = str(Path(sys.executable).with_name("gateway"))


def _pg_url(dbname: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + dbname


@pytest.fixture(scope="session")
def postgres_db() -> Iterator[str]:
    """A database created for this test session, migrated to head, dropped at the end."""
    name = f"gw_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - any failure to reach PostgreSQL means "unavailable"
        unavailable(f"PostgreSQL ({type(exc).__name__})")
    url = _pg_url(name)
    try:
        Gateway(Settings(data_dir=Path("/nonexistent"), database_url=url, master_key=TEST_MASTER_KEY)).init_schema()
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


_KEEP = {"alembic_version"}
_SYSTEM_KEYS: dict[str, list[Any]] = {}


def _empty_tables(url: str) -> None:
    """Every table emptied, and the installation keys put back as the migration made them
    (a rotation test re-wraps them under a key that the next test does not have)."""
    engine = create_engine(url)
    keys = metadata.tables["system_keys"]
    with engine.begin() as conn:
        if url not in _SYSTEM_KEYS:
            _SYSTEM_KEYS[url] = [dict(r._mapping) for r in conn.execute(keys.select())]
        names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables if t.name not in _KEEP)
        conn.execute(text(f"TRUNCATE {names} CASCADE"))
        conn.execute(keys.insert(), _SYSTEM_KEYS[url])
    engine.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (cheaper than migrating every time)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "gateway.db"
    gw = Gateway(Settings(data_dir=path.parent, database_url=f"sqlite:///{path}", master_key=TEST_MASTER_KEY))
    gw.init_schema()
    gw.close()
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        template = request.getfixturevalue("sqlite_template")
        target = tmp_path / "data" / "gateway.db"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(template, target)
        yield f"sqlite:///{target}"
    else:
        url = request.getfixturevalue("postgres_db")
        _empty_tables(url)
        yield url


@pytest.fixture
def settings_factory(tmp_path: Path, db_url: str):  # type: ignore[no-untyped-def]
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = dict(
            data_dir=tmp_path / "data", database_url=db_url, master_key=TEST_MASTER_KEY, mail_domain="msg.example.test"
        )
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def gateway(settings_factory) -> Iterator[Gateway]:  # type: ignore[no-untyped-def]
    gw = Gateway(settings_factory())
    gw.init()
    yield gw
    gw.close()


@pytest.fixture
def cli_env(tmp_path: Path, db_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(
        GATEWAY_DATA_DIR=str(tmp_path / "data"),
        GATEWAY_DATABASE_URL=db_url,
        GATEWAY_MASTER_KEY=TEST_MASTER_KEY,
        GATEWAY_MAIL_DOMAIN="msg.example.test",
    )
    return env


class CLI:
    """The `gateway` command through its real entry point, in a subprocess."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env, self.cwd = env, cwd

    def run(self, *args: str, expect: int | None = 0, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [GATEWAY_BIN, *args], env=self.env, cwd=self.cwd, capture_output=True, text=True, timeout=120, input=stdin
        )
        if expect is not None:
            assert result.returncode == expect, (result.returncode, result.stdout, result.stderr)
        return result

    def json(self, *args: str) -> Any:
        out = self.run(*args).stdout
        return json.loads(out)

    def fails(self, *args: str, code: int = 2) -> str:
        result = self.run(*args, expect=code)
        assert result.stderr.strip(), "a failure must say why on stderr"
        assert result.stdout.strip() == "", "a failure must not print a result"
        return result.stderr


@pytest.fixture
def cli(cli_env: dict[str, str], tmp_path: Path) -> CLI:
    c = CLI(cli_env, tmp_path)
    c.run("init")
    return c


CANARIES = {
    "body": "CANARY-BODY-7f3a Vos résultats d'analyse",
    "subject": "CANARY-SUBJ-91c2 Résultats",
    "name": "CANARY-NAME-55d1 Jeanne Martin",
    "email": "canary-mail-3b8e@example.org",
    "phone": "+33611223344",
    "attachment": "CANARY-FILE-0c9d.pdf",
}


@pytest.fixture
def canaries() -> dict[str, str]:
    return dict(CANARIES)
