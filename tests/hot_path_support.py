"""One ordinary LINE text message through the whole service, phase by phase (the signed webhook, the inbox
worker with the engine, an outbox pass to the fake LINE API), for tests/test_hot_path.py (which counts its
statements) and tests/load/phases.py (which times its CPU)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import httpx
from sqlalchemy import event

from bot.config import Settings
from bot.service import Service
from bot.web import create_app
from tests.engine_helpers import started
from tests.fake_line import FakeLine
from tests.helpers import make_settings

SECRET = "0123456789abcdef0123456789abcdef"
ACCESS_TOKEN = "test-channel-access-token"


class Phased(Protocol):
    """What ``one_message`` tells of its phases: counted (``Counting``), or timed."""

    def during(self, phase: str) -> Any: ...


class Counting:
    """Every statement and transaction of one engine, by the phase it was sent in."""

    def __init__(self, svc: Service) -> None:
        self.phase = ""
        self.statements: Counter[str] = Counter()
        self.transactions: Counter[str] = Counter()
        self.seen: list[tuple[str, str]] = []
        engine = svc.db.engine.sync_engine
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "begin", self._begin)

    def _statement(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if not self.phase:
            return
        self.statements[self.phase] += 1
        self.seen.append((self.phase, " ".join(statement.split())[:400]))

    def _begin(self, conn: Any) -> None:
        if not self.phase or conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            return  # (a statement on its own: no BEGIN and COMMIT are sent)
        self.transactions[self.phase] += 1

    @contextmanager
    def during(self, phase: str) -> Iterator[None]:
        self.phase = phase
        try:
            yield
        finally:
            self.phase = ""

    def explain(self) -> str:
        return "\n".join(f"{p}: {s}" for p, s in self.seen)


def signature(raw: bytes) -> str:
    return base64.b64encode(hmac.new(SECRET.encode(), raw, hashlib.sha256).digest()).decode()


def text_event(user: str, text: str, token: str) -> dict[str, Any]:
    return {
        "type": "message",
        "mode": "active",
        "timestamp": int(time.time() * 1000),
        "source": {"type": "user", "userId": user},
        "webhookEventId": "01" + uuid.uuid4().hex[:24].upper(),
        "deliveryContext": {"isRedelivery": False},
        "replyToken": token,
        "message": {"type": "text", "id": str(uuid.uuid4().int)[:18], "text": text},
    }


async def one_message(
    svc: Service, web: httpx.AsyncClient, fake: FakeLine, counting: Phased, user: str, text: str
) -> None:
    body = json.dumps(
        {"destination": "U" + "f" * 32, "events": [text_event(user, text, fake.issue_token(user))]}
    )
    raw = body.encode()
    headers = {"Content-Type": "application/json", "X-Line-Signature": signature(raw)}
    before = len(fake.to(user))
    with counting.during("intake"):
        r = await web.post("/webhooks/line", content=raw, headers=headers)
    assert r.status_code == 200, r.text
    with counting.during("inbox"):
        assert await svc.inbox.process_one()
    with counting.during("outbox"):
        assert await svc.outbox.send_due() >= 1
    assert len(fake.to(user)) == before + 1, "one reply request, by the free reply token"
    assert fake.to(user)[-1].via == "reply"


def line_settings(tmp_path: Path, database_url: str, fake: FakeLine, **settings: Any) -> Settings:
    """Settings of a service with LINE alone, sending to ``fake``."""
    return make_settings(
        tmp_path,
        database_url,
        line_channel_secret=SECRET,
        line_channel_access_token=ACCESS_TOKEN,
        line_api_base=fake.url,
        loopback_channel=False,
        **settings,
    )


async def measure(tmp_path: Path, database_url: str, work: Callable[..., Awaitable[None]]) -> None:
    with FakeLine(ACCESS_TOKEN) as fake:
        async with started(line_settings(tmp_path, database_url, fake)) as svc:
            transport = httpx.ASGITransport(app=create_app(service=svc))
            async with httpx.AsyncClient(transport=transport, base_url="http://tsunagi") as web:
                await work(svc, web, fake, Counting(svc))
