"""The web chat in a real browser: ``tsunagi serve`` in a subprocess, Debian's Chromium through Playwright.

Everything stays on loopback: the server listens on 127.0.0.1 and the quick-exit URL points at its own
``/healthz`` (a neutral page), so no test needs the internet. Chromium is never downloaded
(no ``playwright install``): a missing /usr/bin/chromium fails these tests.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect

from tests.browser_support import CRISIS, WAIT_MS, Server, compose_with_ime, serious_violations, serve

pytestmark = pytest.mark.browser

CONSENT = "同意して話す"


# -- the server and the browser ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The quick exit leads to the server's own /healthz (a neutral page): no test needs the internet."""
    yield from serve(tmp_path_factory.mktemp("browser"), quick_exit_to_health=True)


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(locale="ja-JP")
    ctx.set_default_timeout(WAIT_MS)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def page(context: BrowserContext, server: Server) -> Iterator[Page]:
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("dialog", lambda d: (errors.append(f"dialog: {d.message}"), d.dismiss()))
    yield pg
    assert errors == [], f"errors in the page: {errors}"


def open_chat(page: Page, server: Server) -> None:
    page.goto(f"{server.base}/chat")
    expect(bot_lines(page).first).to_contain_text("相談窓口「つなぎ」", timeout=WAIT_MS)


def bot_lines(page: Page) -> Locator:
    return page.locator("#log li.from-bot")


def user_lines(page: Page) -> Locator:
    return page.locator("#log li.from-user")


def consent(page: Page) -> None:
    page.locator("#choices").get_by_role("button", name=CONSENT).click()
    expect(user_lines(page).last).to_contain_text(CONSENT)
    expect(bot_lines(page)).to_have_count(2, timeout=WAIT_MS)  # welcome, then listening
    expect(bot_lines(page).last).to_contain_text("どんなことでも大丈夫です")
    expect(page.locator("#log li.pending")).to_have_count(0)  # acknowledged by the server


def storage(page: Page) -> dict[str, Any]:
    return page.evaluate(
        """async () => ({
            local: Object.fromEntries(Object.entries(localStorage)),
            session: Object.fromEntries(Object.entries(sessionStorage)),
            cookie: document.cookie,
            idb: indexedDB.databases ? (await indexedDB.databases()).map((d) => d.name) : [],
            caches: self.caches ? await caches.keys() : [],
        })"""
    )


# -- (a) a conversation ----------------------------------------------------------------------------------


def test_consent_then_crisis_shows_110_119_and_waiting(page: Page, server: Server) -> None:
    open_chat(page, server)
    expect(page.locator("#choices").get_by_role("button")).to_have_text([CONSENT, "同意しない"])
    consent(page)
    expect(page.locator("#choices button")).to_have_count(0)

    page.locator("#input").fill(CRISIS)
    page.locator("#input").press("Enter")
    expect(page.locator("#input")).to_have_value("")
    expect(user_lines(page).last).to_contain_text(CRISIS)

    crisis = bot_lines(page).filter(has_text="119")
    expect(crisis.first).to_be_visible(timeout=WAIT_MS)
    expect(crisis.first).to_contain_text("110")
    expect(page.locator("#status")).to_contain_text("相談員を待っています", timeout=WAIT_MS)
    expect(page.locator("#status")).to_have_text(re.compile(r"相談員を待っています（\d+番目）"))
    expect(page.locator("#log li.pending")).to_have_count(0)


