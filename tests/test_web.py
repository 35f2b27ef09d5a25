"""The web application: health (200, or 503 when the database is down) and metrics."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

import asyncpg
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from bot.web import create_app
from tests.helpers import TEST_DATABASE_URL, make_settings


def test_healthz_reports_database_queue_and_engine(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path))) as client:
        response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["database"] == "ok" and body["queue"] == "ok"
    assert body["triage"]["rules"] > 50


def test_healthz_is_503_when_the_database_goes_away(tmp_path: Path) -> None:
    base = make_url(TEST_DATABASE_URL)
    admin_dsn = base.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"tsunagi_h_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        con = await asyncpg.connect(admin_dsn, timeout=5)
        try:
            await con.execute(sql)
        finally:
            await con.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    url = base.set(database=name).render_as_string(hide_password=False)
    try:
        with TestClient(create_app(make_settings(tmp_path, url))) as client:
            assert client.get("/healthz").status_code == 200
            asyncio.run(admin(f'DROP DATABASE "{name}" WITH (FORCE)'))
            response = client.get("/healthz")
            assert response.status_code == 503
            assert response.json()["database"] == "down"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_metrics_are_prometheus_text_without_ids(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path))) as client:
        with client.websocket_connect("/chat/ws") as ws:
            ws.send_json({"type": "hello", "resume": None})
            token = ws.receive_json()["token"]
            ws.receive_json()  # the welcome
        text = client.get("/metrics").text
    assert "# TYPE tsunagi_conversations gauge" in text
    assert 'tsunagi_conversations{state="welcome"} 1.0' in text
    # The welcome is in the outbox (delivered, or just being recorded as such).
    assert re.search(
        r'tsunagi_outbox_messages\{channel="webchat",status="(delivered|sending|pending)"\} 1\.0', text
    )
    assert "# TYPE tsunagi_outbox_oldest_waiting_seconds gauge" in text
    assert "# TYPE tsunagi_inbox_events gauge" in text
    assert 'tsunagi_queue_waiting{risk="crisis"} 0.0' in text
    assert token not in text
