"""The e-mail channel end to end, with real SMTP over loopback on both sides: mail is sent with smtplib to
the service's own listener (TSUNAGI_SMTP_LISTEN on a free port, the real app in a TestClient with its
inbox and outbox workers), and replies go through aiosmtplib to a fake relay (an aiosmtpd Controller that
records what it is given and can refuse with 451 for a while). Every wait is bounded; only 127.0.0.1.
"""

from __future__ import annotations

import base64
import re
import smtplib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import make_msgid, parseaddr
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlmodel import col

from bot.models import Conversation, Inbox, InboxStatus, Outbox, OutboxStatus
from bot.service import Service
from bot.web import create_app
from channels.email import EmailChannel
from channels.email.parse import decode_bytes, html_to_text, parse_mail, strip_quoted
from tests.conftest import make_settings
from tests.engine_helpers import reply_keys

ADDRESS = "soudan@tsunagi.example"
USER = "hanako@example.jp"
CRISIS = "もう死にたい。今から飛び降りる"
CALM = "最近、部活のことで少し悩んでいます。"
WAIT = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- the fake relay ---------------------------------------------------------------------------------------


class FakeRelay:
    """An SMTP relay that keeps every mail it accepts; ``refuse`` mails are first answered 451."""

    def __init__(self) -> None:
        self.received: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.attempts = 0
        self.refuse = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            self.attempts += 1
            if self.refuse > 0:
                self.refuse -= 1
                return "451 4.3.0 Try again later"
            raw = envelope.content
            assert isinstance(raw, bytes)
            msg = message_from_bytes(raw, policy=policy.default)
            assert isinstance(msg, EmailMessage)
            self.received.append(msg)
            self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        with self.lock:
            return [m for m in self.received if parseaddr(str(m["To"]))[1] == address]

    def wait(self, address: str, count: int, timeout: float = WAIT) -> list[EmailMessage]:
        eventually(lambda: len(self.to(address)) >= count, f"{count} mails to {address}", timeout)
        return self.to(address)


@pytest.fixture
def relay() -> Iterator[tuple[FakeRelay, int]]:
    fake = FakeRelay()
    port = free_port()
    controller = Controller(fake, hostname="127.0.0.1", port=port, server_hostname="relay.test")
    controller.start()
    try:
        yield fake, port
    finally:
        controller.stop()


def app(tmp_path: Path, relay_port: int | None, **overrides: Any) -> TestClient:
    settings = make_settings(
        tmp_path,
        smtp_listen=f"127.0.0.1:{free_port()}",
        smtp_relay=f"127.0.0.1:{relay_port}" if relay_port else "",
        mail_address=ADDRESS,
        loopback_channel=False,
        **overrides,
    )
    return TestClient(create_app(settings))


@pytest.fixture
def client(tmp_path: Path, relay: tuple[FakeRelay, int]) -> Iterator[TestClient]:
    with app(tmp_path, relay[1]) as c:
        yield c


@pytest.fixture
def fake(relay: tuple[FakeRelay, int]) -> FakeRelay:
    return relay[0]


# -- helpers ----------------------------------------------------------------------------------------------


