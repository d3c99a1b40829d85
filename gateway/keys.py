"""Key rotation: add a key-encryption key, re-wrap every data key under it in resumable batches, and retire
old keys once nothing is wrapped by them."""
from __future__ import annotations

import sys
from typing import Any

from sqlalchemy import func, select
from tqdm import tqdm

from gateway.app import Gateway
from gateway.crypto import new_key, new_key_id
from gateway.crypto.keyring import read_key_file, write_key_file
from gateway.db.keystore import pending_rewrap, rewrap_batch
from gateway.db.tables import Patient, SystemKey
from gateway.errors import Conflict, NotFound


def rotate(gw: Gateway, *, batch: int = 500) -> dict[str, Any]:
    """A rotation left unfinished is resumed first; otherwise a new key is added, then everything re-wrapped."""
    with gw.sessions() as session:
        pending = pending_rewrap(session, gw.ring)
    resumed = pending > 0
    if not resumed:
        path = gw.settings.key_file
        keys = read_key_file(path) if path.exists() else []
        write_key_file(path, [*keys, (new_key_id(), new_key())])
        gw.reload_keys()
        with gw.sessions() as session:
            pending = pending_rewrap(session, gw.ring)
    done = 0
    with tqdm(total=pending, desc="re-wrapping data keys", unit="key", file=sys.stderr, disable=pending < 1000) as bar:
        while True:
            with gw.transaction() as session:
                n = rewrap_batch(session, gw.ring, limit=batch)
            if not n:
                break
            done += n
            bar.update(n)
    return {"kek_id": gw.ring.newest_id, "rewrapped": done, "resumed": resumed, "ring": list(gw.ring.ids)}


def describe(gw: Gateway) -> dict[str, Any]:
    with gw.sessions() as session:
        counts: dict[str, int] = {}
        for kek_id, n in session.execute(select(Patient.kek_id, func.count()).group_by(Patient.kek_id)):
            if kek_id:
                counts[kek_id] = counts.get(kek_id, 0) + n
        for kek_id, n in session.execute(select(SystemKey.kek_id, func.count()).group_by(SystemKey.kek_id)):
            counts[kek_id] = counts.get(kek_id, 0) + n
    return {"newest": gw.ring.newest_id, "keys": [{"id": i, "wraps": counts.get(i, 0)} for i in gw.ring.ids]}


def retire(gw: Gateway, key_id: str) -> dict[str, Any]:
    if key_id not in gw.ring.ids:
        raise NotFound("unknown key id")
    if key_id == gw.ring.newest_id:
        raise Conflict("the newest key cannot be retired")
    if describe(gw)["keys"][list(gw.ring.ids).index(key_id)]["wraps"]:
        raise Conflict("data keys are still wrapped by this key: run `gateway keys rotate` first")
    path = gw.settings.key_file
    keys = read_key_file(path) if path.exists() else []
    if key_id not in {i for i, _ in keys}:
        raise Conflict("this key comes from GATEWAY_MASTER_KEY: remove it there")
    write_key_file(path, [k for k in keys if k[0] != key_id])
    gw.reload_keys()
    return {"retired": key_id, "ring": list(gw.ring.ids)}
