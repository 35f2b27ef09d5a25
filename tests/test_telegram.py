"""The Telegram channel end to end: Bot API updates, shaped as Telegram sends them, are posted to
``POST /webhooks/telegram`` of the real app (TestClient, with the service's own inbox and outbox workers),
and replies go through python-telegram-bot to a local fake Bot API (tests/fake_telegram.py).

No test can reach api.telegram.org: the base URL always points at the fake, and name look-ups of any
host other than loopback fail loudly (``_offline``). Every wait is bounded.
Update shapes: https://core.telegram.org/bots/api#update
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlmodel import col

from bot.models import Conversation, Inbox, InboxStatus, Media, Outbox, OutboxStatus, Role, State
from bot.storage.credentials import create_counsellor
from bot.web import create_app
from channels.telegram import split_text
from tests.engine_helpers import reply_keys
from tests.fake_telegram import BOT_USER, FakeTelegram, running_fake
from tests.helpers import eventually, in_app, make_settings, service, table_rows
from tests.pictures import exif_of, photo_with_gps, screenshot

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "123456789:AAH-test_token-not-real_0123456789ab"
SECRET = "s3cret_token-for-tests"
CHAT = 555000111
CRISIS = "もう死にたい。今から飛び降りる"
LOOPBACK = {"127.0.0.1", "localhost", "::1", None}

_real_getaddrinfo = socket.getaddrinfo


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """A connection these tests did not arrange (anything but loopback) fails, and fails the test at its
    end even where the caller swallowed the error (PTB wraps it in a NetworkError, the outbox retries)."""
    attempted: list[str] = []

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in LOOPBACK:
            attempted.append(str(name))
            raise AssertionError(f"a test tried to reach {name!r}: only the local fake Bot API is allowed")
        return _real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    yield attempted
    assert attempted == [], f"tests tried to reach {attempted}"


@pytest.fixture
def fake() -> Iterator[FakeTelegram]:
    with running_fake(TOKEN) as f:
        yield f


@pytest.fixture
def client(tmp_path: Path, fake: FakeTelegram) -> Iterator[TestClient]:
    settings = make_settings(
        tmp_path,
        telegram_bot_token=TOKEN,
        telegram_secret_token=SECRET,
        telegram_api_base=fake.base_url,
        loopback_channel=False,
    )
    assert settings.telegram_api_base.startswith("http://127.0.0.1:")
    with TestClient(create_app(settings)) as c:
        yield c


# -- helpers ---------------------------------------------------------------------------------------------

_ids = itertools.count(100000)


def post(client: TestClient, update: dict[str, Any], secret: str | None = SECRET) -> int:
    headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret is not None else {}
    return client.post("/webhooks/telegram", content=json.dumps(update), headers=headers).status_code


def user(chat_id: int = CHAT) -> dict[str, Any]:
    return {"id": chat_id, "is_bot": False, "first_name": "Hanako", "language_code": "ja"}


def private(chat_id: int = CHAT) -> dict[str, Any]:
    return {"id": chat_id, "first_name": "Hanako", "type": "private"}


def message(
    text: str | None = None, *, chat: dict[str, Any] | None = None, chat_id: int = CHAT, **extra: Any
) -> dict[str, Any]:
    """An update with a new message (https://core.telegram.org/bots/api#message)."""
    msg: dict[str, Any] = {
        "message_id": next(_ids),
        "from": user(chat_id),
        "chat": chat or private(chat_id),
        "date": int(time.time()),
    }
    if text is not None:
        msg["text"] = text
        if text.startswith("/"):
            msg["entities"] = [{"offset": 0, "length": len(text.split()[0]), "type": "bot_command"}]
    msg.update(extra)
    return {"update_id": next(_ids), "message": msg}


def press(sent: dict[str, Any], label: str, chat_id: int = CHAT) -> dict[str, Any]:
    """The callback_query Telegram sends when the person presses the button ``label`` under a message the
    bot sent (https://core.telegram.org/bots/api#callbackquery): it carries that message."""
    buttons = [b for row in sent["reply_markup"]["inline_keyboard"] for b in row]
    button = next(b for b in buttons if b["text"] == label)
    return {
        "update_id": next(_ids),
        "callback_query": {
            "id": str(next(_ids) * 1000003),
            "from": user(chat_id),
            "message": {
                "message_id": next(_ids),
                "from": BOT_USER,
                "chat": private(chat_id),
                "date": int(time.time()),
                "text": sent["text"],
                "reply_markup": sent["reply_markup"],
            },
            "chat_instance": "-4096000000000000000",
            "data": button["callback_data"],
        },
    }


def blocked(chat_id: int = CHAT) -> dict[str, Any]:
    """my_chat_member when the person blocks the bot (https://core.telegram.org/bots/api#chatmemberupdated)."""
    return {
        "update_id": next(_ids),
        "my_chat_member": {
            "chat": private(chat_id),
            "from": user(chat_id),
            "date": int(time.time()),
            "old_chat_member": {"user": BOT_USER, "status": "member"},
            "new_chat_member": {"user": BOT_USER, "status": "kicked", "until_date": 0},
        },
    }


def processed(client: TestClient, count: int) -> None:
    """Wait until ``count`` updates are stored and all of them processed, and the outbox is idle."""

    def done() -> bool:
        rows = table_rows(client, Inbox)
        return len(rows) == count and all(r.status == InboxStatus.DONE for r in rows)

    eventually(done, f"{count} processed updates")

    def idle() -> bool:
        rows = table_rows(client, Outbox)
        return all(r.status in (OutboxStatus.DELIVERED, OutboxStatus.FAILED) for r in rows)

    eventually(idle, "the outbox to be idle")


def conversation(client: TestClient) -> Conversation:
    async def work() -> Conversation | None:
        async with service(client).db.session() as s:
            return await s.scalar(
                select(Conversation)
                .where(col(Conversation.channel) == "telegram")
                .order_by(col(Conversation.created_at).desc())
            )

    conv = in_app(client, work)
    assert isinstance(conv, Conversation)
    return conv


def start(client: TestClient, fake: FakeTelegram, chat_id: int = CHAT) -> dict[str, Any]:
    """/start: the welcome, with its buttons; returns the welcome as sent."""
    assert post(client, message("/start", chat_id=chat_id)) == 200
    sent = fake.wait_sent(chat_id, 1)
    assert reply_keys([sent[0]["text"]]) == ["welcome"]
    return sent[0]


def consent(client: TestClient, fake: FakeTelegram) -> None:
    welcome = start(client, fake)
    assert post(client, press(welcome, "同意して話す")) == 200
    sent = fake.wait_sent(CHAT, 2)
    assert reply_keys([sent[1]["text"]]) == ["listening"]


# -- the conversation -------------------------------------------------------------------------------------


def test_start_welcomes_with_inline_buttons(client: TestClient, fake: FakeTelegram) -> None:
    welcome = start(client, fake)
    rows = welcome["reply_markup"]["inline_keyboard"]
    assert [[b["text"] for b in row] for row in rows] == [["同意して話す"], ["同意しない"]]
    for row in rows:
        assert len(row[0]["callback_data"].encode()) <= 64
    assert fake.of("getMe"), "the Bot was initialized at start"


def test_pressing_consent_listens_and_answers_the_callback(client: TestClient, fake: FakeTelegram) -> None:
    welcome = start(client, fake)
    update = press(welcome, "同意して話す")
    assert post(client, update) == 200
    sent = fake.wait_sent(CHAT, 2)
    assert reply_keys([sent[1]["text"]]) == ["listening"]
    answered = [c.params["callback_query_id"] for c in fake.of("answerCallbackQuery")]
    assert answered == [update["callback_query"]["id"]]


def test_crisis_text_gets_emergency_numbers(client: TestClient, fake: FakeTelegram) -> None:
    consent(client, fake)
    assert post(client, message(CRISIS)) == 200
    eventually(lambda: len(fake.sent(CHAT)) >= 3, "the crisis reply")
    processed(client, 3)
    replies = fake.texts(CHAT)[2:]
    assert "crisis" in reply_keys(replies)
    crisis = replies[reply_keys(replies).index("crisis")]
    assert "110" in crisis and "119" in crisis


def test_a_photo_is_kept_re_encoded_and_the_person_told(client: TestClient, fake: FakeTelegram) -> None:
    consent(client, fake)
    photo = [
        {
            "file_id": "AgACAgUAAxkBAAIBY2Zz",
            "file_unique_id": "AQADs7wxG",
            "file_size": 1342,
            "width": 90,
            "height": 67,
        },
        {
            "file_id": "AgACAgUAAxkBAAIBY2Zy",
            "file_unique_id": "AQADs7wxH",
            "file_size": 38211,
            "width": 800,
            "height": 600,
        },
    ]
    fake.put_file("AgACAgUAAxkBAAIBY2Zy", photo_with_gps(800, 600))
    assert post(client, message(photo=photo)) == 200
    eventually(lambda: len(fake.sent(CHAT)) >= 3, "the note")
    processed(client, 3)
    assert reply_keys(fake.texts(CHAT)[2:]) == ["media_picture_kept"]
    assert fake.downloaded == ["photos/AgACAgUAAxkBAAIBY2Zy.jpg"], "the largest size, once"

    async def media() -> list[Media]:
        async with service(client).db.session() as s:
            return list((await s.scalars(select(Media))).all())

    (picture,) = in_app(client, media)
    data = service(client).crypto.decrypt_bytes(picture.data_enc)
    assert (picture.width, picture.height) == (800, 600) and exif_of(data) == {}


def test_an_album_gets_one_reply_and_a_file_telegram_lost_is_not_kept(
    client: TestClient, fake: FakeTelegram
) -> None:
    consent(client, fake)
    for i in range(3):
        if i != 1:  # the second one Telegram no longer has
            fake.put_file(f"AgAlbum{i}", screenshot(120, 240))
        size = {
            "file_id": f"AgAlbum{i}",
            "file_unique_id": f"U{i}",
            "file_size": 900,
            "width": 120,
            "height": 240,
        }
        assert post(client, message(photo=[size], media_group_id="13579")) == 200
    processed(client, 5)
    eventually(lambda: len(fake.sent(CHAT)) >= 3, "the note")
    time.sleep(0.5)
    assert reply_keys(fake.texts(CHAT)[2:]) == ["media_picture_kept"], "one reply for the album"

    async def media() -> int:
        async with service(client).db.session() as s:
            return len((await s.scalars(select(Media))).all())

    assert in_app(client, media) == 2


def test_a_document_that_is_not_a_picture_is_refused_by_kind(client: TestClient, fake: FakeTelegram) -> None:
    consent(client, fake)
    document = {"file_id": "BQACAgUAAxkBAAIBZ", "file_unique_id": "AgADx", "file_name": "tool.exe",
                "mime_type": "application/x-msdownload", "file_size": 40960}  # fmt: skip
    assert post(client, message(document=document)) == 200
    eventually(lambda: len(fake.sent(CHAT)) >= 3, "the note")
    (note,) = fake.texts(CHAT)[2:]
    assert reply_keys([note]) == ["attachments_not_kept"] and "実行ファイル" in note
    assert fake.downloaded == [], "never fetched"


def test_sticker_with_no_text_is_media(client: TestClient, fake: FakeTelegram) -> None:
    start(client, fake)
    sticker = {
        "file_id": "CAACAgIAAxkBAAIBZ2Zz",
        "file_unique_id": "AgADnQADr8ZRGg",
        "type": "regular",
        "width": 512,
        "height": 512,
        "is_animated": False,
        "is_video": False,
        "emoji": "😢",
    }
    assert post(client, message(sticker=sticker)) == 200
    eventually(lambda: len(fake.sent(CHAT)) >= 2, "the media note")
    assert "media_unreadable" in reply_keys(fake.texts(CHAT)[1:])


# -- the webhook ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("secret", [None, "", "wrong", SECRET + "x"])
def test_wrong_or_missing_secret_is_403_and_nothing_stored(
    client: TestClient, fake: FakeTelegram, secret: str | None
) -> None:
    assert post(client, message("/start"), secret=secret) == 403
    assert table_rows(client, Inbox) == []


def test_malformed_json_is_400(client: TestClient, fake: FakeTelegram) -> None:
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    for body in (
        b"{not json",
        b"[1, 2]",
        b'{"message": {}}',
        b'{"update_id": "7"}',
        b"\xff\xfe",
        '{"update_id": 7}'.encode("utf-16"),
    ):
        assert client.post("/webhooks/telegram", content=body, headers=headers).status_code == 400
    assert table_rows(client, Inbox) == []


def test_the_same_update_twice_is_stored_and_answered_once(client: TestClient, fake: FakeTelegram) -> None:
    start(client, fake)
    update = message("こんにちは")
    assert post(client, update) == 200
    assert post(client, update) == 200  # Telegram redelivers when it did not see our 200 in time
    processed(client, 2)
    assert len(table_rows(client, Inbox)) == 2
    assert len(fake.sent(CHAT)) == 2, fake.texts(CHAT)


def test_group_messages_are_ignored(client: TestClient, fake: FakeTelegram) -> None:
    group = {"id": -1001234567890, "title": "クラス", "type": "supergroup"}
    assert post(client, message("/start", chat=group)) == 200
    assert post(client, message(CRISIS, chat=group)) == 200
    processed(client, 2)
    assert fake.sent() == []
    assert in_app(client, lambda: _conversation_count(client)) == 0


async def _conversation_count(client: TestClient) -> int:
    async with service(client).db.session() as s:
        return len((await s.scalars(select(Conversation))).all())


def test_blocking_closes_the_conversation_and_nothing_is_sent_after(
    client: TestClient, fake: FakeTelegram
) -> None:
    consent(client, fake)
    assert post(client, blocked()) == 200
    processed(client, 3)
    assert conversation(client).state == State.CLOSED
    assert len(fake.sent(CHAT)) == 2
    assert fake.of("sendMessage")[-1].status == 200


# -- sending ----------------------------------------------------------------------------------------------


def test_rate_limit_then_success_is_delivered_once(client: TestClient, fake: FakeTelegram) -> None:
    fake.fail_next = [(429, 4)]  # longer than the outbox's own first backoff (about 2 s)
    assert post(client, message("/start")) == 200
    sent = fake.wait_sent(CHAT, 1, timeout=15)
    assert reply_keys([sent[0]["text"]]) == ["welcome"]
    calls = fake.of("sendMessage")
    assert [c.status for c in calls] == [429, 200]
    assert calls[1].at - calls[0].at >= 4, "not again before the time Telegram asked for"
    last_error = table_rows(client, Outbox)[0].last_error
    assert "429, 4 s" in last_error or last_error == ""
    processed(client, 1)
    assert [r.status for r in table_rows(client, Outbox)] == [OutboxStatus.DELIVERED]


def test_server_error_then_success_is_delivered_once(client: TestClient, fake: FakeTelegram) -> None:
    fake.fail_next = [(500, 0)]
    assert post(client, message("/start")) == 200
    fake.wait_sent(CHAT, 1, timeout=15)
    assert [c.status for c in fake.of("sendMessage")] == [500, 200]


def test_blocked_by_the_user_is_a_permanent_failure(client: TestClient, fake: FakeTelegram) -> None:
    fake.blocked.add(CHAT)
    assert post(client, message("/start")) == 200
    processed(client, 1)
    rows = table_rows(client, Outbox)
    assert [r.status for r in rows] == [OutboxStatus.FAILED]
    assert "Forbidden" in rows[0].last_error
    assert TOKEN not in rows[0].last_error


@pytest.mark.parametrize("trouble", [None, 429, 500], ids=["calm", "rate-limited", "server-error"])
def test_a_long_counsellor_reply_is_split_and_delivered(
    client: TestClient, fake: FakeTelegram, trouble: int | None
) -> None:
    """A counsellor's reply reaches the person on Telegram; one longer than 4096 characters is split,
    and the outbox row shows it delivered. When the second part fails, the retry sends only what is
    missing: the person never gets the first part twice."""
    consent(client, fake)
    assert post(client, message(CRISIS)) == 200
    eventually(lambda: conversation(client).state == State.WAITING, "the conversation to wait for a person")
    processed(client, 3)
    svc = service(client)
    conv_id = conversation(client).id

    async def claim_and_reply(text: str) -> None:
        async with svc.db.session() as s, s.begin():
            c = await create_counsellor(s, "yamada", "correct horse battery staple", Role.COUNSELLOR)
        assert c.id is not None
        assert await svc.engine.assign(conv_id, c.id)
        assert await svc.engine.counsellor_reply(conv_id, c.id, text)

    before = len(fake.sent(CHAT))
    long_text = ("話してくれてありがとう。\n" * 350) + "ゆっくりで大丈夫です。"
    assert len(long_text) > 4096
    if trouble:  # the notice and the first part go through, then the second part fails once
        fake.fail_next = [(200, 0), (200, 0), (trouble, 1)]
    in_app(client, lambda: claim_and_reply(long_text))
    processed(client, 3)
    eventually(lambda: len(fake.texts(CHAT)) >= before + 3, "every part")
    eventually(lambda: table_rows(client, Outbox)[-1].status == OutboxStatus.DELIVERED, "the reply delivered")
    texts = fake.texts(CHAT)[before:]
    assert reply_keys(texts[:1]) == ["with_counsellor"]
    pieces = texts[1:]
    assert len(pieces) == 2 and "".join(pieces) == long_text
    assert all(len(p.encode("utf-16-le")) // 2 <= 4096 for p in pieces)
    assert pieces[0].endswith("\n"), "cut at a line break"
    assert [r.status for r in table_rows(client, Outbox)][-1] == OutboxStatus.DELIVERED


def test_split_text_counts_utf16_and_never_loses_text() -> None:
    assert split_text("短い") == ["短い"]
    emoji = "😢" * 3000  # 6000 UTF-16 units
    pieces = split_text(emoji)
    assert "".join(pieces) == emoji
    assert [len(p) for p in pieces] == [2048, 952]
    no_breaks = "あ" * 9000
    assert [len(p) for p in split_text(no_breaks)] == [4096, 4096, 808]


# -- the command line ---------------------------------------------------------------------------------------


def _cli(
    fake: FakeTelegram, tmp_path: Path, *args: str, token: str = TOKEN
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TSUNAGI_")} | {
        "TSUNAGI_VAR_DIR": str(tmp_path / "var"),
        "TSUNAGI_TELEGRAM_BOT_TOKEN": token,
        "TSUNAGI_TELEGRAM_SECRET_TOKEN": SECRET,
        "TSUNAGI_TELEGRAM_API_BASE": fake.base_url,
    }
    tsunagi = ROOT / ".venv" / "bin" / "tsunagi"
    cmd = [str(tsunagi)] if tsunagi.exists() else [sys.executable, "-m", "bot.cli"]
    return subprocess.run(
        [*cmd, "telegram", *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )


def test_set_webhook_sends_the_secret_token(fake: FakeTelegram, tmp_path: Path) -> None:
    url = "https://example.test/webhooks/telegram"
    done = _cli(fake, tmp_path, "set-webhook", url)
    assert done.returncode == 0, done.stderr
    assert url in done.stdout
    assert fake.webhook["url"] == url
    assert fake.webhook["secret_token"] == SECRET
    assert fake.webhook["allowed_updates"] == ["message", "callback_query", "my_chat_member"]


def test_set_webhook_errors_exit_non_zero(fake: FakeTelegram, tmp_path: Path) -> None:
    plain = _cli(fake, tmp_path, "set-webhook", "http://example.test/webhooks/telegram")
    assert plain.returncode != 0 and "https://" in plain.stderr
    wrong = _cli(fake, tmp_path, "set-webhook", "https://example.test/x", token="999:wrong-token")
    assert wrong.returncode != 0 and "token" in wrong.stderr
    assert "999:wrong-token" not in wrong.stderr + wrong.stdout
    assert fake.webhook == {}


async def test_the_real_bot_api_is_never_reached(_offline: list[str], tmp_path: Path) -> None:
    """The guard itself: a Bot left at the default base URL cannot reach api.telegram.org."""
    from telegram.error import NetworkError

    from channels.telegram import make_bot

    settings = make_settings(tmp_path, telegram_bot_token=TOKEN, telegram_secret_token=SECRET)
    assert settings.telegram_api_base == "https://api.telegram.org"
    bot = make_bot(settings)
    with pytest.raises(NetworkError):
        async with bot:
            pass
    assert _offline == ["api.telegram.org"]
    _offline.clear()


def test_names_are_never_stored(client: TestClient, fake: FakeTelegram) -> None:
    update = message("こんばんは")
    update["message"]["from"].update(first_name="花子", last_name="山田", username="hanako_y")
    update["message"]["chat"].update(first_name="花子", last_name="山田", username="hanako_y")
    assert post(client, update) == 200
    processed(client, 1)
    svc = service(client)
    (row,) = table_rows(client, Inbox)
    stored = svc.crypto.decrypt(row.payload_enc)
    for name in ("花子", "山田", "hanako_y"):
        assert name not in stored
    assert "こんばんは" in stored


# -- the safety net: no form or offer between a person and help (bot/dialogue.py) --------------------------


def test_distress_gets_the_direct_question_as_buttons_and_yes_the_crisis_path(
    client: TestClient, fake: FakeTelegram
) -> None:
    consent(client, fake)
    assert post(client, message("何もかも終わらせたい")) == 200
    question = fake.wait_sent(CHAT, 3)[2]
    assert reply_keys([question["text"]]) == ["ask_danger"]
    rows = question["reply_markup"]["inline_keyboard"]
    assert [[b["text"] for b in row] for row in rows] == [["はい"], ["いいえ"], ["わからない"]]
    assert post(client, press(question, "はい")) == 200
    crisis = fake.wait_sent(CHAT, 4)[3]["text"]
    assert reply_keys([crisis]) == ["crisis"] and "110" in crisis and "119" in crisis
    processed(client, 4)
    conv = conversation(client)
    assert (conv.state, conv.risk, conv.danger_answer) == (State.WAITING, "crisis", "yes")


def test_no_by_button_goes_on_and_high_goes_to_the_queue_at_once(
    client: TestClient, fake: FakeTelegram
) -> None:
    consent(client, fake)
    assert post(client, message("何もかも終わらせたい")) == 200
    question = fake.wait_sent(CHAT, 3)[2]
    assert post(client, press(question, "いいえ")) == 200
    sent = fake.wait_sent(CHAT, 5)
    assert reply_keys([m["text"] for m in sent[3:]]) == ["danger_no", "offer"]
    assert post(client, message("実は彼氏に毎日殴られていて、家に帰るのがこわい")) == 200
    sent = fake.wait_sent(CHAT, 7)
    assert reply_keys([m["text"] for m in fake.wait_sent(CHAT, 8)[5:]]) == [
        "waiting",
        "waiting_safety",
        "ask_age",
    ]
    processed(client, 5)
    assert conversation(client).state == State.WAITING
