"""The LINE channel end to end: signed webhook bodies shaped like the platform's go into the real app
(Starlette's TestClient, with the service's own inbox and outbox workers running), and what the app sends
goes to a local fake of the Messaging API (tests/fake_line.py) that checks what LINE checks.

Payload shapes follow https://developers.line.biz/en/reference/messaging-api/#webhook-event-objects.
Every wait is bounded (``eventually``); every test ends by checking that the profile endpoint (or any
other unexpected path) was never called.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fastapi.testclient import TestClient
from httpx2 import Response
from sqlalchemy import func, select
from sqlmodel import col

import channels.line as line_module
from bot.models import Contact, Conversation, Inbox, Media, Message, Outbox, Role, Sender, State, utcnow
from bot.service import Service
from bot.storage.credentials import create_counsellor
from bot.web import create_app
from channels.line import retry_key
from tests.engine_helpers import reply_keys
from tests.fake_line import FakeLine, Sent
from tests.helpers import CRISIS, Session, account, eventually, make_settings, rows_of
from tests.pictures import GPS_TAG, exif_of, photo_with_gps, screenshot

T = TypeVar("T")
SECRET = "0123456789abcdef0123456789abcdef"
ACCESS_TOKEN = "test-channel-access-token"
BOT = "U" + "f" * 32  # the bot's own user id: the webhook's "destination"


def user_id() -> str:
    return "U" + uuid.uuid4().hex


def sign(body: bytes, secret: str = SECRET) -> str:
    """X-Line-Signature: base64 of HMAC-SHA256 over the raw body, keyed with the channel secret."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


# -- webhook events, as the platform sends them --------------------------------------------------------------


def _event(
    kind: str, user: str, *, token: str | None, redelivery: bool = False, **extra: Any
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": kind,
        "mode": "active",
        "timestamp": int(time.time() * 1000),
        "source": {"type": "user", "userId": user},
        "webhookEventId": extra.pop("event_id", None) or "01" + uuid.uuid4().hex[:24].upper(),
        "deliveryContext": {"isRedelivery": redelivery},
    }
    if token is not None:
        event["replyToken"] = token
    event.update(extra)
    return event


def text_event(user: str, text: str, token: str | None, **kw: Any) -> dict[str, Any]:
    message = {
        "type": "text",
        "id": str(uuid.uuid4().int)[:18],
        "quoteToken": "q3Plxr4AgKd" + uuid.uuid4().hex,
        "text": text,
    }
    return _event("message", user, token=token, message=message, **kw)


def sticker_event(user: str, token: str) -> dict[str, Any]:
    message = {
        "type": "sticker",
        "id": str(uuid.uuid4().int)[:18],
        "quoteToken": "yHAz4Ua2wx7" + uuid.uuid4().hex,
        "stickerId": "52002734",
        "packageId": "11537",
        "stickerResourceType": "STATIC",
        "keywords": ["cony", "sally", "Staring", "hi"],
    }
    return _event("message", user, token=token, message=message)


def image_event(user: str, token: str) -> dict[str, Any]:
    message = {
        "type": "image",
        "id": str(uuid.uuid4().int)[:18],
        "quoteToken": "yHAz4Ua2wx7" + uuid.uuid4().hex,
        "contentProvider": {"type": "line"},
    }
    return _event("message", user, token=token, message=message)


def follow_event(user: str, token: str) -> dict[str, Any]:
    return _event("follow", user, token=token, follow={"isUnblocked": False})


def unfollow_event(user: str) -> dict[str, Any]:
    return _event("unfollow", user, token=None)


def body(*events: dict[str, Any]) -> bytes:
    return json.dumps({"destination": BOT, "events": list(events)}, ensure_ascii=False).encode()


# -- the running app -----------------------------------------------------------------------------------------


