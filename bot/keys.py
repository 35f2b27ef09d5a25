"""Data key rotation: ``tsunagi rotate-keys``.

1. Put a new key first in ``TSUNAGI_DATA_KEY`` (``new,old``) and restart: new data uses the new key,
   old data still reads.
2. Run ``tsunagi rotate-keys``: every encrypted column is re-encrypted with the new key and every
   contact's look-up hash is recomputed with it.
3. Remove the old key from ``TSUNAGI_DATA_KEY`` and restart.
Generate a key with
``python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import select
from sqlmodel import SQLModel

from bot.config import Settings
from bot.crypto import Crypto
from bot.db import Database
from bot.models import Contact

BATCH = 500


@dataclass
class Rotated:
    messages: int = 0
    contacts: int = 0
    cells: dict[str, int] = field(default_factory=dict)  # re-encrypted values, by table


def encrypted_columns() -> dict[sa.Table, list[sa.Column[Any]]]:
    """Every table's ``*_enc`` columns (messages, notes, the inbox, contacts...): a column added later
    is rotated too, without anyone remembering to list it here."""
    out: dict[sa.Table, list[sa.Column[Any]]] = {}
    for table in SQLModel.metadata.sorted_tables:
        columns = [c for c in table.columns if c.name.endswith("_enc")]
        if columns:
            out[table] = columns
    return out


async def _rotate_table(
    db: Database, crypto: Crypto, table: sa.Table, columns: list[sa.Column[Any]]
) -> tuple[int, int]:
    """Rows read and values re-encrypted, in batches by primary key."""
    (key,) = table.primary_key.columns
    read = done = 0
    last: Any = None
    while True:
        async with db.session() as s, s.begin():
            q = select(key, *columns).order_by(key).limit(BATCH)
            if last is not None:
                q = q.where(key > last)
            rows = (await s.execute(q)).all()
            for row in rows:
                values = {c.name: crypto.rotate(v) for c, v in zip(columns, row[1:], strict=True) if v}
                if values:
                    await s.execute(sa.update(table).where(key == row[0]).values(**values))
                    done += len(values)
        if not rows:
            return read, done
        read += len(rows)
        last = rows[-1][0]


async def rotate_keys(settings: Settings) -> Rotated:
    db = Database(settings.resolved_database_url)
    crypto = Crypto(settings.data_keys)
    done = Rotated()
    try:
        await db.migrate()
        for table, columns in encrypted_columns().items():
            rows, done.cells[table.name] = await _rotate_table(db, crypto, table, columns)
            if table.name == "message":
                done.messages = rows
        async with db.session() as s, s.begin():
            for contact in (await s.scalars(select(Contact))).all():
                # The look-up hash is keyed too: recomputed from the (now re-encrypted) platform id.
                contact.lookup = crypto.lookup(contact.channel, crypto.decrypt(contact.address_enc))
                done.contacts += 1
    finally:
        await db.dispose()
    return done
