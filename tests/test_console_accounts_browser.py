"""Accounts and the transfer picker in the console, in a real browser: an administrator adds, changes,
disables and re-enables accounts and hands out one-time passwords; counsellors pass a conversation to a
colleague chosen from a list. ``tsunagi serve`` runs in a subprocess and Debian's Chromium is driven
through Playwright, with what the browser tests share (tests/browser_support.py, conftest.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, expect

from bot.db import Database
from bot.models import Counsellor, Role
from bot.storage.credentials import hash_password
from tests.browser_support import (
    ADMINS,
    CONSOLE_ACCOUNTS,
    Api,
    Person,
    Server,
    Watched,
    fetch_status,
    in_thread,
    log_in,
    login_status,
    queue_items,
    settings_for,
    submit_login,
    unnamed_controls,
)

pytestmark = pytest.mark.browser

ACCOUNTS = CONSOLE_ACCOUNTS | ADMINS
# An account from before names were checked (the CLI takes any name): whatever it is called is text.
LEGACY = '<img src=x onerror="window.__xss=1">'
LEGACY_PASSWORD = "legacy-password-1234"
ALL_NAMES = sorted([*ACCOUNTS, LEGACY])
NEW_PASSWORD = "hana-chose-this-one"
INVALID = (
    "入力内容が正しくありません。ユーザー名は半角英数字と「. _ -」で64文字まで、"
    "同時に担当できる件数は1〜20件です。"
)


# -- servers: every test starts from a copy of one database with the accounts ---------------------------


async def _add_legacy_account(home: Path) -> None:
    db = Database(settings_for(home).resolved_database_url)
    try:
        async with db.session() as s, s.begin():
            s.add(
                Counsellor(
                    username=LEGACY, password_hash=hash_password(LEGACY_PASSWORD), role=Role.COUNSELLOR
                )
            )
    finally:
        await db.dispose()


@pytest.fixture(scope="module")
def console_accounts() -> dict[str, tuple[str, str]]:
    return ACCOUNTS


@pytest.fixture(scope="module")
def template(template: Path) -> Path:
    """conftest.py's template, with the legacy account."""
    in_thread(_add_legacy_account(template))
    return template


# -- pages (the browser, ``watched``, ``new_page``, ``server`` and ``people`` are conftest.py's) ------------


def open_accounts(page: Page) -> Locator:
    page.get_by_role("button", name="アカウント管理（管理者）").click()
    expect(page.locator("#accounts")).to_be_visible()
    expect(page.locator("#console")).to_be_hidden()
    rows = page.locator("#accounts-body > tr")
    expect(rows.first).to_be_visible()
    return rows


def row(page: Page, username: str) -> Locator:
    return page.locator(f"#accounts-body > tr[data-username='{username}']")


def message(page: Page) -> Locator:
    return page.locator("#accounts-msg")


def post_from(page: Page, path: str, body: Any) -> int:
    """An unsafe request from the page itself, with its session's CSRF token."""
    return int(
        page.evaluate(
            """async ([path, body]) => {
                const me = await (await fetch("/api/console/me")).json();
                const r = await fetch(path, {method: "POST", body: JSON.stringify(body),
                    headers: {"Content-Type": "application/json", "X-CSRF-Token": me.csrf_token}});
                return r.status;
            }""",
            [path, body],
        )
    )


# -- (1) a new account and its one-time password -------------------------------------------------------


