"""Every response of the app carries the security headers: a Content-Security-Policy that allows no inline
script or style and no framing, nosniff, no referrer; and, only when the service is told it is behind TLS
(``TSUNAGI_BEHIND_TLS``), Strict-Transport-Security and ``Secure`` on every cookie.

The app's routes are walked as in tests/test_contract_doc.py (every channel with routes switched on), and
each is requested twice: by a stranger and by a logged-in administrator, so that pages, JSON answers,
static files and the error answers (401, 403, 404, 422, a webhook's 400) are all read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.routing import APIWebSocketRoute, iter_route_contexts
from fastapi.testclient import TestClient
from httpx2 import Response

from bot.models import Role
from bot.web import create_app
from tests.helpers import PASSWORD, PLATFORMS, account, make_settings

UNSAFE_SOURCES = ("'unsafe-inline'", "'unsafe-eval'", "'unsafe-hashes'", "*", "data:", "http:", "https:")


def http_routes(app: FastAPI) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for ctx in iter_route_contexts(app.routes):
        if not isinstance(ctx.original_route, APIWebSocketRoute):
            out += [(method, ctx.path or "") for method in sorted(ctx.methods or ()) if method != "HEAD"]
    # Logging out ends the administrator's session: last.
    return sorted(out, key=lambda route: route[1].endswith("/logout"))


def concrete(path: str) -> str:
    """A path with its parameters filled in (nothing by these names exists: a 404 is read too)."""
    return re.sub(r"\{[^}]+\}", "x", path)


def csp_directives(value: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in value.split(";"):
        words = part.split()
        if words:
            out[words[0].lower()] = words[1:]
    return out


def check_headers(where: str, response: Response, *, behind_tls: bool) -> None:
    h = response.headers
    csp = h.get("content-security-policy")
    assert csp, f"{where}: no Content-Security-Policy"
    directives = csp_directives(csp)
    assert directives.get("frame-ancestors") == ["'none'"], f"{where}: {csp}"
    for kind in ("script-src", "style-src"):
        sources = directives.get(kind, directives.get("default-src"))
        assert sources, f"{where}: neither {kind} nor default-src in {csp}"
        assert not set(sources) & set(UNSAFE_SOURCES), f"{where}: {kind} {sources}"
    assert h.get("x-content-type-options") == "nosniff", where
    assert h.get("referrer-policy") == "no-referrer", where
    if behind_tls:
        assert h.get("strict-transport-security", "").startswith("max-age="), where
        assert int(h["strict-transport-security"].split("=")[1].split(";")[0]) >= 180 * 86400, where
    else:
        assert "strict-transport-security" not in h, f"{where}: HSTS without TSUNAGI_BEHIND_TLS"
    for cookie in h.get_list("set-cookie"):
        flags = {p.strip().lower() for p in cookie.split(";")[1:]}
        assert ("secure" in flags) == behind_tls, f"{where}: {cookie}"


@pytest.mark.parametrize("behind_tls", [False, True], ids=["plain", "behind-tls"])
def test_every_route_answers_with_the_security_headers(tmp_path: Path, behind_tls: bool) -> None:
    # Started, the channels call their platforms: a closed port on loopback, never the internet.
    settings = make_settings(tmp_path, **PLATFORMS, behind_tls=behind_tls)
    app = create_app(settings)
    routes = http_routes(app)
    assert len(routes) > 30, routes  # the walk reached the included routers
    statuses: dict[tuple[str, str], set[int]] = {}
    with TestClient(app) as client:
        admin = account(client, "headers-admin", Role.ADMIN)
        for method, path in routes:
            for who, response in (
                ("stranger", client.request(method, concrete(path))),
                ("admin", admin.request(method, concrete(path))),
            ):
                where = f"{method} {path} ({who}, {response.status_code})"
                check_headers(where, response, behind_tls=behind_tls)
                statuses.setdefault((method, path), set()).add(response.status_code)
        # Real pages, files and answers were read, not only refusals.
        for real in ("/chat", "/console", "/chat/static/chat.js", "/console/static/console.css", "/healthz"):
            response = client.get(real)
            assert response.status_code == 200, real
            check_headers(f"GET {real}", response, behind_tls=behind_tls)
    for route in [("GET", "/api/console/queue"), ("GET", "/api/console/me"), ("GET", "/metrics")]:
        assert 200 in statuses[route], (route, statuses[route])
    assert {401, 403} & statuses[("GET", "/api/console/queue")]


@pytest.mark.parametrize("behind_tls", [False, True], ids=["plain", "behind-tls"])
def test_the_session_cookie_is_secure_behind_tls_and_its_deletion_too(
    tmp_path: Path, behind_tls: bool
) -> None:
    with TestClient(create_app(make_settings(tmp_path, behind_tls=behind_tls))) as client:
        session = account(client, "cookie-counsellor")
        login = client.post(
            "/api/console/login", json={"username": "cookie-counsellor", "password": "wrong password"}
        )
        assert login.status_code == 401
        login = client.post(
            "/api/console/login", json={"username": "cookie-counsellor", "password": PASSWORD}
        )
        assert login.status_code == 200 and login.headers.get_list("set-cookie"), login.headers
        check_headers("login", login, behind_tls=behind_tls)
        (cookie,) = login.headers.get_list("set-cookie")
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower(), cookie
        logout = session.post("logout")
        assert logout.status_code == 204 and logout.headers.get_list("set-cookie"), logout.headers
        check_headers("logout", logout, behind_tls=behind_tls)


def test_a_page_keeps_its_own_policy_and_an_answer_gets_the_strict_default(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path))) as client:
        chat = csp_directives(client.get("/chat").headers["content-security-policy"])
        assert chat["script-src"] == ["'self'"] and chat["style-src"] == ["'self'"]
        assert chat["connect-src"] == ["'self'"]  # the WebSocket, same origin
        healthz = csp_directives(client.get("/healthz").headers["content-security-policy"])
        assert healthz["default-src"] == ["'none'"] and "script-src" not in healthz
        # No inline script or style in the pages themselves either (the CSP would block them).
        for page in ("/chat", "/console"):
            html = client.get(page).text
            assert not re.search(r"<style|\sstyle=|\son[a-z]+=|javascript:", html, re.I), page
            for script in re.findall(r"<script\b[^>]*>", html, re.I):
                assert "src=" in script or 'type="application/json"' in script, (page, script)


@pytest.mark.parametrize("behind_tls", [False, True], ids=["plain", "behind-tls"])
def test_a_failure_inside_is_answered_500_with_the_headers(tmp_path: Path, behind_tls: bool) -> None:
    """A route that fails (the database gone, a bug) answers a bare 500 from Starlette's outermost layer
    unless the headers' middleware answers it itself: it does, and the error is still raised to be logged."""
    app = create_app(make_settings(tmp_path, behind_tls=behind_tls))

    @app.get("/fails")
    async def fails() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/fails")
        assert response.status_code == 500 and response.text == "Internal Server Error"
        check_headers("GET /fails (500)", response, behind_tls=behind_tls)
    with TestClient(app) as client, pytest.raises(RuntimeError, match="a bug"):
        client.get("/fails")
