"""Display names, the audit log and the transcript's height in a real browser (desktop 1280x800 and a
phone 390x844), and the age band asked once in the web chat. The servers, the browser and the person
on the other side are the shared ones of conftest.py and tests/browser_support.py."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect

from tests.browser_support import CRISIS, Api, Person, Server, log_in, queue_items

pytestmark = pytest.mark.browser
HOSTILE = "<img src=x onerror=__xss=1>"
LONG = "今日は学校でいろいろあって、" * 6 + "もう死にたい"


def transcript_fills_the_window(page: Page) -> None:
    """The page itself does not scroll, and the transcript reaches down to the pane's bottom (less the
    reply box): it takes the window's height."""
    box = page.evaluate(
        """() => {
          const t = document.getElementById("transcript").getBoundingClientRect();
          const p = document.getElementById("conv-pane").getBoundingClientRect();
          const doc = document.documentElement.scrollHeight;
          return { doc, win: innerHeight, t: t.bottom, p: p.bottom, h: t.height };
        }"""
    )
    assert box["doc"] <= box["win"] + 1, box
    assert box["p"] >= box["win"] - 20 and box["h"] >= box["win"] * 0.3, box


def test_a_counsellor_names_themselves_and_the_greeting_uses_the_name_never_the_username(
    server: Server, new_page: Callable[[], Page], people: Callable[[], Person]
) -> None:
    person = people()
    person.in_crisis()
    person.say(LONG)
    page = new_page()
    log_in(page, server, "kana")
    # The queue card quotes whole words (never もう死に, never a lone kana), where they are in a long line.
    card = queue_items(page).first
    expect(card.locator(".preview-reason")).to_have_text("自殺・自傷の危険：「もう死にたい」")
    card.get_by_role("button", name=re.compile("^担当する")).click()
    expect(page.locator("#reply-form")).to_be_visible()
    transcript_fills_the_window(page)
    marks = page.locator("#reasons li[data-rule] mark").all_inner_texts()
    assert "もう死に" not in marks and not [m for m in marks if re.fullmatch(r"[\u3040-\u30ff]", m)], marks

    # No display name yet: the greeting asks for one first, and inserts nothing with the username.
    page.locator("#canned-list").get_by_role("button", name="はじめのあいさつ").click()
    expect(page.locator("#name-form")).to_be_visible()
    expect(page.locator("#name-msg")).to_contain_text("表示名を設定してください")
    assert page.locator("#reply").input_value() == ""
    page.locator("#name-input").fill("佐藤")
    page.locator("#name-form").get_by_role("button", name="保存").click()
    expect(page.locator("#who")).to_have_text("佐藤（kana・相談員）")
    expect(page.locator("#name-form")).to_be_hidden()

    page.locator("#canned-list").get_by_role("button", name="はじめのあいさつ").click()
    draft = page.locator("#reply").input_value()
    assert "相談員の佐藤です。" in draft and "kana" not in draft, draft
    # Pressed again, or combined with another, nothing is said twice.
    page.locator("#canned-list").get_by_role("button", name="はじめのあいさつ").click()
    page.locator("#canned-list").get_by_role("button", name="安全の確認").click()
    again = page.locator("#reply").input_value()
    assert again.count("相談員の佐藤です。") == 1 and "安全な場所" in again, again
    page.locator("#reply").press("Enter")
    got = person.got("counsellor", "相談員の佐藤です。")
    assert "kana" not in got["text"]


