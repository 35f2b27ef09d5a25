"""Where the triage content lives. Kept out of the compiled modules: a mypyc-compiled module
has no reliable ``__file__`` of its own."""

from __future__ import annotations

from pathlib import Path

CONTENT_DIR = Path(__file__).resolve().parent.parent / "content" / "triage"
