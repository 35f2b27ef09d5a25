"""schemathesis against the app's own OpenAPI (``app.openapi()``: the app serves none), in process, on
SQLite: the console API logged in as each role, and the LINE and Telegram webhooks with valid signatures
and secret tokens (and, now and then, without). Requests that fit the schema and requests that break it;
the answer is never a 5xx, and never breaks the schema the operation declares (body, content type).

A waiting conversation and real account names are in the database, and generated path parameters are
replaced by them half of the time, so that routes are walked past their 404s. The examples are bounded
(``EXAMPLES`` per operation, role and mode) and derandomized, so a failure seen once is seen again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, reject
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from bot.models import Role
from bot.web import create_app
from tests.helpers import (
    LINE_SECRET,
    PLATFORMS,
    TELEGRAM_SECRET,
    Session,
    account,
    eventually,
    is_ack,
    make_settings,
    repeatable,
    service,
    start_fresh,
    wait_for,
)

EXAMPLES = 8
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
# Ending the session would leave every later request at 401; logging out is tested in test_console_api.
SKIPPED = {("POST", "/api/console/logout")}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, **PLATFORMS)  # the platforms' calls fail at once, retried later
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def waiting_conversation(client: TestClient) -> str:
    """A web chat conversation that asked for a counsellor, its person gone."""
    with client.websocket_connect("/chat/ws") as ws:
        start_fresh(ws)
        for i, text in enumerate(("同意", "相談したい")):
            ws.send_json({"type": "message", "text": text, "id": f"m{i}"})
            wait_for(ws, is_ack(f"m{i}"), what="the ack")
    svc = service(client)
    ids: list[str] = []

    def queued() -> bool:
        ids[:] = [e.conversation_id for e in client.portal.call(svc.queue.entries)]  # type: ignore[union-attr]
        return bool(ids)

    eventually(queued, "the conversation in the queue")
    return ids[0]


def operations(client: TestClient) -> list[Any]:
    schema = schemathesis.openapi.from_dict(client.app.openapi())  # type: ignore[attr-defined]
    ops = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in ops} >= {"/webhooks/line", "/webhooks/telegram", "/api/console/queue"}
    return [op for op in ops if (op.method.upper(), op.path) not in SKIPPED]


def send(client: TestClient, case: Any, me: Session | None, sign: bool) -> httpx2.Response:
    kw = case.as_transport_kwargs(base_url="http://testserver")
    headers = {k: v for k, v in kw["headers"].items() if k.lower() not in ("cookie", "content-length")}
    if "json" in kw:
        content: bytes | None = json.dumps(kw["json"]).encode()
    elif isinstance(kw.get("data"), str | bytes):
        data = kw["data"]
        content = data.encode() if isinstance(data, str) else data
    else:
        content = None
    if me is not None:
        headers["Cookie"] = f"tsunagi_console={me.token}"
        headers["X-CSRF-Token"] = me.csrf
    if sign and case.path == "/webhooks/line":
        digest = hmac.new(LINE_SECRET.encode(), content or b"", hashlib.sha256).digest()
        headers["X-Line-Signature"] = base64.b64encode(digest).decode()
    if sign and case.path == "/webhooks/telegram":
        headers["X-Telegram-Bot-Api-Secret-Token"] = TELEGRAM_SECRET
    try:
        url, params = kw["url"], kw.get("params")
        return client.request(kw["method"], url, params=params, headers=headers, content=content)
    except (UnicodeEncodeError, httpx2.InvalidURL, httpx2.LocalProtocolError):
        reject()  # a header no HTTP client can send: nothing for the server to answer


@pytest.mark.slow
@pytest.mark.parametrize("role", [Role.COUNSELLOR, Role.SUPERVISOR, Role.ADMIN])
def test_no_answer_is_a_server_error_or_breaks_the_schema(client: TestClient, role: Role) -> None:
    conversation_id = waiting_conversation(client)
    me = account(client, f"fuzz-{role.value}", role)
    account(client, "colleague")
    names = [me.username, "colleague", "nobody"]
    failures: list[str] = []

    for op in operations(client):
        shared = not op.path.startswith("/api/console/") or op.path.endswith("/login")
        if shared and role is not Role.COUNSELLOR:
            continue  # the same for every role: walked once
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                strategy = op.as_strategy(generation_mode=mode)
            except Exception as e:  # no negative form of an operation without parameters
                if mode is GenerationMode.NEGATIVE:
                    continue
                raise AssertionError(f"{op.label}: {e}") from e

            @repeatable(EXAMPLES, HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much)
            @given(case=strategy, data=st.data())
            def run(case: Any, data: st.DataObject) -> None:
                path_parameters = case.path_parameters or {}
                if "conversation_id" in path_parameters and data.draw(st.booleans()):
                    path_parameters["conversation_id"] = conversation_id
                if "username" in path_parameters and data.draw(st.booleans()):
                    path_parameters["username"] = data.draw(st.sampled_from(names))
                sign = data.draw(st.integers(0, 9)) > 0  # one webhook call in ten keeps its own header
                response = send(client, case, me, sign)
                try:
                    case.validate_response(response, checks=CHECKS)
                except BaseExceptionGroup as e:
                    label = f"{case.operation.label} [{case.meta.generation.mode.value}]"
                    failures.append(f"{label} -> {response.status_code}: {str(e)[:800]}")
                    raise

            try:
                run()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, op.label  # nothing in it can be made wrong
            except BaseExceptionGroup:
                pass  # collected: every operation is walked before the test fails
    assert not failures, "\n\n".join(failures[:10]) + f"\n\n({len(failures)} in all)"
