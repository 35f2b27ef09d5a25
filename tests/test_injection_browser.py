"""Script injection through every channel into the console, checked in a real browser: ``tsunagi serve``
with the web chat, LINE and Telegram webhooks and the SMTP listener; payloads in what each carries (text,
a mail's subject, sender name and attachment name, LINE sticker keywords, file names and places,
Telegram names and file names), in the counsellor's private notes and in a reply back to the web chat.
A supervisor takes every conversation in the console and reads it.

None runs: the flag a payload would set stays unset, no dialog opens, no Content-Security-Policy
violation is reported (an injected inline handler would be one), no element carries an inline handler
and no frame or inline script is made, and each payload is on the page as the text it is."""

from __future__ import annotations

import json
import re
import smtplib
import time
import urllib.request
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import formataddr
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.browser_support import CONSOLE_ACCOUNTS, fill_login, new_context, serve
from tests.helpers import (
    CRISIS,
    PLATFORMS,
    TELEGRAM_SECRET,
    add_accounts,
    as_env,
    free_port,
    line_signature,
)

pytestmark = pytest.mark.browser

WAIT_MS = 10_000
SUPERVISOR = "sato"
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
    home = tmp_path_factory.mktemp("inject")
    add_accounts(home, {SUPERVISOR: CONSOLE_ACCOUNTS[SUPERVISOR]})
    smtp_port = free_port()
    # LINE and Telegram: their APIs are nowhere (replies wait in the outbox).
    platforms = as_env(PLATFORMS) | {"TSUNAGI_COUNSELLOR_LIMIT": "10"}
    for server in serve(home, TSUNAGI_SMTP_LISTEN=f"127.0.0.1:{smtp_port}", **platforms):
        yield {"base": server.base, "smtp": smtp_port}


def page_in(browser: Browser, contexts: list[BrowserContext], dialogs: list[str], **kw: Any) -> Page:
    page = new_context(browser, contexts, init_script=RECORD, timeout_ms=WAIT_MS, **kw).new_page()
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
        assert post(f"{base}/webhooks/line", body, {"X-Line-Signature": line_signature(body)}) == 200


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
    chat = page_in(browser, contexts, dialogs, viewport={"width": 390, "height": 844})
    chat.goto(f"{base}/chat")
    chat.locator("#choices").get_by_role("button", name="同意して話す").click()
    expect(chat.locator("#log li.from-bot")).to_have_count(2)
    chat.locator("textarea").fill(f"{CRISIS}\n{ALL}")
    chat.locator("textarea").press("Enter")
    expect(chat.locator("#log")).to_contain_text("110", timeout=WAIT_MS)

    send_line(base)
    send_telegram(base)
    send_mail(site["smtp"])

    console = page_in(browser, contexts, dialogs, viewport={"width": 1280, "height": 900})
    console.goto(f"{base}/console")
    fill_login(console, SUPERVISOR)
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
