"""Architecture rules that import-linter cannot express."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import fleetgate
from fleetgate.shared.protocol.schema import render


ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "src" / "fleetgate"
PURE = [
    "shared/protocol",
    "shared/files/paths.py",
    "shared/files/framing.py",
    "shared/files/transfer.py",
    "shared/sudo_patterns.py",
    "shared/addresses.py",
    "shared/backoff.py",
    "shared/errors.py",
    "agent/spool/inbox.py",
    "agent/spool/reports.py",
    "agent/spool/retention.py",
    "agent/spool/batch.py",
    "agent/spool/recovery.py",
    "agent/backhaul/retry.py",
    "agent/exec/output.py",
    "agent/exec/exitstatus.py",
]
IO_MODULES = {
    "asyncio",
    "socket",
    "subprocess",
    "select",
    "selectors",
    "threading",
    "sqlite3",
    "concurrent",
    "os",
}


def _python_files(rel: str) -> list[Path]:
    path = PKG / rel
    return [path] if path.is_file() else sorted(path.rglob("*.py"))


@pytest.mark.parametrize("rel", PURE)
def test_pure_modules_do_no_io(rel: str) -> None:
    """Pure modules import no event loop, socket, subprocess or thread machinery."""
    for file in _python_files(rel):
        tree = ast.parse(file.read_text(), filename=str(file))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in IO_MODULES, f"{file}: imports {name}"


def test_every_spool_module_is_pure_or_named_io() -> None:
    """agent/spool is pure except its store and writer: a new module must pick a side."""
    spool = {p.name for p in (PKG / "agent/spool").glob("*.py")}
    pure = {Path(rel).name for rel in PURE if rel.startswith("agent/spool/")}
    assert spool - pure == {"__init__.py", "store.py", "writer.py"}


def test_the_spool_store_is_synchronous() -> None:
    """The SQLite store runs on one worker thread: it never touches the event loop."""
    tree = ast.parse((PKG / "agent/spool/store.py").read_text())
    for node in ast.walk(tree):
        assert not isinstance(node, (ast.AsyncFunctionDef, ast.Await))
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            assert "asyncio" not in names


def test_every_module_declares_its_public_api() -> None:
    """Each module of the agent and the shared part has __all__, and every name in it exists."""
    for info in pkgutil.walk_packages(fleetgate.__path__, "fleetgate."):
        if not info.name.startswith(("fleetgate.agent.", "fleetgate.shared.")):
            continue
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        assert hasattr(module, "__all__"), f"{info.name} has no __all__"
        for name in module.__all__:
            assert hasattr(module, name), f"{info.name}.__all__ names missing {name}"


def test_published_schema_matches_the_models() -> None:
    """docs/protocol.schema.json is regenerated whenever the models change (make schema)."""
    assert (ROOT / "docs/protocol.schema.json").read_text() == render()
