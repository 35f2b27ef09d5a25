"""The tests share without importing one another: what several modules use lives in tests/helpers.py,
tests/browser_support.py (and the few helper modules beside them) and conftest.py's fixtures. No module
under tests/ imports a test module (``tests.test_*``) or conftest.py, which pytest loads itself."""

from __future__ import annotations

import ast

from tests.helpers import ROOT

TESTS = ROOT / "tests"


def imported_modules(source: str, package: str = "tests") -> list[str]:
    """Every module a file of ``package`` with ``source`` imports, absolute or relative (``from . import
    x`` as ``tests.x``), at any depth (inside functions and ``if TYPE_CHECKING:`` too)."""
    out: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            out += [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return out


def forbidden(module: str) -> bool:
    parts = module.split(".")
    return (
        len(parts) >= 2 and parts[0] == "tests" and (parts[1] == "conftest" or parts[1].startswith("test_"))
    )


def test_no_module_under_tests_imports_a_test_module_or_conftest() -> None:
    found = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in sorted(TESTS.rglob("*.py"))
        for module in imported_modules(
            path.read_text(encoding="utf-8"), ".".join(path.parent.relative_to(ROOT).parts)
        )
        if forbidden(module)
    ]
    assert found == []


def test_the_check_sees_each_way_of_importing() -> None:
    """What the check above relies on: each form of import is seen, and helpers are allowed."""
    cases = {
        "import tests.test_web": True,
        "from tests.test_web import client": True,
        "from tests import test_web": True,
        "from . import test_web": True,
        "from .conftest import make": True,
        "def f():\n    from tests.conftest import SHARED": True,
        "if TYPE_CHECKING:\n    from tests.test_email import Mail": True,
        "from tests.helpers import make_settings": False,
        "from tests import helpers": False,
        "import tests.browser_support": False,
        "from bot.test_mode import x": False,
    }
    for source, bad in cases.items():
        modules = imported_modules(source)
        assert any(forbidden(m) for m in modules) is bad, (source, modules)
    assert "tests.test_web" in imported_modules("from .. import test_web", "tests.load")
