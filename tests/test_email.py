"""The e-mail channel end to end, with real SMTP over loopback on both sides: mail is sent with smtplib to
the service's own listener (TSUNAGI_SMTP_LISTEN on a free port, the real app in a TestClient with its
inbox and outbox workers), and replies go through aiosmtplib to a fake relay (an aiosmtpd Controller that
records what it is given and can refuse with 451 for a while). Every wait is bounded; only 127.0.0.1.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import re
import smtplib
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import make_msgid, parseaddr
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from sqlalchemy import delete, select
from sqlmodel import col

from bot.models import Conversation, Inbox, InboxStatus, Media, Message, Outbox, OutboxStatus, Role, utcnow
from bot.web import create_app
from channels.email import EmailChannel, trim_references
from channels.email.parse import decode_bytes, html_to_text, parse_mail, strip_quoted
from tests.engine_helpers import _patterns, reply_keys
from tests.fake_relay import FakeRelay, running_relay
from tests.helpers import account, eventually, free_port, in_app, make_settings, rows_of, service
from tests.pictures import exif_of, photo_with_gps

ADDRESS = "soudan@tsunagi.example"
USER = "hanako@example.jp"
CRISIS = "もう死にたい。今から飛び降りる"
CALM = "最近、部活のことで少し悩んでいます。"
WAIT = 15.0


# -- the fake relay ---------------------------------------------------------------------------------------


@pytest.fixture
def relay() -> Iterator[tuple[FakeRelay, int]]:
    with running_relay() as running:
        yield running


def app(tmp_path: Path, relay_port: int | None, **overrides: Any) -> TestClient:
    tmp_path.mkdir(parents=True, exist_ok=True)
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


def channel(client: TestClient) -> EmailChannel:
    ch = service(client).channels["email"]
    assert isinstance(ch, EmailChannel)
    return ch


def listener(client: TestClient) -> int:
    port = channel(client).port
    assert port is not None
    return port


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
    """The templates each reply is made of (one mail holds all the bot says to one mail, its parts a blank
    line apart), the numbered choices (quick replies as text) taken off."""
    texts = [re.sub(r"(\n\d+\. [^\n]*)+$", "", body(m).replace("\r\n", "\n").rstrip("\n")) for m in msgs]
    return [k for text in texts for k in reply_keys(parts(text))]


def parts(text: str) -> list[str]:
    """A joined reply cut back into its messages: the fewest runs of paragraphs that each are one whole
    template (templates may hold blank lines themselves)."""
    paragraphs = text.split("\n\n")
    templates = [rx for rx, _ in _patterns().values()]
    best: dict[int, list[str]] = {0: []}
    for i in range(len(paragraphs)):
        if i not in best:
            continue
        for j in range(i + 1, len(paragraphs) + 1):
            chunk = "\n\n".join(paragraphs[i:j])
            if any(rx.fullmatch(chunk) for rx in templates) and (
                j not in best or len(best[j]) > len(best[i]) + 1
            ):
                best[j] = [*best[i], chunk]
    assert len(paragraphs) in best, f"no run of templates makes {text[:80]!r}"
    return best[len(paragraphs)]


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
    conv = conversations(client)
    assert reply_to == f"soudan+{channel(client).token(conv[0].id)}@tsunagi.example", (
        "the conversation's token"
    )
    assert re.fullmatch(r"soudan\+[0-9a-f]{40}@tsunagi\.example", reply_to)
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


def test_a_reply_from_another_address_stays_in_its_thread(client: TestClient, fake: FakeRelay) -> None:
    listening = consent(client, fake)
    other = "hanako.yamada@univ.example.ac.jp"
    # From a second address, answering our mail (In-Reply-To names it): the same conversation, and the
    # answer goes where the conversation's mail goes.
    deliver(client, mail(CALM, sender=other, reply_to=listening).as_bytes(), sender=other)
    settled(client, 3)
    assert len(conversations(client)) == 1
    assert len(fake.to(USER)) == 3 and fake.to(other) == []
    # The plus-address alone (a new mail to the Reply-To address, no In-Reply-To) does the same.
    to_plus = parseaddr(str(listening["Reply-To"]))[1]
    deliver(client, mail("続きです。", sender=other, to=to_plus).as_bytes(), sender=other, to=to_plus)
    settled(client, 4)
    assert len(conversations(client)) == 1 and fake.to(other) == []


def test_a_token_we_did_not_give_is_only_an_address(client: TestClient, fake: FakeRelay) -> None:
    consent(client, fake)
    (conv,) = conversations(client)
    stranger = "someone@example.com"
    forged = f"soudan+{conv.id}{'0' * 8}@tsunagi.example"
    deliver(client, mail(CALM, sender=stranger, to=forged).as_bytes(), sender=stranger, to=forged)
    settled(client, 3)
    assert len(conversations(client)) == 2, "a forged token starts the sender's own conversation"
    assert keys(fake.wait(stranger, 1)) == ["welcome"]


def test_a_mail_after_closure_starts_a_new_conversation(client: TestClient, fake: FakeRelay) -> None:
    listening = consent(client, fake)
    deliver(client, mail("終わり", reply_to=listening).as_bytes())
    settled(client, 3)
    (closed,) = conversations(client)
    assert closed.state == "closed"
    last = fake.to(USER)[-1]
    deliver(client, mail(CALM, reply_to=last).as_bytes())
    settled(client, 4)
    convs = conversations(client)
    assert len(convs) == 2 and {c.state for c in convs} == {"closed", "welcome"}
    assert keys(fake.to(USER)[-1:]) == ["welcome"]
    assert fake.to(USER)[-1]["In-Reply-To"] != last["In-Reply-To"], "threaded to the new mail"


def test_a_counsellor_reads_the_whole_mail_and_answers_by_mail(client: TestClient, fake: FakeRelay) -> None:
    listening = consent(client, fake)
    quoted = (
        QUOTES["japanese"].format(new="相談員と話したい", old="前のメールに書いたことです")
        + "-- \n山田花子\n"
    )
    asked = mail(quoted, reply_to=listening)
    asked.add_attachment(b"%PDF-1.4", maintype="application", subtype="pdf", filename="memo.pdf")
    deliver(client, asked.as_bytes())
    settled(client, 3)
    (conv,) = conversations(client)
    assert conv.state == "waiting"
    amy = account(client, "amy")
    assert amy.claim(conv.id).status_code == 200
    read = amy.read(conv.id)
    assert read.status_code == 200, read.text
    said = [m for m in read.json()["messages"] if m["from"] == "user"][-1]
    assert said["text"] == "相談員と話したい", "what triage read: the new text"
    assert "前のメールに書いたことです" in said["full_text"] and "山田花子" in said["full_text"], (
        "the whole mail"
    )
    assert said["attachments"] == 1

    # A day later the inbox has been purged (retention): the thread is kept with the contact.
    async def purge_inbox() -> None:
        async with service(client).db.session() as s, s.begin():
            await s.execute(delete(Inbox))

    in_app(client, purge_inbox)
    before = len(fake.to(USER))
    assert amy.reply(conv.id, "相談員の山田です。メールを読みました。").status_code == 202
    eventually(
        lambda: any("相談員の山田です" in body(m) for m in fake.to(USER)[before:]), "the counsellor's mail"
    )
    answer = next(m for m in fake.to(USER)[before:] if "相談員の山田です" in body(m))
    assert answer["In-Reply-To"] == asked["Message-ID"], "in the person's thread"
    assert asked["Message-ID"] in str(answer["References"])
    assert str(answer["Subject"]) == "Re: 相談したいことがあります"
    assert answer["Auto-Submitted"] is None, "a person wrote it: it may be answered"
    assert parseaddr(str(answer["Reply-To"]))[1] == channel(client).reply_to(conv.id)

    # Their answer to the counsellor's mail reaches the counsellor, and no robot answers it.
    sent = len(fake.to(USER))
    deliver(client, mail("ありがとうございます。少し安心しました。", reply_to=answer).as_bytes())
    settled(client, 1)  # the one mail since the purge

    def last_from_user() -> str:
        texts = [m["text"] for m in amy.read(conv.id).json()["messages"] if m["from"] == "user"]
        return str(texts[-1])

    eventually(
        lambda: last_from_user() == "ありがとうございます。少し安心しました。", "their answer in the console"
    )
    assert len(fake.to(USER)) == sent
    delivered = [m for m in amy.read(conv.id).json()["messages"] if m["from"] == "counsellor"]
    assert delivered[-1]["delivery"]["status"] == "delivered"


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


PILLS = "さっき家にあった薬を全部飲みました。"
BELOW = {
    # Thunderbird's default: the attribution, the quote, and the answer under it.
    "thunderbird_ja": "{{name}} さんが書きました:\n> {old}\n> よろしくお願いします\n\n{new}\n",
    "thunderbird_en": "On 2026/11/25 10:00, {{name}} wrote:\n> {old}\n\n{new}\n",
    "gmail_ja": "2026年11月25日(水) 10:00 {{name}} <soudan@tsunagi.example>:\n\n> {old}\n\n{new}\n",
    # A phone's mail: the separator and its header fields, the quote marked with full-width ＞.
    "phone": "-----Original Message-----\nFrom: {{name}}\n件名: Re: ご相談\n＞{old}\n\n{new}\n",
}


@pytest.mark.parametrize("style", sorted(BELOW))
def test_an_answer_written_below_the_quote_is_read(client: TestClient, fake: FakeRelay, style: str) -> None:
    """The person answers under our quoted mail: what they wrote there is theirs, and it is triaged."""
    listening = consent(client, fake)
    text = BELOW[style].format(new=PILLS, old="よろしければ、お話を聞かせてください。").format(name="つなぎ")
    deliver(client, mail(text, subject="Re: ご相談", reply_to=listening).as_bytes())
    eventually(lambda: "crisis" in keys(fake.to(USER)[2:]), "the crisis reply")
    (conv,) = conversations(client)
    assert conv.risk == "crisis" and conv.state == "waiting"
    stored = in_app(client, lambda: _last_inbound(client))
    assert stored[0] == PILLS, "only their words, without the quote"
    assert "よろしければ" in stored[1], "the whole mail for the counsellor"


async def _last_inbound(client: TestClient) -> tuple[str, str, str]:
    async with service(client).db.session() as s:
        m = await s.scalar(
            select(Message).where(col(Message.direction) == "in").order_by(col(Message.id).desc())
        )
        assert m is not None
        crypto = service(client).crypto
        return crypto.decrypt(m.text_enc), crypto.decrypt(m.full_enc) if m.full_enc else "", m.flags


def test_a_mail_that_is_all_quote_is_kept_whole_and_the_counsellor_told(
    client: TestClient, fake: FakeRelay, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing outside the quote: the whole mail is stored and triaged (never only its subject), and the
    console says that it is the whole mail. One log line says so, without the text or the address."""
    caplog.set_level(logging.INFO, logger="tsunagi.email")
    listening = consent(client, fake)
    quoted = f"> {PILLS}\n> 助けてください\n"
    deliver(client, mail(quoted, subject="Re: ご相談", reply_to=listening).as_bytes())
    eventually(lambda: "crisis" in keys(fake.to(USER)[2:]), "the crisis reply: the whole mail was read")
    text, full, flags = in_app(client, lambda: _last_inbound(client))
    assert PILLS in text and text != "ご相談", "never the subject alone"
    assert full == "" and flags == "whole_mail"
    (conv,) = conversations(client)
    amy = account(client, "amy")
    said = [m for m in amy.read(conv.id).json()["messages"] if m["from"] == "user"][-1]
    assert said["flags"] == ["whole_mail"] and PILLS in said["text"]
    lines = [r.getMessage() for r in caplog.records if "whole mail" in r.getMessage()]
    assert len(lines) == 1
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert USER not in logged and "薬" not in logged


