"""docs/contract.md stays true, and the documentation stays inside the repository.

The app is built with every channel that has routes switched on (LINE and Telegram need their keys) and
its routes are walked, through included routers too: each must have its heading in docs/contract.md
(``### `GET /path` ``, ``WS`` for a WebSocket), and each heading must name a route the app has."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.routing import APIWebSocketRoute, iter_route_contexts

from bot.web import create_app
from tests.helpers import PLATFORMS, ROOT, make_settings

CONTRACT = ROOT / "docs" / "contract.md"
HEADING = re.compile(r"^### `([A-Z]+) (/\S*)`", re.M)


def app_routes(tmp_path: Path) -> list[tuple[str, str]]:
    settings = make_settings(tmp_path, **PLATFORMS)
    app = create_app(settings)  # routes only: the service is never started
    out: list[tuple[str, str]] = []
    for ctx in iter_route_contexts(app.routes):
        if isinstance(ctx.original_route, APIWebSocketRoute):
            out.append(("WS", ctx.path or ""))
        else:
            out += [(method, ctx.path or "") for method in sorted(ctx.methods or ()) if method != "HEAD"]
    return out


def documented() -> list[tuple[str, str]]:
    return HEADING.findall(CONTRACT.read_text(encoding="utf-8"))


def test_every_route_of_the_app_is_documented_and_every_documented_route_exists(tmp_path: Path) -> None:
    routes = app_routes(tmp_path)
    docs = documented()
    assert len(routes) > 30, routes  # the walk reached the included routers
    assert len(docs) == len(set(docs)), "a route is documented twice"
    missing = sorted(set(routes) - set(docs))
    assert not missing, f"routes of the app without a section in docs/contract.md: {missing}"
    stale = sorted(set(docs) - set(routes))
    assert not stale, f"docs/contract.md documents routes the app does not have: {stale}"


# -- links ----------------------------------------------------------------------------------------------

LINK = re.compile(r"\]\(([^)\s]+)\)|<img[^>]* src=\"([^\"]+)\"")


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_no_link_leaves_the_repository_and_every_relative_link_resolves() -> None:
    broken = []
    for doc in markdown_files():
        for groups in LINK.findall(doc.read_text(encoding="utf-8")):
            target = next(g for g in groups if g)
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a web address, or a place on the same page
            path = (doc.parent / target.split("#", 1)[0]).resolve()
            if not path.is_relative_to(ROOT):
                broken.append(f"{doc.name}: {target} leaves the repository")
            elif not path.exists():
                broken.append(f"{doc.name}: {target} does not exist")
    assert broken == []


def test_no_file_points_at_documents_outside_the_repository() -> None:
    """The shared folder beside a clone holds data and scripts (`make score`); its documents are copied
    into docs/, and nothing in the repository names the outside copies."""
    pattern = re.compile(r"\.\./[\w./-]*\.md\b")
    found = []
    for folder in ("bot", "channels", "handoff", "triage", "content", "tests", "docs"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".md", ".yaml", ".html", ".js", ".css") and "data" not in path.parts:
                found += [f"{path.relative_to(ROOT)}: {m}" for m in pattern.findall(path.read_text("utf-8"))]
    for name in ("README.md", "Makefile", "Dockerfile", "pyproject.toml"):
        found += [f"{name}: {m}" for m in pattern.findall((ROOT / name).read_text(encoding="utf-8"))]
    assert found == []
