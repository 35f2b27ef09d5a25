"""Privacy: no message text and no platform id in any log line, at any level."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.engine_helpers import Chat, running

SECRET_TEXT = "ひみつの話：山田先輩に毎晩つきまとわれていて、もう死にたい"
SECRET_USER = "U4af4980629-platform-id-never-logged"


async def test_no_text_or_platform_id_in_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with running(tmp_path) as svc:
        chat = Chat(svc, user=SECRET_USER)
        await chat.say("こんにちは")
        await chat.say("同意")
        sent = await chat.say(SECRET_TEXT)
        assert any("110" in m.text for m in sent), "the crisis path ran"
        await chat.say("終了")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "handled text on loopback" in logged, "the engine does log, with ids and states only"
    for secret in (SECRET_TEXT, "山田先輩", "死にたい", SECRET_USER):
        assert secret not in logged
