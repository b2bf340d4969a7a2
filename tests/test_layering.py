"""The layers stay layers: the protocol and mining core is pure (no I/O library, no server package), and the client
does not reach into the server. Checked on the source's import statements, so a violation fails here at once."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gstratum"
PURE = ("gstratum.protocol", "gstratum.mining", "gstratum.errors", "gstratum.__version__")
IO_LIBRARIES = {"gevent", "psycopg2", "psycogreen", "socket", "select", "selectors", "prometheus_client", "zmq",
                "http", "urllib", "subprocess", "threading", "asyncio", "ssl"}
SERVER_PACKAGES = ("gstratum.net", "gstratum.storage", "gstratum.cluster", "gstratum.ops", "gstratum.node",
                   "gstratum.app", "gstratum.config")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[str]:
    """Every module an `import` or `from … import` names, anywhere in the file (lazy imports included)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (the layering check reads absolute names)"
            if node.module == "gstratum":     # from gstratum import x: x is the module (or name) imported
                names += [f"gstratum.{alias.name}" for alias in node.names]
            else:
                names.append(node.module)
    return names


def modules(prefixes) -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if module_name(p).startswith(prefixes)]


def within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("path", modules(PURE), ids=lambda p: module_name(p))
def test_the_core_is_pure(path):
    for name in imports(path):
        assert name.split(".")[0] not in IO_LIBRARIES, f"{module_name(path)} imports {name}"
        if name.startswith("gstratum"):
            assert within(name, PURE), f"{module_name(path)} (pure) imports {name}"


@pytest.mark.parametrize("path", modules(("gstratum.mining",)), ids=lambda p: module_name(p))
def test_the_mining_core_knows_no_protocol(path):
    """Jobs, verdicts, vardiff, duplicates and records serve V1 and V2 alike: mining/ imports neither front end."""
    for name in imports(path):
        assert not within(name, ("gstratum.protocol",)), f"{module_name(path)} imports {name}"


@pytest.mark.parametrize("path", modules(("gstratum.client",)), ids=lambda p: module_name(p))
def test_the_client_does_not_import_the_server(path):
    for name in imports(path):
        assert not within(name, SERVER_PACKAGES), f"{module_name(path)} imports {name}"


def test_the_check_sees_a_violation(tmp_path):
    """The checker itself: a pure-looking module importing gevent is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\ndef f():\n    from gevent import sleep\n")
    assert "gevent" in imports(bad)