def test_an_automatic_mail_leaves_one_log_line(
    client: TestClient, fake: FakeRelay, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tsunagi.email")
    deliver(client, mail("不在にしています。", headers={"Auto-Submitted": "auto-replied"}).as_bytes())
    settled(client, 1)
    lines = [
        r.getMessage() for r in caplog.records if r.name == "tsunagi.email" and "automatic" in r.getMessage()
    ]
    assert len(lines) == 1
    assert USER not in lines[0] and "不在" not in lines[0]


def _decomail(text: str, decorations: int, files: int) -> EmailMessage:
    """A decomail as Japanese phones send it: HTML that shows its pictures by Content-ID (multipart/related),
    and maybe real attachments besides."""
    msg = mail(text)
    html = "<html><body><p>" + text + "</p>"
    cids = [make_msgid(domain="deco.example")[1:-1] for _ in range(decorations)]
    html += "".join(f'<img src="cid:{c}">' for c in cids) + "</body></html>"
    msg.add_alternative(html, subtype="html")
    html_part = msg.get_payload()[1]
    assert isinstance(html_part, EmailMessage)
    for c in cids:
        html_part.add_related(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "image", "gif", cid=f"<{c}>")
    for i in range(files):
        msg.add_attachment(b"%PDF-1.4", maintype="application", subtype="pdf", filename=f"f{i}.pdf")
    return msg


def test_decomail_decoration_is_not_an_attachment(client: TestClient, fake: FakeRelay) -> None:
    listening = consent(client, fake)
    deco = _decomail(CALM, decorations=3, files=0)
    for h in ("In-Reply-To", "References"):
        deco[h] = listening["Message-ID"]
    deliver(client, deco.as_bytes())
    settled(client, 3)
    assert "attachments_not_kept" not in keys(fake.to(USER)[2:]), "its pictures are the mail's look"
    parsed = parse_mail(_decomail(CALM, decorations=3, files=1).as_bytes())
    assert parsed.attachments == 1 and parsed.text == CALM


def test_references_keep_the_threads_first_message_id(client: TestClient, fake: FakeRelay) -> None:
    """A long thread: our reply's References is trimmed, and keeps the thread's root (RFC 5322 3.6.4)."""
    root = make_msgid(domain="example.jp")
    middle = [make_msgid(domain="example.jp") for _ in range(25)]
    msg = mail("こんにちは")
    msg["In-Reply-To"] = middle[-1]
    msg["References"] = " ".join([root, *middle])
    deliver(client, msg.as_bytes())
    reply = fake.wait(USER, 1)[0]
    refs = str(reply["References"]).split()
    assert len(refs) == 10
    assert refs[0] == root and refs[-1] == msg["Message-ID"] and refs[-2] == middle[-1]
    assert trim_references(["a", "b"], 10) == ["a", "b"]
    assert trim_references([str(i) for i in range(30)], 5) == ["0", "26", "27", "28", "29"]


def test_iso2022jp_as_outlook_writes_it(client: TestClient, fake: FakeRelay) -> None:
    deliver(client, _outlook_mail())
    reply = fake.wait(USER, 1)[0]
    # Weeks without sleep is medium: the services and a counsellor come with the first reply.
    assert keys([reply]) == ["welcome", "offer"]
    assert str(reply["Subject"]) == "Re: 相談①について"


def test_iso2022jp_as_iphone_mail_writes_a_reply(client: TestClient, fake: FakeRelay) -> None:
    listening = consent(client, fake)
    deliver(client, _iphone_reply(listening, new=CALM, old=CRISIS))
    settled(client, 3)
    assert "crisis" not in keys(fake.to(USER)[2:]), "the quoted mail is not read as theirs"
    (conv,) = conversations(client)
    assert conv.risk != "crisis"

    async def last_message() -> tuple[str, str]:
        async with service(client).db.session() as s:
            m = await s.scalar(
                select(Message).where(col(Message.direction) == "in").order_by(col(Message.id).desc())
            )
            assert m is not None
            crypto = service(client).crypto
            return crypto.decrypt(m.text_enc), crypto.decrypt(m.full_enc)

    text, full = in_app(client, last_message)
    assert text == CALM
    assert CRISIS in full and "iPhoneから送信" in full, "the counsellor can read the whole mail"


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
    # It is one mail, with the first intake question after it.
    assert keys(fake.wait(USER, 2)[1:2]) == ["listening_after_consent_with_story", "intake_age"]


def test_attachments_are_counted_not_kept(client: TestClient, fake: FakeRelay) -> None:
    listening = consent(client, fake)
    msg = mail(CALM, reply_to=listening)
    msg.add_attachment(b"\x89PNG\r\n\x1a\n" + b"\0" * 2000, maintype="image", subtype="png", filename="a.png")
    deliver(client, msg.as_bytes())
    settled(client, 3)
    (reply,) = fake.to(USER)[2:]
    assert keys([reply]) == ["attachments_not_kept", "intake_intro", "intake_age"], "one mail says it all"
    assert "添付ファイル（1件：開けない画像）" in body(reply), "a PNG that is not one is refused"
    only_files = mail("", reply_to=reply)
    only_files.add_attachment(b"%PDF-1.4", maintype="application", subtype="pdf", filename="b.pdf")
    only_files.add_attachment(b"%PDF-1.4", maintype="application", subtype="pdf", filename="c.pdf")
    deliver(client, only_files.as_bytes())
    settled(client, 4)
    # Only files, at low risk: refused and said so; nobody is queued for them alone.
    assert keys(fake.to(USER)[3:]) == ["attachments_not_kept"]
    assert "添付ファイル（2件：PDF）" in body(fake.to(USER)[3])

    async def payloads() -> list[str]:
        svc = service(client)
        return [svc.inbox.crypto.decrypt(r.payload_enc) for r in await rows_of(svc, Inbox)]

    stored = in_app(client, payloads)
    assert '"attachments": 1' in stored[2] and '"attachments": 2' in stored[3]
    assert "%PDF" not in "".join(stored) and "PNG" not in "".join(stored), "the files themselves are not kept"
    assert '"refused": "pdf"' in stored[3] and "b.pdf" in stored[3], "names and kinds, for the counsellor"


def test_a_picture_attached_is_kept_for_the_counsellor_and_other_files_refused(
    client: TestClient, fake: FakeRelay
) -> None:
    listening = consent(client, fake)
    msg = mail(CALM, reply_to=listening)
    photo = photo_with_gps()
    msg.add_attachment(photo, maintype="image", subtype="jpeg", filename="スクリーンショット.jpg")
    msg.add_attachment(b"PK\x03\x04 archive", maintype="application", subtype="zip", filename="logs.zip")
    deliver(client, msg.as_bytes())
    settled(client, 3)
    (reply,) = fake.to(USER)[2:]
    assert keys([reply])[:2] == ["media_picture_kept", "attachments_not_kept"]
    assert "添付ファイル（1件：圧縮ファイル）" in body(reply)
    (media,) = rows(client, Media)
    data = service(client).crypto.decrypt_bytes(media.data_enc)
    assert exif_of(data) == {} and (media.width, media.height) == (640, 480)
    (conv,) = conversations(client)
    amy = account(client, "amy", Role.SUPERVISOR)
    said = [m for m in amy.read(conv.id).json()["messages"] if m["from"] == "user"][-1]
    assert said["items"] == [
        {"kind": "image", "name": "スクリーンショット.jpg", "size": len(photo), "picture": True},
        {"kind": "file", "name": "logs.zip", "size": 12, "refused": "archive"},
    ]
    (picture,) = said["pictures"]
    got = amy.get(f"conversations/{conv.id}/pictures/{picture['id']}")
    assert got.status_code == 200 and got.content == data
    assert got.headers["content-type"] == "image/jpeg" and got.headers["cache-control"] == "no-store"
    stranger = account(client, "bob")
    assert stranger.get(f"conversations/{conv.id}/pictures/{picture['id']}").status_code == 403


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
        # The console shows it waiting.
        (conv,) = conversations(c)
        sue = account(c, "sue", Role.SUPERVISOR)
        (welcome,) = [m for m in sue.read(conv.id).json()["messages"] if m["from"] == "bot"]
        assert welcome["delivery"]["status"] == "pending"
        assert welcome["delivery"]["error"] == "no relay configured"
        # And an operator's monitoring sees mail waiting, and for how long.
        metrics = c.get("/metrics").text
        assert 'tsunagi_outbox_messages{channel="email",status="pending"} 1.0' in metrics
        age = re.search(r'tsunagi_outbox_oldest_waiting_seconds\{channel="email"\} ([0-9.e+]+)', metrics)
        assert age is not None and 0 <= float(age.group(1)) < 600
        assert 'tsunagi_inbox_events{channel="email",status="done"} 1.0' in metrics


# -- a relay with STARTTLS and a login ------------------------------------------------------------------


def last_error(client: TestClient) -> str:
    outbox = rows(client, Outbox)
    return str(outbox[0].last_error) if outbox else ""


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "relay.pem", folder / "relay.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


class SecureRelay(FakeRelay):
    """A relay that takes mail only over STARTTLS from a logged-in client, as a provider's relay does."""

    def __init__(self) -> None:
        super().__init__()
        self.sessions: list[tuple[bool, bool, bytes]] = []  # (encrypted, logged in, login)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        login = session.auth_data.login if isinstance(session.auth_data, LoginPassword) else b""
        self.sessions.append((bool(session.ssl), session.authenticated, login))
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def secure_relay(tmp_path: Path) -> Iterator[tuple[SecureRelay, int, Path]]:
    cert_file, key_file = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)

    def authenticate(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"tsunagi", b"relay-pass")
        return AuthResult(success=ok, handled=False, auth_data=data)

    with running_relay(
        SecureRelay(),
        tls_context=context,
        require_starttls=True,
        authenticator=authenticate,
        auth_required=True,
        auth_require_tls=True,
    ) as (fake, port):
        yield fake, port, cert_file


