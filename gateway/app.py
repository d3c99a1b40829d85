"""One gateway installation opened in this process: settings, database, key ring and key store."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from gateway.config import Settings
from gateway.crypto import KeyRing, new_key, new_key_id
from gateway.crypto.keyring import write_key_file
from gateway.db.engine import WalCheckpointer, make_engine, make_sessionmaker, transaction
from gateway.db.keystore import Keystore, ensure_system_keys
from gateway.resources import migrations_dir


def alembic_config(url: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config  # imported here: every other command starts faster without it

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["url"] = url
    return cfg


@dataclass
class Gateway:
    settings: Settings
    engine: Engine = field(init=False)
    sessions: sessionmaker[Session] = field(init=False)
    readers: sessionmaker[Session] = field(init=False)
    checkpointer: WalCheckpointer | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self.engine = make_engine(self.settings.resolved_database_url)
        self.sessions = make_sessionmaker(self.engine)
        self.readers = make_sessionmaker(self.engine, readonly=True)

    @cached_property
    def ring(self) -> KeyRing:
        master = self.settings.master_key.get_secret_value() if self.settings.master_key else None
        return KeyRing.load(master, self.settings.key_file)

    @cached_property
    def keys(self) -> Keystore:
        with self.readers() as session:
            return Keystore.load(session, self.ring)

    def reload_keys(self) -> None:
        self.__dict__.pop("ring", None)
        self.__dict__.pop("keys", None)

    def transaction(self):  # type: ignore[no-untyped-def]
        return transaction(self.sessions)

    def init(self) -> dict[str, object]:
        """Data dir, key file (when no key is configured), schema at head, installation keys. Idempotent."""
        data_dir = self.settings.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)
        created_key = False
        if self.settings.master_key is None and not self.settings.key_file.exists():
            write_key_file(self.settings.key_file, [(new_key_id(), new_key())])
            created_key = True
        self.init_schema()
        return {"data_dir": str(data_dir.resolve()), "key_file_created": created_key, "schema": "head"}

    def init_schema(self) -> None:
        """Migrate to head and create the installation keys; idempotent."""
        from alembic import command

        command.upgrade(alembic_config(self.settings.resolved_database_url), "head")
        with self.transaction() as session:
            ensure_system_keys(session, self.ring)
        self.reload_keys()

    def start_checkpoints(self) -> None:
        """In a long-running process (`gateway run`, `gateway worker`): SQLite's write-ahead log is
        checkpointed by a thread of this process, not inside a writer's commit (`WalCheckpointer`)."""
        if self.checkpointer is None:
            self.checkpointer = WalCheckpointer(self.engine).start()

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.stop()
            self.checkpointer = None
        self.engine.dispose()
