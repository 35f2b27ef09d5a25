"""The deployment files, checked without a Docker engine (the development machines and CI have none): the
Dockerfile's two stages, compose.yaml, deploy/Caddyfile in front of a real ``tsunagi serve`` (Debian's
Caddy), and the builder stage's compiled wheel installed the way the final stage installs it.

What stays unproved here: that the images build and the containers start (no engine, no base images)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.routing import iter_route_contexts
from websockets.sync.client import connect

from bot.config import Settings
from bot.web import create_app
from tests.helpers import ROOT, free_port, make_settings, server

DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
CADDYFILE = ROOT / "deploy" / "Caddyfile"
ENV_EXAMPLE = ROOT / "deploy" / "env.example"
CADDY = Path("/usr/bin/caddy")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# Served by every instance, reached from inside the network only (Prometheus scrapes each instance).
INTERNAL = {"/metrics"}
COMPILERS = re.compile(r"\b(gcc|g\+\+|cc|clang|build-essential|libc6-dev|make|apt-get|apk)\b")


# -- the Dockerfile ---------------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The instructions, continuation lines joined and comments left out, one list per stage."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        word, _, rest = (pending + line).strip().partition(" ")
        instructions.append((word.upper(), rest.strip()))
        pending = ""
    stages: list[list[tuple[str, str]]] = []
    for instruction in instructions:
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def shell_of(run: str) -> str:
    """A RUN instruction's shell command, without its --mount and other flags."""
    while run.startswith("--"):
        run = run.split(" ", 1)[1].lstrip()
    return run


