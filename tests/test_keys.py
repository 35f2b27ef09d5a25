"""Key rotation: new key first, rotate, drop the old key; everything still reads and people are
still recognised on their channel."""

from __future__ import annotations

from pathlib import Path

from cryptography.fernet import Fernet
from sqlalchemy import select
from sqlmodel import col

from bot.keys import rotate_keys
from bot.models import Message
from tests.conftest import make_settings
from tests.engine_helpers import Chat, running


async def test_rotation_keeps_every_message_and_contact(tmp_path: Path, database_url: str) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    async with running(tmp_path, database_url, data_key=old) as svc:
        chat = Chat(svc, user="U-rotating")
        await chat.say("こんにちは")
        await chat.say("同意")
        first = chat.conversation_id

    done = await rotate_keys(make_settings(tmp_path, database_url, data_key=f"{new},{old}"))
    assert done.messages >= 4 and done.contacts == 1

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
        assert texts == ["こんにちは", "同意", "最近ずっと眠れなくて困っています"]
