"""Two ``tsunagi serve`` processes sharing Redis and PostgreSQL, the way a service outgrows one machine:
a message arriving at one shows live in a console connected to the other; a claim on one is refused
on the other; a counsellor's reply sent through one reaches the person connected to the other."""

from __future__ import annotations

import asyncio
import json
import os
from contextlib import ExitStack
from pathlib import Path

from cryptography.fernet import Fernet
from websockets.sync.client import ClientConnection, connect

from tests.helpers import Console, add_counsellor, frames, free_port, server
from tests.redis_helpers import TEST_REDIS_URL, delete_prefix, random_prefix, require_redis


def test_two_instances_share_the_queue_the_live_view_and_the_claims(tmp_path: Path, pg_database: str) -> None:
    asyncio.run(require_redis())
    prefix = random_prefix()
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
    add_counsellor(envs["a"], "sato", "sato-password-123")
    add_counsellor(envs["a"], "suzuki", "suzuki-password-123")
    port_a, port_b = free_port(), free_port()
    try:
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
    finally:
        asyncio.run(delete_prefix(prefix))