def test_replies_go_over_starttls_with_a_login(
    tmp_path: Path, secure_relay: tuple[SecureRelay, int, Path]
) -> None:
    fake, port, cert_file = secure_relay
    relay = {"smtp_starttls": True, "smtp_username": "tsunagi", "smtp_ca_file": str(cert_file)}
    with app(tmp_path / "good", port, smtp_password="relay-pass", **relay) as c:
        deliver(c, mail("こんにちは").as_bytes())
        assert keys(fake.wait(USER, 1)) == ["welcome"]
        assert fake.sessions == [(True, True, b"tsunagi")]
    with app(tmp_path / "wrong", port, smtp_password="not-the-password", **relay) as c:
        deliver(c, mail("こんにちは", sender="taro@example.jp").as_bytes(), sender="taro@example.jp")
        eventually(lambda: "authentication failed" in last_error(c), "the refused login")
        assert rows(c, Outbox)[0].status == OutboxStatus.PENDING, "kept, to go once the login is fixed"
    with app(
        tmp_path / "untrusted", port, smtp_password="relay-pass", smtp_starttls=True, smtp_username="tsunagi"
    ) as c:
        deliver(c, mail("こんにちは", sender="jiro@example.jp").as_bytes(), sender="jiro@example.jp")
        eventually(lambda: last_error(c) != "", "a refusal")
        assert rows(c, Outbox)[0].status == OutboxStatus.PENDING
        assert "Certificate" in last_error(c) or "SSL" in last_error(c) or "TLS" in last_error(c)
    assert len(fake.received) == 1, "nothing went to a relay whose certificate is not trusted"


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


