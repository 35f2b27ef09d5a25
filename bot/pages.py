"""What every page of ours is served with: strict headers, and static files from one folder; and what
every other response gets (``SecurityHeaders``, the app's one middleware for them)."""

from __future__ import annotations

from pathlib import Path

from fastapi import Response
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MEDIA_TYPES = {"js": "text/javascript", "css": "text/css", "png": "image/png", "svg": "image/svg+xml"}


def page_headers(*, img: str = "'self'", media: str = "'none'") -> dict[str, str]:
    """No caching, no referrer, no framing, and scripts and styles from our own files only."""
    return {
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Content-Security-Policy": (
            f"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src {img}; "
            f"media-src {media}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        ),
    }


class StaticFiles:
    """The files of one folder, by bare name only (no paths), read at start."""

    def __init__(self, folder: Path) -> None:
        self.files = (
            {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} if folder.is_dir() else {}
        )

    def response(self, name: str) -> Response:
        body = self.files.get(name)
        if body is None:
            return Response(status_code=404)
        media = MEDIA_TYPES.get(name.rsplit(".", 1)[-1], "application/octet-stream")
        return Response(
            body, media_type=media, headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        )


# What a response that set none of its own gets: a JSON answer, a static file, an error. Nothing of ours
# is ever framed, sniffed, sent as a referrer or cached; a page sets its own policy (page_headers above).
DEFAULT_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
# Only when the service is told it is reached over HTTPS alone (TSUNAGI_BEHIND_TLS): a year, this host only.
HSTS = "max-age=31536000"
FAILED = b"Internal Server Error"  # the body of a 500 the headers' middleware answers itself


class SecurityHeaders:
    """ASGI middleware: every HTTP response gets ``DEFAULT_HEADERS`` where it has not set its own, and,
    behind TLS, Strict-Transport-Security and ``Secure`` on every cookie it sets (the proxy in front ends
    TLS, so the app itself sees plain HTTP and cannot tell). WebSockets pass through untouched."""

    def __init__(self, app: ASGIApp, *, behind_tls: bool = False) -> None:
        self.app = app
        self.behind_tls = behind_tls
        self.headers = dict(DEFAULT_HEADERS)
        if behind_tls:
            self.headers["Strict-Transport-Security"] = HSTS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    if name not in headers:
                        headers.append(name, value)
                if self.behind_tls:
                    message["headers"] = [
                        (k, _secure(v) if k.lower() == b"set-cookie" else v) for k, v in message["headers"]
                    ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            # A failure below answers 500 here, with the headers (Starlette's own 500 is sent outside every
            # middleware, bare); the error goes on up, to be logged, with the answer already sent.
            if not started:
                await send_with_headers(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(FAILED)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": FAILED})
            raise


def _secure(cookie: bytes) -> bytes:
    attributes = {part.strip().lower() for part in cookie.split(b";")[1:]}
    return cookie if b"secure" in attributes else cookie + b"; Secure"
