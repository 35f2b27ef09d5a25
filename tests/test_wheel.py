"""A built wheel works on its own: built from this tree (pyproject.toml's build, as any packager runs it),
installed in a fresh virtual environment (not editable, so nothing of the clone is on its path), and run
from another directory: ``tsunagi content check``, ``tsunagi triage`` on a line of JSON, and ``tsunagi
serve`` answering /healthz, /chat and /console with their static files.

The build and the install ask the package index for the build backend and the dependencies (pip's cache
makes them quick after the first run); the wheel itself is this tree's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import ROOT, free_port, server

pytestmark = pytest.mark.slow

# What the wheel is built from (the Dockerfile copies the same).
SOURCES = ("pyproject.toml", "README.md", "bot", "channels", "triage", "handoff", "content")
LEFT_BEHIND = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", ".compiled", "*.egg-info", "build")
TIMEOUT = 600


def run(cmd: list[str], *, cwd: Path, env: dict[str, str], stdin: str | None = None) -> str:
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert proc.returncode == 0, (
        f"{cmd[:3]} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


def test_a_wheel_installed_elsewhere_triages_and_serves(tmp_path: Path) -> None:
    # Nothing of this clone or of the test run's settings reaches the installed package.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TSUNAGI_", "PYTHON", "VIRTUAL_ENV"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"

    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=LEFT_BEHIND)
        else:
            shutil.copy2(ROOT / name, source / name)
    dist = tmp_path / "dist"
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(source)],
        cwd=tmp_path,
        env=env,
    )
    (wheel,) = dist.glob("tsunagi-*.whl")

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, env=env)
    bin_dir = venv / "bin"
    run([str(bin_dir / "pip"), "install", "--quiet", str(wheel)], cwd=tmp_path, env=env)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(
        [str(bin_dir / "python"), "-c", "import bot, content; print(bot.__file__); print(content.__file__)"],
        cwd=elsewhere,
        env=env,
    )
    assert all(Path(p).is_relative_to(venv) for p in where.split()), where

    checked = run([str(bin_dir / "tsunagi"), "content", "check"], cwd=elsewhere, env=env)
    assert checked.startswith("content ok: ") and Path(checked.split(": ", 1)[1].strip()).is_relative_to(venv)

    line = json.dumps({"id": "1", "text": "もう死にたい。今から飛び降りる"}, ensure_ascii=False) + "\n"
    answer = json.loads(run([str(bin_dir / "tsunagi"), "triage"], cwd=elsewhere, env=env, stdin=line))
    assert (answer["id"], answer["risk"], answer["categories"]) == ("1", "crisis", ["suicide"])

    port = free_port()
    serve_env = {**env, "TSUNAGI_VAR_DIR": str(elsewhere / "var"), "TSUNAGI_SMTP_LISTEN": ""}
    with server(serve_env, port, command=[str(bin_dir / "tsunagi")], cwd=elsewhere):
        for path in ("/healthz", "/chat", "/console", "/chat/static/chat.js", "/console/static/console.js"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
                assert response.status == 200, path
                assert response.read(), path