def _iphone_reply(ours: EmailMessage, *, new: str, old: str) -> bytes:
    """A reply as iPhone Mail in Japanese writes it: ISO-2022-JP in 7 bits, its "iPhoneから送信" signature
    line, and the quote header "<date>、<name> <address>のメール:" above "> " lines."""
    text = (
        f"{new}\r\n\r\niPhoneから送信\r\n\r\n"
        f"2026/11/25 22:14、つなぎ <{ADDRESS}>のメール:\r\n\r\n> {old}\r\n> \r\n"
    )
    subject = base64.b64encode(f"Re: {ours['Subject']}".encode("iso2022_jp")).decode()
    headers = (
        f"From: {USER}\r\nTo: {ADDRESS}\r\n"
        f"Subject: =?iso-2022-jp?B?{subject}?=\r\n"
        f"Message-Id: <A1B2C3D4-0000-4000-8000-{int(time.time() * 1000) % 10**12:012d}@example.jp>\r\n"
        f"In-Reply-To: {ours['Message-ID']}\r\nReferences: {ours['Message-ID']}\r\n"
        "Mime-Version: 1.0 (1.0)\r\nX-Mailer: iPhone Mail (22B83)\r\n"
        "Content-Type: text/plain; charset=iso-2022-jp\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
    )
    return headers.encode("ascii") + text.encode("iso2022_jp")


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
    for phone in ("iPhoneから送信", "Android から送信", "Sent from my iPhone", "Get Outlook for iOS"):
        assert strip_quoted(f"{CALM}\n\n{phone}\n") == CALM
    assert strip_quoted("Sent from home, sorry for the late mail.") != "", "only the phones' own lines"
    interleaved = "> 質問1\n答え1\n> 質問2\n答え2"
    assert strip_quoted(interleaved) == "答え1\n答え2"
    inline = "On Wed, tsunagi wrote:\n> 年齢は？\n16歳です\n>\n> 住んでいる所は？\n\n東京です\n-- \n花子\n"
    assert strip_quoted(inline) == "16歳です\n\n東京です", "answers between quotes, the signature left out"
    below = "山田 さんが書きました:\n> 古い話\n\n新しい話\n\niPhoneから送信"
    assert strip_quoted(below) == "新しい話"
    # A signature placed above the quote, and the answer under the quote (Thunderbird's other setting).
    assert strip_quoted("-- \n花子\nOn Wed, tsunagi wrote:\n> 古い話\n\n新しい話") == "新しい話"
    assert strip_quoted("> 全部引用\n> です") == ""
    whole = parse_mail(mail("> 全部引用\n> です").as_bytes())
    assert whole.whole and whole.text == "> 全部引用\n> です"
    outlook = f"{CALM}\n\nFrom: つなぎ <{ADDRESS}>\nSent: Wednesday\nTo: {USER}\n{CRISIS}"
    assert strip_quoted(outlook) == CALM


