"""The counsellors' console in a real browser: ``tsunagi serve`` in a subprocess, Debian's Chromium
through Playwright, and the person on the other side through the web chat's WebSocket.

Every test gets a server of its own (a copy of one database whose accounts the CLI made once), so
that no test sees another's queue. Everything stays on loopback. Chromium is never downloaded (no
``playwright install``): a missing /usr/bin/chromium fails these tests.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from playwright.sync_api import APIResponse, Locator, Page, Route, expect
from sqlalchemy import select, update
from sqlmodel import col

from bot.db import Database
from bot.models import Message, Outbox, OutboxStatus
from bot.types import Inbound, Kind
from tests.browser_support import (
    CRISIS,
    WAIT_MS,
    Api,
    Person,
    Server,
    chat_in_crisis,
    compose_with_ime,
    fetch_status,
    in_thread,
    lines,
    log_in,
    queue_items,
    serious_violations,
    serve,
    settings_for,
    unnamed_controls,
)
from tests.engine_helpers import loopback, started
from tests.helpers import add_accounts

pytestmark = pytest.mark.browser

CSV_HEADER = "開始日,チャネル,リスク,年代,相談件数,相談員対応件数,緊急対応件数"

# -- (1) a crisis from arrival to close -------------------------------------------------------------


def test_counsellor_sees_a_crisis_claims_replies_and_closes(
    server: Server, new_page: Callable[[], Page], people: Callable[[], Person]
) -> None:
    page = new_page()
    log_in(page, server, "kana")
    expect(page.locator("#tab-supervisor")).to_be_hidden()
    expect(page.locator("#queue-empty")).to_be_visible()

    # On duty; notifications are asked for on a click, never on load.
    with page.expect_response(lambda r: r.url.endswith("/api/console/duty")) as duty:
        page.get_by_label("対応可能（オンデューティ）").check()
    assert duty.value.status == 200
    assert page.evaluate("fetch('/api/console/me').then((r) => r.json())")["on_duty"] is True
    assert page.evaluate("window.__permissionRequests") == 0
    page.get_by_role("button", name="デスクトップ通知を有効にする").click()
    expect(page.locator("#notify-state")).to_have_text("デスクトップ通知：有効")
    assert page.evaluate("window.__permissionRequests") == 1

    # A crisis arrives while the console is open: at the top, with its badge; sound, title, notification.
    quiet = people()
    quiet.say("同意")  # someone still with the bot: not in the queue
    person = people()
    person.in_crisis(CRISIS + "（テスト1）")
    first = queue_items(page).first
    expect(first).to_have_attribute("data-risk", "crisis")
    expect(first.locator(".risk")).to_have_text("リスク：危機")
    expect(first.locator(".risk")).to_have_css("background-color", "rgb(176, 0, 32)")
    expect(first.locator(".preview")).to_have_text(CRISIS + "（テスト1）")
    expect(first.locator(".cat")).to_have_text(["自殺・自傷"])
    expect(first.locator(".channel")).to_have_text("Webチャット")
    expect(first.locator(".wait")).to_have_text(re.compile(r"待ち時間 \d+秒"))
    expect(page).to_have_title(re.compile("緊急"))
    expect(page.locator("#crisis-banner")).to_be_visible()
    page.wait_for_function("window.__oscillators > 0")
    assert page.evaluate("window.__notifications") == [
        {"title": "つなぎ：危機レベルの相談", "body": "待機キューに危機レベルの相談が入りました。"}
    ]
    # The waiting time keeps counting.
    before = first.locator(".wait").text_content()
    expect(first.locator(".wait")).not_to_have_text(before or "", timeout=WAIT_MS)

    # Claim it: the transcript, with the triage reasons marked where they matched.
    first.get_by_role("button", name=re.compile("担当する")).click()
    expect(page.locator("#reply-form")).to_be_visible()
    expect(page.locator("#conv-meta .state")).to_have_text("相談員が対応中")
    expect(page.locator("#held-list > li")).to_have_count(1)
    expect(queue_items(page)).to_have_count(0)
    expect(lines(page, "user").last).to_contain_text(CRISIS + "（テスト1）")
    expect(lines(page, "user").last.locator("mark").first).to_be_visible()
    marked = "".join(lines(page, "user").last.locator("mark").all_inner_texts())
    assert "死に" in marked
    expect(page.locator("#reasons")).to_contain_text("自殺・自傷の危険")  # in Japanese, not the rule's id
    expect(page.locator("#reasons")).not_to_contain_text("suicide.")
    expect(lines(page, "bot").first).to_be_visible()
    person.got("bot", "相談員につながりました")

    # A canned reply, with the counsellor's display name (asked for first: never the username), edited
    # and sent with Enter.
    page.locator("#canned-list").get_by_role("button", name="はじめのあいさつ").click()
    expect(page.locator("#name-form")).to_be_visible()
    page.locator("#name-input").fill("佐藤")
    page.locator("#name-form").get_by_role("button", name="保存").click()
    page.locator("#canned-list").get_by_role("button", name="はじめのあいさつ").click()
    expect(page.locator("#reply")).to_have_value(re.compile("^はじめまして、相談員の佐藤です。"))
    page.locator("#reply").fill("相談員の佐藤です。話してくれてありがとう。")
    page.locator("#reply").press("Enter")
    expect(page.locator("#reply")).to_have_value("")
    person.got("counsellor", "相談員の佐藤です。話してくれてありがとう。")
    expect(lines(page, "counsellor").last).to_contain_text("話してくれてありがとう")

    # A referral from the directory goes into the box (not sent until the counsellor sends it).
    page.get_by_label("紹介先の検索").fill("救急")
    ambulance = page.locator("#ref-results li[data-referral='ambulance']")
    ambulance.get_by_role("button", name=re.compile("挿入")).click()
    expect(page.locator("#reply")).to_have_value(re.compile("救急 119"))
    page.locator("#reply").fill("")

    # A private note: listed, marked as never sent.
    page.get_by_label("メモを追加（相談者には送信されません）").fill("初回：安全確認を続ける")
    page.get_by_role("button", name="メモを保存").click()
    expect(page.locator("#notes-list")).to_contain_text("初回：安全確認を続ける")
    expect(page.locator("#notes-section")).to_contain_text("相談者には送信されません")

    # The person answers: the transcript grows by itself.
    person.say("ありがとう、少し落ち着きました")
    expect(lines(page, "user").last).to_contain_text("少し落ち着きました")

    # Close with an outcome and the referral given: the person gets the closing words.
    page.get_by_label("対応結果").select_option("referred")
    page.locator("#close-refs-list").get_by_label(re.compile("救急 119")).check()
    page.get_by_role("button", name="終了する").click()
    expect(page.locator("#conv-msg")).to_have_text("相談を終了しました。")
    person.got("bot", "これで今回の相談を終わります")
    expect(page.locator("#conv-meta .state")).to_have_text("終了")
    expect(page.locator("#reply-form")).to_be_hidden()
    expect(page.locator("#held-list > li")).to_have_count(0)
    # A note after closing: what was learned after the last word belongs in the record too.
    page.get_by_label("メモを追加（相談者には送信されません）").fill("終了後：翌日に再来の可能性")
    page.get_by_role("button", name="メモを保存").click()
    expect(page.locator("#notes-list")).to_contain_text("終了後：翌日に再来の可能性")
    assert not [f for f in person.frames if "安全確認を続ける" in json.dumps(f, ensure_ascii=False)]
    assert not [f for f in person.frames if "終了後" in json.dumps(f, ensure_ascii=False)]


# -- (1b) the direct question: in the web chat, then in the console ------------------------------------


def test_a_hopeless_message_gets_the_direct_question_and_the_console_shows_question_and_answer(
    server: Server, new_page: Callable[[], Page]
) -> None:
    """The web chat in one browser context, the console in another: a message of exhaustion and
    hopelessness gets the direct question with its buttons; はい gets 110 / 119 and the queue; the console
    shows the question, the answer under it, and the answer in the queue and in the reasons."""
    chat = new_page()
    chat.goto(f"{server.base}/chat")
    bot = chat.locator("#log li.from-bot")
    expect(bot.first).to_contain_text("相談窓口「つなぎ」")
    chat.locator("#choices").get_by_role("button", name="同意して話す").click()
    expect(bot.last).to_contain_text("どんなことでも大丈夫です")
    chat.locator("#input").fill("もう何もかも疲れた。どうでもいい")
    chat.locator("#input").press("Enter")
    expect(bot.last).to_contain_text("死にたいと思ったり、自分を傷つけたいと思ったり")
    expect(chat.locator("#choices").get_by_role("button")).to_have_text(["はい", "いいえ", "わからない"])
    chat.locator("#choices").get_by_role("button", name="はい").click()
    crisis = bot.filter(has_text="119")
    expect(crisis.first).to_contain_text("110")
    expect(chat.locator("#status")).to_have_text(re.compile(r"相談員を待っています（\d+番目）"))

    page = new_page()
    log_in(page, server, "kana")
    first = queue_items(page).first
    expect(first).to_have_attribute("data-risk", "crisis")
    expect(first.locator(".queue-reasons")).to_have_text(re.compile("直接確認：はい"))
    first.locator(".queue-open").click()
    question = lines(page, "bot").filter(has_text="死にたいと思ったり")
    expect(question).to_have_count(1)
    answer = page.locator("#transcript li.from-bot:has-text('死にたいと思ったり') + li")
    expect(answer).to_have_attribute("data-from", "user")
    expect(answer.locator(".msg-text")).to_have_text("はい")
    expect(page.locator("#reasons .dialogue-reason")).to_have_text(re.compile("ボットが直接確認：はい"))
    expect(page.locator("#intake-danger")).to_have_text(re.compile("^はい"))


# -- (2) what people write is text, never markup ---------------------------------------------------------


def test_markup_shows_as_text_in_the_queue_the_transcript_and_the_notes(
    server: Server, new_page: Callable[[], Page], people: Callable[[], Person]
) -> None:
    img = "<img src=x onerror=window.__xss=1>"
    script = "<script>window.__xss=2</script>"
    person = people()
    person.in_crisis(CRISIS + img)
    person.say(script)

    page = new_page()
    log_in(page, server, "kana")
    item = queue_items(page).first
    expect(item.locator(".preview")).to_have_text(CRISIS + img)  # the most serious line they wrote
    item.locator(".queue-open").click()
    expect(lines(page, "user")).to_have_count(3)
    expect(lines(page, "user").nth(1).locator(".msg-text")).to_have_text(CRISIS + img)
    expect(lines(page, "user").nth(1).locator("mark").first).to_contain_text("死に")
    expect(lines(page, "user").nth(2).locator(".msg-text")).to_have_text(script)
    expect(page.locator("#conv-notice")).to_contain_text("閲覧のみ")

    page.locator("#claim-btn").click()
    expect(page.locator("#reply-form")).to_be_visible()
    page.get_by_label("メモを追加（相談者には送信されません）").fill("<img src=x onerror=window.__xss=3>")
    page.get_by_role("button", name="メモを保存").click()
    expect(page.locator("#notes-list .note-text")).to_have_text("<img src=x onerror=window.__xss=3>")
    page.locator("#reply").fill("<b onmouseover=window.__xss=4>返信</b>")
    page.locator("#reply").press("Enter")
    expect(lines(page, "counsellor").last.locator(".msg-text")).to_have_text(
        "<b onmouseover=window.__xss=4>返信</b>"
    )

    page.reload()  # and again when everything is drawn from scratch
    expect(page.locator("#view-app")).to_be_visible()
    page.locator("#held-list button").first.click()
    expect(lines(page, "user").nth(2).locator(".msg-text")).to_have_text(script)
    expect(page.locator("#notes-list .note-text")).to_have_text("<img src=x onerror=window.__xss=3>")
    assert page.locator("main img, main script, #transcript b").count() == 0
    assert page.evaluate("typeof window.__xss") == "undefined"

    # Back to the queue: waiting again, with its place; the preview is still text.
    page.get_by_role("button", name="キューに戻す").click()
    expect(page.locator("#conv-msg")).to_have_text("キューに戻しました。")
    expect(page.locator("#conv-notice")).to_contain_text("待機中の相談です")
    expect(queue_items(page)).to_have_count(1)
    expect(queue_items(page).first.locator(".preview")).to_have_text(CRISIS + img)
    expect(page.locator("#held-list > li")).to_have_count(0)
    assert page.evaluate("typeof window.__xss") == "undefined"
    # The watched fixture fails the test on any dialog or script error.


# -- (2b) a mail's whole text, its attachments, and messages not (yet) delivered -------------------------

T = TypeVar("T")
MAIL_NEW = "最近眠れなくて、誰かに話を聞いてほしいです。"
HOSTILE = "<img src=x onerror=alert(1)>"
MAIL_FULL = (
    MAIL_NEW
    + "\n\n2026年11月20日 10:00 つなぎ <soudan@example.jp>:\n> 前回のメールの引用です。"
    + HOSTILE
    + "\n> "
    + "とても長い引用の行が続きます。" * 30
    + "\n-- \n山田（署名）"
)


@dataclass
class MailScene:
    server: Server
    home: Path
    replies: list[tuple[int, str]]  # the bot's replies: (outbox id, first line of the text), in order


async def _play_mail_scene(home: Path) -> list[tuple[int, str]]:
    """Before the server starts: a person writes through the engine (a mail-like message with its
    quoted thread and two attachments, then a request for a counsellor); every reply is delivered."""
    async with started(settings_for(home)) as svc:
        channel = loopback(svc)
        user = "mail-person"
        await channel.say(user, "こんにちは")
        await channel.say(user, "同意")
        await channel.receive(
            Inbound(
                channel="loopback",
                user_id=user,
                text=MAIL_NEW,
                full_text=MAIL_FULL,
                attachments=2,
                external_id="mail-1",
            )
        )
        await channel.say(user, "相談したい")
        await svc.outbox.send_due()
        async with svc.db.session() as s:
            rows = (
                await s.execute(
                    select(Outbox, col(Message.text_enc))
                    .join(Message, col(Message.id) == col(Outbox.message_id))
                    .order_by(col(Outbox.id))
                )
            ).all()
        assert [o.status for o, _ in rows] == [OutboxStatus.DELIVERED] * len(rows)
        return [(o.id or 0, svc.crypto.decrypt(text).splitlines()[0]) for o, text in rows]


async def _set_outbox(home: Path, states: dict[int, tuple[str, int, str]]) -> None:
    """Outbox rows put as the sending worker leaves them: {id: (status, attempts, last error)}. Rows
    left pending are due only tomorrow, so the server's worker leaves them alone (it has no loopback
    channel to send them on)."""
    db = Database(settings_for(home).resolved_database_url)
    try:
        async with db.session() as s, s.begin():
            for outbox_id, (status, attempts, error) in states.items():
                await s.execute(
                    update(Outbox)
                    .where(col(Outbox.id) == outbox_id)
                    .values(
                        status=status,
                        attempts=attempts,
                        last_error=error,
                        lease_until=None,
                        next_attempt_at=datetime.now(UTC) + timedelta(days=1),
                    )
                )
    finally:
        await db.dispose()


@pytest.fixture
def mail_scene(template: Path, tmp_path: Path) -> Iterator[MailScene]:
    home = tmp_path / "server"
    shutil.copytree(template, home)
    replies = in_thread(_play_mail_scene(home))
    assert len(replies) >= 3, replies
    for server in serve(home):
        yield MailScene(server=server, home=home, replies=replies)


def test_a_mail_shows_its_whole_text_and_attachments_and_replies_show_what_became_of_them(
    mail_scene: MailScene, new_page: Callable[[], Page]
) -> None:
    server, home, replies = mail_scene.server, mail_scene.home, mail_scene.replies
    first, retried, failed = replies[0], replies[-2], replies[-1]
    in_thread(
        _set_outbox(
            home,
            {
                first[0]: (OutboxStatus.PENDING, 0, ""),
                retried[0]: (OutboxStatus.PENDING, 1, "no relay configured"),
                failed[0]: (OutboxStatus.FAILED, 12, "bounced"),
            },
        )
    )
    page = new_page()
    log_in(page, server, "kana")
    expect(queue_items(page)).to_have_count(1)
    queue_items(page).first.locator(".queue-open").click()
    expect(page.locator("#conv-notice")).to_contain_text("待機中の相談です")

    # The mail: its new text in the transcript, the whole mail folded away, the files counted.
    mail = lines(page, "user").filter(has_text=MAIL_NEW)
    expect(mail).to_have_count(1)
    expect(mail.locator(".msg-text")).to_have_text(MAIL_NEW)
    details = mail.locator("details.msg-full")
    whole = details.locator(".msg-full-text")
    expect(details.locator("summary")).to_have_text("メール全文を見る（引用・署名を含む）")
    assert details.evaluate("(d) => d.open") is False
    expect(whole).to_be_hidden()
    expect(mail.locator(".msg-attachments")).to_have_text("添付ファイル 2件（保存していません）")
    expect(lines(page, "user").locator(".msg-full")).to_have_count(1)  # only on the mail
    expect(page.locator("#transcript .msg-attachments")).to_have_count(1)
    expect(lines(page, "user").locator(".msg-delivery")).to_have_count(0)  # nothing is sent to us

    details.locator("summary").click()
    expect(whole).to_be_visible()
    assert whole.text_content() == MAIL_FULL  # exactly, markup and all, as text
    expect(whole).to_contain_text(HOSTILE)
    expect(whole).to_have_css("white-space", "pre-wrap")
    assert whole.evaluate("(e) => e.scrollWidth <= e.clientWidth")  # the long quoted line wraps
    assert page.locator("#transcript img").count() == 0

    # Replies not delivered say so under their text; the reason is in the title only (it is English).
    def reply(text: str) -> Locator:
        found = lines(page, "bot").filter(has_text=text)
        expect(found).to_have_count(1)
        return found

    waiting = reply(first[1]).locator(".msg-delivery")
    expect(waiting).to_have_text("送信待ち")
    expect(waiting).to_have_class("msg-delivery pending")
    expect(waiting).not_to_have_attribute("title", re.compile("."))
    retrying = reply(retried[1]).locator(".msg-delivery")
    expect(retrying).to_have_text("送信待ち（再試行中）")
    expect(retrying).to_have_class("msg-delivery pending")
    expect(retrying).to_have_attribute("title", "no relay configured")
    given_up = reply(failed[1]).locator(".msg-delivery")
    expect(given_up).to_have_text("届けられませんでした")
    expect(given_up).to_have_class("msg-delivery failed")
    expect(given_up).to_have_attribute("title", "bounced")
    expect(page.locator("#transcript .msg-delivery")).to_have_count(3)  # the delivered ones say nothing
    muted = waiting.evaluate("(e) => getComputedStyle(e).color")
    warning = given_up.evaluate("(e) => getComputedStyle(e).color")
    assert muted != warning

    # What became of them changes, and a live event (kana takes it, from elsewhere) reloads the
    # conversation: the lines already drawn follow; the opened mail stays open where it was.
    transcript = page.locator("#transcript")
    assert transcript.evaluate("(e) => e.scrollHeight > e.clientHeight")  # the open mail is long
    transcript.evaluate("(e) => { e.scrollTop = 0; }")  # the counsellor reads from the top
    count = page.locator("#transcript > li").count()
    in_thread(
        _set_outbox(
            home,
            {
                first[0]: (OutboxStatus.DELIVERED, 1, ""),
                retried[0]: (OutboxStatus.FAILED, 12, "no relay configured"),
            },
        )
    )
    kana = Api(server, "kana")
    kana.call("POST", f"/conversations/{kana.waiting()[0]}/claim")
    expect(page.locator("#reply-form")).to_be_visible()
    expect(page.locator("#transcript > li")).to_have_count(count + 1)  # "相談員につながりました"
    expect(page.locator("#transcript > li").last).to_have_class(re.compile("from-system"))
    expect(reply(first[1]).locator(".msg-delivery")).to_have_count(0)
    expect(retrying).to_have_text("届けられませんでした")
    expect(retrying).to_have_class("msg-delivery failed")
    expect(retrying).to_have_attribute("title", "no relay configured")
    expect(given_up).to_have_text("届けられませんでした")
    assert details.evaluate("(d) => d.open") is True
    expect(whole).to_be_visible()
    assert transcript.evaluate("(e) => e.scrollTop") == 0  # not pulled to the bottom
    assert page.locator("#transcript img").count() == 0
    # The watched fixture fails the test on any dialog (the alert(1) above) or script error.


# -- pictures, stickers, places, files and a withdrawn message -------------------------------------------

WITHDRAWN_TEXT = "もう死にたい。今から薬を全部飲む"
EVIL_NAME = "<img src=x onerror=alert(2)>.pdf"


async def _play_media_scene(home: Path) -> None:
    """Before the server starts: a person sends, through the engine, a picture (a screenshot), a sticker,
    a place and a PDF that is refused, then a crisis that they withdraw (LINE's unsend), and a message
    they edit."""
    from bot.images import file_item
    from bot.types import EDITED, Item
    from tests.pictures import screenshot

    async with started(settings_for(home)) as svc:
        channel = loopback(svc)
        user = "media-person"
        await channel.say(user, "こんにちは")
        await channel.say(user, "同意")
        picture = file_item("スクショ.png", "image/png", screenshot(300, 600))
        assert picture.picture is not None
        items = [
            picture,
            Item("sticker", keywords=("sad", "泣く")),
            Item("location", title="渋谷駅", address="東京都渋谷区道玄坂１丁目"),
            Item("file", name=EVIL_NAME, size=2048, refused="pdf"),
        ]
        for i, item in enumerate(items):
            await channel.receive(
                Inbound(channel="loopback", user_id=user, kind=Kind.MEDIA, items=(item,), external_id=f"m{i}")
            )
        await channel.say(user, WITHDRAWN_TEXT, external_id="to-withdraw")
        assert await svc.engine.withdraw("loopback", user, "to-withdraw")
        await channel.say(user, "話を聞いてほしいです", external_id="to-edit")
        await channel.receive(
            Inbound(
                channel="loopback",
                user_id=user,
                text="話を聞いてほしいです。学校に行けません",
                external_id="to-edit:edit:1",
                flags=(EDITED,),
            )
        )
        await svc.outbox.send_due()


@pytest.fixture
def media_server(template: Path, tmp_path: Path) -> Iterator[Server]:
    home = tmp_path / "server"
    shutil.copytree(template, home)
    in_thread(_play_media_scene(home))
    yield from serve(home)


def test_pictures_are_behind_a_click_and_a_withdrawn_message_says_so(
    media_server: Server, new_page: Callable[[], Page]
) -> None:
    page = new_page()
    log_in(page, media_server, "kana")
    expect(queue_items(page)).to_have_count(1)  # the withdrawn crisis still needs a counsellor's eyes
    expect(queue_items(page).first).not_to_contain_text("死にたい")  # not in the preview
    queue_items(page).first.locator(".queue-open").click()
    expect(page.locator("#conv-notice")).to_contain_text("待機中の相談です")
    transcript = page.locator("#transcript")

    # The withdrawn message: said so, its text gone; the reason that it raised the risk stays, in words.
    gone = lines(page, "user").filter(has=page.locator(".msg-withdrawn"))
    expect(gone).to_have_count(1)
    expect(gone.locator(".msg-text")).to_have_text(
        "（相談者がこのメッセージを取り消しました。内容は消去されています）"
    )
    expect(transcript).not_to_contain_text("死にたい")
    expect(page.locator("#reasons .reason-withdrawn").first).to_contain_text(
        "取り消されたメッセージがこの判定を上げました"
    )
    expect(page.locator("#reasons")).not_to_contain_text("死にたい")

    # The edited message: both versions, the second marked.
    expect(lines(page, "user").filter(has_text="学校に行けません").locator(".msg-flag")).to_have_text(
        "編集後のメッセージです（編集前のものも上に残っています）。"
    )

    # What came besides text, in words; a file name with markup is text.
    items = transcript.locator(".msg-item")
    expect(items).to_have_count(4)
    expect(items.nth(0)).to_have_text("画像")
    expect(items.nth(1)).to_have_text("スタンプ（キーワード：sad、泣く）")
    expect(items.nth(2)).to_have_text("位置情報：渋谷駅／東京都渋谷区道玄坂１丁目")
    expect(items.nth(3)).to_have_text(f"ファイル：{EVIL_NAME}（2KB） — 安全のため受け取っていません（PDF）")

    # The picture: a warning and a button, and no image until the counsellor asks for it.
    block = transcript.locator(".msg-picture")
    expect(block).to_have_count(1)
    expect(block.locator(".picture-warning")).to_contain_text("つらい内容")
    assert page.locator("#transcript img").count() == 0
    block.get_by_role("button", name="画像を表示する").click()
    img = block.locator("img.picture")
    expect(img).to_be_visible()
    page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=img.element_handle())
    assert img.evaluate("(i) => [i.naturalWidth, i.naturalHeight]") == [300, 600]
    assert page.locator("#transcript img").count() == 1, "the file name's markup made no image"
    src = str(img.get_attribute("src"))
    block.get_by_role("button", name="画像を隠す").click()
    expect(block.locator("img")).to_have_count(0)
    expect(block.get_by_role("button", name="画像を表示する")).to_be_visible()
    # The picture's address answers only a session that may read the conversation.
    stranger = new_page()
    stranger.goto(f"{media_server.base}/console")
    assert fetch_status(stranger, src) == 401
    assert fetch_status(page, src) == 200


# -- (3) supervisors' views ------------------------------------------------------------------------------


def test_supervisor_views_are_for_supervisors_only(
    server: Server, new_page: Callable[[], Page], people: Callable[[], Person]
) -> None:
    # The scene: one conversation kana has, one kana has closed (so that there are statistics).
    kana = Api(server, "kana")
    held = people()
    held.in_crisis()
    held_id = kana.waiting()[0]
    kana.call("POST", f"/conversations/{held_id}/claim")
    kana.call("POST", f"/conversations/{held_id}/messages", {"text": "相談員です。ここにいますよ。"})
    done = people()
    done.in_crisis()
    done_id = kana.waiting()[0]
    kana.call("POST", f"/conversations/{done_id}/claim")
    kana.call("POST", f"/conversations/{done_id}/close", {"outcome": "listened", "referrals": []})

    counsellor = new_page()
    log_in(counsellor, server, "kana")
    expect(counsellor.locator("#tab-supervisor")).to_be_hidden()
    expect(counsellor.locator("#supervisor")).to_be_hidden()
    for path in ("overview", "stats", "stats.csv", "audit"):
        assert fetch_status(counsellor, f"/api/console/{path}") == 403, path

    page = new_page()
    log_in(page, server, "sato")
    page.get_by_role("button", name="全体の状況（スーパーバイザー）").click()
    expect(page.locator("#supervisor")).to_be_visible()
    expect(page.locator("#console")).to_be_hidden()

    # Every active conversation and who has it; the waiting count; each counsellor's load.
    row = page.locator(f"#ov-active tr[data-conversation-id='{held_id}']")
    expect(row.locator(".counsellor")).to_have_text("kana")
    expect(row.locator(".risk")).to_have_text("リスク：危機")
    expect(page.locator("#ov-waiting")).to_have_text("0件")
    expect(page.locator("#ov-longest")).to_have_text("—")
    expect(page.locator("#ov-counsellors tr[data-username='kana'] .load")).to_have_text("1 / 2件")
    expect(page.locator("#ov-counsellors tr[data-username='yui'] .load")).to_have_text("0 / 2件")

    # The charts: by day, category, risk and channel.
    charts = page.locator("#charts")
    expect(charts.locator("[data-chart='day'] rect.day-bar")).to_have_count(1)
    expect(charts.locator("[data-chart='category'] .bar-row[data-key='suicide']")).to_contain_text(
        "自殺・自傷"
    )
    # Every conversation by its start, the open one too.
    expect(charts.locator("[data-chart='risk'] .bar-row[data-key='crisis']")).to_contain_text("2件")
    expect(charts.locator("[data-chart='channel'] .bar-row[data-key='webchat']")).to_contain_text(
        "Webチャット"
    )
    bar = charts.locator("[data-chart='risk'] .bar-fill").first.bounding_box()
    assert bar is not None and bar["width"] > 10
    day = charts.locator("rect.day-bar").first.bounding_box()
    assert day is not None and day["height"] > 10

    expect(page.locator("#stats-totals")).to_have_text(
        "相談 2件（うち対応中 1件）／ 緊急対応 2件 ／ 相談員につないだ相談 2件"
    )

    # The CSV exports download Japanese text for Excel (a BOM), the totals last.
    with page.expect_download(timeout=WAIT_MS) as download:
        page.get_by_role("link", name="日別のCSV").click()
    raw = Path(download.value.path()).read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    text = raw.decode("utf-8")
    assert text.lstrip("\ufeff").startswith(CSV_HEADER + "\r\n")
    assert ",Webチャット,危機,未回答,2,2,2\r\n" in text and text.endswith("合計,,,,2,2,2\r\n"), text
    with page.expect_download(timeout=WAIT_MS) as download:
        page.get_by_role("link", name="集計のCSV").click()
    totals = Path(download.value.path()).read_bytes().decode("utf-8")
    assert "対応結果別,傾聴・相談対応,1\r\n" in totals and "対応結果別,対応中（未終了）,1\r\n" in totals

    # The audit log, in Japanese.
    audit = page.locator("#audit")
    expect(
        audit.locator("tr").filter(has_text="kana").filter(has_text="終了（相談員）").first
    ).to_be_visible()

    # Watching a conversation someone else has: read-only.
    row.get_by_role("button", name=re.compile("見守る")).click()
    expect(page.locator("#console")).to_be_visible()
    expect(page.locator("#conv-notice")).to_have_text("閲覧のみ：この相談は kana さんが担当しています。")
    expect(lines(page, "counsellor").last).to_contain_text("ここにいますよ")
    expect(page.locator("#reply-form")).to_be_hidden()
    expect(page.locator("#claim-btn")).to_be_hidden()
    expect(page.locator("#close-section")).to_be_hidden()
    expect(page.locator("#notes-section")).to_be_visible()
    expect(page.locator("#note-form")).to_be_hidden()
    # Advice to the counsellor (SV助言): kept beside the notes, shown to kana, never sent to the person.
    page.get_by_label("担当の相談員への助言（SV助言・相談者には送信されません）").fill("場所の確認を先に")
    page.get_by_role("button", name="助言を残す").click()
    advice = page.locator("#notes-list li[data-kind='advice']")
    expect(advice).to_contain_text("SV助言")
    expect(advice).to_contain_text("場所の確認を先に")
    kana_view = Api(server, "kana").call("GET", f"/conversations/{held_id}")
    assert [(n["kind"], n["text"]) for n in kana_view["notes"]] == [("advice", "場所の確認を先に")]
    assert not [f for f in held.frames if "場所の確認" in json.dumps(f, ensure_ascii=False)]

    # Another counsellor may not read it at all.
    yui = new_page()
    log_in(yui, server, "yui")
    assert fetch_status(yui, f"/api/console/conversations/{held_id}") == 403


# -- (4) Japanese input ---------------------------------------------------------------------------------


def test_enter_during_ime_composition_does_not_send_the_reply(
    server: Server, new_page: Callable[[], Page], people: Callable[[], Person]
) -> None:
    """A real IME composition through the DevTools protocol (Input.imeSetComposition, then
    Input.insertText to commit), as tests/test_browser.py does for the web chat."""
    person = people()
    person.in_crisis()
    page = new_page()
    log_in(page, server, "kana")
    queue_items(page).first.get_by_role("button", name=re.compile("担当する")).click()
    expect(page.locator("#reply-form")).to_be_visible()
    box = page.get_by_label("相談者への返信")
    cdp = compose_with_ime(page, box, "そうだん")

    page.keyboard.press("Enter")  # confirms the conversion: must not send
    page.wait_for_timeout(400)  # a send would have cleared the box and drawn the line by now
    expect(lines(page, "counsellor")).to_have_count(0)
    expect(box).to_have_value(re.compile("そうだん"))

    cdp.send("Input.insertText", {"text": "相談ですね"})  # commits the composition
    expect(box).to_have_value(re.compile("相談ですね"))
    page.wait_for_timeout(50)  # the page lets compositionend settle before Enter sends again
    # (Emulated, the confirming Enter also left a line break that a real IME swallows: start clean.)
    box.fill("相談ですね")
    box.press("Shift+Enter")
    box.press_sequentially("続けてどうぞ")
    expect(box).to_have_value("相談ですね\n続けてどうぞ")
    expect(lines(page, "counsellor")).to_have_count(0)
    box.press("Enter")
    expect(lines(page, "counsellor")).to_have_count(1)
    expect(lines(page, "counsellor").last.locator(".msg-text")).to_have_text("相談ですね\n続けてどうぞ")
    person.got("counsellor", "相談ですね\n続けてどうぞ")
    assert [f for f in person.frames if f.get("from") == "counsellor"] == [person.frames[-1]]
    cdp.detach()

    # Transfer: to yui, chosen from the list of colleagues, who has it from then on.
    picker = page.get_by_label("転送先の相談員（ユーザー名）")
    expect(picker.locator("option[value='yui']")).to_have_text("yui（勤務外・対応 0/2）")
    picker.select_option("yui")
    # yui is off duty: said first, and the second press transfers.
    page.get_by_role("button", name="転送する").click()
    expect(page.locator("#conv-msg")).to_contain_text("yui さんはいま勤務外です")
    expect(page.locator("#held-list > li")).to_have_count(1)
    page.get_by_role("button", name="勤務外でも転送する").click()
    expect(page.locator("#conv-msg")).to_have_text("yui さんに転送しました。")
    expect(page.locator("#conv-notice")).to_have_text("閲覧のみ：この相談は yui さんが担当しています。")
    expect(page.locator("#reply-form")).to_be_hidden()
    expect(page.locator("#held-list > li")).to_have_count(0)
    assert len(Api(server, "yui").call("GET", "/me")["held"]) == 1


# -- (5) logging in and out ------------------------------------------------------------------------------


def test_wrong_password_claim_conflict_and_logout(
    server: Server, new_page: Callable[[], Page], people: Callable[[], Person]
) -> None:
    page = new_page()
    muted = {"on": False}

    def events(route: Any) -> None:  # the live socket, with a switch to hold its events back
        upstream = route.connect_to_server()
        upstream.on_message(lambda m: None if muted["on"] else route.send(m))

    page.route_web_socket(re.compile(r"/api/console/live$"), events)
    page.goto(f"{server.base}/console")
    page.get_by_label("ユーザー名", exact=True).fill("kana")
    page.get_by_label("パスワード", exact=True).fill("not-the-password")
    page.get_by_role("button", name="ログイン").click()
    expect(page.locator("#login-error")).to_have_text("ユーザー名またはパスワードが正しくありません。")
    expect(page.locator("#view-app")).to_be_hidden()
    log_in(page, server, "kana")

    # yui claims what kana is looking at before kana's page hears of it: kana's claim gets a 409,
    # and the page says why.
    person = people()
    person.in_crisis()
    queue_items(page).first.locator(".queue-open").click()
    expect(page.locator("#claim-btn")).to_be_visible()
    muted["on"] = True
    yui = Api(server, "yui")
    yui.call("POST", f"/conversations/{yui.waiting()[0]}/claim")
    with page.expect_response(lambda r: r.url.endswith("/claim")) as claim:
        page.locator("#claim-btn").click()
    assert claim.value.status == 409
    expect(page.locator("#conv-msg")).to_have_text("ほかの相談員がすでにこの相談を担当しています。")
    expect(queue_items(page)).to_have_count(0)  # and the queue is fetched again
    muted["on"] = False

    page.get_by_role("button", name="ログアウト").click()
    expect(page.locator("#view-login")).to_be_visible()
    expect(page.locator("#login-info")).to_have_text("ログアウトしました。")
    assert fetch_status(page, "/api/console/me") == 401


def test_live_updates_come_back_after_the_socket_drops(
    server: Server, new_page: Callable[[], Page], people: Callable[[], Person]
) -> None:
    page = new_page()
    routes: list[Any] = []

    def through(route: Any) -> None:
        routes.append(route)
        route.connect_to_server()

    page.route_web_socket(re.compile(r"/api/console/live$"), through)
    log_in(page, server, "kana")
    assert len(routes) == 1
    routes[0].close(code=1001)
    expect(page.locator("#live-status")).to_have_text("リアルタイム更新：再接続しています…")
    expect(page.locator("#live-status")).to_have_text("リアルタイム更新：接続中")
    assert len(routes) == 2
    people().in_crisis()  # shown through the new socket (the page polls only every 30 s)
    expect(queue_items(page)).to_have_count(1)
    expect(page).to_have_title(re.compile("緊急"))


def test_first_admin_changes_the_one_time_password_then_logins_are_rate_limited(
    fresh_server: Server, new_page: Callable[[], Page]
) -> None:
    found = re.search(r"one-time password\s+(\S+)", fresh_server.log.read_text())
    assert found, fresh_server.log.read_text()
    one_time = found.group(1)
    page = new_page()
    page.goto(f"{fresh_server.base}/console")
    page.get_by_label("ユーザー名", exact=True).fill("admin")
    page.get_by_label("パスワード", exact=True).fill(one_time)
    page.get_by_role("button", name="ログイン").click()
    expect(page.locator("#view-password")).to_be_visible()
    expect(page.locator("#view-app")).to_be_hidden()
    assert fetch_status(page, "/api/console/queue") == 403  # nothing else until it is changed

    page.get_by_label("現在（仮）のパスワード").fill(one_time)
    page.get_by_label("新しいパスワード（12文字以上）").fill("short")
    page.get_by_label("新しいパスワード（確認）").fill("short")
    page.get_by_role("button", name="変更する").click()
    expect(page.locator("#pw-error")).to_have_text("新しいパスワードは12文字以上にしてください。")
    page.get_by_label("新しいパスワード（12文字以上）").fill("a-new-admin-password")
    page.get_by_label("新しいパスワード（確認）").fill("a-new-admin-passwordX")
    page.get_by_role("button", name="変更する").click()
    expect(page.locator("#pw-error")).to_have_text("新しいパスワードが確認用と一致しません。")
    page.get_by_label("現在（仮）のパスワード").fill("wrong-one-time")
    page.get_by_label("新しいパスワード（確認）").fill("a-new-admin-password")
    page.get_by_role("button", name="変更する").click()
    expect(page.locator("#pw-error")).to_have_text("現在のパスワードが正しくありません。")
    page.get_by_label("現在（仮）のパスワード").fill(one_time)
    page.get_by_role("button", name="変更する").click()
    expect(page.locator("#view-app")).to_be_visible()
    expect(page.locator("#tab-supervisor")).to_be_visible()  # an admin supervises
    assert fetch_status(page, "/api/console/overview") == 200

    # Five failed logins, then the wait message (the limit counts per name and per address).
    page.get_by_role("button", name="ログアウト").click()
    expect(page.locator("#view-login")).to_be_visible()
    for _ in range(5):
        page.get_by_label("ユーザー名", exact=True).fill("admin")
        page.get_by_label("パスワード", exact=True).fill(one_time)  # the old one: wrong now
        page.get_by_role("button", name="ログイン").click()
        expect(page.locator("#login-error")).to_have_text("ユーザー名またはパスワードが正しくありません。")
        page.evaluate("document.getElementById('login-error').textContent = ''")
    page.get_by_label("パスワード", exact=True).fill("a-new-admin-password")
    page.get_by_role("button", name="ログイン").click()
    expect(page.locator("#login-error")).to_contain_text("しばらくログインできません")
    expect(page.locator("#view-app")).to_be_hidden()


# -- accessibility -----------------------------------------------------------------------------------------


def test_accessibility_basics(
    server: Server, new_page: Callable[[], Page], people: Callable[[], Person]
) -> None:
    page = new_page()
    page.goto(f"{server.base}/console")
    expect(page.locator("html")).to_have_attribute("lang", "ja")
    expect(page.get_by_label("ユーザー名", exact=True)).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_label("パスワード", exact=True)).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="ログイン")).to_be_focused()
    expect(page.locator("#login-error")).to_have_attribute("role", "alert")

    people().in_crisis()
    log_in(page, server, "kana")
    queue_items(page).first.locator(".queue-open").click()
    expect(page.locator("#conv-title")).to_be_focused()
    log = page.get_by_role("log", name="会話の記録")
    expect(log).to_have_attribute("aria-live", "polite")
    expect(lines(page, "user").first.locator(".msg-who")).to_have_text("相談者")
    expect(lines(page, "bot").first.locator(".msg-who")).to_have_text("ボット")
    expect(page.locator("#crisis-banner")).to_have_attribute("role", "alert")
    # Every form control has a name.
    assert unnamed_controls(page) == []


# -- issue 14: what loses a person -------------------------------------------------------------------------


def in_view(page: Page, locator: Locator) -> bool:
    """Is the element on screen, inside the transcript's visible part (not scrolled away in it)?"""
    return bool(
        locator.evaluate(
            """(e) => { const r = e.getBoundingClientRect(); const box = e.closest('.transcript');
                const b = box.getBoundingClientRect();
                return r.height > 0 && r.top >= b.top - 1 && r.bottom <= b.bottom + 1
                    && r.bottom <= window.innerHeight; }"""
        )
    )


def test_the_transcript_follows_the_person_after_claiming_or_says_there_is_something_new(
    server: Server, new_page: Callable[[], Page], people: Callable[[], Person]
) -> None:
    person = people()
    person.in_crisis()
    for i in range(6):  # enough to fill the transcript
        person.say(
            f"{i + 1}つめ。" + "ずっと前から家の中のことでつらい思いをしていて、誰にも言えませんでした。" * 2
        )
    page = new_page()
    log_in(page, server, "kana")
    queue_items(page).first.locator(".queue-open").click()
    expect(lines(page, "user")).to_have_count(8)
    # Claimed from the open conversation: the reply box appears under the transcript.
    page.locator("#claim-btn").click()
    expect(page.locator("#reply-form")).to_be_visible()
    expect(lines(page, "system").last).to_contain_text("相談員につながりました")
    person.got("bot", "相談員につながりました")
    assert page.locator("#transcript").evaluate("(e) => e.scrollHeight > e.clientHeight + 100")

    # At the bottom: what the person writes next comes into view by itself.
    person.say("彼がいまから家に来るって言ってる")
    newest = lines(page, "user").filter(has_text="彼がいまから家に来る")
    expect(newest).to_have_count(1)
    page.wait_for_function(
        "() => { const t = document.getElementById('transcript'); "
        "return t.scrollHeight - t.scrollTop - t.clientHeight < 40; }"
    )
    assert in_view(page, newest)
    expect(page.locator("#new-marker")).to_be_hidden()

    # Scrolled up to read: a new message does not pull the view away, a marker says it came.
    page.locator("#transcript").evaluate("(e) => { e.scrollTop = 0; }")
    page.wait_for_timeout(100)
    person.say("こわい、どうしよう")
    expect(page.locator("#new-marker")).to_be_visible()
    expect(page.locator("#new-marker")).to_have_text("新着メッセージ 1件 ↓ 最新へ移動")
    scared = lines(page, "user").filter(has_text="こわい、どうしよう")
    assert not in_view(page, scared)
    page.locator("#new-marker").click()
    expect(page.locator("#new-marker")).to_be_hidden()
    page.wait_for_function(
        "(e) => e.scrollHeight - e.scrollTop - e.clientHeight < 40",
        arg=page.locator("#transcript").element_handle(),
    )
    assert in_view(page, scared)

    # The counsellor's own reply comes into view wherever they had scrolled.
    page.locator("#transcript").evaluate("(e) => { e.scrollTop = 0; }")
    page.wait_for_timeout(100)
    page.locator("#reply").fill("いま安全な場所にいますか？")
    page.locator("#reply").press("Enter")
    mine = lines(page, "counsellor").filter(has_text="いま安全な場所にいますか")
    expect(mine).to_have_count(1)
    page.wait_for_function(
        "(e) => e.scrollHeight - e.scrollTop - e.clientHeight < 40",
        arg=page.locator("#transcript").element_handle(),
    )
    assert in_view(page, mine)
    expect(page.locator("#new-marker")).to_be_hidden()


def test_the_console_says_when_the_person_has_gone_and_why_a_reply_cannot_reach_them(
    server: Server, new_page: Callable[[], Page], phone: Callable[[], Page]
) -> None:
    console = new_page()
    log_in(console, server, "kana")

    # Connected: said on the queue card.
    chat = phone()
    chat_in_crisis(chat, server)
    card = queue_items(console).first
    expect(card.locator(".presence")).to_have_text("相談者：接続中")

    # The quick exit: the card says it, and so does the transcript once taken; a reply says it cannot
    # reach them (it never will: the page forgot its token).
    chat.locator("#quick-exit").click()
    chat.wait_for_url(re.compile(r"yahoo"))
    expect(card.locator(".presence")).to_have_text(
        re.compile(r"^相談者：「すぐに閉じる」で退出（\d\d:\d\d）$")
    )
    card.get_by_role("button", name=re.compile("担当する")).click()
    expect(console.locator("#reply-form")).to_be_visible()
    expect(console.locator("#conv-presence")).to_have_text(
        re.compile(
            r"^相談者は\d\d:\d\dに「すぐに閉じる」でページを閉じました。この相談への返信は、もう届きません。$"
        )
    )
    console.locator("#reply").fill("相談員です。まだそこにいますか？")
    console.locator("#reply").press("Enter")
    mine = lines(console, "counsellor").last
    expect(mine.locator(".msg-delivery")).to_have_text(
        "届けられませんでした（相談者が「すぐに閉じる」で退出したため）"
    )
    expect(mine.locator(".msg-delivery")).to_have_attribute("data-status", "failed")

    # A closed tab: left; a reply waits for them and says so (a reload would bring it).
    second = phone()
    chat_in_crisis(second, server)
    card = queue_items(console).first
    expect(card.locator(".presence")).to_have_text("相談者：接続中")
    card.get_by_role("button", name=re.compile("担当する")).click()
    expect(console.locator("#conv-presence")).to_have_text("相談者はいまチャットを開いています。")
    console.locator("#reply").fill("相談員です。ここにいますよ。")
    console.locator("#reply").press("Enter")
    # On the phone the counsellor's words carry a visible label, not a colour alone.
    said = second.locator("#log li.from-counsellor")
    expect(said.locator(".bubble")).to_have_text("相談員です。ここにいますよ。")
    expect(said.locator(".who")).to_have_text("相談員")
    expect(said.locator(".who")).to_be_visible()
    second.close()
    expect(console.locator("#conv-presence")).to_have_text(
        re.compile(r"^相談者は\d\d:\d\dにページを離れました。戻ってくるまで、返信は届きません")
    )
    console.locator("#reply").fill("戻ってきたら、また話しましょう。")
    console.locator("#reply").press("Enter")
    expect(lines(console, "counsellor").last.locator(".msg-delivery")).to_have_text(
        "送信待ち（相談者がページを離れています。戻ってきたときに届きます）"
    )


def test_a_crisis_alarm_sounds_again_until_someone_takes_it_and_then_goes(
    server: Server, new_page: Callable[[], Page], people: Callable[[], Person]
) -> None:
    page = new_page()
    page.clock.install()
    log_in(page, server, "sato")
    with page.expect_response(lambda r: r.url.endswith("/api/console/duty")):
        page.get_by_label("対応可能（オンデューティ）").check()
    person = people()
    person.in_crisis()
    expect(page.locator("#crisis-banner")).to_be_visible()
    page.wait_for_function("window.__oscillators > 0")
    first = page.evaluate("window.__oscillators")
    page.clock.fast_forward(21_000)  # not taken yet: the sound comes again
    page.wait_for_function("(n) => window.__oscillators > n", arg=first)

    # The supervisor's alert list says what it is in Japanese.
    page.get_by_role("button", name="全体の状況（スーパーバイザー）").click()
    expect(page.locator("#ov-alerts li").first).to_contain_text("危機レベルの相談")
    expect(page.locator("#ov-alerts")).not_to_contain_text("crisis")

    # A counsellor takes it: the banner goes by itself, and the sound stops.
    kana = Api(server, "kana")
    kana.call("POST", f"/conversations/{kana.waiting()[0]}/claim")
    expect(page.locator("#crisis-banner")).to_be_hidden()
    expect(page).not_to_have_title(re.compile("緊急"))
    expect(page.locator("#ov-alerts")).to_contain_text("未確認のアラートはありません。")
    after = page.evaluate("window.__oscillators")
    page.clock.fast_forward(45_000)
    page.wait_for_timeout(200)
    assert page.evaluate("window.__oscillators") == after


def test_taking_a_lesser_conversation_while_a_crisis_waits_is_warned_first(
    server: Server, new_page: Callable[[], Page], people: Callable[[], Person]
) -> None:
    asked = people()
    asked.say("同意")
    asked.say("相談したい")  # waits at low risk
    people().in_crisis()
    page = new_page()
    log_in(page, server, "kana")
    expect(queue_items(page)).to_have_count(2)
    low = queue_items(page).nth(1)
    expect(low).to_have_attribute("data-risk", "low")
    low.get_by_role("button", name=re.compile("担当する")).click()
    warning = page.locator("#claim-warning")
    expect(warning).to_be_visible()
    expect(warning).to_contain_text("危機レベルの相談が待っています")
    expect(page.locator("#held-list > li")).to_have_count(0)  # nothing taken yet
    # The way to the crisis.
    warning.get_by_role("button", name="危機レベルの相談を開く").click()
    expect(warning).to_be_hidden()
    expect(page.locator("#conv-meta .risk")).to_have_text("リスク：危機")
    # Or, on purpose, the lesser one all the same.
    queue_items(page).nth(1).get_by_role("button", name=re.compile("担当する")).click()
    expect(warning).to_be_visible()
    warning.get_by_role("button", name="それでもこの相談を担当する").click()
    expect(page.locator("#held-list > li")).to_have_count(1)
    expect(page.locator("#reply-form")).to_be_visible()
    expect(queue_items(page)).to_have_count(1)
    expect(queue_items(page).first).to_have_attribute("data-risk", "crisis")


def test_a_refused_or_warned_transfer_does_not_linger(
    server: Server, new_page: Callable[[], Page], people: Callable[[], Person]
) -> None:
    people().in_crisis()
    page = new_page()
    log_in(page, server, "kana")
    queue_items(page).first.get_by_role("button", name=re.compile("担当する")).click()
    expect(page.locator("#reply-form")).to_be_visible()
    page.get_by_role("button", name="転送する").click()
    expect(page.locator("#conv-msg")).to_have_text("転送先の相談員を選んでください。")
    picker = page.get_by_label("転送先の相談員（ユーザー名）")
    picker.select_option("yui")
    expect(page.locator("#conv-msg")).to_have_text("")
    page.get_by_role("button", name="転送する").click()
    expect(page.locator("#conv-msg")).to_contain_text("勤務外")
    picker.select_option("")
    expect(page.locator("#conv-msg")).to_have_text("")
    expect(page.locator("#transfer-submit")).to_have_text("転送する")


def test_the_queue_card_shows_the_most_serious_line_and_each_message_its_own_risk(
    server: Server, new_page: Callable[[], Page], people: Callable[[], Person]
) -> None:
    person = people()
    person.in_crisis()
    person.say("ありがとう")
    page = new_page()
    log_in(page, server, "kana")
    card = queue_items(page).first
    expect(card.locator(".preview")).to_have_text(CRISIS)  # not the latest ありがとう
    expect(card.locator(".preview-reason")).to_have_text(re.compile(r"^自殺・自傷の危険：「.+」$"))
    card.locator(".queue-open").click()
    thanks = lines(page, "user").filter(has_text="ありがとう")
    expect(thanks.locator(".msg-text")).to_have_text("ありがとう")
    expect(thanks.locator(".risk")).to_have_count(0)  # its own risk is low: no badge
    crisis = lines(page, "user").filter(has_text="飛び降りる")
    expect(crisis.locator(".risk")).to_have_text("リスク：危機")
    # Highlights cover whole words: each mark starts and ends where a word does.
    marks = crisis.locator("mark").all_inner_texts()
    assert marks and not [m for m in marks if re.fullmatch(r"[\u3040-\u30ff]", m)], "a lone kana"
    assert "もう死にたい" in marks or "死にたい" in marks, marks  # the word, not half of it (死に)
    expect(page.locator("#reasons li[data-rule]").first).to_have_text(
        re.compile(r"^(自殺・自傷の危険|ほかの人からの危険)")
    )


def test_no_serious_accessibility_violation_on_any_console_view(
    server: Server, new_page: Callable[[], Page], people: Callable[[], Person]
) -> None:

    home = Path(server.log).parent
    add_accounts(home, {"boss": ("admin", "boss-password-12345")})
    page = new_page()
    page.goto(f"{server.base}/console")
    expect(page.locator("#view-login")).to_be_visible()
    assert serious_violations(page) == [], "login"

    person = people()
    person.in_crisis()
    log_in(page, server, "boss", "boss-password-12345")
    expect(queue_items(page)).to_have_count(1)
    assert serious_violations(page) == [], "the queue, with a crisis alarm"
    page.locator("#crisis-dismiss").click()
    queue_items(page).first.get_by_role("button", name=re.compile("担当する")).click()
    expect(page.locator("#reply-form")).to_be_visible()
    person.say("ありがとう")
    expect(lines(page, "user")).to_have_count(3)
    assert serious_violations(page) == [], "a conversation taken, with its tools"
    # The counsellor's bubbles are labelled, not told apart by colour alone.
    page.locator("#reply").fill("相談員です。")
    page.locator("#reply").press("Enter")
    expect(lines(page, "counsellor").last.locator(".msg-who")).to_have_text("相談員")
    page.get_by_role("button", name="全体の状況（スーパーバイザー）").click()
    expect(page.locator("#supervisor")).to_be_visible()
    expect(page.locator("#charts")).not_to_be_empty()
    assert serious_violations(page) == [], "the supervisor's view"
    page.get_by_role("button", name="アカウント管理（管理者）").click()
    expect(page.locator("#accounts-body tr")).to_have_count(4)
    assert serious_violations(page) == [], "the accounts"


def test_an_older_read_of_the_conversation_arriving_after_a_newer_one_is_dropped(
    server: Server, new_page: Callable[[], Page], people: Callable[[], Person]
) -> None:
    """A read held back on its way (the answer as it was then) arrives after the counsellor's reply and
    its read: the page keeps the newer transcript, by the conversation's version."""
    person = people()
    person.in_crisis()
    page = new_page()
    log_in(page, server, "kana")
    queue_items(page).first.locator(".queue-open").click()
    page.locator("#claim-btn").click()
    expect(page.locator("#reply-form")).to_be_visible()
    person.got("bot", "相談員につながりました")

    held: list[tuple[Route, APIResponse]] = []

    def hold_the_first(route: Route) -> None:
        if held:
            route.continue_()
        else:  # answered by the server now, given to the page later
            held.append((route, route.fetch()))

    page.route(re.compile(r"/api/console/conversations/[0-9a-f]+$"), hold_the_first)
    with page.expect_request(re.compile(r"/api/console/conversations/[0-9a-f]+$")):
        person.say("こわい、どうしよう")  # the live event makes the page read it again
    page.locator("#reply").fill("いま安全な場所にいますか？")
    page.locator("#reply").press("Enter")
    expect(lines(page, "counsellor").filter(has_text="いま安全な場所にいますか")).to_have_count(1)
    expect(lines(page, "user").filter(has_text="こわい、どうしよう")).to_have_count(1)
    assert len(held) == 1
    newer = int(page.locator("#conv").get_attribute("data-version") or "0")
    route, older = held[0]
    older_version = older.json()["version"]
    assert older_version < newer

    route.fulfill(response=older)
    expect(page.locator("#conv")).to_have_attribute("data-dropped", str(older_version))
    expect(page.locator("#conv")).to_have_attribute("data-version", str(newer))
    expect(lines(page, "counsellor").filter(has_text="いま安全な場所にいますか")).to_have_count(1)
