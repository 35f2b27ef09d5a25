"""Where the content lives. Kept out of the compiled modules: a mypyc-compiled module
has no reliable ``__file__`` of its own.

The content is ``TSUNAGI_CONTENT_DIR`` when it is set (in the environment, or in a ``.env`` file in
the working directory, as every other setting), and otherwise the ``content`` package shipped with
tsunagi: the top-level ``content/`` folder in a clone, the installed copy in a wheel. It is read once,
when this module is first imported, so one process reads one content folder throughout."""

from __future__ import annotations

import os
from pathlib import Path

import content

VARIABLE = "TSUNAGI_CONTENT_DIR"
SHIPPED = Path(content.__file__).resolve().parent


def configured_root(env_file: Path = Path(".env")) -> Path:
    """The content folder this process reads: ``TSUNAGI_CONTENT_DIR``, or the shipped content."""
    value = os.environ.get(VARIABLE)
    if value is None and env_file.is_file():
        from dotenv import dotenv_values  # pydantic-settings' own .env reader, loaded only when needed

        value = dotenv_values(env_file, encoding="utf-8").get(VARIABLE)
    return Path(value).expanduser().resolve() if value and value.strip() else SHIPPED


CONTENT_ROOT = configured_root()
CONTENT_DIR = CONTENT_ROOT / "triage"
