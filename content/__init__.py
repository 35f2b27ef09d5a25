"""Everything people read and the triage rules, as data: YAML and HTML that counselling staff edit.

A package only so that it ships inside the wheel (``pyproject.toml``'s package data) and an installed
tsunagi finds it; ``TSUNAGI_CONTENT_DIR`` points the service at another copy (``triage/paths.py``).
``tsunagi content check`` validates every file of it."""
