"""Two ``tsunagi serve`` processes sharing Redis and PostgreSQL, the way a service outgrows one machine:
a message arriving at one shows live in a console connected to the other; a claim on one is refused
on the other; a counsellor's reply sent through one reaches the person connected to the other. One
killed (SIGKILL) with a person's socket and a counsellor's claim: both carry on through the other."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from websockets.sync.client import ClientConnection, connect

from tests.helpers import Console, add_accounts, eventually, frames, free_port, server
from tests.redis_helpers import TEST_REDIS_URL, delete_prefix, random_prefix, require_redis


def instances(tmp_path: Path, pg_database: str, prefix: str) -> dict[str, dict[str, str]]:
    """The environments of instances "a" and "b", sharing the database, Redis and keys; the counsellors
    sato and suzuki added."""
    common = {
        **os.environ,
        "TSUNAGI_DATABASE_URL": pg_database,
        "TSUNAGI_REDIS_URL": TEST_REDIS_URL,
        "TSUNAGI_REDIS_PREFIX": prefix,
        "TSUNAGI_DATA_KEY": Fernet.generate_key().decode(),
        "TSUNAGI_SECRET_KEY": "shared-secret-for-this-test",
        "TSUNAGI_SMTP_LISTEN": "",
    }
    envs = {name: {**common, "TSUNAGI_VAR_DIR": str(tmp_path / name / "var")} for name in ("a", "b")}
    for name in envs:
        (tmp_path / name).mkdir()
    accounts = {"sato": ("counsellor", "sato-password-123"), "suzuki": ("counsellor", "suzuki-password-123")}
    add_accounts(tmp_path / "a", accounts, env=envs["a"])
    return envs


@pytest.fixture
def envs(tmp_path: Path, pg_database: str) -> Iterator[dict[str, dict[str, str]]]:
    asyncio.run(require_redis())
    prefix = random_prefix()
    try:
        yield instances(tmp_path, pg_database, prefix)
    finally:
        asyncio.run(delete_prefix(prefix))


def test_two_instances_share_the_queue_the_live_view_and_the_claims(envs: dict[str, dict[str, str]]) -> None:
    port_a, port_b = free_port(), free_port()
    with ExitStack() as stack:
        stack.enter_context(server(envs["a"], port_a))
        stack.enter_context(server(envs["b"], port_b))
        a, b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
        sato_on_b = Console(b, "sato", "sato-password-123")
        suzuki_on_a = Console(a, "suzuki", "suzuki-password-123")

        live: ClientConnection = stack.enter_context(
            connect(
                f"ws://127.0.0.1:{port_b}/api/console/live",
                additional_headers={"Cookie": sato_on_b.cookie()},
            )
        )
        person = stack.enter_context(connect(f"ws://127.0.0.1:{port_a}/chat/ws"))
        person.send(json.dumps({"type": "hello", "resume": None}))
        frames(person, lambda f: f["type"] == "status")
        for i, text in enumerate(["同意", "相談したい"]):
            person.send(json.dumps({"type": "message", "text": text, "id": f"m{i}"}))
            frames(person, lambda f, i=i: f["type"] == "ack" and f["id"] == f"m{i}")

        # The message arrived at A; the console on B sees it live, and its queue has it.
        event = json.loads(live.recv(timeout=10))
        while not (event["kind"] == "conversation" and event["state"] == "waiting"):
            event = json.loads(live.recv(timeout=10))
        conversation_id = event["conversation_id"]
        status, queue = sato_on_b.call("GET", "/api/console/queue")
        assert status == 200 and [q["conversation_id"] for q in queue] == [conversation_id]

        # A claim on B wins; the same claim on A is refused.
        assert sato_on_b.call("POST", f"/api/console/conversations/{conversation_id}/claim")[0] == 200
        status, body = suzuki_on_a.call("POST", f"/api/console/conversations/{conversation_id}/claim")
        assert status == 409, body

        # The reply sent through B reaches the person, who is connected to A.
        status, _ = sato_on_b.call(
            "POST",
            f"/api/console/conversations/{conversation_id}/messages",
            {"text": "相談員の佐藤です。"},
        )
        assert status == 202
        got = frames(person, lambda f: f["type"] == "message" and f["from"] == "counsellor")
        assert got[-1]["text"] == "相談員の佐藤です。"


def test_an_instance_killed_with_sockets_and_claims_its_people_resume_on_another(
    envs: dict[str, dict[str, str]],
) -> None:
    """A is killed (SIGKILL) while a person's web chat socket is open on it and a counsellor logged in
    there holds that person's conversation. The person reconnects to B with their token and resumes;
    the counsellor, through B with the same session, still holds the conversation, and what they wrote
    while the person was away reaches them."""
    port_a, port_b = free_port(), free_port()
    with ExitStack() as stack:
        proc_a = stack.enter_context(server(envs["a"], port_a))
        stack.enter_context(server(envs["b"], port_b))
        a, b = f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"
        sato = Console(a, "sato", "sato-password-123")
        with connect(f"ws://127.0.0.1:{port_a}/chat/ws") as person:
            person.send(json.dumps({"type": "hello", "resume": None}))
            token = frames(person, lambda f: f["type"] == "session")[-1]["token"]
            frames(person, lambda f: f["type"] == "status")
            for i, text in enumerate(["同意", "相談したい"]):
                person.send(json.dumps({"type": "message", "text": text, "id": f"m{i}"}))
                frames(person, lambda f, i=i: f["type"] == "ack" and f["id"] == f"m{i}")
            status, queue = sato.call("GET", "/api/console/queue")
            assert status == 200 and len(queue) == 1
            conversation_id = queue[0]["conversation_id"]
            assert sato.call("POST", f"/api/console/conversations/{conversation_id}/claim")[0] == 200
            path = f"/api/console/conversations/{conversation_id}"
            assert sato.call("POST", f"{path}/messages", {"text": "佐藤です。"})[0] == 202
            frames(person, lambda f: f["type"] == "message" and f["from"] == "counsellor")

            def recorded() -> bool:  # A wrote down that it went out (a kill before that: sent again)
                messages = sato.call("GET", path)[1]["messages"]
                return messages[-1].get("delivery", {}).get("status") == "delivered"

            eventually(recorded, "the counsellor's message recorded as delivered")

            proc_a.kill()
            proc_a.wait(timeout=10)

        # The counsellor goes on through B, with the session they opened on A.
        sato.base = b
        status, conv = sato.call("GET", f"/api/console/conversations/{conversation_id}")
        assert status == 200, conv
        assert conv["state"] == "with_counsellor" and conv["counsellor"] == "sato", "the claim is kept"
        suzuki = Console(b, "suzuki", "suzuki-password-123")
        assert suzuki.call("POST", f"/api/console/conversations/{conversation_id}/claim")[0] == 409
        status, _ = sato.call(
            "POST", f"/api/console/conversations/{conversation_id}/messages", {"text": "まだいますか。"}
        )
        assert status == 202

        # The person comes back, to B: the same conversation, with what was said while away.
        again = stack.enter_context(connect(f"ws://127.0.0.1:{port_b}/chat/ws"))
        again.send(json.dumps({"type": "hello", "resume": token}))
        got = frames(again, lambda f: f["type"] == "message" and f.get("text") == "まだいますか。", limit=40)
        assert got[0] == {"type": "session", "token": token}, "resumed, not a new conversation"
        said = [f["text"] for f in got if f["type"] == "message" and f["from"] == "counsellor"]
        assert said == ["佐藤です。", "まだいますか。"], "each counsellor message once, in order"
        again.send(json.dumps({"type": "message", "text": "はい", "id": "m9"}))
        frames(again, lambda f: f["type"] == "ack" and f["id"] == "m9")
        status, conv = sato.call("GET", f"/api/console/conversations/{conversation_id}")
        assert [m["text"] for m in conv["messages"] if m.get("from") == "user"][-1:] == ["はい"]