def test_admin_adds_an_account_whose_one_time_password_must_be_changed(
    server: Server, new_page: Callable[..., Page], watched: Watched
) -> None:
    page = new_page(clipboard=True)
    log_in(page, server, "mori")
    expect(page.locator("#tab-supervisor")).to_be_visible()
    rows = open_accounts(page)

    # Every account, by username; the legacy one's name is text (no image, no script).
    expect(rows).to_have_count(len(ALL_NAMES))
    assert rows.locator(".username").all_text_contents() == ALL_NAMES
    legacy = rows.filter(has_text=LEGACY)
    expect(legacy).to_have_count(1)
    expect(legacy.locator(".username")).to_have_text(LEGACY)
    assert page.locator("main img").count() == 0
    assert page.evaluate("typeof window.__xss") == "undefined"
    expect(row(page, "kana").locator("td").nth(2)).to_have_text("有効")
    expect(row(page, "kana").locator(".load")).to_have_text("0 / 2件")
    expect(row(page, "kana").get_by_label("kana さんの役割")).to_have_value("counsellor")
    expect(row(page, "sato").get_by_label("sato さんの役割")).to_have_value("supervisor")
    # Nobody demotes or disables themselves from here.
    mine = row(page, "mori")
    expect(mine).to_contain_text("自分")
    expect(mine.get_by_label("mori さんの役割")).to_be_disabled()
    expect(mine.get_by_role("button", name="無効にする：mori")).to_be_disabled()
    assert unnamed_controls(page, "#accounts") == []

    # A new counsellor: the one-time password, once, in its own box with the name and a copy button.
    form = page.locator("#account-form")
    form.get_by_label("新しいアカウントのユーザー名").fill("hana")
    form.get_by_label("役割", exact=True).select_option("counsellor")
    form.get_by_label("同時に担当できる件数", exact=True).fill("3")
    form.get_by_role("button", name="追加する").click()
    box = page.locator("#otp-box")
    expect(box).to_be_visible()
    expect(box).to_be_focused()
    expect(message(page)).to_have_text("hana さんのアカウントを追加しました。")
    expect(box.locator("#otp-for")).to_have_text("hana さんの仮パスワード")
    expect(box).to_contain_text("最初のログインで本人が新しいパスワードに変更する必要があります")
    one_time = page.locator("#otp-password").text_content() or ""
    assert len(one_time) >= 12, one_time
    expect(form.get_by_label("新しいアカウントのユーザー名")).to_have_value("")  # the form is ready again
    box.get_by_role("button", name="コピー").click()
    expect(box.locator("#otp-copied")).to_have_text("コピーしました。")
    assert page.evaluate("navigator.clipboard.readText()") == one_time
    expect(rows).to_have_count(len(ALL_NAMES) + 1)
    hana = row(page, "hana")
    expect(hana).to_contain_text("初回ログイン前")
    expect(hana.locator(".load")).to_have_text("0 / 3件")
    expect(hana.get_by_label("hana さんが同時に担当できる件数")).to_have_value("3")

    # Closed, it is gone from the page, and was never kept anywhere else.
    box.get_by_role("button", name="伝えたので閉じる").click()
    expect(box).to_be_hidden()
    assert one_time not in page.content()
    assert one_time not in page.evaluate("JSON.stringify([{...localStorage}, {...sessionStorage}])")

    # hana logs in with it (the API says a new password is due; nothing else works until then) ...
    first = Api(server, "hana", one_time)
    assert first.login["must_change_password"] is True
    assert first.status("GET", "/queue") == 403
    # ... and the console asks her for a new one.
    hana_page = new_page()
    submit_login(hana_page, server, "hana", one_time)
    expect(hana_page.locator("#view-password")).to_be_visible()
    expect(hana_page.locator("#view-app")).to_be_hidden()
    hana_page.get_by_label("現在（仮）のパスワード").fill(one_time)
    hana_page.get_by_label("新しいパスワード（12文字以上）").fill(NEW_PASSWORD)
    hana_page.get_by_label("新しいパスワード（確認）").fill(NEW_PASSWORD)
    hana_page.get_by_role("button", name="変更する").click()
    expect(hana_page.locator("#view-app")).to_be_visible()
    expect(hana_page.locator("#tab-accounts")).to_be_hidden()

    # Refusals, in Japanese: a name that exists (409), a name or a limit the API does not take (422).
    form.get_by_label("新しいアカウントのユーザー名").fill("hana")
    form.get_by_role("button", name="追加する").click()
    expect(message(page)).to_have_text("そのユーザー名はすでに使われています。別のユーザー名にしてください。")
    expect(message(page)).to_have_class(re.compile("error"))
    form.get_by_label("新しいアカウントのユーザー名").fill(LEGACY)
    form.get_by_role("button", name="追加する").click()
    expect(message(page)).to_have_text(INVALID)
    expect(box).to_be_hidden()
    form.get_by_label("新しいアカウントのユーザー名").fill("okname")
    form.get_by_label("同時に担当できる件数", exact=True).fill("21")
    form.get_by_role("button", name="追加する").click()
    expect(message(page)).to_have_text(INVALID)
    expect(rows).to_have_count(len(ALL_NAMES) + 1)
    admin = Api(server, "ren")
    for name in (
        LEGACY,
        "<script>window.__xss=2</script>",
        "a b",
        "",
        "x" * 65,
        "名前",
        "sato\n",
        "../kana",
        "kana/password",
    ):
        assert (
            admin.status("POST", "/accounts", {"username": name, "role": "counsellor", "limit": None}) == 422
        ), name
    for body in ({"role": "root"}, {"limit": 0}, {"limit": 21}):
        assert (
            admin.status("POST", "/accounts", {"username": "okname", "role": "counsellor"} | body) == 422
        ), body
    page.reload()
    expect(page.locator("#view-app")).to_be_visible()
    rows = open_accounts(page)
    expect(rows).to_have_count(len(ALL_NAMES) + 1)
    assert page.locator("main img, main script").count() == 0
    assert page.evaluate("typeof window.__xss") == "undefined"

    # Role and limit, changed in the table.
    hana = row(page, "hana")
    hana.get_by_label("hana さんの役割").select_option("supervisor")
    expect(message(page)).to_have_text("hana さんの役割を「スーパーバイザー」に変更しました。")
    kana = row(page, "kana")
    kana.get_by_label("kana さんが同時に担当できる件数").fill("5")
    kana.get_by_label("kana さんが同時に担当できる件数").press("Enter")
    expect(message(page)).to_have_text("kana さんが同時に担当できる件数を 5件にしました。")
    expect(kana.locator(".load")).to_have_text("0 / 5件")
    kana.get_by_label("kana さんが同時に担当できる件数").fill("25")
    kana.get_by_label("kana さんが同時に担当できる件数").press("Enter")
    expect(message(page)).to_have_text(INVALID)
    expect(kana.get_by_label("kana さんが同時に担当できる件数")).to_have_value("5")
    kana.get_by_label("kana さんが同時に担当できる件数").fill("")
    kana.get_by_label("kana さんが同時に担当できる件数").press("Enter")
    expect(message(page)).to_have_text("kana さんが同時に担当できる件数を既定（2件）に戻しました。")
    expect(kana.locator(".load")).to_have_text("0 / 2件")
    listed = {a["username"]: a for a in admin.call("GET", "/accounts")}
    assert (listed["hana"]["role"], listed["kana"]["custom_limit"], listed["kana"]["limit"]) == (
        "supervisor",
        None,
        2,
    )

    # A new one-time password for hana, after a confirmation: the one she chose stops working.
    watched.answers.append(True)
    hana.get_by_role("button", name="パスワード再発行：hana").click()
    expect(box).to_be_visible()
    expect(box.locator("#otp-for")).to_have_text("hana さんの仮パスワード")
    expect(message(page)).to_have_text("hana さんのパスワードを再発行しました。")
    assert "hana" in watched.dialogs[-1] and "ログアウト" in watched.dialogs[-1]
    again = page.locator("#otp-password").text_content() or ""
    assert len(again) >= 12 and again != one_time
    assert login_status(server, "hana", NEW_PASSWORD) == 401
    assert Api(server, "hana", again).login["must_change_password"] is True
    assert first.status("GET", "/me") == 401  # her sessions ended
    page.get_by_role("button", name="相談対応", exact=True).click()  # leaving the view forgets it too
    assert again not in page.content()

    # The page keeps an administrator from changing themselves; the API refuses it anyway (422).
    assert admin.status("POST", "/accounts/ren", {"active": False}) == 422
    assert admin.status("POST", "/accounts/ren", {"role": "counsellor"}) == 422
    open_accounts(page)
    mine = row(page, "mori").get_by_role("button", name="無効にする：mori")
    mine.evaluate("(b) => { b.disabled = false; }")  # as if the page had drawn it wrongly
    watched.answers.append(True)
    mine.click()
    expect(message(page)).to_have_text(
        "自分自身の役割の変更や無効化はできません。ほかの管理者に依頼してください。"
    )
    expect(row(page, "mori").locator("td").nth(2)).to_have_text("有効")


