"""The product (what a gateway installs: `gateway_agent`, `dfu`, `profiles`) never imports the bench kit
(`simulator`, `hil`, the demo), the job service (`fota_service`), the benchmarks or the tests, nor their
extras' libraries: not at the top of a module, and not lazily inside a function either. The bench kit plugs
in by entry points (dfu/plugins.py)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("gateway_agent", "dfu", "profiles")
FORBIDDEN = {
    "simulator": "the bench kit",
    "hil": "the bench kit",
    "fota_service": "the job service",
    "benchmarks": "the benchmarks",
    "tests": "the tests",
    "looptime": "a [bench] library",
    "trustme": "a [bench] library",
    "fastapi": "a [service] library",
    "uvicorn": "a [service] library",
    "sqlalchemy": "a [service] library",
    "psycopg": "a [service] library",
}


_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
MODULE_STRING = re.compile(rf"^{_NAME}(?:\.{_NAME})*(?::{_NAME}(?:\.{_NAME})*)?$")


def imports_of(source: str) -> list[tuple[int, str]]:
    """Every module an import statement names (absolute; relative imports stay inside the package), and every
    string shaped like a dotted module path or an entry point (`pkg.mod`, `pkg.mod:attr`) that
    `importlib.import_module` could be handed."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            if ("." in text or ":" in text) and MODULE_STRING.match(text):
                found.append((node.lineno, text.split(":")[0]))
    return found


def violations(source: str) -> list[str]:
    return [
        f"line {line}: imports {name} ({FORBIDDEN[name.split('.')[0]]})"
        for line, name in imports_of(source)
        if name.split(".")[0] in FORBIDDEN
    ]


@pytest.mark.parametrize("package", PRODUCT)
def test_the_product_imports_none_of_the_bench_kit_or_the_service(package: str) -> None:
    found = [
        f"{path.relative_to(REPO)}: {v}"
        for path in sorted((REPO / package).rglob("*.py"))
        for v in violations(path.read_text())
    ]
    assert found == []


def test_the_check_sees_a_lazy_import_too() -> None:
    """The check can fail: a function-level import of the simulator is caught, as is `from hil import x`, and
    a module named in a string for importlib (as `dfu/cli` names its commands)."""
    source = (
        "def f():\n    from simulator.air import Air\n    import hil.fleet\n"
        "COMMANDS = {'sim': 'simulator.cli.sim:sim', 'note': 'see docs/hil.md', 'version': '1.2'}\n"
    )
    assert violations(source) == [
        "line 2: imports simulator.air (the bench kit)",
        "line 3: imports hil.fleet (the bench kit)",
        "line 4: imports simulator.cli.sim (the bench kit)",
    ]