def test_reload_resumes_the_same_conversation_without_duplicates(
    page: Page, server: Server, context: BrowserContext
) -> None:
    open_chat(page, server)
    consent(page)
    page.locator("#input").fill("学校で友だちとうまくいかなくて悩んでいます")
    page.locator("#input").press("Enter")
    expect(bot_lines(page)).to_have_count(4, timeout=WAIT_MS)  # intake intro and the age question
    before = page.locator("#log li").all_inner_texts()
    token = page.evaluate("sessionStorage.getItem('tsunagi.token')")

    page.reload()
    expect(page.locator("#log li")).to_have_count(len(before), timeout=WAIT_MS)
    page.wait_for_timeout(500)  # anything sent twice would arrive now
    assert page.locator("#log li").all_inner_texts() == before
    assert page.evaluate("sessionStorage.getItem('tsunagi.token')") == token

    # Another tab has a sessionStorage of its own, so it is someone else: only a fresh welcome.
    other = context.new_page()
    other.goto(f"{server.base}/chat")
    expect(bot_lines(other)).to_have_count(1, timeout=WAIT_MS)
    other.wait_for_timeout(300)
    expect(other.locator("#log li")).to_have_count(1)
    assert other.evaluate("sessionStorage.getItem('tsunagi.token')") not in (None, token)
    other.close()


def test_markup_typed_in_is_shown_as_text(page: Page, server: Server) -> None:
    markup = '<img src=x onerror="alert(1)"><script>alert(2)</script>'
    open_chat(page, server)
    consent(page)
    page.locator("#input").fill(markup)
    page.locator("#input").press("Enter")
    expect(user_lines(page).last.locator(".bubble")).to_have_text(markup)
    expect(page.locator("#log li.pending")).to_have_count(0)
    page.reload()  # and again when the history is replayed
    expect(user_lines(page).last.locator(".bubble")).to_have_text(markup, timeout=WAIT_MS)
    assert page.locator("#log img, #log script").count() == 0
    # The page fixture fails the test if any dialog (alert) opened.


# -- reconnecting: what the page resends ---------------------------------------------------------------------


STORY = "学校で友だちとうまくいかなくて悩んでいます"


class SocketProxy:
    """Stands between the page and the server's WebSocket (Playwright's route_web_socket): can refuse
    new connections (``offline``), cut the current one, or cut it when the next ack arrives, so that
    the ack is lost although the server stored the message."""

    def __init__(self, page: Page) -> None:
        self.offline = False
        self.cut_at_next_ack = False
        self.routes: list[Any] = []
        self.connections = 0
        page.route_web_socket(re.compile(r"/chat/ws$"), self._handle)

    def _handle(self, route: Any) -> None:
        if self.offline:
            route.close(code=1001)
            return
        self.connections += 1
        server = route.connect_to_server()
        cut = {"done": False}

        def from_server(message: str | bytes) -> None:
            if cut["done"]:
                return  # what the server sends after the cut is lost on the way
            if self.cut_at_next_ack and isinstance(message, str) and '"type":"ack"' in message:
                self.cut_at_next_ack = False
                cut["done"] = True
                server.close()
                route.close(code=1001)
                return
            route.send(message)

        server.on_message(from_server)
        self.routes.append((route, server, cut))

    def cut(self) -> None:
        route, server, cut = self.routes[-1]
        cut["done"] = True
        server.close()
        route.close(code=1001)


def transcript(page: Page) -> list[tuple[str, str]]:
    """(who, text) of every line the page shows, in order."""
    rows = page.evaluate(
        """() => [...document.querySelectorAll('#log li')].map((li) => [
            li.classList.contains('from-user') ? 'user' : 'bot',
            li.querySelector('.bubble').textContent])"""
    )
    return [(who, text) for who, text in rows]


def settled(page: Page) -> list[tuple[str, str]]:
    """The transcript once nothing is pending and the intake question (the last reply) is shown."""
    expect(page.locator("#log li.pending")).to_have_count(0, timeout=WAIT_MS)
    expect(bot_lines(page).last).to_contain_text("年齢はどのくらいですか", timeout=WAIT_MS)
    page.wait_for_timeout(300)  # anything shown twice would arrive now
    return transcript(page)


