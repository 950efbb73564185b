"""The sans-I/O rule: wire/ and protocol/ never import I/O, threads or the clock.

Walks every module of those packages, follows imports inside duplex transitively,
and fails on any forbidden standard-library module. This keeps them drivable by every
concurrency model, by the tests with fake time, and by the fuzzers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import duplex

FORBIDDEN = {"socket", "asyncio", "threading", "selectors", "time", "ssl", "select", "signal"}
SRC = Path(duplex.__file__).parent
SANS_IO = ("wire", "protocol")


def _module_file(name: str) -> Path | None:
    parts = name.split(".")[1:]
    base = SRC.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _closure(start: Path) -> dict[str, str]:
    """Every module reachable from ``start`` -> the duplex module that imported it."""
    seen: dict[str, str] = {}
    todo = [("<start>", start)]
    visited: set[Path] = set()
    while todo:
        _importer, path = todo.pop()
        if path in visited:
            continue
        visited.add(path)
        for name in _imports(path):
            seen.setdefault(name, str(path.relative_to(SRC)))
            if name.startswith("duplex."):
                target = _module_file(name)
                if target is not None:
                    todo.append((str(path), target))
    return seen


def test_sans_io_packages_import_no_io() -> None:
    files = [f for pkg in SANS_IO for f in (SRC / pkg).rglob("*.py")]
    assert files, "no sans-I/O modules found"
    problems = []
    for path in files:
        for name, importer in _closure(path).items():
            if name.split(".")[0] in FORBIDDEN:
                problems.append(f"{importer} imports {name} (reached from {path.relative_to(SRC)})")
    assert not problems, "\n".join(sorted(set(problems)))


def test_the_walker_catches_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import socket\nfrom time import monotonic\n")
    assert {"socket", "time", "time.monotonic"} <= _imports(bad)