# -- the safety net: no form or offer between a person and help (bot/dialogue.py) --------------------------

HOPELESS = "もう何もかも疲れた。どうでもいい"


def asked(client: TestClient, fake: FakeRelay) -> EmailMessage:
    """Consent, then a hopeless mail: the reply offers a counsellor and asks the direct question, its
    choices as numbered lines. Returns that reply."""
    listening = consent(client, fake)
    deliver(client, mail(HOPELESS, subject="Re: ご相談", reply_to=listening).as_bytes())
    reply = fake.wait(USER, 3)[2]
    assert keys([reply]) == ["offer", "ask_danger"]
    assert body(reply).replace("\r\n", "\n").rstrip("\n").endswith("1. はい\n2. いいえ\n3. わからない")
    return reply


@pytest.mark.parametrize("answer", ["1", "はい", "1. はい\n", "はい\n\nもう準備はできています。\n"])
def test_the_direct_question_answered_yes_in_a_reply_mail(
    client: TestClient, fake: FakeRelay, answer: str
) -> None:
    question = asked(client, fake)
    deliver(client, mail(answer, subject="Re: ご相談", reply_to=question).as_bytes())
    reply = fake.wait(USER, 4)[3]
    assert keys([reply]) == ["crisis", "ask_age"]  # (no intake yet: the age band, once)
    assert "110" in body(reply) and "119" in body(reply)
    (conv,) = conversations(client)
    assert (conv.state, conv.risk, conv.danger_answer) == ("waiting", "crisis", "yes")


