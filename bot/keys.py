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

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlmodel import col

from bot.config import Settings
from bot.crypto import Crypto
from bot.db import Database
from bot.models import Contact, Message

BATCH = 500


@dataclass
class Rotated:
    messages: int = 0
    contacts: int = 0


async def rotate_keys(settings: Settings) -> Rotated:
    db = Database(settings.resolved_database_url)
    crypto = Crypto(settings.data_keys)
    done = Rotated()
    try:
        await db.migrate()
        last = 0
        while True:
            async with db.session() as s, s.begin():
                rows = (
                    await s.execute(
                        select(col(Message.id), col(Message.text_enc), col(Message.triage_enc))
                        .where(col(Message.id) > last)
                        .order_by(col(Message.id))
                        .limit(BATCH)
                    )
                ).all()
                for mid, text_enc, triage_enc in rows:
                    await s.execute(
                        update(Message)
                        .where(col(Message.id) == mid)
                        .values(
                            text_enc=crypto.rotate(text_enc),
                            triage_enc=crypto.rotate(triage_enc) if triage_enc else "",
                        )
                    )
            if not rows:
                break
            last = rows[-1][0] or last
            done.messages += len(rows)
        async with db.session() as s, s.begin():
            for contact in (await s.scalars(select(Contact))).all():
                address = crypto.decrypt(contact.address_enc)
                contact.address_enc = crypto.rotate(contact.address_enc)
                contact.lookup = crypto.lookup(contact.channel, address)
                done.contacts += 1
    finally:
        await db.dispose()
    return done