def test_the_audit_log_is_in_japanese_with_names_and_filters(
    server: Server, new_page: Callable[[], Page], people: Callable[[], Person]
) -> None:
    kana = Api(server, "kana")
    sato = Api(server, "sato")
    kana.call("POST", "/me/display-name", {"display_name": "佐藤かな"})
    sato.call("POST", "/accounts/yui/display-name", {"display_name": HOSTILE})
    person = people()
    person.in_crisis()
    cid = kana.waiting()[0]
    kana.call("POST", f"/conversations/{cid}/claim")

    page = new_page()
    log_in(page, server, "sato")
    page.get_by_role("button", name="全体の状況（スーパーバイザー）").click()
    audit = page.locator("#audit")
    expect(audit.locator("tr[data-action='claim'] .audit-actor")).to_have_text("佐藤かな（kana）")
    expect(audit.locator("tr[data-action='claim'] .audit-action")).to_have_text("担当した")
    expect(audit.locator("tr[data-action='account.display_name']").first).to_contain_text("表示名の変更")
    # A hostile name is text in the overview's name field and the audit log, never markup.
    expect(page.locator("#ov-counsellors tr[data-username='yui'] .name-edit")).to_have_value(HOSTILE)
    assert page.evaluate("window.__xss") is None

    # Filters: by person (display name), by action, by days.
    page.get_by_label("操作者（ユーザー名か表示名）").fill("佐藤かな")
    page.get_by_label("操作", exact=True).select_option(label="担当した")
    page.get_by_role("button", name="絞り込む・更新").click()
    expect(audit.locator("tr")).to_have_count(1)
    expect(audit.locator("tr").first).to_contain_text("佐藤かな（kana）")
    page.get_by_label("操作", exact=True).select_option(value="")
    page.get_by_label("開始日").fill("2020-01-01")
    page.get_by_label("終了日").fill("2020-01-02")
    page.get_by_role("button", name="絞り込む・更新").click()
    expect(audit.locator("td.empty")).to_have_text("記録はありません。")
    page.get_by_role("button", name="条件をクリア").click()
    expect(audit.locator("tr[data-action='login']").first).to_be_visible()

    # A supervisor names a colleague from the overview.
    row = page.locator("#ov-counsellors tr[data-username='yui']")
    row.locator(".name-edit").fill("山田")
    row.get_by_role("button", name="yui さんの表示名を保存").click()
    expect(page.locator("#app-msg")).to_have_text("yui さんの表示名を「山田」にしました。")
    names = {c["username"]: c["display_name"] for c in Api(server, "kana").call("GET", "/colleagues")}
    assert names["yui"] == "山田"


def test_on_a_phone_the_name_form_and_the_audit_filters_fit_and_the_age_is_asked_once(
    server: Server, phone: Callable[[], Page]
) -> None:
    page = phone()
    log_in(page, server, "sato")
    page.get_by_role("button", name=re.compile("^表示名")).click()
    page.locator("#name-input").fill("佐藤")
    page.locator("#name-form").get_by_role("button", name="保存").click()
    expect(page.locator("#who")).to_contain_text("佐藤（sato")
    page.get_by_role("button", name="全体の状況（スーパーバイザー）").click()
    page.get_by_label("操作", exact=True).select_option(label="表示名の変更")
    page.get_by_role("button", name="絞り込む・更新").click()
    expect(page.locator("#audit tr")).to_have_count(1)
    wide = page.evaluate("document.documentElement.scrollWidth <= innerWidth + 1")
    assert wide, "the page is wider than the phone"

    # The web chat: the age band answered once is not asked again when the person comes back.
    chat = phone()
    chat.goto(f"{server.base}/chat")
    bot = chat.locator("#log li.from-bot")
    chat.locator("#choices").get_by_role("button", name="同意して話す").click()
    expect(bot.last).to_contain_text("どんなことでも大丈夫です")
    chat.locator("#input").fill("学校で友だちに無視されていて、つらい")
    chat.locator("#input").press("Enter")
    chat.locator("#choices").get_by_role("button", name="16〜18歳").click()
    expect(bot.last).to_contain_text("都道府県")
    chat.locator("#input").fill("終了")
    chat.locator("#input").press("Enter")
    expect(bot.last).to_contain_text("今日の相談はどうでしたか")
    chat.locator("#input").fill("こんにちは")
    chat.locator("#input").press("Enter")
    chat.locator("#choices").get_by_role("button", name="同意して話す").click()
    chat.locator("#input").fill("学校で友だちに無視されていて、つらい")
    chat.locator("#input").press("Enter")
    expect(bot.last).to_contain_text("都道府県")
    texts = bot.all_inner_texts()
    assert sum("年齢はどのくらいですか" in t for t in texts) == 1, texts
    assert CRISIS not in "".join(texts)