def test_the_direct_question_answered_no_in_a_reply_mail_goes_on(client: TestClient, fake: FakeRelay) -> None:
    question = asked(client, fake)
    deliver(client, mail("いいえ\n\n話を聞いてもらえてよかったです。", reply_to=question).as_bytes())
    assert keys([fake.wait(USER, 4)[3]]) == ["danger_no", "offer_again"]
    (conv,) = conversations(client)
    assert (conv.state, conv.danger_answer) == ("offered", "no")

    # What they wrote below the answer is theirs: stored whole.
    async def last_in() -> str:
        async with service(client).db.session() as s:
            m = await s.scalar(
                select(Message).where(col(Message.direction) == "in").order_by(col(Message.id).desc())
            )
            assert m is not None
            return service(client).crypto.decrypt(m.text_enc)

    assert "話を聞いてもらえてよかった" in in_app(client, last_in)


def test_an_intake_answer_that_is_not_one_is_read_as_a_message_by_mail(
    client: TestClient, fake: FakeRelay
) -> None:
    listening = consent(client, fake)
    deliver(client, mail("学校で友だちとうまくいかなくて悩んでいます", reply_to=listening).as_bytes())
    age = fake.wait(USER, 3)[2]
    assert keys([age]) == ["intake_intro", "intake_age"]
    deliver(client, mail("もう終わり。全部準備できた", reply_to=age).as_bytes())
    assert keys([fake.wait(USER, 4)[3]]) == ["offer"]
    (conv,) = conversations(client)
    assert (conv.state, conv.age_band, conv.pending) == ("offered", "", "")