# -- (2) disabling an account that holds a conversation ------------------------------------------------


def test_disabling_a_counsellor_returns_their_conversation_to_the_queue(
    server: Server, new_page: Callable[..., Page], people: Callable[[], Person], watched: Watched
) -> None:
    kana_page = new_page()
    log_in(kana_page, server, "kana")
    people().in_crisis()
    kana = Api(server, "kana")
    (held,) = kana.waiting()
    kana.call("POST", f"/conversations/{held}/claim")
    expect(kana_page.locator("#held-list > li")).to_have_count(1)

    page = new_page()
    log_in(page, server, "mori")
    expect(queue_items(page)).to_have_count(0)
    open_accounts(page)
    expect(row(page, "kana").locator(".load")).to_have_text("1 / 2件")

    # Asked first, with what will happen; a no changes nothing.
    watched.answers.append(False)
    row(page, "kana").get_by_role("button", name="無効にする：kana").click()
    expect(row(page, "kana").locator("td").nth(2)).to_have_text("有効")
    assert "kana" in watched.dialogs[-1] and "キューに戻ります" in watched.dialogs[-1]
    assert kana.status("GET", "/me") == 200

    watched.answers.append(True)
    row(page, "kana").get_by_role("button", name="無効にする：kana").click()
    expect(message(page)).to_have_text(
        "kana さんのアカウントを無効にしました。担当していた相談 1件を待機キューに戻しました。"
    )
    expect(row(page, "kana").locator("td").nth(2)).to_have_text("無効")
    expect(row(page, "kana")).to_have_attribute("data-active", "false")
    expect(row(page, "kana").locator(".load")).to_have_text("0 / 2件")
    expect(row(page, "kana").get_by_role("button", name="有効にする：kana")).to_be_visible()

    # The conversation waits again, in the queue every console shows; kana is out.
    assert Api(server, "yui").waiting() == [held]
    page.get_by_role("button", name="相談対応", exact=True).click()
    expect(queue_items(page)).to_have_count(1)
    expect(queue_items(page).first).to_have_attribute("data-conversation-id", held)
    expect(kana_page.locator("#view-login")).to_be_visible()
    expect(kana_page.locator("#login-info")).to_have_text(
        "セッションの有効期限が切れました。もう一度ログインしてください。"
    )
    assert kana.status("GET", "/me") == 401
    assert login_status(server, "kana", ACCOUNTS["kana"][1]) == 401
    # Nor is a disabled counsellor offered for transfers.
    assert "kana" not in [c["username"] for c in Api(server, "yui").call("GET", "/colleagues")]

    # Enabled again, kana can log in.
    open_accounts(page)
    row(page, "kana").get_by_role("button", name="有効にする：kana").click()
    expect(message(page)).to_have_text("kana さんのアカウントを有効にしました。")
    expect(row(page, "kana").locator("td").nth(2)).to_have_text("有効")
    assert login_status(server, "kana", ACCOUNTS["kana"][1]) == 200


