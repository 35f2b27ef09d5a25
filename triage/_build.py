"""Compile the triage engine with mypyc, in place (`make compile` runs this).

The compiled modules (.so) sit beside their .py sources and Python imports them first; the
shared runtime goes inside the package (triage/_native__mypyc...so), so nothing lands at the
top of the tree. `make pure` removes them all.
"""

from __future__ import annotations

import sys

from mypyc.build import mypycify
from setuptools import setup

MODULES = [
    "triage/normalize.py",
    "triage/tokens.py",
    "triage/engine.py",
    "triage/types.py",
    "triage/ruleset.py",
]

if __name__ == "__main__":
    sys.argv = [
        sys.argv[0],
        "build_ext",
        "--inplace",
        "--build-temp",
        "build-mypyc/temp",
        "--build-lib",
        "build-mypyc/lib",
    ]
    setup(
        name="tsunagi-triage-native",
        packages=[],
        ext_modules=mypycify(MODULES, opt_level="3", group_name="triage._native"),
    )
