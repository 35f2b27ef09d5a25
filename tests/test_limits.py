"""Limits a stranger meets (bot/guard.py, docs/contract.md "Limits"), against a real ``tsunagi serve``
through raw sockets: a body over its path's limit is refused with 413 before it is read whole (from its
Content-Length at once, or as a chunked body passes the limit); a client that sends its headers or its body
slowly is cut off after ``TSUNAGI_READ_TIMEOUT`` while the server keeps answering everyone else; a web chat
frame larger than a picture's closes the socket (1009), and a picture's frame passes.
"""

from __future__ import annotations

import base64
import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from bot.guard import CONSOLE_MAX_BODY, DEFAULT_MAX_BODY, WEBHOOK_MAX_BODY
from channels.webchat import MAX_IMAGE_BYTES, MAX_IMAGE_FRAME
from tests.helpers import PLATFORMS, as_env, env_for, frames, free_port, server
from tests.pictures import screenshot

READ_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    tmp = tmp_path_factory.mktemp("limits")
    port = free_port()
    env = env_for(
        tmp,
        TSUNAGI_DATA_KEY=Fernet.generate_key().decode(),
        TSUNAGI_READ_TIMEOUT=str(READ_TIMEOUT),
        **as_env(PLATFORMS),
    )
    with server(env, port, cwd=tmp):
        yield port


def raw(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s


def answer(s: socket.socket) -> tuple[int, dict[str, object]]:
    """The status and JSON body of the response on ``s`` (read until the server closes or it is whole)."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body else {}


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def post_head(path: str, length: int | None) -> bytes:
    size = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{size}\r\n\r\n"
    ).encode()


def healthy_quickly(port: int) -> float:
    started = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        assert r.status == 200
    return time.monotonic() - started


@pytest.mark.parametrize(
    ("path", "limit"),
    [
        ("/api/console/login", CONSOLE_MAX_BODY),
        ("/webhooks/line", WEBHOOK_MAX_BODY),
        ("/anything", DEFAULT_MAX_BODY),
    ],
)
def test_a_declared_body_over_the_limit_is_refused_unread(port: int, path: str, limit: int) -> None:
    with raw(port) as s:
        s.sendall(post_head(path, limit + 1))  # the headers only: not one byte of the body
        status, body = answer(s)
    assert status == 413
    assert body == {"detail": f"request body too large: at most {limit} bytes here"}


def test_a_chunked_body_is_refused_as_it_passes_the_limit(port: int) -> None:
    with raw(port) as s:
        s.sendall(post_head("/api/console/login", None))
        chunk = b"x" * 16384
        sent = 0
        for _ in range(CONSOLE_MAX_BODY // len(chunk) + 1):
            s.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sent += len(chunk)
        # More than the limit has gone, the body is not finished: the answer is there already.
        assert sent > CONSOLE_MAX_BODY
        status, body = answer(s)
    assert status == 413, body


def test_a_body_under_the_limit_is_read_as_before(port: int) -> None:
    payload = json.dumps({"username": "nobody", "password": "x" * 100}).encode()
    with raw(port) as s:
        s.sendall(post_head("/api/console/login", len(payload)) + payload)
        status, _ = answer(s)
    assert status == 401


def test_headers_sent_slowly_are_cut_off_while_everyone_else_is_served(port: int) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100
    with raw(port) as s:
        started = time.monotonic()
        closed_after = None
        for byte in request:
            try:
                s.sendall(bytes([byte]))
            except OSError:  # reset: the server closed the connection
                closed_after = time.monotonic() - started
                break
            assert healthy_quickly(port) < 1.0, "another client waited behind the slow one"
            s.settimeout(0.2)
            try:
                if s.recv(1) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                pass
        assert closed_after is not None, "the slow client kept its connection"
    # The server's clock starts when the connection is accepted, a moment before this test's own.
    assert READ_TIMEOUT - 0.5 <= closed_after < READ_TIMEOUT + 3


def test_a_body_sent_slowly_gets_408(port: int) -> None:
    with raw(port) as s:
        s.sendall(post_head("/api/console/login", 100) + b'{"username": ')
        started = time.monotonic()
        status, body = answer(s)
        waited = time.monotonic() - started
    assert status == 408, body
    assert READ_TIMEOUT - 0.5 <= waited < READ_TIMEOUT + 3
    assert healthy_quickly(port) < 1.0


def test_a_keep_alive_connection_still_serves_several_requests(port: int) -> None:
    with raw(port) as s:
        for _ in range(3):
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            status, _ = answer(s)
            assert status == 200
            time.sleep(READ_TIMEOUT / 2)  # idle between requests is the keep-alive timeout's business


def test_web_chat_frames_a_picture_passes_and_a_larger_frame_closes_the_socket(port: int) -> None:
    with connect(f"ws://127.0.0.1:{port}/chat/ws", max_size=None) as ws:
        ws.send(json.dumps({"type": "hello", "resume": None}))
        frames(ws, lambda f: f["type"] == "message")
        # A picture of more than the 256 KiB uvicorn took before: stored, acknowledged.
        picture = screenshot() + b"\0" * 600_000
        assert 256 * 1024 < len(picture) < MAX_IMAGE_BYTES
        data = base64.b64encode(picture).decode()
        ws.send(json.dumps({"type": "image", "data": data, "id": "p1"}))
        got = frames(ws, lambda f: f.get("type") in ("ack", "error"))
        assert got[-1] == {"type": "ack", "id": "p1"}, got[-1]
        with pytest.raises(ConnectionClosed) as closed:
            ws.send("x" * (MAX_IMAGE_FRAME + 1))
            for _ in range(20):  # the replies to the picture may come first
                ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def test_the_limits_are_in_the_contract() -> None:
    contract = (Path(__file__).resolve().parent.parent / "docs" / "contract.md").read_text()
    assert "TSUNAGI_READ_TIMEOUT" in contract and "TSUNAGI_LOGIN_LIMIT_PER_ADDRESS" in contract
    assert f"{CONSOLE_MAX_BODY // 1024} KiB" in contract
    assert f"{WEBHOOK_MAX_BODY // 1024 // 1024} MiB" in contract