# -- (3) for administrators only ---------------------------------------------------------------------------


def test_only_administrators_see_and_use_accounts(
    server: Server, new_page: Callable[..., Page], watched: Watched
) -> None:
    for username in ("sato", "kana"):
        page = new_page()
        log_in(page, server, username)
        expect(page.locator("#tab-accounts")).to_be_hidden()
        expect(page.locator("#accounts")).to_be_hidden()
        assert fetch_status(page, "/api/console/accounts") == 403
        assert fetch_status(page, "/api/console/colleagues") == 200
        assert (
            post_from(page, "/api/console/accounts", {"username": "x", "role": "admin", "limit": None}) == 403
        )
        assert post_from(page, "/api/console/accounts/yui", {"active": False}) == 403
        assert post_from(page, "/api/console/accounts/yui/password", {}) == 403
    expect(page.locator("#tab-supervisor")).to_be_hidden()  # kana

    # An administrator made a supervisor by another while the page is open: the next action is
    # refused, the page says so in Japanese, and the accounts tab goes.
    page = new_page()
    log_in(page, server, "mori")
    open_accounts(page)
    Api(server, "ren").call("POST", "/accounts/mori", {"role": "supervisor"})
    watched.answers.append(True)
    row(page, "kana").get_by_role("button", name="パスワード再発行：kana").click()
    expect(page.locator("#app-msg")).to_have_text("この操作は管理者だけができます。")
    expect(page.locator("#tab-accounts")).to_be_hidden()
    expect(page.locator("#accounts")).to_be_hidden()
    expect(page.locator("#console")).to_be_visible()
    expect(page.locator("#tab-supervisor")).to_be_visible()
    expect(page.locator("#who")).to_have_text("mori（スーパーバイザー）")
    assert login_status(server, "kana", ACCOUNTS["kana"][1]) == 200  # nothing was reset