def eventually(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def service(client: TestClient) -> Service:
    svc = client.app.state.service  # type: ignore[attr-defined]
    assert isinstance(svc, Service)
    return svc


def channel(client: TestClient) -> EmailChannel:
    ch = service(client).channels["email"]
    assert isinstance(ch, EmailChannel)
    return ch


def listener(client: TestClient) -> int:
    port = channel(client).port
    assert port is not None
    return port


def in_app(client: TestClient, work: Callable[[], Any]) -> Any:
    assert client.portal is not None
    return client.portal.call(work)


def rows(client: TestClient, model: type[Any]) -> list[Any]:
    async def work() -> list[Any]:
        async with service(client).db.session() as s:
            return list((await s.scalars(select(model).order_by(col(model.id)))).all())

    result: list[Any] = in_app(client, work)
    return result


def conversations(client: TestClient) -> list[Conversation]:
    async def work() -> list[Conversation]:
        async with service(client).db.session() as s:
            return list((await s.scalars(select(Conversation))).all())

    result: list[Conversation] = in_app(client, work)
    return result


def settled(client: TestClient, count: int) -> None:
    """``count`` mails stored and processed, and the outbox idle."""
    eventually(
        lambda: (
            len(inbox := rows(client, Inbox)) == count and all(r.status == InboxStatus.DONE for r in inbox)
        ),
        f"{count} processed mails",
    )
    eventually(
        lambda: all(r.status in (OutboxStatus.DELIVERED, OutboxStatus.FAILED) for r in rows(client, Outbox)),
        "the outbox to be idle",
    )


def smtp(client: TestClient) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", listener(client), local_hostname="client.test", timeout=10)


def deliver(client: TestClient, raw: bytes, sender: str = USER, to: str = ADDRESS) -> None:
    with smtp(client) as s:
        s.sendmail(sender, [to], wire(raw))


def wire(raw: bytes) -> bytes:
    """CRLF line ends, as on the wire (smtplib sends bytes as they are)."""
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def mail(
    text: str,
    *,
    subject: str = "相談したいことがあります",
    sender: str = USER,
    to: str = ADDRESS,
    reply_to: EmailMessage | None = None,
    headers: dict[str, str] | None = None,
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"花子 <{sender}>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain="example.jp")
    if reply_to is not None:
        msg["In-Reply-To"] = str(reply_to["Message-ID"])
        msg["References"] = f"{reply_to.get('References', '')} {reply_to['Message-ID']}".strip()
    for k, v in (headers or {}).items():
        msg[k] = v
    msg.set_content(text)
    return msg


def body(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert isinstance(part, EmailMessage)
    content = part.get_content()
    assert isinstance(content, str)
    return content


def keys(msgs: list[EmailMessage]) -> list[str]:
    """The template of each reply, the numbered choices (quick replies as text) taken off."""
    texts = [re.sub(r"(\n\d+\. [^\n]*)+$", "", body(m).replace("\r\n", "\n").rstrip("\n")) for m in msgs]
    return reply_keys(texts)


def consent(client: TestClient, fake: FakeRelay) -> EmailMessage:
    """First mail (welcome), then "同意して話す" as a reply (listening); returns the last reply."""
    deliver(client, mail("こんにちは").as_bytes())
    welcome = fake.wait(USER, 1)[0]
    assert keys([welcome]) == ["welcome"]
    deliver(client, mail("同意して話す", subject=f"Re: {welcome['Subject']}", reply_to=welcome).as_bytes())
    replies = fake.wait(USER, 2)
    assert keys(replies[1:]) == ["listening"]
    return replies[1]


# -- the conversation -------------------------------------------------------------------------------------


def test_a_plain_mail_gets_a_threaded_japanese_reply(client: TestClient, fake: FakeRelay) -> None:
    first = mail("こんにちは。話を聞いてほしいです。")
    deliver(client, first.as_bytes())
    reply = fake.wait(USER, 1)[0]
    assert keys([reply]) == ["welcome"]
    assert "1. 同意して話す" in body(reply), "quick replies become numbered text"
    assert reply["In-Reply-To"] == first["Message-ID"]
    assert first["Message-ID"] in str(reply["References"])
    assert str(reply["Subject"]) == "Re: 相談したいことがあります"
    assert "=?utf-8?" in reply.as_string().lower(), "the subject is encoded on the wire"
    assert parseaddr(str(reply["From"]))[1] == ADDRESS
    reply_to = parseaddr(str(reply["Reply-To"]))[1]
    assert re.fullmatch(r"soudan\+[0-9a-f]{16}@tsunagi\.example", reply_to)
    assert reply["Auto-Submitted"] == "auto-replied"
    assert reply["Message-ID"].endswith("@tsunagi.example>")
    assert fake.envelopes[0] == (ADDRESS, [USER])
    settled(client, 1)
    assert [c.channel for c in conversations(client)] == ["email"]


def test_crisis_mail_gets_emergency_numbers(client: TestClient, fake: FakeRelay) -> None:
    deliver(client, mail(CRISIS).as_bytes())
    eventually(lambda: "crisis" in keys(fake.to(USER)), "the crisis reply")
    crisis = body(fake.to(USER)[keys(fake.to(USER)).index("crisis")])
    assert "110" in crisis and "119" in crisis


def test_the_subject_of_a_new_mail_is_read(client: TestClient, fake: FakeRelay) -> None:
    deliver(client, mail("聞いてください", subject=CRISIS).as_bytes())
    eventually(lambda: "crisis" in keys(fake.to(USER)), "the crisis reply")


def test_a_reply_to_our_mail_continues_the_same_conversation(client: TestClient, fake: FakeRelay) -> None:
    listening = consent(client, fake)
    welcome = fake.to(USER)[0]
    assert listening["In-Reply-To"] != welcome["In-Reply-To"], "threaded to the person's latest mail"
    to_plus = parseaddr(str(listening["Reply-To"]))[1]
    deliver(client, mail(CALM, reply_to=listening, to=to_plus).as_bytes(), to=to_plus)
    settled(client, 3)
    assert len(conversations(client)) == 1
    replies = fake.to(USER)
    assert len(replies) >= 3
    assert "crisis" not in keys(replies[2:])
    assert listening["Message-ID"] in str(replies[2]["References"])


QUOTES = {
    "angle": "{new}\n\n> {old}\n> よろしくお願いします\n",
    "japanese": "{new}\n\n2026年11月25日(水) 10:00 つなぎ <soudan@tsunagi.example>:\n{old}\n",
    "outlook": "{new}\n\n-----Original Message-----\nFrom: つなぎ\nSent: 2026/11/25\n{old}\n",
    "english": "{new}\n\nOn Wed, Nov 25, 2026 at 10:00 AM つなぎ <soudan@tsunagi.example>\nwrote:\n{old}\n",
    "signature": "{new}\n\n-- \n山田花子\n{old}\n",
}


@pytest.mark.parametrize("style", sorted(QUOTES))
def test_only_the_new_text_is_triaged(client: TestClient, fake: FakeRelay, style: str) -> None:
    listening = consent(client, fake)
    text = QUOTES[style].format(new=CALM, old=CRISIS)
    deliver(client, mail(text, subject="Re: ご相談", reply_to=listening).as_bytes())
    settled(client, 3)
    replies = fake.to(USER)[2:]
    assert replies, "the calm mail is answered"
    assert "crisis" not in keys(replies)
    assert all(c.risk != "crisis" for c in conversations(client))


def test_iso2022jp_as_outlook_writes_it(client: TestClient, fake: FakeRelay) -> None:
    deliver(client, _outlook_mail())
    reply = fake.wait(USER, 1)[0]
    assert keys([reply]) == ["welcome"]
    assert str(reply["Subject"]) == "Re: 相談①について"


def test_shift_jis_and_html_only_mails_are_answered(client: TestClient, fake: FakeRelay) -> None:
    deliver(client, _sjis_mail("ｶﾀｶﾅの件名です", "こんにちは、よろしくお願いします。"))
    assert keys(fake.wait(USER, 1)) == ["welcome"]
    assert str(fake.to(USER)[0]["Subject"]) == "Re: ｶﾀｶﾅの件名です"
    html = EmailMessage()
    html["From"] = USER
    html["To"] = ADDRESS
    html["Subject"] = "Re: ご相談"
    html["Message-ID"] = make_msgid(domain="example.jp")
    html.set_content("<html><body><p>同意して話す</p></body></html>", subtype="html")
    deliver(client, html.as_bytes())
    # The first mail's subject and text told something already: consent thanks them for it.
    assert keys(fake.wait(USER, 2)[1:2]) == ["listening_after_consent_with_story"]


def test_attachments_are_counted_not_kept(client: TestClient, fake: FakeRelay) -> None:
    listening = consent(client, fake)
    msg = mail(CALM, reply_to=listening)
    msg.add_attachment(b"\x89PNG\r\n\x1a\n" + b"\0" * 2000, maintype="image", subtype="png", filename="a.png")
    deliver(client, msg.as_bytes())
    settled(client, 3)
    assert "media_unreadable" in keys(fake.to(USER)[2:])

    async def payload() -> str:
        rows_ = [r for r in await _inbox(client)]
        return service(client).inbox.crypto.decrypt(rows_[-1].payload_enc)

    stored = in_app(client, payload)
    assert '"attachments": 1' in stored and "PNG" not in stored and "a.png" not in stored


async def _inbox(client: TestClient) -> list[Inbox]:
    async with service(client).db.session() as s:
        return list((await s.scalars(select(Inbox).order_by(col(Inbox.id)))).all())


def test_a_number_picks_the_numbered_choice(client: TestClient, fake: FakeRelay) -> None:
    deliver(client, mail("こんにちは").as_bytes())
    welcome = fake.wait(USER, 1)[0]
    assert "1. 同意して話す" in body(welcome)
    deliver(client, mail("１\n\n> 1. 同意して話す\n", subject="Re: x", reply_to=welcome).as_bytes())
    assert keys(fake.wait(USER, 2)[1:]) == ["listening"]


# -- loops and bounces ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers,sender",
    [
        ({"Auto-Submitted": "auto-replied"}, USER),
        ({"Precedence": "bulk"}, USER),
        ({"X-Autoreply": "yes"}, USER),
        ({}, "MAILER-DAEMON@example.jp"),
    ],
)
def test_automatic_mail_gets_no_answer(
    client: TestClient, fake: FakeRelay, headers: dict[str, str], sender: str
) -> None:
    deliver(client, mail("不在です。", headers=headers, sender=sender).as_bytes(), sender=sender)
    settled(client, 1)
    assert fake.received == [] and rows(client, Outbox) == [] and conversations(client) == []


def test_empty_return_path_gets_no_answer(client: TestClient, fake: FakeRelay) -> None:
    deliver(client, mail("自動応答").as_bytes(), sender="")
    settled(client, 1)
    assert fake.received == [] and conversations(client) == []


def test_a_bounce_marks_the_delivery_failed(client: TestClient, fake: FakeRelay) -> None:
    deliver(client, mail("こんにちは").as_bytes())
    ours = fake.wait(USER, 1)[0]
    settled(client, 1)
    bounce = EmailMessage()
    bounce["From"] = "Mail Delivery System <MAILER-DAEMON@example.jp>"
    bounce["To"] = ADDRESS
    bounce["Subject"] = "Undelivered Mail Returned to Sender"
    bounce["Message-ID"] = make_msgid(domain="example.jp")
    bounce.set_content("This is the mail system. The mail could not be delivered.")
    bounce.add_attachment(
        f"Message-ID: {ours['Message-ID']}\nTo: {USER}\n".encode(),
        maintype="text",
        subtype="rfc822-headers",
    )
    bounce.replace_header("Content-Type", bounce["Content-Type"].replace("mixed", "report"))
    deliver(client, bounce.as_bytes(), sender="")
    eventually(lambda: rows(client, Outbox)[0].status == OutboxStatus.FAILED, "the bounce to be matched")
    assert rows(client, Outbox)[0].last_error == "bounced"
    assert len(fake.received) == 1


# -- the listener ---------------------------------------------------------------------------------------


def test_a_strangers_address_is_550(client: TestClient, fake: FakeRelay) -> None:
    for to in ("someone@tsunagi.example", "soudan@elsewhere.example", "soudan+@tsunagi.example"):
        with smtp(client) as s, pytest.raises(smtplib.SMTPRecipientsRefused) as e:
            s.sendmail(USER, [to], wire(mail("こんにちは", to=to).as_bytes()))
        assert e.value.recipients[to][0] == 550
    assert rows(client, Inbox) == []


def test_a_20_mb_mail_is_552_and_not_stored(client: TestClient, fake: FakeRelay) -> None:
    msg = mail("大きい添付")
    msg.add_attachment(b"\0" * (20 * 1024 * 1024), maintype="application", subtype="octet-stream")
    raw = wire(msg.as_bytes())
    with smtp(client) as s:
        s.ehlo()
        assert s.mail(USER)[0] == 250  # no SIZE= given: refused after DATA
        assert s.rcpt(ADDRESS)[0] == 250
        code, _ = s.data(raw)
    assert code == 552
    with smtp(client) as s, pytest.raises(smtplib.SMTPSenderRefused) as e:  # SIZE= given: refused at once
        s.sendmail(USER, [ADDRESS], raw)
    assert e.value.smtp_code == 552
    assert rows(client, Inbox) == []


def test_a_mail_that_cannot_be_stored_is_451(
    client: TestClient, fake: FakeRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(channel: str, events: list[tuple[str, str]]) -> int:
        raise OSError("disk full")

    monkeypatch.setattr(service(client).inbox, "store", broken)
    with smtp(client) as s, pytest.raises(smtplib.SMTPDataError) as e:
        s.sendmail(USER, [ADDRESS], wire(mail("こんにちは").as_bytes()))
    assert e.value.smtp_code == 451


def test_the_same_mail_twice_is_answered_once(client: TestClient, fake: FakeRelay) -> None:
    raw = mail("こんにちは").as_bytes()
    deliver(client, raw)
    deliver(client, raw)
    settled(client, 1)
    assert len(fake.to(USER)) == 1


# -- sending ----------------------------------------------------------------------------------------------


def test_relay_down_for_a_while_then_delivered_once(client: TestClient, fake: FakeRelay) -> None:
    fake.refuse = 2
    deliver(client, mail("こんにちは").as_bytes())
    replies = fake.wait(USER, 1, timeout=30)
    assert keys(replies) == ["welcome"]
    settled(client, 1)
    assert fake.attempts == 3 and len(fake.received) == 1
    assert [r.status for r in rows(client, Outbox)] == [OutboxStatus.DELIVERED]


def test_no_relay_keeps_the_reply_waiting(tmp_path: Path) -> None:
    with app(tmp_path, None) as c:
        deliver(c, mail("こんにちは").as_bytes())
        eventually(lambda: len(rows(c, Outbox)) == 1, "the reply in the outbox")
        eventually(lambda: rows(c, Outbox)[0].last_error == "no relay configured", "the deferral")
        assert rows(c, Outbox)[0].status == OutboxStatus.PENDING


def test_a_permanent_refusal_is_failed(client: TestClient, fake: FakeRelay) -> None:
    nobody = "nobody@example.jp"

    async def refuse_rcpt(server: SMTP, session: Session, envelope: Envelope, address: str, opts: Any) -> str:
        return "550 5.1.1 No such user"

    fake.handle_RCPT = refuse_rcpt  # type: ignore[attr-defined]
    deliver(client, mail("こんにちは", sender=nobody).as_bytes(), sender=nobody)
    settled(client, 1)
    row = rows(client, Outbox)[0]
    assert row.status == OutboxStatus.FAILED and "550" in row.last_error


# -- parsing ----------------------------------------------------------------------------------------------


def _outlook_mail() -> bytes:
    """ISO-2022-JP as Outlook on Windows writes it: a circled digit (NEC row 13) in subject and body."""
    circled = b"\x1b$B\x2d\x21\x1b(B"  # ① in the JIS code of CP50220
    subject = "相談".encode("iso2022_jp") + circled + "について".encode("iso2022_jp")
    text = (
        "こんにちは。".encode("iso2022_jp") + circled + "眠れない日が続いています。\r\n".encode("iso2022_jp")
    )
    headers = (
        f"From: =?iso-2022-jp?B?{base64.b64encode('山田'.encode('iso2022_jp')).decode()}?= <{USER}>\r\n"
        f"To: {ADDRESS}\r\n"
        f"Subject: =?iso-2022-jp?B?{base64.b64encode(subject).decode()}?=\r\n"
        "Message-ID: <000001dabc$11223344$55667788@example.jp>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: text/plain; charset="iso-2022-jp"\r\n'
        "Content-Transfer-Encoding: 7bit\r\n"
        "X-Mailer: Microsoft Outlook 16.0\r\n\r\n"
    )
    return headers.encode("ascii") + text


def _sjis_mail(subject: str, text: str) -> bytes:
    return (
        f"From: {USER}\r\nTo: {ADDRESS}\r\n"
        f"Subject: =?Shift_JIS?B?{base64.b64encode(subject.encode('cp932')).decode()}?=\r\n"
        f"Message-ID: {make_msgid(domain='example.jp')}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=Shift_JIS\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    ).encode("ascii") + base64.encodebytes(text.encode("cp932"))


def test_parse_iso2022jp_windows_falls_back_to_cp932() -> None:
    m = parse_mail(_outlook_mail())
    assert m.subject == "相談①について"
    assert m.text == "こんにちは。①眠れない日が続いています。"
    assert m.sender == USER and not m.automatic
    assert decode_bytes(b"\x1b(I\x36\x40\x36\x45\x1b(B", "iso-2022-jp") == "ｶﾀｶﾅ"


def test_parse_charsets_and_encodings() -> None:
    m = parse_mail(_sjis_mail("件名", "①の件です"))
    assert (m.subject, m.text) == ("件名", "①の件です")
    euc = EmailMessage()
    euc["From"] = USER
    euc.set_content("ＥＵＣの本文です", charset="euc-jp", cte="quoted-printable")
    assert parse_mail(euc.as_bytes()).text == "ＥＵＣの本文です"
    alt = EmailMessage()
    alt["From"] = USER
    alt.set_content("テキスト版")
    alt.add_alternative("<p>HTML版</p>", subtype="html")
    assert parse_mail(alt.as_bytes()).text == "テキスト版"
    assert html_to_text("<p>一行目<br>二行目</p><blockquote>引用</blockquote><style>x{}</style>&amp;") == (
        "一行目\n二行目\n&"
    )


def test_strip_quoted_styles() -> None:
    for style in QUOTES.values():
        assert strip_quoted(style.format(new=CALM, old=CRISIS)) == CALM
    interleaved = "> 質問1\n答え1\n> 質問2\n答え2"
    assert strip_quoted(interleaved) == "答え1\n答え2"
    outlook = f"{CALM}\n\nFrom: つなぎ <{ADDRESS}>\nSent: Wednesday\nTo: {USER}\n{CRISIS}"
    assert strip_quoted(outlook) == CALM