def expected_after_story(page_before: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [*page_before, ("user", STORY)]


def check_story_transcript(page: Page, seen: list[tuple[str, str]], before: list[tuple[str, str]]) -> None:
    # The canonical order is the server's history, which a reload replays with nothing pending.
    page.reload()
    expect(bot_lines(page).last).to_contain_text("年齢はどのくらいですか", timeout=WAIT_MS)
    page.wait_for_timeout(300)
    canonical = transcript(page)
    assert canonical[: len(before) + 1] == expected_after_story(before)
    assert [w for w, _ in canonical] == ["bot", "user", "bot", "user", "bot", "bot"]
    assert [t for w, t in seen if w == "user"] == [CONSENT, STORY], f"the page shows {seen}"
    assert seen == canonical, f"the page shows {seen}\nthe conversation is {canonical}"


def test_a_message_whose_ack_was_lost_is_shown_once_in_order_after_the_reconnect(
    page: Page, server: Server
) -> None:
    proxy = SocketProxy(page)
    open_chat(page, server)
    consent(page)
    before = transcript(page)
    proxy.cut_at_next_ack = True  # the server stores the message, the page never hears so
    page.locator("#input").fill(STORY)
    page.locator("#input").press("Enter")
    expect(page.locator("#status")).to_have_text(re.compile("つなぎなおしています"), timeout=WAIT_MS)
    seen = settled(page)
    assert proxy.connections == 2
    check_story_transcript(page, seen, before)


def test_a_message_written_while_offline_is_sent_after_the_reconnect_in_order(
    page: Page, server: Server
) -> None:
    proxy = SocketProxy(page)
    open_chat(page, server)
    consent(page)
    before = transcript(page)
    proxy.offline = True
    proxy.cut()
    expect(page.locator("#status")).to_have_text(re.compile("つなぎなおしています"), timeout=WAIT_MS)
    page.locator("#input").fill(STORY)
    page.locator("#input").press("Enter")
    expect(page.locator("#log li.pending")).to_have_count(1)  # kept until the server has it
    proxy.offline = False
    seen = settled(page)
    assert proxy.connections == 2
    check_story_transcript(page, seen, before)


# -- (b) quick exit ----------------------------------------------------------------------------------------


def test_a_picture_is_sent_with_the_attach_button(page: Page, server: Server, tmp_path: Path) -> None:
    from tests.pictures import photo_with_gps

    open_chat(page, server)
    consent(page)
    picture = tmp_path / "スクショ.jpg"
    picture.write_bytes(photo_with_gps())
    expect(page.locator("#attach")).to_have_accessible_name("画像を送る")
    with page.expect_file_chooser() as chooser:
        page.locator("#attach").click()
    chooser.value.set_files(str(picture))
    expect(user_lines(page).last).to_contain_text("（画像を送りました）")
    expect(bot_lines(page).last).to_contain_text("画像を受け取りました", timeout=WAIT_MS)
    expect(page.locator("#log li.pending")).to_have_count(0)  # acknowledged
    assert page.locator("#log img").count() == 0, "the page keeps no picture"
    notes = tmp_path / "memo.txt"
    notes.write_text("not a picture")
    page.locator("#attach-file").set_input_files(str(notes))
    expect(page.locator("#attach-error")).to_have_text("画像ファイルだけを送れます。")


def test_quick_exit_leaves_nothing_behind(page: Page, server: Server, context: BrowserContext) -> None:
    before = f"{server.base}/healthz?before-chat"
    page.goto(before)
    open_chat(page, server)
    consent(page)
    page.locator("#input").fill("ひみつの相談です")
    page.locator("#input").press("Enter")
    expect(page.locator("#log li.pending")).to_have_count(0)
    expect(bot_lines(page).nth(2)).to_be_visible(timeout=WAIT_MS)  # a reply to it

    # During the chat: only the resume token, in sessionStorage; nothing of the transcript anywhere.
    kept = storage(page)
    assert kept["local"] == {}
    assert list(kept["session"]) == ["tsunagi.token"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{20,128}", kept["session"]["tsunagi.token"])
    assert kept["cookie"] == "" and context.cookies() == []
    assert kept["idb"] == [] and kept["caches"] == []
    assert page.evaluate("localStorage.length === 0")
    assert page.evaluate("sessionStorage.length") == 1

    page.locator("#quick-exit").click()
    page.wait_for_url(server.exit_url, timeout=WAIT_MS)
    assert page.url == server.exit_url
    # The same tab on the same origin: the chat's sessionStorage is what this page sees.
    assert page.evaluate("sessionStorage.length") == 0
    assert page.evaluate("localStorage.length") == 0
    assert "ひみつ" not in page.content()

    # location.replace left no history entry: Back goes to the page before the chat.
    page.go_back()
    page.wait_for_load_state()
    assert page.url == before, f"Back went to {page.url}"
    assert page.locator("#log").count() == 0
    assert "ひみつ" not in page.content() and "相談窓口" not in page.content()
    assert page.evaluate("sessionStorage.length") == 0


def test_two_escapes_quick_exit_too(page: Page, server: Server) -> None:
    open_chat(page, server)
    consent(page)
    page.keyboard.press("Escape")
    page.keyboard.press("Escape")
    page.wait_for_url(server.exit_url, timeout=WAIT_MS)
    assert page.evaluate("sessionStorage.length") == 0


def test_quick_exit_button_goes_to_the_configured_url(page: Page, server: Server) -> None:
    open_chat(page, server)
    expect(page.locator("#quick-exit")).to_have_attribute("data-url", server.exit_url)
    expect(page.locator("#quick-exit")).to_be_visible()


# -- (c) Japanese input --------------------------------------------------------------------------------------


def test_enter_during_ime_composition_does_not_send(page: Page, server: Server) -> None:
    """Approach: a real IME composition through the DevTools protocol (Input.imeSetComposition, then
    Input.insertText to commit), which headless Chromium supports: the keydown for Enter then carries
    ``isComposing: true`` exactly as with a Japanese IME."""
    open_chat(page, server)
    consent(page)
    sent = user_lines(page).count()
    box = page.locator("#input")
    cdp = compose_with_ime(page, box, "そうだん")

    page.keyboard.press("Enter")  # confirms the conversion: must not send
    page.wait_for_timeout(400)
    expect(user_lines(page)).to_have_count(sent)
    expect(box).to_have_value(re.compile("そうだん"))

    cdp.send("Input.insertText", {"text": "相談したい"})  # commits the composition
    expect(box).to_have_value(re.compile("相談したい"))
    page.wait_for_timeout(50)  # the page lets compositionend settle before Enter sends again
    page.keyboard.press("Enter")
    expect(user_lines(page)).to_have_count(sent + 1)
    expect(user_lines(page).last).to_contain_text("相談したい")
    expect(box).to_have_value("")
    expect(page.locator("#log li.pending")).to_have_count(0)
    cdp.detach()


def test_shift_enter_is_a_new_line(page: Page, server: Server) -> None:
    open_chat(page, server)
    sent = user_lines(page).count()
    box = page.locator("#input")
    box.fill("一行目")
    box.press("Shift+Enter")
    box.press_sequentially("二行目")
    page.wait_for_timeout(300)
    expect(user_lines(page)).to_have_count(sent)
    expect(box).to_have_value("一行目\n二行目")
    box.press("Enter")
    expect(user_lines(page)).to_have_count(sent + 1)
    expect(user_lines(page).last.locator(".bubble")).to_have_text("一行目\n二行目")


# -- (d) accessibility ---------------------------------------------------------------------------------------


def test_accessibility_basics(page: Page, server: Server) -> None:
    open_chat(page, server)
    log = page.locator("#log")
    expect(log).to_have_attribute("role", "log")
    expect(log).to_have_attribute("aria-live", re.compile("polite|assertive"))
    expect(page.get_by_role("log")).to_have_count(1)
    expect(page.locator("#status")).to_have_attribute("role", "status")
    expect(page.locator("html")).to_have_attribute("lang", "ja")

    box = page.locator("#input")
    expect(box).to_have_accessible_name("メッセージ")
    expect(page.get_by_label("メッセージ", exact=True)).to_have_attribute("id", "input")
    expect(page.locator("#quick-exit")).to_have_accessible_name("すぐに閉じる")
    expect(page.locator("#quick-exit")).to_have_accessible_description(re.compile("Esc"))

    # From the top of the document, Tab reaches the quick-exit button first.
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.locator("h1").click()  # moves the sequential focus starting point to the top of the page
    page.keyboard.press("Tab")
    expect(page.locator("#quick-exit")).to_be_focused()
    first = page.evaluate(
        """() => [...document.querySelectorAll(
                'a[href], button, input, textarea, select, [tabindex]:not([tabindex="-1"])')]
            .filter((e) => !e.disabled && e.offsetParent !== null)[0].id"""
    )
    assert first == "quick-exit"

    # A new bot message lands inside the live region, with who said it for screen readers.
    consent(page)
    newest = bot_lines(page).last
    expect(newest).to_contain_text("どんなことでも大丈夫です")
    live = newest.evaluate("(e) => { const r = e.closest('[aria-live]'); return r && r.id; }")
    assert live == "log"
    expect(newest).to_contain_text("つなぎ")
    expect(user_lines(page).last).to_contain_text("あなた")


# -- issue 14: on a phone and on a desktop -------------------------------------------------------------------

VIEWPORTS = {"phone": {"width": 390, "height": 844}, "desktop": {"width": 1280, "height": 800}}


@pytest.fixture(params=list(VIEWPORTS))
def sized(request: pytest.FixtureRequest, browser: Browser, server: Server) -> Iterator[Page]:
    """A page at a phone's size (390x844, touch) and at a desktop's (1280x800)."""
    phone = request.param == "phone"
    ctx = browser.new_context(
        locale="ja-JP", viewport=VIEWPORTS[request.param], is_mobile=phone, has_touch=phone
    )
    ctx.set_default_timeout(WAIT_MS)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("dialog", lambda d: (errors.append(f"dialog: {d.message}"), d.dismiss()))
    try:
        yield pg
    finally:
        ctx.close()
    assert errors == [], f"errors in the page: {errors}"


def box(page: Page, selector: str) -> dict[str, float]:
    found = page.locator(selector).bounding_box()
    assert found is not None, f"{selector} is not laid out"
    return found


def test_the_last_question_and_its_buttons_stay_above_the_message_box_and_the_status_stays_on_screen(
    sized: Page, server: Server
) -> None:
    page = sized
    height = page.viewport_size["height"] if page.viewport_size else 0
    open_chat(page, server)
    consent(page)
    for i in range(3):  # a conversation longer than the screen
        page.locator("#input").fill(f"{i + 1}. 部活の先輩のことで、ずっと悩んでいます。" * 3)
        page.locator("#input").press("Enter")
        expect(bot_lines(page).last).to_be_visible()
        page.wait_for_timeout(200)
    # The last thing the bot asked, with its buttons: on screen, above the message box, not under it.
    expect(page.locator("#choices button").first).to_be_visible()
    last, choices, composer = box(page, "#log li:last-child"), box(page, "#choices"), box(page, "#composer")
    assert last["y"] + last["height"] <= choices["y"] + 1, (last, choices)
    assert choices["y"] + choices["height"] <= composer["y"] + 1, (choices, composer)
    assert composer["y"] + composer["height"] <= height + 1, (composer, height)
    log = box(page, "#log")
    assert last["y"] >= log["y"] - 1, "the last message is scrolled out of the top"
    for button in page.locator("#choices button").all():
        expect(button).to_be_in_viewport(ratio=1)
    assert page.evaluate("window.scrollY") == 0, "only the conversation scrolls, not the page"

    # Waiting for a counsellor: the status line (with the place in line) stays on screen.
    page.locator("#input").fill(CRISIS)
    page.locator("#input").press("Enter")
    expect(page.locator("#status")).to_have_text(re.compile(r"相談員を待っています（\d+番目）"))
    expect(bot_lines(page).filter(has_text="119").first).to_be_visible()
    page.wait_for_timeout(300)
    expect(page.locator("#status")).to_be_in_viewport(ratio=1)
    expect(bot_lines(page).last).to_be_in_viewport()
    composer = box(page, "#composer")
    assert composer["y"] + composer["height"] <= height + 1


def test_phone_numbers_can_be_tapped_and_names_with_numbers_are_not_links(
    sized: Page, server: Server
) -> None:
    page = sized
    open_chat(page, server)
    consent(page)
    page.locator("#input").fill(CRISIS)
    page.locator("#input").press("Enter")
    crisis = bot_lines(page).filter(has_text="119").first
    expect(crisis).to_be_visible()
    links = crisis.locator("a.tel")
    hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
    assert "tel:110" in hrefs and "tel:119" in hrefs, hrefs
    assert any(h and re.fullmatch(r"tel:0120-\d+-\d+", h) for h in hrefs), hrefs
    for i in range(links.count()):
        expect(links.nth(i)).to_have_text(re.compile(r"^(#\d{4}|\d{3}|0\d{1,4}-\d{1,4}-\d{3,5})$"))
    # The page's own note too.
    expect(page.locator(".note a.tel")).to_have_count(2)
    # A name that holds a number is not a link (みんなの人権110番 is not a call to the police).
    other = sized.context.new_page()
    open_chat(other, server)
    consent(other)
    for text in ("上司に毎日みんなの前で怒鳴られて、つらいです", "答えない", "答えない", "はい"):
        other.locator("#input").fill(text)
        other.locator("#input").press("Enter")
        other.wait_for_timeout(300)
    offer = bot_lines(other).filter(has_text="みんなの人権110番")
    expect(offer).to_have_count(1)
    hrefs = offer.locator("a.tel").evaluate_all("(links) => links.map((a) => a.getAttribute('href'))")
    assert "tel:0570-003-110" in hrefs and "tel:110" not in hrefs, hrefs
    other.close()
    # What the person wrote is never linked (it is text, whatever it holds).
    page.locator("#input").fill("110（警察）に電話するべき？ 0120-279-338")
    page.locator("#input").press("Enter")
    expect(user_lines(page).last.locator("a")).to_have_count(0)


# -- accessibility: axe-core (axe-playwright-python ships its script: no network) ---------------------------


def test_no_serious_accessibility_violation_through_a_whole_conversation(sized: Page, server: Server) -> None:
    page = sized
    open_chat(page, server)
    assert serious_violations(page) == [], "the welcome"
    consent(page)
    page.locator("#input").fill("最近ちょっと学校に行きづらくて")
    page.locator("#input").press("Enter")
    expect(page.locator("#choices button").first).to_be_visible()
    assert serious_violations(page) == [], "a question with its buttons"
    page.locator("#input").fill(CRISIS)
    page.locator("#input").press("Enter")
    expect(page.locator("#status")).to_have_text(re.compile("相談員を待っています"))
    expect(bot_lines(page).filter(has_text="119").first).to_be_visible()
    assert serious_violations(page) == [], "waiting, with the crisis reply and its links"
    # The page's title is neutral (someone may look over the person's shoulder).
    assert page.title() == "チャット"
    placeholder = page.locator("#input").get_attribute("placeholder") or ""
    if page.viewport_size and page.viewport_size["width"] < 600:
        assert "Shift" not in placeholder, "a phone has no Shift+Enter to speak of"
    else:
        assert "Shift+Enter" in placeholder
