"""The web application as far as this issue builds it: health, with the engine loaded."""

from __future__ import annotations

from fastapi.testclient import TestClient

from bot.web import create_app


def test_healthz_reports_the_engine() -> None:
    with TestClient(create_app()) as client:
        response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["triage"]["rules"] > 50
