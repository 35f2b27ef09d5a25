"""One switch for the build, used by the Dockerfile's builder stage; everything else is in pyproject.toml.

With ``TSUNAGI_COMPILE=1`` the wheel carries the triage engine compiled by mypyc (the modules that
``make compile`` compiles in a clone, listed once in triage/_build.py) instead of their .py sources, so an
installed copy can never run a compiled module older than its source. It is a wheel for one Python and one
platform (``cp311-cp311-linux_x86_64``, say), built with ``--no-build-isolation`` beside mypy[mypyc],
types-PyYAML and the dependencies (mypyc type-checks what it compiles). Without the switch (``pip install
-e .``, tests/test_wheel.py, any packager) this file changes nothing: a pure wheel, as before."""

from __future__ import annotations

import os
import runpy
from typing import Any

from setuptools import setup
from setuptools.command.build_py import build_py

if os.environ.get("TSUNAGI_COMPILE") == "1":
    from mypyc.build import mypycify

    MODULES: list[str] = runpy.run_path("triage/_build.py")["MODULES"]
    COMPILED = {path.removesuffix(".py").replace("/", ".") for path in MODULES}

    class BuildPyWithoutCompiledSources(build_py):
        def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
            found: list[tuple[str, str, str]] = super().find_package_modules(package, package_dir)
            return [(pkg, mod, path) for pkg, mod, path in found if f"{pkg}.{mod}" not in COMPILED]

    options: dict[str, Any] = {
        "ext_modules": mypycify(MODULES, opt_level="3", group_name="triage._native"),
        "cmdclass": {"build_py": BuildPyWithoutCompiledSources},
    }
    setup(**options)
else:
    setup()
