"""Hypothesis against what platforms and strangers send in: LINE webhook bodies and Telegram updates,
through the real webhook routes with valid signatures and secret tokens and on to the inbox worker that
reads them (LINE's documented JSON as channels/line reads it, Telegram's through python-telegram-bot's
``Update.de_json`` as channels/telegram does), and inbound mail through the parser the SMTP listener uses.

Events are built from the documented shapes with their fields now and then of the wrong type, missing,
huge or junk. The webhook answers 200 (stored) or a 4xx, never a 5xx; what it stored is handled on the
first attempt (no event fails in the inbox, to be retried and dropped); a well-formed text message is
kept. Mail: random bytes and mangled MIME (broken encodings and charsets, missing headers, nested
multiparts, huge headers) never raise out of the parser, and a well-formed text part inside is read.
Examples are derandomized (``repeatable``), so a failure seen once is seen again.
"""

from __future__ import annotations

import base64
import itertools
import json
import random
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from bot.models import Inbox, InboxStatus, Message
from bot.web import create_app
from channels.email.parse import parse_mail
from tests.helpers import (
    PLATFORMS,
    TELEGRAM_SECRET,
    db,
    eventually,
    line_signature,
    make_settings,
    postgres_database,
    repeatable,
    service,
)

EXAMPLES = 40
_ids = itertools.count(1)

# -- the app, on PostgreSQL (its column limits are enforced, SQLite's are not) ------------------------------


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async with postgres_database() as url:
        yield url