@dataclass
class Line:
    client: TestClient
    fake: FakeLine
    svc: Service

    def post(self, raw: bytes, signature: str | None = None) -> Response:
        headers = {"Content-Type": "application/json; charset=utf-8"}
        headers["X-Line-Signature"] = sign(raw) if signature is None else signature
        return self.client.post("/webhooks/line", content=raw, headers=headers)

    def send(self, *events: dict[str, Any]) -> None:
        r = self.post(body(*events))
        assert r.status_code == 200, r.text

    def run(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run a coroutine in the app's own event loop (the database lives there)."""
        assert self.client.portal is not None
        return self.client.portal.call(work)

    def said(self, user: str, text: str, *, count: int = 1) -> list[Sent]:
        """Send a text with a fresh reply token; wait for ``count`` more requests to reach the person."""
        before = len(self.fake.to(user))
        self.send(text_event(user, text, self.fake.issue_token(user)))
        return self.wait_sent(user, before + count)[before:]

    def wait_sent(self, user: str, count: int) -> list[Sent]:
        eventually(lambda: len(self.fake.to(user)) >= count, f"{count} requests to {user}")
        return self.fake.to(user)

    def count(self, model: Any, *where: Any) -> int:
        async def work() -> int:
            async with self.svc.db.session() as s:
                return int(await s.scalar(select(func.count()).select_from(model).where(*where)) or 0)

        return self.run(work)

    def conversations(self) -> list[Conversation]:
        async def work() -> list[Conversation]:
            async with self.svc.db.session() as s:
                rows = await s.scalars(select(Conversation).where(col(Conversation.channel) == "line"))
                return list(rows.all())

        return self.run(work)

    def status(self, index: int = 0) -> str:
        """The status of the ``index``-th outbox row, or "" while it is not there yet."""
        rows = self.outbox()
        return rows[index].status if len(rows) > index else ""

    def outbox(self) -> list[Outbox]:
        return self.run(lambda: rows_of(self.svc, Outbox))


def quiet(seconds: float = 0.8) -> None:
    """Give the workers time to do something they should not (then the test checks they did not)."""
    time.sleep(seconds)


def keys(sent: list[Sent]) -> list[str]:
    return reply_keys([t for s in sent for t in s.texts])


@pytest.fixture
def line(tmp_path: Path) -> Iterator[Line]:
    yield from _line(tmp_path)


def _line(tmp_path: Path, **settings: Any) -> Iterator[Line]:
    with FakeLine(ACCESS_TOKEN) as fake:
        config = make_settings(
            tmp_path,
            line_channel_secret=SECRET,
            line_channel_access_token=ACCESS_TOKEN,
            line_api_base=fake.url,
            loopback_channel=False,
            **settings,
        )
        app = create_app(config)
        with TestClient(app) as client:
            svc = app.state.service
            assert "line" in svc.channels
            yield Line(client, fake, svc)
        # Never the profile (display name, picture), never anything the channel has no business with.
        assert not [c for c in fake.calls if "/profile" in c.path]
        assert fake.unexpected == []
        assert all(c.status != 401 for c in fake.calls), "every call carries the access token"


# -- the tests -----------------------------------------------------------------------------------------------


def test_disabled_without_both_settings(tmp_path: Path) -> None:
    from channels.line import LineChannel

    assert not LineChannel.enabled(make_settings(tmp_path, line_channel_secret=SECRET))
    assert not LineChannel.enabled(make_settings(tmp_path, line_channel_access_token=ACCESS_TOKEN))
    assert LineChannel.enabled(
        make_settings(tmp_path, line_channel_secret=SECRET, line_channel_access_token=ACCESS_TOKEN)
    )


def test_welcome_by_reply_then_consent_and_crisis(line: Line, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(line_module, "LOADING_AFTER", 0.0)  # as if every reply took a while
    user = user_id()
    first = line.said(user, "こんにちは")
    assert [s.via for s in first] == ["reply"], "the reply token is used, not a (billed) push"
    assert keys(first) == ["welcome"]
    assert ("同意して話す", "同意して話す") in first[0].quick_replies
    assert line.fake.loading == [user], "the loading indicator was shown for the text"

    assert keys(line.said(user, "同意")) == ["listening"]

    sent = line.said(user, CRISIS)
    assert sent[0].via == "reply"
    assert "crisis" in keys(sent)
    text = "\n".join(sent[0].texts)
    assert "110" in text and "119" in text
    [conv] = line.conversations()
    assert conv.state == State.WAITING and conv.risk == "crisis"


def test_what_the_bot_says_to_one_message_goes_in_one_free_reply(line: Line) -> None:
    """Two messages for one (thanks for the story, then the first intake question): one reply request
    with both, the question's quick replies on the last, and no push (pushes count against the quota)."""
    user = user_id()
    line.said(user, "最近、部活のことで少し悩んでいて、誰かに話を聞いてほしいです。")
    (sent,) = line.said(user, "同意")
    assert sent.via == "reply"
    assert keys([sent]) == ["listening_after_consent_with_story", "intake_age"]
    assert sent.quick_replies, "the question's choices"
    quiet()
    assert len(line.fake.to(user)) == 2 and "/v2/bot/message/push" not in line.fake.paths()
    assert line.count(Outbox, col(Outbox.status) == "delivered") == 3


def test_bad_or_missing_signature_is_refused_and_nothing_stored(line: Line) -> None:
    user = user_id()
    raw = body(text_event(user, "こんにちは", line.fake.issue_token(user)))
    assert line.post(raw, signature=sign(raw, "another-secret")).status_code == 400
    assert line.post(raw, signature="").status_code == 400
    # Signed, then changed by one byte: the signature is over the raw bytes.
    assert line.post(raw.replace(b"\\u3053", b"x") + b" ", signature=sign(raw)).status_code == 400
    quiet()
    assert line.count(Inbox) == 0
    assert line.fake.sent == []


@pytest.mark.parametrize("raw", [b"{not json", b"[]", b'{"destination": "U1", "events": "x"}', b"\xff\xfe"])
def test_malformed_body_is_400(line: Line, raw: bytes) -> None:
    assert line.post(raw).status_code == 400
    assert line.count(Inbox) == 0


def test_verify_request_with_no_events_is_200(line: Line) -> None:
    # The console's "Verify" button sends an empty batch.
    assert line.post(body()).status_code == 200


def test_unknown_event_types_and_groups_are_ignored(line: Line) -> None:
    user = user_id()
    unknown = _event("somethingNew", user, token=line.fake.issue_token(user), somethingNew={"x": 1})
    beacon = _event(
        "beacon", user, token=line.fake.issue_token(user), beacon={"hwid": "d41d8cd98f", "type": "enter"}
    )
    group = text_event(user, "こんにちは", line.fake.issue_token(user))
    group["source"] = {"type": "group", "groupId": "C" + uuid.uuid4().hex, "userId": user}
    room = text_event(user, "こんにちは", line.fake.issue_token(user))
    room["source"] = {"type": "room", "roomId": "R" + uuid.uuid4().hex, "userId": user}
    line.send(unknown, beacon, group, room)
    quiet()
    assert line.count(Inbox) == 0
    assert line.count(Contact) == 0
    assert line.fake.sent == []


def test_a_batch_of_two_people_makes_two_contacts_each_answered(line: Line) -> None:
    a, b = user_id(), user_id()
    line.send(
        text_event(a, "こんにちは", line.fake.issue_token(a)),
        text_event(b, "はじめまして", line.fake.issue_token(b)),
    )
    assert keys(line.wait_sent(a, 1)) == ["welcome"]
    assert keys(line.wait_sent(b, 1)) == ["welcome"]
    assert line.fake.to(a)[0].via == line.fake.to(b)[0].via == "reply"
    assert line.count(Contact, col(Contact.channel) == "line") == 2
    assert len(line.conversations()) == 2


def test_a_redelivery_is_stored_and_answered_once(line: Line) -> None:
    user = user_id()
    event = text_event(user, "こんにちは", line.fake.issue_token(user))
    line.send(event)
    line.wait_sent(user, 1)
    again = {**event, "deliveryContext": {"isRedelivery": True}}
    line.send(again)
    line.send(again)
    quiet()
    assert line.count(Inbox) == 1
    assert keys(line.fake.to(user)) == ["welcome"]


def test_an_expired_reply_token_falls_back_to_push(line: Line) -> None:
    user = user_id()
    line.send(text_event(user, "こんにちは", line.fake.issue_token(user, ttl=0.0)))
    [sent] = line.wait_sent(user, 1)
    assert sent.via == "push"
    assert keys([sent]) == ["welcome"]
    [row] = line.outbox()
    assert sent.retry_key == retry_key([row.id or 0], 0)
    eventually(lambda: line.status() == "delivered", "the row recorded as delivered")


def test_an_old_event_is_pushed_without_trying_its_token(line: Line) -> None:
    user = user_id()
    event = text_event(user, "こんにちは", line.fake.issue_token(user))
    event["timestamp"] -= 120_000  # processed two minutes after it happened: the token is gone
    line.send(event)
    [sent] = line.wait_sent(user, 1)
    assert sent.via == "push"
    assert "/v2/bot/message/reply" not in line.fake.paths()


def test_429_then_success_is_delivered_once(line: Line) -> None:
    user = user_id()
    line.fake.fail(429)
    line.send(text_event(user, "こんにちは", line.fake.issue_token(user)))
    sent = line.wait_sent(user, 1)
    eventually(lambda: line.status() == "delivered", "delivery after the retry")
    quiet()
    assert len(line.fake.to(user)) == 1
    assert keys(sent) == ["welcome"]
    row = line.outbox()[0]
    assert row.attempts == 2


def test_a_lost_response_is_not_sent_twice(line: Line) -> None:
    """LINE took the push but the answer was lost (500): the retry carries the same key, LINE answers 409,
    and the row is delivered with the person having it once."""
    user = user_id()
    line.fake.lose()
    line.send(text_event(user, "こんにちは", line.fake.issue_token(user, ttl=0.0)))
    eventually(lambda: line.status() == "delivered", "delivery after the retry")
    assert len(line.fake.to(user)) == 1
    push_statuses = [c.status for c in line.fake.calls if c.path == "/v2/bot/message/push"]
    assert push_statuses == [500, 409]


def test_server_errors_are_retried_and_other_4xx_fail(line: Line) -> None:
    user = user_id()
    line.fake.fail(500, 2)
    line.send(text_event(user, "こんにちは", line.fake.issue_token(user, ttl=0.0)))
    eventually(
        lambda: line.outbox()[0].last_error.startswith("LINE 500") if line.outbox() else False, "a 500"
    )
    assert line.outbox()[0].status == "pending"
    line.fake.fail(403, 5)  # e.g. a channel that lost its permission: no point trying again
    eventually(lambda: line.status() == "failed", "a permanent failure", timeout=15)
    assert line.outbox()[0].last_error.startswith("LINE 403")


def test_follow_gets_the_welcome(line: Line) -> None:
    user = user_id()
    line.send(follow_event(user, line.fake.issue_token(user)))
    sent = line.wait_sent(user, 1)
    assert keys(sent) == ["welcome"] and sent[0].via == "reply"


def test_unfollow_closes_and_nothing_is_sent_after(line: Line) -> None:
    user = user_id()
    line.said(user, "こんにちは")
    line.said(user, "同意")
    line.send(unfollow_event(user))
    eventually(lambda: line.conversations()[0].state == State.CLOSED, "the conversation closed")
    quiet()
    assert len(line.fake.to(user)) == 2
    assert line.count(Outbox) == 2
    # The console says that they blocked the account (and that replies cannot reach them)...
    assert line.count(Contact, col(Contact.presence) == "blocked", col(Contact.presence_at).is_not(None)) == 1
    # ... until they add it again.
    line.send(follow_event(user, line.fake.issue_token(user)))
    eventually(lambda: line.count(Contact, col(Contact.presence) == "blocked") == 0, "presence cleared")


def test_a_sticker_alone_is_noted_and_queues_nobody_at_low_risk(
    line: Line, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stickers bypass text triage: the person is told so, without a promise that someone will look, and a
    sticker alone does not put them in the queue (the dialogue test covers medium risk)."""
    monkeypatch.setattr(line_module, "LOADING_AFTER", 0.0)
    user = user_id()
    line.said(user, "こんにちは")
    line.said(user, "同意")
    before = len(line.fake.to(user))
    line.send(sticker_event(user, line.fake.issue_token(user)))
    assert keys(line.wait_sent(user, before + 1)[before:]) == ["media_unreadable"]
    quiet()
    assert line.conversations()[0].state == State.LISTENING
    assert line.fake.loading.count(user) == 2, "no loading indicator for media"


def test_a_first_contact_that_is_a_sticker_gets_the_welcome(line: Line) -> None:
    user = user_id()
    line.send(sticker_event(user, line.fake.issue_token(user)))
    assert keys(line.wait_sent(user, 1)) == ["welcome"]


def test_postback_is_a_choice(line: Line) -> None:
    user = user_id()
    line.said(user, "こんにちは")
    before = len(line.fake.to(user))
    line.send(_event("postback", user, token=line.fake.issue_token(user), postback={"data": "同意"}))
    assert keys(line.wait_sent(user, before + 1)[before:]) == ["listening"]


def _waiting_with_counsellor(line: Line, user: str) -> tuple[str, int]:
    """Consent, ask for a person, a counsellor claims: the conversation id and the counsellor's id."""
    line.said(user, "こんにちは")
    line.said(user, "同意")
    line.said(user, "相談員と話したい")
    eventually(lambda: line.conversations()[0].state == State.WAITING, "the conversation queued")
    conv_id = line.conversations()[0].id

    async def claim() -> int:
        async with line.svc.db.session() as s, s.begin():
            counsellor = await create_counsellor(s, "aoi", "correct horse battery staple", Role.COUNSELLOR)
            counsellor_id = counsellor.id
        assert counsellor_id is not None
        assert await line.svc.engine.assign(conv_id, counsellor_id)
        return counsellor_id

    return conv_id, line.run(claim)


def test_no_loading_indicator_for_a_reply_that_comes_at_once(
    line: Line, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(line_module, "LOADING_AFTER", 5.0)
    user = user_id()
    assert keys(line.said(user, "こんにちは")) == ["welcome"]
    assert keys(line.said(user, "同意")) == ["listening"]
    assert line.fake.loading == [], "each reply went out before the indicator was due"


def test_no_loading_indicator_while_a_counsellor_holds_the_conversation(
    line: Line, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = user_id()
    _waiting_with_counsellor(line, user)
    monkeypatch.setattr(line_module, "LOADING_AFTER", 0.0)  # as if the engine were slow
    before = line.count(Message)
    line.send(text_event(user, "まだいますか", line.fake.issue_token(user)))
    eventually(lambda: line.count(Message) > before, "the message stored")
    quiet()
    assert line.fake.loading.count(user) == 0, "the bot is silent and a counsellor's answer takes its time"


def test_a_counsellors_reply_is_pushed_and_delivered(line: Line) -> None:
    user = user_id()
    conv_id, counsellor_id = _waiting_with_counsellor(line, user)
    before = len(line.fake.to(user))

    async def reply() -> bool:
        return await line.svc.engine.counsellor_reply(
            conv_id, counsellor_id, "相談員の佐藤です。お話を聞かせてください。"
        )

    assert line.run(reply)
    sent = line.wait_sent(user, before + 2)[before:]
    assert reply_keys([sent[0].texts[0]]) == ["with_counsellor"]
    assert sent[1].texts == ("相談員の佐藤です。お話を聞かせてください。",)
    assert sent[1].via == "push" and sent[1].retry_key is not None

    async def counsellor_rows() -> list[str]:
        async with line.svc.db.session() as s:
            rows = await s.scalars(
                select(col(Outbox.status))
                .join(Message, col(Message.id) == col(Outbox.message_id))
                .where(col(Message.sender) == Sender.COUNSELLOR)
            )
            return list(rows.all())

    eventually(
        lambda: line.run(counsellor_rows) == ["delivered"], "the counsellor's message recorded as delivered"
    )


@pytest.fixture
def long_line(tmp_path: Path) -> Iterator[Line]:
    yield from _line(tmp_path, max_message_chars=30000)


def test_a_long_reply_is_split_within_limits(long_line: Line) -> None:
    line = long_line
    user = user_id()
    conv_id, counsellor_id = _waiting_with_counsellor(line, user)
    before = len(line.fake.to(user))
    text = "".join(f"{i:05d}あいうえお" for i in range(2600))  # 26000 characters: six messages

    async def reply() -> bool:
        return await line.svc.engine.counsellor_reply(conv_id, counsellor_id, text)

    assert line.run(reply)
    sent = line.wait_sent(user, before + 3)[before + 1 :]  # after the "with_counsellor" notice
    assert [len(s.texts) for s in sent] == [5, 1], "at most five messages a request"
    assert all(len(t) <= 5000 for s in sent for t in s.texts)
    assert "".join(t for s in sent for t in s.texts) == text
    assert len({s.retry_key for s in sent}) == 2, "each request its own retry key"


def test_quick_replies_within_limits() -> None:
    from channels.line import _messages

    labels = tuple(f"選択肢{i}" for i in range(15)) + ("とても長い選択肢の名前で二十文字を超えてしまうもの",)
    [message] = _messages("どれにしますか", labels)
    items = message.to_dict()["quickReply"]["items"]
    assert len(items) == 13
    assert all(len(i["action"]["label"]) <= 20 for i in items)
    [long] = _messages("x", (labels[-1],))
    action = long.to_dict()["quickReply"]["items"][0]["action"]
    assert action == {"type": "message", "label": labels[-1][:20], "text": labels[-1]}


# -- every event LINE sends, pictures, unsend, groups ---------------------------------------------------

ALL_EVENTS = Path(__file__).parent / "data" / "line" / "all_events.json"


def messages_of(line: Line) -> list[Message]:
    return line.run(lambda: rows_of(line.svc, Message))


def inbox_ids(line: Line) -> set[str]:
    async def work() -> set[str]:
        async with line.svc.db.session() as s:
            return set((await s.scalars(select(col(Inbox.external_id)))).all())

    return line.run(work)


def test_every_documented_event_and_source(line: Line) -> None:
    """One webhook body with every event type and source the Messaging API reference lists (each with its
    own event id): what a person sends one-to-one is stored and answered; nothing said in a group or room
    is stored; joining one is answered once and left; standby events and events we do not serve are not
    stored; an unknown message type is kept and shown, never dropped."""
    raw = json.loads(ALL_EVENTS.read_text(encoding="utf-8"))
    now = int(time.time() * 1000)
    for event in raw["events"]:
        event["timestamp"] = now  # fresh, so that reply tokens are tried
        if "replyToken" in event:
            source = event.get("source", {})
            owner = source.get("groupId") or source.get("roomId") or source.get("userId", "")
            line.fake.issue_token(owner, token=event["replyToken"])
    ids = {e["webhookEventId"] for e in raw["events"]}
    assert len(ids) == len(raw["events"]), "each event its own id"
    group, room = "Ca56f94637c1b2c3d4e5f60718293a4b5", "Ra8dc8c4d7e1b2c3d4e5f60718293a4b5"
    line.fake.join(group)
    line.fake.join(room)
    line.fake.put_content("468200000000000003", photo_with_gps())
    line.send(*raw["events"])

    by_n = {int(e["webhookEventId"][4:]): e["webhookEventId"] for e in raw["events"]}
    stored = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 23, 25, 31}
    assert inbox_ids(line) == {by_n[n] for n in stored}
    eventually(lambda: sorted(line.fake.left) == [("group", group), ("room", room)], "both left")
    eventually(
        lambda: all(r.status == "done" for r in _inbox_rows(line)) and len(_inbox_rows(line)) == len(stored),
        "every stored event handled",
    )
    for place in (group, room):
        (notice,) = line.fake.to(place)
        assert notice.via == "reply" and keys([notice]) == ["line_group_only"]

    a = "U4af4980629a1b2c3d4e5f60718293a4b"
    crypto = line.svc.crypto
    rows = messages_of(line)
    texts = [crypto.decrypt(m.text_enc) for m in rows]
    for said_elsewhere in (
        "グループでの会話です",
        "トークルームでの会話です",
        "グループで編集した文です",
        "待機中",
    ):
        assert not any(said_elsewhere in t for t in texts)
    inbound = [m for m in rows if m.direction == "in"]
    assert [m.kind for m in inbound] == [
        "follow", "text", "media", "media", "media", "media", "media", "media", "media", "choice", "text",
    ]  # fmt: skip
    withdrawn = inbound[1]
    assert "withdrawn" in withdrawn.flags and texts[rows.index(withdrawn)] == ""
    assert "edited" in inbound[-1].flags
    shown = [json.loads(crypto.decrypt(m.meta_enc)) if m.meta_enc else [] for m in inbound]
    assert shown[2] == [{"kind": "image", "size": len(photo_with_gps()), "picture": True}]
    assert shown[3] == [{"kind": "video"}] and shown[4] == [{"kind": "audio"}]
    assert shown[5] == [{"kind": "file", "name": "証拠のメモ.pdf", "size": 2138, "refused": "pdf"}]
    assert shown[6] == [{"kind": "location", "title": "渋谷駅", "address": "東京都渋谷区道玄坂１丁目"}]
    assert shown[7] == [{"kind": "sticker", "keywords": ["cony", "sad", "Crying"]}]
    assert shown[8] == [{"kind": "hologram"}], "a type LINE added later is named, not dropped"
    assert line.count(Media) == 1
    assert line.count(Contact, col(Contact.channel) == "line") == 2  # the person, and the one who blocked us
    assert [c.channel for c in line.conversations()] == ["line"]
    assert line.fake.to(a), "the person was answered"
    assert not line.fake.to("U6cf6ba2841c3d4e5f60718293a4b5c6d"), "standby: never answered"
    assert "468200000000000003" in line.fake.fetched


def _inbox_rows(line: Line) -> list[Inbox]:
    async def work() -> list[Inbox]:
        async with line.svc.db.session() as s:
            return list((await s.scalars(select(Inbox))).all())

    return line.run(work)


def image_event_of(user: str, token: str | None, message_id: str, **extra: Any) -> dict[str, Any]:
    message = {
        "type": "image",
        "id": message_id,
        "quoteToken": "yHAz4Ua2wx7" + uuid.uuid4().hex,
        "contentProvider": {"type": "line"},
        **extra,
    }
    return _event("message", user, token=token, message=message)


def test_a_picture_is_kept_without_its_exif_and_shown_to_the_counsellor(line: Line) -> None:
    user = user_id()
    line.said(user, "こんにちは")
    line.said(user, "同意")
    photo = photo_with_gps()
    assert GPS_TAG in exif_of(photo)
    line.fake.put_content("900000000000000001", photo)
    before = len(line.fake.to(user))
    line.send(image_event_of(user, line.fake.issue_token(user), "900000000000000001"))
    assert keys(line.wait_sent(user, before + 1)[before:]) == ["media_picture_kept"]

    async def stored() -> list[Media]:
        async with line.svc.db.session() as s:
            return list((await s.scalars(select(Media))).all())

    (media,) = line.run(stored)
    data = line.svc.crypto.decrypt_bytes(media.data_enc)
    assert data.startswith(b"\xff\xd8") and data != photo, "re-encoded"
    assert exif_of(data) == {}, "no EXIF, no GPS"
    assert (media.width, media.height, media.content_type) == (640, 480, "image/jpeg")
    assert photo not in line.svc.crypto.encrypt_bytes(data).encode(), "encrypted at rest"


def test_an_album_gets_one_reply_and_a_broken_picture_is_refused(line: Line) -> None:
    user = user_id()
    line.said(user, "こんにちは")
    line.said(user, "同意")
    album = uuid.uuid4().hex.upper()
    events = []
    for i in range(1, 4):
        mid = f"91000000000000000{i}"
        line.fake.put_content(mid, screenshot() if i != 2 else b"\x89PNG\r\n\x1a\nnot really a picture")
        token = line.fake.issue_token(user)
        events.append(image_event_of(user, token, mid, imageSet={"id": album, "index": i, "total": 3}))
    before = len(line.fake.to(user))
    line.send(*reversed(events))  # arrival order is not the album's order
    eventually(lambda: all(r.status == "done" for r in _inbox_rows(line)), "the album handled")
    quiet()
    sent = line.fake.to(user)[before:]
    assert keys(sent) == ["media_picture_kept"], "one reply for the album"
    assert line.count(Media) == 2, "the two real pictures"
    inbound = [m for m in messages_of(line) if m.kind == "media"]
    assert len(inbound) == 3 and all("album" in m.flags for m in inbound)


def test_unsend_erases_the_text_everywhere_and_the_risk_stays(line: Line) -> None:
    user = user_id()
    line.said(user, "こんにちは")
    line.said(user, "同意")
    event = text_event(user, CRISIS, line.fake.issue_token(user))
    message_id = event["message"]["id"]
    before = len(line.fake.to(user))
    line.send(event)
    line.wait_sent(user, before + 1)
    eventually(lambda: line.conversations()[0].risk == "crisis", "the crisis")
    line.send(text_event(user, "もう無理", line.fake.issue_token(user)))  # its context quotes the crisis
    eventually(lambda: len([m for m in messages_of(line) if m.direction == "in"]) == 4, "four stored")
    line.send(_event("unsend", user, token=None, unsend={"messageId": message_id}))

    def withdrawn() -> list[Message]:
        return [m for m in messages_of(line) if m.withdrawn_at is not None]

    eventually(lambda: len(withdrawn()) == 1, "the message withdrawn")
    (gone,) = withdrawn()
    crypto = line.svc.crypto
    assert crypto.decrypt(gone.text_enc) == "" and "withdrawn" in gone.flags
    everything = "".join(
        crypto.decrypt(v) for m in messages_of(line) for v in (m.text_enc, m.triage_enc, m.full_enc) if v
    )
    everything += "".join(crypto.decrypt(r.payload_enc) for r in _inbox_rows(line))
    for piece in ("死にたい", "飛び降りる"):
        assert piece not in everything, "not in any text, triage reason or stored event"
    (conv,) = line.conversations()
    assert conv.risk == "crisis" and conv.state == State.WAITING, "a withdrawn crisis still needs a person"
    amy = _console(line, "amy")
    read = amy.read(conv.id).json()
    said = [m for m in read["messages"] if m["from"] == "user"]
    assert said[2]["flags"] == ["withdrawn"] and said[2]["text"] == ""
    assert any(r["rule"].startswith("withdrawn.suicide") for r in read["triage"]["reasons"])
    queue = amy.get("queue").json()
    assert [q["preview"] for q in queue] == ["もう無理"]


def test_an_edited_message_is_stored_as_a_new_version_and_triaged(line: Line) -> None:
    user = user_id()
    line.said(user, "こんにちは")
    line.said(user, "同意")
    event = text_event(user, "ちょっと話したいです", line.fake.issue_token(user))
    line.send(event)
    eventually(lambda: len([m for m in messages_of(line) if m.direction == "in"]) == 3, "stored")
    edited = _event(
        "messageEdited",
        user,
        token=line.fake.issue_token(user),
        message={
            "id": event["message"]["id"],
            "type": "text",
            "text": CRISIS,
            "quoteToken": "q" + uuid.uuid4().hex,
        },
    )
    line.send(edited)
    eventually(lambda: line.conversations()[0].risk == "crisis", "the edit triaged")
    inbound = [m for m in messages_of(line) if m.direction == "in"]
    assert [m.flags for m in inbound[-2:]] == ["", "edited"]
    assert line.svc.crypto.decrypt(inbound[-2].text_enc) == "ちょっと話したいです", "the first version stays"
    assert line.conversations()[0].state == State.WAITING


def test_after_an_unfollow_waiting_messages_are_cancelled_not_pushed(line: Line) -> None:
    user = user_id()
    conv_id, counsellor_id = _waiting_with_counsellor(line, user)
    before = len(line.fake.to(user))

    async def reply() -> bool:
        return await line.svc.engine.counsellor_reply(conv_id, counsellor_id, "相談員の佐藤です。")

    line.fake.fail(500, 3)
    assert line.run(reply)
    eventually(lambda: any(r.last_error.startswith("LINE 500") for r in line.outbox()), "a failed push")
    line.send(unfollow_event(user))
    eventually(lambda: line.conversations()[0].state == State.CLOSED, "closed")
    eventually(lambda: line.outbox()[-1].status == "failed", "the waiting message cancelled")
    assert line.outbox()[-1].last_error.startswith("cancelled")
    quiet(3.0)  # past the retry the row would have had
    assert not [s for s in line.fake.to(user)[before:] if "相談員の佐藤です。" in s.texts]


def test_standby_events_are_not_answered(line: Line) -> None:
    user = user_id()
    event = text_event(user, "こんにちは", line.fake.issue_token(user))
    event["mode"] = "standby"
    line.send(event)
    quiet()
    assert line.count(Inbox) == 0 and line.fake.to(user) == []


def test_a_group_join_is_answered_once_and_left(line: Line) -> None:
    group = "C" + uuid.uuid4().hex
    line.fake.join(group)
    join = _event("join", "", token=line.fake.issue_token(group))
    join["source"] = {"type": "group", "groupId": group}
    line.send(join)
    eventually(lambda: line.fake.left == [("group", group)], "the group left")
    line.send({**join, "deliveryContext": {"isRedelivery": True}})  # redelivered: said once
    quiet()
    (notice,) = line.fake.to(group)
    assert keys([notice]) == ["line_group_only"]
    assert line.count(Contact) == 0 and line.count(Message) == 0


def _console(line: Line, name: str) -> Session:
    """A supervisor's console session on the same app (supervisors read every conversation)."""
    return account(line.client, name, Role.SUPERVISOR)


# -- the safety net: no form or offer between a person and help (bot/dialogue.py) --------------------------


def test_distress_gets_the_direct_question_as_quick_replies_and_yes_the_crisis_path(line: Line) -> None:
    user = user_id()
    line.said(user, "こんにちは")
    line.said(user, "同意")
    (sent,) = line.said(user, "何もかも終わらせたい")
    assert keys([sent]) == ["ask_danger"]
    assert sent.quick_replies == (("はい", "はい"), ("いいえ", "いいえ"), ("わからない", "わからない"))
    crisis = line.said(user, "はい")  # a quick reply sends its label as the person's message
    assert keys(crisis) == ["crisis", "ask_age"]  # (no intake yet: the age band, once)
    assert "110" in crisis[0].texts[0] and "119" in crisis[0].texts[0]
    [conv] = line.conversations()
    assert (conv.state, conv.risk, conv.danger_asked, conv.danger_answer) == (
        "waiting",
        "crisis",
        "low",
        "yes",
    )


def test_an_intake_answer_that_is_not_one_is_read_as_a_message_on_line(line: Line) -> None:
    user = user_id()
    line.said(user, "こんにちは")
    line.said(user, "同意")
    assert keys(line.said(user, "学校で友だちとうまくいかなくて悩んでいます")) == [
        "intake_intro",
        "intake_age",
    ]
    assert keys(line.said(user, "16〜18歳")) == ["intake_prefecture"]
    assert keys(line.said(user, "もう終わり。全部準備できた")) == ["offer"]
    [conv] = line.conversations()
    assert (conv.age_band, conv.prefecture, conv.pending, conv.state) == ("16-18", "", "", "offered")
    # Stored and triaged like any message.
    assert line.count(Message, col(Message.direction) == "in", col(Message.triage_enc) != "") == 5


def test_high_goes_to_the_queue_at_once_and_medium_gets_a_counsellor_first_on_line(line: Line) -> None:
    user = user_id()
    sent = line.said(user, "夫に毎日殴られていて、家に帰るのがこわいです")
    assert keys(sent) == ["welcome", "waiting", "waiting_safety", "ask_age"]
    [conv] = line.conversations()
    assert (conv.state, conv.risk) == ("waiting", "high")
    other = user_id()
    line.said(other, "こんにちは")
    line.said(other, "同意")
    (sent,) = line.said(other, "最近ちょっと学校に行きづらくて")
    assert keys([sent]) == ["offer_counsellor", "intake_age"], "a counsellor before any question"


def test_coming_back_within_seven_days_starts_at_that_risk_with_the_earlier_conversation_linked(
    line: Line,
) -> None:
    user = user_id()
    line.said(user, "こんにちは")
    line.said(user, CRISIS)
    line.said(user, "終了")
    (first,) = line.conversations()
    assert first.state == "closed"
    # Six days later: the new conversation starts at crisis, in the queue at once, the earlier one linked.
    line.svc.engine.clock = lambda: utcnow() + timedelta(days=6)
    # The age band was asked once already (in the first conversation): it is not asked again.
    assert keys(line.said(user, "こんにちは")) == ["welcome", "waiting", "waiting_safety"]
    second = next(c for c in line.conversations() if c.id != first.id)
    assert (second.state, second.risk, second.previous_id) == ("waiting", "crisis", first.id)
    line.said(user, "終了")
    # More than seven days after the last word of a conversation at crisis: a fresh start.
    line.svc.engine.clock = lambda: utcnow() + timedelta(days=14)
    assert keys(line.said(user, "こんにちは")) == ["welcome"]
    third = next(c for c in line.conversations() if c.id not in (first.id, second.id))
    assert (third.risk, third.previous_id) == ("low", "")
