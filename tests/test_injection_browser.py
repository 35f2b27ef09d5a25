"""Script injection through every channel into the console, checked in a real browser: ``tsunagi serve``
with the web chat, LINE and Telegram webhooks and the SMTP listener; payloads in what each carries (text,
a mail's subject, sender name and attachment name, LINE sticker keywords, file names and places,
Telegram names and file names), in the counsellor's private notes and in a reply back to the web chat.
A supervisor takes every conversation in the console and reads it.

None runs: the flag a payload would set stays unset, no dialog opens, no Content-Security-Policy
violation is reported (an injected inline handler would be one), no element carries an inline handler
and no frame or inline script is made, and each payload is on the page as the text it is."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import smtplib
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import formataddr
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.helpers import TSUNAGI, chromium, free_port, server

pytestmark = pytest.mark.browser

WAIT_MS = 10_000
SUPERVISOR = ("suzuki", "suzuki-password-1234")
LINE_SECRET = "line-secret-injection"
TELEGRAM_SECRET = "telegram-secret-injection"
CRISIS = "もう死にたい。今から飛び降りる"
PAYLOADS = [
    '<img src=x onerror="window.__xss=1;alert(1)">',
    "<script>window.__xss=1;alert(2)</script>",
    '"><svg onload="window.__xss=1;alert(3)">',
    '\'><iframe srcdoc="<script>parent.__xss=1</script>"></iframe>',
    '<a href="javascript:window.__xss=1">リンク</a>',
    "javascript:window.__xss=1",
    '{{constructor.constructor("window.__xss=1")()}}',
    "<style>body{display:none}</style>",
]
ALL = "\n".join(PAYLOADS)

RECORD = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__violations.push(`${e.effectiveDirective} blocked ${e.blockedURI || "inline"}`);
});
"""
# What an injection would have left in the DOM.
INJECTED = """() => {
  const out = [];
  for (const el of document.querySelectorAll("*")) {
    for (const a of el.attributes) if (a.name.startsWith("on")) out.push(`${el.tagName} ${a.name}`);
    if (el.tagName === "IFRAME") out.push("iframe");
    const data = el.type === "application/json" && el.id === "strings"; // the page's own strings
    if (el.tagName === "SCRIPT" && !el.src && !data) out.push("inline script");
    const href = el.tagName === "A" ? el.getAttribute("href") || "" : "";
    if (/^\\s*javascript:/i.test(href)) out.push("javascript: link");
    if (el.tagName === "STYLE") out.push("style element");
  }
  return out;
}"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if not TSUNAGI.exists():
        pytest.fail(f"{TSUNAGI} is missing: install the project into .venv first (make test does)")
    home = tmp_path_factory.mktemp("inject")
    smtp_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TSUNAGI_")}
    env.update(
        TSUNAGI_VAR_DIR=str(home / "var"),
        TSUNAGI_DATABASE_URL=f"sqlite+aiosqlite:///{home / 't.db'}",
        TSUNAGI_SMTP_LISTEN=f"127.0.0.1:{smtp_port}",
        TSUNAGI_LINE_CHANNEL_SECRET=LINE_SECRET,
        TSUNAGI_LINE_CHANNEL_ACCESS_TOKEN="token",
        TSUNAGI_LINE_API_BASE="http://127.0.0.1:9",  # nothing listens: replies wait in the outbox
        TSUNAGI_TELEGRAM_BOT_TOKEN="123:token",
        TSUNAGI_TELEGRAM_SECRET_TOKEN=TELEGRAM_SECRET,
        TSUNAGI_TELEGRAM_API_BASE="http://127.0.0.1:9",
        TSUNAGI_COUNSELLOR_LIMIT="10",
    )
    username, password = SUPERVISOR
    done = subprocess.run(
        [str(TSUNAGI), "counsellor", "add", username, "--role", "supervisor"],
        input=password + "\n",
        capture_output=True,
        text=True,
        cwd=home,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    port = free_port()
    with server(env, port, cwd=home):
        yield {"base": f"http://127.0.0.1:{port}", "smtp": smtp_port}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture
def contexts(browser: Browser) -> Iterator[list[BrowserContext]]:
    made: list[BrowserContext] = []
    yield made
    for ctx in made:
        ctx.close()


def new_page(browser: Browser, contexts: list[BrowserContext], dialogs: list[str], **kw: Any) -> Page:
    ctx = browser.new_context(locale="ja-JP", **kw)
    ctx.set_default_timeout(WAIT_MS)
    ctx.add_init_script(RECORD)
    contexts.append(ctx)
    page = ctx.new_page()
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    return page


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(request, timeout=10) as r:
        return r.status


def send_line(base: str) -> None:
    user = "U" + "a" * 32
    now = int(time.time() * 1000)

    def event(n: int, message: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "message",
            "mode": "active",
            "timestamp": now + n,
            "source": {"type": "user", "userId": user},
            "webhookEventId": f"01INJECT{n:018d}",
            "deliveryContext": {"isRedelivery": False},
            "replyToken": f"token{n}",
            "message": {"id": f"5{n:017d}", **message},
        }

    events = [
        event(1, {"type": "text", "text": f"{CRISIS}\n{ALL}", "quoteToken": "q"}),
        event(2, {"type": "sticker", "packageId": "1", "stickerId": "1", "keywords": PAYLOADS}),
        event(3, {"type": "file", "fileName": PAYLOADS[0] + ".exe", "fileSize": 1234}),
        event(
            4,
            {
                "type": "location",
                "title": PAYLOADS[2],
                "address": PAYLOADS[3],
                "latitude": 35.0,
                "longitude": 139.0,
            },
        ),
    ]
    for e in events:  # one by one: the inbox handles them in order
        body = json.dumps({"destination": "U" + "0" * 32, "events": [e]}).encode()
        signature = base64.b64encode(hmac.new(LINE_SECRET.encode(), body, hashlib.sha256).digest()).decode()
        assert post(f"{base}/webhooks/line", body, {"X-Line-Signature": signature}) == 200


def send_telegram(base: str) -> None:
    chat = {"id": 777000111, "type": "private", "first_name": PAYLOADS[0], "username": "x"}
    sender = {"id": 777000111, "is_bot": False, "first_name": PAYLOADS[0], "last_name": PAYLOADS[2]}
    updates = [
        {
            "update_id": 9001,
            "message": {
                "message_id": 1,
                "date": int(time.time()),
                "chat": chat,
                "from": sender,
                "text": f"{CRISIS}\n{ALL}",
            },
        },
        {
            "update_id": 9002,
            "message": {
                "message_id": 2,
                "date": int(time.time()),
                "chat": chat,
                "from": sender,
                "document": {
                    "file_id": "f",
                    "file_unique_id": "u",
                    "file_name": PAYLOADS[1] + ".zip",
                    "file_size": 10,
                },
                "caption": PAYLOADS[3],
            },
        },
    ]
    for u in updates:
        assert (
            post(
                f"{base}/webhooks/telegram",
                json.dumps(u).encode(),
                {"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET},
            )
            == 200
        )


def send_mail(port: int) -> None:
    mail = EmailMessage()
    mail["From"] = formataddr((PAYLOADS[0], "person@example.jp"))
    mail["To"] = "soudan@localhost"
    mail["Subject"] = PAYLOADS[2] + " " + PAYLOADS[1]
    mail["Message-ID"] = "<inject-1@example.jp>"
    mail.set_content(f"{CRISIS}\n{ALL}\n")
    mail.add_attachment(
        b"MZ...", maintype="application", subtype="octet-stream", filename=PAYLOADS[0] + ".exe"
    )
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.send_message(mail)


def clean(page: Page) -> None:
    assert page.evaluate("typeof window.__xss") == "undefined", "a payload ran"
    assert page.evaluate("window.__violations") == [], "something was injected and blocked"
    assert page.evaluate(INJECTED) == []


def test_no_payload_runs_in_the_console_or_the_web_chat(
    site: dict[str, Any], browser: Browser, contexts: list[BrowserContext]
) -> None:
    base = site["base"]
    dialogs: list[str] = []

    # The web chat, in the browser: consent, then a crisis with every payload.
    chat = new_page(browser, contexts, dialogs, viewport={"width": 390, "height": 844})
    chat.goto(f"{base}/chat")
    chat.locator("#choices").get_by_role("button", name="同意して話す").click()
    expect(chat.locator("#log li.from-bot")).to_have_count(2)
    chat.locator("textarea").fill(f"{CRISIS}\n{ALL}")
    chat.locator("textarea").press("Enter")
    expect(chat.locator("#log")).to_contain_text("110", timeout=WAIT_MS)

    send_line(base)
    send_telegram(base)
    send_mail(site["smtp"])

    console = new_page(browser, contexts, dialogs, viewport={"width": 1280, "height": 900})
    console.goto(f"{base}/console")
    username, password = SUPERVISOR
    console.get_by_label("ユーザー名", exact=True).fill(username)
    console.get_by_label("パスワード", exact=True).fill(password)
    console.get_by_role("button", name="ログイン").click()
    expect(console.locator("#view-app")).to_be_visible()
    queue = console.locator("#queue-list > li")
    expect(queue).to_have_count(4, timeout=30_000)  # web chat, LINE, Telegram, mail
    expect(queue.first).to_contain_text("<")  # previews, as text
    clean(console)

    claimed: list[str | None] = []
    for _ in range(4):
        item = queue.first
        claimed.append(item.get_attribute("data-conversation-id"))
        item.get_by_role("button", name=re.compile("担当する")).click()
        transcript = console.locator("#transcript")
        # The conversation just taken is open (the one before had a note; this one has none yet).
        expect(console.locator("#notes-list")).not_to_contain_text(PAYLOADS[0], timeout=WAIT_MS)
        expect(transcript).to_contain_text(CRISIS, timeout=WAIT_MS)
        for payload in PAYLOADS[:4]:
            expect(transcript).to_contain_text(payload, timeout=WAIT_MS)
        console.locator("#note-text").fill(ALL)
        console.get_by_role("button", name="メモを保存").click()
        expect(console.locator("#notes-list")).to_contain_text(PAYLOADS[0], timeout=WAIT_MS)
        clean(console)
        expect(queue).to_have_count(4 - len(claimed), timeout=WAIT_MS)

    # A reply with the payloads back to the web chat (the first taken: it waited longest): shown as text.
    chat_id = claimed[0]
    console.locator(f"#held-list li[data-conversation-id='{chat_id}']").click()
    console.locator("#reply").fill(ALL)
    console.locator("#reply").press("Enter")
    expect(chat.locator("#log li").last).to_contain_text(PAYLOADS[0], timeout=WAIT_MS)

    for page in (chat, console):
        clean(page)
    assert dialogs == []
