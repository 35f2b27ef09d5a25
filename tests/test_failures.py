"""Failed logins and bad webhook signatures: limited, and counted in /metrics (bot/guard.py).

- LINE signatures and Telegram secret tokens: after ``SIGNATURE_FAILURES`` bad ones from one address, that
  address's bad requests get 429 with Retry-After; a valid one is still taken from the same address (LINE
  may come through the proxy an attacker uses), and another address is not affected.
- logins: the per-address limit can be switched off (``TSUNAGI_LOGIN_LIMIT_PER_ADDRESS=false``) for an
  office behind one address; the limit per username stays. Failures and refusals are counted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from bot.guard import SIGNATURE_FAILURES
from bot.storage.credentials import MAX_FAILURES
from bot.web import create_app
from tests.helpers import (
    LINE_SECRET,
    PASSWORD,
    PLATFORMS,
    TELEGRAM_SECRET,
    add_account,
    from_address,
    line_signature,
    make_settings,
    try_login,
)


def app_client(tmp_path: Path, **overrides: object) -> TestClient:
    settings = make_settings(tmp_path, **PLATFORMS, **overrides)
    return TestClient(create_app(settings))


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with app_client(tmp_path) as c:
        yield c


def metric(client: TestClient, name: str, **labels: str) -> float:
    text = client.get("/metrics").text
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def line(client: TestClient, *, good: bool) -> int:
    body = json.dumps({"destination": "U0", "events": []}).encode()
    headers = {"X-Line-Signature": line_signature(body, LINE_SECRET if good else "wrong")}
    response = client.post("/webhooks/line", content=body, headers=headers)
    if response.status_code == 429:
        assert int(response.headers["Retry-After"]) > 0
    return response.status_code


def telegram(client: TestClient, *, good: bool) -> int:
    headers = {"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET if good else "wrong"}
    response = client.post("/webhooks/telegram", json={"update_id": 1}, headers=headers)
    if response.status_code == 429:
        assert int(response.headers["Retry-After"]) > 0
    return response.status_code


@pytest.mark.parametrize(("channel", "send", "refused"), [("line", line, 400), ("telegram", telegram, 403)])
def test_bad_signatures_are_limited_per_address_and_counted(
    client: TestClient, channel: str, send: Callable[..., int], refused: int
) -> None:
    post = send
    assert all(post(client, good=False) == refused for _ in range(SIGNATURE_FAILURES))
    assert post(client, good=False) == 429
    assert post(client, good=False) == 429
    assert post(client, good=True) == 200, "a valid signature is never refused"
    with from_address(client, "198.51.100.7") as elsewhere:
        assert post(elsewhere, good=False) == refused
    failures = "tsunagi_webhook_signature_failures_total"
    assert metric(client, failures, channel=channel, outcome="failed") == SIGNATURE_FAILURES + 1
    assert metric(client, failures, channel=channel, outcome="refused") == 2


def test_failed_logins_are_counted_and_refusals_too(client: TestClient) -> None:
    add_account(client, "amy")
    for _ in range(MAX_FAILURES):
        assert try_login(client, "amy", "wrong-password").status_code == 401
    assert try_login(client, "amy", PASSWORD).status_code == 429
    assert metric(client, "tsunagi_login_failures_total", outcome="failed") == MAX_FAILURES
    assert metric(client, "tsunagi_login_failures_total", outcome="refused") == 1


def test_the_limit_per_address_can_be_switched_off_and_the_one_per_username_stays(tmp_path: Path) -> None:
    with app_client(tmp_path, login_limit_per_address=False) as client:
        for name in ("amy", "bob", "cat"):
            add_account(client, name)
        # Colleagues behind one address mistype: five failures on different names lock nobody out.
        for name in ("amy", "bob", "x1", "x2", "x3", "x4"):
            assert try_login(client, name, "wrong-password").status_code == 401
        assert try_login(client, "cat", PASSWORD).status_code == 200
        assert try_login(client, "amy", PASSWORD).status_code == 200
        # One name guessed five times is still locked (bob failed once above).
        for _ in range(MAX_FAILURES - 1):
            assert try_login(client, "bob", "wrong-password").status_code == 401
        assert try_login(client, "bob", PASSWORD).status_code == 429


def test_with_the_default_the_address_is_limited(client: TestClient) -> None:
    add_account(client, "cat")
    for name in ("x1", "x2", "x3", "x4", "x5"):
        assert try_login(client, name, "wrong-password").status_code == 401
    assert try_login(client, "cat", PASSWORD).status_code == 429
