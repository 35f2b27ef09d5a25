"""Privacy: no message text and no platform id in any log line, at any level."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from bot.models import Handoff
from bot.storage import accounts
from bot.web import create_app
from tests.engine_helpers import Chat, running
from tests.fake_line import FakeLine
from tests.helpers import (
    add_account,
    db,
    eventually,
    is_bot,
    line_text_body,
    login,
    make_settings,
    post_line,
    service_logs,
    start_fresh,
    try_login,
    wait_for,
)

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


# -- the service's own log lines, as an operator's collector reads them (bot/logs.py) -----------------------

LINE_SECRET = "privacy-line-secret"
LINE_TOKEN = "privacy-line-token"
LINE_USER = "U" + "4af49806292f4a5b8c0e1d2c3b4a5f6e"
COUNSELLOR = "yamada-login"
DISPLAY_NAME = "山田はなこ"
SESSION_TOKEN_IN_QUERY = "tok-query-string-never-logged"


def test_the_json_logs_carry_no_text_name_or_platform_id(tmp_path: Path) -> None:
    """Every channel and the console driven through the app, every logger at DEBUG, written as the
    service writes them (JSON, one event a line): each line is an event with its request id where there
    was a request, and none holds a message's text, a name, a platform id or a token from a query string."""
    with service_logs(logging.DEBUG) as out, FakeLine(LINE_TOKEN) as fake:
        settings = make_settings(
            tmp_path,
            line_channel_secret=LINE_SECRET,
            line_channel_access_token=LINE_TOKEN,
            line_api_base=fake.url,
        )
        with TestClient(create_app(settings)) as client:
            webchat_token = through_every_channel(client, fake)
    text = out.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) > 20
    for line in lines:
        assert {"time", "level", "logger", "event"} <= set(line), line
        assert line["time"].endswith("Z")
    access = [line for line in lines if line["logger"] == "tsunagi.access"]
    assert access and all(len(line.get("request_id", "")) == 32 for line in access)
    # The route's template, never the path as sent nor its query string.
    assert any(line["event"].startswith("GET /chat 200 ") for line in access), access
    assert any(line["event"].startswith("WS /chat/ws 101 ") for line in access), access
    handled = [line for line in lines if line["event"].startswith("handled text on line")]
    assert handled, "the engine logs LINE's messages, with ids and states only"
    secrets = (SECRET_TEXT, "山田先輩", "死にたい", LINE_USER, COUNSELLOR, DISPLAY_NAME, webchat_token)
    for secret in (*secrets, SESSION_TOKEN_IN_QUERY):
        assert secret not in text, secret


def through_every_channel(client: TestClient, fake: FakeLine) -> str:
    """A person on LINE and one on the web chat tell the secret; a counsellor with a name logs in (once
    wrongly), claims and answers with it; a URL carries a token in its query. The web chat's token."""
    assert post_line(client, line_text_body(LINE_USER, SECRET_TEXT), LINE_SECRET).status_code == 200
    eventually(lambda: len(fake.to(LINE_USER)) >= 1, "LINE's answer")
    with client.websocket_connect("/chat/ws") as ws:
        token, _ = start_fresh(ws)
        ws.send_json({"type": "message", "text": "同意", "id": "m1"})
        ws.send_json({"type": "message", "text": SECRET_TEXT, "id": "m2"})
        wait_for(ws, lambda f: is_bot(f) and "110" in str(f.get("text")), what="the crisis reply")

    async def named(s: AsyncSession) -> None:
        await accounts.set_display_name(s, username=COUNSELLOR, display_name=DISPLAY_NAME, actor="test")

    add_account(client, COUNSELLOR)
    db(client, named)
    assert try_login(client, COUNSELLOR, "wrong password").status_code == 401
    me = login(client, COUNSELLOR)

    async def queued(s: AsyncSession) -> list[str]:
        rows = await s.scalars(select(Handoff.conversation_id).where(col(Handoff.status) == "waiting"))
        return list(rows.all())

    waiting = db(client, queued)
    assert waiting
    assert me.claim(waiting[0]).status_code == 200
    assert me.reply(waiting[0], SECRET_TEXT).status_code == 202
    client.get(f"/chat?token={SESSION_TOKEN_IN_QUERY}")
    return token
