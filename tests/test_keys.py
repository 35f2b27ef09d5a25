"""Key rotation: new key first, rotate, drop the old key; everything still reads and people are
still recognised on their channel."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.fernet import Fernet
from sqlalchemy import select
from sqlmodel import col

from bot.crypto import Crypto
from bot.keys import encrypted_columns, rotate_keys
from bot.models import Contact, Counsellor, Inbox, Media, Message, Note
from tests.engine_helpers import Chat, running
from tests.helpers import make_settings


async def test_rotation_keeps_every_message_and_contact(tmp_path: Path, database_url: str) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    async with running(tmp_path, database_url, data_key=old) as svc:
        chat = Chat(svc, user="U-rotating")
        await chat.say("こんにちは")
        await chat.say("同意")
        await chat.say("夫に毎日殴られています")  # high: the contact remembers it (risk_enc)
        first = chat.conversation_id

        # A counsellor's note, a mail's whole text and an inbox event not yet processed: every
        # encrypted column has to move to the new key, not only the messages.
        async with svc.db.session() as s, s.begin():
            (inbound,) = (
                await s.scalars(select(Message).where(col(Message.direction) == "in").limit(1))
            ).all()
            inbound.full_enc = svc.crypto.encrypt("全文\n> 引用")
            inbound.meta_enc = svc.crypto.encrypt('[{"kind": "file", "name": "memo.pdf"}]')
            assert inbound.id is not None
            s.add(
                Media(
                    message_id=inbound.id,
                    conversation_id=first,
                    content_type="image/png",
                    width=1,
                    height=1,
                    size=3,
                    data_enc=svc.crypto.encrypt_bytes(b"png"),
                )
            )
            counsellor = Counsellor(username="amy", password_hash="x")
            s.add(counsellor)
            await s.flush()
            assert counsellor.id is not None
            s.add(
                Note(conversation_id=first, counsellor_id=counsellor.id, text_enc=svc.crypto.encrypt("メモ"))
            )
            s.add(Inbox(channel="loopback", external_id="evt-9", payload_enc=svc.crypto.encrypt("{}")))

    done = await rotate_keys(make_settings(tmp_path, database_url, data_key=f"{new},{old}"))
    assert done.messages >= 4 and done.contacts == 1
    assert done.cells["note"] == 1 and done.cells["inbox"] == 1 and done.cells["media"] == 1

    only_new = Crypto([new.encode()])
    read: dict[str, int] = {}
    async with running(tmp_path, database_url, data_key=new) as svc, svc.db.session() as s:
        for table, columns in encrypted_columns().items():
            for row in (await s.execute(select(*columns))).all():
                for value in row:
                    if value:
                        only_new.decrypt(value)  # raises if anything was left under the old key
                        read[table.name] = read.get(table.name, 0) + 1
    assert {"message", "note", "inbox", "contact", "media"} <= set(read), read
    async with running(tmp_path, database_url, data_key=new) as svc, svc.db.session() as s:
        (contact,) = (await s.scalars(select(Contact))).all()
        remembered = json.loads(only_new.decrypt(contact.risk_enc))
        assert remembered["risk"] == "high", "the remembered risk was re-encrypted too"

    async with running(tmp_path, database_url, data_key=new) as svc:  # the old key is gone
        chat = Chat(svc, user="U-rotating")
        sent = await chat.say("最近ずっと眠れなくて困っています")
        assert chat.conversation_id == first, "the same person, found by the re-computed hash"
        assert sent, "and answered"
        async with svc.db.session() as s:
            rows = (
                await s.scalars(
                    select(Message).where(col(Message.direction) == "in").order_by(col(Message.id))
                )
            ).all()
        texts = [svc.crypto.decrypt(m.text_enc) for m in rows if m.kind == "text"]
        assert texts == ["こんにちは", "同意", "夫に毎日殴られています", "最近ずっと眠れなくて困っています"]
