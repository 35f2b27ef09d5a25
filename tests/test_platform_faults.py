"""LINE, Telegram and the mail relay failing for a while, then recovering, under a real ``tsunagi serve``
(PostgreSQL, its own inbox and outbox workers): everything is delivered afterwards, in each person's
order, nothing twice, and the other channels keep flowing meanwhile.

The platforms are local fakes (tests/fake_line.py, tests/fake_telegram.py, tests/fake_relay.py) told to
fail for ``WINDOW`` seconds (the issue's minute, shortened): 500, 429 with Retry-After, 421 or 451 from the
relay, or no answer at all past the service's timeout (``TSUNAGI_API_TIMEOUT`` and
``TSUNAGI_SMTP_TIMEOUT``, set short here). What each person got is compared with what the service stored
for them (the outbox rows in order, their texts decrypted with the test's data key)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import os
import re
import smtplib
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import asyncpg
import pytest
from cryptography.fernet import Fernet

from bot.crypto import Crypto
from tests.engine_helpers import reply_keys
from tests.fake_line import FakeLine
from tests.fake_relay import FakeRelay, running_relay
from tests.fake_telegram import FakeTelegram, running_fake
from tests.helpers import eventually, free_port, postgres_database_sync, server

WINDOW = 12.0  # seconds an outage lasts
TIMEOUT = 2.0  # seconds the service waits for a platform's answer
DELIVERY = 90.0  # seconds everything gets to arrive after an outage began (backoff: 2, 4, 8 ... s)
RETRY_AFTER = 4  # seconds a 429 asks for
LINE_SECRET = "0123456789abcdef0123456789abcdef"
LINE_TOKEN = "fault-test-access-token"
TELEGRAM_TOKEN = "123456:fault-test-token"
TELEGRAM_SECRET = "fault-test-secret"
ADDRESS = "soudan@tsunagi.example"
SAID = ["こんにちは", "同意", "最近、部活のことで少し悩んでいます。"]
_ids = itertools.count(int(time.time()) % 1_000_000 * 1000)


@dataclass
class Platforms:
    base: str
    line: FakeLine
    telegram: FakeTelegram
    relay: FakeRelay
    smtp_port: int
    database: str
    crypto: Crypto


@pytest.fixture(scope="module")
def platforms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platforms]:
    tmp = tmp_path_factory.mktemp("faults")
    key = Fernet.generate_key()
    with ExitStack() as stack:
        database = stack.enter_context(postgres_database_sync())
        line = stack.enter_context(FakeLine(LINE_TOKEN))
        telegram = stack.enter_context(running_fake(TELEGRAM_TOKEN))
        relay, relay_port = stack.enter_context(running_relay())
        smtp_port, port = free_port(), free_port()
        env = {
            **os.environ,
            "TSUNAGI_VAR_DIR": str(tmp / "var"),
            "TSUNAGI_DATABASE_URL": database,
            "TSUNAGI_DATA_KEY": key.decode(),
            "TSUNAGI_LINE_CHANNEL_SECRET": LINE_SECRET,
            "TSUNAGI_LINE_CHANNEL_ACCESS_TOKEN": LINE_TOKEN,
            "TSUNAGI_LINE_API_BASE": line.url,
            "TSUNAGI_TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN,
            "TSUNAGI_TELEGRAM_SECRET_TOKEN": TELEGRAM_SECRET,
            "TSUNAGI_TELEGRAM_API_BASE": telegram.base_url,
            "TSUNAGI_SMTP_LISTEN": f"127.0.0.1:{smtp_port}",
            "TSUNAGI_MAIL_ADDRESS": ADDRESS,
            "TSUNAGI_SMTP_RELAY": f"127.0.0.1:{relay_port}",
            "TSUNAGI_API_TIMEOUT": str(TIMEOUT),
            "TSUNAGI_SMTP_TIMEOUT": str(TIMEOUT),
        }
        stack.enter_context(server(env, port, start_timeout=120))
        yield Platforms(f"http://127.0.0.1:{port}", line, telegram, relay, smtp_port, database, Crypto([key]))


# -- people writing, on each channel -------------------------------------------------------------------------


def post(url: str, raw: bytes, headers: dict[str, str]) -> None:
    req = urllib.request.Request(url, data=raw, method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200


def line_says(p: Platforms, user: str, text: str, *, age: float = 0.0) -> None:
    """A text event with a fresh reply token; ``age``: seconds ago it happened (its token ages with it)."""
    event = {
        "type": "message",
        "mode": "active",
        "timestamp": int((time.time() - age) * 1000),
        "source": {"type": "user", "userId": user},
        "webhookEventId": "01" + uuid.uuid4().hex[:24].upper(),
        "deliveryContext": {"isRedelivery": False},
        "replyToken": p.line.issue_token(user),
        "message": {"type": "text", "id": str(next(_ids)), "quoteToken": uuid.uuid4().hex, "text": text},
    }
    raw = json.dumps({"destination": "U" + "f" * 32, "events": [event]}, ensure_ascii=False).encode()
    signature = base64.b64encode(hmac.new(LINE_SECRET.encode(), raw, hashlib.sha256).digest()).decode()
    post(f"{p.base}/webhooks/line", raw, {"Content-Type": "application/json", "X-Line-Signature": signature})


def telegram_says(p: Platforms, chat_id: int, text: str) -> None:
    person = {"id": chat_id, "first_name": "Hanako"}
    message = {
        "message_id": next(_ids),
        "from": {**person, "is_bot": False},
        "chat": {**person, "type": "private"},
        "date": int(time.time()),
        "text": text,
    }
    raw = json.dumps({"update_id": next(_ids), "message": message}, ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET}
    post(f"{p.base}/webhooks/telegram", raw, headers)


def mail_says(p: Platforms, address: str, text: str) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = address, ADDRESS, "相談"
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@example.jp>"
    msg.set_content(text)
    with smtplib.SMTP("127.0.0.1", p.smtp_port, timeout=10) as s:
        s.send_message(msg)


def line_user() -> str:
    return "U" + uuid.uuid4().hex


def chat() -> int:
    return next(_ids)


def mailbox() -> str:
    return f"p{uuid.uuid4().hex[:10]}@example.jp"


# -- what the service stored, and what each person got -------------------------------------------------------


def query(p: Platforms, sql: str, *args: Any) -> list[Any]:
    async def run() -> list[Any]:
        con = await asyncpg.connect(p.database.replace("postgresql+asyncpg", "postgresql"), timeout=10)
        try:
            return list(await con.fetch(sql, *args))
        finally:
            await con.close()

    return asyncio.run(run())


def stored(p: Platforms, channel: str, person: str) -> list[tuple[int, str, str]]:
    """The replies the service wrote for one person, in order: (outbox id, status, text)."""
    rows = query(
        p,
        "SELECT o.id, o.status, m.text_enc FROM outbox o JOIN message m ON m.id = o.message_id "
        "JOIN conversation v ON v.id = o.conversation_id JOIN contact c ON c.id = v.contact_id "
        "WHERE o.channel = $1 AND c.lookup = $2 ORDER BY o.id",
        channel,
        p.crypto.lookup(channel, person),
    )
    return [(r["id"], r["status"], p.crypto.decrypt(r["text_enc"])) for r in rows]


def idle(p: Platforms) -> bool:
    """Every stored platform event handled (the replies to it are written)."""
    return not query(p, "SELECT 1 FROM inbox WHERE status IN ('pending', 'processing') LIMIT 1")


def got(p: Platforms, channel: str, person: str) -> list[Any]:
    """What reached the person, in order: texts (LINE, Telegram) or outbox ids (mail, by Message-ID)."""
    if channel == "line":
        return [t for s in p.line.to(person) for t in s.texts]
    if channel == "telegram":
        return p.telegram.texts(int(person))
    ids = [re.search(r"<tsunagi\.(\d+)\.", str(m["Message-ID"])) for m in p.relay.to(person)]
    return [int(m.group(1)) for m in ids if m]


def all_delivered(p: Platforms, channel: str, people: list[str], timeout: float = DELIVERY) -> None:
    """Wait until every reply to these people is delivered; then each got each reply once, in order."""

    def done() -> bool:
        return idle(p) and all(
            (rows := stored(p, channel, person)) and all(s == "delivered" for _, s, _ in rows)
            for person in people
        )

    eventually(done, f"every {channel} reply delivered", timeout)
    time.sleep(1.0)  # anything sent twice would arrive now
    for person in people:
        rows = stored(p, channel, person)
        expected = [i for i, _, _ in rows] if channel == "email" else [t for _, _, t in rows]
        assert got(p, channel, person) == expected, f"{channel}: each reply once, in order"
        if channel != "email":  # (a mail joins what the bot says to one message)
            assert reply_keys([t for _, _, t in rows])[0] == "welcome"


def metric(p: Platforms, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"{p.base}/metrics", timeout=10) as r:
        text = r.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        head, _, rest = series.partition("{")
        if head == name and ",".join(sorted(rest.rstrip("}").split(","))) == want:
            return float(value)
    return 0.0


def spacing(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


# -- one platform down, the others flowing -------------------------------------------------------------------

CHANNELS: dict[str, tuple[Callable[[], Any], Callable[[Platforms, Any, str], None]]] = {
    "line": (line_user, line_says),
    "telegram": (chat, telegram_says),
    "email": (mailbox, mail_says),
}
BYSTANDER = {"line": "telegram", "telegram": "email", "email": "line"}


def failed_calls(p: Platforms, channel: str, person: Any) -> list[float]:
    """When the platform was asked, and did not take it, for this person."""
    if channel == "line":
        return [c.at for c in p.line.message_calls(person) if c.status != 200]
    if channel == "telegram":
        return [c.at for c in p.telegram.message_calls(person) if c.status != 200]
    return [at for at, to, code in list(p.relay.tries) if to == person and code != 250]


def go_down(p: Platforms, channel: str, mode: str) -> float:
    """Start the outage; when it ends (monotonic)."""
    if channel == "line":
        p.line.outage(mode, WINDOW, retry_after=RETRY_AFTER)
    elif channel == "telegram":
        p.telegram.outage(mode, WINDOW, retry_after=RETRY_AFTER)
    else:
        p.relay.outage(mode, WINDOW)
    return time.monotonic() + WINDOW


@pytest.mark.parametrize(
    ("channel", "mode"),
    [
        ("line", "500"),
        ("line", "429"),
        ("line", "hang"),
        ("telegram", "500"),
        ("telegram", "429"),
        ("telegram", "hang"),
        ("email", "421"),
        ("email", "451"),
        ("email", "hang"),
    ],
)
def test_a_platform_down_for_a_while_then_everything_delivered_once_in_order(
    platforms: Platforms, channel: str, mode: str
) -> None:
    p = platforms
    make, says = CHANNELS[channel]
    people = [make(), make()]
    other = BYSTANDER[channel]
    other_make, other_says = CHANNELS[other]
    bystander = other_make()
    ends = go_down(p, channel, mode)
    for text in SAID:
        for person in people:
            says(p, person, text)
    other_says(p, bystander, SAID[0])

    # The other channel is not held up: its person is answered while this platform is still down.
    eventually(
        lambda: len(got(p, other, str(bystander))) >= 1, f"{other} answered during the {channel} outage"
    )
    assert time.monotonic() < ends, "answered within the outage"
    assert not any(got(p, channel, str(person)) for person in people), "nothing taken while down"
    # An operator sees it: replies waiting on this channel, and for how long.
    assert metric(p, "tsunagi_outbox_messages", channel=channel, status="pending") >= 1
    assert metric(p, "tsunagi_outbox_oldest_waiting_seconds", channel=channel) > 0

    all_delivered(p, channel, [str(person) for person in people])
    for person in people:
        tries = spacing(failed_calls(p, channel, person))
        assert tries, "the platform was asked during the outage and said no"
        if mode == "429":
            # Never sooner than the platform asked.
            assert min(tries) >= RETRY_AFTER - 0.05, tries
        elif mode != "hang":
            # Backing off: 2, 4, 8 ... seconds (with jitter), never hammering.
            assert all(b > a for a, b in itertools.pairwise(tries)), tries
            assert min(tries) >= 1.5, tries
    assert metric(p, "tsunagi_outbox_messages", channel=channel, status="pending") == 0
    assert metric(p, "tsunagi_outbox_messages", channel=channel, status="failed") == 0


# -- LINE: an answer lost after LINE took the message --------------------------------------------------------


def test_a_line_reply_taken_but_unanswered_is_not_pushed_again(platforms: Platforms) -> None:
    """LINE took the reply, then the answer never came (the service timed out). The retry uses the same,
    still fresh token; LINE calls it used, so the reply went out: nothing is pushed."""
    p = platforms
    user = line_user()
    p.line.lose(1, hang=True)
    line_says(p, user, SAID[0])
    all_delivered(p, "line", [user])
    assert [s.via for s in p.line.to(user)] == ["reply"]
    assert [c.status for c in p.line.message_calls(user)] == [0, 400]


def test_a_line_push_taken_but_unanswered_is_not_sent_twice(platforms: Platforms) -> None:
    """The same for a push (the reply token is long gone): the retry carries the same X-Line-Retry-Key,
    and LINE answers 409 for a key it has taken."""
    p = platforms
    user = line_user()
    p.line.lose(1, hang=True)
    line_says(p, user, SAID[0], age=120.0)
    all_delivered(p, "line", [user])
    calls = p.line.message_calls(user)
    assert [(c.path.rsplit("/", 1)[1], c.status) for c in calls] == [("push", 0), ("push", 409)]
    assert calls[0].headers["x-line-retry-key"] == calls[1].headers["x-line-retry-key"]


def test_a_reply_token_that_expires_while_line_is_down_becomes_a_push(platforms: Platforms) -> None:
    p = platforms
    user = line_user()
    p.line.outage("500", WINDOW)
    line_says(p, user, SAID[0], age=45.0)  # the token has a few seconds left
    all_delivered(p, "line", [user])
    calls = [(c.path.rsplit("/", 1)[1], c.status) for c in p.line.message_calls(user)]
    assert calls[0] == ("reply", 500)
    assert calls[-1] == ("push", 200)
    assert [s.via for s in p.line.to(user)] == ["push"]


def test_a_reply_the_platform_refuses_for_good_is_failed_and_counted(platforms: Platforms) -> None:
    p = platforms
    person = chat()
    p.telegram.blocked.add(person)
    before = metric(p, "tsunagi_outbox_messages", channel="telegram", status="failed")
    telegram_says(p, person, SAID[0])
    eventually(
        lambda: [s for _, s, _ in stored(p, "telegram", str(person))] == ["failed"], "the refusal recorded"
    )
    assert metric(p, "tsunagi_outbox_messages", channel="telegram", status="failed") == before + 1
    assert p.telegram.texts(person) == []