def test_a_serious_first_mail_goes_to_the_queue_at_once(client: TestClient, fake: FakeRelay) -> None:
    deliver(client, mail("夫に毎日殴られていて、家に帰るのがこわいです").as_bytes())
    assert keys(fake.wait(USER, 1)) == ["welcome", "waiting", "waiting_safety", "ask_age"]
    (conv,) = conversations(client)
    assert (conv.state, conv.risk) == ("waiting", "high")


def test_writing_again_within_seven_days_of_a_crisis_starts_at_crisis(
    client: TestClient, fake: FakeRelay
) -> None:
    deliver(client, mail(CRISIS).as_bytes())
    crisis = fake.wait(USER, 1)[0]
    assert keys([crisis]) == ["crisis", "ask_age"]
    deliver(client, mail("終了", reply_to=crisis).as_bytes())
    fake.wait(USER, 2)
    (first,) = conversations(client)
    assert first.state == "closed"
    service(client).engine.clock = lambda: utcnow() + timedelta(days=6)
    deliver(client, mail("こんにちは", subject="また相談です").as_bytes())
    # The age band was asked once already (in the first conversation): it is not asked again.
    assert keys([fake.wait(USER, 3)[2]]) == ["welcome", "waiting", "waiting_safety"]
    second = next(c for c in conversations(client) if c.id != first.id)
    assert (second.state, second.risk, second.previous_id) == ("waiting", "crisis", first.id)
