"""What every page of ours is served with: strict headers, and static files from one folder."""

from __future__ import annotations

from pathlib import Path

from fastapi import Response

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