@pytest.fixture
def client(tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    # The outbox's retry jitter, from a Random of its own: Hypothesis forbids the global one changing
    # while it draws (the app's thread runs beside it).
    monkeypatch.setattr("bot.outbox.random", random.Random(0))
    settings = make_settings(tmp_path, pg_url, **PLATFORMS, loopback_channel=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def settled(client: TestClient) -> list[Inbox]:
    """Every stored event once the worker has had its first go at each: handled, or failed once."""
    rows: list[Inbox] = []

    async def read(s: AsyncSession) -> list[Inbox]:
        return list((await s.scalars(select(Inbox))).all())

    def done() -> bool:
        rows[:] = db(client, read)
        return all(r.status == InboxStatus.DONE or r.last_error for r in rows)

    eventually(done, "the inbox worker to handle every stored event", timeout=30)
    return rows


def assert_handled(client: TestClient, rows: list[Inbox]) -> None:
    crypto = service(client).crypto
    failed = [f"{r.last_error}: {crypto.decrypt(r.payload_enc)[:500]}" for r in rows if r.last_error]
    assert not failed, "stored events the worker could not handle:\n" + "\n".join(failed)


def kept(client: TestClient, external_ids: list[str]) -> set[str]:
    async def read(s: AsyncSession) -> set[str]:
        found = await s.scalars(
            select(col(Message.external_id)).where(col(Message.external_id).in_(external_ids))
        )
        return {x for x in found.all() if x}

    return db(client, read)


# -- what can go wrong in any field ---------------------------------------------------------------------

JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.just("x" * 5000),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
TEXT = st.one_of(
    st.text(min_size=1, max_size=200),
    st.sampled_from(
        ["死にたい", "相談したい", "同意", "<script>alert(1)</script>", "\u202e\u0000\ufeff", "あ" * 6000]
    ),
)


def maybe(value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The right value, mostly; now and then junk, or the field left out (``...``)."""
    return st.one_of(value, value, value, JUNK, st.just(...))


def shaped(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({k: maybe(v) for k, v in fields.items()}).map(
        lambda d: {k: v for k, v in d.items() if v is not ...}
    )


# -- LINE -------------------------------------------------------------------------------------------------

LINE_USER = st.sampled_from(["U" + "0" * 32, "U" + "1" * 32, "U" + "f" * 32])
LINE_MESSAGES = st.one_of(
    shaped(
        type=st.just("text"), id=st.from_regex(r"\A[0-9]{18}\Z"), text=TEXT, quoteToken=st.text(max_size=10)
    ),
    shaped(
        type=st.just("sticker"),
        id=st.from_regex(r"\A[0-9]{18}\Z"),
        packageId=st.text(max_size=5),
        stickerId=st.text(max_size=5),
        keywords=st.lists(TEXT, max_size=20),
        text=TEXT,
    ),
    shaped(
        type=st.just("file"),
        id=st.from_regex(r"\A[0-9]{18}\Z"),
        fileName=st.one_of(TEXT, st.just("x" * 3000 + ".exe")),
        fileSize=st.integers(),
    ),
    shaped(type=st.just("location"), id=st.text(max_size=300), title=TEXT, address=TEXT),
    shaped(type=st.sampled_from(["video", "audio", "newtype", ""]), id=st.text(max_size=300)),
)


def line_event(message: dict[str, Any] | None, kind: str, user: str) -> dict[str, Any]:
    return {
        "type": kind,
        "mode": "active",
        "timestamp": int(time.time() * 1000),
        "source": {"type": "user", "userId": user},
        "webhookEventId": "",  # unique, given when it is posted
        "deliveryContext": {"isRedelivery": False},
        "replyToken": "r" * 32,
        **({"message": message} if message is not None else {}),
    }


LINE_EVENTS = st.one_of(
    st.builds(line_event, LINE_MESSAGES, st.sampled_from(["message", "messageEdited"]), LINE_USER),
    st.builds(
        line_event, st.none(), st.sampled_from(["follow", "unfollow", "postback", "unsend"]), LINE_USER
    ),
    # the same with any of its own fields broken
    st.builds(line_event, LINE_MESSAGES, st.just("message"), LINE_USER).flatmap(
        lambda e: shaped(**{k: st.just(v) for k, v in e.items()})
    ),
    st.dictionaries(st.text(max_size=10), JUNK, max_size=5),
)


def line_post(client: TestClient, body: bytes) -> int:
    headers = {"X-Line-Signature": line_signature(body), "Content-Type": "application/json"}
    return client.post("/webhooks/line", content=body, headers=headers).status_code


@pytest.mark.slow
def test_line_webhook_bodies_never_fail_and_valid_text_is_kept(client: TestClient) -> None:
    texts: list[str] = []

    @repeatable(EXAMPLES, HealthCheck.function_scoped_fixture, HealthCheck.large_base_example)
    @given(events=st.lists(LINE_EVENTS, max_size=4), wrap=st.integers(0, 9))
    def post(events: list[Any], wrap: int) -> None:
        for e in events:
            if isinstance(e, dict) and e.get("webhookEventId") == "":
                e["webhookEventId"] = f"01FZ{next(_ids):022d}"
        body: Any = {"destination": "U" + "9" * 32, "events": events}
        if wrap == 0:
            body = events  # not a webhook body at all
        raw = json.dumps(body, ensure_ascii=wrap % 2 == 0).encode()
        status = line_post(client, raw)
        assert status in (200, 400, 413), status
        if status == 200:
            for e in events:
                m = e.get("message") if isinstance(e, dict) else None
                if (
                    isinstance(m, dict)
                    and e.get("type") == "message"
                    and e.get("source") == {"type": "user", "userId": e["source"]["userId"]}
                    and m.get("type") == "text"
                    and isinstance(m.get("id"), str)
                    and isinstance(m.get("text"), str)
                    and m["text"].strip()
                ):
                    texts.append(m["id"])

    post()
    # Broken beyond JSON: never a 5xx either.
    for raw in (
        b"",
        b"{",
        b"\xff\xfe",
        b'{"events": [1]}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"events": null}',
    ):
        assert line_post(client, raw) in (400, 413)
    # And one text message of the documented shape after the fuzzing, so that "valid text is kept" is
    # always checked, whatever the strategy happened to draw.
    valid = {
        "type": "message",
        "mode": "active",
        "timestamp": 1_765_000_000_000,
        "source": {"type": "user", "userId": "U" + "a" * 32},
        "webhookEventId": f"01FZ{next(_ids):022d}",
        "deliveryContext": {"isRedelivery": False},
        "replyToken": "f" * 32,
        "message": {"id": "468789577898262530", "type": "text", "quoteToken": "q" * 20, "text": "こんにちは"},
    }
    body = json.dumps({"destination": "U" + "9" * 32, "events": [valid]}).encode()
    assert line_post(client, body) == 200
    texts.append("468789577898262530")
    rows = settled(client)
    assert_handled(client, rows)
    assert kept(client, texts) == set(texts), "a valid text message was lost"


# -- Telegram ---------------------------------------------------------------------------------------------

CHAT_ID = st.sampled_from([555000111, 555000222])


def tg_chat(chat_id: int) -> st.SearchStrategy[dict[str, Any]]:
    return shaped(
        id=st.just(chat_id),
        type=st.sampled_from(["private", "private", "group", "supergroup", "channel", "weird"]),
        first_name=TEXT,
        username=TEXT,
    )


def tg_message(chat_id: int) -> st.SearchStrategy[dict[str, Any]]:
    return shaped(
        message_id=st.integers(1, 2**31),
        date=st.integers(0, 2**31),
        chat=tg_chat(chat_id),
        **{"from": shaped(id=st.just(chat_id), is_bot=st.booleans(), first_name=TEXT, last_name=TEXT)},
        text=TEXT,
        caption=TEXT,
        sticker=shaped(
            file_id=st.text(max_size=10),
            file_unique_id=st.text(max_size=10),
            type=st.just("regular"),
            width=st.integers(0, 512),
            height=st.integers(0, 512),
            is_animated=st.booleans(),
            is_video=st.booleans(),
            emoji=TEXT,
            set_name=TEXT,
        ),
        document=shaped(file_id=st.text(max_size=10), file_unique_id=st.text(max_size=10), file_name=TEXT),
        location=shaped(latitude=st.floats(-90, 90), longitude=st.floats(-180, 180)),
        entities=st.lists(
            shaped(type=st.text(max_size=10), offset=st.integers(), length=st.integers()), max_size=2
        ),
    )


TG_UPDATES = CHAT_ID.flatmap(
    lambda chat_id: st.one_of(
        st.fixed_dictionaries({"update_id": st.integers(1, 2**40), "message": tg_message(chat_id)}),
        st.fixed_dictionaries({"update_id": st.integers(1, 2**40), "edited_message": tg_message(chat_id)}),
        st.fixed_dictionaries(
            {
                "update_id": st.integers(1, 2**40),
                "callback_query": shaped(
                    id=st.text(max_size=10),
                    **{"from": shaped(id=st.just(chat_id), is_bot=st.booleans(), first_name=TEXT)},
                    chat_instance=st.text(max_size=10),
                    data=TEXT,
                    message=tg_message(chat_id),
                ),
            }
        ),
        st.fixed_dictionaries({"update_id": JUNK}),
        st.dictionaries(st.text(max_size=10), JUNK, max_size=4),
    )
)


def tg_post(client: TestClient, body: bytes) -> int:
    headers = {"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET, "Content-Type": "application/json"}
    return client.post("/webhooks/telegram", content=body, headers=headers).status_code


def _valid_text(update: dict[str, Any]) -> str | None:
    """The message id a well-formed private text message would be kept under, else None."""
    m = update.get("message")
    if not isinstance(m, dict) or not isinstance(update.get("update_id"), int):
        return None
    chat = m.get("chat")
    sender = m.get("from")
    if not (
        isinstance(chat, dict)
        and chat.get("type") == "private"
        and isinstance(chat.get("id"), int)
        and isinstance(m.get("message_id"), int)
        and isinstance(m.get("date"), int)
        and isinstance(m.get("text"), str)
        and m["text"].strip()
        and not m["text"].split()[0].startswith("/start")
        and (sender is None or (isinstance(sender, dict) and set(sender) >= {"id", "is_bot", "first_name"}))
        and all(isinstance(m.get(k), dict) for k in ("sticker", "document", "location") if k in m)
    ):
        return None
    return f"{chat['id']}:{m['message_id']}"


@pytest.mark.slow
def test_telegram_updates_never_fail_and_valid_text_is_kept(client: TestClient) -> None:
    accepted: list[tuple[str, bool]] = []
    seen_ids: set[int] = set()

    @repeatable(EXAMPLES, HealthCheck.function_scoped_fixture, HealthCheck.large_base_example)
    @given(update=TG_UPDATES)
    def post(update: dict[str, Any]) -> None:
        status = tg_post(client, json.dumps(update).encode())
        assert status in (200, 400), status
        uid = update.get("update_id")
        text_id = _valid_text(update)
        if text_id is not None and isinstance(uid, int) and uid not in seen_ids:
            assert status == 200, f"a well-formed text message was refused: {update}"
            accepted.append((text_id, True))
        if isinstance(uid, int):
            seen_ids.add(uid)

    post()
    for raw in (b"", b"{", b"\xff", b"[]", b'{"update_id": "1"}', b'{"update_id": 1e400}', b"[" * 100_000):
        assert tg_post(client, raw) in (400, 413)
    rows = settled(client)
    assert_handled(client, rows)
    ids = [i for i, _ in accepted]
    assert kept(client, ids) == set(ids), "a valid text message was lost"


# -- mail --------------------------------------------------------------------------------------------------

MARKER = "確認用の本文です。たすけて"
CHARSETS = ["utf-8", "iso-2022-jp", "shift_jis", "euc-jp"]
BROKEN_HEADERS = st.sampled_from(
    [
        "Subject: =?utf-8?B?@@@not-base64@@@?=",
        "Subject: =?x-no-such-charset?Q?=E3=81=82?=",
        "Subject: =?iso-2022-jp?B?GyRCJCIbKEI?=",  # cut short
        "Subject: " + "長い件名" * 5000,
        "From: =?utf-8?Q?=ZZ?= <a@",
        "From: <<<>>>",
        "From:",
        "Message-ID: <" + "x" * 3000,
        "References: " + " ".join(f"<{i}@x>" for i in range(2000)),
        "Content-Disposition: attachment; filename*=utf-8''%ZZ%E3%81",
        "Content-Disposition: attachment; filename*0*=x-unknown''%82%A0; filename*1=.png",
        'Content-Type: text/plain; charset="',
        "Content-Transfer-Encoding: x-uuencode",
        "X-" + "h" * 20000 + ": v",
        "\x00\x01: \x02",
        "Auto-Submitted: no",
    ]
)


def text_part(charset: str, cte: str) -> bytes:
    body = MARKER.encode(charset if charset != "shift_jis" else "cp932")
    if cte == "base64":
        payload = base64.encodebytes(body)
    elif cte == "quoted-printable":
        import quopri

        payload = quopri.encodestring(body)
    else:
        payload = body
    head = f"Content-Type: text/plain; charset={charset}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n"
    return head.encode() + payload


GARBAGE_PARTS = st.one_of(
    st.binary(max_size=300).map(lambda b: b"Content-Type: application/octet-stream\r\n\r\n" + b),
    st.just(b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n@@@==="),
    st.just(b"Content-Type: text/html; charset=utf-16\r\n\r\n<p>\xff\xfe<b>"),
    st.just(
        b'Content-Type: image/png; name="=?utf-8?B?x?="\r\nContent-Transfer-Encoding: base64\r\n\r\niVBOR'
    ),
    st.just(b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nnested"),
    st.just(b"Content-Type: multipart/mixed\r\n\r\nno boundary"),
    st.just(
        b"Content-Type: text/plain; charset=x-unknown\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n=ZZ=E3"
    ),
)


@st.composite
def mangled_mail(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A mail with a well-formed text part somewhere (and junk around it), and whether that part is where
    a reader should find it (in the body, not in an attachment); or mangled beyond that."""
    headers = ["From: =?utf-8?B?5L2Q6Jek?= <person@example.jp>", "To: soudan@localhost"]
    headers += draw(st.lists(BROKEN_HEADERS, max_size=3))
    charset = draw(st.sampled_from(CHARSETS))
    cte = draw(st.sampled_from(["7bit", "8bit", "base64", "quoted-printable"]))
    part = text_part(charset, cte if not (charset == "iso-2022-jp" and cte == "8bit") else "7bit")
    depth = draw(st.integers(0, 4))
    readable = not any(h.startswith(("Content-", "\x00")) for h in headers)
    body = part
    for level in range(depth):
        boundary = f"b{level}-{draw(st.integers(0, 999))}"
        others = draw(st.lists(GARBAGE_PARTS, max_size=2))
        parts = [body, *others]
        if draw(st.booleans()):
            parts.reverse()
        body = (
            f"Content-Type: multipart/{draw(st.sampled_from(['mixed', 'alternative', 'related']))}; "
            f'boundary="{boundary}"\r\n\r\npreamble\r\n'
        ).encode()
        for p in parts:
            body += f"--{boundary}\r\n".encode() + p + b"\r\n"
        if draw(st.integers(0, 4)):
            body += f"--{boundary}--\r\n".encode()  # else the closing boundary is missing
    cut = draw(st.one_of(st.none(), st.integers(0, len(body))))
    if cut is not None:
        body, readable = body[:cut], False
    raw = "\r\n".join(headers).encode() + b"\r\n" + body
    return raw, readable


@pytest.mark.slow
@repeatable(150)
@given(raw=st.binary(max_size=2000))
def test_random_bytes_never_break_the_mail_parser(raw: bytes) -> None:
    parse_mail(raw, "someone@example.jp")


@pytest.mark.slow
@repeatable(150)
@given(mail=mangled_mail())
def test_mangled_mime_is_read_and_the_valid_text_in_it_is_not_lost(mail: tuple[bytes, bool]) -> None:
    raw, readable = mail
    parsed = parse_mail(raw, "person@example.jp")
    if readable:
        assert MARKER in parsed.full, (parsed.full[:300], raw[:600])
