"""The hub's hot path runs compiled, and never from a build older than its source.

``make`` compiles the modules listed in the Makefile's ``HOT`` with mypyc, next to
their sources (the editable install imports an extension before a ``.py``). Two ways
that can go wrong silently: the build did not happen (the hub runs a fifth slower than
the figures say), or a source changed after it (tests and the hub run the old code).
``DUPLEX_COMPILE=0`` is the deliberate pure-Python run (``make pure``): then no module
may be compiled, so that the pure modules are what gets tested.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _hot_modules() -> list[str]:
    text = (ROOT / "Makefile").read_text()
    match = re.search(r"^HOT := (.*?)(?<!\\)\n", text, re.MULTILINE | re.DOTALL)
    assert match, "the Makefile has no HOT list"
    paths = match.group(1).replace("\\\n", " ").split()
    assert paths, "the Makefile's HOT list is empty"
    return [p.removesuffix(".py").replace("/", ".") for p in paths]


def test_the_hot_list_names_modules_that_exist() -> None:
    for name in _hot_modules():
        assert (ROOT / "src" / (name.replace(".", "/") + ".py")).is_file(), name


def test_hot_modules_are_compiled_from_their_current_source() -> None:
    pure = os.environ.get("DUPLEX_COMPILE") == "0"
    for name in _hot_modules():
        module = importlib.import_module(name)
        origin = Path(str(module.__file__))
        source = ROOT / "src" / (name.replace(".", "/") + ".py")
        if pure:
            assert origin.suffix == ".py", f"{name} is compiled ({origin}); run `make pure`"
            continue
        assert origin.suffix == ".so", (
            f"{name} runs from {origin.name}, not compiled: run `make compile` "
            "(or set DUPLEX_COMPILE=0 to test the pure-Python modules)"
        )
        assert origin.stat().st_mtime >= source.stat().st_mtime, (
            f"{origin.name} is older than {source.name}: run `make compile`"
        )
