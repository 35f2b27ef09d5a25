"""The README's screenshots, taken with Playwright in Debian's Chromium:
``.venv/bin/python -m tests.make_screenshots``.

A ``tsunagi serve`` of its own in a temporary folder (SQLite, loopback only); a person on a phone (390x844)
writes to the web chat, and a counsellor at 1280x800 takes the conversation in the console, greeting the
person by her display name; a supervisor reads the statistics and the audit log. Writes docs/webchat.png,
docs/console.png, docs/console-statistics.png and docs/console-audit.png. Nothing leaves the machine
(the quick exit is never pressed).
"""

from __future__ import annotations

import sys
import tempfile
import urllib.request
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from tests.browser_support import fill_login, serve
from tests.helpers import CHROMIUM, CHROMIUM_ARGS, add_accounts

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "screenshot-password-1"


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        add_accounts(
            home,
            {"sato": ("counsellor", PASSWORD), "kimura": ("supervisor", PASSWORD)},
            display_names={"sato": "佐藤", "kimura": "木村"},
        )
        for server in serve(home):
            shoot(server.base)
    return 0


def shoot(base: str) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        console_ctx = browser.new_context(locale="ja-JP", viewport={"width": 1280, "height": 800})
        console = console_ctx.new_page()
        console.goto(f"{base}/console")
        fill_login(console, "sato", PASSWORD)
        expect(console.locator("#view-app")).to_be_visible()
        console.get_by_label("対応可能（オンデューティ）").check()

        # Someone waiting at medium risk, for the queue.
        other_ctx = browser.new_context(locale="ja-JP", viewport={"width": 390, "height": 844})
        other = other_ctx.new_page()
        other.goto(f"{base}/chat")
        other.locator("#choices").get_by_role("button", name="同意して話す").click()
        expect(other.locator("#log li.from-bot")).to_have_count(2)
        other.locator("#input").fill("上司に毎日みんなの前で怒鳴られて、会社に行くのがつらいです")
        other.locator("#input").press("Enter")
        expect(other.locator("#choices button").first).to_be_visible()
        other.locator("#input").fill("相談したい")
        other.locator("#input").press("Enter")
        expect(other.locator("#status")).to_contain_text("相談員を待っています")

        # The person on the phone: consent, what is wrong, then a crisis.
        phone_ctx = browser.new_context(
            locale="ja-JP", viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
        )
        phone = phone_ctx.new_page()
        phone.goto(f"{base}/chat")
        phone.locator("#choices").get_by_role("button", name="同意して話す").click()
        expect(phone.locator("#log li.from-bot")).to_have_count(2)
        phone.locator("#input").fill("もう消えたい。今夜、駅のホームから飛び降りようと思ってる")
        phone.locator("#input").press("Enter")
        expect(phone.locator("#status")).to_contain_text("相談員を待っています")
        expect(phone.locator("#choices button").first).to_be_visible()
        phone.locator("#choices").get_by_role("button", name="16〜18歳").click()
        expect(phone.locator("#log li.from-bot").last).to_contain_text("18歳までの人")
        phone.wait_for_timeout(500)
        phone.screenshot(path=str(ROOT / "docs" / "webchat.png"))

        # The counsellor takes it and answers.
        expect(console.locator("#queue-list > li")).to_have_count(2)
        console.locator("#crisis-dismiss").click()
        console.locator("#queue-list > li").first.get_by_role("button", name="担当する").click()
        expect(console.locator("#reply-form")).to_be_visible()
        console.locator("#canned-list").get_by_role("button", name="はじめのあいさつ").click()
        console.locator("#reply").press("Enter")
        expect(phone.locator("#log li.from-counsellor")).to_have_count(1)
        phone.locator("#input").fill("駅にいます。こわい")
        phone.locator("#input").press("Enter")
        expect(console.locator("#transcript li.from-user").last).to_contain_text("こわい")
        console.get_by_label("紹介先の検索").fill("24時間")
        console.wait_for_timeout(800)
        console.screenshot(path=str(ROOT / "docs" / "console.png"))

        # The supervisor: statistics of every conversation by its start, and the audit log in Japanese.
        sv_ctx = browser.new_context(locale="ja-JP", viewport={"width": 1280, "height": 800})
        sv = sv_ctx.new_page()
        sv.goto(f"{base}/console")
        fill_login(sv, "kimura", PASSWORD)
        expect(sv.locator("#view-app")).to_be_visible()
        sv.get_by_role("button", name="全体の状況（スーパーバイザー）").click()
        expect(sv.locator("#charts [data-chart='risk']")).to_be_visible()
        sv.evaluate("document.getElementById('stats-heading').scrollIntoView()")
        sv.wait_for_timeout(500)
        sv.screenshot(path=str(ROOT / "docs" / "console-statistics.png"))
        sv.get_by_label("操作者（ユーザー名か表示名）").fill("佐藤")
        sv.get_by_role("button", name="絞り込む・更新").click()
        expect(sv.locator("#audit tr[data-action='claim']")).to_be_visible()
        sv.evaluate("document.getElementById('audit-heading').scrollIntoView()")
        sv.wait_for_timeout(500)
        sv.screenshot(path=str(ROOT / "docs" / "console-audit.png"))
        browser.close()
        with urllib.request.urlopen(f"{base}/healthz", timeout=2):
            pass


if __name__ == "__main__":
    sys.exit(main())