# -- (4) the transfer picker -----------------------------------------------------------------------------


def test_transfer_picker_lists_colleagues_with_their_load_and_transfers(
    server: Server, new_page: Callable[..., Page], people: Callable[[], Person]
) -> None:
    # yui is on duty; sato may hold one conversation and holds one.
    yui = Api(server, "yui")
    yui.call("POST", "/duty", {"on_duty": True})
    admin = Api(server, "ren")
    admin.call("POST", "/accounts/sato", {"limit": 1})
    people().in_crisis()
    sato = Api(server, "sato")
    sato.call("POST", f"/conversations/{sato.waiting()[0]}/claim")
    people().in_crisis()

    page = new_page()
    log_in(page, server, "kana")
    queue_items(page).first.get_by_role("button", name=re.compile("担当する")).click()
    expect(page.locator("#reply-form")).to_be_visible()
    picker = page.get_by_label("転送先の相談員（ユーザー名）")
    options = picker.locator("option")
    # On duty first, then by username; everyone's load; a full colleague cannot be chosen.
    expect(options).to_have_text(
        [
            "選んでください",
            "yui（勤務中・対応 0/2）",
            f"{LEGACY}（勤務外・対応 0/2）",
            "mori（勤務外・対応 0/2）",
            "ren（勤務外・対応 0/2）",
            "sato（勤務外・対応 1/1・上限）",
        ]
    )
    expect(picker.locator("option[value='sato']")).to_be_disabled()
    expect(picker.locator("option[value='yui']")).to_be_enabled()
    assert page.locator("main img").count() == 0

    # Loads follow live: yui takes a conversation, and the list says so without a reload.
    people().in_crisis()
    yui.call("POST", f"/conversations/{yui.waiting()[0]}/claim")
    expect(picker.locator("option[value='yui']")).to_have_text("yui（勤務中・対応 1/2）")

    # Nobody chosen; then someone who left between the list and the click.
    page.get_by_role("button", name="転送する").click()
    expect(page.locator("#conv-msg")).to_have_text("転送先の相談員を選んでください。")
    admin.call("POST", "/accounts/mori", {"active": False})
    picker.select_option("mori")
    page.get_by_role("button", name="転送する").click()  # mori is off duty: said first
    expect(page.locator("#conv-msg")).to_contain_text("mori さんはいま勤務外です")
    page.get_by_role("button", name="勤務外でも転送する").click()
    expect(page.locator("#conv-msg")).to_have_text("その相談員は見つかりません。")
    expect(picker.locator("option[value='mori']")).to_have_count(0)
    expect(picker).to_have_value("")

    picker.select_option("yui")
    expect(page.locator("#conv-msg")).to_have_text("")  # the refusal does not linger
    page.get_by_role("button", name="転送する").click()
    expect(page.locator("#conv-msg")).to_have_text("yui さんに転送しました。")
    expect(page.locator("#conv-notice")).to_have_text("閲覧のみ：この相談は yui さんが担当しています。")
    expect(page.locator("#held-list > li")).to_have_count(0)
    assert len(yui.call("GET", "/me")["held"]) == 2
