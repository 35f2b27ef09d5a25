"""Kill the server between accepting a message and sending its reply: after a restart the reply goes
out, exactly once, and the message the person sent is not lost or doubled.

The server is a real ``tsunagi serve`` process; ``TSUNAGI_FAULT=kill-before-send:2`` makes it SIGKILL
itself just before its second send (the first is the welcome), i.e. after the person's message was
stored with its reply in the outbox and before that reply left."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from websockets.sync.client import ClientConnection, connect

from tests.engine_helpers import reply_keys

ROOT = Path(__file__).resolve().parent.parent
TSUNAGI = ROOT / ".venv" / "bin" / "tsunagi"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(env: dict[str, str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    cmd = [str(TSUNAGI), "serve", "--host", "127.0.0.1", "--port", str(port)]
    if not TSUNAGI.exists():
        cmd = [sys.executable, "-m", "bot.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    log_path = Path(env["TSUNAGI_VAR_DIR"]).parent / f"server-{time.monotonic_ns()}.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                err = log_path.read_text(errors="replace")
                raise AssertionError(f"server did not start (exit {proc.returncode}): {err[-2000:]}")
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)
        log.close()
        print(f"--- server log ({log_path.name}) ---\n" + log_path.read_text(errors="replace")[-4000:])


def frames(ws: ClientConnection, until: Any, limit: int = 20) -> list[dict[str, Any]]:
    """Read frames until one satisfies ``until`` (inclusive)."""
    out = []
    for _ in range(limit):
        frame = json.loads(ws.recv(timeout=10))
        out.append(frame)
        if until(frame):
            return out
    raise AssertionError(f"no matching frame in {out}")


def test_reply_survives_a_kill_and_goes_out_once(tmp_path: Path) -> None:
    port = free_port()
    db = tmp_path / "t.db"
    env = {
        **os.environ,
        "TSUNAGI_VAR_DIR": str(tmp_path / "var"),
        "TSUNAGI_DATABASE_URL": f"sqlite+aiosqlite:///{db}",
        "TSUNAGI_DATA_KEY": Fernet.generate_key().decode(),
        "TSUNAGI_SMTP_LISTEN": "",
    }
    with server({**env, "TSUNAGI_FAULT": "kill-before-send:2"}, port) as proc:
        with connect(f"ws://127.0.0.1:{port}/chat/ws") as ws:
            ws.send(json.dumps({"type": "hello", "resume": None}))
            got = frames(ws, lambda f: f["type"] == "message")
            token = got[0]["token"]
            assert reply_keys([got[-1]["text"]]) == ["welcome"]
            ws.send(json.dumps({"type": "message", "text": "同意", "id": "m-1"}))
            proc.wait(timeout=20)  # the outbox kills the process before sending the reply
        assert proc.returncode == -9

    with closing(sqlite3.connect(db)) as con:
        rows = con.execute("SELECT status FROM outbox ORDER BY id").fetchall()
    assert rows == [("delivered",), ("pending",)], "the reply was stored, not sent, before the kill"

    with server(env, port):
        with connect(f"ws://127.0.0.1:{port}/chat/ws") as ws:
            ws.send(json.dumps({"type": "hello", "resume": token}))
            # The page resends what was never acknowledged, with the same id: it must be stored once.
            ws.send(json.dumps({"type": "message", "text": "同意", "id": "m-1"}))
            got = frames(ws, lambda f: f["type"] == "message" and not f.get("history"))
            assert got[0] == {"type": "session", "token": token}
            history = [(f["from"], f["text"]) for f in got if f.get("history")]
            assert [who for who, _ in history] == ["bot", "user"]
            assert history[1][1] == "同意"
            assert reply_keys([got[-1]["text"]]) == ["listening"]
            # Nothing more arrives: no second copy of the reply.
            ws.send(json.dumps({"type": "message", "text": "同意", "id": "m-1"}))
            rest = frames(ws, lambda f: f["type"] == "ack")
            assert not [f for f in rest if f["type"] == "message"]
        with connect(f"ws://127.0.0.1:{port}/chat/ws") as ws:
            ws.send(json.dumps({"type": "hello", "resume": token}))
            got = frames(ws, lambda f: f["type"] == "status")
            replayed = [
                reply_keys([f["text"]])[0] for f in got if f["type"] == "message" and f["from"] == "bot"
            ]
            assert replayed == ["welcome", "listening"], "each reply exactly once in the history"

    with closing(sqlite3.connect(db)) as con:
        texts = "SELECT direction, count(*) FROM message WHERE kind = 'text' GROUP BY direction ORDER BY 1"
        assert con.execute(texts).fetchall() == [("in", 1), ("out", 2)]
        assert con.execute("SELECT status, count(*) FROM outbox GROUP BY status").fetchall() == [
            ("delivered", 2)
        ]
