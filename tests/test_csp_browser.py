"""The pages keep their Content-Security-Policy in a real browser: ``tsunagi serve`` in a subprocess,
Debian's Chromium through Playwright, a conversation from the web chat to the console and back, and not
one ``securitypolicyviolation`` on /chat or /console (nor a CSP message on the console log).

A listener installed before each page's own script records every violation; the last test shows that it
does record one (an inline script and an inline style, put in by hand), so that "none" means something.
Everything stays on loopback; Chromium is never downloaded (no ``playwright install``)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, expect

from tests.browser_support import CONSOLE_ACCOUNTS, fill_login, new_context, serve
from tests.helpers import CRISIS, add_accounts

pytestmark = pytest.mark.browser

SUPERVISOR = "sato"

# Installed before the page's own script: every violation the browser reports, as text.
RECORD = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  const where = `${e.sourceFile}:${e.lineNumber}`;
  window.__csp.push(`${e.effectiveDirective} blocked ${e.blockedURI || "inline"} (${where})`);
});
"""


@dataclass
class Watched:
    pages: list[Page] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> Page:
        def on_console(message: ConsoleMessage) -> None:
            if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text:
                self.console.append(message.text)

        page.on("console", on_console)
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        self.pages.append(page)
        return page

    def violations(self) -> list[str]:
        seen: list[str] = []
        for page in self.pages:
            if not page.is_closed():
                seen += [f"{page.url}: {v}" for v in page.evaluate("window.__csp || []")]
        return seen + self.console


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("csp")
    add_accounts(home, {SUPERVISOR: CONSOLE_ACCOUNTS[SUPERVISOR]})
    for site in serve(home):
        yield site.base


def page_in(browser: Browser, contexts: list[BrowserContext], watched: Watched, **kw: Any) -> Page:
    return watched.attach(new_context(browser, contexts, init_script=RECORD, **kw).new_page())


def test_no_csp_violation_from_the_web_chat_to_the_console_and_back(
    base: str, browser: Browser, contexts: list[BrowserContext]
) -> None:
    watched = Watched()

    # The person: the page, consent, a crisis, the waiting status.
    chat = page_in(browser, contexts, watched, viewport={"width": 390, "height": 844})
    response = chat.goto(f"{base}/chat")
    assert response is not None and "frame-ancestors 'none'" in response.headers["content-security-policy"]
    expect(chat.locator("#log li.from-bot").first).to_contain_text("相談窓口「つなぎ」")
    chat.locator("#choices").get_by_role("button", name="同意して話す").click()
    expect(chat.locator("#log li.from-bot")).to_have_count(2)
    chat.locator("textarea").fill(CRISIS)
    chat.locator("textarea").press("Enter")
    expect(chat.locator("#log")).to_contain_text("110")  # the crisis reply (an age question may follow)

    # The supervisor: log in, claim, read, reply, close; then the supervisor's overview and charts.
    console = page_in(browser, contexts, watched, viewport={"width": 1280, "height": 800})
    response = console.goto(f"{base}/console")
    assert response is not None and "'unsafe-inline'" not in response.headers["content-security-policy"]
    fill_login(console, SUPERVISOR)
    expect(console.locator("#view-app")).to_be_visible()
    first = console.locator("#queue-list > li").first
    expect(first).to_have_attribute("data-risk", "crisis")
    first.get_by_role("button", name=re.compile("担当する")).click()
    expect(console.locator("#transcript li.from-user").last).to_contain_text(CRISIS)
    console.locator("#reply").fill("相談員です。ここにいますよ。")
    console.locator("#reply").press("Enter")
    expect(chat.locator("#log li").last).to_contain_text("ここにいますよ")
    console.get_by_label("対応結果").select_option("listened")
    console.get_by_role("button", name="終了する").click()
    expect(console.locator("#conv-msg")).to_have_text("相談を終了しました。")
    console.get_by_role("button", name="全体の状況（スーパーバイザー）").click()
    charts = console.locator("#charts")
    expect(charts.locator("[data-chart='risk'] .bar-row[data-key='crisis']")).to_contain_text("1件")
    bar = charts.locator("[data-chart='risk'] .bar-fill").first.bounding_box()
    assert bar is not None and bar["width"] > 10  # a width set through the CSSOM, which the CSP allows

    # Both pages' styles applied (a blocked stylesheet would leave them unstyled).
    assert chat.evaluate("getComputedStyle(document.body).overflow") == "hidden"
    assert console.evaluate("document.styleSheets.length") >= 1
    assert watched.violations() == []


def test_the_listener_does_record_a_violation(
    base: str, browser: Browser, contexts: list[BrowserContext]
) -> None:
    watched = Watched()
    page = page_in(browser, contexts, watched)
    page.goto(f"{base}/chat")
    expect(page.locator("#log li.from-bot").first).to_be_visible()
    page.evaluate(
        """() => {
            const s = document.createElement("script");
            s.textContent = "window.__ran = true";
            document.body.append(s);
            const st = document.createElement("style");
            st.textContent = "body { background: red }";
            document.head.append(st);
        }"""
    )
    page.wait_for_function("window.__csp.length >= 2")
    assert page.evaluate("window.__ran === undefined")  # the inline script never ran
    kinds = " ".join(watched.violations())
    assert "script-src" in kinds and "style-src" in kinds, kinds
