"""The service's logs (bot/logs.py): one event a line, JSON or text (``TSUNAGI_LOG_FORMAT``), a request id
for every request (taken from ``X-Request-ID`` when plausible, and sent back), one access line a request
with the route's template. What they must never hold is checked in tests/test_privacy.py."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from bot import logs
from bot.web import create_app
from tests.helpers import free_port, make_settings, server, service_logs

HEX_ID = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    with service_logs() as out:
        yield out


def events(out: io.StringIO) -> list[dict[str, str]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_request_id_is_taken_when_plausible_made_otherwise_and_sent_back(
    tmp_path: Path, captured: io.StringIO
) -> None:
    with TestClient(create_app(make_settings(tmp_path))) as client:
        given = client.get("/chat", headers={"X-Request-ID": "lb-7f3a.2:xyz"})
        made = client.get("/chat")
        for bad in ("two words", "x" * 129, "<script>", ""):
            refused = client.get("/chat", headers={"X-Request-ID": bad})
            assert HEX_ID.fullmatch(refused.headers["X-Request-ID"]), bad
        missing = client.get("/api/console/conversations/0123456789abcdef?token=secret-in-query")
        nowhere = client.get("/no/such/path/U1234567890abcdef")
    assert given.headers["X-Request-ID"] == "lb-7f3a.2:xyz"
    assert HEX_ID.fullmatch(made.headers["X-Request-ID"])
    assert missing.status_code == 401 and nowhere.status_code == 404
    assert HEX_ID.fullmatch(nowhere.headers["X-Request-ID"])
    access = {e["request_id"]: e for e in events(captured) if e["logger"] == "tsunagi.access"}
    assert re.fullmatch(r"GET /chat 200 \d+\.\dms", access["lb-7f3a.2:xyz"]["event"])
    assert access[made.headers["X-Request-ID"]]["level"] == "INFO"
    # The route's template, never the path as sent nor its query; "-" when no route took it.
    line = access[missing.headers["X-Request-ID"]]["event"]
    assert line.startswith("GET /api/console/conversations/{conversation_id} 401 "), line
    assert access[nowhere.headers["X-Request-ID"]]["event"].startswith("GET - 404 ")
    assert "0123456789abcdef" not in captured.getvalue() and "secret-in-query" not in captured.getvalue()
    assert "U1234567890abcdef" not in captured.getvalue()


def test_a_probe_that_succeeds_is_logged_at_debug_and_one_that_fails_at_info(tmp_path: Path) -> None:
    """A health check every few seconds and a scrape every 15 would fill the access log at INFO; their
    successes go to DEBUG, a failing health check stays at INFO, and everything else too."""
    with service_logs(logging.DEBUG) as out, TestClient(create_app(make_settings(tmp_path))) as client:
        ok = client.get("/healthz")
        scraped = client.get("/metrics")
        page = client.get("/chat")
        svc = client.app.state.service  # type: ignore[attr-defined]
        health = svc.health

        async def down() -> dict[str, bool]:
            return {"database": False, "queue": True}

        svc.health = down
        failing = client.get("/healthz")
        svc.health = health
    statuses = [r.status_code for r in (ok, scraped, page, failing)]
    assert statuses == [200, 200, 200, 503]
    access = {e["request_id"]: e for e in events(out) if e["logger"] == "tsunagi.access"}
    level = {r: access[r.headers["X-Request-ID"]]["level"] for r in (ok, scraped, page, failing)}
    assert level == {ok: "DEBUG", scraped: "DEBUG", page: "INFO", failing: "INFO"}


def test_a_line_is_one_event_in_either_format() -> None:
    record = logging.LogRecord("tsunagi.x", logging.ERROR, __file__, 1, "two\nlines %d", (2,), None)
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    record.request_id = "r-1"
    as_json = logs.JsonFormatter().format(record)
    assert "\n" not in as_json
    parsed = json.loads(as_json)
    assert (
        parsed["event"] == "two\nlines 2" and parsed["level"] == "ERROR" and parsed["logger"] == "tsunagi.x"
    )
    assert parsed["request_id"] == "r-1" and "ValueError: boom" in parsed["exception"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", parsed["time"])
    record.exc_info = None
    record.exc_text = None
    as_text = logs.TextFormatter().format(record)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ERROR tsunagi\.x: two\nlines 2 \[r-1\]", as_text
    )
    with pytest.raises(ValueError):
        logs.handler("yaml")
    with pytest.raises(ValidationError):
        make_settings(Path("/nonexistent"), log_format="yaml")


def test_the_text_format_is_plain_lines_with_the_request_id(tmp_path: Path) -> None:
    out = io.StringIO()
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    try:
        logs.configure("text", stream=out)
        assert logging.getLogger("httpx").level == logging.WARNING, "its request lines carry URLs"
        with TestClient(create_app(make_settings(tmp_path))) as client:
            rid = client.get("/chat").headers["X-Request-ID"]
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved:
            root.addHandler(h)
        root.setLevel(level)
    lines = out.getvalue().splitlines()
    assert any(re.search(rf"INFO tsunagi\.access: GET /chat 200 \S+ \[{rid}\]$", ln) for ln in lines), lines
    assert any(" INFO tsunagi: tsunagi started: channels " in ln for ln in lines), lines
    assert not any(ln.startswith("{") for ln in lines)


def test_tsunagi_serve_writes_every_line_as_json(tmp_path: Path) -> None:
    """A real ``tsunagi serve``: uvicorn's own lines go through the same handler, one JSON object each."""
    env = {
        **os.environ,
        "TSUNAGI_VAR_DIR": str(tmp_path / "var"),
        "TSUNAGI_SMTP_LISTEN": "",
        "TSUNAGI_LOG_FORMAT": "json",
        "TSUNAGI_REDIS_URL": "",
        "TSUNAGI_DATABASE_URL": "",
    }
    port = free_port()
    # The logs are standard error; standard output has what the operator is told (the first start's
    # one-time password), which is not a log line.
    log_path = tmp_path / "server.log"
    with server(env, port, log_path=log_path, stdout_path=tmp_path / "server.out"):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/chat", headers={"X-Request-ID": "probe-1"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.headers["X-Request-ID"] == "probe-1"
    lines = log_path.read_text().splitlines()
    parsed = [json.loads(line) for line in lines]  # every line, or this fails
    loggers = {e["logger"] for e in parsed}
    assert {"tsunagi", "uvicorn.error", "tsunagi.access"} <= loggers, loggers
    assert any(e["logger"] == "uvicorn.error" and "Uvicorn running on" in e["event"] for e in parsed)
    probe = [e for e in parsed if e.get("request_id") == "probe-1"]
    assert [e["logger"] for e in probe] == ["tsunagi.access"] and probe[0]["event"].startswith(
        "GET /chat 200"
    )