def test_the_image_is_two_stages_and_the_builder_compiles_the_triage_into_the_wheel() -> None:
    stages = dockerfile_stages()
    assert len(stages) == 2, [s[0] for s in stages]
    builder, final = stages
    assert builder[0][1].endswith(" AS builder"), builder[0]
    runs = " ".join(shell_of(args) for word, args in builder if word == "RUN")
    assert "TSUNAGI_COMPILE=1" in runs and "pip wheel" in runs and "--no-build-isolation" in runs
    # The build tools and dependencies come from pyproject.toml, not from a second list here.
    assert "optional-dependencies']['compile']" in runs and "['dependencies']" in runs
    copied = {
        part.rstrip("/").removeprefix("./")
        for word, args in builder
        if word == "COPY"
        for part in args.split()
    }
    packages = {name.rstrip("*") for name in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages | {"setup.py", "pyproject.toml", "README.md"} <= copied, copied
    assert not [args for word, args in final if word == "COPY"], "the final stage copies nothing: it installs"


def test_the_final_stage_installs_only_the_wheels_runs_unprivileged_and_has_no_compiler() -> None:
    final = dockerfile_stages()[1]
    runs = [shell_of(args) for word, args in final if word == "RUN"]
    assert not [r for r in runs if COMPILERS.search(r)], runs
    (install,) = [args for word, args in final if word == "RUN" and "pip install" in args]
    assert (
        "--mount=type=bind,from=builder" in install and "--no-index" in install and "--only-binary" in install
    )
    assert "tsunagi content check" in install and "tsunagi triage" in install  # the build fails if they do
    users = [args for word, args in final if word == "USER"]
    assert users, "no USER: the container would run as root"
    uid = users[-1].split(":")[0]
    assert uid not in ("root", "0") and (not uid.isdigit() or int(uid) >= 1000), users
    (healthcheck,) = [args for word, args in final if word == "HEALTHCHECK"]
    assert "/healthz" in healthcheck
    (cmd,) = [json.loads(args) for word, args in final if word == "CMD"]
    assert cmd[:2] == ["tsunagi", "serve"] and "0.0.0.0" in cmd


def test_every_run_instruction_is_valid_shell() -> None:
    for stage in dockerfile_stages():
        for word, args in stage:
            if word == "RUN":
                done = subprocess.run(["bash", "-n", "-c", shell_of(args)], capture_output=True, text=True)
                assert done.returncode == 0, (args, done.stderr)


# -- compose.yaml ----------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


def test_compose_runs_postgres_redis_two_instances_and_the_proxy() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "redis", "tsunagi-1", "tsunagi-2", "worker", "caddy"}
    instances = {name: s for name, s in services.items() if name.startswith("tsunagi-")}
    # The instances take traffic only; the inbox and outbox run in `tsunagi worker` processes, with the
    # same keys, database and Redis, their /healthz and /metrics on a port of their own.
    worker = services["worker"]
    assert worker["build"] == "." and worker["command"][:2] == ["tsunagi", "worker"]
    assert "--metrics-port" in worker["command"] and "9100" in str(worker["healthcheck"]["test"])
    assert worker["deploy"]["replicas"] >= 2 and "ports" not in worker
    assert worker["depends_on"]["tsunagi-1"]["condition"] == "service_healthy"  # migrated first
    for key in ("TSUNAGI_DATA_KEY", "TSUNAGI_SECRET_KEY", "TSUNAGI_DATABASE_URL", "TSUNAGI_REDIS_URL"):
        assert worker["environment"][key] == services["tsunagi-1"]["environment"][key], key
    for name, s in instances.items():
        assert s["build"] == "." and "command" not in s, name  # the image's CMD: tsunagi serve
        env = s["environment"]
        for key in ("TSUNAGI_DATA_KEY", "TSUNAGI_SECRET_KEY"):  # the same on both, never generated apart
            assert re.fullmatch(rf"\$\{{{key}:\?[^}}]+\}}", env[key]), (name, key, env[key])
        assert (
            env["TSUNAGI_DATABASE_URL"].startswith("postgresql+asyncpg://")
            and "@postgres:" in env["TSUNAGI_DATABASE_URL"]
        )
        assert env["TSUNAGI_REDIS_URL"].startswith("redis://redis:")
        assert env["TSUNAGI_BEHIND_TLS"] == "true"
        assert env["TSUNAGI_WORKERS"] == "false"
        # Only the mail port is published, on the host's loopback (for its MX); the web goes through Caddy.
        assert all(p.startswith("127.0.0.1:") and p.endswith(":2525") for p in s.get("ports", [])), s["ports"]
    assert services["tsunagi-1"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["tsunagi-2"]["depends_on"]["tsunagi-1"]["condition"] == "service_healthy"  # migrated
    assert "ports" not in services["postgres"] and "ports" not in services["redis"]

    caddy = services["caddy"]
    assert "./deploy/Caddyfile:/etc/caddy/Caddyfile:ro" in caddy["volumes"]
    upstreams = caddy["environment"]["TSUNAGI_UPSTREAMS"].split()
    assert upstreams == [f"{name}:8000" for name in sorted(instances)]
    # uvicorn believes forwarded headers from Caddy's address only, which is in the network's subnet.
    proxy = ip_address(caddy["networks"]["backend"]["ipv4_address"])
    (subnet,) = compose()["networks"]["backend"]["ipam"]["config"]
    assert proxy in ip_network(subnet["subnet"])
    assert {s["environment"]["FORWARDED_ALLOW_IPS"] for s in instances.values()} == {str(proxy)}


def test_env_example_names_every_variable_compose_needs_and_only_settings_that_exist() -> None:
    example = {
        line.split("=", 1)[0].lstrip("# ").strip()
        for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
        if re.match(r"#? ?[A-Z_]+=", line)
    }
    needed = set(re.findall(r"\$\{([A-Z_]+):\?", COMPOSE.read_text(encoding="utf-8")))
    assert needed and needed <= example, needed - example
    fields = {f"TSUNAGI_{name.upper()}" for name in Settings.model_fields}
    unknown = {v for v in example if v.startswith("TSUNAGI_") and v not in fields} - {"TSUNAGI_SITE"}
    assert not unknown, f"deploy/env.example sets what tsunagi does not read: {unknown}"


# -- deploy/Caddyfile ------------------------------------------------------------------------------------


def public_patterns() -> list[str]:
    (line,) = [
        ln for ln in CADDYFILE.read_text(encoding="utf-8").splitlines() if ln.strip().startswith("@public")
    ]
    words = line.split()
    assert words[1] == "path", line
    return words[2:]


def caddy_matches(pattern: str, path: str) -> bool:
    """Caddy's path matcher: exact, or a prefix ending in *."""
    return path.startswith(pattern[:-1]) if pattern.endswith("*") else path == pattern


def routed(path: str) -> bool:
    return any(caddy_matches(p, path) for p in public_patterns())


def test_the_proxy_routes_every_public_route_of_the_app_and_not_the_metrics(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        loopback_channel=False,  # off in production
        line_channel_secret="s",
        line_channel_access_token="t",
        telegram_bot_token="1:t",
        telegram_secret_token="s",
    )
    paths = set()
    for ctx in iter_route_contexts(create_app(settings).routes):
        paths.add(re.sub(r"\{[^}]+\}", "x", ctx.path or ""))
    assert len(paths) > 25 and "/chat/ws" in paths and "/api/console/live" in paths, paths
    assert INTERNAL <= paths
    unrouted = sorted(p for p in paths - INTERNAL if not routed(p))
    assert not unrouted, f"routes of the app the proxy does not pass on: {unrouted}"
    assert not [p for p in INTERNAL if routed(p)]
    assert not routed("/metrics/") and not routed("/chatx") and not routed("/")


@contextmanager
def caddy(tmp_path: Path, upstreams: list[int]) -> Iterator[str]:
    """Caddy with deploy/Caddyfile as it is, on a loopback port over plain HTTP (no certificate offline),
    bound to loopback (the one line added), in front of the given loopback ports."""
    if not CADDY.exists():
        pytest.fail(f"Caddy is not installed at {CADDY} (apt-get install caddy; make test does)")
    port = free_port()
    site = f"http://127.0.0.1:{port}"
    config = tmp_path / "Caddyfile"
    config.write_text(
        CADDYFILE.read_text(encoding="utf-8").replace(
            "{$TSUNAGI_SITE} {", "{$TSUNAGI_SITE} {\n\tbind 127.0.0.1"
        ),
        encoding="utf-8",
    )
    env = {
        **os.environ,
        "TSUNAGI_SITE": site,
        "TSUNAGI_UPSTREAMS": " ".join(f"127.0.0.1:{p}" for p in upstreams),
        "XDG_DATA_HOME": str(tmp_path / "caddy-data"),
        "XDG_CONFIG_HOME": str(tmp_path / "caddy-config"),
    }
    log = (tmp_path / "caddy.log").open("wb")
    proc = subprocess.Popen(
        [str(CADDY), "run", "--config", str(config), "--adapter", "caddyfile"],
        env=env,
        stdout=log,
        stderr=log,
    )
    try:
        for _ in range(200):
            if status(f"{site}/healthz") == 200:
                break
            assert proc.poll() is None, (tmp_path / "caddy.log").read_text()[-2000:]
            subprocess.run(["sleep", "0.1"], check=True)
        else:
            raise AssertionError((tmp_path / "caddy.log").read_text()[-2000:])
        yield site
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def status(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> int:
    return response(url, data, headers)[0]


def response(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], list[str]]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, dict(r.headers), r.headers.get_all("set-cookie") or []
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.headers.get_all("set-cookie") or []
    except OSError:
        return 0, {}, []


def test_caddy_passes_the_public_routes_to_a_live_instance_and_hides_the_metrics(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TSUNAGI_")}
    env.update(
        TSUNAGI_VAR_DIR=str(tmp_path / "var"),
        TSUNAGI_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 't.db'}",
        TSUNAGI_SMTP_LISTEN="",
        TSUNAGI_BEHIND_TLS="true",
    )
    dead = free_port()  # an instance that is down: Caddy sends everything to the live one
    with server(env, port, cwd=tmp_path), caddy(tmp_path, [dead, port]) as site:
        for _ in range(6):
            code, headers, _ = response(f"{site}/chat")
            assert code == 200
            assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
            assert headers["Strict-Transport-Security"].startswith("max-age=")
            assert "Server" not in headers
        assert status(f"{site}/chat/static/chat.js") == 200
        assert status(f"{site}/console") == 200
        assert status(f"{site}/api/console/queue") == 401  # the app's answer, passed on
        assert status(f"http://127.0.0.1:{port}/metrics") == 200
        assert status(f"{site}/metrics") == 404
        assert status(f"{site}/") == 404
        code, _, cookies = response(
            f"{site}/api/console/login",
            data=json.dumps({"username": "admin", "password": "not the password"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert code == 401 and cookies == []
        # The web chat's WebSocket through the proxy.
        with connect(f"ws://{site.removeprefix('http://')}/chat/ws", origin=site) as ws:
            ws.send(json.dumps({"type": "hello", "resume": None}))
            assert json.loads(ws.recv(timeout=10))["type"] == "session"


# -- the builder's wheel, installed as the final stage installs it ----------------------------------------


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, stdin: str | None = None) -> str:
    done = subprocess.run(
        cmd, cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, f"{shlex.join(cmd[:4])}: {done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
def test_the_builder_makes_a_compiled_wheel_that_installs_from_wheels_alone(tmp_path: Path) -> None:
    """The Dockerfile's steps, on this machine: a build environment with the `compile` extra and the
    dependencies, ``TSUNAGI_COMPILE=1 pip wheel``, then a fresh environment that installs from those
    wheels only (``--no-index --only-binary``) and triages with the compiled engine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TSUNAGI_", "PYTHON", "VIRTUAL_ENV"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        (source / name).write_bytes((ROOT / name).read_bytes())
    for name in ("bot", "channels", "triage", "handoff", "content"):
        run(["cp", "-r", str(ROOT / name), str(source / name)], cwd=tmp_path)
    run(["find", str(source), "(", "-name", "__pycache__", "-o", "-name", "*.so", ")", "-prune",
         "-exec", "rm", "-rf", "{}", "+"], cwd=tmp_path)  # fmt: skip

    build = tmp_path / "build"
    wheels = tmp_path / "wheels"
    (tmp_path / "requirements.txt").write_text("\n".join(PYPROJECT["project"]["dependencies"]))
    (tmp_path / "compile.txt").write_text("\n".join(PYPROJECT["project"]["optional-dependencies"]["compile"]))
    run([sys.executable, "-m", "venv", str(build)], cwd=tmp_path, env=env)
    pip = str(build / "bin" / "pip")
    run([pip, "install", "-q", "setuptools>=70.1", "wheel", "-r", "compile.txt"], cwd=tmp_path, env=env)
    run([pip, "wheel", "-q", "--wheel-dir", str(wheels), "-r", "requirements.txt"], cwd=tmp_path, env=env)
    run(
        [pip, "install", "-q", "--no-index", "--find-links", str(wheels), "-r", "requirements.txt"],
        tmp_path,
        env,
    )
    compiled_env = {**env, "TSUNAGI_COMPILE": "1"}
    run(
        [pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--wheel-dir", str(wheels), "."],
        source,
        compiled_env,
    )
    (wheel,) = wheels.glob("tsunagi-*.whl")
    assert "-cp3" in wheel.name and "linux" in wheel.name, wheel.name  # a platform wheel, not py3-none-any
    names = subprocess.run(["unzip", "-Z1", str(wheel)], capture_output=True, text=True, check=True).stdout
    assert "triage/engine.py" not in names.split() and re.search(r"triage/engine\.cpython-.*\.so", names)

    final = tmp_path / "final"
    run([sys.executable, "-m", "venv", str(final)], cwd=tmp_path, env=env)
    run([str(final / "bin" / "pip"), "install", "-q", "--no-index", "--find-links", str(wheels),
         "--only-binary", ":all:", "tsunagi"], cwd=tmp_path, env=env)  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(
        [str(final / "bin" / "python"), "-c", "import triage.engine as e; print(e.__file__)"], elsewhere, env
    )
    assert where.strip().endswith(".so") and Path(where.strip()).is_relative_to(final), where
    assert run([str(final / "bin" / "tsunagi"), "content", "check"], elsewhere, env).startswith("content ok")
    line = json.dumps({"id": "1", "text": "もう死にたい。今から飛び降りる"}, ensure_ascii=False) + "\n"
    answer = json.loads(run([str(final / "bin" / "tsunagi"), "triage"], elsewhere, env, stdin=line))
    assert answer["risk"] == "crisis"
