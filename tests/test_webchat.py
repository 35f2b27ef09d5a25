"""The web chat's protocol (``GET /chat`` and ``GET /chat/ws``), through Starlette's TestClient.

Frames interleave: an ``ack`` may come before or after the bot's reply, and ``status`` frames come from
a background watcher. So the tests never assume a fixed order beyond what the server guarantees
(the session frame first; on resume, history before the first status frame) and read frames with a
bounded wait (``recv``, tests/helpers.py) until the one they want (``wait_for``).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from starlette.testclient import WebSocketTestSession
from starlette.websockets import WebSocketDisconnect

from bot.models import Media
from bot.web import create_app
from tests.engine_helpers import reply_keys
from tests.helpers import (
    CRISIS,
    Frame,
    drain,
    hello,
    is_ack,
    is_bot,
    is_status,
    make_settings,
    recv,
    start_fresh,
    wait_for,
)
from tests.pictures import screenshot

# -- helpers ---------------------------------------------------------------------------------------------


def say(ws: WebSocketTestSession, text: str, msg_id: str) -> list[Frame]:
    """Send a message and wait until it is acknowledged and at least one bot reply arrived; then
    collect what else comes until the socket is quiet."""
    ws.send_json({"type": "message", "text": text, "id": msg_id})
    frames: list[Frame] = []
    while not (any(is_ack(msg_id)(f) for f in frames) and any(is_bot(f) for f in frames)):
        _, seen = wait_for(ws, lambda f: is_ack(msg_id)(f) or is_bot(f), what=f"ack/reply for {msg_id}")
        frames += seen
    return frames + drain(ws)


def messages(frames: list[Frame]) -> list[Frame]:
    return [f for f in frames if f.get("type") == "message"]


def history(frames: list[Frame]) -> list[tuple[str, str]]:
    """(from, text) of the replayed history frames, in order."""
    out = []
    for f in messages(frames):
        assert f.get("history") is True, f"a message before the first status must be history: {f}"
        out.append((f["from"], f["text"]))
    return out


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(tmp_path))) as c:
        yield c


# -- the page --------------------------------------------------------------------------------------------


def test_chat_page_is_html_with_security_headers_and_no_transcript(client: TestClient) -> None:
    # A conversation first: the page served afterwards must not carry any of it.
    with client.websocket_connect("/chat/ws") as ws:
        start_fresh(ws)
        say(ws, "同意", "c1")
        say(ws, "ひみつのことば・かきくけこ", "m1")

    response = client.get("/chat")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    h = response.headers
    csp = h["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp
    assert "connect-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "no-store" in h["cache-control"]
    assert h["referrer-policy"] == "no-referrer"
    assert h["x-frame-options"].upper() == "DENY"
    assert h["x-content-type-options"] == "nosniff"

    body = response.text
    assert "ひみつのことば" not in body
    assert "こんにちは。ここは相談窓口" not in body  # the welcome arrives over the socket, not in the page
    log = re.search(r'<ol id="log"[^>]*>(.*?)</ol>', body, re.S)
    assert log is not None, "the page has no #log list"
    assert log.group(1).strip() == "", "the page is served with a transcript in it"
    assert '<script src="/chat/static/chat.js"' in body
    assert "<script>" not in body  # no inline script (the CSP would block it anyway)


def test_chat_page_escapes_the_quick_exit_url(tmp_path: Path) -> None:
    url = 'https://example.org/?a=1&b="x"<y>'
    with TestClient(create_app(make_settings(tmp_path, quick_exit_url=url))) as c:
        body = c.get("/chat").text
    assert 'data-url="https://example.org/?a=1&amp;b=&quot;x&quot;&lt;y&gt;"' in body
    assert "{{quick_exit_url}}" not in body


def test_chat_static_files_and_no_path_traversal(client: TestClient) -> None:
    js = client.get("/chat/static/chat.js")
    assert js.status_code == 200
    assert "javascript" in js.headers["content-type"]
    assert client.get("/chat/static/chat.css").status_code == 200
    assert client.get("/chat/static/nothing.js").status_code == 404
    assert client.get("/chat/static/..%2F__init__.py").status_code == 404


# -- the socket --------------------------------------------------------------------------------------------


def test_hello_gets_a_session_the_welcome_and_a_status(client: TestClient) -> None:
    with client.websocket_connect("/chat/ws") as ws:
        token, frames = start_fresh(ws)
        frames += drain(ws)
    bots = [f for f in frames if is_bot(f)]
    assert reply_keys([f["text"] for f in bots]) == ["welcome"]
    assert bots[0]["quick_replies"] == ["同意して話す", "同意しない"]
    assert not any(f.get("history") for f in frames)
    statuses = [f for f in frames if is_status(f)]
    assert statuses and statuses[0]["state"] == "bot" and statuses[0]["position"] is None
    assert re.fullmatch(r"[A-Za-z0-9_-]{20,128}", token)


def test_each_hello_without_resume_is_a_new_person(client: TestClient) -> None:
    with client.websocket_connect("/chat/ws") as ws:
        a, _ = start_fresh(ws)
    with client.websocket_connect("/chat/ws") as ws:
        b, frames = start_fresh(ws)
    assert a != b
    assert reply_keys([f["text"] for f in frames if is_bot(f)]) == ["welcome"]


def test_a_message_with_an_id_is_acknowledged(client: TestClient) -> None:
    with client.websocket_connect("/chat/ws") as ws:
        start_fresh(ws)
        frames = say(ws, "同意", "id-1")
        acks = [f for f in frames if f.get("type") == "ack"]
        assert acks == [{"type": "ack", "id": "id-1"}]
        assert reply_keys([f["text"] for f in frames if is_bot(f)]) == ["listening"]
        # Without an id there is a reply but no ack.
        ws.send_json({"type": "message", "text": "学校で友だちとうまくいかなくて悩んでいます"})
        wait_for(ws, is_bot, what="the reply to a message without an id")
        rest = drain(ws)
        assert not any(f.get("type") == "ack" for f in rest)


def test_crisis_gets_110_119_and_waiting_with_a_position(client: TestClient) -> None:
    with client.websocket_connect("/chat/ws") as ws:
        start_fresh(ws)
        say(ws, "同意", "c1")
        ws.send_json({"type": "message", "text": CRISIS, "id": "k1"})
        crisis, seen = wait_for(ws, lambda f: is_bot(f) and "110" in f["text"], what="the crisis reply")
        seen += drain(ws)
    assert "110" in crisis["text"] and "119" in crisis["text"]
    assert "crisis" in reply_keys([f["text"] for f in seen if is_bot(f)])
    assert any(is_ack("k1")(f) for f in seen)
    waiting = [f for f in seen if is_status(f) and f["state"] == "waiting"]
    assert waiting, f"no waiting status: {seen}"
    assert isinstance(waiting[-1]["position"], int) and waiting[-1]["position"] >= 1


def test_reconnecting_with_the_token_replays_the_history_in_order(client: TestClient) -> None:
    story = "学校で友だちとうまくいかなくて悩んでいます"
    with client.websocket_connect("/chat/ws") as ws:
        token, first = start_fresh(ws)
        welcome = [f["text"] for f in first if is_bot(f)]
        listening = [f["text"] for f in say(ws, "同意", "c1") if is_bot(f)]
        answer = [f["text"] for f in say(ws, story, "m1") if is_bot(f)]
    assert reply_keys(welcome) == ["welcome"] and reply_keys(listening) == ["listening"]
    assert answer

    with client.websocket_connect("/chat/ws") as ws:
        again, frames = hello(ws, token)
        rest = drain(ws)
    assert again == token
    # Exactly the conversation, in order, each line once: the person's own lines as "user".
    assert history(frames) == [
        ("bot", welcome[0]),
        ("user", "同意"),
        ("bot", listening[0]),
        ("user", story),
        *[("bot", t) for t in answer],
    ]
    for f in messages(frames):
        assert f["quick_replies"] == []
    assert messages(rest) == [], f"messages sent again after the replay: {rest}"
    statuses = [f for f in frames if is_status(f)]
    assert statuses[-1] == {"type": "status", "state": "bot", "position": None}


def test_resume_twice_gives_the_same_history_and_new_lines_continue_it(client: TestClient) -> None:
    story = "学校で友だちとうまくいかなくて悩んでいます"
    with client.websocket_connect("/chat/ws") as ws:
        token, _ = start_fresh(ws)
        say(ws, "同意", "c1")
    with client.websocket_connect("/chat/ws") as ws:
        _, first = hello(ws, token)
        answer = [f["text"] for f in say(ws, story, "m1") if is_bot(f)]
    with client.websocket_connect("/chat/ws") as ws:
        _, second = hello(ws, token)
    h1, h2 = history(first), history(second)
    assert [w for w, _ in h1] == ["bot", "user", "bot"]
    assert h2 == [*h1, ("user", story), *[("bot", t) for t in answer]]


UNUSABLE_TOKENS: list[Any] = [
    "no-such-token",
    "",
    "x" * 128,
    "x" * 129,
    "x" * 10_000,
    "../../etc/passwd",
    "' OR 1=1 --",
    "%00",
    123,
    ["a"],
    {"token": "a"},
    True,
]


def test_an_unknown_garbage_or_overlong_resume_token_starts_a_new_session(client: TestClient) -> None:
    with client.websocket_connect("/chat/ws") as ws:
        someone, _ = start_fresh(ws)
        say(ws, "同意", "c1")
        say(ws, "だれにも言えないひみつ", "m1")
    near = [someone + "x", someone + "x" * 200, someone[:-1], someone.swapcase(), " " + someone]
    given: list[str] = []
    for resume in [*UNUSABLE_TOKENS, *near]:
        assert resume != someone
        with client.websocket_connect("/chat/ws") as ws:
            token, frames = start_fresh(ws, resume)
        label = repr(resume)[:40]
        assert token not in (someone, resume), label
        assert not any(f.get("history") for f in frames), f"history replayed for {label}"
        assert all("ひみつ" not in json.dumps(f, ensure_ascii=False) for f in frames), label
        assert reply_keys([f["text"] for f in frames if is_bot(f)]) == ["welcome"], label
        given.append(token)
    assert len(set(given)) == len(given), "two new sessions got the same token"
    # The owner still resumes their own conversation, unharmed by the attempts.
    with client.websocket_connect("/chat/ws") as ws:
        again, frames = hello(ws, someone)
    assert again == someone
    assert ("user", "だれにも言えないひみつ") in history(frames)


BAD_FRAMES = [
    ("{not json", "not JSON"),
    ("[1, 2, 3]", "not an object"),
    ('"message"', "a bare string"),
    ("", "an empty frame"),
    (json.dumps({"type": "hello", "resume": None}), "a second hello"),
    (json.dumps({"type": "typing"}), "an unknown type"),
    (json.dumps({"type": "message"}), "no text"),
    (json.dumps({"type": "message", "text": 5}), "text not a string"),
    (json.dumps({"type": "message", "text": None, "id": "x"}), "null text"),
    (json.dumps({"type": "message", "text": ["a"], "id": "y"}), "text a list"),
    ("[" * 10_000, "deeply nested"),
]


def test_malformed_json_or_a_wrong_frame_gets_an_error_and_the_connection_keeps_working(
    client: TestClient,
) -> None:
    with client.websocket_connect("/chat/ws") as ws:
        token, _ = start_fresh(ws)
        for raw, why in BAD_FRAMES:
            ws.send_text(raw)
            error, seen = wait_for(ws, lambda f: f.get("type") == "error", what=f"an error for {why}")
            assert isinstance(error.get("error"), str) and error["error"], why
            assert not any(f.get("type") in ("ack", "session") or is_bot(f) for f in seen), why
        assert not any(f.get("type") in ("session", "error") or is_bot(f) for f in drain(ws))
        frames = say(ws, "同意", "after-errors")
    assert any(is_ack("after-errors")(f) for f in frames)
    assert reply_keys([f["text"] for f in frames if is_bot(f)]) == ["listening"]
    with client.websocket_connect("/chat/ws") as ws:
        again, frames = hello(ws, token)
    assert again == token
    replay = history(frames)
    assert [w for w, _ in replay] == ["bot", "user", "bot"], f"a bad frame was stored: {replay}"
    assert replay[1] == ("user", "同意")


@pytest.mark.parametrize(
    "first",
    [
        json.dumps({"type": "message", "text": "こんにちは"}),
        json.dumps({"type": "message", "text": "こんにちは", "id": "1"}),
        "{not json",
        "[]",
        json.dumps({"resume": None}),
        json.dumps({"type": "HELLO", "resume": None}),
    ],
    ids=["message", "message-with-id", "garbage", "array", "no-type", "wrong-case"],
)
def test_a_first_frame_that_is_not_hello_gets_an_error_and_the_socket_closes(
    client: TestClient, first: str
) -> None:
    with client.websocket_connect("/chat/ws") as ws:
        ws.send_text(first)
        error = recv(ws)
        assert error.get("type") == "error" and error.get("error"), error
        with pytest.raises(WebSocketDisconnect) as closed:
            recv(ws)
        assert closed.value.code == 1008
    # Nothing was started: a later hello is a new person with only the welcome.
    with client.websocket_connect("/chat/ws") as ws:
        _, frames = start_fresh(ws)
    assert reply_keys([f["text"] for f in frames if is_bot(f)]) == ["welcome"]


def test_a_resent_message_is_stored_and_answered_once(client: TestClient) -> None:
    text = "学校で友だちとうまくいかなくて悩んでいます"
    with client.websocket_connect("/chat/ws") as ws:
        token, _ = start_fresh(ws)
        say(ws, "同意", "c1")
        answered = say(ws, text, "m1")
        replies = [f["text"] for f in answered if is_bot(f)]
        assert replies
        # The same frame again on the same socket (a page that did not see the ack in time).
        ws.send_json({"type": "message", "text": text, "id": "m1"})
        wait_for(ws, is_ack("m1"), what="the ack of the duplicate")
        assert not [f for f in drain(ws, 1.0) if is_bot(f)], "the duplicate was answered again"

    # The page reconnects and resends what it had not seen acknowledged: the same id.
    with client.websocket_connect("/chat/ws") as ws:
        again, _ = hello(ws, token)
        assert again == token
        ws.send_json({"type": "message", "text": text, "id": "m1"})
        _, seen = wait_for(ws, is_ack("m1"), what="the ack of the resend")
        seen += drain(ws, 1.0)
        assert not [f for f in seen if is_bot(f)], f"the resend was answered again: {seen}"

    with client.websocket_connect("/chat/ws") as ws:
        _, frames = hello(ws, token)
    replay = history(frames)
    assert [t for w, t in replay if w == "user"] == ["同意", text]
    bot_lines = [t for w, t in replay if w == "bot"]
    assert bot_lines[-len(replies) :] == replies
    assert len(bot_lines) == 2 + len(replies)  # welcome, listening, and the one answer


@pytest.mark.parametrize("length", [1, 36, 64, 65, 200])
def test_a_resent_id_of_any_length_is_never_stored_twice(client: TestClient, length: int) -> None:
    """The page uses UUIDs (36 characters), but the promise "the same id is stored once" must not
    quietly stop at some length: a longer id is either refused with an error or deduplicated too."""
    msg_id = "i" * length
    text = f"同じidを{length}文字で二回送ります"
    with client.websocket_connect("/chat/ws") as ws:
        token, _ = start_fresh(ws)
        say(ws, "同意", "c1")
        for _ in range(2):
            ws.send_json({"type": "message", "text": text, "id": msg_id})
            wait_for(
                ws, lambda f: is_ack(msg_id)(f) or f.get("type") == "error", what=f"ack/error ({length})"
            )
            drain(ws)
    with client.websocket_connect("/chat/ws") as ws:
        _, frames = hello(ws, token)
    stored = [t for w, t in history(frames) if w == "user"].count(text)
    assert stored <= 1, f"an id of {length} characters was acknowledged twice and stored {stored} times"


def test_a_binary_frame_gets_an_error_and_the_connection_keeps_working(client: TestClient) -> None:
    with client.websocket_connect("/chat/ws") as ws:
        start_fresh(ws)
        ws.send_bytes(json.dumps({"type": "message", "text": "同意", "id": "b1"}).encode())
        error, seen = wait_for(ws, lambda f: f.get("type") == "error", what="an error for a binary frame")
        assert error["error"]
        frames = say(ws, "同意", "after-binary")
    assert any(is_ack("after-binary")(f) for f in frames)


def test_text_with_a_lone_surrogate_does_not_break_the_connection(client: TestClient) -> None:
    """JSON may carry a lone UTF-16 surrogate (JSON.stringify writes one as an escape, e.g. for an emoji
    cut in half): it must get an error frame or be stored with a replacement, never kill the socket."""
    with client.websocket_connect("/chat/ws") as ws:
        token, _ = start_fresh(ws)
        say(ws, "同意", "c1")
        ws.send_text(r'{"type": "message", "text": "\ud83d", "id": "s1"}')  # half an emoji, as JSON
        wait_for(ws, lambda f: is_ack("s1")(f) or f.get("type") == "error", what="an ack or an error")
        drain(ws)
        frames = say(ws, "学校で友だちとうまくいかなくて悩んでいます", "after")
    assert any(is_ack("after")(f) for f in frames)
    with client.websocket_connect("/chat/ws") as ws:
        again, frames = hello(ws, token)
    assert again == token
    for f in messages(frames):
        f["text"].encode("utf-8")  # whatever was stored is valid text


def test_the_same_client_id_from_two_people_is_two_messages(client: TestClient) -> None:
    tokens = []
    for _ in range(2):
        with client.websocket_connect("/chat/ws") as ws:
            token, _ = start_fresh(ws)
            frames = say(ws, "同意", "1")
            assert reply_keys([f["text"] for f in frames if is_bot(f)]) == ["listening"]
            tokens.append(token)
    for token in tokens:
        with client.websocket_connect("/chat/ws") as ws:
            _, frames = hello(ws, token)
        assert ("user", "同意") in history(frames)


def test_a_frame_over_64_kib_gets_an_error_and_is_not_stored(client: TestClient) -> None:
    huge = "あ" * (64 * 1024 + 10)
    with client.websocket_connect("/chat/ws") as ws:
        token, _ = start_fresh(ws)
        say(ws, "同意", "c1")
        ws.send_json({"type": "message", "text": huge, "id": "big"})
        error, seen = wait_for(ws, lambda f: f.get("type") == "error", what="an error for a huge frame")
        assert error["error"]
        seen += drain(ws)
        assert not any(is_ack("big")(f) or is_bot(f) for f in seen)
        frames = say(ws, "学校で友だちとうまくいかなくて悩んでいます", "after")
        assert any(is_ack("after")(f) for f in frames)
    with client.websocket_connect("/chat/ws") as ws:
        _, frames = hello(ws, token)
    users = [t for w, t in history(frames) if w == "user"]
    assert users == ["同意", "学校で友だちとうまくいかなくて悩んでいます"]


def test_markup_comes_back_as_the_same_literal_text(client: TestClient) -> None:
    markup = "<script>alert(1)</script> & <b>太字</b> \"quoted\" 'single'"
    with client.websocket_connect("/chat/ws") as ws:
        token, _ = start_fresh(ws)
        say(ws, "同意", "c1")
        say(ws, markup, "x1")
    with client.websocket_connect("/chat/ws") as ws:
        _, frames = hello(ws, token)
    assert ("user", markup) in history(frames)
    raw_users = [f["text"] for f in messages(frames) if f["from"] == "user"]
    assert markup in raw_users  # not escaped, not stripped: the page shows it as text


def test_a_picture_from_the_attach_button_is_kept_and_a_non_picture_refused(client: TestClient) -> None:
    svc = client.app.state.service  # type: ignore[attr-defined]
    with client.websocket_connect("/chat/ws") as ws:
        token, _ = start_fresh(ws)
        say(ws, "同意", "c1")
        data = base64.b64encode(screenshot()).decode()
        ws.send_json({"type": "image", "data": data, "name": "スクショ.png", "id": "img-1"})
        note, seen = wait_for(ws, is_bot, what="the note on the picture")
        seen += drain(ws)
        assert reply_keys([note["text"]]) == ["media_picture_kept"]
        assert any(is_ack("img-1")(f) for f in seen)
        fake = base64.b64encode(b"MZ\x90\x00 a program, not a picture").decode()
        ws.send_json({"type": "image", "data": fake, "name": "photo.jpg", "id": "img-2"})
        refused, _ = wait_for(ws, is_bot, what="the refusal")
        assert reply_keys([refused["text"]]) == ["attachments_not_kept"] and "開けない画像" in refused["text"]
        drain(ws)
        ws.send_json({"type": "image", "data": "not base64!", "id": "img-3"})
        error, _ = wait_for(ws, lambda f: f.get("type") == "error", what="an error frame")
        assert "base64" in error["error"]

    async def stored() -> list[Any]:
        async with svc.db.session() as s:
            return list((await s.scalars(select(Media))).all())

    assert client.portal is not None
    (media,) = client.portal.call(stored)
    assert media.content_type == "image/jpeg" and (media.width, media.height) == (390, 844)

    with client.websocket_connect("/chat/ws") as ws:
        _, frames = hello(ws, token)
    users = [f for f in messages(frames) if f["from"] == "user"]
    assert [f.get("kind") for f in users] == [None, "image", "image"], "the page says a picture was sent"


# -- the safety net: no form or offer between a person and help (bot/dialogue.py) --------------------------

HOPELESS = "もう何もかも疲れた。どうでもいい"  # exhaustion, hopelessness, no harm named
DANGER_CHOICES = ["はい", "いいえ", "わからない"]


def bot_keys(frames: list[Frame]) -> list[str]:
    return reply_keys([f["text"] for f in frames if is_bot(f)])


def test_a_hopeless_message_gets_the_direct_question_with_buttons_and_yes_the_crisis_path(
    client: TestClient,
) -> None:
    with client.websocket_connect("/chat/ws") as ws:
        start_fresh(ws)
        say(ws, "同意", "c1")
        frames = say(ws, HOPELESS, "m1")
        assert bot_keys(frames) == ["offer", "ask_danger"], "a counsellor offered, then the question"
        question = [f for f in frames if is_bot(f)][-1]
        assert "死にたい" in question["text"] and question["quick_replies"] == DANGER_CHOICES
        frames = say(ws, "はい", "m2")
        assert bot_keys(frames) == ["crisis", "ask_age"]  # (no intake yet: the age band is asked once)
        crisis = [f for f in frames if is_bot(f)][0]["text"]
        assert "110" in crisis and "119" in crisis
        if not any(is_status(f) and f["state"] == "waiting" for f in frames):
            wait_for(ws, lambda f: is_status(f) and f["state"] == "waiting", what="the waiting status")


@pytest.mark.parametrize(
    ("answer", "replies"), [("いいえ", ["danger_no", "offer_again"]), ("わからない", ["crisis", "ask_age"])]
)
def test_the_direct_questions_other_answers(client: TestClient, answer: str, replies: list[str]) -> None:
    with client.websocket_connect("/chat/ws") as ws:
        start_fresh(ws)
        say(ws, "同意", "c1")
        say(ws, HOPELESS, "m1")
        assert bot_keys(say(ws, answer, "m2")) == replies
        # Asked once: more of the same distress does not bring the question back.
        if answer == "いいえ":
            assert bot_keys(say(ws, "もう何もかも疲れた", "m3")) == ["offer_again"]


def test_an_intake_answer_that_is_not_one_is_read_as_a_message(client: TestClient) -> None:
    """The issue's case: a message the triage does not take for what it is, then the questions; the next
    message is not the prefecture's answer but a message, and the questions stop."""
    with client.websocket_connect("/chat/ws") as ws:
        start_fresh(ws)
        say(ws, "同意", "c1")
        assert bot_keys(say(ws, "学校で友だちとうまくいかなくて悩んでいます", "m1")) == [
            "intake_intro",
            "intake_age",
        ]
        assert bot_keys(say(ws, "16〜18歳", "m2")) == ["intake_prefecture"]
        assert bot_keys(say(ws, "もう終わり。全部準備できた", "m3")) == ["offer"]
        # (今夜、全部終わらせる was the example: the triage reads it as a crisis now, "tonight" a sign.)
        assert bot_keys(say(ws, "もう全部終わらせたい", "m4")) == ["ask_danger"], "distress: asked at once"


def test_high_goes_to_the_queue_at_once_and_medium_gets_a_counsellor_first(client: TestClient) -> None:
    with client.websocket_connect("/chat/ws") as ws:
        start_fresh(ws)
        say(ws, "同意", "c1")
        frames = say(ws, "夫に毎日殴られていて、家に帰るのがこわいです", "m1")
        assert bot_keys(frames) == ["waiting", "waiting_safety", "ask_age"], "no offer to accept first"
        if not any(is_status(f) and f["state"] == "waiting" for f in frames):
            wait_for(ws, lambda f: is_status(f) and f["state"] == "waiting", what="the waiting status")
    with client.websocket_connect("/chat/ws") as ws:
        start_fresh(ws)
        say(ws, "同意", "c1")
        frames = say(ws, "最近ちょっと学校に行きづらくて", "m1")
        assert bot_keys(frames) == ["offer_counsellor", "intake_age"]
        offer = [f for f in frames if is_bot(f)][0]
        assert "相談員" in offer["text"] and offer["quick_replies"] == ["相談員と話したい"]
